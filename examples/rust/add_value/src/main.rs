//! add_value: the Counter.AddValue service of examples/add_value.proto in
//! Rust, talking to the C example (examples/add_value.c), the Python one
//! (examples/python/add_value.py) and Go services generated from the same
//! .proto, over the same Redis or NATS.
//!
//!     add_value [--bus URL]            a server and a client in one process
//!                                      (default local://): three calls, each
//!                                      value printed, then a graceful close
//!     add_value [--bus URL] serve      serve until SIGINT/SIGTERM; prints
//!                                      "ready" once the registration is confirmed
//!     add_value [--bus URL] call N     one call AddValue(increment=N); prints
//!                                      the counter's new value
use psrpc::{Bus, BusOptions, CallOptions, ClientOptions, Context, Request, ServerOptions};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

mod example {
    psrpc::include_proto!("example");
}
use example::{AddRequest, AddResult, Counter, CounterClient, CounterServer};

/// AddValue adds the increment to one counter.
#[derive(Default)]
struct TheCounter {
    total: AtomicI32,
}

impl Counter for TheCounter {
    async fn add_value(&self, request: Request<AddRequest>, _ctx: Context) -> psrpc::Result<AddResult> {
        let inc = request.message.increment;
        let value = self.total.fetch_add(inc, Ordering::SeqCst).wrapping_add(inc);
        Ok(AddResult { value })
    }
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: add_value [--bus URL]             server + client in one process\n       \
         add_value [--bus URL] serve       serve until SIGINT/SIGTERM\n       \
         add_value [--bus URL] call N      one call with increment N\n\
         URL: local:// (default), redis://HOST:PORT, nats://HOST:PORT"
    );
    ExitCode::from(2)
}

async fn serve(bus: &Bus) -> psrpc::Result<CounterServer<TheCounter>> {
    let server = CounterServer::new(bus, TheCounter::default(), ServerOptions::default())?;
    server.register_all().await?;
    Ok(server)
}

async fn run(args: Vec<String>) -> Result<ExitCode, psrpc::Error> {
    let mut args = args.as_slice();
    let mut url = "local://".to_string();
    if args.first().map(String::as_str) == Some("--bus") {
        let Some(u) = args.get(1) else { return Ok(usage()) };
        url = u.clone();
        args = &args[2..];
    }
    let bus = Bus::open(&url, BusOptions::default())?;
    match args {
        [] => {
            let server = serve(&bus).await?;
            let client = CounterClient::new(&bus, ClientOptions::default())?;
            for inc in [1, 2, 3] {
                let r = client.add_value(AddRequest { increment: inc }, CallOptions::new()).await?;
                println!("AddValue(increment={inc}) -> value={}", r.value);
            }
            client.client().close().await?;
            server.server().close(false).await?;
        }
        [cmd] if cmd == "serve" => {
            let server = serve(&bus).await?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
            println!("ready");
            tokio::select! {
                _ = int.recv() => eprintln!("add_value: SIGINT, stopping"),
                _ = term.recv() => eprintln!("add_value: SIGTERM, stopping"),
            }
            server.server().close(false).await?;
        }
        [cmd, n] if cmd == "call" => {
            let Ok(inc) = n.parse::<i32>() else {
                eprintln!("add_value: '{n}' is not an int32");
                return Ok(ExitCode::from(2));
            };
            let client = CounterClient::new(&bus, ClientOptions::default())?;
            let r = client.add_value(AddRequest { increment: inc }, CallOptions::new()).await?;
            println!("{}", r.value);
        }
        _ => return Ok(usage()),
    }
    bus.close().await?;
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: add_value [--bus URL] [serve | call N]");
        return ExitCode::SUCCESS;
    }
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("add_value: {e}");
            ExitCode::FAILURE
        }
    }
}
