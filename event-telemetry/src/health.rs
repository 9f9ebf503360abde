//! `GET /health`: component status and connection counts.
//!
//! # Model
//!
//! The host knows its components (the bus, the webhook store, the NATS
//! link, …); this module only asks them. [`Health`] holds named
//! [`HealthCheck`]s and the [`ConnectionRegistry`]; each request runs every
//! check concurrently, each bounded by a timeout (a check that does not
//! answer in time reports `down` with detail `timeout`), and answers `200`
//! with JSON (docs/protocol.md §6 asks for `200`; the overall `status` field says
//! whether everything is `ok` or the service is `degraded`):
//!
//! ```json
//! {"status":"ok","components":{"bus":{"status":"up"}},
//!  "connections":{"ws":2,"sse":1,"total":3},"uptime_secs":42}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use event_core::{ConnectionRegistry, Transport, async_trait};
use futures_util::future::join_all;
use serde::Serialize;

/// How a component is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentState {
    /// Working.
    Up,
    /// Working with reduced capacity (e.g. a backlog, a lost peer).
    Degraded,
    /// Not working.
    Down,
}

/// One component's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ComponentStatus {
    /// The state.
    pub status: ComponentState,
    /// A short explanation (no secrets, no URLs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ComponentStatus {
    /// `up`, no detail.
    pub fn up() -> Self {
        ComponentStatus {
            status: ComponentState::Up,
            detail: None,
        }
    }

    /// `degraded`, with a reason.
    pub fn degraded(detail: impl Into<String>) -> Self {
        ComponentStatus {
            status: ComponentState::Degraded,
            detail: Some(detail.into()),
        }
    }

    /// `down`, with a reason.
    pub fn down(detail: impl Into<String>) -> Self {
        ComponentStatus {
            status: ComponentState::Down,
            detail: Some(detail.into()),
        }
    }
}

/// A component the host wants reported. Plain closures
/// `Fn() -> ComponentStatus` implement it; implement it directly for checks
/// that need to await (a database ping).
#[async_trait]
pub trait HealthCheck: Send + Sync + 'static {
    /// The component's current status.
    async fn check(&self) -> ComponentStatus;
}

#[async_trait]
impl<F> HealthCheck for F
where
    F: Fn() -> ComponentStatus + Send + Sync + 'static,
{
    async fn check(&self) -> ComponentStatus {
        self()
    }
}

/// Open connections per transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ConnectionCounts {
    /// WebSocket connections.
    pub ws: usize,
    /// SSE connections.
    pub sse: usize,
    /// Both.
    pub total: usize,
}

/// The body of `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    /// `ok` when every component is up, otherwise `degraded`.
    pub status: &'static str,
    /// Each component's status, by name.
    pub components: BTreeMap<String, ComponentStatus>,
    /// Open client connections.
    pub connections: ConnectionCounts,
    /// Seconds since the [`Health`] was built.
    pub uptime_secs: u64,
}

/// The health endpoint: the host's components plus connection counts.
#[derive(Clone)]
pub struct Health {
    registry: ConnectionRegistry,
    components: Vec<(String, Arc<dyn HealthCheck>)>,
    check_timeout: Duration,
    started: Instant,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "components",
                &self.components.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("check_timeout", &self.check_timeout)
            .finish()
    }
}

impl Health {
    /// Reports the connections of `registry` and no components yet.
    pub fn new(registry: ConnectionRegistry) -> Self {
        Health {
            registry,
            components: Vec::new(),
            check_timeout: Duration::from_secs(2),
            started: Instant::now(),
        }
    }

    /// Adds a named component.
    pub fn component(mut self, name: impl Into<String>, check: impl HealthCheck) -> Self {
        self.components.push((name.into(), Arc::new(check)));
        self
    }

    /// How long one check may take (default 2 s).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Runs every check (concurrently) and counts connections.
    pub async fn report(&self) -> HealthReport {
        let timeout = self.check_timeout;
        let checks = self.components.iter().map(|(name, check)| async move {
            let status = tokio::time::timeout(timeout, check.check())
                .await
                .unwrap_or_else(|_| ComponentStatus::down("timeout"));
            (name.clone(), status)
        });
        let components: BTreeMap<String, ComponentStatus> =
            join_all(checks).await.into_iter().collect();
        let all_up = components.values().all(|c| c.status == ComponentState::Up);
        let ws = self.registry.count(Transport::WebSocket);
        let sse = self.registry.count(Transport::Sse);
        HealthReport {
            status: if all_up { "ok" } else { "degraded" },
            components,
            connections: ConnectionCounts {
                ws,
                sse,
                total: ws + sse,
            },
            uptime_secs: self.started.elapsed().as_secs(),
        }
    }

    /// `GET /health`, for any host state.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/health", get(health_handler))
            .with_state(self.clone())
    }
}

/// The `/health` handler, usable in a host's own router with `State<Health>`.
pub async fn health_handler(State(health): State<Health>) -> Response {
    axum::Json(health.report().await).into_response()
}
