//! W3C trace context in request metadata, exactly as livekit/psrpc's
//! otelpsrpc writes it: `traceparent` = `00-<32 hex trace id>-<16 hex span
//! id>-<2 hex flags>`, `tracestate` only when not empty.
//!
//! - A handler's [`Context::trace`](crate::Context::trace) is the trace
//!   context its request carried, and [`Context::call_options`](crate::Context::call_options)
//!   forwards it into nested calls as a child (same trace id, a new span
//!   id): a trace crosses every psrpc hop, whatever the language of each.
//! - [`CallOptions::trace`](crate::CallOptions::trace) sends a given context.
//! - With the `opentelemetry` feature, [`otel`] converts to and from
//!   OpenTelemetry contexts and [`otel::Propagation`] is a client interceptor
//!   injecting the caller's current OpenTelemetry span into every call.
use crate::error::{to_c, Error, Result};
use crate::server::Metadata;
use psrpc_sys as sys;
use std::ffi::{c_char, CStr};

/// The metadata key of the trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key of the vendor trace state.
pub const TRACESTATE: &str = "tracestate";

/// A W3C trace context: a valid `traceparent` and an optional `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Checks `traceparent` (W3C: version not `ff`, non-zero ids, lowercase
    /// hex of the right lengths); an empty `tracestate` is none.
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> Result<TraceContext> {
        child_of(traceparent)?;
        Ok(TraceContext { traceparent: traceparent.to_string(), tracestate: tracestate.filter(|s| !s.is_empty()).map(str::to_string) })
    }

    /// The trace context request metadata carries, if any (and valid).
    pub fn from_metadata(md: &Metadata) -> Option<TraceContext> {
        // As Go reads metadata (a map): the last entry of a key wins.
        let last = |key: &str| md.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        TraceContext::new(last(TRACEPARENT)?, last(TRACESTATE)).ok()
    }

    /// The `traceparent` header.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }
    /// The `tracestate` header, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }
    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }
    /// The 16 hex digits of the span id (the sender's span).
    pub fn span_id(&self) -> &str {
        &self.traceparent[36..52]
    }
    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        u8::from_str_radix(&self.traceparent[53..55], 16).is_ok_and(|f| f & 1 == 1)
    }

    /// A child: the same trace id, flags and state, a new random span id.
    pub fn child(&self) -> TraceContext {
        TraceContext { traceparent: child_of(&self.traceparent).expect("validated traceparent"), tracestate: self.tracestate.clone() }
    }

    /// The metadata entries (`traceparent`, and `tracestate` when present).
    pub fn to_metadata(&self) -> Vec<(String, String)> {
        let mut v = vec![(TRACEPARENT.to_string(), self.traceparent.clone())];
        if let Some(s) = &self.tracestate {
            v.push((TRACESTATE.to_string(), s.clone()));
        }
        v
    }
}

fn child_of(parent: &str) -> Result<String> {
    let p = to_c(parent, "traceparent")?;
    let mut out = [0 as c_char; sys::PSRPC_TRACEPARENT_SIZE];
    let st = unsafe { sys::psrpc_trace_child(out.as_mut_ptr(), p.as_ptr()) };
    if st != sys::PSRPC_OK {
        return Err(Error::invalid(format!("invalid traceparent {parent:?}")));
    }
    Ok(unsafe { CStr::from_ptr(out.as_ptr()) }.to_string_lossy().into_owned())
}

/// OpenTelemetry integration (feature `opentelemetry`).
#[cfg(feature = "opentelemetry")]
pub mod otel {
    use super::{TraceContext, TRACEPARENT, TRACESTATE};
    use crate::hooks::{CallInfo, ClientInterceptor, HookMetadata};
    use crate::Result;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    impl TraceContext {
        /// The span context of an OpenTelemetry context, if it has a valid one.
        pub fn from_otel(cx: &opentelemetry::Context) -> Option<TraceContext> {
            let span = cx.span();
            let sc = span.span_context();
            if !sc.is_valid() {
                return None;
            }
            let tp = format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8());
            TraceContext::new(&tp, Some(&sc.trace_state().header())).ok()
        }

        /// The trace context of the current OpenTelemetry context.
        pub fn current() -> Option<TraceContext> {
            TraceContext::from_otel(&opentelemetry::Context::current())
        }

        /// An OpenTelemetry context whose remote parent is this trace
        /// context: start a handler's spans under it
        /// (`tracer.start_with_context(name, &ctx.trace.unwrap().to_otel())`).
        pub fn to_otel(&self) -> opentelemetry::Context {
            let trace_id = TraceId::from_hex(self.trace_id()).unwrap_or(TraceId::INVALID);
            let span_id = SpanId::from_hex(self.span_id()).unwrap_or(SpanId::INVALID);
            let flags = TraceFlags::new(u8::from_str_radix(&self.traceparent[53..55], 16).unwrap_or(0));
            let state = self.tracestate().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
            opentelemetry::Context::new().with_remote_span_context(SpanContext::new(trace_id, span_id, flags, true, state))
        }
    }

    /// A client interceptor that sends the caller's current OpenTelemetry
    /// span context with every call (as otelpsrpc's client interceptor
    /// injects it), unless the call already carries a `traceparent`.
    /// `Client::new(&bus, "Svc", ClientOptions { interceptors: vec![Arc::new(Propagation)], .. })`.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Propagation;

    impl ClientInterceptor for Propagation {
        fn before_send(&self, _info: &CallInfo, md: &mut HookMetadata<'_>) -> Result<()> {
            if md.get(TRACEPARENT).is_some() {
                return Ok(());
            }
            if let Some(t) = TraceContext::current() {
                md.set(TRACEPARENT, t.traceparent())?;
                if let Some(s) = t.tracestate() {
                    md.set(TRACESTATE, s)?;
                }
            }
            Ok(())
        }
    }
}
