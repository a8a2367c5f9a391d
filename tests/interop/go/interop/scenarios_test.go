package interop

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/libpsrpc/interop/conformance"
	"github.com/libpsrpc/interop/confsvc"
)

func compressionOf(threshold int) confsvc.Compression {
	return confsvc.Compression{Threshold: threshold}
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func expectErr(t *testing.T, who string, err *CallErr, code, message string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want %s %q", who, code, message)
		return
	}
	if err.Code != code || (message != "" && err.Message != message) {
		t.Errorf("%s: got %s %q, want %s %q", who, err.Code, err.Message, code, message)
	}
}

func within(t *testing.T, who string, d, lo, hi time.Duration) {
	t.Helper()
	hi = scaled(hi)
	if d < lo || d > hi {
		t.Errorf("%s: took %v, want %v..%v", who, d.Round(time.Millisecond), lo, hi)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// forClients runs f once per client of the cell, one after the other, as
// subtests named by the client's language ("go_client", "py_client", ...).
func (e *env) forClients(t *testing.T, f func(t *testing.T, c Client)) {
	for _, c := range e.clients {
		c := c
		t.Run(c.Kind()+"_client", func(t *testing.T) { f(t, c) })
	}
}

// forClientsAtOnce runs f for every client of the cell at the same time
// (the mixed cell: the one service called at once by clients of every
// language); it returns when all are done.
func (e *env) forClientsAtOnce(t *testing.T, f func(t *testing.T, c Client)) {
	if len(e.clients) == 1 {
		e.forClients(t, f)
		return
	}
	t.Run("at_once", func(t *testing.T) {
		for _, c := range e.clients {
			c := c
			t.Run(c.Kind()+"_client", func(t *testing.T) { t.Parallel(); f(t, c) })
		}
	})
}

// hasStreams reports whether the client program of a language has streams
// ("--has-streams" exits 0: the C programs reference the stream functions
// of libpsrpc weakly). Go has.
func hasStreams(kind string) bool {
	if kind == "go" {
		return true
	}
	argv := append(append([]string{}, slots[kind].Client...), "--has-streams")
	return exec.Command(argv[0], argv[1:]...).Run() == nil
}

// TestInterop runs every scenario for one cell: PSRPC_INTEROP_BUS and the
// languages of PSRPC_INTEROP_CLIENTS × PSRPC_INTEROP_SERVERS (or mixed).
func TestInterop(t *testing.T) {
	bus := os.Getenv("PSRPC_INTEROP_BUS")
	if bus != "redis" && bus != "nats" {
		t.Fatalf("set PSRPC_INTEROP_BUS (redis|nats)")
	}
	dir, err := cellDirection()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cell %s on %s: clients %v, servers %v", dir.name, bus, dir.clientKinds, dir.serverKinds)
	e := &env{bus: bus, busURL: busURL(bus), dir: dir}
	for _, k := range dir.clientKinds {
		c := e.newClient(t, k, "", 0)
		e.clients = append(e.clients, c)
		defer closeClient(t, c)
	}
	e.probe = e.newClient(t, "go", "", 0)
	defer e.probe.Close()
	streams := true
	for _, k := range e.kinds() {
		streams = streams && hasStreams(k)
	}
	e.streams = streams
	// Foreign servers: once thoroughly, then briefly before each scenario.
	e.checkNoForeignServers(t, 500*time.Millisecond)

	scenarios := []struct {
		name string
		f    func(t *testing.T, e *env)
	}{
		{"echo_payloads", scEchoPayloads},
		{"add", scAdd},
		{"errors", scErrors},
		{"metadata", scMetadata},
		{"deadline", scDeadline},
		{"cancel", scCancel},
		{"no_servers", func(t *testing.T, e *env) { scNoServers(t, e, streams) }},
		{"claim", scClaim},
		{"fanout", scFanout},
		{"region_topics", scRegionTopics},
		{"subscriptions", scSubscriptions},
		{"chat", func(t *testing.T, e *env) {
			if !streams {
				t.Fatal("the libpsrpc under test has no stream functions (psrpc_client_open_stream)")
			}
			scChat(t, e)
		}},
		{"malformed_request", scMalformed},
		{"compression", scCompression},
		{"skip_claim", scSkipClaim},
		{"client_ids", scClientIDs},
		{"server_ids", scServerIDs},
		{"graceful_shutdown", scGraceful},
	}
	// U14 needs the generated Go UnimplementedConformanceServer: the scenario
	// exists only in directions with Go servers (not listed, rather than skipped).
	if e.hasServerKind("go") {
		scenarios = append(scenarios, struct {
			name string
			f    func(t *testing.T, e *env)
		}{"unimplemented", scUnimplemented})
	}
	only := os.Getenv("PSRPC_INTEROP_SCENARIOS") // comma-separated subset, for debugging
	for _, sc := range scenarios {
		if only != "" && !contains(strings.Split(only, ","), sc.name) {
			continue
		}
		sc := sc
		t.Run(sc.name, func(t *testing.T) {
			e.checkNoForeignServers(t, probeTime)
			sc.f(t, e)
		})
	}
}

// --- Echo with payloads of 0 B, 1 KiB, 512 KiB and 1 MiB (U1, U2, U15) -------

// probeTime is how long the probe before each scenario waits for answers
// from servers not started by the test (on loopback they answer within
// milliseconds).
const probeTime = 150 * time.Millisecond

func scEchoPayloads(t *testing.T, e *env) {
	procs := e.servers(t, e.pool(2, srvSpec{})...)
	srvIDs := ids(procs)
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		for _, size := range []int{0, 1024, 512 << 10, 1 << 20} {
			payload := randBytes(size)
			tag := fmt.Sprintf("size-%d", size)
			start := time.Now()
			resp, err := c.Echo("Echo", &conformance.EchoRequest{Payload: payload, Tag: tag},
				CallOpts{Timeout: 10 * time.Second})
			took := time.Since(start)
			if e.bus == "nats" && size == 1<<20 {
				// 1 MiB + envelope exceeds NATS's default max_payload (1 MiB):
				// the publish fails at once. Go wraps it as internal; libpsrpc
				// (C and every binding of it) reports resource_exhausted (its
				// documented size refusal).
				want := "resource_exhausted"
				if c.Kind() == "go" {
					want = "internal"
				}
				expectErr(t, tag, err, want, "")
				within(t, tag, took, 0, 500*time.Millisecond)
				if err != nil {
					t.Logf("NATS, 1 MiB payload, %s client: %s %q after %v", c.Kind(), err.Code,
						err.Message, took.Round(time.Millisecond))
				}
				continue
			}
			if err != nil {
				t.Errorf("%s: %v", tag, err)
				continue
			}
			if !bytes.Equal(resp.Payload, payload) || resp.Tag != tag || !contains(srvIDs, resp.ServerId) {
				t.Errorf("%s: response payload %d bytes (equal %v), tag %q, server %q (servers %v)", tag,
					len(resp.Payload), bytes.Equal(resp.Payload, payload), resp.Tag, resp.ServerId, srvIDs)
			}
		}
	})
}

