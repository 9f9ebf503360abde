//! Log set-up: `event-telemetry` when the feature is on, plain
//! `tracing-subscriber` output otherwise.

use crate::config::{Config, LogFormat};

/// Installs the global log subscriber (once; later calls do nothing).
pub fn init(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.rust_log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let result = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(false).try_init(),
    };
    // A second init (tests build several apps) keeps the first subscriber.
    drop(result);
}
