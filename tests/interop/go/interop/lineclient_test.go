package interop

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	"github.com/libpsrpc/interop/conformance"
)

// lineClient drives the conformance client program of a language slot
// (build/tests/interop/conformance-client for C, conformance_client.py for
// Python, ...) over its stdin/stdout: the line protocol of docs/interop.md
// (first written down at the top of conformance_client.c).
type lineClient struct {
	kind   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *syncBuffer
	inMu   sync.Mutex
	mu     sync.Mutex
	chans  map[string]chan cEvent
	seq    atomic.Int64
	done   chan struct{}
	exit   error // cmd.Wait's result, once done is closed
}

type cError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Details []struct {
		TypeURL string `json:"type_url"`
		Value   string `json:"value"`
	} `json:"details"`
}

type cEvent struct {
	ID           string          `json:"id"`
	Kind         string          `json:"kind"`
	OK           bool            `json:"ok"`
	Error        *cError         `json:"error"`
	Local        bool            `json:"local"`
	Resp         json.RawMessage `json:"resp"`
	ServerID     string          `json:"server_id"`
	Seq          uint32          `json:"seq"`
	Payload      string          `json:"payload"`
	Nonce        string          `json:"nonce"`
	SendID       string          `json:"send_id"`
	CloseCode    string          `json:"close_code"`
	CloseMessage string          `json:"close_message"`
	Undecodable  bool            `json:"undecodable"`
}

type cResp struct {
	ServerID  string            `json:"server_id"`
	Payload   string            `json:"payload"`
	Tag       string            `json:"tag"`
	Topic     string            `json:"topic"`
	Metadata  map[string]string `json:"metadata"`
	Value     int32             `json:"value"`
	Published uint32            `json:"published"`
}

func newLineClient(kind, busURL string, args ...string) (*lineClient, error) {
	argv := append(append(append([]string{}, slots[kind].Client...), "--bus", busURL), args...)
	c := &lineClient{
		kind:   kind,
		cmd:    exec.Command(argv[0], argv[1:]...),
		stderr: &syncBuffer{},
		chans:  map[string]chan cEvent{},
		done:   make(chan struct{}),
	}
	c.cmd.Stderr = c.stderr
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var err error
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	ready := make(chan struct{})
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 256<<20)
		first := true
		for sc.Scan() {
			if first && sc.Text() == "ready" {
				first = false
				close(ready)
				continue
			}
			var ev cEvent
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				continue
			}
			c.mu.Lock()
			ch := c.chans[ev.ID]
			c.mu.Unlock()
			if ch != nil {
				ch <- ev
			}
		}
		c.exit = c.cmd.Wait()
	}()
	select {
	case <-ready:
		return c, nil
	case <-c.done:
		return nil, fmt.Errorf("%s conformance client exited: %s", kind, c.stderr.String())
	case <-time.After(scaled(20 * time.Second)):
		_ = c.cmd.Process.Kill()
		return nil, fmt.Errorf("%s conformance client not ready after 20 s: %s", kind, c.stderr.String())
	}
}

func (c *lineClient) Kind() string { return c.kind }

func (c *lineClient) Close() {
	c.send("quit")
	_ = c.stdin.Close()
	select {
	case <-c.done:
	case <-time.After(scaled(15 * time.Second)):
		_ = c.cmd.Process.Kill()
		<-c.done
		c.exit = fmt.Errorf("no exit 15 s after quit")
	}
}

// exitError is how the client process ended after Close: nil for status 0
// (sanitizer reports, leaks included, make it non-zero).
func (c *lineClient) exitError() error {
	if c.exit != nil {
		return fmt.Errorf("%s conformance client: %v\n%s", c.kind, c.exit, c.stderr.String())
	}
	return nil
}

// pct %-encodes everything but unreserved characters.
func pct(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' ||
			ch == '-' || ch == '_' || ch == '.' || ch == '~' {
			b.WriteByte(ch)
		} else {
			fmt.Fprintf(&b, "%%%02X", ch)
		}
	}
	return b.String()
}

func (c *lineClient) newID(prefix string) (string, chan cEvent) {
	id := fmt.Sprintf("%s%d", prefix, c.seq.Add(1))
	ch := make(chan cEvent, 8192)
	c.mu.Lock()
	c.chans[id] = ch
	c.mu.Unlock()
	return id, ch
}

func (c *lineClient) forget(id string) {
	c.mu.Lock()
	delete(c.chans, id)
	c.mu.Unlock()
}

func (c *lineClient) send(line string) {
	c.inMu.Lock()
	defer c.inMu.Unlock()
	_, _ = io.WriteString(c.stdin, line+"\n")
}