// --- Add: every call answered exactly once (U3) -----------------------------

func scAdd(t *testing.T, e *env) {
	procs := e.servers(t, e.pool(2, srvSpec{})...)
	var mu sync.Mutex
	var values []int32
	const perClient = 40
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		var wg sync.WaitGroup
		for i := 0; i < perClient; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				v, err := c.Add(1, CallOpts{Timeout: 5 * time.Second})
				if err != nil {
					t.Errorf("Add: %v", err)
					return
				}
				mu.Lock()
				values = append(values, v)
				mu.Unlock()
			}()
		}
		wg.Wait()
	})
	// Each server's counter runs 1..k_s: the values seen are the union of
	// such runs, so the count of value v never grows with v, starts at most
	// at the number of servers, and sums to the number of calls.
	counts := map[int32]int{}
	maxV := int32(0)
	for _, v := range values {
		counts[v]++
		if v > maxV {
			maxV = v
		}
	}
	total, prev := 0, len(procs)
	for v := int32(1); v <= maxV; v++ {
		if counts[v] > prev {
			t.Errorf("value %d returned %d times (after %d): a call was answered twice or a counter skipped", v, counts[v], prev)
		}
		prev = counts[v]
		total += counts[v]
	}
	if want := perClient * len(e.clients); total != want || len(values) != want {
		t.Errorf("%d answers (%d in runs 1..k), want %d", len(values), total, want)
	}
	servedBy := 0
	if counts[1] > 0 {
		servedBy = counts[1]
	}
	t.Logf("Add: %d calls over %d servers, %d servers used", len(values), len(procs), servedBy)
}

// --- Errors: every psrpc code, messages, details (U8, U9) -------------------

var allCodes = []string{
	"canceled", "unknown", "invalid_argument", "malformed_request", "deadline_exceeded",
	"not_found", "already_exists", "permission_denied", "resource_exhausted",
	"failed_precondition", "aborted", "out_of_range", "unimplemented", "internal",
	"malformed_result", "unavailable", "data_loss", "unauthenticated", "not_acceptable",
	"unprocessable_entity", "upstream_server_error", "upstream_client_error",
	"my_custom_code",
}

func scErrors(t *testing.T, e *env) {
	e.servers(t, e.pool(2, srvSpec{})...)
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		var wg sync.WaitGroup
		for i, code := range allCodes {
			wg.Add(1)
			go func(i int, code string) {
				defer wg.Done()
				msg := fmt.Sprintf("failed with %s: é ✓ | %d", code, i)
				withDetails := i%2 == 0
				req := &conformance.EchoRequest{FailCode: code, FailMessage: msg}
				if withDetails {
					req.Tag = "tag-" + code
					req.Payload = []byte{0, 1, 2, byte(i)}
				}
				_, err := c.Echo("Echo", req, CallOpts{Timeout: 5 * time.Second})
				expectErr(t, code, err, code, msg)
				if err == nil {
					return
				}
				if !withDetails {
					if len(err.Details) != 0 {
						t.Errorf("%s: %d details, want none", code, len(err.Details))
					}
					return
				}
				if len(err.Details) != 2 {
					t.Errorf("%s: %d details, want 2", code, len(err.Details))
					return
				}
				var s wrapperspb.StringValue
				var b wrapperspb.BytesValue
				if err.Details[0].TypeUrl != "type.googleapis.com/google.protobuf.StringValue" ||
					proto.Unmarshal(err.Details[0].Value, &s) != nil || s.Value != req.Tag {
					t.Errorf("%s: detail 0 = %s %x", code, err.Details[0].TypeUrl, err.Details[0].Value)
				}
				if err.Details[1].TypeUrl != "type.googleapis.com/google.protobuf.BytesValue" ||
					proto.Unmarshal(err.Details[1].Value, &b) != nil || !bytes.Equal(b.Value, req.Payload) {
					t.Errorf("%s: detail 1 = %s %x", code, err.Details[1].TypeUrl, err.Details[1].Value)
				}
			}(i, code)
		}
		wg.Wait()
	})
}

// --- Metadata round trip (U1, U16) -------------------------------------------

func scMetadata(t *testing.T, e *env) {
	e.servers(t, e.pool(1, srvSpec{})...)
	md := map[string]string{
		"ключ":         "значение ✓ 🎉",
		"日本語キー":        "値",
		"a key":        "a value with spaces",
		"empty":        "",
		"x-trace|id.1": "00-abc-01",
		"emoji-🎉-key":  "é",
	}
	for i := 0; len(md) < 100; i++ {
		md[fmt.Sprintf("key-%03d", i)] = fmt.Sprintf("value-%d-%s", i, strings.Repeat("v", i))
	}
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		resp, err := c.Echo("Echo", &conformance.EchoRequest{Tag: "md"}, CallOpts{Metadata: md, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("Echo: %v", err)
		}
		if !reflect.DeepEqual(resp.Metadata, md) {
			for k, v := range md {
				if got, ok := resp.Metadata[k]; !ok || got != v {
					t.Errorf("metadata %q: got %q (present %v), want %q", k, got, ok, v)
				}
			}
			if len(resp.Metadata) != len(md) {
				t.Errorf("%d metadata entries back, want %d", len(resp.Metadata), len(md))
			}
		}
	})
}

// --- Deadlines: a handler slower than the timeout (U6) -----------------------

func scDeadline(t *testing.T, e *env) {
	e.servers(t, e.pool(1, srvSpec{})...)
	e.forClients(t, func(t *testing.T, c Client) {
		start := time.Now()
		_, err := c.Echo("Echo", &conformance.EchoRequest{DelayMs: 1500}, CallOpts{Timeout: 500 * time.Millisecond})
		took := time.Since(start)
		expectErr(t, "slow handler", err, "deadline_exceeded", "request timed out")
		within(t, "slow handler", took, 450*time.Millisecond, 1200*time.Millisecond)
		// The late response is dropped by the client; the server keeps serving.
		if _, err := c.Echo("Echo", &conformance.EchoRequest{Tag: "after"}, CallOpts{Timeout: 3 * time.Second}); err != nil {
			t.Errorf("Echo after a deadline: %v", err)
		}
	})
}

// --- Cancel after selection (U7) ---------------------------------------------

func scCancel(t *testing.T, e *env) {
	e.servers(t, e.pool(1, srvSpec{})...)
	e.forClients(t, func(t *testing.T, c Client) {
		start := time.Now()
		p := c.EchoAsync("Echo", &conformance.EchoRequest{DelayMs: 1000}, CallOpts{Timeout: 5 * time.Second})
		time.Sleep(300 * time.Millisecond)
		p.Cancel()
		_, err := p.Wait()
		expectErr(t, "canceled call", err, "canceled", "request canceled")
		within(t, "canceled call", time.Since(start), 250*time.Millisecond, 900*time.Millisecond)
	})
}

