//! OTLP/HTTP trace export (feature `otlp`).
//!
//! Spans (connections, deliveries, webhook attempts) go through
//! `tracing-opentelemetry` into an SDK tracer provider with a batch span
//! processor and the OTLP/HTTP protobuf exporter. The exporter uses a
//! blocking HTTP client on its own thread, so export never runs on the
//! async workers. Plain `http://` endpoints are what is tested; point it at
//! a local collector or sidecar and let that handle TLS.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::{TelemetryConfig, TelemetryError, TraceSampler};

fn sampler(sampler: TraceSampler) -> Sampler {
    let parent_based = |root: Sampler| Sampler::ParentBased(Box::new(root));
    match sampler {
        TraceSampler::AlwaysOn => Sampler::AlwaysOn,
        TraceSampler::AlwaysOff => Sampler::AlwaysOff,
        TraceSampler::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
        TraceSampler::ParentBasedAlwaysOn => parent_based(Sampler::AlwaysOn),
        TraceSampler::ParentBasedAlwaysOff => parent_based(Sampler::AlwaysOff),
        TraceSampler::ParentBasedTraceIdRatio(r) => parent_based(Sampler::TraceIdRatioBased(r)),
    }
}

/// The `tracing` layer exporting spans to `endpoint`, and its provider
/// (kept to flush on shutdown).
pub(crate) fn layer(
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<(Box<dyn Layer<Registry> + Send + Sync>, SdkTracerProvider), TelemetryError> {
    // The workspace builds reqwest with `rustls-no-provider`: a client built
    // without a process-wide crypto provider panics, even for plain HTTP.
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: one is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler(config.sampler))
        .with_resource(
            Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .with_batch_exporter(exporter)
        .build();
    let tracer = provider.tracer(event_core::metrics::METER_NAME);
    let filter: EnvFilter = config.env_filter()?;
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(filter)
        .boxed();
    // Events' W3C contexts become span parents, and spans' contexts the
    // `traceparent`s sent on (event_core::trace).
    event_core::trace::install(Box::new(W3cPropagation));
    Ok((layer, provider))
}

/// `event_core::trace::Propagation` through `tracing-opentelemetry` and the
/// W3C trace-context propagator.
struct W3cPropagation;

impl event_core::trace::Propagation for W3cPropagation {
    fn link(&self, span: &tracing::Span, context: &event_core::TraceContext) {
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_owned(), context.traceparent().to_owned());
        if let Some(state) = context.tracestate() {
            carrier.insert("tracestate".to_owned(), state.to_owned());
        }
        let parent = TraceContextPropagator::new().extract(&carrier);
        // Fails only for a span that is not recorded (filtered out).
        let _ = span.set_parent(parent);
    }

    fn context_of(&self, span: &tracing::Span) -> Option<event_core::TraceContext> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        event_core::TraceContext::parse(
            carrier.get("traceparent")?,
            carrier.get("tracestate").map(String::as_str),
        )
    }
}
