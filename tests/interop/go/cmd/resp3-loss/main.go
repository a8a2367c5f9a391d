// Command resp3-loss measures whether plain go-redis (no psrpc) loses Redis
// pub/sub messages, over RESP3 and over RESP2 (issue 22, docs/interop.md).
//
// go-redis v9.20.0 (the version livekit/psrpc v0.8.2 requires) speaking RESP3,
// its default, peeks the name of each push frame from whatever is buffered
// before reading it; when a socket read ended inside the first bytes of a
// "message" frame it sees a truncated name (e.g. "mes"), takes the frame for
// a notification it does not handle, and discards it. RESP2 has no push
// frames, so the same traffic over RESP2 loses nothing.
//
// One subscriber, read the way psrpc's Redis bus reads (PubSub.ReceiveMessage
// in a loop), and publishers that pipeline PUBLISH commands (as psrpc's Redis
// bus does) so that the subscriber's socket reads end at arbitrary places in
// the stream. Redis delivered every message to the subscriber: the channel has
// exactly one subscriber when publishing starts (PUBSUB NUMSUB), every PUBLISH
// reaches at least one (pattern subscribers such as the interop sniffer on a
// shared broker may add to the count), and the subscriber's connection is the
// same one (CLIENT LIST, by its name) from the first PUBLISH to the end, so no
// reconnection can hide a loss. A message Redis delivered and the subscriber
// never returned was lost inside the client.
//
// It prints one line per run,
//
//	RESULT go-redis=v9.20.0 protocol=3 round=1 published=20000 received=19999 lost=1 ...
//
// and exits 0 whatever the counts: it measures the Go anchor, not libpsrpc. It
// exits 1 when it cannot measure: no broker, a failed subscription or
// PUBLISH, another subscriber of the channel, a PUBLISH that reached none, a
// reconnected subscriber, a duplicated or foreign message, or a run that did
// not finish within -timeout.
package main

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

