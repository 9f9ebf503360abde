//! Process-wide tracing setup: log format, filter, optional OTLP export, and
//! the Prometheus meter provider.
//!
//! # Model
//!
//! A host calls [`init`] once at start-up. It builds one `tracing`
//! subscriber (a [`Registry`] with a formatting layer writing text or
//! [JSON](crate::JsonLogFormat) lines, filtered by an `EnvFilter`
//! directive, plus the OTLP layer when configured), installs it as the
//! global default, and — unless disabled — installs the
//! [`PrometheusMetrics`] meter provider as the global one. A second call
//! returns [`TelemetryError::AlreadyInitialized`] and changes nothing.
//!
//! Tests (and hosts that want their own writer) use [`subscriber`] with any
//! [`MakeWriter`], e.g. a [`LogCapture`], and install it where they like
//! (`tracing::subscriber::set_default` for one thread, [`init_with_writer`]
//! for the process).

use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use tracing::Subscriber;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::{JsonLogFormat, PrometheusMetrics, TelemetryError};

/// The filter used when neither the config nor `RUST_LOG` gives one.
pub const DEFAULT_FILTER: &str = "info";

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`tracing-subscriber`'s default format).
    #[default]
    Text,
    /// One JSON object per line, shaped like UC-005's example.
    Json,
}

/// Telemetry settings. `Default` = text logs, `RUST_LOG` (or `info`),
/// metrics on, no OTLP.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// An `EnvFilter` directive (`info,matric::events=debug`); `None` reads
    /// `RUST_LOG`, falling back to [`DEFAULT_FILTER`].
    pub filter: Option<String>,
    /// Colour codes in text logs.
    pub ansi: bool,
    /// `service.name` of the metrics resource and the OTLP traces.
    pub service_name: String,
    /// Install the Prometheus meter provider as the global one.
    pub metrics: bool,
    /// OTLP/HTTP endpoint for traces (`http://collector:4318/v1/traces`).
    /// Needs the `otlp` feature; without it, setting this is an error.
    pub otlp_endpoint: Option<String>,
    /// Which traces are exported (`OTEL_TRACES_SAMPLER`).
    pub sampler: crate::TraceSampler,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            format: LogFormat::Text,
            filter: None,
            ansi: false,
            service_name: "matric-events".to_owned(),
            metrics: true,
            otlp_endpoint: None,
            sampler: crate::TraceSampler::default(),
        }
    }
}

impl TelemetryConfig {
    /// The effective filter directive: the config's, else `RUST_LOG`, else
    /// [`DEFAULT_FILTER`].
    pub fn filter_directive(&self) -> String {
        self.filter
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .filter(|d| !d.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_FILTER.to_owned())
    }

    pub(crate) fn env_filter(&self) -> Result<EnvFilter, TelemetryError> {
        let directive = self.filter_directive();
        EnvFilter::builder()
            .parse(&directive)
            .map_err(|e| TelemetryError::InvalidFilter {
                message: e.to_string(),
                directive,
            })
    }
}

/// What [`init`] installed. Keep it for the process lifetime; dropping it
/// does not uninstall anything, [`Telemetry::shutdown`] flushes.
#[derive(Debug)]
pub struct Telemetry {
    metrics: Option<PrometheusMetrics>,
    #[cfg(feature = "otlp")]
    tracer_provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// The installed meter provider (`None` when `metrics` was off); its
    /// [`router`](PrometheusMetrics::router) serves `/metrics`.
    pub fn metrics(&self) -> Option<&PrometheusMetrics> {
        self.metrics.as_ref()
    }

