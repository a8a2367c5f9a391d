// conformance-probe (Go): a livekit/psrpc v0.8.2 client of the conformance
// service for tests of other tools (the psrpc command's publish and
// serve --mock, bindings/python/tests/test_cli.py). Output is JSON lines.
//
//	conformance-probe --bus URL --mode subscribe --method M [--topic T] [--count N] [--for S]
//	    subscribes to ConformanceUpdates.M (Updates, Work, RegionUpdates: under
//	    --topic), prints "ready" once the subscription is active at the broker,
//	    then one {"seq","payload","server_id","nonce"} line per Update; exits 0
//	    after N updates, 1 if --for seconds pass first.
//	conformance-probe --bus URL --mode call [--topic T]
//	    calls every Conformance method once (RegionEcho/RegionFanout under
//	    --topic; Chat: sends {"seq":1} and reads one message) and prints one
//	    {"method","response"|"error"} line per call (multi methods:
//	    "responses", one {"response"|"error"} per server); exits 0.
//
// Bytes are base64 and field names are the proto names, as protojson writes
// them (what the psrpc command prints).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/livekit/psrpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/libpsrpc/interop/conformance"
	"github.com/libpsrpc/interop/confsvc"
)

func fail(err error) {
	fmt.Fprintln(os.Stderr, "conformance-probe:", err)
	os.Exit(1)
}

func pj(m proto.Message) json.RawMessage {
	b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		fail(err)
	}
	return b
}

func errJSON(err error) map[string]string {
	var pe psrpc.Error
	if e, ok := err.(psrpc.Error); ok {
		pe = e
	} else {
		pe = psrpc.NewError(psrpc.Unknown, err)
	}
	return map[string]string{"code": string(pe.Code()), "message": pe.Error()}
}

func emit(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

func main() {
	busURL := flag.String("bus", "redis://127.0.0.1:6379", "redis://… or nats://…")
	mode := flag.String("mode", "", "subscribe | call")
	method := flag.String("method", "Updates", "subscription method (subscribe)")
	topic := flag.String("topic", "", "topic of the topic methods")
	count := flag.Int("count", 1, "updates to receive (subscribe)")
	forS := flag.Float64("for", 20, "give up after this many seconds")
	flag.Parse()

	bus, err := confsvc.Connect(*busURL, confsvc.Compression{})
	if err != nil {
		fail(err)
	}
	defer bus.Close()
	ctx, cancel := context.WithTimeout(context.Background(),
		time.Duration(*forS*float64(time.Second)))
	defer cancel()

	switch *mode {
	case "subscribe":
		c, err := conformance.NewConformanceUpdatesClient(bus)
		if err != nil {
			fail(err)
		}
		var sub psrpc.Subscription[*conformance.Update]
		switch *method {
		case "Updates":
			sub, err = c.SubscribeUpdates(ctx)
		case "Work":
			sub, err = c.SubscribeWork(ctx)
		case "RegionUpdates":
			sub, err = c.SubscribeRegionUpdates(ctx, *topic)
		default:
			err = fmt.Errorf("unknown subscription method %q", *method)
		}
		if err != nil {
			fail(err)
		}
		defer sub.Close()
		if err := bus.Barrier(20 * time.Second); err != nil {
			fail(err)
		}
		fmt.Println("ready")
		for n := 0; n < *count; n++ {
			select {
			case u := <-sub.Channel():
				emit(pj(u))
			case <-ctx.Done():
				fail(fmt.Errorf("%d of %d updates within %vs", n, *count, *forS))
			}
		}
	case "call":
		c, err := conformance.NewConformanceClient(bus)
		if err != nil {
			fail(err)
		}
		defer c.Close()
		// The client's reply subscriptions are asynchronous (Q14).
		if err := bus.Barrier(20 * time.Second); err != nil {
			fail(err)
		}
		one := func(name string, m proto.Message, err error) {
			if err != nil {
				emit(map[string]any{"method": name, "error": errJSON(err)})
			} else {
				emit(map[string]any{"method": name, "response": pj(m)})
			}
		}
		multi := func(name string, ch <-chan *psrpc.Response[*conformance.EchoResponse], err error) {
			if err != nil {
				emit(map[string]any{"method": name, "error": errJSON(err)})
				return
			}
			var rs []map[string]any
			for r := range ch {
				if r.Err != nil {
					rs = append(rs, map[string]any{"error": errJSON(r.Err)})
				} else {
					rs = append(rs, map[string]any{"response": pj(r.Result)})
				}
			}
			emit(map[string]any{"method": name, "responses": rs})
		}
		// One deadline per call; a multi call lasts until its deadline
		// (Go collects answers until then), so it gets a short one.
		call := func(d time.Duration) context.Context {
			c, cancel := context.WithTimeout(ctx, d)
			_ = cancel // released when ctx is
			return c
		}
		req := &conformance.EchoRequest{Tag: "go", Payload: []byte{1, 2}}
		e, err := c.Echo(call(5*time.Second), req)
		one("Echo", e, err)
		a, err := c.Add(call(5*time.Second), &conformance.AddRequest{Increment: 1})
		one("Add", a, err)
		e, err = c.Claim(call(5*time.Second), req)
		one("Claim", e, err)
		ch, err := c.Fanout(call(time.Second), req)
		multi("Fanout", ch, err)
		e, err = c.RegionEcho(call(5*time.Second), *topic, req)
		one("RegionEcho", e, err)
		ch, err = c.RegionFanout(call(time.Second), *topic, req)
		multi("RegionFanout", ch, err)
		p, err := c.Publish(call(5*time.Second), &conformance.PublishRequest{Method: "Updates", Count: 1})
		one("Publish", p, err)
		sctx := call(5 * time.Second)
		st, err := c.Chat(sctx)
		if err != nil {
			one("Chat", nil, err)
			break
		}
		if err := st.Send(&conformance.ChatMessage{Seq: 1}); err != nil {
			one("Chat", nil, err)
		} else {
			select {
			case m, ok := <-st.Channel():
				if ok {
					one("Chat", m, nil)
				} else {
					one("Chat", nil, st.Err())
				}
			case <-sctx.Done():
				one("Chat", nil, sctx.Err())
			}
		}
		_ = st.Close(nil)
	default:
		fail(fmt.Errorf("--mode subscribe or --mode call"))
	}
}