func main() {
	defURL := os.Getenv("PSRPC_TEST_REDIS_URL")
	if defURL == "" {
		defURL = "redis://127.0.0.1:6379"
	}
	url := flag.String("url", defURL, "Redis URL (default $PSRPC_TEST_REDIS_URL)")
	n := flag.Int("n", 20000, "messages published per run")
	size := flag.Int("size", 64, "payload bytes per message (>= 8)")
	pubs := flag.Int("publishers", 8, "concurrent publishers")
	batch := flag.Int("batch", 256, "PUBLISH commands per pipeline")
	protos := flag.String("protocols", "3,2", "protocols to run, in order (3 = RESP3, 2 = RESP2)")
	rounds := flag.Int("rounds", 1, "runs per protocol")
	timeout := flag.Duration("timeout", 120*time.Second, "bound on the whole program")
	flag.Parse()
	if *n < 1 || *size < 8 || *pubs < 1 || *batch < 1 || *rounds < 1 {
		fail(errors.New("-n, -publishers, -batch, -rounds must be >= 1 and -size >= 8"))
	}
	var protocols []int
	for _, s := range strings.Split(*protos, ",") {
		p, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || (p != 2 && p != 3) {
			fail(fmt.Errorf("-protocols: %q is not 2 or 3", s))
		}
		for _, q := range protocols {
			if q == p {
				fail(fmt.Errorf("-protocols: %d given twice (use -rounds)", p))
			}
		}
		protocols = append(protocols, p)
	}
	opts, err := redis.ParseURL(*url)
	if err != nil {
		fail(fmt.Errorf("-url: %w", err))
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	ver := goRedisVersion()
	fmt.Printf("resp3-loss: go-redis %s, %s, %d messages of %d bytes per run, %d publishers, "+
		"pipelines of %d\n", ver, *url, *n, *size, *pubs, *batch)
	total := map[int][2]int{} // protocol -> {lost, published}
	for _, p := range protocols {
		for r := 1; r <= *rounds; r++ {
			res, err := run(ctx, opts, p, r, *n, *size, *pubs, *batch)
			if err != nil {
				fail(fmt.Errorf("RESP%d round %d: %w", p, r, err))
			}
			fmt.Printf("RESULT go-redis=%s protocol=%d round=%d published=%d received=%d lost=%d "+
				"first_lost=%s seconds=%.2f\n", ver, p, r, *n, res.received, *n-res.received,
				res.firstLost, res.elapsed.Seconds())
			t := total[p]
			total[p] = [2]int{t[0] + *n - res.received, t[1] + *n}
		}
	}
	for _, p := range protocols {
		t := total[p]
		fmt.Printf("TOTAL go-redis=%s protocol=%d published=%d lost=%d\n", ver, p, t[1], t[0])
	}
}

type result struct {
	received  int
	firstLost string
	elapsed   time.Duration
}

func run(ctx context.Context, base *redis.Options, protocol, round, n, size, pubs, batch int,
) (result, error) {
	start := time.Now()
	o := *base
	o.Protocol = protocol
	pub := redis.NewClient(&o)
	defer pub.Close()
	subName := fmt.Sprintf("resp3-loss-%d-%d-%d", os.Getpid(), protocol, round)
	o.ClientName = subName
	sub := redis.NewClient(&o)
	defer sub.Close()
	if err := pub.Ping(ctx).Err(); err != nil {
		return result{}, fmt.Errorf("redis %s: %w", base.Addr, err)
	}

	channel := fmt.Sprintf("resp3-loss.%d.%d.%d", os.Getpid(), protocol, round)
	ps := sub.Subscribe(ctx, channel)
	if _, err := ps.Receive(ctx); err != nil { // the subscription confirmation
		_ = ps.Close()
		return result{}, fmt.Errorf("subscribe: %w", err)
	}
	defer ps.Close()
	if subs, err := pub.PubSubNumSub(ctx, channel).Result(); err != nil || subs[channel] != 1 {
		return result{}, fmt.Errorf("PUBSUB NUMSUB %s: %v subscribers (%v), not 1",
			channel, subs[channel], err)
	}
	connID, err := subConnID(ctx, pub, subName)
	if err != nil {
		return result{}, err
	}

	// The receiver stops when ps is closed (a blocked read does not see a
	// cancelled context, only the deadline of ctx).
	seen := make([]bool, n)
	var received atomic.Int64
	markers := make(chan struct{}, 1)
	var stopping atomic.Bool
	recvErr := make(chan error, 1)
	stopRecv := func() { stopping.Store(true); _ = ps.Close() }
	defer stopRecv()
	go func() {
		for {
			m, err := ps.ReceiveMessage(ctx)
			if err != nil {
				if stopping.Load() {
					err = nil
				}
				recvErr <- err
				return
			}
			p := []byte(m.Payload)
			if m.Channel != channel || len(p) != size {
				recvErr <- fmt.Errorf("foreign message on %q (%d bytes)", m.Channel, len(p))
				return
			}
			seq := binary.BigEndian.Uint64(p)
			if seq >= uint64(n) { // an end marker
				select {
				case markers <- struct{}{}:
				default:
				}
				continue
			}
			if seen[seq] {
				recvErr <- fmt.Errorf("sequence number %d received twice", seq)
				return
			}
			seen[seq] = true
			received.Add(1)
		}
	}()

	// Publishers: publisher i sends i, i+pubs, i+2*pubs, ... in pipelines.
	var wg sync.WaitGroup
	pubErr := make(chan error, pubs)
	for i := 0; i < pubs; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			payload := make([]byte, size)
			for j := 8; j < size; j++ {
				payload[j] = byte('a' + j%26)
			}
			var seqs []int
			for s := i; s < n; s += pubs {
				seqs = append(seqs, s)
			}
			for len(seqs) > 0 {
				k := min(batch, len(seqs))
				pipe := pub.Pipeline()
				cmds := make([]*redis.IntCmd, k)
				for j, s := range seqs[:k] {
					binary.BigEndian.PutUint64(payload, uint64(s))
					cmds[j] = pipe.Publish(ctx, channel, string(payload))
				}
				if _, err := pipe.Exec(ctx); err != nil {
					pubErr <- fmt.Errorf("publish: %w", err)
					return
				}
				for j, c := range cmds {
					if c.Val() < 1 {
						pubErr <- fmt.Errorf("PUBLISH of %d reached %d subscribers",
							seqs[j], c.Val())
						return
					}
				}
				seqs = seqs[k:]
			}
		}(i)
	}
	wg.Wait()
	close(pubErr)
	if err := <-pubErr; err != nil {
		return result{}, err
	}

	// Redis delivered everything (every PUBLISH answered 1) and delivers to
	// one subscriber in order: once a marker published after the last
	// PUBLISH arrives, every message has been returned or lost. A marker can
	// be lost too, so one is published every 100 ms until one arrives.
	for k := 0; ; k++ {
		marker := make([]byte, size)
		binary.BigEndian.PutUint64(marker, uint64(n+k))
		if err := pub.Publish(ctx, channel, marker).Err(); err != nil {
			return result{}, fmt.Errorf("publish marker: %w", err)
		}
		select {
		case <-markers:
		case err := <-recvErr:
			if err == nil {
				err = errors.New("stopped")
			}
			return result{}, fmt.Errorf("subscriber: %w", err)
		case <-ctx.Done():
			return result{}, fmt.Errorf("timed out with %d of %d received: %w",
				received.Load(), n, ctx.Err())
		case <-time.After(100 * time.Millisecond):
			continue
		}
		break
	}
	if id, err := subConnID(ctx, pub, subName); err != nil || id != connID {
		return result{}, fmt.Errorf("the subscriber reconnected during the run "+
			"(connection %d, now %d: %v): cannot measure", connID, id, err)
	}
	stopRecv()
	if err := <-recvErr; err != nil {
		return result{}, fmt.Errorf("subscriber: %w", err)
	}
	res := result{received: int(received.Load()), firstLost: "-", elapsed: time.Since(start)}
	var lost []string
	for s, ok := range seen {
		if !ok && len(lost) < 5 {
			lost = append(lost, strconv.Itoa(s))
		}
	}
	if len(lost) > 0 {
		res.firstLost = strings.Join(lost, ",")
	}
	return res, nil
}

// subConnID is the Redis id of the one connection named name (CLIENT LIST).
func subConnID(ctx context.Context, c *redis.Client, name string) (int64, error) {
	list, err := c.ClientList(ctx).Result()
	if err != nil {
		return 0, fmt.Errorf("CLIENT LIST: %w", err)
	}
	var ids []int64
	for _, line := range strings.Split(list, "\n") {
		var id int64 = -1
		named := false
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "id="); ok {
				id, _ = strconv.ParseInt(v, 10, 64)
			} else if f == "name="+name {
				named = true
			}
		}
		if named && id >= 0 {
			ids = append(ids, id)
		}
	}
	if len(ids) != 1 {
		return 0, fmt.Errorf("CLIENT LIST: %d connections named %s (ids %v), not 1",
			len(ids), name, ids)
	}
	return ids[0], nil
}

// goRedisVersion is the go-redis module version this binary was built with.
func goRedisVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/redis/go-redis/v9" {
				if d.Replace != nil && d.Replace.Version != "" {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return "v" + redis.Version()
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "resp3-loss: %v\n", err)
	os.Exit(1)
}