// --- No server (U4, M3, T5) --------------------------------------------------

func scNoServers(t *testing.T, e *env, streams bool) {
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		var wg sync.WaitGroup
		run := func(name string, f func()) {
			wg.Add(1)
			go func() { defer wg.Done(); f() }()
		}
		for _, m := range []string{"Echo", "Claim", "RegionEcho"} {
			m := m
			run(m, func() {
				start := time.Now()
				_, err := c.Echo(m, &conformance.EchoRequest{}, CallOpts{Topic: map[bool]string{true: "nobody"}[m == "RegionEcho"], Timeout: 3 * time.Second})
				expectErr(t, m, err, "unavailable", "no response from servers")
				within(t, m, time.Since(start), 800*time.Millisecond, 2500*time.Millisecond)
			})
		}
		run("Fanout", func() {
			start := time.Now()
			res, err := c.Multi("Fanout", &conformance.EchoRequest{}, CallOpts{Timeout: time.Second})
			if err != nil || len(res) != 0 {
				t.Errorf("Fanout with no servers: %d results, error %v", len(res), err)
			}
			within(t, "Fanout", time.Since(start), 900*time.Millisecond, 2500*time.Millisecond)
		})
		if streams {
			run("Chat", func() {
				start := time.Now()
				_, err := c.Chat(CallOpts{Timeout: 3 * time.Second})
				expectErr(t, "Chat open", err, "unavailable", "no response from servers")
				within(t, "Chat open", time.Since(start), 800*time.Millisecond, 2500*time.Millisecond)
			})
		}
		wg.Wait()
	})
}

// --- Claim: affinity selection across servers (A1–A10) ----------------------

func scClaim(t *testing.T, e *env) {
	claim := func(t *testing.T, c Client, o CallOpts) (*conformance.EchoResponse, *CallErr, time.Duration) {
		start := time.Now()
		if o.Timeout == 0 {
			o.Timeout = 3 * time.Second
		}
		r, err := c.Echo("Claim", &conformance.EchoRequest{Tag: "claim"}, o)
		return r, err, time.Since(start)
	}
	expectServer := func(t *testing.T, who string, r *conformance.EchoResponse, err *CallErr, id string) {
		t.Helper()
		if err != nil {
			t.Errorf("%s: %v", who, err)
		} else if r.ServerId != id {
			t.Errorf("%s: handled by %s, want %s", who, r.ServerId, id)
		}
	}
	// Language layouts: one cell, one layout; the mixed cell: one layout per
	// server language with the best claim (the second server) on it and the
	// others on the next languages.
	layouts := [][]string{{"", "", ""}}
	if e.dir.mixed {
		layouts = nil
		n := len(e.dir.serverKinds)
		for i, k := range e.dir.serverKinds {
			layouts = append(layouts, []string{e.dir.serverKinds[(i+1)%n], k, e.dir.serverKinds[(i+2)%n]})
		}
	}
	for li, kinds := range layouts {
		t.Run(fmt.Sprintf("affinities_0.2_0.9_0.5_layout%d", li), func(t *testing.T) {
			procs := e.servers(t, srvSpec{kind: kinds[0], affinity: "0.2"},
				srvSpec{kind: kinds[1], affinity: "0.9"}, srvSpec{kind: kinds[2], affinity: "0.5"})
			e.forClientsAtOnce(t, func(t *testing.T, c Client) {
				// A1: the best claim wins
				r, err, _ := claim(t, c, CallOpts{})
				expectServer(t, "default selection", r, err, procs[1].id)
				// A9: a custom selection function picking the lowest
				r, err, _ = claim(t, c, CallOpts{Sel: &Sel{AffinityTimeout: 500 * time.Millisecond, Pick: "lowest"}})
				expectServer(t, "select lowest", r, err, procs[0].id)
				// A2: nobody reaches the minimum
				// (No ClaimResponse is sent: a Go server waits for one until the
				// request expires and its graceful shutdown waits for that, so
				// these unselected claims get short request timeouts.)
				_, err, took := claim(t, c, CallOpts{Timeout: time.Second, Sel: &Sel{Min: 0.95, AffinityTimeout: 500 * time.Millisecond}})
				expectErr(t, "minimum 0.95", err, "unavailable", "no servers available (received 3 responses)")
				within(t, "minimum 0.95", took, 450*time.Millisecond, 1500*time.Millisecond)
				// A3: maximum affinity short-cuts selection
				r, err, took = claim(t, c, CallOpts{Sel: &Sel{Max: 0.85, AffinityTimeout: 5 * time.Second}})
				expectServer(t, "maximum 0.85", r, err, procs[1].id)
				within(t, "maximum 0.85", took, 0, 2*time.Second)
				// A8: explicit options with only a minimum: selection uses the whole timeout
				_, err, took = claim(t, c, CallOpts{Timeout: time.Second, Sel: &Sel{Min: 0.1}})
				expectErr(t, "minimum only", err, "deadline_exceeded", "")
				within(t, "minimum only", took, 900*time.Millisecond, 2*time.Second)
			})
		})
	}
	t.Run("declining", func(t *testing.T) { // A5
		procs := e.servers(t, append([]srvSpec{{affinity: "0.3"}}, e.pool(1, srvSpec{affinity: "-1"})...)...)
		e.forClientsAtOnce(t, func(t *testing.T, c Client) {
			for i := 0; i < 3; i++ {
				r, err, _ := claim(t, c, CallOpts{})
				expectServer(t, "declining + 0.3", r, err, procs[0].id)
			}
		})
	})
	t.Run("only_declining", func(t *testing.T) { // A7
		var specs []srvSpec
		for range e.dir.serverKinds {
			specs = append(specs, srvSpec{affinity: "-1"})
		}
		e.servers(t, specs...)
		e.forClientsAtOnce(t, func(t *testing.T, c Client) {
			_, err, took := claim(t, c, CallOpts{})
			expectErr(t, "only declining", err, "unavailable", "no response from servers")
			within(t, "only declining", took, 800*time.Millisecond, 2500*time.Millisecond)
		})
	})
	t.Run("affinity_zero", func(t *testing.T) { // A6
		procs := e.servers(t, srvSpec{affinity: "0"})
		e.forClientsAtOnce(t, func(t *testing.T, c Client) {
			_, err, _ := claim(t, c, CallOpts{Timeout: 1500 * time.Millisecond})
			expectErr(t, "affinity 0, default options", err, "unavailable", "no servers available (received 1 responses)")
			r, err, _ := claim(t, c, CallOpts{Sel: &Sel{AcceptFirst: true, AffinityTimeout: time.Second}})
			expectServer(t, "affinity 0, accept first available", r, err, procs[0].id)
		})
	})
	t.Run("late_better_claim", func(t *testing.T) { // A10
		// The 0.5 claim arrives at once, the 0.9 claim 800 ms later: default
		// AFFINITY selection short-circuits 200 ms after the first claim.
		// (800, not 400: the first claim must arrive within 600 ms, which
		// holds with margin on a loaded 2-core machine.)
		procs := e.servers(t, srvSpec{affinity: "0.5"},
			srvSpec{affinity: "0.9", extra: []string{"--affinity-delay-ms", "800"}})
		e.forClientsAtOnce(t, func(t *testing.T, c Client) {
			r, err, took := claim(t, c, CallOpts{Timeout: 2 * time.Second})
			expectServer(t, "late better claim", r, err, procs[0].id)
			within(t, "late better claim", took, 150*time.Millisecond, 1000*time.Millisecond)
		})
	})
}

