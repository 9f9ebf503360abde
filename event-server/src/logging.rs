//! Log set-up: `event-telemetry` (UC-005's JSON shape, the event mirror's
//! target) when the feature is on, plain `tracing-subscriber` otherwise.
//!
//! Traces are exported over OTLP/HTTP when the build has the `otlp`
//! feature and `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is
//! set, configured by the standard `OTEL_*` variables
//! (`event_telemetry::TelemetryConfig::with_otel_env`). An unusable `OTEL_*`
//! value, or an endpoint in a build that cannot export, stops the server
//! at start with one line naming the variable.

use crate::config::{Config, LogFormat};

/// Keeps what the log set-up installed; [`LogGuard::shutdown`] flushes it
/// (OTLP spans) before the process exits.
#[derive(Debug, Default)]
pub struct LogGuard {
    #[cfg(feature = "telemetry")]
    telemetry: Option<event_telemetry::Telemetry>,
}

impl LogGuard {
    /// Flushes pending telemetry.
    pub fn shutdown(self) {
        #[cfg(feature = "telemetry")]
        if let Some(t) = self.telemetry
            && let Err(e) = t.shutdown()
        {
            eprintln!("event-server: telemetry shutdown: {e}");
        }
    }
}

/// Installs the global log subscriber (once; later calls keep the first).
///
/// # Errors
///
/// An `OTEL_*` variable that cannot be used (see the module docs).
#[cfg(feature = "telemetry")]
pub fn init(config: &Config) -> Result<LogGuard, String> {
    let telemetry = event_telemetry::TelemetryConfig {
        format: match config.log_format {
            LogFormat::Text => event_telemetry::LogFormat::Text,
            LogFormat::Json => event_telemetry::LogFormat::Json,
        },
        filter: Some(config.rust_log.clone()),
        // The app installs the meter provider itself (once per process).
        metrics: false,
        ..event_telemetry::TelemetryConfig::default()
    }
    .with_otel_env(|name| std::env::var(name).ok())
    .map_err(|e| e.to_string())?;
    if telemetry.otlp_endpoint.is_some() && !cfg!(feature = "otlp") {
        return Err(NO_OTLP.to_owned());
    }
    Ok(match event_telemetry::init(telemetry) {
        Ok(handle) => LogGuard {
            telemetry: Some(handle),
        },
        Err(event_telemetry::TelemetryError::AlreadyInitialized) => LogGuard::default(),
        Err(e) => {
            eprintln!("event-server: logging not set up: {e}");
            LogGuard::default()
        }
    })
}

const NO_OTLP: &str =
    "OTEL_EXPORTER_OTLP_ENDPOINT is set but the server was built without the `otlp` feature";

/// Installs the global log subscriber (once; later calls keep the first).
///
/// # Errors
///
/// An OTLP endpoint is set: this build cannot export traces.
#[cfg(not(feature = "telemetry"))]
pub fn init(config: &Config) -> Result<LogGuard, String> {
    let endpoint = |name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    if endpoint("OTEL_EXPORTER_OTLP_ENDPOINT") || endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Err(NO_OTLP.to_owned());
    }
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};
    // Connection-long spans are for traces, not logs (see
    // `event_core::CONNECTION_SPAN_TARGET`).
    let filter = tracing_subscriber::EnvFilter::try_new(&config.rust_log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .and(tracing_subscriber::filter::filter_fn(|meta| {
            !(meta.is_span() && meta.target() == event_core::CONNECTION_SPAN_TARGET)
        }));
    let layer = match config.log_format {
        LogFormat::Text => fmt::layer().with_ansi(false).with_filter(filter).boxed(),
        LogFormat::Json => fmt::layer().json().with_filter(filter).boxed(),
    };
    drop(tracing_subscriber::registry().with(layer).try_init());
    Ok(LogGuard::default())
}
