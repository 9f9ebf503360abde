//! One `mount_*` per Cargo feature: each adds its routes, sinks and
//! parts to the [`Assembly`], and [`App::build`](super::App::build) calls
//! it behind that feature's single `cfg`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::Method;
#[cfg(not(feature = "telemetry"))]
use axum::routing::get;
use axum::routing::post;
use event_core::{Authenticator, ConnectionRegistry, EventBus, QueueSnapshot, SinkRunner};
use tokio_util::sync::CancellationToken;

use super::Parts;
use crate::config::Config;
use crate::connections::{self, ConnectionsState};
use crate::db::Db;
use crate::dedup::Dedup;
use crate::guard::{self, BodyLimits, Need, RouteGuard};
use crate::publish::{self, PublishState};
use crate::rate::{self, RateGuard};
use crate::slots::Slots;
use crate::slots::stream::StreamRoutes;

/// What the mounts share while the app is put together.
pub(super) struct Assembly<'c> {
    pub config: &'c Config,
    pub bus: EventBus,
    pub registry: ConnectionRegistry,
    pub auth: Arc<dyn Authenticator>,
    pub db: Db,
    pub runner: SinkRunner,
    pub cancel: CancellationToken,
    pub parts: Parts,
    pub router: Router,
    /// The queue status transports send on connect and `refresh`; set by
    /// `mount_jobs`, so it goes before the transports.
    #[cfg_attr(
        not(any(feature = "ws", feature = "sse", feature = "mcp")),
        allow(dead_code, reason = "only the transports send it")
    )]
    pub queue: Option<Arc<dyn QueueSnapshot>>,
    /// The connection slots; the transports admit their internal tokens.
    pub slots: Slots,
    /// The transports' routers, which slot streams are opened through.
    pub streams: StreamRoutes,
    /// The intake runtime (`INTAKE_THREADS`), which serves the REST
    /// requests; `None` when they share the main runtime.
    #[cfg_attr(
        not(feature = "webhook"),
        allow(dead_code, reason = "the webhook API opens its store there")
    )]
    pub intake: Option<tokio::runtime::Handle>,
}

