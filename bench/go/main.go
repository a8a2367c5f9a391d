// go_bench — the livekit/psrpc v0.8.2 side of bench/run.sh: the scenarios,
// roles, flags and stdout line protocol of bench/c/psrpc_bench.c, written
// with psrpc's low-level pkg/server, pkg/client and pkg/info API (what
// protoc-gen-psrpc generates calls), with google.protobuf.BytesValue as the
// request, response and update message.
//
//	go_bench --bus URL --role ROLE --scenario S [--inflight N] [--payload B]
//	         [--warmup S] [--duration S] [--id N] [--servers N] [--subs N]
//	         [--credit-fd FD] [--credit-fds FD,FD,..]
//
// URL: local:// (psrpc.NewLocalMessageBus, shared by every role of the
// process), redis://host:port, nats://host:port. See psrpc_bench.c for the
// scenarios and roles.
package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/livekit/psrpc"
	"github.com/livekit/psrpc/pkg/bus/natsbus"
	"github.com/livekit/psrpc/pkg/bus/redisbus"
	"github.com/livekit/psrpc/pkg/client"
	"github.com/livekit/psrpc/pkg/info"
	"github.com/livekit/psrpc/pkg/server"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

const service = "Bench"

// Offsets inside the BytesValue's bytes (bench_common.h).
const (
	payloadTS   = 0
	payloadFlag = 8
	payloadMin  = 16
	creditEvery = 8
)

var (
	busURL   = flag.String("bus", "", "bus URL")
	role     = flag.String("role", "", "server|client|publisher|subscriber|local")
	scenario = flag.String("scenario", "single", "single|affinity|multi|sub|stream")
	inflight = flag.Int("inflight", 1, "requests in flight")
	payload  = flag.Int("payload", 64, "payload bytes")
	warmup   = flag.Float64("warmup", 1, "seconds")
	duration = flag.Float64("duration", 3, "seconds")
	id       = flag.Int("id", 0, "server number")
	servers  = flag.Int("servers", 1, "servers (local role)")
	subs     = flag.Int("subs", 3, "subscribers (local role)")
	creditFd = flag.Int("credit-fd", -1, "subscriber: credit pipe")
	creditFs = flag.String("credit-fds", "", "publisher: credit pipes")
)

// settle: livekit/psrpc returns from Register/Join before Redis or NATS
// confirmed the subscription (quirk Q14); READY waits this long instead.
const settle = 100 * time.Millisecond

var out = bufio.NewWriter(os.Stdout)
var outMu sync.Mutex

func emit(line string) {
	outMu.Lock()
	defer outMu.Unlock()
	out.WriteString(line)
	out.WriteByte('\n')
	out.Flush()
}

func die(what string, err error) {
	fmt.Fprintf(os.Stderr, "go_bench: %s: %v\n", what, err)
	os.Exit(1)
}

// ---------------------------------------------------------------------------
// Histogram (bench_common.h's buckets)

const histBuckets = 4600

type hist struct{ n [histBuckets]uint64 }

func histIndex(us int64) int {
	switch {
	case us < 0:
		return 0
	case us < 1000:
		return int(us)
	case us < 10000:
		return 1000 + int((us-1000)/10)
	case us < 100000:
		return 1900 + int((us-10000)/100)
	case us < 1000000:
		return 2800 + int((us-100000)/1000)
	case us < 10000000:
		return 3700 + int((us-1000000)/10000)
	}
	return histBuckets - 1
}

func histValue(i int) float64 {
	switch {
	case i < 1000:
		return float64(i) + 0.5
	case i < 1900:
		return float64(1000 + (i-1000)*10 + 5)
	case i < 2800:
		return float64(10000 + (i-1900)*100 + 50)
	case i < 3700:
		return float64(100000 + (i-2800)*1000 + 500)
	}
	return float64(1000000 + (i-3700)*10000 + 5000)
}

func (h *hist) add(d time.Duration) { atomic.AddUint64(&h.n[histIndex(d.Microseconds())], 1) }

func emitResult(role string, ops uint64, elapsed float64, errors uint64, h *hist) {
	var b strings.Builder
	fmt.Fprintf(&b, `RESULT {"role":"%s","ops":%d,"elapsed_s":%.6f,"errors":%d,"hist":[`,
		role, ops, elapsed, errors)
	first := true
	for i := 0; h != nil && i < histBuckets; i++ {
		if n := atomic.LoadUint64(&h.n[i]); n > 0 {
			if !first {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "[%.1f,%d]", histValue(i), n)
			first = false
		}
	}
	b.WriteString("]}")
	emit(b.String())
}

func waitStdinEOF() { _, _ = io.Copy(io.Discard, os.Stdin) }

