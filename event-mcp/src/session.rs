//! One MCP session: the `ServerHandler` the SDK runs for it, its tools and
//! resources, and the task that sends its resource updates.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use axum::extract::ConnectInfo;
use event_core::{
    ConnectionGuard, Cursor, EventFilter, EventMeta, FilterParams, Principal, ReplayMiss,
    ServerEvent, Transport, Uuid, current_queue_status,
};
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Extensions,
    InitializeRequestParams, InitializeResult, ListResourceTemplatesResult, ListResourcesResult,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProtocolVersion,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, Resource,
    ResourceContents, ResourceTemplate, ResourceUpdatedNotificationParam, ServerCapabilities,
    ServerConfig, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, Peer, RoleServer, ServerHandler, schemars, tool, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::endpoint::{SessionTicket, Shared, Slot};
use crate::error::McpError;
use crate::hub::SubscriberHandle;
use crate::resource::{self, ResourceId};
use crate::views::{self, EventsPage, JobStatus};

/// The newest protocol revision served: the last with the `initialize`
/// handshake and sessions, which `resources/subscribe` needs.
pub(crate) const PROTOCOL: ProtocolVersion = ProtocolVersion::V_2025_11_25;

/// Tools only the admin token may call (hidden from other principals).
pub(crate) const ADMIN_TOOLS: [&str; 2] = ["publish_event", "list_connections"];

const RECENT_DEFAULT: usize = 50;
const RECENT_MAX: usize = 500;
const WAIT_DEFAULT_SECS: u64 = 60;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `events_recent` arguments.
#[derive(Debug, Default, Deserialize, schemars::JsonSchema)]
pub struct EventsRecentArgs {
    /// Only these kinds, by type or dot-name prefix, case-insensitive
    /// (`job`, `note.updated`, `QueueStatus`) — like SSE's `types=`.
    #[serde(default)]
    pub types: Option<Vec<String>>,
    /// Only these exact event names (`JobCompleted`, `job.failed`) — like
    /// SSE's `events=`.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Only events about this job or note (UUID).
    #[serde(default)]
    pub entity_id: Option<String>,
    /// Only events of this memory (plus unscoped ones).
    #[serde(default)]
    pub memory: Option<String>,
    /// Return the events after this cursor (a `seq` or an event UUID from an
    /// earlier answer's `next_since`), oldest first. Without it: the most
    /// recent events.
    #[serde(default)]
    pub since: Option<String>,
    /// At most this many events (default 50, at most 500).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `job_status` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct JobArgs {
    /// The job's UUID.
    pub job_id: String,
}

/// `wait_for_job` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct WaitArgs {
    /// The job's UUID.
    pub job_id: String,
    /// Give up after this many seconds (default 60, at most the server's
    /// limit, 600 by default).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// `publish_event` arguments.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub struct PublishArgs {
    /// One event in the flat form of docs/protocol.md §1, e.g.
    /// `{"type":"JobQueued","job_id":"…","job_type":"Embedding"}`. `type` is
    /// one of QueueStatus, JobQueued, JobStarted, JobProgress, JobCompleted,
    /// JobFailed, NoteUpdated.
    pub event: serde_json::Map<String, Value>,
    /// Scope the event to this memory.
    #[serde(default)]
    pub memory: Option<String>,
    /// Scope the event to this tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

/// What a session holds while it is open. Dropping it unregisters the
/// session everywhere (connection list, session count, hub, metrics).
struct Live {
    principal: Principal,
    _guard: Arc<ConnectionGuard>,
    subscriber: SubscriberHandle,
    _slot: Slot,
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    reason: Arc<Mutex<&'static str>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.metrics.connection_closed(*lock(&self.reason));
    }
}

struct State {
    live: Mutex<Option<Live>>,
    session_id: OnceLock<String>,
    /// When the client last sent something.
    last_seen: Mutex<Instant>,
    waits: AtomicUsize,
}

