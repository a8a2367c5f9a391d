//! conformance-client (Rust): the conformance client with the command
//! protocol of the C conformance-client (tests/interop/conformance_client.c),
//! so the interop scenarios can drive a Rust client:
//!
//!     conformance-client [--bus URL] [--client-id ID] [--timeout-ms N]
//!                        [--max-message-size N] [--compress-threshold N]
//!     conformance-client --print-methods   the method table, one line each
//!     conformance-client --has-streams     exit 0 (this binding has streams)
//!
//! Prints "ready" once the bus is connected, then reads one command per line
//! (call, multi, cancel, sub, unsub, chat, chat_send, chat_close, quit; a word
//! followed by key=value pairs, values %-encoded) and prints every outcome as
//! one JSON line carrying the command's id, as the C client does.
use futures::StreamExt;
use psrpc::{Bus, BusOptions, CallOptions, CancelHandle, Client, ClientOptions, Code, Error, Method, SelectionOptions};
use psrpc_conformance::pb::{self, conformance_methods as cm, conformance_updates_methods as um};
use psrpc_conformance::{emit, error_json, hex, json_str, print_methods, unhex, unquote, Flags};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

struct Args(Vec<(String, String)>);

impl Args {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
    }
    fn or(&self, k: &str, d: &'static str) -> String {
        self.get(k).unwrap_or(d).to_string()
    }
    fn num<T: std::str::FromStr + Default>(&self, k: &str) -> T {
        self.get(k).and_then(|v| v.parse().ok()).unwrap_or_default()
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.0.iter().filter(|(a, _)| a == k).map(|(_, v)| v.clone()).collect()
    }
}

fn parse(line: &str) -> Option<(String, Args)> {
    let mut words = line.split_whitespace();
    let cmd = words.next()?.to_string();
    let pairs = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), if k == "md" { v.to_string() } else { unquote(v) }))
        .collect();
    Some((cmd, Args(pairs)))
}

fn out_error(id: &str, kind: &str, extra: &str, e: &Error) -> String {
    format!(
        "{{\"id\":{},\"kind\":{}{extra},\"ok\":false,\"error\":{}{}}}",
        json_str(id),
        json_str(kind),
        error_json(e),
        if e.is_local() { ",\"local\":true" } else { "" }
    )
}

fn local_error(id: &str, kind: &str, code: Code, message: &str) {
    let e = Error::new(code, message);
    emit(&format!(
        "{{\"id\":{},\"kind\":{},\"ok\":false,\"error\":{},\"local\":true}}",
        json_str(id),
        json_str(kind),
        error_json(&e)
    ));
}

fn method(name: &str) -> Option<Method> {
    Some(match name {
        "Echo" => cm::ECHO,
        "Add" => cm::ADD,
        "Claim" => cm::CLAIM,
        "Fanout" => cm::FANOUT,
        "RegionEcho" => cm::REGION_ECHO,
        "RegionFanout" => cm::REGION_FANOUT,
        "Publish" => cm::PUBLISH,
        _ => return None,
    })
}

fn request(method: &str, a: &Args) -> Option<Vec<u8>> {
    use prost::Message;
    if let Some(raw) = a.get("raw") {
        return unhex(raw);
    }
    let payload = unhex(a.get("payload").unwrap_or(""))?;
    Some(match method {
        "Add" => pb::AddRequest { increment: a.num("increment") }.encode_to_vec(),
        "Publish" => pb::PublishRequest { method: a.or("pmethod", ""), topic: a.all("ptopic"), count: a.num("count"), payload }.encode_to_vec(),
        _ => pb::EchoRequest {
            payload,
            delay_ms: a.num("delay_ms"),
            fail_code: a.or("fail_code", ""),
            fail_message: a.or("fail_message", ""),
            tag: a.or("tag", ""),
        }
        .encode_to_vec(),
    })
}

fn response(method: &str, data: &[u8]) -> String {
    use prost::Message;
    match method {
        "Add" => pb::AddResult::decode(data).map(|r| format!("{{\"value\":{}}}", r.value)),
        "Publish" => pb::PublishResult::decode(data).map(|r| format!("{{\"published\":{}}}", r.published)),
        _ => pb::EchoResponse::decode(data).map(|r| {
            let md: Vec<String> = r.metadata.iter().map(|(k, v)| format!("{}:{}", json_str(k), json_str(v))).collect();
            format!(
                "{{\"server_id\":{},\"payload\":\"{}\",\"tag\":{},\"topic\":{},\"metadata\":{{{}}}}}",
                json_str(&r.server_id),
                hex(&r.payload),
                json_str(&r.tag),
                json_str(&r.topic),
                md.join(",")
            )
        }),
    }
    .unwrap_or_else(|_| "{\"undecodable\":true}".to_string())
}

