//! Bad input gets a clear error, never a crash or a hang (local bus only).
use psrpc::{Bus, BusOptions, CallOptions, Client, ClientOptions, Code, Method, MethodFlags, RawMessage, Routing, Server, ServerOptions};
use std::time::Duration;

#[tokio::test]
async fn refused_arguments_are_local_invalid_argument_errors() {
    // URLs.
    for url in ["bogus://x", "redis://", "local://a\0b"] {
        match Bus::open(url, BusOptions::default()) {
            Err(e) => assert!(e.is_local() && e.code == Code::InvalidArgument, "{url}: {e}"),
            Ok(_) => panic!("{url} accepted"),
        }
    }
    let bus = Bus::open("local://", BusOptions::default()).unwrap();
    // Names.
    for svc in ["", "has space", "a.b", "x\0y"] {
        let e = Client::new(&bus, svc, ClientOptions::default()).err().unwrap_or_else(|| panic!("service {svc:?} accepted"));
        assert_eq!(e.code, Code::InvalidArgument, "{svc:?}: {e}");
        assert!(Server::new(&bus, svc, ServerOptions::default()).is_err(), "{svc:?}");
    }
    assert!(Method::new("a\0b", None, Routing::Queue, MethodFlags::NONE).is_err());
    let client = Client::new(&bus, "Svc", ClientOptions::default()).unwrap();
    let server = Server::new(&bus, "Svc", ServerOptions::default()).unwrap();
    let bad = Method::new("not a name", None, Routing::Queue, MethodFlags::NONE).unwrap();
    let e = client.call::<RawMessage, RawMessage>(&bad, &RawMessage(vec![]), &CallOptions::new()).await.unwrap_err();
    assert!(e.is_local() && e.code == Code::InvalidArgument, "{e}");
    // Metadata with NUL.
    let ok = Method::new("Echo", None, Routing::Queue, MethodFlags::NONE).unwrap();
    let e = client.call::<RawMessage, RawMessage>(&ok, &RawMessage(vec![]), &CallOptions::new().metadata("k\0", "v")).await.unwrap_err();
    assert!(e.is_local() && e.code == Code::InvalidArgument, "{e}");
    // A queue method with an affinity function is refused (as in Go v0.8).
    let e = server
        .register_with_affinity(&ok, &[] as &[&str], |r: psrpc::Request<RawMessage>, _| async move { Ok(r.message) }, Some(|_r: psrpc::Request<RawMessage>, _| async { 1.0 }))
        .await
        .unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    // Registering twice.
    server.register(&ok, &[] as &[&str], |r: psrpc::Request<RawMessage>, _| async move { Ok(r.message) }).await.unwrap();
    let e = server.register(&ok, &[] as &[&str], |r: psrpc::Request<RawMessage>, _| async move { Ok(r.message) }).await.unwrap_err();
    assert_eq!(e.code, Code::AlreadyExists, "{e}");
    // Deregistering something never registered.
    let other = Method::new("Other", None, Routing::Queue, MethodFlags::NONE).unwrap();
    assert_eq!(server.deregister(&other, &[] as &[&str]).unwrap_err().code, Code::NotFound);
    // Publishing on a method without an output type.
    let sub = Method::new("Updates", None, Routing::Multi, MethodFlags::SUBSCRIPTION).unwrap();
    assert!(server.publish(&sub, &[] as &[&str], &RawMessage(vec![1])).is_err());
    // A message over the bus's limit.
    let small = Bus::open("local://small", BusOptions { max_message_size: Some(1024), ..Default::default() }).unwrap();
    let c = Client::new(&small, "Svc", ClientOptions::default()).unwrap();
    let e = c.call::<RawMessage, RawMessage>(&ok, &RawMessage(vec![0; 4096]), &CallOptions::new().timeout(Duration::from_secs(1))).await.unwrap_err();
    assert_eq!(e.code, Code::ResourceExhausted, "{e}");
    // After close: calls fail at once.
    client.close().await.unwrap();
    let e = client.call::<RawMessage, RawMessage>(&ok, &RawMessage(vec![]), &CallOptions::new()).await.unwrap_err();
    assert_eq!(e.code, Code::Canceled, "{e}");
    bus.close().await.unwrap();
    small.close().await.unwrap();
}

#[test]
fn no_runtime_no_spawner_is_a_clear_error() {
    // Outside any tokio runtime and without a spawner, a server cannot run
    // handlers: registration says so instead of hanging or panicking.
    let bus = Bus::open("local://", BusOptions::default()).unwrap();
    let server = Server::new(&bus, "Svc", ServerOptions::default()).unwrap();
    let m = Method::new("Echo", None, Routing::Queue, MethodFlags::NONE).unwrap();
    let e = futures::executor::block_on(server.register(&m, &[] as &[&str], |r: psrpc::Request<RawMessage>, _| async move { Ok(r.message) }))
        .unwrap_err();
    assert_eq!(e.code, Code::FailedPrecondition, "{e}");
    // Calls need no runtime at all.
    let client = Client::new(&bus, "Svc", ClientOptions::default()).unwrap();
    let e = futures::executor::block_on(client.call::<RawMessage, RawMessage>(&m, &RawMessage(vec![]), &CallOptions::new().timeout(Duration::from_millis(200))))
        .unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
}