/// The handler of one session (created by the SDK per session, dropped when
/// the session ends; its state goes with it).
pub(crate) struct McpSession {
    shared: Arc<Shared>,
    state: Arc<State>,
}

impl McpSession {
    pub(crate) fn new(shared: Arc<Shared>) -> McpSession {
        McpSession {
            shared,
            state: Arc::new(State {
                live: Mutex::new(None),
                session_id: OnceLock::new(),
                last_seen: Mutex::new(Instant::now()),
                waits: AtomicUsize::new(0),
            }),
        }
    }

    /// Notes client activity and the session id; returns the request's
    /// principal, which must be the session's.
    fn touch(&self, extensions: &Extensions) -> Result<Principal, McpError> {
        *lock(&self.state.last_seen) = Instant::now();
        let parts = extensions.get::<http::request::Parts>();
        if let Some(id) = parts
            .and_then(|p| p.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
        {
            let _ = self.state.session_id.set(id.to_owned());
        }
        let asking = parts.and_then(|p| p.extensions.get::<Principal>());
        let live = lock(&self.state.live);
        let Some(live) = live.as_ref() else {
            return Err(McpError::SessionClosed);
        };
        if let Some(asking) = asking
            && asking.id != live.principal.id
        {
            return Err(McpError::Forbidden(
                "this session belongs to another principal".to_owned(),
            ));
        }
        Ok(live.principal.clone())
    }

    fn principal(&self, context: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
        self.touch(&context.extensions).map_err(ErrorData::from)
    }

    fn subscriber(&self) -> Result<Arc<crate::hub::Subscriber>, McpError> {
        lock(&self.state.live)
            .as_ref()
            .map(|l| l.subscriber.subscriber.clone())
            .ok_or(McpError::SessionClosed)
    }

    fn count_sent(&self, events: &[Value]) {
        for ev in events {
            if let Some(kind) = ev["event_type"]
                .as_str()
                .and_then(event_core::EventKind::from_name)
            {
                self.shared.metrics.events_sent(kind, 1);
            }
        }
    }

    /// Opens the session: registers it (connection list, hub) and starts
    /// its notifier task.
    fn open(&self, extensions: &Extensions, peer: Peer<RoleServer>) -> Result<(), McpError> {
        let parts = extensions
            .get::<http::request::Parts>()
            .ok_or_else(|| McpError::Internal("no HTTP request in the context".to_owned()))?;
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| McpError::Internal("the request was not authenticated".to_owned()))?;
        let slot = parts
            .extensions
            .get::<SessionTicket>()
            .and_then(SessionTicket::take)
            .ok_or_else(|| McpError::Internal("no session slot was reserved".to_owned()))?;
        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        let shared = &self.shared;
        let guard = shared.registry.register(Transport::Mcp, remote, &principal);
        if guard.is_closing() {
            return Err(McpError::ShuttingDown);
        }
        let guard = Arc::new(guard);
        let subscriber = shared.hub.subscriber(principal.clone());
        let reason = Arc::new(Mutex::new("client_close"));
        let task = tokio::spawn(notifier(
            shared.clone(),
            Arc::downgrade(&self.state),
            subscriber.subscriber.clone(),
            guard.clone(),
            peer,
            reason.clone(),
        ));
        shared.metrics.connection_opened();
        *lock(&self.state.live) = Some(Live {
            principal,
            _guard: guard,
            subscriber,
            _slot: slot,
            task,
            shared: shared.clone(),
            reason,
        });
        Ok(())
    }

    /// Ends the session: unregisters it now and asks the SDK to close it.
    fn close(shared: &Shared, state: &State) {
        let live = lock(&state.live).take();
        if let Some(id) = state.session_id.get().cloned() {
            let sessions = shared.sessions.clone();
            tokio::spawn(async move {
                use rmcp::transport::streamable_http_server::session::SessionManager;
                let _ = sessions.close_session(&id.into()).await;
            });
        }
        // Dropped last: it aborts the notifier task, which may be the caller.
        drop(live);
    }