fn options(a: &Args) -> CallOptions {
    let mut o = CallOptions::new();
    let t: u64 = a.num("timeout_ms");
    if t > 0 {
        o = o.timeout(Duration::from_millis(t));
    }
    if let Some(topic) = a.get("topic") {
        o = o.topic(topic);
    }
    for kv in a.all("md") {
        let (k, v) = kv.split_once(':').unwrap_or((&kv, ""));
        o = o.metadata(unquote(k), unquote(v));
    }
    if a.0.iter().any(|(k, _)| k.starts_with("sel_")) {
        let ms = |k: &str| Some(Duration::from_millis(a.num::<u64>(k))).filter(|d| !d.is_zero());
        let mut s = SelectionOptions {
            minimum_affinity: Some(a.num::<f32>("sel_min")).filter(|v| *v != 0.0),
            maximum_affinity: Some(a.num::<f32>("sel_max")).filter(|v| *v != 0.0),
            accept_first_available: a.get("sel_afa") == Some("1"),
            affinity_timeout: ms("sel_timeout_ms"),
            short_circuit_timeout: ms("sel_short_ms"),
            select: None,
        };
        if let Some(pick) = a.get("sel_pick") {
            let lowest = pick == "lowest";
            s.select = Some(Arc::new(move |claims: Vec<psrpc::Claim>| {
                Box::pin(async move {
                    let best = if lowest {
                        claims.iter().min_by(|a, b| a.affinity.total_cmp(&b.affinity))
                    } else {
                        claims.iter().max_by(|a, b| a.affinity.total_cmp(&b.affinity))
                    };
                    best.map(|c| c.server_id.clone()).ok_or_else(|| Error::new(Code::Unavailable, "no servers available"))
                })
            }));
        }
        o = o.selection(s);
    }
    o
}

enum ChatCmd {
    Send(String, pb::ChatMessage),
    Close(Option<Error>),
}

#[derive(Default)]
struct State {
    calls: HashMap<String, CancelHandle>,
    subs: HashMap<String, oneshot::Sender<()>>,
    chats: HashMap<String, mpsc::UnboundedSender<ChatCmd>>,
}

type Shared = Arc<Mutex<State>>;

fn call(st: &Shared, client: &Client, id: String, a: Args, multi: bool) {
    let name = a.or("method", "");
    let kind = if multi { "done" } else { "result" };
    let Some(m) = method(&name) else { return local_error(&id, kind, Code::InvalidArgument, "unknown method") };
    let Some(data) = request(&name, &a) else { return local_error(&id, kind, Code::InvalidArgument, "bad payload") };
    let opts = options(&a);
    let st2 = st.clone();
    if multi {
        let mut mc = client.call_multi::<psrpc::RawMessage, psrpc::RawMessage>(&m, &psrpc::RawMessage(data), &opts);
        st.lock().unwrap().calls.insert(id.clone(), mc.cancel_handle());
        tokio::spawn(async move {
            while let Some(r) = mc.next().await {
                emit(&match r {
                    Ok(reply) => format!(
                        "{{\"id\":{},\"kind\":\"multi-result\",\"ok\":true,\"resp\":{},\"server_id\":{}}}",
                        json_str(&id),
                        response(&name, &reply.message.0),
                        json_str(&reply.server_id)
                    ),
                    Err(e) => {
                        let sid = e.server_id.as_deref().map(|s| format!(",\"server_id\":{}", json_str(s))).unwrap_or_default();
                        out_error(&id, "multi-result", &sid, &e)
                    }
                });
            }
            st2.lock().unwrap().calls.remove(&id);
            emit(&match mc.cause() {
                None => format!("{{\"id\":{},\"kind\":\"done\",\"ok\":true}}", json_str(&id)),
                Some(e) => out_error(&id, "done", "", e),
            });
        });
    } else {
        let fut = client.call_raw(&m, &data, &opts);
        st.lock().unwrap().calls.insert(id.clone(), fut.cancel_handle());
        tokio::spawn(async move {
            let r = fut.await;
            st2.lock().unwrap().calls.remove(&id);
            emit(&match r {
                Ok(reply) => format!(
                    "{{\"id\":{},\"kind\":\"result\",\"ok\":true,\"resp\":{},\"server_id\":{}}}",
                    json_str(&id),
                    response(&name, &reply.message),
                    json_str(&reply.server_id)
                ),
                Err(e) => {
                    let sid = e.server_id.as_deref().map(|s| format!(",\"server_id\":{}", json_str(s))).unwrap_or_default();
                    out_error(&id, "result", &sid, &e)
                }
            });
        });
    }
}