// --- Fanout across servers (M1) ----------------------------------------------

func scFanout(t *testing.T, e *env) {
	procs := e.servers(t, e.pool(3, srvSpec{})...)
	srvIDs := ids(procs)
	sort.Strings(srvIDs)
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		var wg sync.WaitGroup
		wg.Add(2)
		go func() {
			defer wg.Done()
			start := time.Now()
			res, err := c.Multi("Fanout", &conformance.EchoRequest{Tag: "fan", Payload: []byte("x")},
				CallOpts{Timeout: 1500 * time.Millisecond})
			within(t, "Fanout", time.Since(start), 1400*time.Millisecond, 3*time.Second)
			if err != nil {
				t.Errorf("Fanout: %v", err)
			}
			var got []string
			for _, r := range res {
				if r.Err != nil {
					t.Errorf("Fanout result error: %v", r.Err)
					continue
				}
				got = append(got, r.Resp.ServerId)
			}
			sort.Strings(got)
			if !reflect.DeepEqual(got, srvIDs) {
				t.Errorf("Fanout answered by %v, want %v", got, srvIDs)
			}
		}()
		go func() {
			defer wg.Done()
			failing := procs[1].id
			res, err := c.Multi("Fanout", &conformance.EchoRequest{Tag: "fan", FailCode: "not_found@" + failing,
				FailMessage: "fanout member failed"}, CallOpts{Timeout: 1500 * time.Millisecond})
			if err != nil {
				t.Errorf("Fanout: %v", err)
			}
			var ok []string
			fails := 0
			for _, r := range res {
				if r.Err != nil {
					fails++
					expectErr(t, "failing member", r.Err, "not_found", "fanout member failed")
				} else {
					ok = append(ok, r.Resp.ServerId)
				}
			}
			sort.Strings(ok)
			var want []string
			for _, p := range procs {
				if p.id != failing {
					want = append(want, p.id)
				}
			}
			sort.Strings(want)
			if fails != 1 || !reflect.DeepEqual(ok, want) {
				t.Errorf("Fanout with one failing member: ok from %v, %d errors; want ok from %v, 1 error", ok, fails, want)
			}
		}()
		wg.Wait()
	})
}

// --- Topics with odd characters (U19, M2) ------------------------------------

func scRegionTopics(t *testing.T, e *env) {
	topicsA := []string{"east", "a b", "x.y"}
	topicsB := []string{"east", "é日本🎉", "a|b"}
	specs := []srvSpec{{topics: topicsA}, {topics: topicsB}}
	// The mixed cell: a server of every further language, with a topic of
	// its own besides the shared one.
	for i := 2; i < len(e.dir.serverKinds); i++ {
		specs = append(specs, srvSpec{topics: []string{"east", fmt.Sprintf("t%d.%s", i, e.serverKind(i))}})
	}
	procs := e.servers(t, specs...)
	owner := map[string]string{"a b": procs[0].id, "x.y": procs[0].id, "é日本🎉": procs[1].id, "a|b": procs[1].id}
	for i := 2; i < len(procs); i++ {
		owner[specs[i].topics[1]] = procs[i].id
	}
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		var wg sync.WaitGroup
		run := func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() }
		for topic, id := range owner {
			topic, id := topic, id
			run(func() {
				r, err := c.Echo("RegionEcho", &conformance.EchoRequest{Tag: topic}, CallOpts{Topic: topic, Timeout: 3 * time.Second})
				if err != nil {
					t.Errorf("RegionEcho %q: %v", topic, err)
				} else if r.ServerId != id || r.Topic != topic || r.Tag != topic {
					t.Errorf("RegionEcho %q: server %s topic %q tag %q, want server %s", topic, r.ServerId, r.Topic, r.Tag, id)
				}
			})
			run(func() {
				res, err := c.Multi("RegionFanout", &conformance.EchoRequest{}, CallOpts{Topic: topic, Timeout: time.Second})
				if err != nil || len(res) != 1 || res[0].Err != nil || res[0].Resp.ServerId != id || res[0].Resp.Topic != topic {
					t.Errorf("RegionFanout %q: %d results %+v, error %v; want one from %s", topic, len(res), res, err, id)
				}
			})
		}
		run(func() {
			r, err := c.Echo("RegionEcho", &conformance.EchoRequest{}, CallOpts{Topic: "east", Timeout: 3 * time.Second})
			if err != nil || r.Topic != "east" {
				t.Errorf("RegionEcho east: %v %v", r, err)
			}
		})
		run(func() {
			res, err := c.Multi("RegionFanout", &conformance.EchoRequest{}, CallOpts{Topic: "east", Timeout: time.Second})
			var got []string
			for _, r := range res {
				if r.Err == nil && r.Resp.Topic == "east" {
					got = append(got, r.Resp.ServerId)
				}
			}
			sort.Strings(got)
			want := ids(procs)
			sort.Strings(want)
			if err != nil || !reflect.DeepEqual(got, want) {
				t.Errorf("RegionFanout east: %v (error %v), want %v", got, err, want)
			}
		})
		run(func() {
			_, err := c.Echo("RegionEcho", &conformance.EchoRequest{}, CallOpts{Topic: "nobody", Timeout: 3 * time.Second})
			expectErr(t, "RegionEcho nobody", err, "unavailable", "no response from servers")
		})
		wg.Wait()
	})
}

// --- Subscriptions: Updates, Work, RegionUpdates (S1–S3) --------------------

type subscriber struct {
	kind string
	sub  Sub
}

