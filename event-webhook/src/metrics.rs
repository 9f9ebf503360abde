//! Webhook instruments, recorded through `event_core::metrics`.

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram};

use event_core::metrics as names;

/// The `status` values of [`names::WEBHOOK_DELIVERIES`].
pub const OUTCOMES: [&str; 3] = ["success", "retry", "failed"];

/// The webhook worker's instruments.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    deliveries: Counter<u64>,
    queue_depth: Gauge<u64>,
    latency: Histogram<f64>,
    dropped: Counter<u64>,
    transport: [KeyValue; 1],
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics::new()
    }
}

impl WebhookMetrics {
    /// Creates the instruments from the global meter (install the meter
    /// provider first). Every outcome's series and the drop series are
    /// exported from then on, at 0 until the first count, so `rate()` and
    /// alerts see them on a fresh server.
    pub fn new() -> Self {
        let meter = names::meter();
        let metrics = WebhookMetrics {
            deliveries: meter
                .u64_counter(names::WEBHOOK_DELIVERIES)
                .with_description("Webhook delivery attempts by outcome (success, retry, failed)")
                .build(),
            queue_depth: meter
                .u64_gauge(names::WEBHOOK_QUEUE_DEPTH)
                .with_description("Webhook deliveries waiting to be sent")
                .build(),
            latency: names::latency_histogram(&meter),
            dropped: names::dropped_counter(&meter),
            transport: [KeyValue::new("transport", "webhook")],
        };
        for status in OUTCOMES {
            metrics
                .deliveries
                .add(0, &[KeyValue::new("status", status)]);
        }
        metrics.dropped(0);
        metrics.queue_depth(0);
        metrics
    }

    /// An attempt ended with `status` (`success`, `retry` or `failed`).
    pub fn attempt(&self, status: &'static str) {
        self.deliveries.add(1, &[KeyValue::new("status", status)]);
    }

    /// Queue → receiver's response, in milliseconds.
    pub fn latency_ms(&self, ms: f64) {
        self.latency.record(ms, &self.transport);
    }

    /// The sink lost `n` events (it lagged behind the bus).
    pub fn dropped(&self, n: u64) {
        self.dropped.add(n, &[KeyValue::new("consumer", "webhook")]);
    }

    /// The current queue depth.
    pub fn queue_depth(&self, depth: u64) {
        self.queue_depth.record(depth, &[]);
    }
}
