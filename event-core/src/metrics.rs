//! Metric names and the instruments every transport records into.
//!
//! # Model
//!
//! Transports record through the `opentelemetry` *API* only; the SDK, the
//! Prometheus exporter and the `/metrics` route belong to `event-telemetry`
//! (like `tracing`'s split between macros and subscribers). Until the host
//! installs a meter provider the instruments are no-ops, so a transport works
//! unchanged in a host without telemetry.
//!
//! Instruments are created from [`opentelemetry::global::meter`] when a
//! [`TransportMetrics`] is built, so the host installs its meter provider
//! *before* it builds its transports.
//!
//! The names below are the instrument names; the Prometheus exporter appends
//! `_total` to counters, which yields exactly the names of docs/protocol.md §6
//! (`matric_ws_events_sent_total{event_type}` and so on). Label values are
//! bounded sets (event type names, transports, statuses), never ids.

use std::sync::Arc;
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, Meter, ObservableGauge, UpDownCounter,
};

use crate::payload::EventKind;
use crate::registry::Transport;

/// The instrumentation scope every matric instrument is created under.
pub const METER_NAME: &str = "matric-events";

/// Gauge: open WebSocket connections.
pub const WS_CONNECTIONS_ACTIVE: &str = "matric_ws_connections_active";
/// Gauge: open SSE connections.
pub const SSE_CONNECTIONS_ACTIVE: &str = "matric_sse_connections_active";
/// Gauge: open MCP sessions.
pub const MCP_CONNECTIONS_ACTIVE: &str = "matric_mcp_connections_active";
/// Counter `{event_type}`: events written to WebSocket clients.
pub const WS_EVENTS_SENT: &str = "matric_ws_events_sent";
/// Counter `{event_type}`: events written to SSE clients.
pub const SSE_EVENTS_SENT: &str = "matric_sse_events_sent";
/// Counter `{event_type}`: events an MCP session was sent or told about
/// (tool results, resource updates, progress notifications).
pub const MCP_EVENTS_SENT: &str = "matric_mcp_events_sent";
/// Counter `{event_type}`: events published on the bus.
pub const EVENTS_PUBLISHED: &str = "matric_events_published";
/// Counter `{consumer}`: events a consumer (a transport's client, a sink) lost.
pub const EVENTS_DROPPED: &str = "matric_events_dropped";
/// Counter `{consumer}`: events a rate-limited client (`max_rate`,
/// `STREAM_MAX_RATE`) did not receive because of its own limit: replaced
/// by a later state while held, or over what its pacer may hold
/// ([`crate::pace`]). Its choice, not a fault, so apart from
/// [`EVENTS_DROPPED`] (and its alerts).
pub const EVENTS_PACED: &str = "matric_events_paced";
/// Gauge `{transport}`: the most connections (MCP: sessions) the transport
/// admits (`MAX_CONNECTIONS`, `MCP_MAX_SESSIONS`); not exported when
/// unlimited. `…_connections_active / matric_connections_limit` is how
/// full it is.
pub const CONNECTIONS_LIMIT: &str = "matric_connections_limit";
/// Counter `{transport, reason}`: connections closed, by reason.
pub const CONNECTIONS_CLOSED: &str = "matric_connections_closed";
/// Counter: events appended to the event log.
pub const LOG_APPENDED: &str = "matric_log_appended";
/// Counter: events not logged because the log's queue was full.
pub const LOG_DROPPED: &str = "matric_log_dropped";
/// Counter: failed appends to the event log (each is retried).
pub const LOG_APPEND_ERRORS: &str = "matric_log_append_errors";
/// Histogram: seconds per append (one batch, one transaction).
pub const LOG_APPEND_SECONDS: &str = "matric_log_append_seconds";
/// Histogram: seconds from an event's publication to its commit to the
/// event log, for the oldest event of each batch (what a durable publisher
/// waits at most, beside its own request).
pub const LOG_COMMIT_WAIT_SECONDS: &str = "matric_log_commit_wait_seconds";
/// Gauge: events queued for the event log and not yet committed.
pub const LOG_PENDING: &str = "matric_log_pending";
/// Gauge: sequence number of the oldest event in the log.
pub const LOG_FIRST_SEQ: &str = "matric_log_first_seq";
/// Gauge: sequence number of the newest committed event.
pub const LOG_LAST_SEQ: &str = "matric_log_last_seq";
/// Gauge: events the bus's replay ring holds.
pub const REPLAY_RING_EVENTS: &str = "matric_replay_ring_events";
/// Gauge: the summed weight of the events the replay ring holds (what
/// `EVENT_REPLAY_MAX_BYTES` bounds).
pub const REPLAY_RING_BYTES: &str = "matric_replay_ring_bytes";
/// Gauge: events stored in the log.
pub const LOG_EVENTS: &str = "matric_log_events";
/// Gauge: bytes of envelope JSON stored in the log.
pub const LOG_BYTES: &str = "matric_log_bytes";
/// Gauge `{consumer}`: logged events after a running named consumer's
/// committed offset.
pub const CONSUMER_LAG: &str = "matric_consumer_lag";
/// Counter `{consumer}`: events delivered again (ack wait expired, or the
/// member they went to left).
pub const CONSUMER_REDELIVERED: &str = "matric_consumer_redelivered";
/// Counter `{status}`: webhook delivery attempts (`success`, `retry`, `failed`).
pub const WEBHOOK_DELIVERIES: &str = "matric_webhook_deliveries";
/// Gauge: webhook deliveries waiting to be sent.
pub const WEBHOOK_QUEUE_DEPTH: &str = "matric_webhook_queue_depth";
/// Counter `{consumer}`: events a bus subscriber missed because it lagged.
pub const BUS_LAGGED: &str = "matric_bus_lagged_events";
/// Histogram `{transport}` in milliseconds: publish → written to a client
/// socket (WS, SSE) or → the receiver's response (webhook).
///
/// For WS and SSE it has one sample per write to a client socket, for the
/// oldest event in it (not one per event: a burst written in one go is one
/// sample, and the oldest event is the one that waited longest). For
/// webhooks, one sample per successful delivery.
pub const EVENT_LATENCY_MS: &str = "matric_event_latency_ms";
/// Counter `{replay}`: SSE replays served (`served`) or refused (`expired`).
pub const SSE_REPLAYS: &str = "matric_sse_replays";

