//! [`Webhooks`]: the handle the host builds once and takes the router, the
//! sink and the worker from.

use std::sync::Arc;

use event_core::{Authenticator, EventSink, ReplaySource};
use http::HeaderName;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::client::http_client;
use crate::config::WebhookConfig;
use crate::error::{Result, WebhookError};
use crate::index::SubscriberIndex;
use crate::metrics::WebhookMetrics;
use crate::secret_key::{SecretCipher, SecretKey};
use crate::sink::WebhookSink;
use crate::ssrf::SsrfGuard;
use crate::store::sealed::SealedStore;
use crate::store::{self, WebhookStore};
use crate::worker::DeliveryWorker;

/// What the router, the sink and the worker share.
pub(crate) struct Shared {
    pub store: Arc<dyn WebhookStore>,
    /// The store the REST API uses when it is not `store`
    /// ([`Webhooks::serve_api_from`]).
    pub api_store: std::sync::OnceLock<Arc<dyn WebhookStore>>,
    pub index: SubscriberIndex,
    pub auth: Arc<dyn Authenticator>,
    pub config: WebhookConfig,
    pub signature_header: HeaderName,
    pub guard: SsrfGuard,
    pub client: reqwest::Client,
    /// Wakes this process's worker when rows were queued unclaimed.
    pub wake: Notify,
    /// This process's running worker, which takes rows the sink queues
    /// without a claim query.
    pub worker: crate::worker::WorkerLink,
    pub metrics: WebhookMetrics,
    /// How rows reached the worker (see [`Webhooks::queue_stats`]).
    pub counters: crate::worker::QueueCounters,
    /// Held from counting the webhooks to storing a new one, so this
    /// process's concurrent registrations cannot pass `max_webhooks`
    /// together.
    pub create_lock: tokio::sync::Mutex<()>,
    /// The event log cursor: what is queued, and when it was last stored.
    pub log_cursor: crate::sink::LogCursor,
}

impl Shared {
    /// The store the REST API reads and writes.
    pub fn api(&self) -> &Arc<dyn WebhookStore> {
        self.api_store.get().unwrap_or(&self.store)
    }

    /// Reloads the subscriber index (through the API's store: the API's
    /// writes call it), logging (not failing) on error: the periodic
    /// refresh will catch up.
    pub async fn refresh_index(&self) {
        if let Err(error) = self.index.reload(self.api().as_ref()).await {
            tracing::warn!(%error, "webhook subscriber index reload failed");
        }
    }
}

/// The webhook service: REST API, event sink and delivery worker over one
/// store.
///
/// Cheap to clone. Build it after installing the meter provider (metrics
/// are created here).
#[derive(Clone)]
pub struct Webhooks {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("store", &self.shared.store.engine())
            .field("webhooks", &self.shared.index.len())
            .finish()
    }
}

impl Webhooks {
    /// Opens the store named by `database_url` (see [`store::connect`]) and
    /// builds the service.
    pub async fn connect(
        database_url: &str,
        auth: Arc<dyn Authenticator>,
        config: WebhookConfig,
    ) -> Result<Self> {
        let store = store::connect(database_url).await?;
        Webhooks::new(store, auth, config).await
    }

    /// Builds the service on an open store and loads the subscriber index.
    /// Admin routes require [`Principal::is_admin`](event_core::Principal)
    /// from `auth` (`AllowAnonymous` admits everyone as admin).
    ///
    /// Webhook secrets are sealed at rest with
    /// [`WebhookConfig::secret_keys`] (see [`secret_key`](crate::secret_key)):
    /// with keys, every secret stored in plaintext or under a key other than
    /// the first is re-sealed here, before anything else. A secret that
    /// cannot be opened with the configured keys (sealed under a key not
    /// configured, a wrong key, no key at all) fails this call with
    /// [`WebhookError::SecretUndecryptable`] naming the webhook and the key
    /// id.
    pub async fn new(
        store: Arc<dyn WebhookStore>,
        auth: Arc<dyn Authenticator>,
        config: WebhookConfig,
    ) -> Result<Self> {
        let signature_header = HeaderName::from_bytes(config.signature_header.as_bytes())
            .map_err(|_| WebhookError::invalid("signature_header", "not a valid header name"))?;
        if config.lease <= config.request_timeout {
            return Err(WebhookError::invalid(
                "lease",
                "must exceed request_timeout (a claim must outlive its attempt)",
            ));
        }
        if config.retry_schedule.is_empty() {
            return Err(WebhookError::invalid("retry_schedule", "must not be empty"));
        }
        let sealed = SealedStore::new(store, SecretCipher::new(config.secret_keys.clone()));
        let resealed = sealed.reseal_all().await?;
        if resealed > 0 {
            let key = config.secret_keys.first().map(SecretKey::id).unwrap_or("-");
            tracing::info!(
                webhooks = resealed,
                key_id = key,
                "webhook secrets re-sealed under the first WEBHOOK_SECRET_KEY"
            );
        }
        let store: Arc<dyn WebhookStore> = Arc::new(sealed);
        let shared = Arc::new(Shared {
            client: http_client(&config)?,
            guard: SsrfGuard::new(config.allow_cidrs.clone()),
            store,
            api_store: std::sync::OnceLock::new(),
            index: SubscriberIndex::default(),
            auth,
            signature_header,
            config,
            wake: Notify::new(),
            worker: crate::worker::WorkerLink::default(),
            metrics: WebhookMetrics::new(),
            counters: crate::worker::QueueCounters::default(),
            create_lock: tokio::sync::Mutex::new(()),
            log_cursor: crate::sink::LogCursor::default(),
        });
        shared.index.reload(shared.store.as_ref()).await?;
        Ok(Webhooks { shared })
    }

