//! The endpoint: shared state, the `/mcp` router and what it checks before
//! a request reaches the SDK.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use event_core::{
    Authenticator, ConnectionRegistry, Credentials, EventBus, EventSink, QueueSnapshot, Transport,
    TransportMetrics,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::transport::streamable_http_server::session::local::{LocalSessionManager, SessionConfig};
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::config::McpConfig;
use crate::error::McpError;
use crate::hub::Hub;
use crate::session::McpSession;

/// The path the router serves.
pub const MCP_PATH: &str = "/mcp";

/// State every session of the endpoint shares.
pub(crate) struct Shared {
    pub(crate) bus: EventBus,
    pub(crate) registry: ConnectionRegistry,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) queue: Option<Arc<dyn QueueSnapshot>>,
    pub(crate) config: McpConfig,
    pub(crate) hub: Hub,
    pub(crate) metrics: TransportMetrics,
    pub(crate) tools: ToolRouter<McpSession>,
    pub(crate) sessions: Arc<LocalSessionManager>,
    /// Open sessions (and `initialize` requests on their way), under
    /// `config.max_sessions`.
    pub(crate) active: Arc<AtomicUsize>,
    pub(crate) shutdown: CancellationToken,
}

/// A place under `max_sessions`, released on drop.
#[derive(Debug)]
pub(crate) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot reserved for a request that may open a session; the session's
/// `initialize` takes it. Travels in the request's extensions (which must be
/// `Clone`), hence the shared cell.
#[derive(Debug, Clone)]
pub(crate) struct SessionTicket(Arc<Mutex<Option<Slot>>>);

impl SessionTicket {
    pub(crate) fn take(&self) -> Option<Slot> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The MCP endpoint. Cheap to clone.
///
/// Register [`sink`](Self::sink) on the host's `SinkRunner` and merge
/// [`router`](Self::router) into the host's router.
#[derive(Clone)]
pub struct McpEndpoint {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for McpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpEndpoint")
            .field("sessions", &self.sessions())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl McpEndpoint {
    /// An endpoint over `bus` whose sessions are listed in `registry` (as
    /// transport `mcp`) and admitted by `auth`. Build it after installing
    /// the meter provider.
    pub fn new(
        bus: EventBus,
        registry: ConnectionRegistry,
        auth: Arc<dyn Authenticator>,
        config: McpConfig,
    ) -> Self {
        let session_config = {
            let mut c = SessionConfig::default();
            c.channel_capacity = config.session_queue.max(1);
            // The SDK's own idle limit counts server messages too; the
            // session's task applies `session_idle` to client requests.
            // This one (twice as long) catches a session that never
            // initialized.
            c.keep_alive = Some(config.session_idle.saturating_mul(2));
            c
        };
        let mut sessions = LocalSessionManager::default();
        sessions.session_config = session_config;
        let metrics =
            TransportMetrics::new(Transport::Mcp).with_connection_limit(config.max_sessions);
        McpEndpoint {
            shared: Arc::new(Shared {
                bus,
                registry,
                auth,
                queue: None,
                config,
                hub: Hub::default(),
                metrics,
                tools: McpSession::tool_router(),
                sessions: Arc::new(sessions),
                active: Arc::new(AtomicUsize::new(0)),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn shared_mut(&mut self, what: &str) -> Option<&mut Shared> {
        let shared = Arc::get_mut(&mut self.shared);
        if shared.is_none() {
            tracing::warn!("{what} called on a shared McpEndpoint; ignored");
        }
        shared
    }

    /// Uses `provider` for `queue_status` and `events://queue` (otherwise
    /// the last published `QueueStatus`). Call before cloning the endpoint.
    pub fn with_queue_snapshot(mut self, provider: Arc<dyn QueueSnapshot>) -> Self {
        if let Some(shared) = self.shared_mut("with_queue_snapshot") {
            shared.queue = Some(provider);
        }
        self
    }

    /// Ends every session and stream when `token` is cancelled (the host's
    /// shutdown). Call before cloning the endpoint.
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        if let Some(shared) = self.shared_mut("with_shutdown") {
            shared.shutdown = token;
        }
        self
    }

    /// The sink to register on the host's `SinkRunner`: it tells sessions
    /// about the events that change their subscribed resources and wakes
    /// `wait_for_job` calls.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(self.shared.hub.clone())
    }

    /// Open sessions (counted under [`McpConfig::max_sessions`]).
    pub fn sessions(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// The configuration.
    pub fn config(&self) -> &McpConfig {
        &self.shared.config
    }

    /// `POST`, `GET` and `DELETE /mcp` (MCP Streamable HTTP), for any host
    /// state.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let config = &self.shared.config;
        let mut http = StreamableHttpServerConfig::default()
            .with_sse_keep_alive(Some(config.keep_alive))
            .with_cancellation_token(self.shared.shutdown.child_token())
            .with_max_request_body_bytes(config.max_body_bytes);
        http = match &config.allowed_hosts {
            Some(hosts) => http.with_allowed_hosts(hosts.clone()),
            None => http.disable_allowed_hosts(),
        };
        let factory = {
            let shared = self.shared.clone();
            move || Ok(McpSession::new(shared.clone()))
        };
        let service = StreamableHttpService::new(factory, self.shared.sessions.clone(), http);
        Router::new()
            .route_service(MCP_PATH, service)
            .layer(axum::middleware::from_fn_with_state(
                self.shared.clone(),
                gate,
            ))
    }
}

/// Before the SDK sees a request: the principal from the head (`401`), a
/// session slot for a request that may open a session (`503` beyond
/// `max_sessions`), then the body within its size and time limits.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    match admit(&shared, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn admit(shared: &Arc<Shared>, mut request: Request) -> Result<Request, McpError> {
    let credentials = Credentials::from_headers(request.headers(), None);
    let principal = shared.auth.authenticate(&credentials).await?;
    if shared.registry.is_shutting_down() || shared.shutdown.is_cancelled() {
        return Err(McpError::ShuttingDown);
    }
    let opens_session =
        request.method() == Method::POST && !request.headers().contains_key("mcp-session-id");
    if opens_session {
        let max = shared.config.max_sessions;
        shared
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| McpError::TooManySessions(max))?;
        let slot = Slot(shared.active.clone());
        request
            .extensions_mut()
            .insert(SessionTicket(Arc::new(Mutex::new(Some(slot)))));
    }
    request.extensions_mut().insert(principal);
    if request.method() != Method::POST {
        return Ok(request);
    }
    let (parts, body) = request.into_parts();
    let max = shared.config.max_body_bytes;
    if parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > max as u64)
    {
        return Err(McpError::BodyTooLarge(max));
    }
    let timeout = shared.config.body_timeout;
    let bytes = match tokio::time::timeout(timeout, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(McpError::BodyTooLarge(max));
        }
        Ok(Err(e)) => return Err(McpError::BodyUnreadable(e.to_string())),
        Err(_) => return Err(McpError::BodyTimeout(timeout.as_secs())),
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}