/// Histogram bucket boundaries for [`EVENT_LATENCY_MS`], in milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

/// The global meter all matric instruments come from.
pub fn meter() -> Meter {
    opentelemetry::global::meter(METER_NAME)
}

/// A gauge whose value `read` takes from `shared` whenever a reader
/// collects, while `shared` is alive (a weak handle: the gauge does not
/// keep it alive, and a dropped one reports nothing).
pub(crate) fn weak_gauge<T: Send + Sync + 'static>(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
    shared: &std::sync::Weak<T>,
    read: fn(&T) -> u64,
) -> ObservableGauge<u64> {
    let weak = shared.clone();
    meter
        .u64_observable_gauge(name)
        .with_description(description)
        .with_callback(move |observer| {
            if let Some(shared) = weak.upgrade() {
                observer.observe(read(&shared), &[]);
            }
        })
        .build()
}

/// The latency histogram, shared by every transport (label `transport`).
pub fn latency_histogram(meter: &Meter) -> Histogram<f64> {
    meter
        .f64_histogram(EVENT_LATENCY_MS)
        .with_description(
            "Publish to written-to-client latency in milliseconds \
             (WebSocket and SSE: one sample per socket write, for its oldest event)",
        )
        .with_boundaries(LATENCY_BUCKETS_MS.to_vec())
        .build()
}

/// The `{consumer}` dropped-events counter.
pub fn dropped_counter(meter: &Meter) -> Counter<u64> {
    meter
        .u64_counter(EVENTS_DROPPED)
        .with_description("Events a consumer lost (lag, overflow, slow client)")
        .build()
}