    async fn read(&self, principal: &Principal, id: ResourceId) -> Result<Value, McpError> {
        let bus = &self.shared.bus;
        Ok(match id {
            ResourceId::Recent => {
                let events = views::latest_visible(bus, principal, RECENT_DEFAULT, |_| true);
                to_json(&EventsPage::build(
                    &events,
                    self.shared.config.max_result_bytes,
                ))?
            }
            ResourceId::Queue => self.queue_json().await,
            ResourceId::Job(job) => to_json(&JobStatus::from_ring(bus, principal, job))?,
            ResourceId::Note(note) => views::note_view(bus, principal, note),
        })
    }

    async fn queue_json(&self) -> Value {
        let status = current_queue_status(&self.shared.bus, self.shared.queue.as_deref()).await;
        serde_json::to_value(status).unwrap_or(Value::Null)
    }
}

fn json_result(value: Value) -> CallToolResult {
    CallToolResult::structured(value)
}

/// `value` as JSON, for a tool result (a failure is the server's fault).
fn to_json(value: &impl serde::Serialize) -> Result<Value, McpError> {
    serde_json::to_value(value).map_err(|e| McpError::Internal(e.to_string()))
}

fn tool_error(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

fn parse_uuid(raw: &str, what: &str) -> Result<Uuid, CallToolResult> {
    Uuid::try_parse(raw.trim())
        .map_err(|_| tool_error(format!("`{what}` must be a UUID, got {raw:?}")))
}

#[tool_router(vis = "pub(crate)")]
impl McpSession {
    /// Recent events the caller may see, filtered like the SSE endpoint.
    #[tool(
        description = "Recent matric events (jobs, notes, queue) the caller may see, oldest first. Filters like the SSE endpoint: `types` (prefixes such as `job` or `note.updated`), `events` (exact names such as `JobCompleted`), `entity_id` (a job or note UUID), `memory`. Pass `since` (a `next_since` from an earlier answer) to get only newer events.",
        annotations(read_only_hint = true)
    )]
    async fn events_recent(
        &self,
        Parameters(args): Parameters<EventsRecentArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = self.principal(&context)?;
        let types = args.types.as_ref().map(|t| t.join(","));
        let events = args.events.as_ref().map(|e| e.join(","));
        let filter = match EventFilter::parse(FilterParams {
            events: events.as_deref(),
            types: types.as_deref(),
            entity_id: args.entity_id.as_deref(),
            memory: args.memory.as_deref(),
            topics: None,
        }) {
            Ok(f) => f,
            Err(e) => return Ok(tool_error(e.to_string())),
        };
        if let Some(m) = filter.memory()
            && !principal.memories.allows(m)
        {
            return Ok(tool_error(format!("forbidden: no access to memory {m:?}")));
        }
        let limit = args
            .limit
            .map_or(RECENT_DEFAULT, |l| l as usize)
            .clamp(1, RECENT_MAX);
        let bus = &self.shared.bus;
        let picked = match args.since.as_deref().filter(|s| !s.trim().is_empty()) {
            Some(raw) => {
                let cursor = match Cursor::parse(raw) {
                    Ok(c) => c,
                    Err(e) => return Ok(tool_error(e.to_string())),
                };
                match bus.history(Some(&cursor), usize::MAX) {
                    Ok(events) => events
                        .into_iter()
                        .filter(|ev| filter.matches(ev) && principal.can_see(ev))
                        .take(limit)
                        .collect(),
                    Err(ReplayMiss::Expired) => {
                        return Ok(tool_error(format!(
                            "the events after {raw:?} are no longer retained; call again without `since`"
                        )));
                    }
                    Err(ReplayMiss::Unknown) => {
                        return Ok(tool_error(format!("no event {raw:?} is known")));
                    }
                }
            }
            None => views::latest_visible(bus, &principal, limit, |ev| filter.matches(ev)),
        };
        let mut page = EventsPage::build(&picked, self.shared.config.max_result_bytes);
        if page.next_since.is_none() {
            page.next_since = args
                .since
                .clone()
                .or_else(|| Some(bus.last_seq().to_string()));
        }
        self.count_sent(&page.events);
        let value = to_json(&page)?;
        Ok(json_result(value))
    }

    /// The latest state of one job, from the events seen.
    #[tool(
        description = "The latest state of one job (queued, running with progress, completed, failed) from the events the server has seen.",
        annotations(read_only_hint = true)
    )]
    async fn job_status(
        &self,
        Parameters(args): Parameters<JobArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = self.principal(&context)?;
        let job = match parse_uuid(&args.job_id, "job_id") {
            Ok(j) => j,
            Err(e) => return Ok(e),
        };
        let status = JobStatus::from_ring(&self.shared.bus, &principal, job);
        if status.events_seen == 0 {
            return Ok(tool_error(format!(
                "no events seen for job {job} (the server keeps only its most recent events)"
            )));
        }
        let value = to_json(&status)?;
        Ok(json_result(value))
    }

    /// Waits until a job completes or fails, reporting its progress.
    #[tool(
        description = "Wait until a job completes or fails (or `timeout_secs` pass, default 60). Sends MCP progress notifications (0-100) while it runs when the request carries a progress token. Returns the job's final state and `outcome`: completed, failed or timeout.",
        annotations(read_only_hint = true)
    )]
    async fn wait_for_job(
        &self,
        Parameters(args): Parameters<WaitArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = self.principal(&context)?;
        let job = match parse_uuid(&args.job_id, "job_id") {
            Ok(j) => j,
            Err(e) => return Ok(e),
        };
        let max = self.shared.config.max_waits;
        if self
            .state
            .waits
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_err()
        {
            return Ok(tool_error(format!(
                "this session already waits for {max} jobs (the limit)"
            )));
        }
        let result = self.wait(job, principal, args.timeout_secs, &context).await;
        self.state.waits.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// The current queue depth.
    #[tool(
        description = "The job queue's current depth: pending, running and total jobs.",
        annotations(read_only_hint = true)
    )]
    async fn queue_status(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.principal(&context)?;
        Ok(json_result(self.queue_json().await))
    }

    /// Publishes one event (admin token only).
    #[tool(
        description = "Admin only: publish one event (flat docs/protocol.md §1 form) on the bus, optionally scoped to a memory or tenant. Returns its `seq` and `event_id`."
    )]
    async fn publish_event(
        &self,
        Parameters(args): Parameters<PublishArgs>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = self.principal(&context)?;
        if !principal.is_admin() {
            return Ok(tool_error("forbidden: publish_event needs the admin token"));
        }
        let event: ServerEvent = match serde_json::from_value(Value::Object(args.event)) {
            Ok(e) => e,
            Err(e) => return Ok(tool_error(format!("invalid event: {e}"))),
        };
        if let Err(e) = event.validate() {
            return Ok(tool_error(e.to_string()));
        }
        for (name, value) in [("memory", &args.memory), ("tenant_id", &args.tenant_id)] {
            if value.as_ref().is_some_and(|v| v.trim().is_empty()) {
                return Ok(tool_error(format!("`{name}` must not be empty")));
            }
        }
        let meta = EventMeta {
            memory: args.memory,
            tenant_id: args.tenant_id,
            ..EventMeta::default()
        };
        match self.shared.bus.try_publish_with(event, meta) {
            Ok(ev) => Ok(json_result(json!({
                "seq": (ev.seq() != 0).then_some(ev.seq()),
                "event_id": ev.id(),
            }))),
            Err(e) => Ok(tool_error(e.to_string())),
        }
    }

    /// The open client connections (admin token only).
    #[tool(
        description = "Admin only: the open client connections of every transport (ws, sse, mcp), as GET /api/v1/connections lists them.",
        annotations(read_only_hint = true)
    )]
    async fn list_connections(
        &self,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let principal = self.principal(&context)?;
        if !principal.is_admin() {
            return Ok(tool_error(
                "forbidden: list_connections needs the admin token",
            ));
        }
        let list = to_json(&self.shared.registry.list())?;
        Ok(json_result(json!({ "connections": list })))
    }
}