func sleepS(s float64) { time.Sleep(time.Duration(s * float64(time.Second))) }

// ---------------------------------------------------------------------------
// Bus and service definition

var localBus psrpc.MessageBus

func openBus() psrpc.MessageBus {
	u := *busURL
	switch {
	case strings.HasPrefix(u, "local:"):
		if localBus == nil {
			localBus = psrpc.NewLocalMessageBus()
		}
		return localBus
	case strings.HasPrefix(u, "redis://"):
		o, err := redis.ParseURL(u)
		if err != nil {
			die("redis url", err)
		}
		// Protocol 2: go-redis v9.20.0 over RESP3 drops a pub/sub message
		// now and then (issue 22, docs/interop.md).
		rc := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: []string{o.Addr},
			Password: o.Password, DB: o.DB, Protocol: 2})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := rc.Ping(ctx).Err(); err != nil {
			die("redis", err)
		}
		return redisbus.New(rc)
	case strings.HasPrefix(u, "nats://"):
		nc, err := nats.Connect(u, nats.Timeout(5*time.Second))
		if err != nil {
			die("nats", err)
		}
		return natsbus.New(nc)
	}
	die("bus", fmt.Errorf("unsupported URL %q", u))
	return nil
}

// newSD defines the methods as protoc-gen-psrpc would for
//
//	rpc Echo(..)    {}                                  // queue + claim
//	rpc Claim(..)   { type = AFFINITY }
//	rpc Fanout(..)  { type = MULTI }
//	rpc Updates(..) { subscription = true; type = MULTI }
//	rpc Chat(..)    { stream = true }
func newSD(id string) *info.ServiceDefinition {
	sd := &info.ServiceDefinition{Name: service, ID: id}
	sd.RegisterMethod("Echo", false, false, true, true)
	sd.RegisterMethod("Claim", true, false, true, false)
	sd.RegisterMethod("Fanout", false, true, false, false)
	sd.RegisterMethod("Updates", false, true, false, false)
	sd.RegisterMethod("Chat", false, false, true, true)
	return sd
}

func methodName(s string) string {
	switch s {
	case "single":
		return "Echo"
	case "affinity":
		return "Claim"
	case "multi":
		return "Fanout"
	case "sub":
		return "Updates"
	case "stream":
		return "Chat"
	}
	die("scenario", fmt.Errorf("unknown %q", s))
	return ""
}

func makePayload(n int) *wrapperspb.BytesValue {
	if n < payloadMin {
		n = payloadMin
	}
	b := make([]byte, n)
	for i := range b {
		b[i] = 'x'
	}
	return &wrapperspb.BytesValue{Value: b}
}

// ---------------------------------------------------------------------------
// Servers

func echo(_ context.Context, req *wrapperspb.BytesValue) (*wrapperspb.BytesValue, error) {
	return req, nil
}

func startServer(n int) *server.RPCServer {
	b := openBus()
	sid := fmt.Sprintf("SRV_bench%d", n)
	s := server.NewRPCServer(newSD(sid), b, psrpc.WithServerID(sid))
	var err error
	switch *scenario {
	case "single":
		err = server.RegisterHandler(s, "Echo", nil, echo, nil)
	case "affinity":
		err = server.RegisterHandler(s, "Claim", nil, echo,
			func(context.Context, *wrapperspb.BytesValue) float32 { return 1 })
	case "multi":
		err = server.RegisterHandler(s, "Fanout", nil, echo, nil)
	case "stream":
		err = server.RegisterStreamHandler(s, "Chat", nil,
			func(st psrpc.ServerStream[*wrapperspb.BytesValue, *wrapperspb.BytesValue]) error {
				for range st.Channel() {
				}
				return nil
			}, nil)
	}
	if err != nil {
		die("register", err)
	}
	return s
}

// ---------------------------------------------------------------------------
// Subscribers

type subscriber struct {
	measured uint64
	h        hist
	done     chan struct{}
	sub      psrpc.Subscription[*wrapperspb.BytesValue]
}

func startSubscriber(fd *os.File) *subscriber {
	c, err := client.NewRPCClient(newSD(randomClientID()), openBus())
	if err != nil {
		die("client", err)
	}
	sub, err := client.Join[*wrapperspb.BytesValue](context.Background(), c, "Updates", nil)
	if err != nil {
		die("join", err)
	}
	s := &subscriber{done: make(chan struct{}), sub: sub}
	go func() {
		defer close(s.done)
		var received uint64
		one := []byte{1}
		for m := range sub.Channel() {
			v := m.GetValue()
			if len(v) >= payloadMin && v[payloadFlag] != 0 {
				sent := int64(binary.LittleEndian.Uint64(v[payloadTS:]))
				s.h.add(time.Duration(time.Now().UnixNano() - sent))
				atomic.AddUint64(&s.measured, 1)
			}
			received++
			if received%creditEvery == 0 && fd != nil {
				_, _ = fd.Write(one)
			}
		}
	}()
	return s
}