// subscribe makes n subscribers (at least one per client language of the
// cell), each a client of its own (its own process, or for Go its own bus
// and broker connection): within one process a NATS queue subscription is
// delivered to every local subscriber of the same method, in Go (wire spec
// quirk Q10) as in libpsrpc. Languages alternate over the cell's client
// languages. Each subscription is active when this returns.
func (e *env) subscribe(t *testing.T, n int, method string, topic func(i int) string) []subscriber {
	t.Helper()
	if n < len(e.dir.clientKinds) {
		n = len(e.dir.clientKinds)
	}
	var subs []subscriber
	for i := 0; i < n; i++ {
		kind := e.dir.clientKinds[i%len(e.dir.clientKinds)]
		c := e.newClient(t, kind, "", 0)
		t.Cleanup(func() { closeClient(t, c) })
		tp := ""
		if topic != nil {
			tp = topic(i)
		}
		s, err := c.Subscribe(method, tp)
		if err != nil {
			t.Fatalf("%s subscribe %s: %v", kind, method, err)
		}
		subs = append(subs, subscriber{kind, s})
	}
	t.Cleanup(func() {
		for _, s := range subs {
			s.sub.Close()
		}
	})
	return subs
}

// collectAll collects from every subscriber at once (see collect).
func collectAll(subs []Sub, want func(i int) int, timeout time.Duration) [][]*conformance.Update {
	out := make([][]*conformance.Update, len(subs))
	var wg sync.WaitGroup
	for i, s := range subs {
		wg.Add(1)
		go func(i int, s Sub) { defer wg.Done(); out[i] = collect(s, want(i), timeout) }(i, s)
	}
	wg.Wait()
	return out
}

func subsOf(subs []subscriber) []Sub {
	out := make([]Sub, len(subs))
	for i, s := range subs {
		out[i] = s.sub
	}
	return out
}

// collect reads until want updates arrived or the timeout, then a grace
// period for extras.
func collect(s Sub, want int, timeout time.Duration) []*conformance.Update {
	var got []*conformance.Update
	deadline := time.After(scaled(timeout))
	for len(got) < want {
		select {
		case u := <-s.Updates():
			got = append(got, u)
		case <-deadline:
			return got
		}
	}
	grace := time.After(300 * time.Millisecond)
	for {
		select {
		case u := <-s.Updates():
			got = append(got, u)
		case <-grace:
			return got
		}
	}
}

func scSubscriptions(t *testing.T, e *env) {
	procs := e.servers(t, e.pool(2, srvSpec{})...)
	srvIDs := ids(procs)
	t.Run("Updates", func(t *testing.T) { // S1: every subscriber gets every update, in order
		subs := e.subscribe(t, 2, "Updates", nil)
		for _, pub := range e.clients {
			n, err := pub.Publish(&conformance.PublishRequest{Method: "Updates", Count: 50, Payload: []byte("upd")}, CallOpts{Timeout: 5 * time.Second})
			if err != nil || n != 50 {
				t.Fatalf("%s Publish: %d, %v", pub.Kind(), n, err)
			}
			all := collectAll(subsOf(subs), func(int) int { return 50 }, 5*time.Second)
			for i, s := range subs {
				got := all[i]
				if len(got) != 50 {
					t.Errorf("subscriber %d (%s): %d updates, want 50", i, s.kind, len(got))
					continue
				}
				nonces := map[string]bool{}
				for j, u := range got {
					if u.Seq != uint32(j+1) || string(u.Payload) != "upd" || u.ServerId != got[0].ServerId || !contains(srvIDs, u.ServerId) {
						t.Errorf("subscriber %d (%s): update %d = seq %d from %s", i, s.kind, j, u.Seq, u.ServerId)
						break
					}
					nonces[u.Nonce] = true
				}
				if len(nonces) != 50 {
					t.Errorf("subscriber %d: %d distinct nonces", i, len(nonces))
				}
			}
		}
	})
	t.Run("Work", func(t *testing.T) { // S3: each update reaches exactly one subscriber
		subs := e.subscribe(t, 3, "Work", nil)
		const count = 300
		n, err := e.clients[0].Publish(&conformance.PublishRequest{Method: "Work", Count: count, Payload: []byte("job")}, CallOpts{Timeout: 5 * time.Second})
		if err != nil || n != count {
			t.Fatalf("Publish: %d, %v", n, err)
		}
		seen := map[uint32]int{}
		per := make([]int, len(subs))
		var mu sync.Mutex
		var wg sync.WaitGroup
		total := func() int {
			mu.Lock()
			defer mu.Unlock()
			s := 0
			for _, v := range per {
				s += v
			}
			return s
		}
		deadline := time.Now().Add(scaled(5 * time.Second))
		for i, s := range subs {
			wg.Add(1)
			go func(i int, s Sub) {
				defer wg.Done()
				for {
					select {
					case u := <-s.Updates():
						mu.Lock()
						seen[u.Seq]++
						per[i]++
						mu.Unlock()
					case <-time.After(50 * time.Millisecond):
						if total() >= count || time.Now().After(deadline) {
							// grace for duplicates
							end := time.After(300 * time.Millisecond)
							for {
								select {
								case u := <-s.Updates():
									mu.Lock()
									seen[u.Seq]++
									per[i]++
									mu.Unlock()
								case <-end:
									return
								}
							}
						}
					}
				}
			}(i, s.sub)
		}
		wg.Wait()
		for seq := uint32(1); seq <= count; seq++ {
			if seen[seq] != 1 {
				t.Errorf("update %d delivered %d times", seq, seen[seq])
			}
		}
		used := 0
		for _, v := range per {
			if v > 0 {
				used++
			}
		}
		kinds := make([]string, len(subs))
		for i, s := range subs {
			kinds[i] = s.kind
		}
		t.Logf("Work: %d updates over subscribers %v: %v", count, kinds, per)
		// NATS's queue group spreads at random. On Redis every subscriber
		// receives every update and the first to take the queue lock wins
		// (wire spec 6.1): the fastest process may well win them all.
		if used < 2 && e.bus == "nats" {
			t.Errorf("Work: all updates went to one subscriber (%v)", per)
		}
	})
	t.Run("RegionUpdates", func(t *testing.T) { // S2: per topic
		topics := []string{"a b", "é|x"}
		n := 2 * len(e.clients) // each topic: a subscriber of every client language
		subs := e.subscribe(t, n, "RegionUpdates", func(i int) string { return topics[(i/len(e.clients))%2] })
		subTopic := func(i int) string { return topics[(i/len(e.clients))%2] }
		for _, topic := range topics {
			n, err := e.clients[0].Publish(&conformance.PublishRequest{Method: "RegionUpdates", Topic: []string{topic}, Count: 20, Payload: []byte(topic)}, CallOpts{Timeout: 5 * time.Second})
			if err != nil || n != 20 {
				t.Fatalf("Publish %q: %d, %v", topic, n, err)
			}
			all := collectAll(subsOf(subs), func(i int) int {
				if subTopic(i) == topic {
					return 20
				}
				return 0
			}, 3*time.Second)
			for i, s := range subs {
				want := 0
				if subTopic(i) == topic {
					want = 20
				}
				got := all[i]
				if len(got) != want {
					t.Errorf("topic %q, subscriber %d (%s, topic %q): %d updates, want %d", topic, i, s.kind, subTopic(i), len(got), want)
				}
				for _, u := range got {
					if string(u.Payload) != topic {
						t.Errorf("subscriber on %q got an update for %q", subTopic(i), u.Payload)
						break
					}
				}
			}
		}
	})
}