/// Milliseconds since `published_at`, as the latency histogram records them.
pub fn elapsed_ms(published_at: Instant) -> f64 {
    published_at.elapsed().as_secs_f64() * 1000.0
}

/// What one write to a client carried, for [`TransportMetrics::record_write`]:
/// events per kind and the publish time of the oldest.
///
/// Filled per event while a batch is framed (plain arithmetic, no clock read,
/// no attribute hashing); the instruments are then touched once per batch.
#[derive(Debug, Clone, Default)]
pub struct WrittenBatch {
    per_kind: [u64; EventKind::ALL.len()],
    oldest: Option<Instant>,
}

impl WrittenBatch {
    /// An empty batch.
    pub fn new() -> Self {
        WrittenBatch::default()
    }

    /// A matric event of `kind`, published at `published_at`, is in the batch.
    pub fn event(&mut self, kind: EventKind, published_at: Instant) {
        self.count(kind);
        self.published(published_at);
    }

    /// One more event of `kind` (for the events-sent counter only).
    pub fn count(&mut self, kind: EventKind) {
        self.per_kind[kind as usize] += 1;
    }

    /// An event published at `published_at` is in the batch (for the latency
    /// histogram, which keeps the oldest).
    pub fn published(&mut self, published_at: Instant) {
        if self.oldest.is_none_or(|oldest| published_at < oldest) {
            self.oldest = Some(published_at);
        }
    }

    /// The events counted, of all kinds.
    pub fn total(&self) -> u64 {
        self.per_kind.iter().sum()
    }

    /// How many events of `kind` were counted.
    pub fn of_kind(&self, kind: EventKind) -> u64 {
        self.per_kind[kind as usize]
    }

    /// When the oldest event was published, if any publish time was given.
    pub fn oldest(&self) -> Option<Instant> {
        self.oldest
    }
}

/// The instruments of one client-facing transport (WebSocket, SSE or MCP).
///
/// Cheap to clone; build one per endpoint, after the host has installed its
/// meter provider. The per-type `events_sent` series and the latency
/// histogram are bound when this is built, so they are exported (at zero)
/// from then on, not only after the first write.
#[derive(Clone, Debug)]
pub struct TransportMetrics {
    transport: Transport,
    active: UpDownCounter<i64>,
    /// Events sent, bound to each event type (index: [`EventKind::index`]):
    /// recorded on every client write, where looking the attributes up on
    /// each call cost more than the update itself.
    sent: Arc<[BoundCounter<u64>; EventKind::ALL.len()]>,
    dropped: Counter<u64>,
    paced: Counter<u64>,
    closed: Counter<u64>,
    /// Bound to `transport`, for the same reason.
    latency: BoundHistogram<f64>,
}

impl TransportMetrics {
    /// Creates the instruments of `transport` from the global meter.
    pub fn new(transport: Transport) -> Self {
        let meter = meter();
        let (active, sent) = match transport {
            Transport::WebSocket => (WS_CONNECTIONS_ACTIVE, WS_EVENTS_SENT),
            Transport::Sse => (SSE_CONNECTIONS_ACTIVE, SSE_EVENTS_SENT),
            Transport::Mcp => (MCP_CONNECTIONS_ACTIVE, MCP_EVENTS_SENT),
        };
        let sent = meter
            .u64_counter(sent)
            .with_description("Events written to clients, by event type")
            .build();
        let transport_attr = [KeyValue::new("transport", transport.as_str())];
        let metrics = TransportMetrics {
            transport,
            active: meter
                .i64_up_down_counter(active)
                .with_description("Open client connections")
                .build(),
            sent: Arc::new(
                EventKind::ALL
                    .map(|kind| sent.bind(&[KeyValue::new("event_type", kind.type_name())])),
            ),
            dropped: dropped_counter(&meter),
            paced: meter
                .u64_counter(EVENTS_PACED)
                .with_description(
                    "Events a rate-limited client did not receive because of its own limit",
                )
                .build(),
            closed: meter
                .u64_counter(CONNECTIONS_CLOSED)
                .with_description("Connections closed, by transport and reason")
                .build(),
            latency: latency_histogram(&meter).bind(&transport_attr),
        };
        // Export the gauge and the drop series from the start (at 0), not
        // only after the first connection or loss: dashboards and alerts
        // expect the series to exist.
        metrics.active.add(0, &[]);
        metrics.dropped(0);
        metrics.paced(0);
        metrics
    }

