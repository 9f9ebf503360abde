//! # event-telemetry
//!
//! Observability for matric's real-time events: a `tracing` mirror of every
//! bus event, the Prometheus `/metrics` endpoint over the OpenTelemetry SDK,
//! a `/health` endpoint, and the process-wide tracing setup.
//!
//! ## How the pieces fit
//!
//! ```text
//!  EventBus ──► SinkRunner ──► TelemetrySink ──► tracing (target matric::events)
//!                                   │                 └─► text / JSON lines, OTLP
//!                                   └─► matric_events_published_total{event_type}
//!  transports ──► event_core::metrics (opentelemetry API)
//!                     └─► PrometheusMetrics (SdkMeterProvider + Prometheus exporter) ──► GET /metrics
//!  host components + ConnectionRegistry ──► Health ──► GET /health
//! ```
//!
//! * [`init`] installs the global `tracing` subscriber (text or UC-005 JSON
//!   lines, `RUST_LOG`-style filter, OTLP traces with the `otlp` feature) and
//!   the global meter provider. Call it first: transports bind their
//!   instruments to whatever provider is global when they are built.
//! * [`TelemetrySink`] is an `EventSink`: register it on the host's
//!   `SinkRunner`. It logs one structured event per bus event (fields and
//!   levels in [`sink`]) and never logs titles, tags, user ids, tokens or URLs.
//! * [`PrometheusMetrics::router`] serves `GET /metrics`;
//!   [`Health::router`] serves `GET /health`.
//! * [`spans`] has the connection, delivery and webhook-attempt spans.
//!
//! Metric names (docs/protocol.md §6, exact): `matric_ws_connections_active` and
//! `matric_sse_connections_active` (gauges),
//! `matric_ws_events_sent_total{event_type}`,
//! `matric_sse_events_sent_total{event_type}`,
//! `matric_events_published_total{event_type}`,
//! `matric_events_dropped_total{consumer}`,
//! `matric_webhook_deliveries_total{status}`, `matric_event_latency_ms`
//! (histogram, label `transport`; for `ws` and `sse` one sample per write to
//! a client socket, for the oldest event in it), plus `matric_webhook_queue_depth` (gauge),
//! `matric_bus_lagged_events_total{consumer}`,
//! `matric_connections_closed_total{transport,reason}`,
//! `matric_sse_replays_total{replay}`, and the bus's own
//! `matric_replay_ring_events` and `matric_replay_ring_bytes` (gauges).
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use event_core::{EventBus, JobCompleted, SinkRunner};
//! use event_telemetry::{LogCapture, LogFormat, PrometheusMetrics, TelemetryConfig, TelemetrySink};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A host calls `event_telemetry::init(config)?` instead; here the logs go
//! // to a buffer for this thread only.
//! let logs = LogCapture::new();
//! let config = TelemetryConfig { format: LogFormat::Json, filter: Some("info".into()), ..Default::default() };
//! let _logging = tracing::subscriber::set_default(event_telemetry::subscriber(&config, logs.clone())?);
//! let metrics = PrometheusMetrics::new("example")?;
//!
//! let bus = EventBus::default();
//! let mut runner = SinkRunner::new(&bus);
//! runner.register(TelemetrySink::with_meter(&metrics.meter()).into_sink());
//! bus.publish(JobCompleted {
//!     job_id: uuid::Uuid::now_v7(),
//!     job_type: "Embedding".into(),
//!     note_id: None,
//!     duration_ms: Some(1234),
//! });
//! runner.shutdown(Duration::from_secs(1)).await; // delivers what is queued
//!
//! let line = &logs.json_lines()[0];
//! assert_eq!(line["level"], "INFO");
//! assert_eq!(line["message"], "Job completed successfully");
//! assert_eq!(line["fields"]["event.duration_ms"], 1234);
//! assert!(metrics.render()?.contains(r#"matric_events_published_total{event_type="JobCompleted"} 1"#));
//! // `metrics.router()` serves the same text at GET /metrics.
//! # Ok(()) }
//! ```
//!
//! ## Features
//!
//! * `otlp` — export spans over OTLP/HTTP (protobuf) to
//!   `TelemetryConfig::otlp_endpoint`, via `tracing-opentelemetry` and
//!   `opentelemetry-otlp` (pure Rust, no OpenSSL; plain `http://` to a local
//!   collector is the tested set-up). Without the feature, setting the
//!   endpoint makes [`init`] fail with [`TelemetryError::Otlp`].

mod error;
pub mod health;
mod json;
mod logging;
pub mod metrics;
mod otel_env;
#[cfg(feature = "otlp")]
mod otlp;
pub mod sink;
pub mod spans;

pub use error::TelemetryError;
pub use health::{
    ComponentState, ComponentStatus, ConnectionCounts, Health, HealthCheck, HealthReport,
};
pub use json::JsonLogFormat;
pub use logging::{
    CaptureWriter, DEFAULT_FILTER, LogCapture, LogFormat, Telemetry, TelemetryConfig, init,
    init_with_writer, subscriber,
};
pub use metrics::{PROMETHEUS_CONTENT_TYPE, PrometheusMetrics, metrics_handler};
pub use otel_env::TraceSampler;
pub use sink::{EVENTS_TARGET, TelemetrySink, log_event};
