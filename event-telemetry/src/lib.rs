//! Tracing mirror of every event, Prometheus metrics and OpenTelemetry setup.
