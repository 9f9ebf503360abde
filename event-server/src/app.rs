//! Assembly: one bus, the sinks the Cargo features select, their routers.
//!
//! [`App::build`] does everything that can fail at start-up (database,
//! migrations, configuration the crates check) before a socket is bound, so
//! a bad setting stops the server with one clear line. [`App::serve`] serves
//! the router with `event_http::serve` until the shutdown signal, which
//! closes WebSockets with 1001 and ends SSE streams; then it drains the
//! sinks and stops the background workers within [`SHUTDOWN_DEADLINE`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use event_core::{
    AllowAnonymous, Authenticator, BusConfig, ConnectionRegistry, EventBus, SinkRunner,
    StaticTokens,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::connections::{self, ConnectionsState};
use crate::db::Db;
use crate::error::ServerError;
use crate::guard::{self, BodyLimits, Need, RouteGuard};
use crate::publish::{self, PublishState};

/// How long a graceful shutdown may take before the rest is aborted.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(4);

/// A built server, ready to serve.
pub struct App {
    router: Router,
    bus: EventBus,
    registry: ConnectionRegistry,
    runner: SinkRunner,
    db: Db,
    cancel: CancellationToken,
    background: Vec<JoinHandle<()>>,
    parts: Parts,
    caps: event_http::ConnectionCaps,
    head_timeout: Duration,
}

/// The feature-selected pieces that need an orderly stop.
#[derive(Default)]
struct Parts {
    #[cfg(feature = "jobs")]
    bridge: Option<event_bridge_jobs::JobBridgeHandle>,
    #[cfg(feature = "jobs")]
    worker_events: Option<tokio::sync::broadcast::Sender<event_bridge_jobs::WorkerEvent>>,
    #[cfg(feature = "demo")]
    simulator: Option<Arc<event_bridge_jobs::simulator::SimulatedWorker>>,
    #[cfg(feature = "webhook")]
    webhooks: Option<(event_webhook::Webhooks, event_webhook::DeliveryWorker)>,
    #[cfg(feature = "nats")]
    cluster: Option<event_nats::NatsCluster>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("bus", &self.bus)
            .field("connections", &self.registry.total())
            .finish_non_exhaustive()
    }
}

impl Parts {
    /// Stops the worker, the bridge and the webhook deliveries, in that
    /// order (the bridge publishes what the worker's stop reports).
    async fn stop(self) {
        #[cfg(feature = "demo")]
        if let Some(worker) = self.simulator {
            worker.shutdown().await;
        }
        #[cfg(feature = "jobs")]
        {
            drop(self.worker_events);
            if let Some(bridge) = self.bridge {
                let _ = tokio::time::timeout(Duration::from_secs(1), bridge.shutdown()).await;
            }
        }
        #[cfg(feature = "webhook")]
        if let Some((_, worker)) = self.webhooks
            && !worker.shutdown(Duration::from_secs(2)).await
        {
            tracing::warn!(
                "webhook deliveries in flight at shutdown are retried at the next start"
            );
        }
    }
}

/// The authenticator the configuration asks for: tokens when any is set,
/// anonymous local mode otherwise.
pub fn authenticator(config: &Config) -> Arc<dyn Authenticator> {
    if !config.auth_enabled() {
        return Arc::new(AllowAnonymous);
    }
    let mut tokens = StaticTokens::new();
    if let Some(admin) = &config.auth_admin_token {
        tokens = tokens.admin(admin);
    }
    for client in &config.auth_client_tokens {
        tokens = tokens.client(client.trim());
    }
    Arc::new(tokens)
}

/// `routes` behind the host's guards: the principal `need`s decided from the
/// request head, then (for routes that take a body) the whole body read
/// within `body` — in that order, so a refused request's body is never read.
fn guarded(
    routes: Router,
    auth: &Arc<dyn Authenticator>,
    need: Need,
    body: Option<BodyLimits>,
) -> Router {
    let routes = match body {
        Some(limits) => routes.route_layer(axum::middleware::from_fn_with_state(
            limits,
            guard::read_body,
        )),
        None => routes,
    };
    routes.route_layer(axum::middleware::from_fn_with_state(
        RouteGuard::new(auth.clone(), need),
        guard::authorize,
    ))
}

