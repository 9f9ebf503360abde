//! A Prometheus registry behind the global meter provider, and its text.

use prometheus::{Encoder, TextEncoder};

/// Installs a Prometheus exporter as the global meter provider; call it
/// before the service builds its instruments.
pub fn install_prometheus() -> prometheus::Registry {
    let registry = prometheus::Registry::new();
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .scope_info_enabled(false)
        .without_target_info()
        .without_units()
        .build()
        .unwrap();
    opentelemetry::global::set_meter_provider(
        opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(exporter)
            .build(),
    );
    registry
}

/// The registry in Prometheus text format.
pub fn render(registry: &prometheus::Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}