fn sub(st: &Shared, updates: &Client, id: String, a: Args) {
    let name = a.or("method", "");
    let m = match name.as_str() {
        "Updates" => um::UPDATES,
        "Work" => um::WORK,
        "RegionUpdates" => um::REGION_UPDATES,
        _ => return local_error(&id, "ready-error", Code::InvalidArgument, "unknown method"),
    };
    let topics: Vec<String> = a.get("topic").map(|t| vec![t.to_string()]).unwrap_or_default();
    let (tx, rx) = oneshot::channel();
    st.lock().unwrap().subs.insert(id.clone(), tx);
    let (updates, st) = (updates.clone(), st.clone());
    tokio::spawn(async move {
        let mut s = match updates.subscribe::<pb::Update, _>(&m, &topics).await {
            Ok(s) => s,
            Err(e) => {
                st.lock().unwrap().subs.remove(&id);
                return emit(&out_error(&id, "ready-error", "", &e));
            }
        };
        emit(&format!("{{\"id\":{},\"kind\":\"ready\"}}", json_str(&id)));
        let mut rx = rx;
        let mut closing = false;
        loop {
            tokio::select! {
                u = s.next() => match u {
                    Some(Ok(u)) => emit(&format!(
                        "{{\"id\":{},\"kind\":\"update\",\"seq\":{},\"payload\":\"{}\",\"server_id\":{},\"nonce\":{}}}",
                        json_str(&id), u.seq, hex(&u.payload), json_str(&u.server_id), json_str(&u.nonce)
                    )),
                    Some(Err(_)) => {}
                    None => break,
                },
                _ = &mut rx, if !closing => {
                    closing = true;
                    let _ = s.close().await;
                }
            }
        }
        st.lock().unwrap().subs.remove(&id);
        emit(&format!("{{\"id\":{},\"kind\":\"unsubscribed\"}}", json_str(&id)));
    });
}

fn chat(st: &Shared, client: &Client, id: String, a: Args) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    st.lock().unwrap().chats.insert(id.clone(), tx);
    let (client, st) = (client.clone(), st.clone());
    let opts = options(&a);
    tokio::spawn(async move {
        let s = match client.open_stream::<pb::ChatMessage, pb::ChatMessage>(&cm::CHAT, &opts).await {
            Ok(s) => s,
            Err(e) => {
                emit(&out_error(&id, "open", "", &e));
                if !e.is_local() {
                    emit(&out_error(&id, "closed", "", &e));
                }
                st.lock().unwrap().chats.remove(&id);
                rx.close();
                while let Some(c) = rx.recv().await {
                    if let ChatCmd::Send(send_id, _) = c {
                        emit(&out_error(&id, "sent", &format!(",\"send_id\":{}", json_str(&send_id)), &e));
                    }
                }
                return;
            }
        };
        emit(&format!("{{\"id\":{},\"kind\":\"open\",\"ok\":true}}", json_str(&id)));
        let (tx, mut msgs) = s.split();
        let mut cmds_open = true;
        loop {
            tokio::select! {
                m = msgs.next() => match m {
                    Some(Ok(m)) => emit(&format!(
                        "{{\"id\":{},\"kind\":\"message\",\"seq\":{},\"payload\":\"{}\",\"close_code\":{},\"close_message\":{}}}",
                        json_str(&id), m.seq, hex(&m.payload), json_str(&m.close_code), json_str(&m.close_message)
                    )),
                    Some(Err(_)) => {}
                    None => break,
                },
                c = rx.recv(), if cmds_open => match c {
                    Some(ChatCmd::Send(send_id, m)) => {
                        let f = tx.send(&m);
                        let id = id.clone();
                        tokio::spawn(async move {
                            let extra = format!(",\"send_id\":{}", json_str(&send_id));
                            emit(&match f.await {
                                Ok(()) => format!("{{\"id\":{},\"kind\":\"sent\"{extra},\"ok\":true}}", json_str(&id)),
                                Err(e) => out_error(&id, "sent", &extra, &e),
                            });
                        });
                    }
                    Some(ChatCmd::Close(e)) => tx.close(e.as_ref()),
                    None => cmds_open = false,
                },
            }
        }
        let cause = msgs.close_cause().unwrap_or_else(|| Error::new(Code::Canceled, "stream closed"));
        let obj = out_error(&id, "closed", "", &cause).replace(",\"local\":true", "");
        st.lock().unwrap().chats.remove(&id);
        emit(&obj);
        // Sends still queued fail with the close cause.
        rx.close();
        while let Some(c) = rx.recv().await {
            if let ChatCmd::Send(send_id, _) = c {
                emit(&out_error(&id, "sent", &format!(",\"send_id\":{}", json_str(&send_id)), &cause));
            }
        }
    });
}

