//! A stream closed with an error right after its open completed (from the
//! task the open woke, while libpsrpc may still be finishing the open on its
//! loop thread) ends with that error on both sides, never as a clean close.
//! (Before the fix in impl/core/stream.c, most of these ended as
//! `canceled` "stream closed" on both sides.)
use futures::StreamExt;
use psrpc::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_close_right_after_open_keeps_its_cause() {
    let bus = Bus::open("local://close-race", BusOptions::default()).unwrap();
    let m = Method::new("Chat", None, Routing::Queue, MethodFlags::STREAM).unwrap();
    let server = Server::new(&bus, "Race", ServerOptions::default()).unwrap();
    let seen: Arc<Mutex<Vec<Option<Error>>>> = Arc::default();
    let s2 = seen.clone();
    server
        .register_stream(
            &m,
            &[] as &[&str],
            move |mut s: Stream<RawMessage, RawMessage>, _r, _c| {
                let seen = s2.clone();
                async move {
                    while s.next().await.is_some() {}
                    seen.lock().unwrap().push(s.close_cause());
                    Ok(())
                }
            },
            None::<fn(Request<()>, Context) -> std::future::Ready<f32>>,
        )
        .await
        .unwrap();
    let client = Client::new(&bus, "Race", ClientOptions::default()).unwrap();
    let want = Error::new(Code::Other("client_custom".into()), "closed at once");
    let mut streams = Vec::new();
    for _ in 0..50 {
        let s = client.open_stream::<RawMessage, RawMessage>(&m, &CallOptions::new()).await.unwrap();
        s.close(Some(&want));
        streams.push(s);
    }
    let t0 = Instant::now();
    while seen.lock().unwrap().len() < streams.len() {
        assert!(t0.elapsed() < Duration::from_secs(5), "not every stream ended at the server");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let same = |e: &Option<Error>| e.as_ref().map(|e| (e.code.clone(), e.message.clone())) == Some((want.code.clone(), want.message.clone()));
    let server_bad = seen.lock().unwrap().iter().filter(|e| !same(e)).count();
    let client_bad = streams.iter().filter(|s| !same(&s.close_cause())).count();
    assert_eq!((server_bad, client_bad), (0, 0), "streams of 50 that ended otherwise (server side, client side)");
}
