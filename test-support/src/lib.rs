//! # event-test-support
//!
//! Shared helpers for the workspace's tests and tools: a Prometheus registry
//! behind the global meter provider and reading series from it, [`Scrape`]
//! (the workspace's one reader of the Prometheus text format, also used by
//! the load generator) and, with the feature `browser`, headless Chromium
//! over WebDriver ([`browser`]) and, with the feature `runtime`, one-worker
//! runtimes a test can occupy ([`runtime`]). Not published (`publish = false`); it
//! depends on no `event-*` crate, so every crate can take it as a
//! dev-dependency without pulling in another transport.
//!
//! The exporter is configured like the one `event-telemetry` serves on
//! `GET /metrics` (no scope info, no target info, no unit suffixes), so a
//! test asserts the series names an operator scrapes.
//!
//! The helpers panic instead of returning errors: they run only inside
//! tests, where a failed setup or an unreadable registry is a failed test.
//!
//! ```
//! use opentelemetry::KeyValue;
//!
//! // Installed before the code under test builds its instruments.
//! let registry = event_test_support::install();
//! let sent = opentelemetry::global::meter("doc").u64_counter("doc_sent").build();
//! sent.add(2, &[KeyValue::new("transport", "ws")]);
//! sent.add(1, &[KeyValue::new("transport", "sse")]);
//!
//! let value = |labels| event_test_support::value(&registry, "doc_sent_total", labels);
//! assert_eq!(value(&[("transport", "ws")]), Some(2.0));
//! assert_eq!(value(&[("transport", "webhook")]), None);
//! assert!(event_test_support::render(&registry).contains("doc_sent_total"));
//! ```

use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder, TextEncoder};

pub use prometheus::Registry;
pub use scrape::{Sample, Scrape};

#[cfg(feature = "browser")]
pub mod browser;
#[cfg(feature = "runtime")]
pub mod runtime;
pub mod scrape;

/// Installs a Prometheus exporter over a fresh registry as the process-global
/// meter provider and returns the registry.
///
/// Instruments built from `opentelemetry::global::meter` afterwards record
/// into it; ones built before keep the provider they were built with, so
/// call this first. The provider is process-global: a test binary that
/// installs it should hold one test, or tests that agree on the counts.
///
/// # Panics
///
/// If the exporter cannot be built.
pub fn install() -> Registry {
    let registry = Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .without_target_info()
        .without_units()
        .build()
        .unwrap_or_else(|e| panic!("building the Prometheus exporter: {e}"));
    opentelemetry::global::set_meter_provider(
        SdkMeterProvider::builder().with_reader(exporter).build(),
    );
    registry
}

/// The registry's series in the Prometheus text format, as `/metrics` serves
/// them.
///
/// # Panics
///
/// If the registry cannot be encoded.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap_or_else(|e| panic!("encoding the registry: {e}"));
    String::from_utf8(out).unwrap_or_else(|e| panic!("the registry's text is not UTF-8: {e}"))
}

/// The value of the first series named `name` whose labels include every
/// `labels` pair, read from the registry now; `None` when there is none.
///
/// # Panics
///
/// As [`render`].
pub fn value(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series_value(&render(registry), name, labels)
}

/// The value of the first series named `name` whose labels include every
/// `labels` pair in Prometheus `text`; `None` when there is none.
///
/// For a histogram, `name` is the full series name (`…_count`, `…_sum`,
/// `…_bucket`). [`Scrape`] reads the text once for several questions.
pub fn series_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    Scrape::parse(text).find(name, labels)
}

#[cfg(test)]
mod tests {
    use super::series_value;

    const TEXT: &str = "\
# HELP matric_events_sent_total Events sent.
# TYPE matric_events_sent_total counter
matric_events_sent_total{event_type=\"JobQueued\",transport=\"ws\"} 4
matric_events_sent_total{event_type=\"NoteUpdated\",transport=\"ws\"} 2
matric_ws_connections_active 1
matric_latency_ms_count{transport=\"sse\"} 3
";

    #[test]
    fn a_series_is_found_by_name_and_a_subset_of_its_labels() {
        let sent = |labels| series_value(TEXT, "matric_events_sent_total", labels);
        assert_eq!(sent(&[("event_type", "NoteUpdated")]), Some(2.0));
        assert_eq!(
            sent(&[("transport", "ws"), ("event_type", "JobQueued")]),
            Some(4.0)
        );
        // No labels asked for: the first series of that name.
        assert_eq!(sent(&[]), Some(4.0));
        assert_eq!(
            series_value(TEXT, "matric_ws_connections_active", &[]),
            Some(1.0)
        );
    }

    #[test]
    fn a_missing_name_label_or_value_is_none() {
        assert_eq!(series_value(TEXT, "matric_events_sent", &[]), None);
        assert_eq!(series_value(TEXT, "matric_latency_ms", &[]), None);
        assert_eq!(
            series_value(TEXT, "matric_latency_ms_count", &[("transport", "ws")]),
            None
        );
        // `transport` is not matched by the suffix of another key.
        assert_eq!(
            series_value(TEXT, "matric_latency_ms_count", &[("port", "sse")]),
            None
        );
    }
}
