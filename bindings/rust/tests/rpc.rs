//! The safe layer over local://, Redis and NATS (brokers from
//! PSRPC_TEST_REDIS_URL / PSRPC_TEST_NATS_URL, default 127.0.0.1:6379 /
//! 4222; a broker that does not answer fails its tests).
use futures::{SinkExt, StreamExt};
use psrpc::{
    Bus, BusOptions, CallOptions, Client, ClientOptions, Code, Error, Method, MethodFlags, Request, Routing, SelectionOptions, Server,
    ServerOptions,
};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(int64, tag = "2")]
    n: i64,
}

fn msg(text: &str, n: i64) -> Msg {
    Msg { text: text.into(), n }
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A service name no other test (or run) uses.
fn service(tag: &str) -> String {
    format!("RustTest_{tag}_{}_{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed))
}

fn url(kind: &str) -> String {
    match kind {
        "local" => format!("local://rust-test-{}", SEQ.fetch_add(1, Ordering::Relaxed)),
        "redis" => std::env::var("PSRPC_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        "nats" => std::env::var("PSRPC_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        _ => unreachable!(),
    }
}

async fn bus(kind: &str) -> Bus {
    let bus = Bus::open(&url(kind), BusOptions::default()).expect("open bus");
    bus.wait_ready(Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{kind} broker at {} does not answer: {e}", url(kind)));
    bus
}

fn method(name: &str, routing: Routing, flags: MethodFlags) -> Method {
    Method::new(name, Some("test.Msg"), routing, flags).unwrap()
}

const NO_TOPICS: &[&str] = &[];

async fn unary(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("unary");
    let m = method("Echo", Routing::Queue, MethodFlags::NONE);
    let server = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    server
        .register(&m, NO_TOPICS, |req: Request<Msg>, ctx: psrpc::Context| async move {
            let md: Vec<String> = req.metadata.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
            assert!(ctx.remaining() > Duration::ZERO);
            Ok(Msg { text: format!("{}|{}|{}", req.message.text, md.join(","), ctx.client_id), n: req.message.n + 1 })
        })
        .await
        .unwrap();
    let client = Client::new(&bus, &svc, ClientOptions { client_id: Some("rust-client.1".into()), ..Default::default() }).unwrap();
    let opts = CallOptions::new().metadata("k", "v é").metadata("empty", "");
    let r: Msg = client.call(&m, &msg("hi", 41), &opts).await.unwrap();
    assert_eq!(r, msg("hi|k=v é,empty=|rust-client.1", 42));
    // Raw call names the server.
    let reply = client.call_raw(&m, &prost::Message::encode_to_vec(&msg("x", 1)), &CallOptions::new()).await.unwrap();
    assert_eq!(reply.server_id, server.id());
    // Nobody serves another service: unavailable after the selection timeout.
    let other = Client::new(&bus, &service("nobody"), ClientOptions::default()).unwrap();
    let t0 = Instant::now();
    let e = other.call::<Msg, Msg>(&m, &msg("x", 0), &CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
    assert!(t0.elapsed() < Duration::from_secs(4));
}

async fn errors(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("errors");
    let m = method("Fail", Routing::Queue, MethodFlags::NONE);
    let server = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    server
        .register(&m, NO_TOPICS, |req: Request<Msg>, _| async move {
            match req.message.n {
                0 => Err::<Msg, _>(
                    Error::new(Code::NotFound, "no such thing: 日本")
                        .with_detail("type.googleapis.com/google.protobuf.StringValue", prost::Message::encode_to_vec(&"tag".to_string()))
                        .with_detail("type.example/raw", vec![0, 1, 2, 255]),
                ),
                1 => Err(Error::new(Code::Other("my_custom_code".into()), "custom")),
                2 => panic!("handler blew up"),
                _ => Ok(req.message),
            }
        })
        .await
        .unwrap();
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let e = client.call::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code, Code::NotFound);
    assert_eq!(e.message, "no such thing: 日本");
    assert_eq!(e.server_id.as_deref(), Some(server.id()));
    assert_eq!(e.details.len(), 2);
    assert_eq!(e.details[0].type_url, "type.googleapis.com/google.protobuf.StringValue");
    assert_eq!(<String as prost::Message>::decode(&e.details[0].value[..]).unwrap(), "tag");
    assert_eq!(e.details[1].value, vec![0, 1, 2, 255]);
    let e = client.call::<Msg, Msg>(&m, &msg("", 1), &CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code, Code::Other("my_custom_code".into()));
    assert_eq!(e.code.as_str(), "my_custom_code");
    // (A long timeout: printing the panic, with a backtrace under RUST_BACKTRACE
    // and a slow sanitizer build, can take seconds.)
    let slow = CallOptions::new().timeout(Duration::from_secs(30));
    let e = client.call::<Msg, Msg>(&m, &msg("", 2), &slow).await.unwrap_err();
    assert_eq!(e.code, Code::Internal);
    assert!(e.message.contains("handler blew up"), "{e}");
    // The server survived the panic.
    let ok: Msg = client.call(&m, &msg("fine", 3), &CallOptions::new()).await.unwrap();
    assert_eq!(ok.text, "fine");
    // The blocking call keeps code, message and details too.
    let (c2, m2) = (client.clone(), m.clone());
    let e = tokio::task::spawn_blocking(move || c2.call_blocking::<Msg, Msg>(&m2, &msg("", 0), &CallOptions::new())).await.unwrap().unwrap_err();
    assert_eq!((e.code.clone(), e.message.as_str(), e.details.len()), (Code::NotFound, "no such thing: 日本", 2));
    assert_eq!(e.details[1].value, vec![0, 1, 2, 255]);
    let (c2, m2) = (client.clone(), m.clone());
    let ok = tokio::task::spawn_blocking(move || c2.call_blocking::<Msg, Msg>(&m2, &msg("sync", 3), &CallOptions::new())).await.unwrap().unwrap();
    assert_eq!(ok.text, "sync");
    // An undecodable request: malformed_request from the server.
    let e = client.call_raw(&m, &[0xff, 0xff, 0xff], &CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code, Code::MalformedRequest, "{e}");
}

async fn deadline_and_cancel(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("slow");
    let m = method("Slow", Routing::Queue, MethodFlags::NONE);
    let server = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let s2 = started.clone();
    server
        .register(&m, NO_TOPICS, move |req: Request<Msg>, ctx: psrpc::Context| {
            let s2 = s2.clone();
            async move {
                s2.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(req.message.n as u64)).await;
                Ok(msg(&ctx.request_id, 0))
            }
        })
        .await
        .unwrap();
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    // Deadline.
    let t0 = Instant::now();
    let e = client.call::<Msg, Msg>(&m, &msg("", 1500), &CallOptions::new().timeout(Duration::from_millis(400))).await.unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
    let el = t0.elapsed();
    assert!(el >= Duration::from_millis(380) && el < Duration::from_millis(1400), "{el:?}");
    // Absolute deadline.
    let t0 = Instant::now();
    let dl = std::time::SystemTime::now() + Duration::from_millis(300);
    let e = client.call::<Msg, Msg>(&m, &msg("", 1500), &CallOptions::new().deadline(dl)).await.unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
    assert!(t0.elapsed() < Duration::from_millis(1300));
    // Cancel through a handle: the future resolves with canceled.
    let call = client.call::<Msg, Msg>(&m, &msg("", 2000), &CallOptions::new().timeout(Duration::from_secs(10)));
    let h = call.cancel_handle();
    let t0 = Instant::now();
    let (r, _) = futures::join!(call, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.cancel()
    });
    let e = r.unwrap_err();
    assert_eq!((e.code.clone(), e.message.as_str()), (Code::Canceled, "request canceled"), "{e}");
    assert!(t0.elapsed() < Duration::from_millis(1500));
    // Cancel on drop: the call is no longer in flight long before its timeout.
    tokio::time::sleep(Duration::from_millis(2000)).await; // the cancelled handler's sleep ends
    let before = started.load(Ordering::SeqCst);
    let r = tokio::time::timeout(
        Duration::from_millis(300),
        client.call::<Msg, Msg>(&m, &msg("", 2000), &CallOptions::new().timeout(Duration::from_secs(10))),
    )
    .await;
    assert!(r.is_err(), "the call should still be running");
    let t0 = Instant::now();
    loop {
        if bus.stats().unwrap().requests_in_flight == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "call not cancelled after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(started.load(Ordering::SeqCst), before + 1, "the handler ran");
}

async fn affinity_and_selection(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("aff");
    let m = method("Claim", Routing::Affinity, MethodFlags::NONE);
    let mut servers = Vec::new();
    for (i, a) in [0.2f32, 0.9, 0.5].into_iter().enumerate() {
        let s = Server::new(&bus, &svc, ServerOptions { server_id: Some(format!("srv_{i}")), ..Default::default() }).unwrap();
        let id = s.id().to_string();
        s.register_with_affinity(
            &m,
            NO_TOPICS,
            move |_req: Request<Msg>, _| {
                let id = id.clone();
                async move { Ok(msg(&id, 0)) }
            },
            Some(move |req: Request<Msg>, _ctx: psrpc::Context| async move {
                if req.message.text == "decline" {
                    -1.0
                } else {
                    tokio::task::yield_now().await;
                    a
                }
            }),
        )
        .await
        .unwrap();
        servers.push(s);
    }
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let r: Msg = client.call(&m, &msg("", 0), &CallOptions::new()).await.unwrap();
    assert_eq!(r.text, "srv_1");
    // A custom (async) selection: the lowest affinity.
    let sel = SelectionOptions {
        affinity_timeout: Some(Duration::from_millis(500)),
        select: Some(Arc::new(|claims: Vec<psrpc::Claim>| {
            Box::pin(async move {
                assert_eq!(claims.len(), 3);
                let lowest = claims.iter().min_by(|a, b| a.affinity.total_cmp(&b.affinity)).unwrap();
                Ok(lowest.server_id.clone())
            })
        })),
        ..Default::default()
    };
    let r: Msg = client.call(&m, &msg("", 0), &CallOptions::new().selection(sel)).await.unwrap();
    assert_eq!(r.text, "srv_0");
    // Minimum affinity above every claim.
    let sel = SelectionOptions { minimum_affinity: Some(0.95), affinity_timeout: Some(Duration::from_millis(300)), ..Default::default() };
    let e = client.call::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new().selection(sel)).await.unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
    // Every server declines.
    let e = client.call::<Msg, Msg>(&m, &msg("decline", 0), &CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
    // A selection function failing the call.
    let sel = SelectionOptions {
        select: Some(Arc::new(|_| Box::pin(async { Err(Error::new(Code::Aborted, "nobody suits")) }))),
        affinity_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    let e = client.call::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new().selection(sel)).await.unwrap_err();
    assert_eq!((e.code.clone(), e.message.as_str()), (Code::Aborted, "nobody suits"), "{e}");
}

async fn multi_and_topics(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("multi");
    let m = method("Fanout", Routing::Multi, MethodFlags::NONE);
    let t = method("Region", Routing::Affinity, MethodFlags::TOPICS);
    let mut servers = Vec::new();
    for i in 0..3 {
        let s = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
        let id = s.id().to_string();
        s.register(&m, NO_TOPICS, move |req: Request<Msg>, _| {
            let id = id.clone();
            async move {
                if i == 2 && req.message.text == "fail-one" {
                    return Err(Error::new(Code::NotFound, "not here"));
                }
                Ok(msg(&id, i))
            }
        })
        .await
        .unwrap();
        let topic = format!("region é {i}");
        s.register(&t, &[topic.as_str()], move |req: Request<Msg>, _| async move { Ok(msg(&req.topics.join(","), i)) }).await.unwrap();
        servers.push(s);
    }
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let t0 = Instant::now();
    let items: Vec<_> = client.call_multi::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new().timeout(Duration::from_millis(500))).collect().await;
    assert!(t0.elapsed() >= Duration::from_millis(450), "a multi call ends at its timeout");
    let mut ns: Vec<i64> = items.iter().map(|r| r.as_ref().unwrap().message.n).collect();
    ns.sort();
    assert_eq!(ns, vec![0, 1, 2]);
    for r in &items {
        let r = r.as_ref().unwrap();
        assert_eq!(r.message.text, r.server_id);
    }
    let items: Vec<_> =
        client.call_multi::<Msg, Msg>(&m, &msg("fail-one", 0), &CallOptions::new().timeout(Duration::from_millis(400))).collect().await;
    assert_eq!(items.iter().filter(|r| r.is_ok()).count(), 2);
    let e = items.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!((e.code.clone(), e.server_id.as_deref()), (Code::NotFound, Some(servers[2].id())));
    // Topics route to the owner.
    let r: Msg = client.call(&t, &msg("", 0), &CallOptions::new().topic("region é 1")).await.unwrap();
    assert_eq!((r.text.as_str(), r.n), ("region é 1", 1));
    // A cancel handle ends the multi call early; the cause says why.
    let mut call = client.call_multi::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new().timeout(Duration::from_secs(10)));
    let h = call.cancel_handle();
    assert!(call.next().await.unwrap().is_ok());
    h.cancel();
    let t0 = Instant::now();
    while call.next().await.is_some() {}
    assert!(t0.elapsed() < Duration::from_secs(2));
    let e = call.cause().unwrap();
    assert_eq!((e.code.clone(), e.message.as_str(), e.is_local()), (Code::Canceled, "request canceled", false));
    // A refused multi call: the stream ends at once, the cause is local.
    let mut call = client.call_multi::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new().topic("bad\0topic"));
    assert!(call.next().await.is_none());
    assert!(call.cause().unwrap().is_local());
    // Dropping a multi call cancels it.
    let mut call = client.call_multi::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new().timeout(Duration::from_secs(10)));
    let first = call.next().await.unwrap().unwrap();
    assert!(first.server_id.starts_with("SRV_"));
    drop(call);
    let t0 = Instant::now();
    while bus.stats().unwrap().requests_in_flight != 0 {
        assert!(t0.elapsed() < Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn subscriptions(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("subs");
    let m = method("Updates", Routing::Multi, MethodFlags::SUBSCRIPTION | MethodFlags::TOPICS);
    let server = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let mut a = client.subscribe::<Msg, _>(&m, &["room"]).await.unwrap();
    let mut b = client.subscribe::<Msg, _>(&m, &["room"]).await.unwrap();
    let mut other = client.subscribe::<Msg, _>(&m, &["other"]).await.unwrap();
    for i in 0..50 {
        server.publish(&m, &["room"], &msg("u", i)).unwrap();
    }
    for sub in [&mut a, &mut b] {
        for i in 0..50 {
            let u = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap().unwrap();
            assert_eq!(u.n, i);
        }
    }
    assert!(tokio::time::timeout(Duration::from_millis(200), other.next()).await.is_err());
    // Dropping unsubscribes: the broker subscription count goes down.
    let before = bus.stats().unwrap().subscriptions;
    drop(a);
    drop(b);
    drop(other);
    let t0 = Instant::now();
    while bus.stats().unwrap().subscriptions >= before {
        assert!(t0.elapsed() < Duration::from_secs(3), "subscriptions not dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn streams(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("chat");
    let m = method("Chat", Routing::Affinity, MethodFlags::STREAM);
    let server = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    let seen: Arc<std::sync::Mutex<Option<Error>>> = Arc::default();
    let seen2 = seen.clone();
    server
        .register_stream(
            &m,
            NO_TOPICS,
            move |mut s: psrpc::Stream<Msg, Msg>, req: Request<()>, _ctx| {
                let seen = seen2.clone();
                async move {
                let mode = req.metadata.get("mode").unwrap_or("").to_string();
                let mut expect = 0i64;
                while let Some(m) = s.next().await {
                    let m = match m {
                        Ok(m) => m,
                        Err(e) => {
                            if mode == "record" {
                                *seen.lock().unwrap() = Some(e.clone());
                            }
                            return Err(e);
                        }
                    };
                    if mode == "count" {
                        if m.n != expect {
                            return Err(Error::new(Code::DataLoss, format!("got {} expected {expect}", m.n)));
                        }
                        expect += 1;
                        if expect == 10_000 {
                            s.send(&msg("done", expect)).await?;
                        }
                    } else if m.text == "fail" {
                        return Err(Error::new(Code::Aborted, "server says no"));
                    } else if m.text == "custom" {
                        return Err(Error::new(Code::Other("my_custom_close".into()), "custom bye"));
                    } else if m.text == "bye" {
                        return Ok(());
                    } else {
                        s.send(&msg(&format!("echo {}", m.text), m.n)).await?;
                    }
                }
                if mode == "record" {
                    *seen.lock().unwrap() = s.close_cause();
                }
                Ok(())
                }
            },
            None::<fn(Request<()>, psrpc::Context) -> std::future::Ready<f32>>,
        )
        .await
        .unwrap();
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    // Ping-pong, then the server closes cleanly: the stream ends.
    let mut s = client.open_stream::<Msg, Msg>(&m, &CallOptions::new()).await.unwrap();
    for i in 0..20 {
        s.send(&msg("ping", i)).await.unwrap();
        let r = s.next().await.unwrap().unwrap();
        assert_eq!((r.text.as_str(), r.n), ("echo ping", i));
    }
    s.send(&msg("bye", 0)).await.unwrap();
    assert!(s.next().await.is_none());
    // The server closes with an error: the client sees it.
    let mut s = client.open_stream::<Msg, Msg>(&m, &CallOptions::new()).await.unwrap();
    s.send(&msg("fail", 0)).await.unwrap();
    let e = s.next().await.unwrap().unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (Code::Aborted, "server says no"));
    assert!(s.next().await.is_none());
    // Codes psrpc does not define travel unchanged, both ways.
    let mut s = client.open_stream::<Msg, Msg>(&m, &CallOptions::new()).await.unwrap();
    s.send(&msg("custom", 0)).await.unwrap();
    let e = s.next().await.unwrap().unwrap_err();
    assert_eq!((e.code, e.message.as_str()), (Code::Other("my_custom_close".into()), "custom bye"));
    // (Nothing sent first: an echo in flight would end the handler with the
    // failed send instead.)
    let s = client.open_stream::<Msg, Msg>(&m, &CallOptions::new().metadata("mode", "record")).await.unwrap();
    s.close(Some(&Error::new(Code::Other("client_custom".into()), "from the client")));
    let t0 = Instant::now();
    loop {
        if let Some(e) = seen.lock().unwrap().clone() {
            assert_eq!((e.code, e.message.as_str()), (Code::Other("client_custom".into()), "from the client"));
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(3), "the server never saw the close");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 10,000 messages in order, many in flight through the Sink half.
    let s = client.open_stream::<Msg, Msg>(&m, &CallOptions::new().metadata("mode", "count").timeout(Duration::from_secs(10))).await.unwrap();
    let (tx, mut rx) = s.split();
    let t0 = Instant::now();
    let mut inflight = futures::stream::FuturesOrdered::new();
    for i in 0..10_000 {
        inflight.push_back(tx.send(&msg("", i)));
        if inflight.len() >= 64 {
            inflight.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = inflight.next().await {
        r.unwrap();
    }
    let done = tokio::time::timeout(Duration::from_secs(10), rx.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((done.text.as_str(), done.n), ("done", 10_000), "after {:?}", t0.elapsed());
    // Sink: send_all + close.
    let s = client.open_stream::<Msg, Msg>(&m, &CallOptions::new()).await.unwrap();
    let (mut tx, mut rx) = s.split();
    SinkExt::send(&mut tx, msg("a", 1)).await.unwrap();
    assert_eq!(rx.next().await.unwrap().unwrap().text, "echo a");
    SinkExt::close(&mut tx).await.unwrap();
    assert!(rx.next().await.is_none());
    // No server: the open fails.
    let nobody = Client::new(&bus, &service("nochat"), ClientOptions::default()).unwrap();
    let e = nobody.open_stream::<Msg, Msg>(&m, &CallOptions::new()).await.err().unwrap();
    assert_eq!(e.code, Code::Unavailable, "{e}");
}

async fn close_in_flight(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("close");
    let m = method("Hang", Routing::Queue, MethodFlags::NONE);
    let server = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    server
        .register(&m, NO_TOPICS, |req: Request<Msg>, _| async move {
            tokio::time::sleep(Duration::from_millis(req.message.n as u64)).await;
            Ok(req.message)
        })
        .await
        .unwrap();
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let opts = CallOptions::new().timeout(Duration::from_secs(10));
    let calls: Vec<_> = (0..5).map(|_| client.call::<Msg, Msg>(&m, &msg("", 3000), &opts)).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    client.close().await.unwrap();
    for r in futures::future::join_all(calls).await {
        let e = r.unwrap_err();
        assert_eq!(e.code, Code::Canceled, "{e}");
    }
    assert!(t0.elapsed() < Duration::from_secs(2));
    let e = client.call::<Msg, Msg>(&m, &msg("", 0), &opts).await.unwrap_err();
    assert_eq!(e.code, Code::Canceled, "{e}");
    // A graceful server close waits for the handler in flight, whose answer arrives.
    let client2 = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let call = tokio::spawn({
        let c = client2.clone();
        let m = m.clone();
        async move { c.call::<Msg, Msg>(&m, &msg("late", 300), &CallOptions::new()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.close(false).await.unwrap();
    assert_eq!(call.await.unwrap().unwrap().text, "late");
    // Closing the bus fails everything still outstanding.
    let calls: Vec<_> = (0..3).map(|_| client2.call::<Msg, Msg>(&m, &msg("", 100), &opts)).collect();
    bus.close().await.unwrap();
    for r in futures::future::join_all(calls).await {
        assert_eq!(r.unwrap_err().code, Code::Canceled);
    }
}

async fn many_tasks(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("many");
    let m = method("Add", Routing::Queue, MethodFlags::NONE);
    let server = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    server.register(&m, NO_TOPICS, |req: Request<Msg>, _| async move { Ok(msg("", req.message.n * 2)) }).await.unwrap();
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let client = client.clone();
            let m = m.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    let n = t * 1000 + i;
                    let r: Msg = client.call(&m, &msg("", n), &CallOptions::new()).await.unwrap();
                    assert_eq!(r.n, n * 2);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A spawner that drops every future: requests handed to it are never answered.
struct Dropper;
impl psrpc::Spawn for Dropper {
    fn spawn(&self, fut: psrpc::BoxFuture) {
        drop(fut);
    }
}

async fn dropped_and_deferred(kind: &str) {
    let bus = bus(kind).await;
    let svc = service("dropped");
    let m = method("Echo", Routing::Queue, MethodFlags::NONE);
    let a = method("Claim", Routing::Affinity, MethodFlags::NONE);
    // Handlers whose futures are dropped: the request is abandoned (internal),
    // the affinity question declined (no server claims: unavailable).
    let server = Server::new(&bus, &svc, ServerOptions { spawner: Some(Arc::new(Dropper)), ..Default::default() }).unwrap();
    server.register(&m, NO_TOPICS, |r: Request<Msg>, _| async move { Ok(r.message) }).await.unwrap();
    server
        .register_with_affinity(&a, NO_TOPICS, |r: Request<Msg>, _| async move { Ok(r.message) }, Some(|_r: Request<Msg>, _| async { 1.0 }))
        .await
        .unwrap();
    let client = Client::new(&bus, &svc, ClientOptions::default()).unwrap();
    let e = client.call::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new()).await.unwrap_err();
    assert_eq!((e.code.clone(), e.message.as_str()), (Code::Internal, "request dropped without an answer"), "{e}");
    let e = client.call::<Msg, Msg>(&a, &msg("", 0), &CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");

    // Deferred acks: beyond 100 unread messages, a stream message is
    // acknowledged only when the handler takes it, so a send to a handler that
    // does not read times out.
    let chat = method("Chat", Routing::Queue, MethodFlags::STREAM);
    let server2 = Server::new(&bus, &svc, ServerOptions::default()).unwrap();
    server2
        .register_stream(
            &chat,
            NO_TOPICS,
            |mut s: psrpc::Stream<Msg, Msg>, _r, _c| async move {
                tokio::time::sleep(Duration::from_millis(1200)).await;
                let mut n = 0;
                while let Some(m) = s.next().await {
                    n += 1;
                    if m?.text == "end" {
                        s.send(&msg("count", n)).await?;
                    }
                }
                Ok(())
            },
            None::<fn(Request<()>, psrpc::Context) -> std::future::Ready<f32>>,
        )
        .await
        .unwrap();
    let mut s = client.open_stream::<Msg, Msg>(&chat, &CallOptions::new().timeout(Duration::from_secs(5))).await.unwrap();
    let t0 = Instant::now();
    let sends: Vec<_> = (0..100).map(|i| s.send(&msg("buffered", i))).collect();
    for r in futures::future::join_all(sends).await {
        r.unwrap();
    }
    assert!(t0.elapsed() < Duration::from_millis(800), "buffered sends are acknowledged on arrival");
    let e = s.send_timeout(&msg("over", 100), Duration::from_millis(300)).await.unwrap_err();
    assert_eq!(e.code, Code::DeadlineExceeded, "{e}");
    assert!(t0.elapsed() < Duration::from_millis(1150));
    // Once the handler reads, the send completes (after it took the message).
    s.send(&msg("end", 101)).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(1150), "acknowledged before the handler read it");
    let r = s.next().await.unwrap().unwrap();
    assert_eq!((r.text.as_str(), r.n), ("count", 102), "every message delivered, the timed-out one too");
}

macro_rules! suite {
    ($($kind:ident),*) => {$(
        mod $kind {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn unary() { super::unary(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn errors() { super::errors(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn deadline_and_cancel() { super::deadline_and_cancel(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn affinity_and_selection() { super::affinity_and_selection(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn multi_and_topics() { super::multi_and_topics(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn subscriptions() { super::subscriptions(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn streams() { super::streams(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn close_in_flight() { super::close_in_flight(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dropped_and_deferred() { super::dropped_and_deferred(stringify!($kind)).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn many_tasks() { super::many_tasks(stringify!($kind)).await }
        }
    )*};
}

suite!(local, redis, nats);

/// Every future of the API can be spawned on a multi-threaded runtime.
#[allow(dead_code)]
fn futures_are_send(client: Client, server: Server, bus: Bus, m: Method, s: psrpc::Stream<Msg, Msg>) {
    fn send<T: Send>(_: T) {}
    send(client.call::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new()));
    send(client.call_multi::<Msg, Msg>(&m, &msg("", 0), &CallOptions::new()));
    send(client.subscribe::<Msg, &str>(&m, &[]));
    send(client.open_stream::<Msg, Msg>(&m, &CallOptions::new()));
    send(client.close());
    send(server.register(&m, NO_TOPICS, |r: Request<Msg>, _| async move { Ok(r.message) }));
    send(server.close(false));
    send(bus.close());
    send(bus.wait_ready(Duration::from_secs(1)));
    send(s.send(&msg("", 0)));
    send(s);
}
