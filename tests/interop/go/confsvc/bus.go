// Package confsvc holds what the Go conformance server and the interop tests
// share: bus connections, the method table derived from conformance.proto at
// run time, and the service implementation.
package confsvc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/livekit/psrpc"
	psbus "github.com/livekit/psrpc/pkg/bus"
	"github.com/livekit/psrpc/pkg/bus/natsbus"
	"github.com/livekit/psrpc/pkg/bus/redisbus"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Bus is a psrpc message bus with the connection it borrows.
type Bus struct {
	psrpc.MessageBus
	close func()
}

// Close closes the broker connection (psrpc buses borrow it).
func (b *Bus) Close() { b.close() }

// Compression, when Threshold > 0, makes the bus gzip (level 6) every
// payload of at least Threshold bytes (psrpc.WithBusCompression).
type Compression struct {
	Threshold int
}

// Connect opens a bus on a redis:// or nats:// URL.
func Connect(rawURL string, c Compression) (*Bus, error) {
	var opts []psrpc.BusOption
	if c.Threshold > 0 {
		opts = append(opts, psrpc.WithBusCompression(psrpc.CompressionOpts{
			Quality:   6,
			Threshold: c.Threshold,
		}))
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	switch strings.ToLower(u.Scheme) {
	case "redis", "rediss":
		o, err := redis.ParseURL(rawURL)
		if err != nil {
			return nil, err
		}
		// Protocol 2: go-redis v9.20.0 over RESP3 (its default) drops a
		// pub/sub message now and then (issue 22, docs/interop.md); the
		// matrix measures psrpc, not that bug.
		rc := redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs:     []string{o.Addr},
			Username:  o.Username,
			Password:  o.Password,
			DB:        o.DB,
			TLSConfig: o.TLSConfig,
			Protocol:  2,
		})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := rc.Ping(ctx).Err(); err != nil {
			_ = rc.Close()
			return nil, fmt.Errorf("redis %s: %w", rawURL, err)
		}
		return &Bus{MessageBus: redisbus.New(rc, opts...), close: func() { _ = rc.Close() }}, nil
	case "nats", "tls":
		nc, err := nats.Connect(rawURL, nats.Timeout(5*time.Second))
		if err != nil {
			return nil, fmt.Errorf("nats %s: %w", rawURL, err)
		}
		return &Bus{MessageBus: natsbus.New(nc, opts...), close: nc.Close}, nil
	}
	return nil, fmt.Errorf("unsupported bus URL %q (redis:// or nats://)", rawURL)
}

// Barrier returns once every subscription made on this bus before the call
// is active at the broker. Go subscribes asynchronously (wire spec quirk
// Q14): on Redis one writer goroutine sends the SUBSCRIBE commands, in order,
// on the bus's one pub/sub connection; on NATS SUB goes out on the bus's
// connection without a flush. Barrier subscribes to a channel of its own
// after them and publishes to it until a message comes back: the broker
// has then processed its SUBSCRIBE (SUB), and so every earlier one on the
// same connection. Typically a few milliseconds, instead of a fixed wait.
func (b *Bus) Barrier(timeout time.Duration) error {
	var nonce [8]byte
	_, _ = rand.Read(nonce[:])
	name := "conformance-barrier." + hex.EncodeToString(nonce[:])
	ch := psbus.Channel{Legacy: name, Server: name}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	sub, err := psbus.Subscribe[*wrapperspb.StringValue](ctx, b.MessageBus, ch, 16)
	if err != nil {
		return fmt.Errorf("barrier subscribe: %w", err)
	}
	defer sub.Close()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := b.Publish(ctx, ch, wrapperspb.String(name)); err != nil {
			return fmt.Errorf("barrier publish: %w", err)
		}
		select {
		case <-sub.Channel():
			return nil
		case <-tick.C:
		case <-ctx.Done():
			return fmt.Errorf("barrier: no message back on %s within %v", name, timeout)
		}
	}
}