async fn run(flags: Flags) -> psrpc::Result<()> {
    let url = flags.get("--bus").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let num = |name: &str, d: u64| -> u64 { flags.get(name).and_then(|v| v.parse().ok()).unwrap_or(d) };
    let opts = BusOptions {
        max_message_size: Some(num("--max-message-size", 16 << 20) as usize).filter(|v| *v > 0),
        compress_threshold: Some(num("--compress-threshold", 0) as usize).filter(|v| *v > 0),
        ..Default::default()
    };
    let bus = Bus::open(&url, opts)?;
    bus.wait_ready(Duration::from_secs(10)).await?;
    let timeout = Some(Duration::from_millis(num("--timeout-ms", 0))).filter(|d| !d.is_zero());
    let client = Client::new(&bus, pb::CONFORMANCE_SERVICE, ClientOptions { client_id: flags.get("--client-id"), timeout, ..Default::default() })?;
    let updates = Client::new(&bus, pb::CONFORMANCE_UPDATES_SERVICE, ClientOptions { timeout, ..Default::default() })?;
    emit("ready");
    let st: Shared = Arc::default();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some((cmd, a)) = parse(&line) else { continue };
        let id = a.or("id", "");
        match cmd.as_str() {
            "quit" => break,
            "call" => call(&st, &client, id, a, false),
            "multi" => call(&st, &client, id, a, true),
            "cancel" => {
                if let Some(h) = st.lock().unwrap().calls.get(&id) {
                    h.cancel();
                }
            }
            "sub" => sub(&st, &updates, id, a),
            "unsub" => {
                if let Some(tx) = st.lock().unwrap().subs.remove(&id) {
                    let _ = tx.send(());
                }
            }
            "chat" => chat(&st, &client, id, a),
            "chat_send" => {
                let send_id = a.or("send_id", "");
                let m = pb::ChatMessage {
                    seq: a.num("seq"),
                    payload: unhex(a.get("payload").unwrap_or("")).unwrap_or_default(),
                    close_code: a.or("close_code", ""),
                    close_message: a.or("close_message", ""),
                };
                let chat = st.lock().unwrap().chats.get(&id).cloned();
                match chat {
                    Some(c) if c.send(ChatCmd::Send(send_id.clone(), m)).is_ok() => {}
                    _ => emit(&format!(
                        "{{\"id\":{},\"kind\":\"sent\",\"send_id\":{},\"ok\":false,\"error\":{{\"code\":\"not_found\",\"message\":\"no such stream\",\"details\":[]}},\"local\":true}}",
                        json_str(&id),
                        json_str(&send_id)
                    )),
                }
            }
            "chat_close" => {
                let e = a.get("code").filter(|c| !c.is_empty()).map(|c| Error::new(Code::from_wire(c), a.or("message", "")));
                if let Some(c) = st.lock().unwrap().chats.get(&id) {
                    let _ = c.send(ChatCmd::Close(e));
                }
            }
            other => local_error(&id, "bad-command", Code::InvalidArgument, other),
        }
    }
    client.close().await?;
    updates.close().await?;
    bus.close().await?;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags = Flags::from_env();
    if flags.has("--has-streams") {
        return ExitCode::SUCCESS;
    }
    if flags.has("--print-methods") {
        print_methods();
        return ExitCode::SUCCESS;
    }
    match run(flags).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("conformance-client: {e}");
            ExitCode::FAILURE
        }
    }
}
