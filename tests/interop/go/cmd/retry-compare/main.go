// retry-compare: the Go half of the side-by-side retry test (issue 16).
// Calls Conformance.Echo through livekit/psrpc v0.8.2's
// middleware.WithRPCRetries in each scenario of tests/interop/retry_compare.sh
// and prints one line per scenario:
//
//	<scenario> attempts=<n> code=<psrpc code or ok> ms=<elapsed>
//
// Attempts are counted by an interceptor inside the retry interceptor. The C
// half (retry_compare.c) prints the same lines for libpsrpc's retries.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/libpsrpc/interop/conformance"
	"github.com/libpsrpc/interop/confsvc"
	"github.com/livekit/psrpc"
	"github.com/livekit/psrpc/pkg/middleware"
)

type scenario struct {
	name     string
	req      *conformance.EchoRequest
	opt      middleware.RetryOptions
	callerTO time.Duration // WithRequestTimeout, 0 = none
	deadline time.Duration // context deadline, 0 = none
}

func main() {
	busURL := flag.String("bus", "", "redis:// or nats:// URL")
	flag.Parse()
	bus, err := confsvc.Connect(*busURL, confsvc.Compression{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "retry-compare:", err)
		os.Exit(1)
	}
	defer bus.Close()
	for _, s := range scenarios() {
		var attempts atomic.Int32
		counter := func(info psrpc.RPCInfo, next psrpc.ClientRPCHandler) psrpc.ClientRPCHandler {
			return func(ctx context.Context, req proto.Message, opts ...psrpc.RequestOption) (proto.Message, error) {
				attempts.Add(1)
				return next(ctx, req, opts...)
			}
		}
		client, err := conformance.NewConformanceClient(bus,
			psrpc.WithClientTimeout(3*time.Second),
			psrpc.WithClientRPCInterceptors(middleware.NewRPCRetryInterceptor(s.opt), counter))
		if err != nil {
			fmt.Fprintln(os.Stderr, "retry-compare:", err)
			os.Exit(1)
		}
		// livekit/psrpc returns from NewConformanceClient before the broker
		// confirmed its response and claim subscriptions (quirk Q14): a call
		// made at once can lose its claim and time out, which the retry
		// interceptor would count as an attempt. One successful call first
		// (up to 5 tries) proves the subscriptions live; it is not counted.
		if err := warmUp(client); err != nil {
			fmt.Fprintln(os.Stderr, "retry-compare: warm-up:", err)
			os.Exit(1)
		}
		attempts.Store(0)
		ctx := context.Background()
		cancel := func() {}
		if s.deadline > 0 {
			ctx, cancel = context.WithTimeout(ctx, s.deadline)
		}
		var opts []psrpc.RequestOption
		if s.callerTO > 0 {
			opts = append(opts, psrpc.WithRequestTimeout(s.callerTO))
		}
		t0 := time.Now()
		_, err = client.Echo(ctx, s.req, opts...)
		ms := time.Since(t0).Milliseconds()
		cancel()
		code := "ok"
		if err != nil {
			if c, ok := psrpc.GetErrorCode(err); ok {
				code = string(c)
			} else {
				code = "non-psrpc:" + err.Error()
			}
		}
		fmt.Printf("%s attempts=%d code=%s ms=%d\n", s.name, attempts.Load(), code, ms)
		client.Close()
	}
}

func warmUp(client conformance.ConformanceClient) error {
	var err error
	for i := 0; i < 5; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err = client.Echo(ctx, &conformance.EchoRequest{})
		cancel()
		if err == nil {
			return nil
		}
	}
	return err
}

func scenarios() []scenario {
	return []scenario{
		{name: "unavailable-max3", req: &conformance.EchoRequest{FailCode: "unavailable", FailMessage: "down"},
			opt: middleware.RetryOptions{MaxAttempts: 3}},
		{name: "not_found-max3", req: &conformance.EchoRequest{FailCode: "not_found", FailMessage: "no"},
			opt: middleware.RetryOptions{MaxAttempts: 3}},
		{name: "timeouts-deadline", req: &conformance.EchoRequest{DelayMs: 2000},
			opt:      middleware.RetryOptions{Timeout: 100 * time.Millisecond, Backoff: 50 * time.Millisecond},
			deadline: 550 * time.Millisecond},
		{name: "caller-timeout-wins", req: &conformance.EchoRequest{DelayMs: 2000},
			opt:      middleware.RetryOptions{MaxAttempts: 3, Timeout: 50 * time.Millisecond},
			callerTO: 150 * time.Millisecond},
		{name: "timeouts-max2-backoff", req: &conformance.EchoRequest{DelayMs: 2000},
			opt: middleware.RetryOptions{MaxAttempts: 2, Timeout: 100 * time.Millisecond, Backoff: 100 * time.Millisecond}},
	}
}
