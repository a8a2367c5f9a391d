//! conformance-server (Rust): the conformance service of
//! shared/docs/conformance.md with the flags and behaviour of the C
//! conformance-server (tests/interop/conformance_server.c):
//!
//!     conformance-server [--bus URL] [--server-id ID] [--affinity F]
//!                        [--topic T]... [--methods LIST]
//!     test hooks:        [--affinity-delay-ms N] [--skip-claim]
//!                        [--max-message-size N] [--compress-threshold N]
//!
//! Prints "ready" once every registration is confirmed, serves until SIGTERM
//! or SIGINT, then closes gracefully (in-flight requests finish) and exits 0.
//! fail_code "CODE@SERVER_ID" fails only on that server; failing Echo-like
//! calls carry details (a google.protobuf.StringValue with the tag, a
//! BytesValue with the payload); a Chat stream's end is printed as
//! {"event":"chat-end","code":...,"message":...,"max_seq":"N"}.
use futures::StreamExt;
use psrpc::{Bus, BusOptions, Code, Context, Error, Request, ServerOptions, Stream};
use psrpc_conformance::pb::{
    AddRequest, AddResult, ChatMessage, Conformance, ConformanceServer, ConformanceUpdates, ConformanceUpdatesServer, EchoRequest,
    EchoResponse, PublishRequest, PublishResult, Update,
};
use psrpc_conformance::{emit, json_str, Flags};
use std::hash::{BuildHasher, Hasher};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

struct Updates;
impl ConformanceUpdates for Updates {}

struct Impl {
    server_id: OnceLock<String>,
    affinity: f32,
    affinity_delay: Duration,
    counter: AtomicI32,
    updates: OnceLock<Arc<ConformanceUpdatesServer<Updates>>>,
}

fn nonce() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:016x}", h.finish())
}

impl Impl {
    fn id(&self) -> &str {
        self.server_id.get().map(String::as_str).unwrap_or("")
    }

    async fn echo_like(&self, r: Request<EchoRequest>, _ctx: Context) -> psrpc::Result<EchoResponse> {
        let req = &r.message;
        if req.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.delay_ms as u64)).await;
        }
        if !req.fail_code.is_empty() {
            let (code, target) = match req.fail_code.split_once('@') {
                Some((c, t)) => (c, Some(t)),
                None => (req.fail_code.as_str(), None),
            };
            if target.is_none() || target == Some(self.id()) {
                let mut e = Error::new(Code::from_wire(code), req.fail_message.clone());
                if !req.tag.is_empty() {
                    e = e.with_detail("type.googleapis.com/google.protobuf.StringValue", prost::Message::encode_to_vec(&req.tag));
                }
                if !req.payload.is_empty() {
                    e = e.with_detail("type.googleapis.com/google.protobuf.BytesValue", prost::Message::encode_to_vec(&req.payload));
                }
                return Err(e);
            }
        }
        Ok(EchoResponse {
            payload: req.payload.clone(),
            server_id: self.id().to_string(),
            tag: req.tag.clone(),
            metadata: r.metadata.0.iter().cloned().collect(),
            topic: r.topics.first().cloned().unwrap_or_default(),
        })
    }
}

#[derive(Clone)]
struct Svc(Arc<Impl>);

