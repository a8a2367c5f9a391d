package interop

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/livekit/psrpc"
	"github.com/livekit/psrpc/pkg/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/libpsrpc/interop/conformance"
	"github.com/libpsrpc/interop/confsvc"
)

// CallOpts are the options of one call, the same for both clients.
type CallOpts struct {
	Topic    string
	Timeout  time.Duration
	Metadata map[string]string
	Sel      *Sel
	// Malformed replaces the request with bytes that do not decode as the
	// method's request type (test plan U12).
	Malformed bool
}

// Sel are explicit selection options (they replace the defaults).
type Sel struct {
	Min, Max        float32
	AcceptFirst     bool
	AffinityTimeout time.Duration
	ShortCircuit    time.Duration
	Pick            string // "lowest" or "highest": a custom selection function
}

// CallErr is an error as a client reported it.
type CallErr struct {
	Code    string
	Message string
	Details []*anypb.Any
	Local   bool // refused by the client library, nothing on the wire
}

func (e *CallErr) Error() string {
	if e == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

type MultiResult struct {
	Resp *conformance.EchoResponse
	Err  *CallErr
}

type Pending interface {
	Wait() (*conformance.EchoResponse, *CallErr)
	Cancel()
}

type Sub interface {
	Updates() <-chan *conformance.Update
	Close()
}

type Chat interface {
	Send(m *conformance.ChatMessage) *CallErr
	Messages() <-chan *conformance.ChatMessage
	// Closed delivers the cause of the stream's end, once.
	Closed() <-chan *CallErr
	Close(code, message string)
}

// Client is a conformance client: Go (livekit/psrpc, generated code) or C
// (conformance-client driven over a pipe).
type Client interface {
	Kind() string
	Echo(method string, req *conformance.EchoRequest, o CallOpts) (*conformance.EchoResponse, *CallErr)
	EchoAsync(method string, req *conformance.EchoRequest, o CallOpts) Pending
	Add(inc int32, o CallOpts) (int32, *CallErr)
	Publish(req *conformance.PublishRequest, o CallOpts) (uint32, *CallErr)
	Multi(method string, req *conformance.EchoRequest, o CallOpts) ([]MultiResult, *CallErr)
	Subscribe(method, topic string) (Sub, error)
	Chat(o CallOpts) (Chat, *CallErr)
	Close()
}

// ---------------------------------------------------------------------------
// Go client
// ---------------------------------------------------------------------------

type goClient struct {
	bus     *confsvc.Bus
	c       conformance.ConformanceClient
	u       conformance.ConformanceUpdatesClient
	busURL  string
	compr   confsvc.Compression
	ownsBus bool
}

func newGoClient(busURL string, clientID string, compr confsvc.Compression) (*goClient, error) {
	bus, err := confsvc.Connect(busURL, compr)
	if err != nil {
		return nil, err
	}
	var opts []psrpc.ClientOption
	if clientID != "" {
		opts = append(opts, psrpc.WithClientID(clientID))
	}
	c, err := conformance.NewConformanceClient(bus, opts...)
	if err != nil {
		bus.Close()
		return nil, err
	}
	u, err := conformance.NewConformanceUpdatesClient(bus)
	if err != nil {
		bus.Close()
		return nil, err
	}
	// The clients' reply subscriptions are asynchronous (Q14).
	if err := bus.Barrier(barrierTimeout); err != nil {
		bus.Close()
		return nil, err
	}
	return &goClient{bus: bus, c: c, u: u, busURL: busURL, compr: compr}, nil
}

func (g *goClient) Kind() string { return "go" }

func (g *goClient) Close() {
	g.c.Close()
	g.u.Close()
	g.bus.Close()
}

func toCallErr(err error) *CallErr {
	if err == nil {
		return nil
	}
	var pe psrpc.Error
	if errors.As(err, &pe) {
		return &CallErr{Code: string(pe.Code()), Message: pe.Error(), Details: pe.DetailsProto()}
	}
	return &CallErr{Code: "go-error", Message: err.Error()}
}

func goOpts(ctx context.Context, o CallOpts) (context.Context, []psrpc.RequestOption) {
	var ro []psrpc.RequestOption
	if o.Timeout > 0 {
		ro = append(ro, psrpc.WithRequestTimeout(o.Timeout))
	}
	if o.Sel != nil {
		so := psrpc.SelectionOpts{
			MinimumAffinity:      o.Sel.Min,
			MaximumAffinity:      o.Sel.Max,
			AcceptFirstAvailable: o.Sel.AcceptFirst,
			AffinityTimeout:      o.Sel.AffinityTimeout,
			ShortCircuitTimeout:  o.Sel.ShortCircuit,
		}
		if o.Sel.Pick != "" {
			lowest := o.Sel.Pick == "lowest"
			so.SelectionFunc = func(claims []*psrpc.Claim) (string, error) {
				if len(claims) == 0 {
					return "", psrpc.NewErrorf(psrpc.Unavailable, "no servers available")
				}
				sort.Slice(claims, func(i, j int) bool {
					if lowest {
						return claims[i].Affinity < claims[j].Affinity
					}
					return claims[i].Affinity > claims[j].Affinity
				})
				return claims[0].ServerID, nil
			}
		}
		ro = append(ro, psrpc.WithSelectionOpts(so))
	}
	if len(o.Metadata) > 0 {
		ctx = metadata.NewContextWithOutgoingMetadata(ctx, metadata.Metadata(o.Metadata))
	}
	if o.Malformed {
		// A message whose only content is a truncated field (field 1 claims
		// 5 bytes, 1 follows): no protobuf decoder accepts it.
		ro = append(ro, psrpc.WithRequestInterceptors(psrpc.ClientRPCInterceptor(func(info psrpc.RPCInfo, next psrpc.ClientRPCHandler) psrpc.ClientRPCHandler {
			return func(ctx context.Context, _ proto.Message, opts ...psrpc.RequestOption) (proto.Message, error) {
				m := &emptypb.Empty{}
				m.ProtoReflect().SetUnknown(protoreflect.RawFields(malformedRequest))
				return next(ctx, m, opts...)
			}
		})))
	}
	return ctx, ro
}

// malformedRequest is what CallOpts.Malformed sends instead of a request.
var malformedRequest = []byte{0x0a, 0x05, 0x01}

type goPending struct {
	cancel context.CancelFunc
	done   chan struct{}
	resp   *conformance.EchoResponse
	err    *CallErr
}

func (p *goPending) Wait() (*conformance.EchoResponse, *CallErr) { <-p.done; return p.resp, p.err }
func (p *goPending) Cancel()                                     { p.cancel() }

func (g *goClient) EchoAsync(method string, req *conformance.EchoRequest, o CallOpts) Pending {
	ctx, cancel := context.WithCancel(context.Background())
	ctx, ro := goOpts(ctx, o)
	p := &goPending{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		var resp *conformance.EchoResponse
		var err error
		switch method {
		case "Echo":
			resp, err = g.c.Echo(ctx, req, ro...)
		case "Claim":
			resp, err = g.c.Claim(ctx, req, ro...)
		case "RegionEcho":
			resp, err = g.c.RegionEcho(ctx, o.Topic, req, ro...)
		default:
			err = fmt.Errorf("not an echo method: %s", method)
		}
		p.resp, p.err = resp, toCallErr(err)
	}()
	return p
}

func (g *goClient) Echo(method string, req *conformance.EchoRequest, o CallOpts) (*conformance.EchoResponse, *CallErr) {
	return g.EchoAsync(method, req, o).Wait()
}

func (g *goClient) Add(inc int32, o CallOpts) (int32, *CallErr) {
	ctx, ro := goOpts(context.Background(), o)
	r, err := g.c.Add(ctx, &conformance.AddRequest{Increment: inc}, ro...)
	if err != nil {
		return 0, toCallErr(err)
	}
	return r.Value, nil
}

func (g *goClient) Publish(req *conformance.PublishRequest, o CallOpts) (uint32, *CallErr) {
	ctx, ro := goOpts(context.Background(), o)
	r, err := g.c.Publish(ctx, req, ro...)
	if err != nil {
		return 0, toCallErr(err)
	}
	return r.Published, nil
}

func (g *goClient) Multi(method string, req *conformance.EchoRequest, o CallOpts) ([]MultiResult, *CallErr) {
	ctx, ro := goOpts(context.Background(), o)
	var ch <-chan *psrpc.Response[*conformance.EchoResponse]
	var err error
	switch method {
	case "Fanout":
		ch, err = g.c.Fanout(ctx, req, ro...)
	case "RegionFanout":
		ch, err = g.c.RegionFanout(ctx, o.Topic, req, ro...)
	default:
		err = fmt.Errorf("not a multi method: %s", method)
	}
	if err != nil {
		return nil, toCallErr(err)
	}
	var out []MultiResult
	for r := range ch {
		if r.Err != nil {
			out = append(out, MultiResult{Err: toCallErr(r.Err)})
		} else {
			out = append(out, MultiResult{Resp: r.Result})
		}
	}
	return out, nil
}

type goSub struct {
	s  psrpc.Subscription[*conformance.Update]
	u  conformance.ConformanceUpdatesClient
	ch chan *conformance.Update
}

func (s *goSub) Updates() <-chan *conformance.Update { return s.ch }
func (s *goSub) Close()                              { _ = s.s.Close(); s.u.Close() }

// Subscribe joins with a client object of its own, so that several
// subscribers are distinct clients (as separate processes would be), and
// returns once the subscription is active at the broker (Q14).
func (g *goClient) Subscribe(method, topic string) (Sub, error) {
	u, err := conformance.NewConformanceUpdatesClient(g.bus)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	var s psrpc.Subscription[*conformance.Update]
	switch method {
	case "Updates":
		s, err = u.SubscribeUpdates(ctx)
	case "Work":
		s, err = u.SubscribeWork(ctx)
	case "RegionUpdates":
		s, err = u.SubscribeRegionUpdates(ctx, topic)
	default:
		err = fmt.Errorf("unknown subscription %s", method)
	}
	if err != nil {
		u.Close()
		return nil, err
	}
	if err := g.bus.Barrier(barrierTimeout); err != nil {
		_ = s.Close()
		u.Close()
		return nil, err
	}
	gs := &goSub{s: s, u: u, ch: make(chan *conformance.Update, 4096)}
	go func() {
		for m := range s.Channel() {
			gs.ch <- m
		}
	}()
	return gs, nil
}

type goChat struct {
	s      psrpc.ClientStream[*conformance.ChatMessage, *conformance.ChatMessage]
	msgs   chan *conformance.ChatMessage
	closed chan *CallErr
}

func (g *goClient) Chat(o CallOpts) (Chat, *CallErr) {
	ctx, ro := goOpts(context.Background(), o)
	s, err := g.c.Chat(ctx, ro...)
	if err != nil {
		return nil, toCallErr(err)
	}
	c := &goChat{s: s, msgs: make(chan *conformance.ChatMessage, 1024), closed: make(chan *CallErr, 1)}
	go func() {
		for m := range s.Channel() {
			c.msgs <- m
		}
		c.closed <- toCallErr(s.Err())
	}()
	return c, nil
}

func (c *goChat) Send(m *conformance.ChatMessage) *CallErr  { return toCallErr(c.s.Send(m)) }
func (c *goChat) Messages() <-chan *conformance.ChatMessage { return c.msgs }
func (c *goChat) Closed() <-chan *CallErr                   { return c.closed }
func (c *goChat) Close(code, message string) {
	var cause error
	if code != "" {
		cause = psrpc.NewError(psrpc.ErrorCode(code), errors.New(message))
	}
	_ = c.s.Close(cause)
}
