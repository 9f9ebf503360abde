//! Log set-up: `event-telemetry` (UC-005's JSON shape, the event mirror's
//! target) when the feature is on, plain `tracing-subscriber` otherwise.

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
#[cfg(feature = "telemetry")]
pub fn init(config: &Config) -> LogGuard {
    let telemetry = event_telemetry::TelemetryConfig {
        format: match config.log_format {
            LogFormat::Text => event_telemetry::LogFormat::Text,
            LogFormat::Json => event_telemetry::LogFormat::Json,
        },
        filter: Some(config.rust_log.clone()),
        // The app installs the meter provider itself (once per process).
        metrics: false,
        ..event_telemetry::TelemetryConfig::default()
    };
    match event_telemetry::init(telemetry) {
        Ok(handle) => LogGuard {
            telemetry: Some(handle),
        },
        Err(event_telemetry::TelemetryError::AlreadyInitialized) => LogGuard::default(),
        Err(e) => {
            eprintln!("event-server: logging not set up: {e}");
            LogGuard::default()
        }
    }
}

/// Installs the global log subscriber (once; later calls keep the first).
#[cfg(not(feature = "telemetry"))]
pub fn init(config: &Config) -> LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.rust_log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let result = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    drop(result);
    LogGuard::default()
}
