// Command natsinterop is the Go side of the manual NATS interop check
// (tests/nats/go_interop/run.sh, docs/nats.md): the real livekit/psrpc v0.8.2
// natsbus, serving or calling InteropSvc (Echo: queue, Pick: affinity,
// Gather: multi), with google.protobuf.StringValue messages.
//
//	natsinterop serve URL   serve until SIGTERM; prints "ready"
//	natsinterop call URL N  Echo, Pick, Gather (expects N answers)
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/livekit/psrpc"
	"github.com/livekit/psrpc/pkg/bus/natsbus"
	"github.com/livekit/psrpc/pkg/client"
	"github.com/livekit/psrpc/pkg/info"
	"github.com/livekit/psrpc/pkg/rand"
	"github.com/livekit/psrpc/pkg/server"
)

type sv = wrapperspb.StringValue

// The method flags protoc-gen-psrpc derives for these routings.
func service(id string) *info.ServiceDefinition {
	s := &info.ServiceDefinition{Name: "InteropSvc", ID: id}
	s.RegisterMethod("Echo", false, false, true, true)
	s.RegisterMethod("Pick", true, false, true, false)
	s.RegisterMethod("Gather", false, true, false, false)
	return s
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: natsinterop serve URL | natsinterop call URL N")
		os.Exit(2)
	}
	nc, err := nats.Connect(os.Args[2])
	check(err)
	b := natsbus.New(nc)
	switch os.Args[1] {
	case "serve":
		id := rand.NewServerID()
		s := server.NewRPCServer(service(id), b)
		ident := func(context.Context, *sv) (*sv, error) { return wrapperspb.String(id), nil }
		check(server.RegisterHandler[*sv, *sv](s, "Echo", nil,
			func(_ context.Context, r *sv) (*sv, error) { return wrapperspb.String("go:" + r.Value), nil }, nil))
		check(server.RegisterHandler[*sv, *sv](s, "Pick", nil, ident,
			func(context.Context, *sv) float32 { return 1 }))
		check(server.RegisterHandler[*sv, *sv](s, "Gather", nil, ident, nil))
		time.Sleep(500 * time.Millisecond) // quirk Q14: Go does not flush its SUBs
		fmt.Println("ready")
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
		<-ch
		s.Close(true)
	case "call":
		want, _ := strconv.Atoi(os.Args[3])
		c, err := client.NewRPCClient(service(rand.NewClientID()), b, psrpc.WithClientTimeout(3*time.Second))
		check(err)
		time.Sleep(300 * time.Millisecond) // quirk Q14
		ctx := context.Background()
		r, err := client.RequestSingle[*sv](ctx, c, "Echo", nil, wrapperspb.String("from go"))
		check(err)
		fmt.Println("Echo:", r.Value)
		r, err = client.RequestSingle[*sv](ctx, c, "Pick", nil, wrapperspb.String("x"))
		check(err)
		fmt.Println("Pick:", r.Value)
		rc, err := client.RequestMulti[*sv](ctx, c, "Gather", nil, wrapperspb.String("g"),
			psrpc.WithRequestTimeout(time.Second))
		check(err)
		n := 0
		for res := range rc {
			check(res.Err)
			n++
		}
		fmt.Println("Gather answers:", n)
		if n != want {
			os.Exit(1)
		}
	}
}

func check(err error) {
	if err != nil {
		fmt.Println("ERROR:", err)
		os.Exit(1)
	}
}