    /// Which transport these instruments describe.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Exports the transport's connection cap as
    /// [`CONNECTIONS_LIMIT`]`{transport}` (nothing for `0`, unlimited), so
    /// dashboards and alerts can say how full it is.
    pub fn with_connection_limit(self, limit: usize) -> Self {
        if limit > 0 {
            meter()
                .u64_gauge(CONNECTIONS_LIMIT)
                .with_description("The most connections the transport admits")
                .build()
                .record(
                    u64::try_from(limit).unwrap_or(u64::MAX),
                    &[KeyValue::new("transport", self.transport.as_str())],
                );
        }
        self
    }

    /// A connection opened.
    pub fn connection_opened(&self) {
        self.active.add(1, &[]);
    }

    /// A connection closed, for `reason` (a short fixed word such as
    /// `client_close`, `slow_consumer`, `shutdown`, `idle_timeout`).
    pub fn connection_closed(&self, reason: &'static str) {
        self.active.add(-1, &[]);
        self.closed.add(
            1,
            &[
                KeyValue::new("transport", self.transport.as_str()),
                KeyValue::new("reason", reason),
            ],
        );
    }

    /// `n` events of `kind` were written to a client.
    pub fn events_sent(&self, kind: EventKind, n: u64) {
        self.sent[kind.index()].add(n);
    }

    /// One write reached a client socket, and the oldest event in it was
    /// published at `published_at`: one latency sample (see
    /// [`EVENT_LATENCY_MS`]). Call it once per write, not per event.
    pub fn observe_latency(&self, published_at: Instant) {
        self.latency.record(elapsed_ms(published_at));
    }

    /// One write to a client: the events-sent counter per kind, and one
    /// latency sample for the batch's oldest event (none if no publish time
    /// was given, e.g. for a replay).
    pub fn record_write(&self, batch: &WrittenBatch) {
        for (kind, n) in EventKind::ALL.into_iter().zip(batch.per_kind) {
            if n > 0 {
                self.events_sent(kind, n);
            }
        }
        if let Some(oldest) = batch.oldest {
            self.observe_latency(oldest);
        }
    }

    /// A client of this transport lost `n` events.
    pub fn dropped(&self, n: u64) {
        self.dropped
            .add(n, &[KeyValue::new("consumer", self.transport.as_str())]);
    }

    /// A rate-limited client of this transport did not receive `n` events
    /// because of its own limit ([`EVENTS_PACED`]).
    pub fn paced(&self, n: u64) {
        self.paced
            .add(n, &[KeyValue::new("consumer", self.transport.as_str())]);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn written_batch_counts_per_kind_and_keeps_the_oldest() {
        let mut batch = WrittenBatch::new();
        assert_eq!(batch.total(), 0);
        assert_eq!(batch.oldest(), None);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        batch.event(EventKind::JobQueued, t1);
        batch.event(EventKind::JobQueued, t0);
        batch.event(EventKind::NoteUpdated, t1);
        batch.count(EventKind::QueueStatus);
        assert_eq!(batch.of_kind(EventKind::JobQueued), 2);
        assert_eq!(batch.of_kind(EventKind::NoteUpdated), 1);
        assert_eq!(batch.of_kind(EventKind::QueueStatus), 1);
        assert_eq!(batch.of_kind(EventKind::JobFailed), 0);
        assert_eq!(batch.total(), 4);
        assert_eq!(batch.oldest(), Some(t0));
    }
}