    /// Queues the deliveries of the events an earlier process published but
    /// may not have queued: those after the stored log cursor up to `until`
    /// (the last sequence of the earlier process, `EventBus::first_seq() -
    /// 1`), read from `source` (the event log) in pages. Returns how many
    /// deliveries it queued.
    ///
    /// Call it once at start, with the sink registered (it may run beside
    /// live deliveries): while it runs the sink does not move the cursor,
    /// so a crash meanwhile makes the next start catch up again. Events are
    /// matched against the webhooks that existed when they occurred.
    /// Deliveries already queued before the crash may be queued twice; they
    /// carry the same `webhook-id` (the event id), which receivers use to
    /// drop repeats (at least once). The first start with a log (no cursor
    /// stored) only stores `until`.
    pub async fn catch_up(&self, source: Arc<dyn ReplaySource>, until: u64) -> Result<u64> {
        crate::sink::catch_up(&self.shared, source.as_ref(), until).await
    }

    /// Derives deliveries from a stream of events that every instance of
    /// a cluster sees, once per event and committed before it returns (see
    /// [`derive`](crate::derive)); for the host's shared work queue in
    /// place of the sink. Each derived event is remembered for `memory` so
    /// that a repeat within it queues nothing twice: give it at least the
    /// stream's retention (a repeat can only come while the stream holds
    /// the event).
    pub fn deriver(&self, memory: std::time::Duration) -> crate::derive::Deriver {
        crate::derive::Deriver::new(self.shared.clone(), memory)
    }

    /// The event sink to register on the host's `SinkRunner`.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(WebhookSink::new(self.shared.clone()))
    }

    /// Has the REST API ([`router`](Webhooks::router)) read and write
    /// through `store` instead of the store the sink and the worker use: the
    /// same database, another handle (its secrets sealed and opened with the
    /// same [`WebhookConfig::secret_keys`]). Call it before serving the
    /// routes.
    ///
    /// Why a host would: a PostgreSQL connection is a socket served by the
    /// I/O driver of the Tokio runtime that opened it. A host that serves its
    /// REST requests on a runtime of their own, away from a busy fan-out
    /// (event-server's intake), opens this store there, so that its
    /// requests do not wait for the busy runtime to poll its driver
    /// (measured: p50 35.6 ms instead of 2–3 ms under a saturated fan-out;
    /// BENCHMARKS.md). The connections a pool opens later are opened by the
    /// tasks that use it, on their runtime, so one pool shared with the
    /// worker would not stay there. With SQLite there is no reason to: its
    /// connections run on threads of their own, and a second handle would
    /// be a second writer.
    ///
    /// # Errors
    ///
    /// [`WebhookError::Invalid`] if the API already has a store of its own.
    pub fn serve_api_from(&self, store: Arc<dyn WebhookStore>) -> Result<()> {
        let sealed: Arc<dyn WebhookStore> = Arc::new(SealedStore::new(
            store,
            SecretCipher::new(self.shared.config.secret_keys.clone()),
        ));
        self.shared
            .api_store
            .set(sealed)
            .map_err(|_| WebhookError::invalid("api_store", "is already set"))
    }

    /// The `/api/v1/webhooks` routes.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        crate::api::router(self.shared.clone())
    }

    /// Starts the delivery worker; it stops when `shutdown` is cancelled or
    /// [`DeliveryWorker::shutdown`] is called.
    pub fn start_worker(&self, shutdown: CancellationToken) -> DeliveryWorker {
        DeliveryWorker::start(self.shared.clone(), shutdown)
    }

    /// The store, as the service sees it: secrets sealed on write and
    /// opened on read with [`WebhookConfig::secret_keys`].
    pub fn store(&self) -> &Arc<dyn WebhookStore> {
        &self.shared.store
    }

    /// The configuration.
    pub fn config(&self) -> &WebhookConfig {
        &self.shared.config
    }

    /// How rows reached this process's worker so far: handed over by the
    /// sink, left unclaimed for a claim, and what claim queries brought.
    pub fn queue_stats(&self) -> crate::worker::QueueStats {
        self.shared.counters.snapshot()
    }

    /// Reloads the subscriber index from the store now.
    pub async fn refresh(&self) -> Result<()> {
        self.shared.index.reload(self.shared.store.as_ref()).await
    }
}