func (s *subscriber) report() {
	_ = s.sub.Close()
	select {
	case <-s.done:
	case <-time.After(100 * time.Millisecond):
	}
	emitResult("subscriber", atomic.LoadUint64(&s.measured), 0, 0, &s.h)
}

var idSeq atomic.Int64

func randomClientID() string {
	return fmt.Sprintf("CLI_bench%d_%d", os.Getpid(), idSeq.Add(1))
}

// ---------------------------------------------------------------------------
// The measuring client

var (
	measuring atomic.Bool
	stopping  atomic.Bool
	ops       atomic.Uint64
	errs      atomic.Uint64
	lat       hist
)

func finish(t0 time.Time, ok bool) {
	if measuring.Load() {
		lat.add(time.Since(t0))
		ops.Add(1)
		if !ok {
			errs.Add(1)
		}
	}
}

func window() (float64, uint64) {
	sleepS(*warmup)
	o0 := ops.Load()
	t0 := time.Now()
	measuring.Store(true)
	emit("START")
	sleepS(*duration)
	measuring.Store(false)
	n := ops.Load() - o0
	el := time.Since(t0).Seconds()
	emit("END")
	return el, n
}

func runClient() {
	b := openBus()
	sd := newSD(randomClientID())
	var c *client.RPCClient
	var err error
	if *scenario == "stream" {
		c, err = client.NewRPCClientWithStreams(sd, b, psrpc.WithClientTimeout(5*time.Second))
	} else {
		c, err = client.NewRPCClient(sd, b, psrpc.WithClientTimeout(5*time.Second))
	}
	if err != nil {
		die("client", err)
	}
	time.Sleep(settle) // the reply subscriptions are set up in the background (Q14)
	req := makePayload(*payload)
	ctx := context.Background()
	var opts []psrpc.RequestOption
	if *scenario == "affinity" {
		opts = append(opts, psrpc.WithSelectionOpts(psrpc.SelectionOpts{
			AcceptFirstAvailable: true, AffinityTimeout: time.Second}))
	}
	var wg sync.WaitGroup
	var loop func()
	switch *scenario {
	case "single", "affinity":
		m := methodName(*scenario)
		for try := 1; ; try++ {
			_, err := client.RequestSingle[*wrapperspb.BytesValue](ctx, c, m, nil, req, opts...)
			if err == nil {
				break
			} else if try == 3 {
				die("first call", err)
			}
		}
		loop = func() {
			for !stopping.Load() {
				t0 := time.Now()
				_, err := client.RequestSingle[*wrapperspb.BytesValue](ctx, c, m, nil, req, opts...)
				finish(t0, err == nil)
			}
		}
	case "multi":
		loop = func() {
			for !stopping.Load() {
				t0 := time.Now()
				cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				rc, err := client.RequestMulti[*wrapperspb.BytesValue](cctx, c, "Fanout", nil, req)
				ok := err == nil
				got := 0
				for ok && got < *servers {
					r, more := <-rc
					if !more || r.Err != nil {
						ok = false
						break
					}
					got++
				}
				cancel()
				finish(t0, ok)
			}
		}
	case "stream":
		var st psrpc.ClientStream[*wrapperspb.BytesValue, *wrapperspb.BytesValue]
		for try := 1; ; try++ {
			st, err = client.OpenStream[*wrapperspb.BytesValue, *wrapperspb.BytesValue](ctx, c, "Chat", nil,
				psrpc.WithRequestTimeout(5*time.Second))
			if err == nil {
				break
			} else if try == 3 {
				die("open stream", err)
			}
		}
		go func() {
			for range st.Channel() {
			}
		}()
		loop = func() {
			for !stopping.Load() {
				t0 := time.Now()
				err := st.Send(req)
				finish(t0, err == nil)
			}
		}
	default:
		die("client", fmt.Errorf("scenario %s has no client", *scenario))
	}
	for i := 0; i < *inflight; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); loop() }()
	}
	el, n := window()
	stopping.Store(true)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(6 * time.Second):
	}
	emitResult("client", n, el, errs.Load(), &lat)
}

// ---------------------------------------------------------------------------
// The measuring publisher

type credits struct {
	f            []*os.File
	got          []uint64
	ch           chan int
	lost, lastMn uint64
	lastT        time.Time
}

