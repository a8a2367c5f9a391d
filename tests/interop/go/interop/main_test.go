// Package interop runs the interop scenarios of docs/interop.md between
// implementations of the conformance service: Go livekit/psrpc v0.8.2 (the
// generated client in this process, the Go conformance-server) and the
// conformance programs of every other language slot (C, Python, ...; see
// tests/interop/languages/ and tests/interop/matrix.sh).
//
// Environment:
//
//	PSRPC_INTEROP_BUS        redis | nats (TestInterop)
//	PSRPC_INTEROP_SLOTS      a JSON file {"LANG": {"server": [argv], "client": [argv]}}
//	                         (matrix.sh writes it); "go" has no client argv: its
//	                         client is the generated one, in this process
//	PSRPC_INTEROP_CLIENTS    client languages of the cell, comma-separated
//	PSRPC_INTEROP_SERVERS    server languages of the cell, comma-separated
//	PSRPC_INTEROP_MIXED      1: the mixed cell (servers of every server language
//	                         at once, called by a client of every client language)
//	PSRPC_TEST_REDIS_URL     default redis://127.0.0.1:6379
//	PSRPC_TEST_NATS_URL      default nats://127.0.0.1:4222
//	PSRPC_INTEROP_SCENARIOS  a comma-separated subset of the scenarios
//
// Without PSRPC_INTEROP_SLOTS the slots are Go (its server built here) and
// C: PSRPC_INTEROP_C_SERVER / PSRPC_INTEROP_C_CLIENT, default
// ../../../../build/tests/interop/conformance-{server,client}.
package interop

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// A language slot: the command lines of its conformance server and client
// (flags and line protocol of docs/interop.md are appended).
type slot struct {
	Server []string `json:"server"`
	Client []string `json:"client"`
}

var (
	slots map[string]slot
	// PSRPC_TEST_TIME_FACTOR (3 under sanitizers) stretches upper time
	// bounds and waits, never lower bounds.
	timeFactor = 1.0
	// barrierTimeout bounds the wait for a Go bus's subscriptions (Q14).
	barrierTimeout = 20 * time.Second
)

func scaled(d time.Duration) time.Duration { return time.Duration(float64(d) * timeFactor) }

func TestMain(m *testing.M) {
	if f, err := strconv.ParseFloat(os.Getenv("PSRPC_TEST_TIME_FACTOR"), 64); err == nil && f >= 1 {
		timeFactor = f
	}
	if err := loadSlots(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func loadSlots() error {
	if p := os.Getenv("PSRPC_INTEROP_SLOTS"); p != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(b, &slots); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for lang, s := range slots {
			if len(s.Server) == 0 || (lang != "go" && len(s.Client) == 0) {
				return fmt.Errorf("%s: slot %q needs a server and a client command", p, lang)
			}
		}
		if _, ok := slots["go"]; !ok {
			return fmt.Errorf("%s: no \"go\" slot", p)
		}
		return nil
	}
	// Without a slots file: Go and the C programs of the build tree.
	def := func(env, name string) string {
		if p := os.Getenv(env); p != "" {
			return p
		}
		p, _ := filepath.Abs(filepath.Join("..", "..", "..", "..", "build", "tests", "interop", name))
		return p
	}
	goServer, err := buildGoServer()
	if err != nil {
		return err
	}
	slots = map[string]slot{
		"go": {Server: []string{goServer}},
		"c": {Server: []string{def("PSRPC_INTEROP_C_SERVER", "conformance-server")},
			Client: []string{def("PSRPC_INTEROP_C_CLIENT", "conformance-client")}},
	}
	return nil
}

func randID(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		v, _ := rand.Int(rand.Reader, big.NewInt(int64(len(alphabet))))
		b[i] = alphabet[v.Int64()]
	}
	return string(b)
}

type direction struct {
	name        string
	clientKinds []string // client languages; each runs every scenario
	serverKinds []string // server languages, cycled over a scenario's servers
	mixed       bool     // the mixed cell: every pool has a server of each language
}

