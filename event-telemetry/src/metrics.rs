//! The OpenTelemetry meter provider, its Prometheus exporter and the
//! `/metrics` route.
//!
//! # Model
//!
//! Transports record through the `opentelemetry` API (see
//! [`event_core::metrics`]); nothing is exported until a host installs an SDK
//! meter provider. [`PrometheusMetrics`] is that provider: an
//! [`SdkMeterProvider`] whose only reader is the `opentelemetry-prometheus`
//! exporter, collecting into its own [`prometheus::Registry`]. A scrape of
//! `GET /metrics` collects the current cumulative values and encodes them in
//! the Prometheus text format (version 0.0.4).
//!
//! The exporter is configured so the names and labels are exactly those of
//! docs/protocol.md §6: counters get `_total` appended (`matric_events_published` →
//! `matric_events_published_total`), no unit suffixes, no `otel_scope_*`
//! labels and no `target_info` series. Up-down counters (the connection
//! gauges, the webhook queue depth) are exported as gauges.
//!
//! Install the provider **before** building the transports: their
//! instruments bind to whichever provider is global when they are created.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::metrics::{Meter, MeterProvider};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

use crate::TelemetryError;

/// The content type of `GET /metrics` (Prometheus text format 0.0.4).
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The SDK meter provider with its Prometheus exporter. Cheap to clone
/// (shared handles).
#[derive(Debug, Clone)]
pub struct PrometheusMetrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
}

impl PrometheusMetrics {
    /// Builds a provider exporting to a fresh registry, without making it
    /// global. `service_name` becomes the resource's `service.name` (not a
    /// label on the series).
    pub fn new(service_name: &str) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .without_target_info()
            .without_units()
            .build()
            .map_err(|e| TelemetryError::Metrics(e.to_string()))?;
        let provider = SdkMeterProvider::builder()
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .with_reader(exporter)
            .build();
        Ok(PrometheusMetrics { provider, registry })
    }

    /// Builds a provider and installs it as the global meter provider, so
    /// `event_core::metrics::meter()` (and every `TransportMetrics` built
    /// afterwards) records into it.
    pub fn install(service_name: &str) -> Result<Self, TelemetryError> {
        let metrics = PrometheusMetrics::new(service_name)?;
        metrics.set_global();
        Ok(metrics)
    }

    /// Makes this provider the global one.
    pub fn set_global(&self) {
        opentelemetry::global::set_meter_provider(self.provider.clone());
    }

    /// The SDK provider (for hosts that add views or flush on shutdown).
    pub fn provider(&self) -> &SdkMeterProvider {
        &self.provider
    }

    /// The Prometheus registry the exporter collects into; other
    /// `prometheus` collectors may be registered on it too.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// The matric meter of *this* provider (same scope name as
    /// `event_core::metrics::meter()`), for recording without the global.
    pub fn meter(&self) -> Meter {
        self.provider.meter(event_core::metrics::METER_NAME)
    }

    /// The current metrics in the Prometheus text format.
    pub fn render(&self) -> Result<String, TelemetryError> {
        let families = self.registry.gather();
        let mut out = Vec::with_capacity(4096);
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| TelemetryError::Encode(e.to_string()))?;
        String::from_utf8(out).map_err(|e| TelemetryError::Encode(e.to_string()))
    }

    /// `GET /metrics`, for any host state.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(self.clone())
    }

    /// Flushes and stops the provider (instruments become no-ops).
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        self.provider
            .shutdown()
            .map_err(|e| TelemetryError::Metrics(e.to_string()))
    }
}

/// The `/metrics` handler, usable in a host's own router with
/// `State<PrometheusMetrics>`.
pub async fn metrics_handler(State(metrics): State<PrometheusMetrics>) -> Response {
    // Collection walks every series; keep it off the async workers.
    let rendered = tokio::task::spawn_blocking(move || metrics.render()).await;
    match rendered {
        Ok(Ok(body)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
            )],
            body,
        )
            .into_response(),
        Ok(Err(error)) => internal_error(&error.to_string()),
        Err(join) => internal_error(&join.to_string()),
    }
}

fn internal_error(message: &str) -> Response {
    event_core::http_error::json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "metrics_unavailable",
        format_args!("rendering /metrics failed: {message}"),
    )
}
