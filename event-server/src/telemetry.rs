//! The host's telemetry wiring (feature `telemetry`): one Prometheus meter
//! provider per process and the database health check.

use std::sync::OnceLock;

use event_telemetry::{ComponentStatus, HealthCheck, PrometheusMetrics};

use crate::db::Db;
use crate::error::ServerError;

static METRICS: OnceLock<PrometheusMetrics> = OnceLock::new();

/// The process's meter provider, installed as the global one on first use.
///
/// One per process: the `opentelemetry` global is process-wide, and every
/// instrument built after this records into it (several apps in one test
/// process share it).
pub fn metrics() -> Result<PrometheusMetrics, ServerError> {
    if let Some(m) = METRICS.get() {
        return Ok(m.clone());
    }
    let built = PrometheusMetrics::new("matric-events")
        .map_err(|e| ServerError::Startup(format!("metrics: {e}")))?;
    let metrics = METRICS.get_or_init(|| {
        built.set_global();
        built
    });
    Ok(metrics.clone())
}

/// `/health` component: can the database answer?
pub struct DbCheck(pub Db);

#[event_core::async_trait]
impl HealthCheck for DbCheck {
    async fn check(&self) -> ComponentStatus {
        match self.0.ping().await {
            Ok(()) => ComponentStatus::up(),
            Err(e) => ComponentStatus::down(e.to_string()),
        }
    }
}