// --- Chat streams (T1–T3, client closes) -------------------------------------

// scChat: in one cell, two servers; in the mixed cell, the streams run once
// against servers of each language in turn, so that every client language
// opens streams to every server language.
func scChat(t *testing.T, e *env) {
	if !e.dir.mixed {
		scChatWith(t, e, e.servers(t, srvSpec{}, srvSpec{}))
		return
	}
	for _, k := range e.dir.serverKinds {
		t.Run(k+"_servers", func(t *testing.T) {
			scChatWith(t, e, e.servers(t, srvSpec{kind: k}))
		})
	}
}

func scChatWith(t *testing.T, e *env, procs []*proc) {
	drain := func() {
		for _, p := range procs {
			for len(p.events) > 0 {
				<-p.events
			}
		}
	}
	// Every stream of this scenario uses seq numbers of its own range; a
	// server reports the highest seq it received when a stream ends, which
	// tells the streams' end events apart.
	seqBase := uint32(0)
	nextBase := func() uint32 { seqBase += 100000; return seqBase }
	expectEnd := func(t *testing.T, who string, maxSeq uint32, code, message string) {
		t.Helper()
		deadline := time.Now().Add(scaled(5 * time.Second))
		for {
			ev, p, ok := waitEvent(procs, "chat-end", time.Until(deadline))
			if !ok {
				t.Errorf("%s: no server reported the end of the stream (max seq %d)", who, maxSeq)
				return
			}
			if ev["max_seq"] != fmt.Sprint(maxSeq) {
				continue // another stream's end
			}
			if ev["code"] != code || ev["message"] != message {
				t.Errorf("%s: %s server %s saw the stream end with %s %q, want %s %q", who, p.kind, p.id, ev["code"], ev["message"], code, message)
			}
			return
		}
	}
	closedWith := func(t *testing.T, who string, ch Chat, code, message string) {
		t.Helper()
		select {
		case err := <-ch.Closed():
			expectErr(t, who, err, code, message)
		case <-time.After(5 * time.Second):
			t.Errorf("%s: stream not closed", who)
		}
	}
	e.forClients(t, func(t *testing.T, c Client) {
		t.Run("ping_pong_client_closes", func(t *testing.T) { // T1
			drain()
			base := nextBase()
			ch, err := c.Chat(CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			for i := 1; i <= 20; i++ {
				payload := []byte(fmt.Sprintf("ping %d é", i))
				if err := ch.Send(&conformance.ChatMessage{Seq: base + uint32(i), Payload: payload}); err != nil {
					t.Fatalf("send %d: %v", i, err)
				}
				select {
				case m := <-ch.Messages():
					if m.Seq != base+uint32(i+1) || !bytes.Equal(m.Payload, payload) {
						t.Fatalf("reply %d: seq %d payload %q", i, m.Seq, m.Payload)
					}
				case <-time.After(3 * time.Second):
					t.Fatalf("no reply %d", i)
				}
			}
			ch.Close("", "")
			closedWith(t, "client clean close (local)", ch, "canceled", "stream closed")
			expectEnd(t, "client clean close", base+20, "canceled", "stream closed")
		})
		t.Run("concurrent_sends", func(t *testing.T) { // T12
			drain()
			base := nextBase()
			ch, err := c.Chat(CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			const n = 30
			var wg sync.WaitGroup
			for i := 1; i <= n; i++ {
				wg.Add(1)
				go func(i int) {
					defer wg.Done()
					if err := ch.Send(&conformance.ChatMessage{Seq: base + uint32(100*i)}); err != nil {
						t.Errorf("concurrent send %d: %v", i, err)
					}
				}(i)
			}
			wg.Wait()
			got := map[uint32]bool{}
			timeout := time.After(5 * time.Second)
			for len(got) < n {
				select {
				case m := <-ch.Messages():
					got[m.Seq] = true
				case <-timeout:
					t.Fatalf("%d of %d replies", len(got), n)
				}
			}
			for i := 1; i <= n; i++ {
				if !got[base+uint32(100*i+1)] {
					t.Errorf("no reply to %d", base+uint32(100*i))
				}
			}
			ch.Close("", "")
			closedWith(t, "close", ch, "canceled", "stream closed")
			expectEnd(t, "close", base+100*n, "canceled", "stream closed")
		})
		t.Run("server_closes_with_error", func(t *testing.T) { // T2
			drain()
			base := nextBase()
			ch, err := c.Chat(CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			_ = ch.Send(&conformance.ChatMessage{Seq: base + 1, CloseCode: "not_found", CloseMessage: "chat over: é"})
			closedWith(t, "server error close", ch, "not_found", "chat over: é")
			expectEnd(t, "server error close", base+1, "not_found", "chat over: é")
		})
		t.Run("server_closes_cleanly", func(t *testing.T) { // T3
			drain()
			base := nextBase()
			ch, err := c.Chat(CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			_ = ch.Send(&conformance.ChatMessage{Seq: base + 1, CloseMessage: "bye"})
			closedWith(t, "server clean close", ch, "canceled", "stream closed")
			expectEnd(t, "server clean close", base+1, "canceled", "stream closed")
		})
		t.Run("client_closes_with_error", func(t *testing.T) {
			drain()
			base := nextBase()
			ch, err := c.Chat(CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if err := ch.Send(&conformance.ChatMessage{Seq: base + 1, Payload: []byte("x")}); err != nil {
				t.Fatalf("send: %v", err)
			}
			ch.Close("aborted", "client gave up")
			closedWith(t, "client error close (local)", ch, "aborted", "client gave up")
			expectEnd(t, "client error close", base+1, "aborted", "client gave up")
		})
		t.Run("custom_close_codes", func(t *testing.T) { // codes psrpc does not define travel unchanged
			drain()
			base := nextBase()
			ch, err := c.Chat(CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			_ = ch.Send(&conformance.ChatMessage{Seq: base + 1, CloseCode: "quota_exceeded", CloseMessage: "over quota"})
			closedWith(t, "server custom close", ch, "quota_exceeded", "over quota")
			expectEnd(t, "server custom close", base+1, "quota_exceeded", "over quota")
			drain()
			base = nextBase()
			ch, err = c.Chat(CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			if err := ch.Send(&conformance.ChatMessage{Seq: base + 1, Payload: []byte("x")}); err != nil {
				t.Fatalf("send: %v", err)
			}
			ch.Close("my_custom_close", "client custom")
			closedWith(t, "client custom close (local)", ch, "my_custom_close", "client custom")
			expectEnd(t, "client custom close", base+1, "my_custom_close", "client custom")
		})
	})
}

// --- Undecodable requests (U12) --------------------------------------------

func scMalformed(t *testing.T, e *env) {
	e.servers(t, e.pool(1, srvSpec{})...)
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		for _, m := range []string{"Echo", "Claim"} {
			start := time.Now()
			_, err := c.Echo(m, &conformance.EchoRequest{}, CallOpts{Malformed: true, Timeout: 3 * time.Second})
			expectErr(t, m+" with an undecodable request", err, "malformed_request", "")
			within(t, m+" with an undecodable request", time.Since(start), 0, 2500*time.Millisecond)
			if err != nil {
				t.Logf("%s: %s %q after %v", m, err.Code, err.Message, time.Since(start).Round(time.Millisecond))
			}
		}
		if _, err := c.Echo("Echo", &conformance.EchoRequest{}, CallOpts{Timeout: 3 * time.Second}); err != nil {
			t.Errorf("Echo after malformed requests: %v", err)
		}
	})
}

// --- Compressed envelopes (psrpc v0.7.6+ gzip) -------------------------------

func scCompression(t *testing.T, e *env) {
	const threshold = 1024
	s := startSniffer(t, e)
	procs := e.servers(t, e.pool(2, srvSpec{extra: []string{"--compress-threshold", fmt.Sprint(threshold)}})...)
	srvIDs := ids(procs)
	var clients []Client
	for _, k := range e.dir.clientKinds {
		c := e.newClient(t, k, "CLI_"+k+"_gz_"+randID(8), threshold)
		defer closeClient(t, c)
		clients = append(clients, c)
	}
	payload := bytes.Repeat([]byte("compressible "), 5000) // 65 kB
	for _, c := range clients {
		resp, err := c.Echo("Echo", &conformance.EchoRequest{Payload: payload, Tag: "gz"}, CallOpts{Timeout: 5 * time.Second})
		if err != nil {
			t.Errorf("%s client: compressed Echo: %v", c.Kind(), err)
		} else if !bytes.Equal(resp.Payload, payload) || !contains(srvIDs, resp.ServerId) {
			t.Errorf("%s client: compressed Echo: %d bytes back from %s", c.Kind(), len(resp.Payload), resp.ServerId)
		}
		res, err := c.Multi("Fanout", &conformance.EchoRequest{Payload: payload}, CallOpts{Timeout: time.Second})
		okCount := 0
		for _, r := range res {
			if r.Err == nil && bytes.Equal(r.Resp.Payload, payload) {
				okCount++
			}
		}
		if err != nil || okCount != len(procs) {
			t.Errorf("%s client: compressed Fanout: %d good results of %d, error %v", c.Kind(), okCount, len(res), err)
		}
	}
	// Updates published compressed by the servers reach every subscriber.
	var subs []Sub
	for _, c := range clients {
		sub, err := c.Subscribe("Updates", "")
		if err != nil {
			t.Fatalf("%s subscribe: %v", c.Kind(), err)
		}
		defer sub.Close()
		subs = append(subs, sub)
	}
	upd := bytes.Repeat([]byte("update "), 1000)
	// Publish is a queue method: repeat until every server kind published.
	// The fastest claimer wins a queue request, so one kind can take every
	// round (C over Go on a Redis Cluster did, 16 of 16): the servers of a
	// kind that has published are stopped (gracefully) while another kind
	// still has to, and the next round goes to those.
	publishers := map[string]bool{}
	for round := 0; round < 8*len(e.dir.serverKinds) && len(publishers) < len(e.dir.serverKinds); round++ {
		if round > 0 {
			for _, p := range procs {
				if publishers[p.kind] {
					p.stop(t)
				}
			}
		}
		c := clients[round%len(clients)]
		if n, err := c.Publish(&conformance.PublishRequest{Method: "Updates", Count: 3, Payload: upd}, CallOpts{Timeout: 5 * time.Second}); err != nil || n != 3 {
			t.Fatalf("Publish: %d %v", n, err)
		}
		for i, got := range collectAll(subs, func(int) int { return 3 }, 3*time.Second) {
			if len(got) != 3 || !bytes.Equal(got[0].Payload, upd) {
				t.Errorf("subscriber %d (%s): %d compressed updates", i, clients[i].Kind(), len(got))
			}
			for _, u := range got {
				publishers[e.kindOf(u.ServerId)] = true
			}
		}
	}
	time.Sleep(200 * time.Millisecond)
	s.stop()
	// Every kind of envelope each implementation sent must have been
	// compressed (all payloads here are far above the threshold).
	for _, kind := range e.kinds() {
		var sent []string
		if e.hasClientKind(kind) {
			sent = append(sent, "internal.Request")
		}
		if e.hasServerKind(kind) {
			sent = append(sent, "internal.Response", "psrpc.conformance.Update")
		}
		if len(sent) == 0 {
			continue
		}
		t.Run("from_"+kind, func(t *testing.T) {
			for _, typ := range sent {
				all, gz := s.count(typ, func(id string) bool { return e.kindOf(id) == kind }, threshold)
				t.Logf("%s from %s: %d sniffed, %d gzip", typ, kind, all, gz)
				if all == 0 || gz < all {
					t.Errorf("%s sent by %s: %d of %d compressed, want all of at least %d bytes", typ, kind, gz, all, threshold)
				}
			}
		})
	}
}

// --- Skip-claim servers (v0.7.5+ "handling" claims) --------------------------

func scSkipClaim(t *testing.T, e *env) {
	s := startSniffer(t, e)
	procs := e.servers(t, e.pool(2, srvSpec{extra: []string{"--skip-claim"}})...)
	srvIDs := ids(procs)
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		for i := 0; i < 10; i++ {
			r, err := c.Echo("Echo", &conformance.EchoRequest{Tag: "skip"}, CallOpts{Timeout: 3 * time.Second})
			if err != nil {
				t.Errorf("Echo %d: %v", i, err)
			} else if !contains(srvIDs, r.ServerId) {
				t.Errorf("Echo %d: from %s", i, r.ServerId)
			}
		}
		// Claim (AFFINITY) still uses the full handshake.
		if _, err := c.Echo("Claim", &conformance.EchoRequest{}, CallOpts{Timeout: 3 * time.Second}); err != nil {
			t.Errorf("Claim: %v", err)
		}
	})
	time.Sleep(100 * time.Millisecond)
	s.stop()
	if n := s.handlingClaims(); n < 10*len(e.clients) {
		t.Errorf("%d handling claims on the wire, want at least %d", n, 10*len(e.clients))
	}
}

// --- The generated "unimplemented" Go server (U14) ---------------------------

func scUnimplemented(t *testing.T, e *env) {
	e.servers(t, srvSpec{kind: "go", extra: []string{"--unimplemented"}})
	e.forClientsAtOnce(t, func(t *testing.T, c Client) {
		_, err := c.Echo("Echo", &conformance.EchoRequest{}, CallOpts{Timeout: 3 * time.Second})
		expectErr(t, "Echo", err, "unimplemented", "method is not implemented")
		_, err = c.Echo("Claim", &conformance.EchoRequest{}, CallOpts{Timeout: 3 * time.Second})
		expectErr(t, "Claim (unimplemented affinity declines)", err, "unavailable", "no response from servers")
		res, err := c.Multi("Fanout", &conformance.EchoRequest{}, CallOpts{Timeout: time.Second})
		if err != nil || len(res) != 1 {
			t.Errorf("Fanout: %d results, %v", len(res), err)
		} else {
			expectErr(t, "Fanout", res[0].Err, "unimplemented", "method is not implemented")
		}
	})
}

// --- Client ids with '.' and '-' (U17) ---------------------------------------

func scClientIDs(t *testing.T, e *env) {
	procs := e.servers(t, srvSpec{})
	for _, k := range e.dir.clientKinds {
		id := "my.client-" + k + "-" + randID(4)
		c := e.newClient(t, k, id, 0)
		r, err := c.Echo("Echo", &conformance.EchoRequest{Tag: id}, CallOpts{Timeout: 3 * time.Second})
		if err != nil || r.ServerId != procs[0].id || r.Tag != id {
			t.Errorf("%s client %s: %v %v", k, id, r, err)
		}
		r, err = c.Echo("Claim", &conformance.EchoRequest{Tag: id}, CallOpts{Timeout: 3 * time.Second})
		if err != nil || r.ServerId != procs[0].id {
			t.Errorf("%s client %s, Claim: %v %v", k, id, r, err)
		}
		closeClient(t, c)
	}
}

// Server ids with '-' and '.' (Go accepts any id; it travels in messages,
// never in channel names): every client kind reaches every server kind and
// sees the id unchanged, on a queue method and with affinity selection.
func scServerIDs(t *testing.T, e *env) {
	specs := []srvSpec{}
	for i, k := range e.dir.serverKinds {
		specs = append(specs, srvSpec{kind: k, id: fmt.Sprintf("srv-%d.%s-%s", i+1, k, randID(4))})
	}
	procs := e.servers(t, specs...)
	e.forClients(t, func(t *testing.T, c Client) {
		seen := map[string]bool{}
		for i := 0; i < 20 && len(seen) < len(procs); i++ {
			r, err := c.Echo("Echo", &conformance.EchoRequest{Tag: "ids"}, CallOpts{Timeout: 3 * time.Second})
			if err != nil || !contains(ids(procs), r.ServerId) {
				t.Fatalf("Echo: %v %v (servers %v)", r, err, ids(procs))
			}
			seen[r.ServerId] = true
		}
		r, err := c.Echo("Claim", &conformance.EchoRequest{Tag: "ids"}, CallOpts{Timeout: 3 * time.Second})
		if err != nil || !contains(ids(procs), r.ServerId) {
			t.Errorf("Claim: %v %v (servers %v)", r, err, ids(procs))
		}
	})
}

// --- Graceful shutdown: in-flight requests finish ----------------------------

func scGraceful(t *testing.T, e *env) {
	// Every server language of the cell, called by the client languages in
	// turn.
	for i, k := range e.dir.serverKinds {
		i, k := i, k
		t.Run(k+"_server", func(t *testing.T) {
			procs := e.servers(t, srvSpec{kind: k})
			c := e.clients[i%len(e.clients)]
			var chat Chat
			if e.streams { // T4: open streams end with unavailable "EOF"
				var err *CallErr
				if chat, err = c.Chat(CallOpts{Timeout: 3 * time.Second}); err != nil {
					t.Fatalf("Chat: %v", err)
				}
			}
			p := c.EchoAsync("Echo", &conformance.EchoRequest{DelayMs: 1000, Tag: "inflight"}, CallOpts{Timeout: 5 * time.Second})
			time.Sleep(300 * time.Millisecond)
			stopped := make(chan struct{})
			go func() { procs[0].stop(t); close(stopped) }()
			r, err := p.Wait()
			if err != nil || r.Tag != "inflight" {
				t.Errorf("in-flight request during SIGTERM: %v %v", r, err)
			}
			<-stopped
			if chat != nil {
				select {
				case err := <-chat.Closed():
					expectErr(t, "open stream at server shutdown", err, "unavailable", "EOF")
				case <-time.After(3 * time.Second):
					t.Errorf("open stream not closed by the server's shutdown")
				}
			}
			_, err = c.Echo("Echo", &conformance.EchoRequest{}, CallOpts{Timeout: 3 * time.Second})
			expectErr(t, "after shutdown", err, "unavailable", "no response from servers")
		})
	}
}

// TestMethodTable: the method settings derived by every language's client
// program ("--print-methods": the C build's come from gen_methods), by this
// Go module from the proto descriptor, and by protoc-gen-psrpc in the
// generated code agree.
func TestMethodTable(t *testing.T) {
	var goLines []string
	for _, d := range confsvc.Methods() {
		goLines = append(goLines, d.String())
	}
	langs := splitLangs(os.Getenv("PSRPC_INTEROP_CLIENTS"))
	if len(langs) == 0 {
		for l := range slots {
			langs = append(langs, l)
		}
		sort.Strings(langs)
	}
	for _, lang := range langs {
		if lang == "go" {
			continue
		}
		argv := append(append([]string{}, slots[lang].Client...), "--print-methods")
		out, err := exec.Command(argv[0], argv[1:]...).Output()
		if err != nil {
			t.Errorf("%s: %v", strings.Join(argv, " "), err)
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if !reflect.DeepEqual(lines, goLines) {
			t.Errorf("%s table:\n%s\nGo table:\n%s", lang, strings.Join(lines, "\n"), strings.Join(goLines, "\n"))
		} else {
			t.Logf("%s: the %d methods agree with the Go descriptor", lang, len(lines))
		}
	}
	src, err := os.ReadFile("../conformance/conformance.psrpc.go")
	if err != nil {
		t.Fatal(err)
	}
	// sd.RegisterMethod("Echo", false, false, true, true) in each client constructor
	seen := 0
	for _, d := range confsvc.Methods() {
		line := fmt.Sprintf("sd.RegisterMethod(%q, %v, %v, %v, %v)", d.Name, d.Affinity, d.Multi, d.RequireClaim, d.Queue)
		if !strings.Contains(string(src), line) {
			t.Errorf("generated code lacks %s", line)
		}
		seen++
	}
	if seen != 11 {
		t.Errorf("%d methods, want 11", seen)
	}
}
