package interop

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libpsrpc/interop/confsvc"
	"github.com/nats-io/nats.go"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/encoding/protowire"
)

// sniffer watches every message on the broker (Redis PSUBSCRIBE *, NATS >)
// and reads the psrpc envelope (Msg: type_url 1, value 2, channel 3,
// compression 4) without decoding the payload.
type sniffer struct {
	mu    sync.Mutex
	msgs  []sniffed
	close func()
}

type sniffed struct {
	channel    string
	typeURL    string
	compressed bool
	value      []byte // decompressed
	origin     string // the sender's id: Request.client_id, Response/ClaimRequest.server_id, Update.server_id
}

// stringField returns the first string field num of a protobuf message.
func stringField(b []byte, want protowire.Number) string {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return ""
		}
		b = b[n:]
		if num == want && typ == protowire.BytesType {
			v, _ := protowire.ConsumeBytes(b)
			return string(v)
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return ""
		}
		b = b[m:]
	}
	return ""
}

func parseMsg(b []byte) (sniffed, bool) {
	var s sniffed
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return s, false
		}
		b = b[n:]
		switch {
		case typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return s, false
			}
			switch num {
			case 1:
				s.typeURL = string(v)
			case 2:
				s.value = append([]byte(nil), v...)
			}
			b = b[m:]
		case typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return s, false
			}
			if num == 4 {
				s.compressed = uint32(v) == 1
			}
			b = b[m:]
		default:
			m := protowire.ConsumeFieldValue(num, typ, b)
			if m < 0 {
				return s, false
			}
			b = b[m:]
		}
	}
	if s.compressed {
		zr, err := gzip.NewReader(bytes.NewReader(s.value))
		if err != nil {
			return s, false
		}
		if s.value, err = io.ReadAll(zr); err != nil {
			return s, false
		}
	}
	switch {
	case strings.HasSuffix(s.typeURL, "/psrpc.conformance.Update"):
		s.origin = stringField(s.value, 3)
	default: // Request.client_id, Response.server_id, ClaimRequest.server_id
		s.origin = stringField(s.value, 2)
	}
	return s, s.typeURL != ""
}

func (s *sniffer) add(channel string, data []byte) {
	m, ok := parseMsg(data)
	if !ok {
		return
	}
	m.channel = channel
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
}

func startSniffer(t *testing.T, e *env) *sniffer {
	t.Helper()
	s := &sniffer{}
	switch e.bus {
	case "redis":
		// RESP2 (go-redis v9.20.0 drops messages over RESP3, issue 22);
		// on a Redis Cluster a ClusterClient (classic pub/sub is
		// cluster-wide: one node sees every PUBLISH).
		rc, err := confsvc.RedisClient(e.busURL)
		if err != nil {
			t.Fatal(err)
		}
		ps := rc.PSubscribe(context.Background(), "*")
		if _, err := ps.Receive(context.Background()); err != nil { // the subscription confirmation
			t.Fatalf("sniffer: %v", err)
		}
		ch := ps.Channel(redis.WithChannelSize(100000))
		done := make(chan struct{})
		go func() {
			defer close(done)
			for m := range ch {
				s.add(m.Channel, []byte(m.Payload))
			}
		}()
		s.close = func() { _ = ps.Close(); <-done; _ = rc.Close() }
	case "nats":
		nc, err := nats.Connect(e.busURL)
		if err != nil {
			t.Fatal(err)
		}
		sub, err := nc.Subscribe(">", func(m *nats.Msg) { s.add(m.Subject, m.Data) })
		if err != nil {
			t.Fatal(err)
		}
		_ = sub.SetPendingLimits(-1, -1)
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		s.close = func() { _ = nc.Drain(); time.Sleep(50 * time.Millisecond); nc.Close() }
	}
	t.Cleanup(s.stop)
	return s
}

func (s *sniffer) stop() {
	if s.close != nil {
		s.close()
		s.close = nil
	}
}

// count returns how many messages of a type (a type URL ending in "/"+name)
// sent by a process whose id from is true for (a client or server of one
// language) with a (decompressed) value of at least minSize bytes were seen,
// and how many of them were compressed.
func (s *sniffer) count(name string, from func(id string) bool, minSize int) (all, compressed int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if strings.HasSuffix(m.typeURL, "/"+name) && from(m.origin) && len(m.value) >= minSize {
			all++
			if m.compressed {
				compressed++
			}
		}
	}
	return
}

// handlingClaims counts ClaimRequests with handling = true (field 4).
func (s *sniffer) handlingClaims() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if !strings.HasSuffix(m.typeURL, "/internal.ClaimRequest") {
			continue
		}
		b := m.value
		for len(b) > 0 {
			num, typ, k := protowire.ConsumeTag(b)
			if k < 0 {
				break
			}
			b = b[k:]
			l := protowire.ConsumeFieldValue(num, typ, b)
			if l < 0 {
				break
			}
			if num == 4 && typ == protowire.VarintType {
				if v, _ := protowire.ConsumeVarint(b); v == 1 {
					n++
				}
			}
			b = b[l:]
		}
	}
	return n
}
