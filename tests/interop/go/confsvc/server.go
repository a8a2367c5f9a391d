package confsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livekit/psrpc"
	"github.com/livekit/psrpc/pkg/info"
	"github.com/livekit/psrpc/pkg/metadata"
	"github.com/livekit/psrpc/pkg/server"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/libpsrpc/interop/conformance"
)

// ServerConfig mirrors the conformance-server flags.
type ServerConfig struct {
	ServerID      string
	Affinity      float32
	AffinityDelay time.Duration
	Topics        []string
	Methods       []string // nil: all
	SkipClaim     bool
	Unimplemented bool // serve conformance.UnimplementedConformanceServer (test plan U14)
	Events        io.Writer
}

// Impl is the conformance service (conformance.md), shared by both Go
// servers; see conformance_server.c for the behaviour beyond conformance.md.
type Impl struct {
	cfg     ServerConfig
	id      string
	counter atomic.Int32
	updates conformance.ConformanceUpdatesServer
	outMu   sync.Mutex
}

type topicKey struct{}

// topicInterceptor hands the topic a handler was registered under to it.
func topicInterceptor(ctx context.Context, req proto.Message, i psrpc.RPCInfo,
	h psrpc.ServerRPCHandler) (proto.Message, error) {
	return h(context.WithValue(ctx, topicKey{}, strings.Join(i.Topic, "|")), req)
}

func (s *Impl) event(kind, code, message string, maxSeq uint32) {
	if s.cfg.Events == nil {
		return
	}
	b, _ := json.Marshal(map[string]string{"event": kind, "code": code, "message": message,
		"max_seq": fmt.Sprint(maxSeq)})
	s.outMu.Lock()
	defer s.outMu.Unlock()
	_, _ = fmt.Fprintf(s.cfg.Events, "%s\n", b)
}

func (s *Impl) failsHere(failCode string) (string, bool) {
	if failCode == "" {
		return "", false
	}
	code, target, found := strings.Cut(failCode, "@")
	return code, !found || target == s.id
}

func (s *Impl) echo(ctx context.Context, req *conformance.EchoRequest) (*conformance.EchoResponse, error) {
	if req.DelayMs > 0 {
		time.Sleep(time.Duration(req.DelayMs) * time.Millisecond)
	}
	if code, ok := s.failsHere(req.FailCode); ok {
		var details []proto.Message
		if req.Tag != "" {
			details = append(details, wrapperspb.String(req.Tag))
		}
		if len(req.Payload) > 0 {
			details = append(details, wrapperspb.Bytes(req.Payload))
		}
		return nil, psrpc.NewError(psrpc.ErrorCode(code), errors.New(req.FailMessage), details...)
	}
	res := &conformance.EchoResponse{
		Payload:  req.Payload,
		ServerId: s.id,
		Tag:      req.Tag,
		Metadata: map[string]string{},
	}
	if h := metadata.IncomingHeader(ctx); h != nil {
		for k, v := range h.Metadata {
			res.Metadata[k] = v
		}
	}
	if t, ok := ctx.Value(topicKey{}).(string); ok {
		res.Topic = t
	}
	return res, nil
}

func (s *Impl) Echo(ctx context.Context, req *conformance.EchoRequest) (*conformance.EchoResponse, error) {
	return s.echo(ctx, req)
}

func (s *Impl) Claim(ctx context.Context, req *conformance.EchoRequest) (*conformance.EchoResponse, error) {
	return s.echo(ctx, req)
}

func (s *Impl) ClaimAffinity(ctx context.Context, req *conformance.EchoRequest) float32 {
	if s.cfg.AffinityDelay > 0 {
		time.Sleep(s.cfg.AffinityDelay)
	}
	return s.cfg.Affinity
}

func (s *Impl) Fanout(ctx context.Context, req *conformance.EchoRequest) (*conformance.EchoResponse, error) {
	return s.echo(ctx, req)
}

func (s *Impl) RegionEcho(ctx context.Context, req *conformance.EchoRequest) (*conformance.EchoResponse, error) {
	return s.echo(ctx, req)
}

func (s *Impl) RegionFanout(ctx context.Context, req *conformance.EchoRequest) (*conformance.EchoResponse, error) {
	return s.echo(ctx, req)
}

func (s *Impl) Add(ctx context.Context, req *conformance.AddRequest) (*conformance.AddResult, error) {
	return &conformance.AddResult{Value: s.counter.Add(req.Increment)}, nil
}

func nonce() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (s *Impl) Publish(ctx context.Context, req *conformance.PublishRequest) (*conformance.PublishResult, error) {
	var publish func(*conformance.Update) error
	bg := context.Background()
	switch req.Method {
	case "Updates":
		publish = func(u *conformance.Update) error { return s.updates.PublishUpdates(bg, u) }
	case "Work":
		publish = func(u *conformance.Update) error { return s.updates.PublishWork(bg, u) }
	case "RegionUpdates":
		if len(req.Topic) != 1 {
			return nil, psrpc.NewErrorf(psrpc.InvalidArgument, "RegionUpdates takes one topic")
		}
		publish = func(u *conformance.Update) error {
			return s.updates.PublishRegionUpdates(bg, req.Topic[0], u)
		}
	default:
		return nil, psrpc.NewErrorf(psrpc.InvalidArgument, "unknown update method")
	}
	var n uint32
	for seq := uint32(1); seq <= req.Count; seq++ {
		u := &conformance.Update{Seq: seq, Payload: req.Payload, ServerId: s.id, Nonce: nonce()}
		if err := publish(u); err != nil {
			return nil, psrpc.NewError(psrpc.Internal, fmt.Errorf("publish %d failed: %w", seq, err))
		}
		n++
	}
	return &conformance.PublishResult{Published: n}, nil
}