impl McpSession {
    async fn wait(
        &self,
        job: Uuid,
        principal: Principal,
        timeout_secs: Option<u64>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let timeout = Duration::from_secs(timeout_secs.unwrap_or(WAIT_DEFAULT_SECS).max(1))
            .min(self.shared.config.max_wait);
        let deadline = Instant::now() + timeout;
        // Registered before reading the ring: an event in between is seen
        // by one or the other.
        let (_waiter, mut latest) = self.shared.hub.wait(job, principal.clone());
        let mut status = JobStatus::from_ring(&self.shared.bus, &principal, job);
        let token = context.meta.get_progress_token();
        let mut last_progress: Option<u8> = None;
        loop {
            if status.done {
                break;
            }
            if let (Some(token), Some(p)) = (&token, status.progress)
                && last_progress != Some(p)
            {
                last_progress = Some(p);
                let mut note =
                    ProgressNotificationParam::new(token.clone(), f64::from(p)).with_total(100.0);
                if let Some(m) = &status.message {
                    note = note.with_message(m.clone());
                }
                if context.peer.notify_progress(note).await.is_ok() {
                    self.shared
                        .metrics
                        .events_sent(event_core::EventKind::JobProgress, 1);
                }
            }
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let ev = latest.borrow_and_update().clone();
                    if let Some(ev) = ev
                        && status.last_seq.is_none_or(|s| ev.seq() > s)
                    {
                        status.apply(&ev);
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let mut value = to_json(&status)?;
                    value["outcome"] = json!("timeout");
                    return Ok(json_result(value));
                }
                () = context.ct.cancelled() => {
                    return Ok(tool_error("cancelled"));
                }
            }
        }
        let mut value = to_json(&status)?;
        value["outcome"] = json!(status.state);
        if let Some(kind) = match status.state {
            "completed" => Some(event_core::EventKind::JobCompleted),
            "failed" => Some(event_core::EventKind::JobFailed),
            _ => None,
        } {
            self.shared.metrics.events_sent(kind, 1);
        }
        Ok(json_result(value))
    }
}