func newCredits(files []*os.File) *credits {
	c := &credits{f: files, got: make([]uint64, len(files)), ch: make(chan int, 1024)}
	for i, f := range files {
		go func(i int, f *os.File) {
			buf := make([]byte, 4096)
			for {
				n, err := f.Read(buf)
				if n > 0 {
					c.ch <- i<<16 | n
				}
				if err != nil {
					return
				}
			}
		}(i, f)
	}
	return c
}

func (c *credits) min() uint64 {
	m := ^uint64(0)
	for _, g := range c.got {
		if g < m {
			m = g
		}
	}
	if len(c.got) == 0 {
		return m
	}
	return m * creditEvery
}

// outstanding: published and not yet confirmed by every subscriber; after
// 200 ms without progress the unconfirmed ones are written off (bench_common.h).
func (c *credits) outstanding(published uint64) uint64 {
	if len(c.got) == 0 {
		return 0
	}
	m := c.min()
	now := time.Now()
	if m != c.lastMn || c.lastT.IsZero() {
		c.lastMn, c.lastT = m, now
	} else if now.Sub(c.lastT) > 200*time.Millisecond {
		c.lost = 0
		if published > m {
			c.lost = published - m
		}
		c.lastT = now
	}
	done := m + c.lost
	if published > done {
		return published - done
	}
	return 0
}

func (c *credits) wait() {
	select {
	case v := <-c.ch:
		c.got[v>>16] += uint64(v & 0xffff)
	case <-time.After(100 * time.Millisecond):
	}
	for {
		select {
		case v := <-c.ch:
			c.got[v>>16] += uint64(v & 0xffff)
		default:
			return
		}
	}
}

func runPublisher(s *server.RPCServer, cr *credits) {
	msg := makePayload(*payload)
	v := msg.Value
	ctx := context.Background()
	var published, measured uint64
	warmEnd := time.Now().Add(time.Duration(*warmup * float64(time.Second)))
	var t0, end time.Time
	started := false
	for {
		now := time.Now()
		if !started && !now.Before(warmEnd) {
			started = true
			t0 = now
			end = now.Add(time.Duration(*duration * float64(time.Second)))
			emit("START")
		}
		if started && !now.Before(end) {
			break
		}
		if cr.outstanding(published) >= uint64(*inflight) {
			cr.wait()
			continue
		}
		binary.LittleEndian.PutUint64(v[payloadTS:], uint64(time.Now().UnixNano()))
		if started {
			v[payloadFlag] = 1
		} else {
			v[payloadFlag] = 0
		}
		if err := s.Publish(ctx, "Updates", nil, msg); err != nil {
			die("publish", err)
		}
		published++
		if started {
			measured++
		}
	}
	el := time.Since(t0).Seconds()
	emit("END")
	emitResult("publisher", measured, el, 0, nil)
}

func parseFds(list string) []*os.File {
	var fs []*os.File
	for _, p := range strings.Split(list, ",") {
		if p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil {
			die("credit fd", err)
		}
		fs = append(fs, os.NewFile(uintptr(n), "credit"))
	}
	return fs
}

// ---------------------------------------------------------------------------

func main() {
	flag.Parse()
	if *busURL == "" || *role == "" {
		flag.Usage()
		os.Exit(2)
	}
	methodName(*scenario)
	switch *role {
	case "server":
		startServer(*id)
		time.Sleep(settle) // Go returns before the broker confirmed the subscription
		emit("READY")
		waitStdinEOF()
	case "subscriber":
		var f *os.File
		if *creditFd >= 0 {
			f = os.NewFile(uintptr(*creditFd), "credit")
		}
		s := startSubscriber(f)
		time.Sleep(settle)
		emit("READY")
		waitStdinEOF()
		s.report()
	case "publisher":
		s := startServer(*id)
		cr := newCredits(parseFds(*creditFs))
		time.Sleep(settle)
		emit("READY")
		runPublisher(s, cr)
		waitStdinEOF()
	case "client":
		emit("READY")
		runClient()
		waitStdinEOF()
	case "local":
		if *scenario == "sub" {
			var ss []*subscriber
			var rs []*os.File
			for i := 0; i < *subs; i++ {
				var p [2]int
				if err := syscall.Pipe(p[:]); err != nil {
					die("pipe", err)
				}
				rs = append(rs, os.NewFile(uintptr(p[0]), "credit-r"))
				ss = append(ss, startSubscriber(os.NewFile(uintptr(p[1]), "credit-w")))
			}
			s := startServer(0)
			emit("READY")
			runPublisher(s, newCredits(rs))
			waitStdinEOF()
			for _, x := range ss {
				x.report()
			}
		} else {
			for i := 0; i < *servers; i++ {
				startServer(i)
			}
			emit("READY")
			runClient()
			waitStdinEOF()
		}
	default:
		flag.Usage()
		os.Exit(2)
	}
	out.Flush()
	os.Exit(0)
}
