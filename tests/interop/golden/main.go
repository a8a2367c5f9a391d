// Command golden prints wire vectors computed by the real livekit/psrpc
// module (the version pinned in go.mod) for libpsrpc's unit tests:
//
//	go run . > ../../unit/golden_v0.8.2.txt
//
// Every line is "kind<TAB>field<TAB>...". Inputs and outputs that may hold
// arbitrary bytes are hex-encoded; "-" stands for an empty list.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/livekit/psrpc"
	"github.com/livekit/psrpc/pkg/bus"
	"github.com/livekit/psrpc/pkg/info"
)

// capture is a bus.Transport that keeps the last published payload.
type capture struct{ last []byte }

func (c *capture) Publish(_ context.Context, _ bus.Channel, p []byte) error {
	c.last = append([]byte(nil), p...)
	return nil
}

func (c *capture) Subscribe(context.Context, bus.Channel, int) (bus.Reader, error) {
	return nil, fmt.Errorf("not supported")
}

func (c *capture) SubscribeQueue(context.Context, bus.Channel, int) (bus.Reader, error) {
	return nil, fmt.Errorf("not supported")
}

func hx(s string) string {
	if s == "" {
		return "-"
	}
	return hex.EncodeToString([]byte(s))
}

func topicsHex(t []string) string {
	if len(t) == 0 {
		return "-"
	}
	parts := make([]string, len(t))
	for i, s := range t {
		parts[i] = hex.EncodeToString([]byte(s)) + "." // "." keeps empty topics visible
	}
	return strings.Join(parts, ",")
}

func channelLine(kind string, in []string, ch bus.Channel) {
	fmt.Printf("%s\t%s\t%s\t%s\t%s\n", kind, strings.Join(in, "\t"), hx(ch.Legacy), hx(ch.Server),
		hx(ch.Local))
}

// newMessage builds a message of the named type (registered by psrpc's
// internal package, which is linked in but cannot be imported) from text.
func newMessage(name, text string) proto.Message {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(name))
	if err != nil {
		panic(err)
	}
	m := mt.New().Interface()
	if err := prototext.Unmarshal([]byte(text), m); err != nil {
		panic(fmt.Sprintf("%s: %v", name, err))
	}
	return m
}

func envelope(label, name, text, local string, opts ...bus.BusOption) {
	c := &capture{}
	b := bus.New(c, opts...)
	m := newMessage(name, text)
	if err := b.Publish(context.Background(), bus.Channel{Local: local}, m); err != nil {
		panic(err)
	}
	inner, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		panic(err)
	}
	// The decoder must accept what it printed.
	back, err := bus.Deserialize(c.last, 0)
	if err != nil || !proto.Equal(back, m) {
		panic(fmt.Sprintf("%s: round trip failed: %v", label, err))
	}
	fmt.Printf("envelope\t%s\t%x\t%x\n", label, inner, c.last)
}