/// Sends a session's resource updates, at most one per resource per
/// interval; closes the session when it is kicked, the server shuts down,
/// or its client has been idle too long.
async fn notifier(
    shared: Arc<Shared>,
    state: std::sync::Weak<State>,
    subscriber: Arc<crate::hub::Subscriber>,
    guard: Arc<ConnectionGuard>,
    peer: Peer<RoleServer>,
    reason: Arc<Mutex<&'static str>>,
) {
    let interval = shared.config.update_interval;
    let idle = shared.config.session_idle;
    let last_seen = |state: &std::sync::Weak<State>| state.upgrade().map(|s| *lock(&s.last_seen));
    let mut next_allowed: std::collections::HashMap<ResourceId, Instant> = Default::default();
    let closed = guard.closed();
    tokio::pin!(closed);
    loop {
        let now = Instant::now();
        let due = subscriber.take_due(|id| next_allowed.get(id).is_none_or(|t| *t <= now));
        for id in due {
            next_allowed.insert(id, now + interval);
            let uri = id.uri();
            if peer
                .notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                .await
                .is_err()
            {
                tracing::debug!("an MCP resource update could not be sent");
            }
        }
        next_allowed.retain(|_, t| *t > now);
        let wake_at = subscriber
            .pending()
            .iter()
            .filter_map(|id| next_allowed.get(id))
            .min()
            .copied();
        let Some(seen) = last_seen(&state) else {
            return;
        };
        let idle_at = seen + idle;
        tokio::select! {
            () = subscriber.wake.notified() => {}
            () = tokio::time::sleep_until(wake_at.unwrap_or(idle_at).min(idle_at)) => {
                let Some(seen) = last_seen(&state) else {
                    return;
                };
                if Instant::now() >= seen + idle {
                    *lock(&reason) = "idle_timeout";
                    tracing::debug!("closing an idle MCP session");
                    if let Some(state) = state.upgrade() {
                        McpSession::close(&shared, &state);
                    }
                    return;
                }
            }
            () = &mut closed => {
                *lock(&reason) = if shared.registry.is_shutting_down() {
                    "shutdown"
                } else {
                    "kicked"
                };
                if let Some(state) = state.upgrade() {
                    McpSession::close(&shared, &state);
                }
                return;
            }
        }
    }
}