func optArgs(o CallOpts) string {
	var b strings.Builder
	if o.Topic != "" {
		fmt.Fprintf(&b, " topic=%s", pct(o.Topic))
	}
	if o.Timeout > 0 {
		fmt.Fprintf(&b, " timeout_ms=%d", o.Timeout.Milliseconds())
	}
	if o.Malformed {
		b.WriteString(" raw=" + hex.EncodeToString(malformedRequest))
	}
	for k, v := range o.Metadata {
		fmt.Fprintf(&b, " md=%s:%s", pct(k), pct(v))
	}
	if s := o.Sel; s != nil {
		fmt.Fprintf(&b, " sel_min=%g sel_max=%g sel_timeout_ms=%d sel_short_ms=%d",
			s.Min, s.Max, s.AffinityTimeout.Milliseconds(), s.ShortCircuit.Milliseconds())
		if s.AcceptFirst {
			b.WriteString(" sel_afa=1")
		}
		if s.Pick != "" {
			fmt.Fprintf(&b, " sel_pick=%s", s.Pick)
		}
	}
	return b.String()
}

func echoArgs(req *conformance.EchoRequest) string {
	return fmt.Sprintf(" payload=%s delay_ms=%d fail_code=%s fail_message=%s tag=%s",
		hex.EncodeToString(req.Payload), req.DelayMs, pct(req.FailCode), pct(req.FailMessage),
		pct(req.Tag))
}

func (e *cError) toCallErr(local bool) *CallErr {
	if e == nil {
		return nil
	}
	ce := &CallErr{Code: e.Code, Message: e.Message, Local: local}
	for _, d := range e.Details {
		v, _ := hex.DecodeString(d.Value)
		ce.Details = append(ce.Details, &anypb.Any{TypeUrl: d.TypeURL, Value: v})
	}
	return ce
}

func (ev cEvent) echoResponse() (*conformance.EchoResponse, *CallErr) {
	if !ev.OK {
		if ev.Error == nil {
			return nil, &CallErr{Code: "harness", Message: "the client reported neither result nor error"}
		}
		return nil, ev.Error.toCallErr(ev.Local)
	}
	var r cResp
	if err := json.Unmarshal(ev.Resp, &r); err != nil {
		return nil, &CallErr{Code: "harness", Message: err.Error()}
	}
	p, _ := hex.DecodeString(r.Payload)
	if r.Metadata == nil {
		r.Metadata = map[string]string{}
	}
	return &conformance.EchoResponse{Payload: p, ServerId: r.ServerID, Tag: r.Tag,
		Topic: r.Topic, Metadata: r.Metadata}, nil
}

// wait returns the next event on ch; a generous bound so a hung C call fails
// the test instead of hanging it.
func (c *lineClient) wait(ch chan cEvent, what string) cEvent {
	select {
	case ev := <-ch:
		return ev
	case <-c.done:
		return cEvent{Error: &cError{Code: "harness", Message: c.kind + " conformance client exited: " + c.stderr.String()}}
	case <-time.After(60 * time.Second):
		return cEvent{Error: &cError{Code: "harness", Message: "no outcome from the " + c.kind + " conformance client for " + what}}
	}
}

type cPending struct {
	c  *lineClient
	id string
	ch chan cEvent
}

func (p *cPending) Wait() (*conformance.EchoResponse, *CallErr) {
	ev := p.c.wait(p.ch, p.id)
	p.c.forget(p.id)
	return ev.echoResponse()
}

func (p *cPending) Cancel() { p.c.send("cancel id=" + p.id) }

func (c *lineClient) EchoAsync(method string, req *conformance.EchoRequest, o CallOpts) Pending {
	id, ch := c.newID("call")
	c.send(fmt.Sprintf("call id=%s method=%s%s%s", id, method, optArgs(o), echoArgs(req)))
	return &cPending{c: c, id: id, ch: ch}
}

func (c *lineClient) Echo(method string, req *conformance.EchoRequest, o CallOpts) (*conformance.EchoResponse, *CallErr) {
	return c.EchoAsync(method, req, o).Wait()
}

func (c *lineClient) plainCall(line string, id string, ch chan cEvent) (cResp, *CallErr) {
	c.send(line)
	ev := c.wait(ch, id)
	c.forget(id)
	if !ev.OK {
		if ev.Error == nil {
			return cResp{}, &CallErr{Code: "harness", Message: "no error"}
		}
		return cResp{}, ev.Error.toCallErr(ev.Local)
	}
	var r cResp
	if err := json.Unmarshal(ev.Resp, &r); err != nil {
		return r, &CallErr{Code: "harness", Message: err.Error()}
	}
	return r, nil
}

func (c *lineClient) Add(inc int32, o CallOpts) (int32, *CallErr) {
	id, ch := c.newID("add")
	r, err := c.plainCall(fmt.Sprintf("call id=%s method=Add increment=%d%s", id, inc, optArgs(o)), id, ch)
	return r.Value, err
}

func (c *lineClient) Publish(req *conformance.PublishRequest, o CallOpts) (uint32, *CallErr) {
	id, ch := c.newID("pub")
	var b strings.Builder
	fmt.Fprintf(&b, "call id=%s method=Publish pmethod=%s count=%d payload=%s%s", id,
		pct(req.Method), req.Count, hex.EncodeToString(req.Payload), optArgs(o))
	for _, t := range req.Topic {
		fmt.Fprintf(&b, " ptopic=%s", pct(t))
	}
	r, err := c.plainCall(b.String(), id, ch)
	return r.Published, err
}

