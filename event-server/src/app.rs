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
use event_core::{
    AllowAnonymous, Authenticator, BusConfig, ConnectionRegistry, EventBus, SinkRunner,
    StaticTokens,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::config::Config;
use crate::db::Db;
use crate::error::ServerError;
use crate::slots::stream::StreamRoutes;
use crate::slots::{SlotLimits, Slots, StreamKind};

mod mount;
use mount::Assembly;

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
    parts: Parts,
    caps: event_http::ConnectionCaps,
    head_timeout: Duration,
    /// The intake runtime (`INTAKE_THREADS`): publishing and the REST API
    /// on their own threads, apart from the fan-out's writers (see
    /// [`event_http::Serve::intake`]).
    intake: crate::runtimes::Dedicated,
    /// `MEMORY_TRIM_CLOSED` (see `memory`).
    memory_trim_closed: usize,
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
    /// In cluster mode, this instance's share of the webhook work queue.
    #[cfg(feature = "webhook")]
    webhook_queue: Option<crate::cluster::WorkQueue>,
    #[cfg(feature = "log")]
    log: Option<crate::durable::HostLog>,
    cluster: Cluster,
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
    /// Stops the worker, the bridge, the webhook deliveries and the cluster
    /// link, in that order (the bridge publishes what the worker's stop
    /// reports).
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
        // The work queue before the worker: what it pulled and did not
        // derive goes back to the other instances.
        #[cfg(feature = "webhook")]
        if let Some(queue) = self.webhook_queue {
            queue.stop(Duration::from_secs(2)).await;
        }
        #[cfg(feature = "webhook")]
        if let Some((_, worker)) = self.webhooks
            && !worker.shutdown(Duration::from_secs(2)).await
        {
            tracing::warn!(
                "webhook deliveries in flight at shutdown are retried at the next start"
            );
        }
        // After every producer: what they published last is logged.
        #[cfg(feature = "log")]
        if let Some(log) = self.log {
            log.stop(Duration::from_secs(2)).await;
        }
        // Last: the cluster link, which the bus publishes through.
        self.cluster.leave();
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

impl App {
    /// Builds everything the configuration and features select.
    pub async fn build(config: &Config) -> Result<App, ServerError> {
        // Instruments are created when the transports are built, so the
        // meter provider goes first.
        #[cfg(feature = "telemetry")]
        let metrics = crate::telemetry::metrics()?;
        #[allow(unused_mut, reason = "the log sets where sequences start")]
        let mut bus_config = BusConfig {
            capacity: config.bus_capacity,
            replay_size: config.replay_size,
            ..BusConfig::default()
        };
        let intake = crate::runtimes::Dedicated::start("intake", config.intake_threads)?;
        // The cluster's link shares the intake runtime: an awaited publish
        // waits for its JetStream acknowledgement, which must not queue
        // behind the fan-out's writes either.
        let cluster = Cluster::connect(config, &bus_config, intake.handle()).await?;
        // In cluster mode the JetStream stream is the log (opened below).
        #[cfg(feature = "log")]
        let log = match cluster.is_active() {
            true => None,
            false => crate::durable::open(config).await?,
        };
        #[cfg(feature = "log")]
        if let Some(log) = &log {
            bus_config.seq_start = log.seq_start;
        }
        let bus = cluster.bus(bus_config);
        bus.set_max_event_bytes(config.event_max_bytes)
            .map_err(|e| ServerError::Startup(format!("EVENT_MAX_BYTES: {e}")))?;
        bus.set_replay_max_bytes(config.replay_max_bytes);
        let db = Db::connect(&config.database_url).await?;
        #[cfg(feature = "log")]
        let log = match log {
            Some(log) => Some(log.start(&bus, config).await?),
            // In cluster mode, from the stream (no writer taps the bus).
            None => crate::durable::for_cluster(&cluster, &bus, config).await?,
        };
        // In cluster mode a group spans the instances (the consumers share
        // one backend; single consumers stay with the log).
        #[cfg(feature = "log")]
        if let (Some(log), Some(groups)) = (&log, cluster.group_backend()) {
            let _ = log.consumers().with_group_backend(groups);
        }
        // And a single consumer's acks reach the instance streaming to it.
        #[cfg(feature = "log")]
        if let (Some(log), Some(relay)) = (&log, cluster.ack_relay()) {
            let _ = log.consumers().with_ack_relay(relay);
        }
        let mut runner = SinkRunner::new(&bus);
        // A sink that falls behind a burst catches up from the log: the
        // event log, or in cluster mode the stream (every event a bus holds
        // was stored in the stream first).
        #[cfg(feature = "log")]
        if let Some(source) = log.as_ref().and_then(|l| l.replay_source()) {
            runner.set_catch_up(source);
        }
        if let Some(source) = cluster.replay_source() {
            runner.set_catch_up(source);
        }
        let registry = ConnectionRegistry::new();
        let slots = Slots::new(
            registry.clone(),
            SlotLimits {
                max: config.connection_slots_max,
                per_principal: config.connection_slots_per_principal,
                ticket_ttl: Duration::from_secs(config.connection_ticket_ttl_secs),
                retain: Duration::from_secs(config.connection_slot_retain_secs),
                max_event_bytes: config.event_max_bytes,
            },
            [
                cfg!(feature = "sse").then_some(StreamKind::Sse),
                cfg!(feature = "ws").then_some(StreamKind::Ws),
            ]
            .into_iter()
            .flatten()
            .collect(),
        );
        let mut app = Assembly {
            config,
            runner,
            bus,
            registry,
            auth: authenticator(config),
            db,
            cancel: CancellationToken::new(),
            #[allow(
                clippy::needless_update,
                reason = "the other parts exist only with some features"
            )]
            parts: Parts {
                cluster,
                #[cfg(feature = "log")]
                log,
                ..Parts::default()
            },
            router: Router::new(),
            queue: None,
            streams: StreamRoutes {
                slots: slots.clone(),
                sse: None,
                ws: None,
            },
            slots,
            intake: intake.handle(),
        };
        app.mount_core();
        // Before the transports: they send the queue status it keeps.
        #[cfg(feature = "jobs")]
        app.mount_jobs().await?;
        #[cfg(feature = "ws")]
        app.mount_ws();
        #[cfg(feature = "sse")]
        app.mount_sse();
        #[cfg(feature = "mcp")]
        app.mount_mcp();
        app.mount_connections();
        #[cfg(feature = "webhook")]
        app.mount_webhooks().await?;
        #[cfg(feature = "telemetry")]
        {
            app.mount_stats(metrics.clone());
            app.mount_telemetry(metrics);
        }
        #[cfg(not(feature = "telemetry"))]
        {
            app.mount_stats();
            app.mount_plain_health();
        }
        #[cfg(feature = "contracts")]
        app.mount_contracts();
        app.finish_router();
        Ok(App {
            caps: event_http::ConnectionCaps::from_file_limit(
                config.max_open_connections,
                config.max_connections_per_ip,
            ),
            head_timeout: Duration::from_secs(config.http_head_timeout_secs),
            intake,
            memory_trim_closed: config.memory_trim_closed,
            router: app.router,
            bus: app.bus,
            registry: app.registry,
            runner: app.runner,
            db: app.db,
            cancel: app.cancel,
            parts: app.parts,
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
            parts,
            caps,
            head_timeout,
            intake,
            memory_trim_closed,
            bus,
            ..
        } = self;
        let stop = cancel.clone();
        tokio::spawn(crate::memory::reclaim_after_closes(
            registry.watch_total(),
            memory_trim_closed,
            stop.clone(),
            move || crate::memory::relocate_and_trim(&bus),
        ));
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
        let server = match intake.handle() {
            Some(handle) => server.intake(handle),
            None => server,
        };
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
        Ok(())
    }
}