impl Assembly<'_> {
    /// Where cursors older than the ring are served from: the cluster's
    /// stream, else the event log.
    #[cfg_attr(not(feature = "sse"), allow(dead_code, reason = "SSE replays"))]
    fn replay_source(&self) -> Option<Arc<dyn event_core::ReplaySource>> {
        if let Some(source) = self.parts.cluster.replay_source() {
            return Some(source);
        }
        #[cfg(feature = "log")]
        if let Some(source) = self.parts.log.as_ref().and_then(|l| l.replay_source()) {
            return Some(source);
        }
        None
    }

    /// What the transports authenticate with: the host's authenticator,
    /// also admitting the internal tokens of opened slots.
    #[cfg_attr(
        not(any(feature = "ws", feature = "sse")),
        allow(dead_code, reason = "the transports use it")
    )]
    fn stream_auth(&self) -> Arc<dyn Authenticator> {
        Arc::new(event_core::WithOneTimeTokens::new(
            self.auth.clone(),
            self.slots.grants(),
        ))
    }

    fn merge(&mut self, routes: Router) {
        self.router = std::mem::take(&mut self.router).merge(routes);
    }

    /// A body bound of `max_bytes` within the configured body timeout.
    fn body(&self, max_bytes: usize) -> Option<BodyLimits> {
        Some(BodyLimits {
            max_bytes,
            timeout: Duration::from_secs(self.config.http_body_timeout_secs),
        })
    }

    /// `routes` behind the host's guards: the principal `need`s decided from
    /// the request head, then the producer's `rate`, then (for routes that
    /// take a body) the whole body read within `body` — in that order, so a
    /// refused request's body is never read.
    fn guarded(
        &self,
        routes: Router,
        need: Need,
        rate: Option<RateGuard>,
        body: Option<BodyLimits>,
    ) -> Router {
        let routes = match body {
            Some(limits) => routes.route_layer(axum::middleware::from_fn_with_state(
                limits,
                guard::read_body,
            )),
            None => routes,
        };
        let routes = match rate {
            Some(rate) => {
                routes.route_layer(axum::middleware::from_fn_with_state(rate, rate::limit))
            }
            None => routes,
        };
        routes.route_layer(axum::middleware::from_fn_with_state(
            RouteGuard::new(self.auth.clone(), need),
            guard::authorize,
        ))
    }

    /// In every build: the dashboard page and its assets and the publish
    /// API.
    pub(super) fn mount_core(&mut self) {
        let publish = Router::new().route(
            "/api/v1/events",
            post(publish::publish).with_state(PublishState {
                bus: self.bus.clone(),
                auth: self.auth.clone(),
                dedup: (self.config.dedup_window_secs > 0).then(|| {
                    Arc::new(Dedup::new(
                        Duration::from_secs(self.config.dedup_window_secs),
                        self.config.dedup_max_keys,
                    ))
                }),
                ack_timeout: Duration::from_millis(self.config.nats_publish_timeout_ms as u64),
            }),
        );
        let rate = RateGuard::per_second(
            "PUBLISH_MAX_RATE",
            self.config.publish_max_rate,
            |method, _| *method == Method::POST,
        );
        let publish = self.guarded(
            publish,
            Need::Admin,
            rate,
            self.body(self.config.publish_max_body_bytes),
        );
        self.merge(
            Router::new()
                .merge(crate::dashboard::router())
                .merge(publish),
        );
        // Mounted whenever the build has the log: without one at run time
        // (EVENT_LOG=off) they answer `410 log_off`; in cluster mode they
        // serve the JetStream stream (durable::for_cluster).
        #[cfg(feature = "log")]
        {
            let log = self.parts.log.as_ref();
            let consumers = log.map(|l| l.consumers());
            let topics = self.guarded(
                crate::topics::router(log.map(|l| l.log())),
                Need::Admin,
                None,
                self.body(crate::topics::MAX_BODY_BYTES),
            );
            let admin = self.guarded(
                crate::consumers::admin_router(consumers.clone()),
                Need::Admin,
                None,
                None,
            );
            let ack = self.guarded(
                crate::consumers::ack_router(consumers),
                Need::Client,
                None,
                self.body(crate::consumers::MAX_ACK_BODY_BYTES),
            );
            self.merge(topics.merge(admin).merge(ack));
        }
    }

    /// The connections API and the slot streams, after the transports
    /// (a slot's stream is opened through their routers).
    pub(super) fn mount_connections(&mut self) {
        let routes = self.guarded(
            connections::router(ConnectionsState {
                registry: self.registry.clone(),
                slots: self.slots.clone(),
            }),
            Need::Client,
            None,
            self.body(connections::MAX_BODY_BYTES),
        );
        let streams = crate::slots::stream::router(self.streams.clone());
        self.merge(routes.merge(streams));
    }

    /// Jobs: the bridge turns worker events into job events and keeps the
    /// queue status the transports send.
    #[cfg(feature = "jobs")]
    pub(super) async fn mount_jobs(&mut self) -> Result<(), crate::error::ServerError> {
        use event_bridge_jobs::{JobBridge, JobBridgeConfig};
        let config = JobBridgeConfig {
            queue_status_tick: Duration::from_millis(self.config.queue_status_tick_ms),
            ..JobBridgeConfig::default()
        };
        let bridge = JobBridge::new(&self.bus, &self.registry, config)
            .with_cancellation(self.cancel.child_token());
        let bridge = self.start_worker(bridge).await?;
        self.queue = Some(bridge.queue_snapshot());
        self.parts.bridge = Some(bridge);
        Ok(())
    }

    /// The demo: notes, a simulated worker feeding the bridge, and their
    /// routes (writes need the admin token).
    #[cfg(feature = "demo")]
    async fn start_worker(
        &mut self,
        bridge: event_bridge_jobs::JobBridge,
    ) -> Result<event_bridge_jobs::JobBridgeHandle, crate::error::ServerError> {
        use crate::demo::{jobs, notes, store};
        use event_bridge_jobs::simulator::{SimulatedWorker, SimulatorConfig};
        store::migrate(&self.db).await?;
        let notes = notes::NotesState {
            db: self.db.clone(),
            bus: self.bus.clone(),
        };
        let worker = Arc::new(SimulatedWorker::start(SimulatorConfig::default()));
        jobs::install_hooks(&worker, notes.clone());
        let note_routes = self.guarded(
            notes::router(notes),
            Need::AdminToWrite,
            None,
            self.body(notes::MAX_BODY_BYTES),
        );
        let job_routes = self.guarded(
            jobs::router(jobs::JobsState {
                worker: worker.clone(),
                max_queued: self.config.demo_max_queued_jobs,
            }),
            Need::AdminToWrite,
            None,
            self.body(jobs::MAX_BODY_BYTES),
        );
        self.merge(note_routes.merge(job_routes));
        let handle = bridge
            .with_queue_stats(worker.stats_source())
            .spawn(worker.subscribe());
        self.parts.simulator = Some(worker);
        Ok(handle)
    }

    /// No worker in this process: in-process producers send through
    /// [`App::worker_events`](super::App::worker_events).
    #[cfg(all(feature = "jobs", not(feature = "demo")))]
    async fn start_worker(
        &mut self,
        bridge: event_bridge_jobs::JobBridge,
    ) -> Result<event_bridge_jobs::JobBridgeHandle, crate::error::ServerError> {
        let (tx, rx) = tokio::sync::broadcast::channel(1024);
        self.parts.worker_events = Some(tx);
        Ok(bridge.spawn(rx))
    }

    /// WebSocket at `/api/v1/ws`.
    #[cfg(feature = "ws")]
    pub(super) fn mount_ws(&mut self) {
        let config = event_ws::WsConfig {
            ping_interval: self.config.ws_ping_interval(),
            idle_timeout: self.config.ws_idle_timeout(),
            max_connections: self.config.max_connections,
            allowed_origins: self.config.allowed_origins.clone(),
            max_rate: self.config.stream_max_rate(),
            compression: self.config.ws_compression,
            compress_min_bytes: self.config.ws_compress_min_bytes,
            write_timeout: Duration::from_secs(self.config.ws_write_timeout_secs),
            ..event_ws::WsConfig::default()
        };
        let mut ws = event_ws::WsEndpoint::new(
            self.bus.clone(),
            self.registry.clone(),
            self.stream_auth(),
            config,
        )
        .with_shutdown(self.cancel.clone());
        if let Some(q) = &self.queue {
            ws = ws.with_queue_snapshot(q.clone());
        }
        #[cfg(feature = "log")]
        if let Some(log) = &self.parts.log {
            ws = ws.with_consumers(log.consumers());
        }
        self.runner.register(ws.sink());
        let router = ws.router();
        self.streams.ws = Some(router.clone());
        self.merge(router);
    }

    /// SSE at `/api/v1/events`; cursors older than the ring are replayed
    /// from JetStream in a cluster, else from the event log.
    #[cfg(feature = "sse")]
    pub(super) fn mount_sse(&mut self) {
        let format = match self.config.sse_default_format {
            crate::config::SseFormat::V1 => event_sse::Format::V1,
            crate::config::SseFormat::Envelope => event_sse::Format::Envelope,
        };
        let config = event_sse::SseConfig {
            format,
            max_connections: self.config.max_connections,
            retry_ms: self.config.sse_retry_ms,
            max_rate: self.config.stream_max_rate(),
            // Validated when the settings were read.
            compression: event_sse::Compression::parse(&self.config.sse_compression)
                .unwrap_or_default(),
            ..event_sse::SseConfig::default()
        };
        let mut sse = event_sse::SseEndpoint::new(
            self.bus.clone(),
            self.registry.clone(),
            self.stream_auth(),
            config,
        );
        if let Some(q) = &self.queue {
            sse = sse.with_queue_snapshot(q.clone());
        }
        if let Some(source) = self.replay_source() {
            sse = sse.with_replay_source(source);
        }
        #[cfg(feature = "log")]
        if let Some(log) = &self.parts.log {
            sse = sse.with_consumers(log.consumers());
        }
        self.runner.register(sse.sink());
        let router = sse.router();
        self.streams.sse = Some(router.clone());
        self.merge(router);
    }

    /// MCP for AI agents at `/mcp`: its own auth (bearer, from the head),
    /// limits and connection entries (transport `mcp`); the site guard
    /// checks `Host`, so the SDK's own check is off.
    #[cfg(feature = "mcp")]
    pub(super) fn mount_mcp(&mut self) {
        let c = self.config;
        let config = event_mcp::McpConfig {
            update_interval: Duration::from_millis(c.mcp_update_interval_ms as u64),
            max_sessions: c.mcp_max_sessions,
            session_idle: Duration::from_secs(c.mcp_session_idle_secs),
            session_queue: c.mcp_session_queue,
            max_body_bytes: c.publish_max_body_bytes,
            body_timeout: Duration::from_secs(c.http_body_timeout_secs),
            allowed_hosts: None,
            ..event_mcp::McpConfig::default()
        };
        let mut mcp = event_mcp::McpEndpoint::new(
            self.bus.clone(),
            self.registry.clone(),
            self.auth.clone(),
            config,
        )
        .with_shutdown(self.cancel.clone());
        if let Some(q) = &self.queue {
            mcp = mcp.with_queue_snapshot(q.clone());
        }
        self.runner.register(mcp.sink());
        self.merge(mcp.router());
    }

    /// Webhooks: the REST API (admin), the sink and the delivery worker.
    #[cfg(feature = "webhook")]
    pub(super) async fn mount_webhooks(&mut self) -> Result<(), crate::error::ServerError> {
        let c = self.config;
        let config = event_webhook::WebhookConfig {
            signature_header: c.webhook_signature_header.clone(),
            retry_schedule: c.webhook_retry_schedule.0.clone(),
            request_timeout: Duration::from_secs(c.webhook_timeout_secs),
            lease: Duration::from_secs(c.webhook_lease_secs),
            allow_cidrs: c.webhook_allow_cidrs.clone(),
            max_webhooks: c.webhook_max_count,
            handoff_hold: usize::try_from(c.webhook_handoff_hold).unwrap_or(usize::MAX),
            max_concurrency: usize::try_from(c.webhook_concurrency).unwrap_or(usize::MAX),
            per_endpoint_concurrency: usize::try_from(c.webhook_endpoint_concurrency)
                .unwrap_or(usize::MAX),
            secret_keys: match &c.webhook_secret_key {
                Some(keys) => event_webhook::SecretKey::parse_list(keys).map_err(|e| {
                    crate::error::ServerError::Startup(format!("WEBHOOK_SECRET_KEY: {e}"))
                })?,
                None => Vec::new(),
            },
            ..event_webhook::WebhookConfig::default()
        };
        let webhooks = event_webhook::Webhooks::connect(&c.database_url, self.auth.clone(), config)
            .await
            .map_err(|e| crate::error::ServerError::Startup(format!("webhooks: {e}")))?;
        // In a cluster every instance sees every event: with a queue the
        // instances share (PostgreSQL), the shared work queue derives each
        // event's deliveries on one of them and acknowledges it once they
        // are committed, so an instance killed after a `202` loses none;
        // the sink then queues only the events this instance delivered
        // locally only (NATS away), which never reach the stream. A store
        // of the instance's own (SQLite) keeps each instance to the events
        // published on it, as before.
        let cluster = &self.parts.cluster;
        if cluster.is_active() && !webhooks.store().shared_queue() {
            tracing::warn!(
                "webhooks in cluster mode need a DATABASE_URL all instances share (PostgreSQL): with this store each instance queues only the events published on it, and loses them if it is killed first"
            );
        }
        self.parts.webhook_queue = match webhooks.store().shared_queue() {
            true => cluster.webhook_queue(&webhooks, c).await?,
            false => None,
        };
        let sink = match self.parts.webhook_queue.is_some() {
            true => cluster.local_only_events(webhooks.sink()),
            false => cluster.local_origin_only(webhooks.sink()),
        };
        self.runner.register(sink);
        // The crate checks the admin token itself; the host's guard decides
        // it from the head as well, before a body is read. Registrations
        // (not the other writes) count against WEBHOOK_CREATE_MAX_RATE.
        let rate = RateGuard::per_second(
            "WEBHOOK_CREATE_MAX_RATE",
            c.webhook_create_max_rate,
            |method, path| *method == Method::POST && path == "/api/v1/webhooks",
        );
        // The API is served on the intake: its PostgreSQL connections are
        // opened there too, so that they are served by the intake's I/O
        // driver, not the main runtime's, busy with the fan-out
        // (`Webhooks::serve_api_from`).
        if let (Some(intake), true) = (&self.intake, webhooks.store().engine() == "postgres") {
            let url = c.database_url.clone();
            let startup = |e: &dyn std::fmt::Display| {
                crate::error::ServerError::Startup(format!("webhooks: the API's store: {e}"))
            };
            intake
                .spawn(async move { event_webhook::store::connect(&url).await })
                .await
                .map_err(|e| startup(&e))?
                .and_then(|store| webhooks.serve_api_from(store))
                .map_err(|e| startup(&e))?;
        }
        let routes = self.guarded(webhooks.router(), Need::Admin, rate, None);
        self.merge(routes);
        let worker = webhooks.start_worker(self.cancel.child_token());
        // Deliveries of events an earlier process acknowledged but did not
        // queue (killed in between) are derived from the event log.
        #[cfg(feature = "log")]
        if let Some(source) = self.parts.log.as_ref().and_then(|l| l.replay_source()) {
            let webhooks = webhooks.clone();
            let until = self.bus.first_seq().saturating_sub(1);
            tokio::spawn(async move {
                if let Err(error) = webhooks.catch_up(source, until).await {
                    tracing::error!(%error, "webhook catch-up from the event log failed; the next start retries");
                }
            });
        }
        self.parts.webhooks = Some((webhooks, worker));
        Ok(())
    }

    /// The API's contracts, `/api/v1/asyncapi.json` and
    /// `/api/v1/openapi.json`: no credentials (they describe the API and
    /// carry no data; the site guard still applies).
    #[cfg(feature = "contracts")]
    pub(super) fn mount_contracts(&mut self) {
        self.merge(crate::contracts::router(
            crate::contracts::Mounted::this_build(),
        ));
    }

    /// The tracing mirror sink, `/metrics` and `/health` with its
    /// components.
    #[cfg(feature = "telemetry")]
    pub(super) fn mount_telemetry(&mut self, metrics: event_telemetry::PrometheusMetrics) {
        self.runner
            .register(event_telemetry::TelemetrySink::new().into_sink());
        let health = event_telemetry::Health::new(self.registry.clone())
            .component("database", crate::telemetry::DbCheck(self.db.clone()));
        let health = self.parts.cluster.health(health);
        self.merge(metrics.router().merge(health.router()));
    }

    /// `GET /api/v1/stats` and `GET /api/v1/stats/stream` (any token): the
    /// counters the dashboard's charts show, read from `metrics` when the
    /// build has telemetry; the stream ends at shutdown.
    pub(super) fn mount_stats(
        &mut self,
        #[cfg(feature = "telemetry")] metrics: event_telemetry::PrometheusMetrics,
    ) {
        use crate::dashboard::stats::{self, StatsState};
        use crate::dashboard::stats_stream::{StatsHub, StatsStreamLimits};
        let state = StatsState {
            registry: self.registry.clone(),
            #[cfg(feature = "telemetry")]
            metrics,
        };
        let hub = StatsHub::new(
            state.clone(),
            StatsStreamLimits {
                interval: Duration::from_millis(self.config.stats_stream_interval_ms),
                max_streams: self.config.stats_stream_max,
            },
            self.cancel.clone(),
        );
        let routes = self.guarded(stats::router(state, hub), Need::Client, None, None);
        self.merge(routes);
    }

    /// A plain `/health` (connections and the database) without telemetry.
    #[cfg(not(feature = "telemetry"))]
    pub(super) fn mount_plain_health(&mut self) {
        let health = Router::new().route(
            "/health",
            get(crate::health::plain).with_state(crate::health::PlainHealth {
                registry: self.registry.clone(),
                db: self.db.clone(),
            }),
        );
        self.merge(health);
    }

    /// The outer layers every route shares, outermost last: CORS, then the
    /// media-type check, then the site check, so refused sites and media
    /// types never reach a route.
    pub(super) fn finish_router(&mut self) {
        let mut router = std::mem::take(&mut self.router);
        if !self.config.allowed_origins.is_empty() {
            router = router.layer(crate::cors::layer(&self.config.allowed_origins));
        }
        self.router = router
            .layer(axum::middleware::from_fn(guard::require_json))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(guard::SiteGuard::from_config(self.config)),
                guard::check_site,
            ))
            .fallback(crate::error::not_found);
    }
}