func (s *Impl) Chat(stream psrpc.ServerStream[*conformance.ChatMessage, *conformance.ChatMessage]) error {
	var maxSeq uint32 // the highest seq received, reported when the stream ends
	for msg := range stream.Channel() {
		if msg.Seq > maxSeq {
			maxSeq = msg.Seq
		}
		if msg.CloseCode != "" {
			err := psrpc.NewError(psrpc.ErrorCode(msg.CloseCode), errors.New(msg.CloseMessage))
			s.event("chat-end", msg.CloseCode, msg.CloseMessage, maxSeq)
			return err
		}
		if msg.CloseMessage != "" {
			s.event("chat-end", string(psrpc.Canceled), "stream closed", maxSeq)
			return nil // psrpc closes with canceled "stream closed"
		}
		go func(m *conformance.ChatMessage) {
			_ = stream.Send(&conformance.ChatMessage{Seq: m.Seq + 1, Payload: m.Payload})
		}(msg)
	}
	// The client closed the stream.
	code, message := "", ""
	if err := stream.Err(); err != nil {
		message = err.Error()
		if c, ok := psrpc.GetErrorCode(err); ok {
			code = string(c)
		}
	}
	s.event("chat-end", code, message, maxSeq)
	return nil
}

// Server is a running Go conformance server.
type Server struct {
	Impl    *Impl
	ID      string
	shut    func()
	updates conformance.ConformanceUpdatesServer
}

// Shutdown closes gracefully (in-flight requests finish).
func (s *Server) Shutdown() {
	s.shut()
	s.updates.Shutdown()
}

func contains(list []string, name string) bool {
	if list == nil {
		return true
	}
	for _, m := range list {
		if m == name {
			return true
		}
	}
	return false
}

// NewServer serves the conformance service on bus. With every method and no
// hook that needs more, it uses the protoc-gen-psrpc generated server;
// otherwise (a method subset, Unimplemented) the low-level pkg/server API
// with the flags derived from the same .proto.
func NewServer(bus psrpc.MessageBus, cfg ServerConfig) (*Server, error) {
	opts := []psrpc.ServerOption{psrpc.WithServerRPCInterceptors(topicInterceptor)}
	if cfg.ServerID != "" {
		opts = append(opts, psrpc.WithServerID(cfg.ServerID))
	}
	if cfg.SkipClaim {
		opts = append(opts, psrpc.WithServerSkipClaim(func() bool { return true }))
	}
	impl := &Impl{cfg: cfg}
	updates, err := conformance.NewConformanceUpdatesServer(struct{}{}, bus, opts...)
	if err != nil {
		return nil, err
	}
	impl.updates = updates

	if cfg.Methods == nil && !cfg.Unimplemented {
		if cfg.ServerID == "" {
			impl.id = "SRV_go_" + nonce()
			opts = append(opts, psrpc.WithServerID(impl.id))
		} else {
			impl.id = cfg.ServerID
		}
		srv, err := conformance.NewConformanceServer(impl, bus, opts...)
		if err != nil {
			return nil, err
		}
		for _, t := range cfg.Topics {
			if err := srv.RegisterRegionEchoTopic(t); err != nil {
				return nil, err
			}
			if err := srv.RegisterRegionFanoutTopic(t); err != nil {
				return nil, err
			}
		}
		return &Server{Impl: impl, ID: impl.id, shut: srv.Shutdown, updates: updates}, nil
	}

	// Low level: the same registrations, method by method.
	sd := &info.ServiceDefinition{Name: "Conformance", ID: cfg.ServerID}
	if sd.ID == "" {
		sd.ID = "SRV_go_" + nonce()
	}
	impl.id = sd.ID
	s := server.NewRPCServer(sd, bus, opts...)
	var svc conformance.ConformanceServerImpl = impl
	if cfg.Unimplemented {
		svc = unimplemented{}
	}
	for _, d := range Methods() {
		if d.Service != "Conformance" {
			continue
		}
		sd.RegisterMethod(d.Name, d.Affinity, d.Multi, d.RequireClaim, d.Queue)
	}
	reg := func(name string, topic []string) error {
		if !contains(cfg.Methods, name) {
			return nil
		}
		switch name {
		case "Echo":
			return server.RegisterHandler(s, name, topic, svc.Echo, nil)
		case "Add":
			return server.RegisterHandler(s, name, topic, svc.Add, nil)
		case "Claim":
			return server.RegisterHandler(s, name, topic, svc.Claim, svc.ClaimAffinity)
		case "Fanout":
			return server.RegisterHandler(s, name, topic, svc.Fanout, nil)
		case "RegionEcho":
			return server.RegisterHandler(s, name, topic, svc.RegionEcho, nil)
		case "RegionFanout":
			return server.RegisterHandler(s, name, topic, svc.RegionFanout, nil)
		case "Publish":
			return server.RegisterHandler(s, name, topic, svc.Publish, nil)
		case "Chat":
			return server.RegisterStreamHandler(s, name, topic, svc.Chat, nil)
		}
		return fmt.Errorf("unknown method %s", name)
	}
	for _, name := range []string{"Echo", "Add", "Claim", "Fanout", "Publish", "Chat"} {
		if err := reg(name, nil); err != nil {
			return nil, err
		}
	}
	for _, t := range cfg.Topics {
		for _, name := range []string{"RegionEcho", "RegionFanout"} {
			if err := reg(name, []string{t}); err != nil {
				return nil, err
			}
		}
	}
	return &Server{Impl: impl, ID: impl.id, shut: func() { s.Close(false) }, updates: updates}, nil
}

// unimplemented is the generated "unimplemented" server (test plan U14).
type unimplemented struct {
	conformance.UnimplementedConformanceServer
}