impl App {
    /// Builds everything the configuration and features select.
    pub async fn build(config: &Config) -> Result<App, ServerError> {
        // Instruments are created when the transports are built, so the
        // meter provider goes first.
        #[cfg(feature = "telemetry")]
        let metrics = crate::telemetry::metrics()?;
        let bus_config = BusConfig {
            capacity: config.bus_capacity,
            replay_size: config.replay_size,
            ..BusConfig::default()
        };
        // With NATS, the cluster builds the bus: every instance's bus then has
        // the same order, sequence numbers and ids (see event-nats).
        #[cfg(feature = "nats")]
        let cluster = match &config.nats_url {
            Some(url) => {
                let mut nats = event_nats::NatsConfig::from_env()
                    .unwrap_or_else(|| event_nats::NatsConfig::new(url.clone()));
                nats.url.clone_from(url);
                if let Some(stream) = &config.nats_stream {
                    nats.stream.clone_from(stream);
                }
                if let Some(prefix) = &config.nats_subject_prefix {
                    nats.subject_prefix.clone_from(prefix);
                }
                let cluster = event_nats::NatsCluster::connect(nats, bus_config.clone())
                    .await
                    .map_err(|e| ServerError::Startup(format!("NATS: {e}")))?;
                Some(cluster)
            }
            None => None,
        };
        #[cfg(feature = "nats")]
        let bus = match &cluster {
            Some(c) => c.bus().clone(),
            None => EventBus::new(bus_config),
        };
        #[cfg(not(feature = "nats"))]
        let bus = EventBus::new(bus_config);
        bus.set_max_event_bytes(config.event_max_bytes)
            .map_err(|e| ServerError::Startup(format!("EVENT_MAX_BYTES: {e}")))?;
        bus.set_replay_max_bytes(config.replay_max_bytes);
        let registry = ConnectionRegistry::new();
        let auth = authenticator(config);
        let db = Db::connect(&config.database_url).await?;
        // Whether anything is registered or kept depends on the features.
        #[allow(unused_mut)]
        let mut runner = SinkRunner::new(&bus);
        let cancel = CancellationToken::new();
        let background = Vec::new();
        #[allow(unused_mut)]
        let mut parts = Parts::default();
        #[cfg(feature = "telemetry")]
        let mut health = event_telemetry::Health::new(registry.clone());

        let body_timeout = Duration::from_secs(config.http_body_timeout_secs);
        let publish_routes = guarded(
            Router::new().route(
                "/api/v1/events",
                post(publish::publish).with_state(PublishState {
                    bus: bus.clone(),
                    auth: auth.clone(),
                }),
            ),
            &auth,
            Need::Admin,
            Some(BodyLimits {
                max_bytes: config.publish_max_body_bytes,
                timeout: body_timeout,
            }),
        );
        let connection_routes = guarded(
            connections::router(ConnectionsState {
                registry: registry.clone(),
                auth: auth.clone(),
            }),
            &auth,
            Need::Admin,
            None,
        );
        let mut router = Router::new()
            .route("/", get(crate::dashboard::page))
            .merge(publish_routes)
            .merge(connection_routes);

        // Jobs: the bridge turns worker events into job events and keeps
        // the queue status the transports send on connect and `refresh`.
        #[cfg(feature = "jobs")]
        let queue: Option<Arc<dyn event_core::QueueSnapshot>> = {
            use event_bridge_jobs::{JobBridge, JobBridgeConfig};
            let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
                .with_cancellation(cancel.child_token());
            #[cfg(feature = "demo")]
            let bridge = {
                crate::demo::store::migrate(&db).await?;
                let notes = crate::demo::notes::NotesState {
                    db: db.clone(),
                    bus: bus.clone(),
                };
                let worker = Arc::new(event_bridge_jobs::simulator::SimulatedWorker::start(
                    event_bridge_jobs::simulator::SimulatorConfig::default(),
                ));
                crate::demo::jobs::install_hooks(&worker, notes.clone());
                let note_routes = guarded(
                    crate::demo::notes::router(notes),
                    &auth,
                    Need::AdminToWrite,
                    Some(BodyLimits {
                        max_bytes: crate::demo::notes::MAX_BODY_BYTES,
                        timeout: body_timeout,
                    }),
                );
                let job_routes = guarded(
                    crate::demo::jobs::router(crate::demo::jobs::JobsState {
                        worker: worker.clone(),
                        max_queued: config.demo_max_queued_jobs,
                    }),
                    &auth,
                    Need::AdminToWrite,
                    Some(BodyLimits {
                        max_bytes: crate::demo::jobs::MAX_BODY_BYTES,
                        timeout: body_timeout,
                    }),
                );
                router = router.merge(note_routes).merge(job_routes);
                let handle = bridge
                    .with_queue_stats(worker.stats_source())
                    .spawn(worker.subscribe());
                parts.simulator = Some(worker);
                handle
            };
            #[cfg(not(feature = "demo"))]
            let bridge = {
                // No worker in this process: in-process producers send
                // through `App::worker_events`.
                let (tx, rx) = tokio::sync::broadcast::channel(1024);
                parts.worker_events = Some(tx);
                bridge.spawn(rx)
            };
            let snapshot = bridge.queue_snapshot();
            parts.bridge = Some(bridge);
            Some(snapshot)
        };
        #[cfg(not(feature = "jobs"))]
        let queue: Option<Arc<dyn event_core::QueueSnapshot>> = None;

        #[cfg(feature = "ws")]
        {
            let ws_config = event_ws::WsConfig {
                ping_interval: config.ws_ping_interval(),
                idle_timeout: config.ws_idle_timeout(),
                max_connections: config.max_connections,
                allowed_origins: config.allowed_origins.clone(),
                ..event_ws::WsConfig::default()
            };
            let mut ws =
                event_ws::WsEndpoint::new(bus.clone(), registry.clone(), auth.clone(), ws_config)
                    .with_shutdown(cancel.clone());
            if let Some(q) = &queue {
                ws = ws.with_queue_snapshot(q.clone());
            }
            runner.register(ws.sink());
            router = router.merge(ws.router());
        }

        #[cfg(feature = "sse")]
        {
            let format = match config.sse_default_format {
                crate::config::SseFormat::V1 => event_sse::Format::V1,
                crate::config::SseFormat::Envelope => event_sse::Format::Envelope,
            };
            let sse_config = event_sse::SseConfig {
                format,
                max_connections: config.max_connections,
                retry_ms: config.sse_retry_ms,
                ..event_sse::SseConfig::default()
            };
            let mut sse = event_sse::SseEndpoint::new(
                bus.clone(),
                registry.clone(),
                auth.clone(),
                sse_config,
            );
            if let Some(q) = &queue {
                sse = sse.with_queue_snapshot(q.clone());
            }
            // Cursors older than the ring are replayed from JetStream.
            #[cfg(feature = "nats")]
            if let Some(c) = &cluster {
                sse = sse.with_replay_source(Arc::new(c.clone()));
            }
            runner.register(sse.sink());
            router = router.merge(sse.router());
        }
        // MCP for AI agents: its own auth (bearer, from the head), limits
        // and connection entries (transport `mcp`); the site guard above
        // checks `Host`, so the SDK's own check is off.
        #[cfg(feature = "mcp")]
        {
            let mcp_config = event_mcp::McpConfig {
                update_interval: Duration::from_millis(config.mcp_update_interval_ms as u64),
                max_sessions: config.mcp_max_sessions,
                session_idle: Duration::from_secs(config.mcp_session_idle_secs),
                session_queue: config.mcp_session_queue,
                max_body_bytes: config.publish_max_body_bytes,
                body_timeout,
                allowed_hosts: None,
                ..event_mcp::McpConfig::default()
            };
            let mut mcp = event_mcp::McpEndpoint::new(
                bus.clone(),
                registry.clone(),
                auth.clone(),
                mcp_config,
            )
            .with_shutdown(cancel.clone());
            if let Some(q) = &queue {
                mcp = mcp.with_queue_snapshot(q.clone());
            }
            runner.register(mcp.sink());
            router = router.merge(mcp.router());
        }
        let _ = &queue;

        #[cfg(feature = "webhook")]
        {
            let webhook_config = event_webhook::WebhookConfig {
                signature_header: config.webhook_signature_header.clone(),
                retry_schedule: config.webhook_retry_schedule.0.clone(),
                request_timeout: Duration::from_secs(config.webhook_timeout_secs),
                allow_cidrs: config.webhook_allow_cidrs.clone(),
                secret_keys: match &config.webhook_secret_key {
                    Some(keys) => event_webhook::SecretKey::parse_list(keys)
                        .map_err(|e| ServerError::Startup(format!("WEBHOOK_SECRET_KEY: {e}")))?,
                    None => Vec::new(),
                },
                ..event_webhook::WebhookConfig::default()
            };
            let webhooks = event_webhook::Webhooks::connect(
                &config.database_url,
                auth.clone(),
                webhook_config,
            )
            .await
            .map_err(|e| ServerError::Startup(format!("webhooks: {e}")))?;
            // In a cluster every instance sees every event; only the one it
            // originated on queues its deliveries (the queue is shared).
            #[cfg(feature = "nats")]
            let sink = match &cluster {
                Some(c) => c.local_origin_only(webhooks.sink()),
                None => webhooks.sink(),
            };
            #[cfg(not(feature = "nats"))]
            let sink = webhooks.sink();
            runner.register(sink);
            // The crate checks the admin token itself; the host's guard
            // decides it from the head as well, before a body is read.
            router = router.merge(guarded(webhooks.router(), &auth, Need::Admin, None));
            let worker = webhooks.start_worker(cancel.child_token());
            parts.webhooks = Some((webhooks, worker));
        }

        #[cfg(feature = "telemetry")]
        {
            runner.register(event_telemetry::TelemetrySink::new().into_sink());
            health = health.component("database", crate::telemetry::DbCheck(db.clone()));
            #[cfg(feature = "nats")]
            if let Some(c) = &cluster {
                let c = c.clone();
                health = health.component("nats", move || match c.state() {
                    event_nats::ConnectionState::Connected => {
                        event_telemetry::ComponentStatus::up()
                    }
                    event_nats::ConnectionState::Disconnected => {
                        event_telemetry::ComponentStatus::degraded(
                            "disconnected from NATS: serving local events only, reconnecting",
                        )
                    }
                });
            }
            router = router.merge(metrics.router()).merge(health.router());
        }
        #[cfg(not(feature = "telemetry"))]
        {
            router = router.route(
                "/health",
                get(crate::health::plain).with_state(crate::health::PlainHealth {
                    registry: registry.clone(),
                    db: db.clone(),
                }),
            );
        }

        if !config.allowed_origins.is_empty() {
            router = router.layer(crate::cors::layer(&config.allowed_origins));
        }
        // Outermost: refused sites and media types never reach a route.
        router = router
            .layer(axum::middleware::from_fn(guard::require_json))
            .layer(axum::middleware::from_fn_with_state(
                Arc::new(guard::SiteGuard::from_config(config)),
                guard::check_site,
            ));
        #[cfg(feature = "nats")]
        {
            parts.cluster = cluster;
        }
        router = router.fallback(crate::error::not_found);
        Ok(App {
            router,
            bus,
            registry,
            runner,
            db,
            cancel,
            background,
            parts,
            caps: event_http::ConnectionCaps::from_file_limit(
                config.max_open_connections,
                config.max_connections_per_ip,
            ),
            head_timeout: Duration::from_secs(config.http_head_timeout_secs),
        })
    }

