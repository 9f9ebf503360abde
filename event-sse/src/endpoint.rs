//! The SSE endpoint for matric's own events: `/api/v1/events`,
//! `/api/v1/events/stream` and `/api/v1/events/history`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::BytesMut;
use event_core::metrics::{self, SSE_REPLAYS};
use event_core::{
    Authenticator, ConnectionRegistry, Consumers, Credentials, Cursor, Envelope, EventBus,
    EventFilter, EventSink, FanoutHub, FilterParams, OverflowPolicy, Principal, QueueSnapshot,
    ReplayMiss, ReplaySource, Replayed, ServerEvent, SubscribeOptions, Transport, TransportMetrics,
    Uuid, WireForm, current_queue_status,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Counter;

use crate::compress::Encoding;
use crate::config::{MAX_HISTORY_LIMIT, MAX_HISTORY_SCAN, SseConfig};
use crate::error::SseError;
use crate::event::Format;
use crate::feed::{HubFeed, Slot, Start};
use crate::frame;
use crate::params::Query;
use crate::stream::{Connection, StreamSettings};

/// How long the connection confirmation waits for the host's queue snapshot.
const QUEUE_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

struct Inner {
    bus: EventBus,
    registry: ConnectionRegistry,
    auth: Arc<dyn Authenticator>,
    queue: Option<Arc<dyn QueueSnapshot>>,
    replay_source: Option<Arc<dyn ReplaySource>>,
    consumers: Option<Consumers>,
    hub: FanoutHub,
    config: SseConfig,
    metrics: TransportMetrics,
    replays: Counter<u64>,
    /// Open streams, under `config.max_connections`.
    active: Arc<AtomicUsize>,
    /// Replay bytes handed to the HTTP server and not yet written, over all
    /// connections.
    replay_held: Arc<AtomicUsize>,
}

/// The SSE transport for [`event_core::Event`]s. Cheap to clone.
///
/// Register [`sink`](Self::sink) on the host's `SinkRunner` and merge
/// [`router`](Self::router) into the host's router.
#[derive(Clone)]
pub struct SseEndpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SseEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseEndpoint")
            .field("connections", &self.inner.hub.len())
            .field("config", &self.inner.config)
            .finish()
    }
}

impl SseEndpoint {
    /// The paths [`router`](Self::router) serves event streams on (the
    /// history route answers JSON and is not among them). A host that
    /// treats long-lived responses specially can match requests on these.
    pub const STREAM_PATHS: [&'static str; 2] = ["/api/v1/events", "/api/v1/events/stream"];

    /// An endpoint over `bus` whose connections are listed in `registry` and
    /// admitted by `auth`. Build it after installing the meter provider.
    pub fn new(
        bus: EventBus,
        registry: ConnectionRegistry,
        auth: Arc<dyn Authenticator>,
        mut config: SseConfig,
    ) -> Self {
        crate::event::register_render_keys();
        if !config.compression.is_off() && !crate::event::register_pack_keys() {
            tracing::warn!(
                "SSE compression turned off: events have no room left to cache compressed frames (render keys exhausted)"
            );
            config.compression = crate::Compression::OFF;
        }
        let metrics =
            TransportMetrics::new(Transport::Sse).with_connection_limit(config.max_connections);
        let replays = metrics::meter()
            .u64_counter(SSE_REPLAYS)
            .with_description("SSE replays served or refused (expired cursor)")
            .build();
        SseEndpoint {
            inner: Arc::new(Inner {
                bus,
                registry,
                auth,
                queue: None,
                replay_source: None,
                consumers: None,
                hub: FanoutHub::new("sse"),
                config,
                metrics,
                replays,
                active: Arc::new(AtomicUsize::new(0)),
                replay_held: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    /// Uses `provider` for the `QueueStatus` sent when a client connects
    /// (otherwise the last published one). Call before cloning the endpoint.
    pub fn with_queue_snapshot(mut self, provider: Arc<dyn QueueSnapshot>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.queue = Some(provider);
        } else {
            tracing::warn!("with_queue_snapshot called on a shared SseEndpoint; ignored");
        }
        self
    }

    /// Serves cursors older than the bus's replay ring from `source` (e.g.
    /// a NATS JetStream stream shared by several instances) instead of
    /// answering `resync_required` at once. Asked only when the ring misses;
    /// if the source misses too, the client gets `resync_required`. The
    /// hand-over to live delivery is the same as from the ring: no gap, no
    /// duplicate. Call before cloning the endpoint.
    pub fn with_replay_source(mut self, source: Arc<dyn ReplaySource>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.replay_source = Some(source);
        } else {
            tracing::warn!("with_replay_source called on a shared SseEndpoint; ignored");
        }
        self
    }

    /// Serves named consumers and groups (`?consumer=`, `?group=`) from
    /// `consumers`; without it such requests are answered `410
    /// consumers_unavailable`. Call before cloning the endpoint.
    pub fn with_consumers(mut self, consumers: Consumers) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.consumers = Some(consumers);
        } else {
            tracing::warn!("with_consumers called on a shared SseEndpoint; ignored");
        }
        self
    }

    /// The sink to register on the host's `SinkRunner`: it fans events out
    /// to every connection.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(self.inner.hub.clone())
    }

