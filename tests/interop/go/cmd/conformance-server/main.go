// conformance-server (Go): the conformance service (shared/docs/conformance.md)
// served with livekit/psrpc v0.8.2, with the flags of the C server
// (tests/interop/conformance_server.c).
//
//	conformance-server [--bus URL] [--server-id ID] [--affinity F]
//	                   [--topic T]... [--methods LIST]
//	test hooks:        [--affinity-delay-ms N] [--skip-claim]
//	                   [--compress-threshold N] [--unimplemented]
//
// Prints "ready" once the server is constructed and its subscriptions are
// active at the broker (Go subscribes asynchronously, wire spec quirk Q14:
// confsvc.Bus.Barrier waits for them). Serves until SIGTERM or SIGINT, then shuts down gracefully and
// exits 0. Chat stream ends are printed as {"event":"chat-end",...} lines.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/libpsrpc/interop/confsvc"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	busURL := flag.String("bus", "redis://127.0.0.1:6379", "redis://… or nats://…")
	serverID := flag.String("server-id", "", "server id on the wire (default generated)")
	affinity := flag.Float64("affinity", 1.0, "affinity returned by Claim (negative declines)")
	var topics multiFlag
	flag.Var(&topics, "topic", "register the topic methods under this topic (repeatable)")
	methods := flag.String("methods", "", "comma-separated subset of methods (default all)")
	delay := flag.Int("affinity-delay-ms", 0, "delay every Claim affinity answer")
	skipClaim := flag.Bool("skip-claim", false, "answer queue requests with a handling claim")
	compress := flag.Int("compress-threshold", 0, "gzip payloads of at least N bytes (0: off)")
	unimpl := flag.Bool("unimplemented", false, "serve the generated unimplemented server")
	flag.Parse()

	bus, err := confsvc.Connect(*busURL, confsvc.Compression{Threshold: *compress})
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance-server:", err)
		os.Exit(1)
	}
	cfg := confsvc.ServerConfig{
		ServerID:      *serverID,
		Affinity:      float32(*affinity),
		AffinityDelay: time.Duration(*delay) * time.Millisecond,
		Topics:        topics,
		SkipClaim:     *skipClaim,
		Unimplemented: *unimpl,
		Events:        os.Stdout,
	}
	if *methods != "" {
		cfg.Methods = confsvc.SplitList(*methods)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	srv, err := confsvc.NewServer(bus, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "conformance-server:", err)
		os.Exit(1)
	}
	if err := bus.Barrier(20 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, "conformance-server:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	<-sigs
	srv.Shutdown()
	bus.Close()
}