impl Conformance for Svc {
    async fn echo(&self, r: Request<EchoRequest>, ctx: Context) -> psrpc::Result<EchoResponse> {
        self.0.echo_like(r, ctx).await
    }
    async fn add(&self, r: Request<AddRequest>, _ctx: Context) -> psrpc::Result<AddResult> {
        let inc = r.message.increment;
        Ok(AddResult { value: self.0.counter.fetch_add(inc, Ordering::SeqCst).wrapping_add(inc) })
    }
    async fn claim(&self, r: Request<EchoRequest>, ctx: Context) -> psrpc::Result<EchoResponse> {
        self.0.echo_like(r, ctx).await
    }
    async fn claim_affinity(&self, _r: Request<EchoRequest>, _ctx: Context) -> f32 {
        if !self.0.affinity_delay.is_zero() {
            tokio::time::sleep(self.0.affinity_delay).await;
        }
        self.0.affinity
    }
    async fn fanout(&self, r: Request<EchoRequest>, ctx: Context) -> psrpc::Result<EchoResponse> {
        self.0.echo_like(r, ctx).await
    }
    async fn region_echo(&self, r: Request<EchoRequest>, ctx: Context) -> psrpc::Result<EchoResponse> {
        self.0.echo_like(r, ctx).await
    }
    async fn region_fanout(&self, r: Request<EchoRequest>, ctx: Context) -> psrpc::Result<EchoResponse> {
        self.0.echo_like(r, ctx).await
    }
    async fn publish(&self, r: Request<PublishRequest>, _ctx: Context) -> psrpc::Result<PublishResult> {
        let req = r.message;
        let updates = self.0.updates.get().expect("updates server").clone();
        let mut published = 0u32;
        for seq in 1..=req.count {
            let u = Update { seq, payload: req.payload.clone(), server_id: self.0.id().to_string(), nonce: nonce() };
            let res = match req.method.as_str() {
                "Updates" => updates.publish_updates(&req.topic, &u),
                "Work" => updates.publish_work(&req.topic, &u),
                "RegionUpdates" => updates.publish_region_updates(&req.topic, &u),
                _ => return Err(Error::new(Code::InvalidArgument, "unknown update method")),
            };
            if let Err(e) = res {
                return Err(Error::new(e.code, format!("publish {} failed: {}", published + 1, e.message)));
            }
            published += 1;
        }
        Ok(PublishResult { published })
    }
    async fn chat(&self, mut s: Stream<ChatMessage, ChatMessage>, _r: Request<()>, _ctx: Context) -> psrpc::Result<()> {
        let mut max_seq = 0u32;
        while let Some(m) = s.next().await {
            let Ok(m) = m else { break };
            max_seq = max_seq.max(m.seq);
            if !m.close_code.is_empty() {
                s.close(Some(&Error::new(Code::from_wire(&m.close_code), m.close_message.clone())));
                break;
            }
            if !m.close_message.is_empty() {
                s.close(None);
                break;
            }
            if s.send(&ChatMessage { seq: m.seq + 1, payload: m.payload, ..Default::default() }).await.is_err() {
                continue;
            }
        }
        // Wait for the end, then report the cause.
        while s.next().await.is_some() {}
        let cause = s.close_cause();
        let (code, message) = cause.map(|e| (e.code.as_str().to_string(), e.message)).unwrap_or_default();
        emit(&format!(
            "{{\"event\":\"chat-end\",\"code\":{},\"message\":{},\"max_seq\":\"{max_seq}\"}}",
            json_str(&code),
            json_str(&message)
        ));
        Ok(())
    }
}

const PLAIN: [&str; 6] = ["Echo", "Add", "Claim", "Fanout", "Publish", "Chat"];
const TOPICAL: [&str; 2] = ["RegionEcho", "RegionFanout"];

async fn run(flags: Flags) -> psrpc::Result<()> {
    let url = flags.get("--bus").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let num = |name: &str, d: f64| -> f64 { flags.get(name).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let opts = BusOptions {
        max_message_size: Some(num("--max-message-size", (16 << 20) as f64) as usize).filter(|v| *v > 0),
        compress_threshold: Some(num("--compress-threshold", 0.0) as usize).filter(|v| *v > 0),
        ..Default::default()
    };
    let bus = Bus::open(&url, opts)?;
    bus.wait_ready(Duration::from_secs(10)).await?;
    let sopts = ServerOptions { server_id: flags.get("--server-id"), skip_claim: flags.has("--skip-claim"), ..Default::default() };
    let imp = Arc::new(Impl {
        server_id: OnceLock::new(),
        affinity: num("--affinity", 1.0) as f32,
        affinity_delay: Duration::from_millis(num("--affinity-delay-ms", 0.0) as u64),
        counter: AtomicI32::new(0),
        updates: OnceLock::new(),
    });
    let server = ConformanceServer::new(&bus, Svc(imp.clone()), sopts.clone())?;
    let _ = imp.server_id.set(server.server().id().to_string());
    let updates = Arc::new(ConformanceUpdatesServer::new(&bus, Updates, sopts)?);
    let _ = imp.updates.set(updates.clone());
    let methods: Option<Vec<String>> = flags.get("--methods").map(|m| m.split(',').map(str::to_string).collect());
    let wanted = |name: &str| methods.as_ref().map_or(true, |m| m.iter().any(|x| x == name));
    let none: &[&str] = &[];
    for name in PLAIN.into_iter().filter(|n| wanted(n)) {
        match name {
            "Echo" => server.register_echo(none).await?,
            "Add" => server.register_add(none).await?,
            "Claim" => server.register_claim(none).await?,
            "Fanout" => server.register_fanout(none).await?,
            "Publish" => server.register_publish(none).await?,
            _ => server.register_chat(none).await?,
        }
    }
    for name in TOPICAL.into_iter().filter(|n| wanted(n)) {
        for t in flags.all("--topic") {
            if name == "RegionEcho" {
                server.register_region_echo(&[t.as_str()]).await?;
            } else {
                server.register_region_fanout(&[t.as_str()]).await?;
            }
        }
    }
    // The signal handlers are in place before "ready".
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
    emit("ready");
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    // Graceful: in-flight requests (delayed answers included) finish.
    server.server().close(false).await?;
    updates.server().close(false).await?;
    bus.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::from_env();
    if flags.has("-h") || flags.has("--help") {
        println!(
            "usage: conformance-server [--bus URL] [--server-id ID] [--affinity F] [--topic T]...\n       \
             [--methods LIST] [--affinity-delay-ms N] [--skip-claim]\n       [--max-message-size N] [--compress-threshold N]"
        );
        return ExitCode::SUCCESS;
    }
    match run(flags).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conformance-server: {e}");
            ExitCode::FAILURE
        }
    }
}
