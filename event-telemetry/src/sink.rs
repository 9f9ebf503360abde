//! The telemetry mirror: every bus event as one structured `tracing` event,
//! plus the bus-level counters.
//!
//! # Model
//!
//! [`TelemetrySink`] is an ordinary [`EventSink`] the host registers on its
//! `SinkRunner`. It runs in its own task with its own subscription, so logging
//! never slows publishing; if it falls behind, the runner reports the gap
//! through [`EventSink::on_lag`] and the sink counts it.
//!
//! Each event becomes one `tracing` event with target [`EVENTS_TARGET`]
//! (`matric::events`) and flat, dotted fields a log pipeline can query:
//!
//! | type | level | fields (besides `event.type`, `event.seq`, `event.id`, `event.correlation_id`) |
//! |---|---|---|
//! | `QueueStatus` | DEBUG | `event.queue_pending`, `event.queue_running`, `event.queue_total`, `event.queue_depth` (= pending) |
//! | `JobQueued`, `JobStarted` | INFO | `event.job_id`, `event.job_type`, `event.note_id` |
//! | `JobProgress` | DEBUG | `event.job_id`, `event.note_id`, `event.progress` |
//! | `JobCompleted` | INFO | `event.job_id`, `event.job_type`, `event.note_id`, `event.duration_ms` |
//! | `JobFailed` | WARN | `event.job_id`, `event.job_type`, `event.note_id`, `event.error` |
//! | `NoteUpdated` | INFO | `event.note_id`, `event.operation`, `event.tag_count`, `event.has_ai_content`, `event.has_links` |
//!
//! Optional fields are left out when absent. Personal and secret data never
//! reach the log: no note titles, no tags (only their count), no progress
//! messages (free text), no user ids or names, no memory or tenant names, no
//! tokens or URLs. A `JobFailed` error that does not look like a short failure
//! code (the protocol's rule) is logged as `redacted`.
//!
//! Metrics: `matric_events_published_total{event_type}` (counted per batch,
//! one `add` per type present), and for lag both
//! `matric_bus_lagged_events_total{consumer="telemetry"}` and
//! `matric_events_dropped_total{consumer="telemetry"}`. Events the sink missed
//! by lagging are not in `matric_events_published_total` (their types are
//! unknown); the lag counter says how many.

use std::sync::Arc;

use event_core::metrics::{self as names, dropped_counter};
use event_core::{Event, EventKind, EventSink, ServerEvent, SinkError, async_trait};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, Counter, Meter};
use tracing::Level;

/// The `tracing` target of the event mirror.
pub const EVENTS_TARGET: &str = "matric::events";

/// The consumer label this sink uses for lag and drops.
pub const CONSUMER: &str = "telemetry";

/// Longest `JobFailed.error` logged verbatim.
const MAX_ERROR_CODE_LEN: usize = 64;

/// Mirrors every bus event into `tracing` and counts published events.
///
/// Build it after installing the meter provider (see
/// [`PrometheusMetrics::install`](crate::PrometheusMetrics::install)), then
/// register it on the host's `SinkRunner`.
#[derive(Debug, Clone)]
pub struct TelemetrySink {
    /// Bound to each event type (index: `EventKind::index`), so a batch's
    /// counts skip the attribute lookup.
    published: Arc<[BoundCounter<u64>; 7]>,
    lagged: Counter<u64>,
    dropped: Counter<u64>,
    consumer_attr: [KeyValue; 1],
}

impl Default for TelemetrySink {
    fn default() -> Self {
        TelemetrySink::new()
    }
}

impl TelemetrySink {
    /// A sink whose instruments come from the global meter provider.
    pub fn new() -> Self {
        TelemetrySink::with_meter(&names::meter())
    }

    /// A sink whose instruments come from `meter` (tests, or hosts that do
    /// not install a global provider).
    pub fn with_meter(meter: &Meter) -> Self {
        let published = meter
            .u64_counter(names::EVENTS_PUBLISHED)
            .with_description("Events published on the bus, by event type")
            .build();
        let published = Arc::new(
            EventKind::ALL
                .map(|kind| published.bind(&[KeyValue::new("event_type", kind.type_name())])),
        );
        // Zero-valued series for every type, so dashboards and alerts see
        // `0` rather than a missing series before the first event.
        for counter in published.iter() {
            counter.add(0);
        }
        let lagged = meter
            .u64_counter(names::BUS_LAGGED)
            .with_description("Events a bus subscriber missed because it lagged")
            .build();
        let consumer_attr = [KeyValue::new("consumer", CONSUMER)];
        lagged.add(0, &consumer_attr);
        let dropped = dropped_counter(meter);
        dropped.add(0, &consumer_attr);
        TelemetrySink {
            published,
            lagged,
            dropped,
            consumer_attr,
        }
    }

    /// Wraps the sink for `SinkRunner::register`.
    pub fn into_sink(self) -> Arc<dyn EventSink> {
        Arc::new(self)
    }

