//! Assembly: one bus, the sinks the Cargo features select, their routers.
//!
//! [`App::build`] does everything that can fail at start-up (database,
//! migrations, configuration the crates check) before a socket is bound, so
//! a bad setting stops the server with one clear line. [`App::serve`] runs
//! until the shutdown signal, then closes WebSockets with 1001, ends SSE
//! streams, drains the sinks and stops the background workers within
//! [`SHUTDOWN_DEADLINE`].

use std::future::Future;
use std::net::SocketAddr;
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
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("bus", &self.bus)
            .field("connections", &self.registry.total())
            .finish_non_exhaustive()
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
        let bus = EventBus::new(BusConfig {
            capacity: config.bus_capacity,
            replay_size: config.replay_size,
            ..BusConfig::default()
        });
        let registry = ConnectionRegistry::new();
        let auth = authenticator(config);
        let db = Db::connect(&config.database_url).await?;
        let runner = SinkRunner::new(&bus);
        let cancel = CancellationToken::new();
        let background = Vec::new();

        let mut router = Router::new()
            .route("/", get(crate::dashboard::page))
            .route(
                "/api/v1/events",
                post(publish::publish).with_state(PublishState {
                    bus: bus.clone(),
                    auth: auth.clone(),
                }),
            )
            .merge(connections::router(ConnectionsState {
                registry: registry.clone(),
                auth: auth.clone(),
            }));

        #[cfg(feature = "demo")]
        {
            crate::demo::store::migrate(&db).await?;
            router = router.merge(crate::demo::notes::router(crate::demo::notes::NotesState {
                db: db.clone(),
                bus: bus.clone(),
            }));
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
        })
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
            ..
        } = self;
        let stop = cancel.clone();
        let on_signal = {
            let registry = registry.clone();
            let cancel = cancel.clone();
            async move {
                signal.await;
                tracing::info!("shutting down");
                // Ends WebSockets (1001) and SSE streams; without this axum
                // would wait for long-lived connections forever.
                registry.shutdown();
                cancel.cancel();
            }
        };
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(on_signal);
        let result = server
            .await
            .map_err(|e| ServerError::Internal(format!("server error: {e}")));
        stop.cancel();
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
        result
    }
}
