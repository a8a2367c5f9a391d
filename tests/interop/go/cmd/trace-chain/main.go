// trace-chain: the cross-language trace test of issue 16 (tests/interop/trace_chain.sh).
//
// A Go client with livekit/psrpc v0.8.2's otelpsrpc (OpenTelemetry SDK,
// in-memory exporter) calls Conformance.Echo, served by the C
// conformance-server --trace-next PYTOPIC, which calls RegionEcho@PYTOPIC on
// the Python hop (psrpc.otel), which calls RegionEcho@GOTOPIC on the Go server
// in this program (otelpsrpc server options):
//
//	Go client → C → Python → Go server
//
// It checks that every span (Go client, Python server and client, Go server)
// and the C hop's forwarded traceparent carry the client span's trace id, and
// that the parents link up: C's child of the Go client span, Python's server
// span child of C's, its client span child of its server span, the Go server
// span child of that. Python's spans are read from --py-spans (one JSON object
// per line, written by trace_hop.py). Prints "trace-chain: OK ..." or fails.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/livekit/psrpc"
	"github.com/livekit/psrpc/pkg/info"
	"github.com/livekit/psrpc/pkg/middleware/otelpsrpc"
	"github.com/livekit/psrpc/pkg/rand"
	"github.com/livekit/psrpc/pkg/server"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/libpsrpc/interop/conformance"
	"github.com/libpsrpc/interop/confsvc"
)

type pySpan struct {
	Name    string `json:"name"`
	TraceID string `json:"trace_id"`
	SpanID  string `json:"span_id"`
	Parent  string `json:"parent_span_id"`
	Kind    string `json:"kind"`
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "trace-chain: FAIL: "+format+"\n", args...)
	os.Exit(1)
}

// goEnd serves RegionEcho under one topic only (the generated constructor
// would also register Echo, which the C server must get).
func goEnd(bus psrpc.MessageBus, topic string, opts ...psrpc.ServerOption) (*server.RPCServer, error) {
	sd := &info.ServiceDefinition{Name: "Conformance", ID: rand.NewServerID()}
	s := server.NewRPCServer(sd, bus, opts...)
	sd.RegisterMethod("RegionEcho", false, false, true, true)
	h := func(ctx context.Context, req *conformance.EchoRequest) (*conformance.EchoResponse, error) {
		return &conformance.EchoResponse{Payload: req.Payload, Tag: req.Tag, ServerId: "go-end",
			Topic: topic}, nil
	}
	return s, server.RegisterHandler(s, "RegionEcho", []string{topic}, h, nil)
}

func readPySpans(path string, want int, timeout time.Duration) []pySpan {
	deadline := time.Now().Add(timeout)
	for {
		var spans []pySpan
		if f, err := os.Open(path); err == nil {
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				var s pySpan
				if json.Unmarshal(sc.Bytes(), &s) == nil {
					spans = append(spans, s)
				}
			}
			f.Close()
		}
		if len(spans) >= want || time.Now().After(deadline) {
			return spans
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func main() {
	busURL := flag.String("bus", "redis://127.0.0.1:6379", "redis://… or nats://…")
	goTopic := flag.String("go-topic", "", "topic of the Go server's RegionEcho (the last hop)")
	pySpansPath := flag.String("py-spans", "", "the Python hop's spans (JSON lines)")
	flag.Parse()
	if *goTopic == "" || *pySpansPath == "" {
		fail("usage: trace-chain --bus URL --go-topic T --py-spans FILE")
	}

	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	cfg := otelpsrpc.Config{TracerProvider: tp, TextMapPropagator: propagation.TraceContext{}}

	bus, err := confsvc.Connect(*busURL, confsvc.Compression{})
	if err != nil {
		fail("bus: %v", err)
	}
	defer bus.Close()
	srv, err := goEnd(bus, *goTopic, otelpsrpc.ServerOptions(cfg))
	if err != nil {
		fail("go server: %v", err)
	}
	defer srv.Close(true)
	client, err := conformance.NewConformanceClient(bus, otelpsrpc.ClientOptions(cfg))
	if err != nil {
		fail("client: %v", err)
	}
	if err := bus.Barrier(20 * time.Second); err != nil {
		fail("barrier: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := client.Echo(ctx, &conformance.EchoRequest{Payload: []byte("trace"), Tag: "chain"})
	if err != nil {
		fail("Echo: %v", err)
	}

	// Go's spans: the client's Sent.Conformance.Echo and the end server's Recv.
	goSpans := map[string]tracetest.SpanStub{}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		for _, s := range exp.GetSpans() {
			goSpans[s.Name] = s
		}
		if len(goSpans) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	sent, ok1 := goSpans["Sent.Conformance.Echo"]
	recv, ok2 := goSpans["Recv.Conformance.RegionEcho"]
	if !ok1 || !ok2 {
		fail("Go spans: %v", keys(goSpans))
	}
	traceID := sent.SpanContext.TraceID().String()
	if sent.Parent.IsValid() || sent.SpanKind != trace.SpanKindClient {
		fail("Go client span is not a root client span")
	}

	// The C hop: its forwarded traceparent (a child of the Go client span).
	cSent := res.Metadata["trace.sent"]
	parts := strings.Split(cSent, "-")
	if len(parts) != 4 || parts[1] != traceID {
		fail("C hop forwarded %q, want trace id %s (Echo answered by %s, metadata %v)", cSent,
			traceID, res.ServerId, res.Metadata)
	}
	cSpanID := parts[2]
	if cSpanID == sent.SpanContext.SpanID().String() {
		fail("C hop did not make a child (span id %s unchanged)", cSpanID)
	}
	if want := fmt.Sprintf("00-%s-%s-01", traceID, sent.SpanContext.SpanID()); res.Metadata["traceparent"] != want {
		fail("C hop got traceparent %q, want %q", res.Metadata["traceparent"], want)
	}

	// Python's spans.
	py := map[string]pySpan{}
	for _, s := range readPySpans(*pySpansPath, 2, 5*time.Second) {
		py[s.Name] = s
	}
	precv, ok1 := py["Recv.Conformance.RegionEcho"]
	psent, ok2 := py["Sent.Conformance.RegionEcho"]
	if !ok1 || !ok2 {
		fail("Python spans: %v", py)
	}
	for _, s := range []pySpan{precv, psent} {
		if s.TraceID != traceID {
			fail("Python span %s in trace %s, want %s", s.Name, s.TraceID, traceID)
		}
	}
	if precv.Parent != cSpanID || precv.Kind != "SERVER" {
		fail("Python server span's parent %s (kind %s), want the C hop's %s", precv.Parent,
			precv.Kind, cSpanID)
	}
	if psent.Parent != precv.SpanID || psent.Kind != "CLIENT" {
		fail("Python client span's parent %s, want its server span %s", psent.Parent, precv.SpanID)
	}
	if recv.SpanContext.TraceID().String() != traceID || recv.Parent.SpanID().String() != psent.SpanID ||
		recv.SpanKind != trace.SpanKindServer {
		fail("Go server span: trace %s parent %s, want trace %s parent %s",
			recv.SpanContext.TraceID(), recv.Parent.SpanID(), traceID, psent.SpanID)
	}
	fmt.Printf("trace-chain: OK: one trace %s: Go client %s -> C %s (server %s) -> Python %s/%s -> Go server %s\n",
		traceID, sent.SpanContext.SpanID(), cSpanID, res.ServerId, precv.SpanID, psent.SpanID,
		recv.SpanContext.SpanID())
}

func keys(m map[string]tracetest.SpanStub) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
