//! `init`: installs the global subscriber and meter provider once; a second
//! call is an error, not a panic. Its own test binary, because it changes
//! process-global state.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use event_core::Transport;
use event_telemetry::{LogCapture, LogFormat, TelemetryConfig, TelemetryError, init_with_writer};

fn connection_lines(capture: &LogCapture) -> Vec<serde_json::Value> {
    capture
        .json_lines()
        .into_iter()
        .filter(|l| l["target"] == event_telemetry::spans::CONNECTIONS_TARGET)
        .collect()
}

#[test]
fn init_installs_once_and_the_second_call_is_an_error() {
    let capture = LogCapture::new();
    let config = TelemetryConfig {
        format: LogFormat::Json,
        filter: Some("info".into()),
        ..TelemetryConfig::default()
    };

    #[cfg(not(feature = "otlp"))]
    {
        let with_otlp = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318/v1/traces".into()),
            ..config.clone()
        };
        assert!(matches!(
            init_with_writer(with_otlp, capture.clone()),
            Err(TelemetryError::Otlp(_))
        ));
    }

    let telemetry = init_with_writer(config.clone(), capture.clone()).expect("first init");
    let metrics = telemetry.metrics().expect("metrics installed").clone();

    // The global subscriber writes JSON lines to the capture...
    event_telemetry::spans::connection_opened(Transport::Sse, 9);
    let lines = connection_lines(&capture);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["fields"]["event.type"], "ConnectionOpened");

    // ...and the global meter records into the installed provider.
    let sse = event_core::TransportMetrics::new(Transport::Sse);
    sse.connection_opened();
    let text = metrics.render().expect("render");
    assert!(text.contains("matric_sse_connections_active 1"), "{text}");

    // A second init fails cleanly and leaves the first in place.
    let again = init_with_writer(config, LogCapture::new());
    assert!(matches!(again, Err(TelemetryError::AlreadyInitialized)));
    event_telemetry::spans::connection_opened(Transport::Sse, 10);
    assert_eq!(connection_lines(&capture).len(), 2);
    telemetry.shutdown().expect("shutdown");
}
