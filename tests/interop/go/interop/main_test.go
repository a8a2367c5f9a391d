// Package interop runs the interop scenarios of docs/interop.md between the
// C libpsrpc (conformance-server, conformance-client) and Go livekit/psrpc
// v0.8.2 (generated client, Go conformance-server).
//
// Environment:
//
//	PSRPC_INTEROP_BUS        redis | nats (TestInterop)
//	PSRPC_INTEROP_DIRECTION  go_client_c_server | c_client_go_server |
//	                         mixed_servers (also go_client_go_server and
//	                         c_client_c_server: baselines, not in ctest)
//	PSRPC_TEST_REDIS_URL     default redis://127.0.0.1:6379
//	PSRPC_TEST_NATS_URL      default nats://127.0.0.1:4222
//	PSRPC_INTEROP_C_SERVER   path of conformance-server (default ../../../../build/tests/interop/)
//	PSRPC_INTEROP_C_CLIENT   path of conformance-client
//	PSRPC_INTEROP_GO_SERVER  path of a built Go conformance-server (default: go build)
package interop

import (
	"crypto/rand"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

var (
	cServerPath  string
	cClientPath  string
	goServerPath string
	// Go subscribes asynchronously: wait this long after a Go server or
	// subscription is set up before relying on it (wire spec quirk Q14).
	settle = time.Second
	// PSRPC_TEST_TIME_FACTOR (3 under sanitizers) stretches upper time
	// bounds and waits, never lower bounds.
	timeFactor = 1.0
)

func scaled(d time.Duration) time.Duration { return time.Duration(float64(d) * timeFactor) }

func TestMain(m *testing.M) {
	def := func(env, name string) string {
		if p := os.Getenv(env); p != "" {
			return p
		}
		p, _ := filepath.Abs(filepath.Join("..", "..", "..", "..", "build", "tests", "interop", name))
		return p
	}
	if f, err := strconv.ParseFloat(os.Getenv("PSRPC_TEST_TIME_FACTOR"), 64); err == nil && f >= 1 {
		timeFactor = f
	}
	cServerPath = def("PSRPC_INTEROP_C_SERVER", "conformance-server")
	cClientPath = def("PSRPC_INTEROP_C_CLIENT", "conformance-client")
	var err error
	if goServerPath, err = buildGoServer(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
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
	name          string
	clientKinds   []string // clients that run every scenario
	serverKinds   []string // server kinds, cycled over a scenario's servers
	mixedDefaults bool
}

var directions = map[string]direction{
	"go_client_c_server":  {"go_client_c_server", []string{"go"}, []string{"c"}, false},
	"c_client_go_server":  {"c_client_go_server", []string{"c"}, []string{"go"}, false},
	"mixed_servers":       {"mixed_servers", []string{"go", "c"}, []string{"c", "go"}, true},
	"go_client_go_server": {"go_client_go_server", []string{"go"}, []string{"go"}, false},
	"c_client_c_server":   {"c_client_c_server", []string{"c"}, []string{"c"}, false},
}

type env struct {
	bus     string // "redis" or "nats"
	busURL  string
	dir     direction
	clients []Client
	probe   Client // a Go client looking for servers that are not ours
	streams bool   // the C library under test has streams (or no C side is involved)
}

func (e *env) serverKind(i int) string { return e.dir.serverKinds[i%len(e.dir.serverKinds)] }

// hasKind reports whether the direction uses servers of kind k.
func (e *env) hasServerKind(k string) bool {
	for _, s := range e.dir.serverKinds {
		if s == k {
			return true
		}
	}
	return false
}

func (e *env) hasClientKind(k string) bool {
	for _, s := range e.dir.clientKinds {
		if s == k {
			return true
		}
	}
	return false
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

// newClient starts a client of the given kind on the env's bus.
func (e *env) newClient(t *testing.T, kind string, clientID string, compressThreshold int) Client {
	t.Helper()
	var c Client
	var err error
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
		c, err = newCClient(e.busURL, args...)
	}
	if err != nil {
		t.Fatalf("%s client: %v", kind, err)
	}
	return c
}

// closeClient closes a client; a C client must exit with status 0.
func closeClient(t *testing.T, c Client) {
	t.Helper()
	c.Close()
	if cc, ok := c.(*cClient); ok {
		if err := cc.exitError(); err != nil {
			t.Error(err)
		}
	}
}