func splitLangs(s string) []string {
	var out []string
	for _, l := range strings.Split(s, ",") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// cellDirection reads the cell from the environment.
func cellDirection() (direction, error) {
	d := direction{
		clientKinds: splitLangs(os.Getenv("PSRPC_INTEROP_CLIENTS")),
		serverKinds: splitLangs(os.Getenv("PSRPC_INTEROP_SERVERS")),
		mixed:       os.Getenv("PSRPC_INTEROP_MIXED") == "1",
	}
	if len(d.clientKinds) == 0 || len(d.serverKinds) == 0 {
		return d, fmt.Errorf("set PSRPC_INTEROP_CLIENTS and PSRPC_INTEROP_SERVERS (tests/interop/matrix.sh does)")
	}
	if !d.mixed && (len(d.clientKinds) != 1 || len(d.serverKinds) != 1) {
		return d, fmt.Errorf("a cell has one client and one server language (or PSRPC_INTEROP_MIXED=1)")
	}
	for _, l := range append(append([]string{}, d.clientKinds...), d.serverKinds...) {
		if _, ok := slots[l]; !ok {
			return d, fmt.Errorf("no slot for language %q", l)
		}
	}
	if d.mixed {
		d.name = "mixed_" + strings.Join(d.serverKinds, "_")
	} else {
		d.name = d.clientKinds[0] + "_client_" + d.serverKinds[0] + "_server"
	}
	return d, nil
}

type env struct {
	bus     string // "redis" or "nats"
	busURL  string
	dir     direction
	clients []Client // one per client language of the cell
	probe   Client   // a Go client looking for servers that are not ours
	streams bool     // every language of the cell has streams
	idKinds sync.Map // server and client id -> language, for the sniffer
}

func (e *env) serverKind(i int) string { return e.dir.serverKinds[i%len(e.dir.serverKinds)] }

// kinds is every language of the cell, clients' first, each once.
func (e *env) kinds() []string {
	var out []string
	for _, k := range append(append([]string{}, e.dir.clientKinds...), e.dir.serverKinds...) {
		if !contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func (e *env) hasServerKind(k string) bool { return contains(e.dir.serverKinds, k) }
func (e *env) hasClientKind(k string) bool { return contains(e.dir.clientKinds, k) }

// pool is n servers of the given spec, or one per server language of the
// cell if that is more (the mixed cell: every language serves in every pool).
func (e *env) pool(n int, s srvSpec) []srvSpec {
	if len(e.dir.serverKinds) > n {
		n = len(e.dir.serverKinds)
	}
	out := make([]srvSpec, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// kindOf is the language of the process that uses id (a server or a client
// started with an explicit id), "?" if unknown.
func (e *env) kindOf(id string) string {
	if k, ok := e.idKinds.Load(id); ok {
		return k.(string)
	}
	return "?"
}

func busURL(bus string) string {
	switch bus {
	case "redis":
		if u := os.Getenv("PSRPC_TEST_REDIS_URL"); u != "" {
			return u
		}
		return "redis://127.0.0.1:6379"
	case "nats":
		if u := os.Getenv("PSRPC_TEST_NATS_URL"); u != "" {
			return u
		}
		return "nats://127.0.0.1:4222"
	}
	return ""
}

// newClient starts a client of the given language on the env's bus; it is
// usable when returned (a Go client's reply subscriptions are active).
func (e *env) newClient(t *testing.T, kind string, clientID string, compressThreshold int) Client {
	t.Helper()
	var c Client
	var err error
	if clientID != "" {
		e.idKinds.Store(clientID, kind)
	}
	if kind == "go" {
		c, err = newGoClient(e.busURL, clientID, compressionOf(compressThreshold))
	} else {
		var args []string
		if clientID != "" {
			args = append(args, "--client-id", clientID)
		}
		if compressThreshold > 0 {
			args = append(args, "--compress-threshold", fmt.Sprint(compressThreshold))
		}
		c, err = newLineClient(kind, e.busURL, args...)
	}
	if err != nil {
		t.Fatalf("%s client: %v", kind, err)
	}
	return c
}

// closeClient closes a client; a client program must exit with status 0.
func closeClient(t *testing.T, c Client) {
	t.Helper()
	c.Close()
	if cc, ok := c.(*lineClient); ok {
		if err := cc.exitError(); err != nil {
			t.Error(err)
		}
	}
}
