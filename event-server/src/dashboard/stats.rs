//! `GET /api/v1/stats`: the host's counters as one JSON object, for the
//! dashboard's charts (a browser should not parse `/metrics` text).
//!
//! Values are cumulative since the process started (connections are the
//! current count); a reader computes rates and percentiles from the
//! differences between two reads. Any token may read it (as `/metrics`
//! shows the same numbers without one). Without the `telemetry` feature
//! only `connections` is filled and `counters` is `false`.
//!
//! ```json
//! {"connections":{"ws":1,"sse":2,"mcp":0},"counters":true,
//!  "published":{"JobQueued":3,…},"delivered":{"ws":10,"sse":12,"mcp":0},"dropped":0,
//!  "webhooks":{"success":2,"retry":0,"failed":1},"webhook_queue_depth":0,
//!  "latency_ms":{"bounds":[0.1,…,5000],"ws":[…],"sse":[…],"webhook":[…]}}
//! ```
//!
//! `latency_ms.<transport>` holds cumulative counts per bucket of
//! `bounds`, then one more for all samples (`+Inf`).
//!
//! The dashboard does not poll this: it reads the same object pushed by
//! [`stats_stream`](super::stats_stream) and falls back to this route only
//! when that stream cannot be opened.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use event_core::{ConnectionRegistry, Transport};
#[cfg(feature = "telemetry")]
use serde_json::Map;
use serde_json::{Value, json};

/// State of the stats route.
#[derive(Clone, Debug)]
pub struct StatsState {
    /// Connection counts come from here.
    pub registry: ConnectionRegistry,
    /// The process's metrics, read directly (not as text).
    #[cfg(feature = "telemetry")]
    pub metrics: event_telemetry::PrometheusMetrics,
}

/// The routes, `/api/v1/stats` and (pushed) `/api/v1/stats/stream` (to be
/// put behind the host's guard for a client token).
pub fn router<S: Clone + Send + Sync + 'static>(
    state: StatsState,
    hub: super::stats_stream::StatsHub,
) -> axum::Router<S> {
    axum::Router::new()
        .route("/api/v1/stats", axum::routing::get(stats).with_state(state))
        .route(
            super::stats_stream::PATH,
            axum::routing::get(super::stats_stream::stream).with_state(hub),
        )
}

/// Answers the counters (see the module docs for the shape).
pub async fn stats(State(state): State<StatsState>) -> Response {
    match collect(&state).await {
        Ok(body) => Json(body).into_response(),
        Err(error) => {
            tracing::error!(%error, "collecting the stats failed");
            event_core::http_error::json_error::<axum::body::Body>(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "stats_unavailable",
                "collecting the counters failed",
            )
            .into_response()
        }
    }
}

/// The counters as one JSON object (see the module docs for the shape).
///
/// # Errors
///
/// When the blocking task that walks the metrics fails (it panicked).
pub async fn collect(state: &StatsState) -> Result<Value, tokio::task::JoinError> {
    let connections = json!({
        "ws": state.registry.count(Transport::WebSocket),
        "sse": state.registry.count(Transport::Sse),
        "mcp": state.registry.count(Transport::Mcp),
    });
    #[cfg(feature = "telemetry")]
    {
        // Collection walks every series; keep it off the async workers.
        let metrics = state.metrics.clone();
        let mut body =
            tokio::task::spawn_blocking(move || counters(&metrics.registry().gather())).await?;
        body.insert("connections".to_owned(), connections);
        Ok(Value::Object(body))
    }
    #[cfg(not(feature = "telemetry"))]
    {
        Ok(json!({"connections": connections, "counters": false}))
    }
}

/// The counters of `families`, by the exporter's names (docs/protocol.md §6).
#[cfg(feature = "telemetry")]
fn counters(families: &[prometheus::proto::MetricFamily]) -> Map<String, Value> {
    use event_core::metrics::LATENCY_BUCKETS_MS;
    let mut delivered = Map::new();
    for (transport, family) in [
        ("ws", "matric_ws_events_sent_total"),
        ("sse", "matric_sse_events_sent_total"),
        ("mcp", "matric_mcp_events_sent_total"),
    ] {
        let total: f64 = by_label(families, family, "").values().sum();
        delivered.insert(transport.to_owned(), json!(total as u64));
    }
    let published = by_label(families, "matric_events_published_total", "event_type");
    let dropped: f64 = by_label(families, "matric_events_dropped_total", "")
        .values()
        .sum();
    let mut webhooks = Map::new();
    for status in ["success", "retry", "failed"] {
        webhooks.insert(status.to_owned(), json!(0));
    }
    for (status, n) in by_label(families, "matric_webhook_deliveries_total", "status") {
        webhooks.insert(status, json!(n as u64));
    }
    let queue_depth: f64 = by_label(families, "matric_webhook_queue_depth", "")
        .values()
        .sum();
    let mut latency = Map::new();
    latency.insert("bounds".to_owned(), json!(LATENCY_BUCKETS_MS));
    for (transport, counts) in histograms(families, "matric_event_latency_ms", "transport") {
        latency.insert(transport, json!(counts));
    }
    let mut out = Map::new();
    out.insert("counters".to_owned(), json!(true));
    out.insert(
        "published".to_owned(),
        Value::Object(
            published
                .into_iter()
                .map(|(k, v)| (k, json!(v as u64)))
                .collect(),
        ),
    );
    out.insert("delivered".to_owned(), Value::Object(delivered));
    out.insert("dropped".to_owned(), json!(dropped as u64));
    out.insert("webhooks".to_owned(), Value::Object(webhooks));
    out.insert(
        "webhook_queue_depth".to_owned(),
        json!(queue_depth.max(0.0) as u64),
    );
    out.insert("latency_ms".to_owned(), Value::Object(latency));
    out
}

/// The values of the counter or gauge `name`, summed by the value of
/// `label` (`""`: all under one key).
#[cfg(feature = "telemetry")]
fn by_label(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    label: &str,
) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for family in families.iter().filter(|f| f.name() == name) {
        for metric in family.get_metric() {
            let key = label_value(metric, label);
            let value = match (metric.get_counter().as_ref(), metric.get_gauge().as_ref()) {
                (Some(counter), _) => counter.value(),
                (None, Some(gauge)) => gauge.value(),
                (None, None) => 0.0,
            };
            *out.entry(key).or_insert(0.0) += value;
        }
    }
    out
}

/// The histogram `name`'s cumulative bucket counts (then the total), by the
/// value of `label`, summed over its other labels.
#[cfg(feature = "telemetry")]
fn histograms(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    label: &str,
) -> std::collections::BTreeMap<String, Vec<u64>> {
    let mut out: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for family in families.iter().filter(|f| f.name() == name) {
        for metric in family.get_metric() {
            let Some(histogram) = metric.get_histogram().as_ref() else {
                continue;
            };
            let mut counts: Vec<u64> = histogram
                .get_bucket()
                .iter()
                .filter(|b| b.upper_bound().is_finite())
                .map(|b| b.cumulative_count())
                .collect();
            counts.push(histogram.sample_count());
            let sums = out.entry(label_value(metric, label)).or_default();
            if sums.len() < counts.len() {
                sums.resize(counts.len(), 0);
            }
            for (sum, n) in sums.iter_mut().zip(counts) {
                *sum += n;
            }
        }
    }
    out
}

#[cfg(feature = "telemetry")]
fn label_value(metric: &prometheus::proto::Metric, label: &str) -> String {
    metric
        .get_label()
        .iter()
        .find(|l| l.name() == label)
        .map(|l| l.value().to_owned())
        .unwrap_or_default()
}