    fn count(&self, counts: &[u64; 7]) {
        for (n, counter) in counts.iter().zip(self.published.iter()) {
            if *n > 0 {
                counter.add(*n);
            }
        }
    }
}

#[async_trait]
impl EventSink for TelemetrySink {
    fn name(&self) -> &str {
        CONSUMER
    }

    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        log_event(&event);
        let mut counts = [0u64; 7];
        counts[event.kind().index()] += 1;
        self.count(&counts);
        Ok(())
    }

    async fn deliver_batch(&self, events: Vec<Arc<Event>>) -> Result<(), SinkError> {
        // One counter update per type present instead of one per event: the
        // counter's attribute lookup is the expensive part.
        let mut counts = [0u64; 7];
        for event in &events {
            log_event(event);
            counts[event.kind().index()] += 1;
        }
        self.count(&counts);
        Ok(())
    }

    async fn on_lag(&self, missed: u64) {
        self.lagged.add(missed, &self.consumer_attr);
        self.dropped.add(missed, &self.consumer_attr);
    }
}

/// A `JobFailed.error` as it may be logged: the code itself when it looks
/// like one (short, `[A-Za-z0-9_.:-]`), otherwise `redacted` (raw backend
/// text can carry paths, hosts or user content).
pub fn loggable_error_code(error: &str) -> &str {
    let code_like = !error.is_empty()
        && error.len() <= MAX_ERROR_CODE_LEN
        && error
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if code_like { error } else { "redacted" }
}

// Each arm is its own callsite (tracing needs field names at compile time);
// the macro keeps the fields every event shares in one place.
macro_rules! mirror {
    ($level:expr, $event:expr, $message:literal $(, $($fields:tt)+)?) => {
        tracing::event!(
            target: EVENTS_TARGET,
            $level,
            {
                "event.type" = $event.kind().type_name(),
                "event.seq" = $event.seq(),
                "event.id" = display($event.id()),
                "event.correlation_id" = $event.meta().correlation_id.map(display),
                $($($fields)+)?
            },
            $message
        )
    };
}

/// Emits the structured `tracing` event for one bus event (what
/// [`TelemetrySink`] does per event; public so other sinks can mirror
/// events they produce themselves).
pub fn log_event(event: &Event) {
    match event.payload() {
        ServerEvent::QueueStatus(q) => mirror!(
            Level::DEBUG,
            event,
            "Queue status",
            "event.queue_pending" = q.pending,
            "event.queue_running" = q.running,
            "event.queue_total" = q.total_jobs,
            "event.queue_depth" = q.pending
        ),
        ServerEvent::JobQueued(j) => mirror!(
            Level::INFO,
            event,
            "Job queued",
            "event.job_id" = display(j.job_id),
            "event.job_type" = j.job_type.as_str(),
            "event.note_id" = j.note_id.map(display)
        ),
        ServerEvent::JobStarted(j) => mirror!(
            Level::INFO,
            event,
            "Job started",
            "event.job_id" = display(j.job_id),
            "event.job_type" = j.job_type.as_str(),
            "event.note_id" = j.note_id.map(display)
        ),
        ServerEvent::JobProgress(j) => mirror!(
            Level::DEBUG,
            event,
            "Job progress",
            "event.job_id" = display(j.job_id),
            "event.note_id" = j.note_id.map(display),
            "event.progress" = j.progress
        ),
        ServerEvent::JobCompleted(j) => mirror!(
            Level::INFO,
            event,
            "Job completed successfully",
            "event.job_id" = display(j.job_id),
            "event.job_type" = j.job_type.as_str(),
            "event.note_id" = j.note_id.map(display),
            "event.duration_ms" = j.duration_ms
        ),
        ServerEvent::JobFailed(j) => mirror!(
            Level::WARN,
            event,
            "Job failed",
            "event.job_id" = display(j.job_id),
            "event.job_type" = j.job_type.as_str(),
            "event.note_id" = j.note_id.map(display),
            "event.error" = loggable_error_code(&j.error)
        ),
        ServerEvent::NoteUpdated(n) => mirror!(
            Level::INFO,
            event,
            "Note updated",
            "event.note_id" = display(n.note_id),
            "event.operation" = n.operation.map(operation_name),
            "event.tag_count" = n.tags.len(),
            "event.has_ai_content" = n.has_ai_content,
            "event.has_links" = n.has_links
        ),
    }
}

fn operation_name(op: event_core::NoteOperation) -> &'static str {
    match op {
        event_core::NoteOperation::Created => "created",
        event_core::NoteOperation::Updated => "updated",
        event_core::NoteOperation::Deleted => "deleted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_pass_and_free_text_is_redacted() {
        assert_eq!(loggable_error_code("timed_out"), "timed_out");
        assert_eq!(loggable_error_code("llm.rate_limited"), "llm.rate_limited");
        assert_eq!(
            loggable_error_code("connect to https://user:pw@host/ failed"),
            "redacted"
        );
        assert_eq!(loggable_error_code(""), "redacted");
        assert_eq!(loggable_error_code(&"x".repeat(65)), "redacted");
    }
}
