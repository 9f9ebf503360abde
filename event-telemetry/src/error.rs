//! The crate's one error type.

/// What can go wrong while setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global tracing subscriber is already installed (a second
    /// [`init`](crate::init), or another library got there first).
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized,
    /// The log filter directive could not be parsed.
    #[error("invalid log filter {directive:?}: {message}")]
    InvalidFilter {
        /// The directive as given.
        directive: String,
        /// The parser's complaint.
        message: String,
    },
    /// The Prometheus exporter could not be built.
    #[error("metrics exporter: {0}")]
    Metrics(String),
    /// Encoding the metrics as Prometheus text failed.
    #[error("metrics encoding: {0}")]
    Encode(String),
    /// The OTLP trace exporter could not be built.
    #[error("OTLP exporter: {0}")]
    Otlp(String),
}
