//! Interceptors, retries and trace context (issue 16) over local:// and NATS
//! (PSRPC_TEST_NATS_URL, default nats://127.0.0.1:4222).
use psrpc::{
    Bus, BusOptions, CallInfo, CallKind, CallOptions, Client, ClientInterceptor, ClientOptions, Code, Error, HookMetadata, Method,
    MethodFlags, Outcome, Request, RetryOptions, RetryParams, Role, Routing, Server, ServerInterceptor, ServerOptions, TraceContext,
};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
}

fn msg(t: &str) -> Msg {
    Msg { text: t.into() }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn service(tag: &str) -> String {
    format!("RustHooks_{tag}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

async fn bus(kind: &str) -> Bus {
    let url = match kind {
        "local" => format!("local://rust-hooks-{}", SEQ.fetch_add(1, Ordering::Relaxed)),
        _ => std::env::var("PSRPC_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
    };
    let bus = Bus::open(&url, BusOptions::default()).unwrap();
    bus.wait_ready(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{url} does not answer: {e}"));
    bus
}

fn echo() -> Method {
    Method::new("Echo", Some("test.Msg"), Routing::Queue, MethodFlags::NONE).unwrap()
}

const NO_TOPICS: &[&str] = &[];

/// Answers with the request's metadata, "k=v;k=v".
async fn serve_echo(bus: &Bus, svc: &str, opts: ServerOptions) -> (Server, Arc<AtomicUsize>) {
    let server = Server::new(bus, svc, opts).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    server
        .register(&echo(), NO_TOPICS, move |req: Request<Msg>, _ctx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                let md: Vec<String> = req.metadata.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
                Ok(msg(&md.join(";")))
            }
        })
        .await
        .unwrap();
    (server, calls)
}

#[derive(Default)]
struct Recorder {
    outcomes: Mutex<Vec<(CallInfo, Outcome)>>,
}

struct Auth {
    token: &'static str,
    rec: Arc<Recorder>,
}

impl ClientInterceptor for Auth {
    fn before_send(&self, info: &CallInfo, md: &mut HookMetadata<'_>) -> psrpc::Result<()> {
        assert_eq!((info.role, info.kind, info.method.as_str()), (Role::Client, CallKind::Unary, "Echo"));
        if md.get("deny").is_some() {
            return Err(Error::new(Code::Unauthenticated, "no token for you"));
        }
        md.remove("drop-me")?;
        md.set("authorization", self.token)
    }
    fn on_outcome(&self, info: &CallInfo, outcome: &Outcome) {
        self.rec.outcomes.lock().unwrap().push((info.clone(), outcome.clone()));
    }
}

struct RequireAuth {
    rec: Arc<Recorder>,
}

impl ServerInterceptor for RequireAuth {
    fn before_handle(&self, info: &CallInfo, md: &HookMetadata<'_>) -> psrpc::Result<()> {
        assert_eq!(info.role, Role::Server);
        assert!(info.request_id.is_some() && info.deadline.is_some());
        match md.get("authorization").as_deref() {
            Some("secret") => Ok(()),
            _ => Err(Error::new(Code::PermissionDenied, "who are you")),
        }
    }
    fn on_outcome(&self, info: &CallInfo, outcome: &Outcome) {
        self.rec.outcomes.lock().unwrap().push((info.clone(), outcome.clone()));
    }
}

async fn interceptors(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("icpt");
    let srec = Arc::new(Recorder::default());
    let (server, calls) =
        serve_echo(&bus, &svc, ServerOptions { interceptors: vec![Arc::new(RequireAuth { rec: srec.clone() })], ..Default::default() })
            .await;
    let crec = Arc::new(Recorder::default());
    let client =
        Client::new(&bus, &svc, ClientOptions { interceptors: vec![Arc::new(Auth { token: "secret", rec: crec.clone() })], ..Default::default() })
            .unwrap();

    // The interceptor's metadata reaches the handler; the server's interceptor lets it in.
    let r: Msg = client.call(&echo(), &msg("x"), &CallOptions::new().metadata("a", "1").metadata("drop-me", "2")).await.unwrap();
    assert_eq!(r.text, "a=1;authorization=secret");
    // A failing client interceptor: nothing is sent.
    let e = client.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new().metadata("deny", "1")).await.unwrap_err();
    assert_eq!((e.code.clone(), e.message.as_str()), (Code::Unauthenticated, "no token for you"));
    // Another client, with a wrong token (added later): the server's interceptor rejects.
    let other = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    other.add_interceptor(Auth { token: "wrong", rec: Arc::new(Recorder::default()) }).unwrap();
    let e = other.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new()).await.unwrap_err();
    assert_eq!((e.code.clone(), e.message.as_str()), (Code::PermissionDenied, "who are you"));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran only for the authorized call");

    let c = crec.outcomes.lock().unwrap().clone();
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].1.attempts, c[0].1.error.is_none(), c[0].1.server_id.as_deref()), (1, true, Some(server.id())));
    assert_eq!(c[0].0.client_id, client.id());
    assert_eq!((c[1].1.attempts, c[1].1.error.as_ref().map(|e| e.code.clone())), (0, Some(Code::Unauthenticated)));
    // Server outcomes arrive on the answering thread: wait a little for the second.
    let t0 = Instant::now();
    while srec.outcomes.lock().unwrap().len() < 2 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let s = srec.outcomes.lock().unwrap().clone();
    assert_eq!(s.len(), 2, "{s:?}");
    assert!(s[0].1.error.is_none() && s[0].0.client_id == client.id());
    assert_eq!(s[1].1.error.as_ref().map(|e| e.code.clone()), Some(Code::PermissionDenied));
    assert_eq!(s[1].0.client_id, other.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interceptors_local() {
    interceptors("local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interceptors_nats() {
    interceptors("nats").await;
}

/// A server failing the first `fails` requests with `code`.
async fn flaky(bus: &Bus, svc: &str, fails: u32, code: Code) -> (Server, Arc<AtomicU32>) {
    let server = Server::new(bus, svc, ServerOptions::default()).unwrap();
    let n = Arc::new(AtomicU32::new(0));
    let n2 = n.clone();
    server
        .register(&echo(), NO_TOPICS, move |_req: Request<Msg>, _ctx| {
            let i = n2.fetch_add(1, Ordering::SeqCst);
            let code = code.clone();
            async move {
                if i < fails {
                    Err(Error::new(code, format!("attempt {}", i + 1)))
                } else {
                    Ok(msg(&format!("ok after {i}")))
                }
            }
        })
        .await
        .unwrap();
    (server, n)
}

struct Attempts(Arc<Mutex<Vec<u32>>>);

impl ClientInterceptor for Attempts {
    fn on_outcome(&self, _info: &CallInfo, outcome: &Outcome) {
        self.0.lock().unwrap().push(outcome.attempts);
    }
}

async fn retries(kind: &str) {
    let bus = bus(kind).await;
    let att = Arc::new(Mutex::new(Vec::new()));
    let opts = |r: RetryOptions| ClientOptions { retries: Some(r), interceptors: vec![Arc::new(Attempts(att.clone()))], ..Default::default() };

    // unavailable is recoverable: the third attempt succeeds.
    let svc = service("retry");
    let (_s, n) = flaky(&bus, &svc, 2, Code::Unavailable).await;
    let c = Client::new(&bus, &svc, opts(RetryOptions::attempts(3))).unwrap();
    let r: Msg = c.call(&echo(), &msg("x"), &CallOptions::new()).await.unwrap();
    assert_eq!((r.text.as_str(), n.load(Ordering::SeqCst)), ("ok after 2", 3));

    // Two attempts are not enough: the last attempt's error.
    let svc = service("retry");
    let (_s, n) = flaky(&bus, &svc, 2, Code::Unavailable).await;
    let c = Client::new(&bus, &svc, opts(RetryOptions::attempts(2))).unwrap();
    let e = c.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new()).await.unwrap_err();
    assert_eq!((e.code.clone(), e.message.as_str(), n.load(Ordering::SeqCst)), (Code::Unavailable, "attempt 2", 2));
    // set_retries(None): no more retries.
    c.set_retries(None).unwrap();
    let svc2 = service("retry");
    let (_s2, n2) = flaky(&bus, &svc2, 1, Code::Unavailable).await;
    let c2 = Client::new(&bus, &svc2, opts(RetryOptions::attempts(5))).unwrap();
    c2.set_retries(None).unwrap();
    assert!(c2.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new()).await.is_err());
    assert_eq!(n2.load(Ordering::SeqCst), 1);

    // Not recoverable by default: one attempt; a custom predicate retries it.
    let svc = service("retry");
    let (_s, n) = flaky(&bus, &svc, 1, Code::Aborted).await;
    let c = Client::new(&bus, &svc, opts(RetryOptions::attempts(3))).unwrap();
    assert_eq!(c.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new()).await.unwrap_err().code, Code::Aborted);
    assert_eq!(n.load(Ordering::SeqCst), 1);
    let svc = service("retry");
    let (_s, n) = flaky(&bus, &svc, 1, Code::Aborted).await;
    let r = RetryOptions { max_attempts: 3, is_recoverable: Some(Arc::new(|e: &Error| e.code == Code::Aborted)), ..Default::default() };
    let c = Client::new(&bus, &svc, opts(r)).unwrap();
    c.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new()).await.unwrap();
    assert_eq!(n.load(Ordering::SeqCst), 2);

    // retry_params (Go's GetRetryParameters): waits between attempts.
    let svc = service("retry");
    let (_s, n) = flaky(&bus, &svc, 2, Code::Unavailable).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let r = RetryOptions {
        retry_params: Some(Arc::new(move |e: &Error, attempt| {
            s2.lock().unwrap().push((attempt, e.message.clone()));
            (attempt < 5).then_some(RetryParams { timeout: None, wait: Duration::from_millis(150) })
        })),
        ..Default::default()
    };
    let c = Client::new(&bus, &svc, opts(r)).unwrap();
    let t0 = Instant::now();
    c.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new()).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(300), "{:?}", t0.elapsed());
    assert_eq!(n.load(Ordering::SeqCst), 3);
    assert_eq!(*seen.lock().unwrap(), vec![(1, "attempt 1".to_string()), (2, "attempt 2".to_string())]);
    assert_eq!(*att.lock().unwrap(), vec![3, 2, 1, 1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_local() {
    retries("local").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_nats() {
    retries("nats").await;
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[test]
fn trace_context_parsing() {
    let t = TraceContext::new(TP, Some("rojo=00f067aa0ba902b7")).unwrap();
    assert_eq!((t.trace_id(), t.span_id(), t.sampled()), ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true));
    let c = t.child();
    assert_eq!((c.trace_id(), c.tracestate()), (t.trace_id(), Some("rojo=00f067aa0ba902b7")));
    assert_ne!(c.span_id(), t.span_id());
    assert_eq!(&c.traceparent()[52..], "-01");
    assert_eq!(TraceContext::new(TP, Some("")).unwrap().to_metadata(), vec![("traceparent".to_string(), TP.to_string())]);
    for bad in [
        "",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\0",
    ] {
        assert_eq!(TraceContext::new(bad, None).unwrap_err().code, Code::InvalidArgument, "{bad:?}");
    }
}

/// A handler's nested call continues its trace: same trace id, a new span id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_crosses_a_hop() {
    let bus = bus("local").await;
    let (front, back) = (service("front"), service("back"));
    let seen: Arc<Mutex<Vec<Option<TraceContext>>>> = Arc::default();
    let bs = Server::new(&bus, &back, ServerOptions::default()).unwrap();
    let s2 = seen.clone();
    bs.register(&echo(), NO_TOPICS, move |req: Request<Msg>, ctx: psrpc::Context| {
        s2.lock().unwrap().push(ctx.trace.clone());
        let md: Vec<String> = req.metadata.0.iter().map(|(k, _)| k.clone()).collect();
        async move { Ok(msg(&md.join(","))) }
    })
    .await
    .unwrap();
    let back_client = Client::new(&bus, &back, ClientOptions::default()).unwrap();
    let fs = Server::new(&bus, &front, ServerOptions::default()).unwrap();
    let s1 = seen.clone();
    fs.register(&echo(), NO_TOPICS, move |_req: Request<Msg>, ctx: psrpc::Context| {
        s1.lock().unwrap().push(ctx.trace.clone());
        let c = back_client.clone();
        async move { c.call::<Msg, Msg>(&echo(), &msg("nested"), &ctx.call_options()).await }
    })
    .await
    .unwrap();
    let client = Client::new(&bus, &front, ClientOptions::default()).unwrap();
    let sent = TraceContext::new(TP, Some("k=v")).unwrap();
    let r: Msg = client.call(&echo(), &msg("x"), &CallOptions::new().metadata("traceparent", "junk").trace(&sent)).await.unwrap();
    assert_eq!(r.text, "traceparent,tracestate");
    let seen = seen.lock().unwrap().clone();
    let (at_front, at_back) = (seen[0].clone().unwrap(), seen[1].clone().unwrap());
    assert_eq!(at_front, sent);
    assert_eq!((at_back.trace_id(), at_back.tracestate()), (sent.trace_id(), Some("k=v")));
    assert_ne!(at_back.span_id(), sent.span_id());
    // Without a trace context nothing is added.
    let r: Msg = client.call(&echo(), &msg("x"), &CallOptions::new()).await.unwrap();
    assert_eq!(r.text, "");
}

#[cfg(feature = "opentelemetry")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otel_propagation() {
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    let bus = bus("local").await;
    let svc = service("otel");
    let (_server, _) = serve_echo(&bus, &svc, ServerOptions::default()).await;
    let client =
        Client::new(&bus, &svc, ClientOptions { interceptors: vec![Arc::new(psrpc::trace::otel::Propagation)], ..Default::default() })
            .unwrap();
    let sc = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        false,
        "a=b".parse::<TraceState>().unwrap(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
    let call = {
        let _guard = cx.clone().attach();
        client.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new())
    };
    assert_eq!(call.await.unwrap().text, format!("traceparent={TP};tracestate=a=b"));
    // Without a current span: nothing; an explicit traceparent wins.
    assert_eq!(client.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new()).await.unwrap().text, "");
    let call = {
        let _guard = cx.clone().attach();
        let mine = TraceContext::new("00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00", None).unwrap();
        client.call::<Msg, Msg>(&echo(), &msg("x"), &CallOptions::new().trace(&mine))
    };
    assert_eq!(call.await.unwrap().text, "traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-00");
    // Round trip to OpenTelemetry.
    let t = TraceContext::from_otel(&cx).unwrap();
    assert_eq!((t.traceparent(), t.tracestate()), (TP, Some("a=b")));
    assert_eq!(t.to_otel().span().span_context(), &SpanContext::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), true, sc.trace_state().clone()));
}