    /// Where an in-process job worker sends its events (feature `jobs`
    /// without `demo`; with `demo` the simulated worker is the source).
    #[cfg(feature = "jobs")]
    pub fn worker_events(
        &self,
    ) -> Option<tokio::sync::broadcast::Sender<event_bridge_jobs::WorkerEvent>> {
        self.parts.worker_events.clone()
    }

    /// The bus (to publish from in-process producers and tests).
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    /// The connection registry.
    pub fn registry(&self) -> &ConnectionRegistry {
        &self.registry
    }

    /// The database handle.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Serves on `listener` until `signal` completes, then shuts down
    /// gracefully.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let App {
            router,
            registry,
            runner,
            cancel,
            background,
            parts,
            caps,
            head_timeout,
            ..
        } = self;
        let stop = cancel.clone();
        let on_signal = async move {
            signal.await;
            tracing::info!("shutting down");
            cancel.cancel();
        };
        // TCP_NODELAY, the connection caps, accept back-off, the head and
        // write-stall timeouts, event streams answered directly, and a
        // shutdown that ends WebSockets (1001) and SSE streams.
        let server = event_http::serve(listener, router)
            .caps(caps)
            .head_timeout(head_timeout)
            .registry(registry)
            .with_graceful_shutdown(on_signal);
        #[cfg(feature = "sse")]
        let server = server
            .stream_paths(&event_sse::SseEndpoint::STREAM_PATHS)
            .write_stall_timeout(event_sse::SseConfig::default().stall_timeout);
        server.await;
        stop.cancel();
        parts.stop().await;
        let report = runner.shutdown(SHUTDOWN_DEADLINE).await;
        if !report.aborted.is_empty() {
            tracing::warn!(sinks = ?report.aborted, "sinks did not drain before the deadline");
        }
        for task in background {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("a background task did not stop in time; aborting it");
                abort.abort();
            }
        }
        Ok(())
    }
}