    /// The fan-out hub (connection count, delivered and dropped totals).
    pub fn hub(&self) -> &FanoutHub {
        &self.inner.hub
    }

    /// The configuration.
    pub fn config(&self) -> &SseConfig {
        &self.inner.config
    }

    /// Open event streams (counted under [`SseConfig::max_connections`]).
    pub fn connections(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// The bytes this endpoint holds for its clients right now: every
    /// connection's queued live events (outbox bytes) plus replay chunks
    /// handed to the HTTP server and not yet written to a socket. Each
    /// connection holds at most its budget ([`SseConfig::outbox`]'s
    /// `max_bytes`, raised to fit the bus's largest event) of either. Visits
    /// every connection: for diagnostics and tests, not for a hot path.
    pub fn buffered_bytes(&self) -> usize {
        self.inner.hub.queued_bytes() + self.inner.replay_held.load(Ordering::Acquire)
    }

    /// Takes a place under `max_connections`, or refuses.
    fn admit(&self) -> Result<Slot, SseError> {
        let max = self.inner.config.max_connections;
        self.inner
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Slot(self.inner.active.clone()))
            .map_err(|_| SseError::OverCapacity(max))
    }

    /// `GET /api/v1/events`, `GET /api/v1/events/stream` and
    /// `GET /api/v1/events/history`, for any host state.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        let stream = {
            let ep = self.clone();
            move |req: Request| {
                let ep = ep.clone();
                async move { ep.serve_stream(req).await }
            }
        };
        let history = {
            let ep = self.clone();
            move |req: Request| {
                let ep = ep.clone();
                async move { ep.serve_history(req).await }
            }
        };
        let [events, alias] = Self::STREAM_PATHS;
        Router::new()
            .route(events, get(stream.clone()))
            .route(alias, get(stream))
            .route("/api/v1/events/history", get(history))
    }

    async fn authenticate(
        &self,
        headers: &HeaderMap,
        query: &Query,
    ) -> Result<Principal, SseError> {
        let creds = Credentials::from_headers(headers, query.get("token"));
        Ok(self.inner.auth.authenticate(&creds).await?)
    }

    fn filter(
        &self,
        headers: &HeaderMap,
        query: &Query,
        principal: &Principal,
    ) -> Result<EventFilter, SseError> {
        let memory = query.memory(headers)?;
        let filter = EventFilter::parse_with_json(
            FilterParams {
                events: query.get("events"),
                types: query.get("types"),
                entity_id: query.get("entity_id"),
                memory,
                topics: query.get("topics"),
            },
            query.get("filter"),
        )?;
        if let Some(m) = filter.memory()
            && !principal.memories.allows(m)
        {
            return Err(SseError::Forbidden(format!(
                "no access to memory {:?}",
                crate::error::truncate(m)
            )));
        }
        Ok(filter)
    }

    async fn serve_stream(self, req: Request) -> Response {
        match self.open_stream(req).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn open_stream(&self, req: Request) -> Result<Response, SseError> {
        let inner = &self.inner;
        let headers = req.headers();
        let query = Query::parse(req.uri())?;
        let format = query.format(inner.config.format)?;
        let heartbeat = query.heartbeat(inner.config.heartbeat)?;
        let max_rate = query.max_rate(inner.config.max_rate)?;
        let limits = query.outbox(inner.config.outbox, inner.bus.max_event_bytes())?;
        let encoding = query.encoding(headers, inner.config.compression)?;
        let principal = self.authenticate(headers, &query).await?;
        let filter = self.filter(headers, &query, &principal)?;
        let cursor = query.last_event_id(headers);
        let named = crate::consumer::request(&query, &filter, &principal, cursor.as_deref())?;
        let slot = self.admit()?;
        let remote = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        if let Some(named) = named {
            // A consumer reads at the pace of its acks and its read-ahead
            // bound; a rate limit would only hold its deliveries back.
            // Their read-ahead is the consumer's own bound, not the outbox.
            for param in ["max_rate", "buffer_max_bytes"] {
                if let Some(raw) = query.get(param) {
                    return Err(SseError::param(
                        param,
                        raw,
                        "does not apply to `consumer` or `group` streams (their read-ahead is bounded by CONSUMER_MAX_ACK_PENDING)",
                    ));
                }
            }
            let member = crate::consumer::attach(inner.consumers.as_ref(), named).await?;
            let guard = inner.registry.register(Transport::Sse, remote, &principal);
            if guard.is_closing() {
                return Err(SseError::ShuttingDown);
            }
            let guard = Arc::new(guard);
            let mut first = BytesMut::new();
            frame::write_retry(&mut first, inner.config.retry_ms);
            self.write_status(&mut first, format).await;
            // Ends when the connection is kicked or the member closed (taken
            // over by a newer connection, the consumer deleted).
            let closed = {
                let (g, member_closed) = (guard.clone(), member.closed());
                Box::pin(async move {
                    tokio::select! {
                        () = g.closed() => {}
                        () = member_closed => {}
                    }
                })
            };
            let feed = crate::consumer::ConsumerFeed::new(member, slot, inner.bus.clone());
            return Ok(self.respond(feed, (format, encoding), heartbeat, first, closed, guard));
        }

        let options = SubscribeOptions {
            filter,
            principal: principal.clone(),
            // However the host set the budget (or the client lowered it),
            // it holds the largest event the bus lets through (twice), so
            // one event never drops a reader.
            limits,
            // A client that falls behind keeps the latest state: the
            // excess is counted in `events.lagged`, then the latest
            // `JobProgress` per job, `QueueStatus` and job ends follow.
            policy: OverflowPolicy::Coalesce,
            wire: match format {
                Format::V1 => WireForm::Flat,
                Format::Envelope => WireForm::Envelope,
            },
        };
        // Subscribe to live delivery before reading the ring: an event
        // published meanwhile lands in the outbox and maybe in the replay
        // too, and the feed drops the second copy by sequence. A cursor the
        // ring can serve is replayed first and subscribes when it has caught
        // up (see `feed`).
        let ring_start = cursor
            .as_deref()
            .and_then(|raw| Cursor::parse(raw).ok())
            .and_then(|c| inner.bus.resolve_cursor(&c).ok());
        let early_sub = match ring_start {
            Some(_) => None,
            None => Some(inner.hub.subscribe(options.clone())),
        };

        // Registered after subscribing: a listed connection receives events.
        let guard = inner.registry.register(Transport::Sse, remote, &principal);
        if guard.is_closing() {
            return Err(SseError::ShuttingDown);
        }
        let guard = Arc::new(guard);
        let mut first = BytesMut::new();
        frame::write_retry(&mut first, inner.config.retry_ms);
        let start = match (cursor, ring_start, early_sub) {
            (Some(raw), Some(after), _) => {
                inner.replays.add(1, &[KeyValue::new("replay", "served")]);
                Start::Ring {
                    after,
                    raw: crate::error::truncate(&raw),
                }
            }
            (Some(raw), None, Some(sub)) => {
                match self.replay_from_source(&raw, &options.filter).await {
                    Some(replayed) => {
                        inner.replays.add(1, &[KeyValue::new("replay", "served")]);
                        Start::Source {
                            sub,
                            events: replayed.events,
                            through: replayed.through,
                            hold: replayed.hold,
                        }
                    }
                    None => {
                        inner.replays.add(1, &[KeyValue::new("replay", "expired")]);
                        frame::write_resync(&mut first, &crate::error::truncate(&raw));
                        Start::Live(sub)
                    }
                }
            }
            (None, _, Some(sub)) => Start::Live(sub),
            // A ring start never subscribes early; anything else did.
            (_, _, None) => Start::Live(inner.hub.subscribe(options.clone())),
        };
        self.write_status(&mut first, format).await;

        let closed = {
            let g = guard.clone();
            Box::pin(async move { g.closed().await })
        };
        let feed = HubFeed::new(
            inner.bus.clone(),
            inner.hub.clone(),
            options,
            format,
            start,
            &inner.replay_held,
            slot,
        )
        .paced(max_rate);
        Ok(self.respond(feed, (format, encoding), heartbeat, first, closed, guard))
    }

    /// The `200` whose body streams `feed` after `first`, in `format` and
    /// the negotiated encoding.
    fn respond<F: crate::stream::Feed>(
        &self,
        feed: F,
        (format, encoding): (Format, Option<Encoding>),
        heartbeat: Duration,
        first: BytesMut,
        closed: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        guard: Arc<event_core::ConnectionGuard>,
    ) -> Response {
        let conn = Connection::new(
            feed,
            StreamSettings {
                format,
                heartbeat,
                stall_timeout: self.inner.config.stall_timeout,
                encoding,
            },
            first.freeze(),
            closed,
            Some(self.inner.metrics.clone()),
            Some(guard),
        );
        sse_response(
            Body::from_stream(conn.into_stream()),
            encoding,
            !self.inner.config.compression.is_off(),
        )
    }

    /// The connection confirmation: the current `QueueStatus`.
    async fn write_status(&self, out: &mut BytesMut, format: Format) {
        let inner = &self.inner;
        // A slow host provider must not hold back the response headers.
        let status = match tokio::time::timeout(
            QUEUE_SNAPSHOT_TIMEOUT,
            current_queue_status(&inner.bus, inner.queue.as_deref()),
        )
        .await
        {
            Ok(status) => status,
            Err(_) => {
                tracing::warn!("queue snapshot timed out; using the last published status");
                current_queue_status(&inner.bus, None).await
            }
        };
        write_queue_status(out, format, ServerEvent::QueueStatus(status));
    }

    /// For a cursor the ring cannot serve: the replay source's events after
    /// it, if there is a source and it can (the hub subscription is already
    /// open, so live events up to `through` are skipped there).
    async fn replay_from_source(&self, raw: &str, filter: &EventFilter) -> Option<Replayed> {
        let cursor = Cursor::parse(raw).ok()?;
        let source = self.inner.replay_source.as_ref()?;
        match source.replay_matching(&cursor, filter).await {
            Ok(replayed) => {
                tracing::debug!(
                    events = replayed.events.len(),
                    "SSE cursor served by the replay source"
                );
                Some(replayed)
            }
            Err(miss) => {
                tracing::debug!(reason = miss.as_str(), "SSE cursor cannot be replayed");
                None
            }
        }
    }

    async fn serve_history(self, req: Request) -> Response {
        match self.history(req).await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        }
    }

    async fn history(&self, req: Request) -> Result<Response, SseError> {
        let headers = req.headers();
        let query = Query::parse(req.uri())?;
        let principal = self.authenticate(headers, &query).await?;
        let filter = self.filter(headers, &query, &principal)?;
        let limit = match query.get("limit") {
            None => self.inner.config.history_default_limit,
            Some(raw) => match raw.trim().parse::<usize>() {
                Ok(n) if n > 0 => n,
                _ => return Err(SseError::param("limit", raw, "expected a positive integer")),
            },
        }
        .min(MAX_HISTORY_LIMIT);
        let since = match query.get("since").filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(raw) => Some(Cursor::parse(raw).map_err(|_| {
                SseError::param("since", raw, "expected a sequence number or an event UUID")
            })?),
        };
        let missed = |miss| match miss {
            ReplayMiss::Expired => {
                SseError::CursorExpired(since.map(|c| c.to_string()).unwrap_or_default())
            }
            ReplayMiss::Unknown => SseError::param(
                "since",
                &since.map(|c| c.to_string()).unwrap_or_default(),
                "no such event",
            ),
        };
        let from_ring = self.inner.bus.history(since.as_ref(), usize::MAX);
        // The ring answers what it holds; a longer history (the event log,
        // JetStream) answers the rest, and a page from the start begins at
        // its oldest event rather than the ring's.
        let events = match (&self.inner.replay_source, from_ring) {
            (None, ring) => ring.map_err(missed)?,
            (Some(_), Ok(events)) if since.is_some() => events,
            (Some(source), ring) => match source
                .history_matching(since.as_ref(), MAX_HISTORY_SCAN, &filter)
                .await
            {
                Ok(events) => events,
                Err(_) if since.is_none() => ring.map_err(missed)?,
                Err(miss) => return Err(missed(miss)),
            },
        };
        let offset = match query.get("offset") {
            None => 0,
            Some(raw) => raw.trim().parse::<usize>().map_err(|_| {
                SseError::param("offset", raw, "expected a whole number of events to skip")
            })?,
        };
        // `until`: the last event wanted (inclusive), by either id form.
        let end = match query.get("until").filter(|s| !s.trim().is_empty()) {
            None => events.len(),
            Some(raw) => match Cursor::parse(raw) {
                Ok(Cursor::Seq(seq)) => events.partition_point(|ev| ev.seq() <= seq),
                Ok(Cursor::Id(id)) => match events.iter().position(|ev| ev.id() == id) {
                    Some(at) => at + 1,
                    None => {
                        return Err(SseError::param(
                            "until",
                            raw,
                            "no such event after `since` among the retained ones",
                        ));
                    }
                },
                Err(_) => {
                    return Err(SseError::param(
                        "until",
                        raw,
                        "expected a sequence number or an event UUID",
                    ));
                }
            },
        };
        let mut body = BytesMut::with_capacity(2 + limit.min(end) * 256);
        body.extend_from_slice(b"[");
        let visible = events[..end]
            .iter()
            .filter(|ev| filter.matches(ev) && principal.can_see(ev))
            .skip(offset)
            .take(limit);
        for (i, ev) in visible.enumerate() {
            if i > 0 {
                body.extend_from_slice(b",");
            }
            body.extend_from_slice(ev.envelope_json());
        }
        body.extend_from_slice(b"]");
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body.freeze(),
        )
            .into_response())
    }
}

