//! Async, typed protobuf RPC over Redis, NATS or an in-process bus, wire
//! compatible with Go [livekit/psrpc] v0.8.2: the safe Rust binding of
//! libpsrpc.
//!
//! - A [`Bus`] is one connection (`local://`, `redis://…`, `nats://…`) with
//!   libpsrpc's loop thread; [`Client`]s and [`Server`]s are made on it.
//! - Calls are futures: [`Client::call`] resolves to the response or an
//!   [`Error`] (code, message, details, server id); dropping the future
//!   cancels the request. Multi calls ([`Client::call_multi`]) and
//!   subscriptions ([`Client::subscribe`]) are `futures::Stream`s;
//!   a bidirectional [`Stream`] is a `Sink` + `Stream` pair whose sends
//!   resolve on the peer's acknowledgement.
//! - Handlers are async functions `(Request<Req>, Context) -> Result<Resp,
//!   Error>` run on the runtime (tokio by default, any [`Spawn`] otherwise),
//!   never on the loop thread; a panicking handler answers `internal`.
//! - Handles are `Send + Sync`, cheap to clone; dropping the last clone
//!   closes; `close().await` closes gracefully.
//!
//! Typed clients and server traits are generated from `.proto` files by the
//! `psrpc-build` crate.
//!
//! ```no_run
//! # async fn demo() -> psrpc::Result<()> {
//! use psrpc::{Bus, BusOptions, CallOptions, Client, ClientOptions, Method, MethodFlags, RawMessage, Routing, Server, ServerOptions};
//! let bus = Bus::open("local://demo", BusOptions::default())?;
//! let echo = Method::new("Echo", None, Routing::Queue, MethodFlags::NONE)?;
//! let server = Server::new(&bus, "Demo", ServerOptions::default())?;
//! server.register(&echo, &[] as &[&str], |req: psrpc::Request<RawMessage>, _ctx| async move { Ok(req.message) }).await?;
//! let client = Client::new(&bus, "Demo", ClientOptions::default())?;
//! let reply: RawMessage = client.call(&echo, &RawMessage(b"hi".to_vec()), &CallOptions::new()).await?;
//! assert_eq!(reply.0, b"hi");
//! # Ok(()) }
//! ```
//!
//! [livekit/psrpc]: https://github.com/livekit/psrpc
#![warn(missing_docs)]

mod bus;
mod client;
mod core;
mod error;
pub mod hooks;
pub mod logging;
mod server;
mod stream;
pub mod trace;

pub use crate::bus::{Bus, BusOptions, BusStats};
pub use crate::client::{Call, CallOptions, CancelHandle, Claim, Client, ClientOptions, MultiCall, MultiItem, Reply, SelectFn, SelectionOptions, Subscription};
pub use crate::core::{BoxFuture, Codec, Method, MethodFlags, MethodInfo, Payload, RawMessage, Routing, Spawn};
pub use crate::error::{Code, Error, Result};
pub use crate::server::{Context, HandlerFuture, Metadata, Request, Server, ServerOptions};
pub use crate::hooks::{CallInfo, CallKind, ClientInterceptor, HookMetadata, Outcome, RetryOptions, RetryParams, Role, ServerInterceptor};
pub use crate::stream::{SendFuture, Stream, StreamReceiver, StreamSender};
pub use crate::trace::TraceContext;
pub use psrpc_sys as sys;

/// Re-exported for generated code.
#[doc(hidden)]
pub use prost;

/// Includes the code `psrpc-build` generated for a proto package
/// (`psrpc::include_proto!("example");` for `package example;`).
#[macro_export]
macro_rules! include_proto {
    ($package:tt) => {
        include!(concat!(env!("OUT_DIR"), concat!("/", $package, ".rs")));
    };
}
