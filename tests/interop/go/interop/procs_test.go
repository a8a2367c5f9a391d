package interop

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/libpsrpc/interop/conformance"
)

// A conformance server process of a language slot.
type proc struct {
	kind   string // its language: "go", "c", "py", ...
	id     string
	cmd    *exec.Cmd
	stderr *syncBuffer
	events chan map[string]string
	done   chan struct{}
	err    error
	stopMu sync.Mutex
	stoped bool
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProc starts a server program that prints "ready" when usable and
// waits for it; on failure it returns a description (and no process, or one
// that has exited).
func startProc(kind, id, path string, args ...string) (*proc, string) {
	p := &proc{
		kind:   kind,
		id:     id,
		cmd:    exec.Command(path, args...),
		stderr: &syncBuffer{},
		events: make(chan map[string]string, 1024),
		done:   make(chan struct{}),
	}
	p.cmd.Stderr = p.stderr
	// If the test binary dies, its servers must not serve on: they would
	// answer the next run's calls.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err.Error()
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Sprintf("start %s: %v", path, err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64*1024), 64<<20)
		readySeen := false
		for sc.Scan() {
			line := sc.Text()
			if !readySeen && line == "ready" {
				readySeen = true
				close(ready)
				continue
			}
			var ev map[string]string
			if json.Unmarshal([]byte(line), &ev) == nil {
				select {
				case p.events <- ev:
				default:
				}
			}
		}
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	select {
	case <-ready:
		return p, ""
	case <-p.done:
		p.stoped = true
		return nil, fmt.Sprintf("%s server %s exited before ready: %v\n%s", kind, id, p.err, p.stderr.String())
	case <-time.After(scaled(20 * time.Second)):
		_ = p.cmd.Process.Kill()
		<-p.done
		return nil, fmt.Sprintf("%s server %s not ready after 20 s\n%s", kind, id, p.stderr.String())
	}
}

// stop sends SIGTERM and expects a graceful exit with status 0.
func (p *proc) stop(t *testing.T) {
	t.Helper()
	p.stopMu.Lock()
	defer p.stopMu.Unlock()
	if p.stoped {
		return
	}
	p.stoped = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		if p.err != nil {
			t.Errorf("%s server %s: exit after SIGTERM: %v\n%s", p.kind, p.id, p.err, p.stderr.String())
		}
	case <-time.After(scaled(15 * time.Second)):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s server %s: no exit 15 s after SIGTERM\n%s", p.kind, p.id, p.stderr.String())
	}
}

// waitEvent returns the next event of the given kind printed by one of procs.
func waitEvent(procs []*proc, kind string, timeout time.Duration) (map[string]string, *proc, bool) {
	deadline := time.After(timeout)
	for {
		cases := make([]chan map[string]string, len(procs))
		for i, p := range procs {
			cases[i] = p.events
		}
		// poll every proc; small sleep keeps this simple
		for i, c := range cases {
			select {
			case ev := <-c:
				if ev["event"] == kind {
					return ev, procs[i], true
				}
			default:
			}
		}
		select {
		case <-deadline:
			return nil, nil, false
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Server specification of a scenario.
type srvSpec struct {
	kind     string // "c", "go", or "" for the direction's choice
	affinity string // "" = the server's default (1.0)
	topics   []string
	extra    []string
	id       string // "" = generated
}

// servers starts the given servers (languages cycled over the cell's server
// languages unless a spec names one) and waits until each printed "ready"
// (for Go, after its subscriptions are active: confsvc.Bus.Barrier); they are
// stopped, expecting exit status 0, when the test ends.
func (e *env) servers(t *testing.T, specs ...srvSpec) []*proc {
	t.Helper()
	var procs []*proc
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func(p *proc) { defer wg.Done(); p.stop(t) }(p)
		}
		wg.Wait()
	})
	// Started in parallel: the startup time of a language runtime (Python
	// imports, say) is then paid once per pool, not once per server.
	type started struct {
		p   *proc
		err string
	}
	results := make([]chan started, len(specs))
	for i, s := range specs {
		kind := s.kind
		if kind == "" {
			kind = e.serverKind(i)
		}
		id := fmt.Sprintf("SRV_%s%d_%s", kind, i, randID(6))
		if s.id != "" {
			id = s.id
		}
		e.idKinds.Store(id, kind)
		args := append([]string{}, slots[kind].Server[1:]...)
		args = append(args, "--bus", e.busURL, "--server-id", id)
		if s.affinity != "" {
			args = append(args, "--affinity", s.affinity)
		}
		for _, tp := range s.topics {
			args = append(args, "--topic", tp)
		}
		args = append(args, s.extra...)
		results[i] = make(chan started, 1)
		go func(ch chan started, kind, id string, path string, args []string) {
			p, err := startProc(kind, id, path, args...)
			ch <- started{p, err}
		}(results[i], kind, id, slots[kind].Server[0], args)
	}
	var failures []string
	for _, ch := range results {
		r := <-ch
		if r.p != nil {
			procs = append(procs, r.p)
		}
		if r.err != "" {
			failures = append(failures, r.err)
		}
	}
	if len(failures) > 0 {
		t.Fatal(strings.Join(failures, "\n"))
	}
	return procs
}

func ids(procs []*proc) []string {
	var out []string
	for _, p := range procs {
		out = append(out, p.id)
	}
	return out
}

func buildGoServer() (string, error) {
	if p := os.Getenv("PSRPC_INTEROP_GO_SERVER"); p != "" {
		return p, nil
	}
	dir, err := os.MkdirTemp("", "psrpc-interop-")
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "go-conformance-server")
	cmd := exec.Command("go", "build", "-o", out, "../cmd/conformance-server")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build conformance-server: %w", err)
	}
	return out, nil
}

// checkNoForeignServers fails the test when conformance servers that are not
// this test's answer on the broker: every conformance run (another build
// tree's, a binding's) uses the service name Conformance, and its servers
// would answer our calls. It runs before every scenario, when none of ours
// run: a Fanout answered by anyone within the probe time.
func (e *env) checkNoForeignServers(t *testing.T, timeout time.Duration) {
	t.Helper()
	if e.probe == nil {
		return
	}
	res, err := e.probe.Multi("Fanout", &conformance.EchoRequest{Tag: "probe"}, CallOpts{Timeout: timeout})
	if err != nil {
		t.Fatalf("probe for foreign conformance servers: %v", err)
	}
	if len(res) > 0 {
		var who []string
		for _, r := range res {
			if r.Resp != nil {
				who = append(who, r.Resp.ServerId)
			} else if r.Err != nil {
				who = append(who, "error "+r.Err.Error())
			}
		}
		t.Fatalf("conformance servers not started by this test answer on %s: %v (another interop run shares the broker?)", e.busURL, who)
	}
}