    /// Flushes and stops the meter provider and the OTLP exporter.
    pub fn shutdown(&self) -> Result<(), TelemetryError> {
        #[cfg(feature = "otlp")]
        if let Some(tp) = &self.tracer_provider {
            tp.shutdown()
                .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        }
        match &self.metrics {
            Some(m) => m.shutdown(),
            None => Ok(()),
        }
    }
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

fn format_layer<W>(config: &TelemetryConfig, writer: W) -> Result<BoxedLayer, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // Connection-long spans are for traces, not logs (see
    // `event_core::CONNECTION_SPAN_TARGET`).
    let filter = config
        .env_filter()?
        .and(tracing_subscriber::filter::filter_fn(
            |meta: &tracing::Metadata<'_>| {
                !(meta.is_span() && meta.target() == event_core::CONNECTION_SPAN_TARGET)
            },
        ));
    let layer = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(config.ansi)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .fmt_fields(JsonFields::new())
            .event_format(JsonLogFormat)
            .with_filter(filter)
            .boxed(),
    };
    Ok(layer)
}

/// The subscriber [`init`] would install, writing to `writer`, without OTLP
/// and without installing anything.
pub fn subscriber<W>(
    config: &TelemetryConfig,
    writer: W,
) -> Result<impl Subscriber + Send + Sync + 'static, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    Ok(Registry::default().with(vec![format_layer(config, writer)?]))
}

/// Installs logging (to stdout), metrics and, when configured, OTLP traces.
///
/// Returns [`TelemetryError::AlreadyInitialized`] if a global subscriber is
/// already set (a second call), without touching the meter provider.
pub fn init(config: TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    init_with_writer(config, io::stdout)
}

/// [`init`] with logs going to `writer` (a file, a [`LogCapture`]).
pub fn init_with_writer<W>(config: TelemetryConfig, writer: W) -> Result<Telemetry, TelemetryError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut layers = vec![format_layer(&config, writer)?];

    #[cfg(feature = "otlp")]
    let tracer_provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let (layer, provider) = crate::otlp::layer(&config, endpoint)?;
            layers.push(layer);
            Some(provider)
        }
        None => None,
    };
    #[cfg(not(feature = "otlp"))]
    if config.otlp_endpoint.is_some() {
        return Err(TelemetryError::Otlp(
            "otlp_endpoint is set but event-telemetry was built without the `otlp` feature"
                .to_owned(),
        ));
    }

    // Build everything that can fail before installing anything, so an
    // error leaves the process as it was.
    let metrics = if config.metrics {
        Some(PrometheusMetrics::new(&config.service_name)?)
    } else {
        None
    };
    tracing::subscriber::set_global_default(Registry::default().with(std::mem::take(&mut layers)))
        .map_err(|_| TelemetryError::AlreadyInitialized)?;
    if let Some(m) = &metrics {
        m.set_global();
    }
    Ok(Telemetry {
        metrics,
        #[cfg(feature = "otlp")]
        tracer_provider,
    })
}

/// An in-memory log sink: a [`MakeWriter`] whose lines can be read back.
/// Cheap to clone (shared buffer).
#[derive(Debug, Clone, Default)]
pub struct LogCapture {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl LogCapture {
    /// An empty capture.
    pub fn new() -> Self {
        LogCapture::default()
    }

    /// Everything written so far.
    pub fn contents(&self) -> String {
        let buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&buffer).into_owned()
    }

    /// The lines written so far that parse as JSON objects.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.contents()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(serde_json::Value::is_object)
            .collect()
    }

    /// Forgets what was written.
    pub fn clear(&self) {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// The writer a [`LogCapture`] hands out for one log line.
#[derive(Debug)]
pub struct CaptureWriter {
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogCapture {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        CaptureWriter {
            buffer: self.buffer.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_layer_leaves_connection_spans_out_and_keeps_the_others() {
        let config = TelemetryConfig {
            filter: Some("debug".into()),
            ..TelemetryConfig::default()
        };
        let subscriber = subscriber(&config, LogCapture::new()).expect("subscriber");
        tracing::subscriber::with_default(subscriber, || {
            let connection = tracing::info_span!(
                target: event_core::CONNECTION_SPAN_TARGET,
                "ws_connection",
                conn_id = 1
            );
            assert!(connection.is_disabled(), "a connection span was kept");
            let request = tracing::info_span!("publish");
            assert!(!request.is_disabled(), "other spans are still logged");
            // Events under the connection's target still reach the log.
            assert!(tracing::enabled!(
                target: "matric::connection",
                tracing::Level::WARN
            ));
        });
    }
}
