package confsvc

import (
	"fmt"
	"strings"

	"github.com/livekit/psrpc/protoc-gen-psrpc/options"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/libpsrpc/interop/conformance"
)

// MethodDef is one rpc of conformance.proto with the settings protoc-gen-psrpc
// derives from its options (wire-protocol.md 7.2).
type MethodDef struct {
	Service, Name, Input, Output string
	Routing                      options.Routing
	Subscription, Topics, Stream bool
	SingleServer                 bool
	// The four flags passed to info.ServiceDefinition.RegisterMethod.
	Affinity, Multi, RequireClaim, Queue bool
	TopicParams                          int
}

// String formats a definition like `conformance-client --print-methods`.
func (d MethodDef) String() string {
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	return fmt.Sprintf("%s.%s affinity=%d multi=%d require_claim=%d queue=%d subscription=%d "+
		"topics=%d stream=%d routing=%d input=%s output=%s",
		d.Service, d.Name, b(d.Affinity), b(d.Multi), b(d.RequireClaim), b(d.Queue),
		b(d.Subscription), d.TopicParams, b(d.Stream), int32(d.Routing), d.Input, d.Output)
}

// CamelCase is the name mangling of wire-protocol.md 4.1.
func CamelCase(s string) string {
	if s == "" {
		return ""
	}
	lower := func(c byte) bool { return c >= 'a' && c <= 'z' }
	var t []byte
	i := 0
	if s[0] == '_' {
		t = append(t, 'X')
		i = 1
	}
	for ; i < len(s); i++ {
		c := s[i]
		if c == '_' && i+1 < len(s) && lower(s[i+1]) {
			continue
		}
		if c >= '0' && c <= '9' {
			t = append(t, c)
			continue
		}
		if lower(c) {
			c -= 'a' - 'A'
		}
		t = append(t, c)
		for i+1 < len(s) && lower(s[i+1]) {
			i++
			t = append(t, s[i])
		}
	}
	return string(t)
}

// Methods derives the method table from the compiled conformance.proto.
func Methods() []MethodDef {
	var out []MethodDef
	services := conformance.File_conformance_proto.Services()
	for i := 0; i < services.Len(); i++ {
		sd := services.Get(i)
		ms := sd.Methods()
		for j := 0; j < ms.Len(); j++ {
			out = append(out, methodDef(sd, ms.Get(j)))
		}
	}
	return out
}

func methodDef(sd protoreflect.ServiceDescriptor, md protoreflect.MethodDescriptor) MethodDef {
	o := &options.Options{}
	if mo, ok := md.Options().(*descriptorpb.MethodOptions); ok && mo != nil &&
		proto.HasExtension(mo, options.E_Options) {
		o = proto.GetExtension(mo, options.E_Options).(*options.Options)
	}
	routing := o.GetType()
	// The deprecated oneof wins whenever one of its fields is present.
	switch o.Routing.(type) {
	case *options.Options_Multi:
		routing = options.Routing_MULTI
	case *options.Options_AffinityFunc:
		routing = options.Routing_AFFINITY
	case *options.Options_Queue:
		routing = options.Routing_QUEUE
	}
	single := o.GetTopicParams().GetSingleServer()
	params := 0
	if o.GetTopics() {
		params = len(o.GetTopicParams().GetNames())
		if params == 0 {
			params = 1
		}
	}
	return MethodDef{
		Service:      CamelCase(string(sd.Name())),
		Name:         CamelCase(string(md.Name())),
		Input:        string(md.Input().FullName()),
		Output:       string(md.Output().FullName()),
		Routing:      routing,
		Subscription: o.GetSubscription(),
		Topics:       o.GetTopics(),
		Stream:       o.GetStream(),
		SingleServer: single,
		Affinity:     routing == options.Routing_AFFINITY,
		Multi:        routing == options.Routing_MULTI,
		RequireClaim: routing != options.Routing_MULTI && !single,
		Queue:        routing == options.Routing_QUEUE,
		TopicParams:  params,
	}
}

// Method finds service.name.
func Method(service, name string) (MethodDef, bool) {
	for _, d := range Methods() {
		if d.Service == service && d.Name == name {
			return d, true
		}
	}
	return MethodDef{}, false
}

// SplitList splits a comma-separated list, dropping empty entries.
func SplitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