func main() {
	pairs := [][2]string{
		{"foo", "bar"}, {"svc", "M"}, {"MyService", "NormalRPC"}, {"my.service", "get-stats"},
		{"a|b", "région"},
	}
	clients := []string{"bar", "CLI_x", "CLI_a1B2c3D4e5F6", "my.client", "a|b", "us-east-1", "",
		"srv-1.a", "软件.é-x", "a+b~c"}
	topics := [][]string{
		nil, {}, {"a"}, {"a", "b"}, {"a", "b", "c"}, {""}, {"", "a"}, {"a", "", "b"}, {"a", ""},
		{"", ""}, {"us-east-1"}, {"us-east.1"}, {"région 1"}, {"a|b"}, {"*"}, {">"},
		{"🚀_É"}, {"软件"}, {"a\xffb"}, {"\xe2\x82"}, {"\xed\xa0\x80"}, {"\xf4\x90\x80\x80"},
		{"\xc0\xaf"}, {"\xef\xbf\xbd"}, {"x y", "Q"}, {"\x00"}, {"\x7f"},
	}
	for _, p := range pairs {
		s, m := p[0], p[1]
		for _, t := range topics {
			for _, q := range []bool{false, true} {
				ri := &info.RequestInfo{RPCInfo: psrpc.RPCInfo{Service: s, Method: m, Topic: t}, Queue: q}
				in := []string{hx(s), hx(m), topicsHex(t), fmt.Sprint(q)}
				channelLine("rpc", in, ri.GetRPCChannel())
				if !q {
					channelLine("claim_response", in, ri.GetClaimResponseChannel())
					channelLine("stream_server", in, ri.GetStreamServerChannel())
				}
			}
		}
		for _, c := range clients {
			in := []string{hx(s), hx(c)}
			channelLine("client_response", in, info.GetResponseChannel(s, c))
			channelLine("client_claim", in, info.GetClaimRequestChannel(s, c))
			channelLine("client_stream", in, info.GetStreamChannel(s, c))
		}
	}

	req := `request_id: "REQ_abcdefghijkl" client_id: "CLI_mnopqrstuvwx"
		sent_at: 1700000000000000000 expiry: 1700000003000000000
		metadata { key: "k" value: "v" } raw_request: "\x08\x01"`
	envelope("request_nats", "internal.Request", req, "NormalRPC.REQ")
	envelope("request_redis", "internal.Request", req, "")
	envelope("request_empty", "internal.Request", ``, "")
	envelope("request_skip_claim", "internal.Request",
		`request_id: "REQ_abcdefghijkl" client_id: "CLI_mnopqrstuvwx" multi: true skip_claim: true`, "")
	envelope("response_ok", "internal.Response",
		`request_id: "REQ_abcdefghijkl" server_id: "SRV_x9Y8z7W6v5U4" sent_at: 1700000001000000000
		 raw_response: "\x0a\x02hi"`, "")
	envelope("response_error", "internal.Response",
		`request_id: "REQ_abcdefghijkl" server_id: "SRV_x9Y8z7W6v5U4" error: "nope"
		 code: "not_found" error_details { type_url: "type.googleapis.com/google.protobuf.StringValue"
		 value: "\x0a\x01x" }`, "")
	envelope("claim_request", "internal.ClaimRequest",
		`request_id: "REQ_abcdefghijkl" server_id: "SRV_x9Y8z7W6v5U4" affinity: 1`, "")
	envelope("claim_request_handling", "internal.ClaimRequest",
		`request_id: "REQ_abcdefghijkl" server_id: "SRV_x9Y8z7W6v5U4" affinity: 1 handling: true`, "")
	envelope("claim_response", "internal.ClaimResponse",
		`request_id: "REQ_abcdefghijkl" server_id: "SRV_x9Y8z7W6v5U4"`, "NormalRPC.RCLAIM")
	stream := `stream_id: "STR_abcdefghijkl" request_id: "REQ_abcdefghijkl"
		sent_at: 1700000000000000000 expiry: 1700000003000000000 `
	envelope("stream_open", "internal.Stream", stream+`open { node_id: "CLI_mnopqrstuvwx"
		metadata { key: "k" value: "v" } }`, "Chat.STR")
	envelope("stream_message", "internal.Stream", stream+`message { raw_message: "\x08\x01" }`, "")
	envelope("stream_message_empty", "internal.Stream", stream+`message {}`, "")
	envelope("stream_ack", "internal.Stream", stream+`ack {}`, "")
	envelope("stream_close", "internal.Stream", stream+`close { error: "stream closed"
		code: "canceled" }`, "")
	envelope("stream_close_empty", "internal.Stream", stream+`close {}`, "")

	// Compressed: the default threshold (1024) and level 6, and threshold 1.
	big := strings.Repeat("psrpc compresses well ", 100)
	gz := bus.WithBusCompression(bus.CompressionOpts{Quality: 6})
	envelope("request_gzip", "internal.Request",
		`request_id: "REQ_abcdefghijkl" raw_request: "`+big+`"`, "NormalRPC.REQ", gz)
	envelope("request_gzip_below_threshold", "internal.Request",
		`request_id: "REQ_abcdefghijkl" raw_request: "short"`, "", gz)
	envelope("claim_response_gzip_not_smaller", "internal.ClaimResponse",
		`request_id: "REQ_abcdefghijkl" server_id: "SRV_x9Y8z7W6v5U4"`, "",
		bus.WithBusCompression(bus.CompressionOpts{Quality: 9, Threshold: 1}))

	// Redis queue lock key of the 5.6 Redis envelope, as redisbus computes it.
	c := &capture{}
	_ = bus.New(c).Publish(context.Background(), bus.Channel{}, newMessage("internal.Request", req))
	sha := sha256.Sum256(c.last)
	fmt.Printf("lock_key\t%x\t%s\n", c.last, base64.StdEncoding.EncodeToString(sha[:]))

	// Channel view used by NATS routers.
	for _, local := range []string{"NormalRPC.REQ", ""} {
		c := &capture{}
		_ = bus.New(c).Publish(context.Background(), bus.Channel{Local: local},
			newMessage("internal.ClaimResponse", `request_id: "r"`))
		got, err := bus.DecodeLocalChannel(c.last)
		if err != nil || got != local {
			panic("DecodeLocalChannel")
		}
		fmt.Printf("peek\t%x\t%s\n", c.last, hx(got))
	}
}
