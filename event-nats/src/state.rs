//! Connection state, counters and metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, ObservableGauge};
use serde::Serialize;
use tokio::sync::watch;

/// Gauge: 1 while this instance is connected to NATS, else 0.
pub const NATS_CONNECTED: &str = "matric_nats_connected";
/// Counter `{result}`: locally produced events, by where they went
/// (`stream`: into JetStream; `local_only`: delivered on this instance only
/// because NATS was unreachable or the publish failed).
pub const NATS_PUBLISHED: &str = "matric_nats_published";
/// Counter: events taken from the stream into the local bus.
pub const NATS_RECEIVED: &str = "matric_nats_received";
/// Counter `{reason}`: stream messages not injected (`undecodable`,
/// `out_of_order`, `duplicate`).
pub const NATS_SKIPPED: &str = "matric_nats_skipped";

/// Whether this instance can reach NATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Connected: local events go through JetStream and remote events arrive.
    Connected,
    /// Disconnected (reconnecting with backoff): local events are delivered
    /// on this instance only, remote events do not arrive.
    Disconnected,
}

impl ConnectionState {
    /// `connected` or `disconnected`, for `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
        }
    }
}

/// Shared connection state, updated from the client's event callback.
#[derive(Debug)]
pub(crate) struct StateCell {
    connected: AtomicBool,
    ever_connected: AtomicBool,
    reconnects: AtomicU64,
    source_running: AtomicBool,
    /// When the connection last dropped (`None` while connected, and before
    /// the first connection).
    disconnected_at: Mutex<Option<Instant>>,
    tx: watch::Sender<ConnectionState>,
}

impl StateCell {
    pub(crate) fn new() -> Self {
        StateCell {
            connected: AtomicBool::new(false),
            ever_connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            source_running: AtomicBool::new(false),
            disconnected_at: Mutex::new(None),
            tx: watch::channel(ConnectionState::Disconnected).0,
        }
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        // The flag flips under the lock that guards the time: a reader that
        // saw "disconnected" then finds the time of it (never "no time"),
        // so its grace is not skipped.
        let was = {
            let mut at = self
                .disconnected_at
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let was = self.connected.swap(connected, Ordering::SeqCst);
            if connected {
                *at = None;
            } else if was {
                *at = Some(Instant::now());
            }
            was
        };
        if connected && !was && self.ever_connected.swap(true, Ordering::SeqCst) {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        let state = if connected {
            ConnectionState::Connected
        } else {
            ConnectionState::Disconnected
        };
        self.tx.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// What is left of `grace` since the connection dropped: `None` when
    /// connected, `Some(ZERO)` once the grace is over (or when it never
    /// connected).
    pub(crate) fn grace_left(&self, grace: Duration) -> Option<Duration> {
        if self.is_connected() {
            return None;
        }
        let at = *self
            .disconnected_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Some(at.map_or(Duration::ZERO, |t| grace.saturating_sub(t.elapsed())))
    }

    pub(crate) fn state(&self) -> ConnectionState {
        *self.tx.borrow()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<ConnectionState> {
        self.tx.subscribe()
    }

    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    pub(crate) fn set_source_running(&self, running: bool) {
        self.source_running.store(running, Ordering::SeqCst);
    }

    pub(crate) fn source_running(&self) -> bool {
        self.source_running.load(Ordering::SeqCst)
    }
}

/// Counters, kept for `/health` as well as exported as metrics.
#[derive(Debug)]
pub(crate) struct Stats {
    pub published: AtomicU64,
    pub local_only: AtomicU64,
    pub received: AtomicU64,
    pub skipped: AtomicU64,
    published_counter: Counter<u64>,
    received_counter: Counter<u64>,
    skipped_counter: Counter<u64>,
    _connected_gauge: ObservableGauge<i64>,
}

impl Stats {
    pub(crate) fn new(state: &Arc<StateCell>) -> Self {
        let meter = event_core::metrics::meter();
        let weak = Arc::downgrade(state);
        Stats {
            published: AtomicU64::new(0),
            local_only: AtomicU64::new(0),
            received: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            published_counter: meter
                .u64_counter(NATS_PUBLISHED)
                .with_description("Locally produced events, by where they went")
                .build(),
            received_counter: meter
                .u64_counter(NATS_RECEIVED)
                .with_description("Events taken from the JetStream stream into the bus")
                .build(),
            skipped_counter: meter
                .u64_counter(NATS_SKIPPED)
                .with_description("Stream messages not injected, by reason")
                .build(),
            _connected_gauge: meter
                .i64_observable_gauge(NATS_CONNECTED)
                .with_description("1 while connected to NATS, else 0")
                .with_callback(move |observer| {
                    if let Some(state) = weak.upgrade() {
                        observer.observe(i64::from(state.is_connected()), &[]);
                    }
                })
                .build(),
        }
    }

    pub(crate) fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.published_counter
            .add(1, &[KeyValue::new("result", "stream")]);
    }

    pub(crate) fn local_only(&self) {
        self.local_only.fetch_add(1, Ordering::Relaxed);
        self.published_counter
            .add(1, &[KeyValue::new("result", "local_only")]);
    }

    pub(crate) fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.received_counter.add(1, &[]);
    }

    pub(crate) fn skipped(&self, reason: &'static str) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        self.skipped_counter
            .add(1, &[KeyValue::new("reason", reason)]);
    }
}

/// What `/health` shows about the cluster link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatsHealth {
    /// `connected` or `disconnected`.
    pub status: ConnectionState,
    /// This instance's id.
    pub instance_id: String,
    /// The JetStream stream.
    pub stream: String,
    /// Whether the stream consumer is running (false while it is being
    /// re-created after an error or an outage).
    pub consumer_running: bool,
    /// The newest stream sequence injected into the local bus.
    pub last_stream_seq: u64,
    /// Local events published into the stream.
    pub published: u64,
    /// Local events delivered on this instance only (NATS unreachable).
    pub local_only: u64,
    /// Events taken from the stream.
    pub received: u64,
    /// Stream messages not injected.
    pub skipped: u64,
    /// Reconnections after an outage.
    pub reconnects: u64,
}
