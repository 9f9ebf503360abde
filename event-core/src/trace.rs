//! W3C trace context on events: one trace from a producer's request to every
//! delivery it causes.
//!
//! # Model
//!
//! An event may carry a [`TraceContext`] (the W3C `traceparent` and
//! `tracestate` of whatever published it) in its [`EventMeta`](crate::EventMeta).
//! The publish API takes it from the request's headers; the envelope format
//! exposes it (`trace_id`, `traceparent`, `tracestate`), so it crosses the
//! NATS hop and the event log with the event; webhook deliveries send it as
//! their own `traceparent` header.
//!
//! Turning contexts into spans is the telemetry implementation's job, not
//! core's (as in `tracing`, core only defines the seam): a host with trace
//! export installs a [`Propagation`] with [`install`]. Transports call
//! [`link`] to make a span a child of an event's context and [`current`] to
//! read the context of the span they are in; without an installed
//! propagation both do nothing and an event's context is passed on as it
//! came.

use std::sync::OnceLock;

/// The longest `tracestate` kept (W3C: at most 32 members of at most 256
/// bytes; 512 bytes is what implementations must propagate).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// The target of spans that last as long as a client's connection (the
/// WebSocket's `ws_connection`). They are for traces: a log layer should not
/// keep them (event-telemetry's does not), because a subscriber keeps each
/// enabled span's fields for its whole life, which at one span per idle
/// connection is memory every client pays for. The lines a connection logs
/// name the connection themselves where it matters.
pub const CONNECTION_SPAN_TARGET: &str = "matric::connection";

/// A W3C trace context: a valid `traceparent` and an optional `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceContext {
    /// Parses the two headers. An invalid `traceparent` gives `None` (W3C:
    /// the receiver then starts a new trace rather than failing the
    /// request); a `tracestate` over [`MAX_TRACESTATE_BYTES`] or not
    /// visible ASCII is dropped.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let traceparent = traceparent.trim();
        if !valid_traceparent(traceparent) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_TRACESTATE_BYTES
                    && s.bytes().all(|b| (0x20..0x7f).contains(&b))
            })
            .map(str::to_owned);
        Some(TraceContext {
            traceparent: traceparent.to_ascii_lowercase(),
            tracestate,
        })
    }

    /// The `traceparent` header value (`00-<trace id>-<parent id>-<flags>`).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` header value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32 hex digits of the trace id.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16 hex digits of the parent span id.
    pub fn parent_id(&self) -> &str {
        &self.traceparent[36..52]
    }
}

/// `version "-" trace-id "-" parent-id "-" trace-flags`, lowercase hex
/// accepted in either case; version `ff` and all-zero ids are invalid. A
/// future version may append fields after a `-`.
fn valid_traceparent(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| {
        b.get(r)
            .is_some_and(|p| p.iter().all(u8::is_ascii_hexdigit))
    };
    let zero = |r: std::ops::Range<usize>| b[r].iter().all(|&c| c == b'0');
    if b.len() < 55 || !hex(0..2) || !hex(3..35) || !hex(36..52) || !hex(53..55) {
        return false;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return false;
    }
    let version = &s[0..2];
    if version.eq_ignore_ascii_case("ff") || (version == "00" && b.len() != 55) {
        return false;
    }
    if b.len() > 55 && b[55] != b'-' {
        return false;
    }
    !zero(3..35) && !zero(36..52)
}

/// What a telemetry implementation provides to turn contexts into spans.
pub trait Propagation: Send + Sync + 'static {
    /// Makes `span` a child of `context`.
    fn link(&self, span: &tracing::Span, context: &TraceContext);
    /// The context of `span` (for a `traceparent` to send on), if it is
    /// part of a trace.
    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext>;
}

static PROPAGATION: OnceLock<Box<dyn Propagation>> = OnceLock::new();

/// Installs the process's propagation (the host's telemetry, once).
/// Returns `false` when one was installed already.
pub fn install(propagation: Box<dyn Propagation>) -> bool {
    PROPAGATION.set(propagation).is_ok()
}

/// Whether a propagation is installed (trace export is on): spans made
/// only for traces can be skipped otherwise.
pub fn enabled() -> bool {
    PROPAGATION.get().is_some()
}

/// Makes `span` a child of `context`, when a propagation is installed.
pub fn link(span: &tracing::Span, context: &TraceContext) {
    if let Some(p) = PROPAGATION.get() {
        p.link(span, context);
    }
}

/// The context to send on from inside `span`: the span's own when a
/// propagation is installed and the span is traced, else `fallback` (the
/// event's context, passed on unchanged).
pub fn outgoing(span: &tracing::Span, fallback: Option<&TraceContext>) -> Option<TraceContext> {
    PROPAGATION
        .get()
        .and_then(|p| p.context_of(span))
        .or_else(|| fallback.cloned())
}

/// The context of the current span, when a propagation is installed and the
/// current span is traced (for in-process publishers).
pub fn current() -> Option<TraceContext> {
    PROPAGATION
        .get()
        .and_then(|p| p.context_of(&tracing::Span::current()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_kept_with_its_parts() {
        let c = TraceContext::parse(VALID, Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_id(), "00f067aa0ba902b7");
        assert_eq!(c.tracestate(), Some("rojo=00f067aa0ba902b7"));
        let upper = TraceContext::parse(&VALID.to_ascii_uppercase(), None).unwrap();
        assert_eq!(upper.traceparent(), VALID);
        // A future version may add fields.
        assert!(TraceContext::parse(&format!("cc{}-what-ever", &VALID[2..]), None).is_some());
    }

    #[test]
    fn invalid_traceparents_start_a_new_trace() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(TraceContext::parse(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_unusable_tracestate_is_dropped() {
        let long = "a=".to_owned() + &"b".repeat(MAX_TRACESTATE_BYTES);
        assert_eq!(
            TraceContext::parse(VALID, Some(&long))
                .unwrap()
                .tracestate(),
            None
        );
        assert_eq!(
            TraceContext::parse(VALID, Some("a=\u{e9}"))
                .unwrap()
                .tracestate(),
            None
        );
        assert_eq!(
            TraceContext::parse(VALID, Some("  ")).unwrap().tracestate(),
            None
        );
    }
}
