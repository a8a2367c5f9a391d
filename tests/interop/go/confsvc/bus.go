// Package confsvc holds what the Go conformance server and the interop tests
// share: bus connections, the method table derived from conformance.proto at
// run time, and the service implementation.
package confsvc

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
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

// RedisClient opens a go-redis client for a redis://, rediss://,
// redis+cluster:// or rediss+cluster:// URL (the cluster forms as libpsrpc
// reads them: [user:password@]host:port[,host:port...][/0], seed nodes of a
// Redis Cluster: a go-redis ClusterClient, as Go services on a cluster use
// psrpc). RESP2: go-redis v9.20.0 over RESP3 (its default) drops a pub/sub
// message now and then (issue 22, docs/interop.md); the tests measure psrpc,
// not that bug.
func RedisClient(rawURL string) (redis.UniversalClient, error) {
	lower := strings.ToLower(rawURL)
	if strings.HasPrefix(lower, "redis+cluster://") || strings.HasPrefix(lower, "rediss+cluster://") {
		o, err := parseClusterURL(rawURL)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(o), nil
	}
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, err
	}
	return redis.NewUniversalClient(&redis.UniversalOptions{
		Addrs:     []string{o.Addr},
		Username:  o.Username,
		Password:  o.Password,
		DB:        o.DB,
		TLSConfig: o.TLSConfig,
		Protocol:  2,
	}), nil
}

func parseClusterURL(rawURL string) (*redis.ClusterOptions, error) {
	i := strings.Index(rawURL, "://")
	scheme, rest := strings.ToLower(rawURL[:i]), rawURL[i+3:]
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		if p := rest[j+1:]; p != "" && p != "0" {
			return nil, fmt.Errorf("cluster URL %q: database 0 only", rawURL)
		}
		rest = rest[:j]
	}
	o := &redis.ClusterOptions{Protocol: 2}
	// go-redis v9.20.0 sends a keyless command (PUBLISH) to the masters in
	// turn (its default ShardPicker is round-robin), one PUBLISH to each,
	// also within one pipeline: the cluster bus then forwards them to the
	// subscribers' node in no particular order, so a Go publisher's
	// messages on one channel arrive out of order (seen in the
	// subscriptions scenario: "update 0 = seq 2"). libpsrpc publishes on one
	// connection to one node, in order. The tests pin Go's PUBLISH to one
	// master; PSRPC_GO_CLUSTER_PICKER=roundrobin keeps go-redis's default.
	if os.Getenv("PSRPC_GO_CLUSTER_PICKER") != "roundrobin" {
		o.ShardPicker = firstMaster{}
	}
	if at := strings.LastIndexByte(rest, '@'); at >= 0 {
		ui, err := url.Parse("redis://" + rest[:at] + "@h")
		if err != nil {
			return nil, err
		}
		o.Username = ui.User.Username()
		o.Password, _ = ui.User.Password()
		if _, ok := ui.User.Password(); !ok {
			o.Username, o.Password = "", ui.User.Username()
		}
		rest = rest[at+1:]
	}
	for _, a := range strings.Split(rest, ",") {
		if a == "" {
			return nil, fmt.Errorf("cluster URL %q: empty node", rawURL)
		}
		if !strings.Contains(a, ":") {
			a += ":6379"
		}
		o.Addrs = append(o.Addrs, a)
	}
	if scheme == "rediss+cluster" {
		o.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return o, nil
}

// firstMaster is a go-redis ShardPicker that always picks the first master.
type firstMaster struct{}

func (firstMaster) Next(int) int { return 0 }

// Connect opens a bus on a redis://, redis+cluster:// or nats:// URL.
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
	case "redis", "rediss", "redis+cluster", "rediss+cluster":
		rc, err := RedisClient(rawURL)
		if err != nil {
			return nil, err
		}
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
	return nil, fmt.Errorf("unsupported bus URL %q (redis://, redis+cluster:// or nats://)", rawURL)
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