impl ServerHandler for McpSession {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_protocol_version(PROTOCOL)
        .with_server_info(rmcp::model::Implementation::new(
            "matric-events",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions(
            "matric real-time events. Tools: events_recent (what happened), job_status, \
             wait_for_job (blocks until a job ends, with progress), queue_status; admin: \
             publish_event, list_connections. Resources events://recent, events://queue, \
             events://jobs/{job_id}, events://notes/{note_id} can be subscribed to.",
        )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&PROTOCOL))
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, ErrorData> {
        if lock(&self.state.live).is_none() {
            self.open(&context.extensions, context.peer.clone())?;
        }
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn ping(&self, context: RequestContext<RoleServer>) -> Result<(), ErrorData> {
        self.principal(&context)?;
        Ok(())
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        let _ = self.touch(&context.extensions);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = self.principal(&context)?;
        let tools = self
            .shared
            .tools
            .list_all()
            .into_iter()
            .filter(|t| principal.is_admin() || !ADMIN_TOOLS.contains(&t.name.as_ref()))
            .collect();
        Ok(ListToolsResult {
            tools,
            ..Default::default()
        })
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let tcc = ToolCallContext::new(self, request, context);
        self.shared.tools.call(tcc).await
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.shared.tools.get(name).cloned()
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.principal(&context)?;
        Ok(ListResourcesResult {
            resources: vec![
                Resource::new(resource::RECENT, "recent-events")
                    .with_title("Recent events")
                    .with_description(
                        "The latest events (jobs, notes, queue) the caller may see, oldest first",
                    )
                    .with_mime_type("application/json"),
                Resource::new(resource::QUEUE, "queue-status")
                    .with_title("Queue status")
                    .with_description("The job queue's current depth")
                    .with_mime_type("application/json"),
            ],
            ..Default::default()
        })
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        self.principal(&context)?;
        Ok(ListResourceTemplatesResult {
            resource_templates: vec![
                ResourceTemplate::new(resource::JOB_TEMPLATE, "job")
                    .with_title("Job state")
                    .with_description("One job's latest state and progress")
                    .with_mime_type("application/json"),
                ResourceTemplate::new(resource::NOTE_TEMPLATE, "note")
                    .with_title("Note changes")
                    .with_description("One note's latest update and the events about it")
                    .with_mime_type("application/json"),
            ],
            ..Default::default()
        })
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let principal = self.principal(&context)?;
        let id = ResourceId::parse(&request.uri)?;
        let value = self.read(&principal, id).await?;
        if let Some(events) = value["events"].as_array() {
            self.count_sent(events);
        }
        let text =
            serde_json::to_string_pretty(&value).map_err(|e| McpError::Internal(e.to_string()))?;
        Ok(ReadResourceResult::new(vec![
            ResourceContents::text(text, request.uri).with_mime_type("application/json"),
        ])
        .into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.principal(&context)?;
        let id = ResourceId::parse(&request.uri)?;
        let max = self.shared.config.max_subscriptions;
        if !self.subscriber()?.subscribe(id, max) {
            return Err(McpError::Limit(format!(
                "this session already has {max} subscriptions (the limit)"
            ))
            .into());
        }
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.principal(&context)?;
        let id = ResourceId::parse(&request.uri)?;
        self.subscriber()?.unsubscribe(&id);
        Ok(())
    }
}