func (c *lineClient) Multi(method string, req *conformance.EchoRequest, o CallOpts) ([]MultiResult, *CallErr) {
	id, ch := c.newID("multi")
	defer c.forget(id)
	c.send(fmt.Sprintf("multi id=%s method=%s%s%s", id, method, optArgs(o), echoArgs(req)))
	var out []MultiResult
	for {
		ev := c.wait(ch, id)
		switch ev.Kind {
		case "multi-result":
			resp, err := ev.echoResponse()
			out = append(out, MultiResult{Resp: resp, Err: err})
		case "done":
			if !ev.OK {
				return out, ev.Error.toCallErr(ev.Local)
			}
			return out, nil
		default:
			return out, ev.Error.toCallErr(false)
		}
	}
}

type cSub struct {
	c  *lineClient
	id string
	ch chan *conformance.Update
}

func (s *cSub) Updates() <-chan *conformance.Update { return s.ch }
func (s *cSub) Close()                              { s.c.send("unsub id=" + s.id) }

// Subscribe returns once the C library reports the subscription ready.
func (c *lineClient) Subscribe(method, topic string) (Sub, error) {
	id, ch := c.newID("sub")
	line := fmt.Sprintf("sub id=%s method=%s", id, method)
	if topic != "" {
		line += " topic=" + pct(topic)
	}
	c.send(line)
	ev := c.wait(ch, id)
	if ev.Kind != "ready" {
		c.forget(id)
		return nil, ev.Error.toCallErr(ev.Local)
	}
	s := &cSub{c: c, id: id, ch: make(chan *conformance.Update, 8192)}
	go func() {
		for ev := range ch {
			switch ev.Kind {
			case "update":
				p, _ := hex.DecodeString(ev.Payload)
				s.ch <- &conformance.Update{Seq: ev.Seq, Payload: p, ServerId: ev.ServerID, Nonce: ev.Nonce}
			case "unsubscribed":
				c.forget(id)
				return
			}
		}
	}()
	return s, nil
}

type cChat struct {
	c      *lineClient
	id     string
	msgs   chan *conformance.ChatMessage
	closed chan *CallErr
	mu     sync.Mutex
	sends  map[string]chan *CallErr
	seq    atomic.Int64
}

func (c *lineClient) Chat(o CallOpts) (Chat, *CallErr) {
	id, ch := c.newID("chat")
	c.send(fmt.Sprintf("chat id=%s%s", id, optArgs(o)))
	ev := c.wait(ch, id)
	if ev.Kind != "open" || !ev.OK {
		c.forget(id)
		if ev.Error == nil {
			return nil, &CallErr{Code: "harness", Message: "unexpected " + ev.Kind}
		}
		return nil, ev.Error.toCallErr(ev.Local)
	}
	s := &cChat{c: c, id: id, msgs: make(chan *conformance.ChatMessage, 1024),
		closed: make(chan *CallErr, 1), sends: map[string]chan *CallErr{}}
	go func() {
		for ev := range ch {
			switch ev.Kind {
			case "message":
				p, _ := hex.DecodeString(ev.Payload)
				s.msgs <- &conformance.ChatMessage{Seq: ev.Seq, Payload: p, CloseCode: ev.CloseCode,
					CloseMessage: ev.CloseMessage}
			case "sent":
				s.mu.Lock()
				w := s.sends[ev.SendID]
				delete(s.sends, ev.SendID)
				s.mu.Unlock()
				if w != nil {
					if ev.OK {
						w <- nil
					} else {
						w <- ev.Error.toCallErr(ev.Local)
					}
				}
			case "closed":
				s.closed <- ev.Error.toCallErr(false)
			}
		}
	}()
	return s, nil
}

func (s *cChat) Send(m *conformance.ChatMessage) *CallErr {
	sid := fmt.Sprint(s.seq.Add(1))
	w := make(chan *CallErr, 1)
	s.mu.Lock()
	s.sends[sid] = w
	s.mu.Unlock()
	s.c.send(fmt.Sprintf("chat_send id=%s send_id=%s seq=%d payload=%s close_code=%s close_message=%s",
		s.id, sid, m.Seq, hex.EncodeToString(m.Payload), pct(m.CloseCode), pct(m.CloseMessage)))
	select {
	case err := <-w:
		return err
	case <-time.After(30 * time.Second):
		return &CallErr{Code: "harness", Message: "no send outcome"}
	}
}

func (s *cChat) Messages() <-chan *conformance.ChatMessage { return s.msgs }
func (s *cChat) Closed() <-chan *CallErr                   { return s.closed }
func (s *cChat) Close(code, message string) {
	s.c.send(fmt.Sprintf("chat_close id=%s code=%s message=%s", s.id, pct(code), pct(message)))
}