/// The connection confirmation: a `QueueStatus` without `id:`.
fn write_queue_status(out: &mut BytesMut, format: Format, status: ServerEvent) {
    match format {
        Format::V1 => {
            let data = serde_json::to_vec(&status).unwrap_or_default();
            frame::write_synthetic(out, status.type_name(), &data);
        }
        Format::Envelope => {
            let envelope = Envelope {
                event_id: Uuid::now_v7(),
                event_type: status.dot_name().to_owned(),
                occurred_at: time::OffsetDateTime::now_utc(),
                actor: event_core::Actor::system(),
                memory: None,
                tenant_id: None,
                entity_type: None,
                entity_id: None,
                correlation_id: None,
                causation_id: None,
                topic: None,
                trace_id: None,
                traceparent: None,
                tracestate: None,
                payload_version: 1,
                payload: status,
            };
            let data = serde_json::to_vec(&envelope).unwrap_or_default();
            frame::write_synthetic(out, &envelope.event_type, &data);
        }
    }
}

/// A `200 text/event-stream` response with the headers of docs/protocol.md
/// §3: `Content-Encoding` when compressed, and `Vary: Accept-Encoding` when
/// the server compresses for clients that ask (`varies`).
pub(crate) fn sse_response(body: Body, encoding: Option<Encoding>, varies: bool) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    // Sized for these: hyper keeps a response's header map for the
    // connection's life (to parse the next request into), and the default
    // first allocation is larger.
    *response.headers_mut() = HeaderMap::with_capacity(3 + usize::from(varies) * 2);
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(encoding) = encoding {
        h.insert(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(encoding.as_str()),
        );
    }
    if varies {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    response
}
