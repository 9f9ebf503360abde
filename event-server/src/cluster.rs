//! Cluster mode as the assembly sees it.
//!
//! With the `nats` feature and `NATS_URL` set, several instances are one
//! over JetStream: the cluster builds the bus (every instance then has the
//! same order, sequence numbers and ids), replays cursors older than the
//! ring (and catches lagging sinks up from the stream), derives each
//! event's webhook deliveries on one instance through a shared JetStream
//! work queue,
//! reports its link on `/health`, and keeps consumer groups in JetStream so
//! a group spans the instances. Without the feature (or the URL)
//! [`Cluster`] gives the single-instance answer to each of those questions,
//! so the mounts in `app` need no `cfg` of their own for cluster mode.

use std::sync::Arc;

use event_core::{BusConfig, EventBus, EventSink, GroupBackend, ReplaySource};

use crate::config::Config;
use crate::error::ServerError;

pub use imp::Cluster;

/// What cluster mode gives the host's log API and named consumers
/// ([`Cluster::log_parts`]).
#[cfg(feature = "log")]
pub struct LogParts {
    /// The stream as an event log.
    pub log: Arc<dyn event_core::EventLog>,
    /// Consumer offsets shared by every instance.
    pub offsets: Arc<dyn event_core::OffsetStore>,
    /// How far the stream holds the bus's events.
    pub mark: event_core::LogMark,
    /// This instance's share of per-topic retention: the task that applies
    /// every topic's own retention to the stream.
    pub pruner: TopicPruning,
}

/// Cluster mode's per-topic pruning task (`event_nats::TopicPruner`);
/// stops when dropped or [stopped](Self::stop).
#[cfg(feature = "log")]
pub struct TopicPruning(#[cfg(feature = "nats")] event_nats::TopicPruner);

#[cfg(feature = "log")]
impl TopicPruning {
    /// Stops it, waiting up to `deadline` for a round in progress.
    pub async fn stop(self, deadline: std::time::Duration) {
        #[cfg(feature = "nats")]
        self.0.shutdown(deadline).await;
        #[cfg(not(feature = "nats"))]
        let _ = deadline;
    }
}

#[cfg(feature = "nats")]
mod imp {
    use super::*;

    /// The instance's cluster: JetStream when `NATS_URL` is set.
    #[derive(Default)]
    pub struct Cluster {
        nats: Option<event_nats::NatsCluster>,
    }

    impl Cluster {
        /// Joins the cluster `config` names (none without `NATS_URL`), with
        /// the link to NATS on `io`'s runtime (`None`: the caller's; see
        /// `event_nats::NatsCluster::connect_on`).
        pub async fn connect(
            config: &Config,
            bus: &BusConfig,
            io: Option<tokio::runtime::Handle>,
        ) -> Result<Cluster, ServerError> {
            let Some(url) = &config.nats_url else {
                return Ok(Cluster::default());
            };
            let mut nats = event_nats::NatsConfig::from_env()
                .map_err(|e| ServerError::Startup(format!("NATS: {e}")))?
                .unwrap_or_else(|| event_nats::NatsConfig::new(url.clone()));
            nats.url.clone_from(url);
            if let Some(stream) = &config.nats_stream {
                nats.stream.clone_from(stream);
            }
            if let Some(prefix) = &config.nats_subject_prefix {
                nats.subject_prefix.clone_from(prefix);
            }
            if let Some(bucket) = &config.nats_consumers_bucket {
                nats.consumers_bucket.clone_from(bucket);
            }
            // One window for both: a retry is recognised by this instance's
            // Idempotency-Key memory and by the stream for as long.
            if config.dedup_window_secs > 0 {
                nats.duplicate_window = std::time::Duration::from_secs(config.dedup_window_secs);
            }
            let nats = event_nats::NatsCluster::connect_on(nats, bus.clone(), io)
                .await
                .map_err(|e| ServerError::Startup(format!("NATS: {e}")))?;
            Ok(Cluster { nats: Some(nats) })
        }

        /// Whether this instance is in a cluster (`NATS_URL` set).
        pub fn is_active(&self) -> bool {
            self.nats.is_some()
        }

        /// The bus: the cluster's, or a new local one.
        pub fn bus(&self, config: BusConfig) -> EventBus {
            match &self.nats {
                Some(c) => c.bus().clone(),
                None => EventBus::new(config),
            }
        }

        /// Where cursors older than the ring are replayed from.
        pub fn replay_source(&self) -> Option<Arc<dyn ReplaySource>> {
            self.nats
                .as_ref()
                .map(|c| Arc::new(c.clone()) as Arc<dyn ReplaySource>)
        }

        /// Where consumer groups live so that they span the instances: one
        /// JetStream durable pull consumer per group and partition (`None`
        /// outside cluster mode: groups stay in this instance's log).
        pub fn group_backend(&self) -> Option<Arc<dyn GroupBackend>> {
            self.nats
                .as_ref()
                .map(|c| Arc::new(event_nats::JetStreamGroups::new(c)) as Arc<dyn GroupBackend>)
        }

        /// How the acks of a single consumer reach the instance that runs
        /// it, over core NATS (`None` outside cluster mode).
        pub fn ack_relay(&self) -> Option<Arc<dyn event_core::AckRelay>> {
            self.nats.as_ref().map(|c| {
                Arc::new(event_nats::NatsAckRelay::new(c)) as Arc<dyn event_core::AckRelay>
            })
        }

        /// `sink` restricted to events that originated on this instance
        /// (the webhook sink on a store of the instance's own).
        pub fn local_origin_only(&self, sink: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
            match &self.nats {
                Some(c) => c.local_origin_only(sink),
                None => sink,
            }
        }

        /// `sink` restricted to the events this instance delivered locally
        /// only (NATS unreachable), in cluster mode: the webhook sink, whose
        /// other events the shared work queue derives
        /// ([`webhook_queue`](Self::webhook_queue)).
        pub fn local_only_events(&self, sink: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
            match &self.nats {
                Some(c) => c.local_only_events(sink),
                None => sink,
            }
        }

        /// In cluster mode: this instance's share of the webhook work queue
        /// (`event_nats::WorkQueue` named `webhooks`): each stream event's
        /// deliveries are derived by one live instance and acknowledged in
        /// JetStream once committed (see docs/cluster.md). `None` outside
        /// cluster mode.
        #[cfg(feature = "webhook")]
        pub async fn webhook_queue(
            &self,
            webhooks: &event_webhook::Webhooks,
            config: &Config,
        ) -> Result<Option<WorkQueue>, ServerError> {
            let Some(nats) = &self.nats else {
                return Ok(None);
            };
            let ack_wait = std::time::Duration::from_secs(config.nats_webhook_ack_wait_secs);
            // A repeat comes only while the stream holds the event (and at
            // most one ack wait after its last hand-out).
            let memory = nats.config().retention.max_age + ack_wait * 2;
            let handler = Arc::new(Derivation(webhooks.deriver(memory)));
            let work = event_nats::WorkConfig {
                ack_wait,
                ..event_nats::WorkConfig::new(WEBHOOK_QUEUE)
            };
            let queue = nats
                .work_queue(work, handler)
                .await
                .map_err(|e| ServerError::Startup(format!("NATS webhook work queue: {e}")))?;
            Ok(Some(WorkQueue(queue)))
        }

        /// Closes the link to NATS (the last part the app stops).
        pub fn leave(self) {
            drop(self.nats);
        }

        /// The stream as the event log and the shared offset bucket, in
        /// cluster mode, with per-topic retention applied every
        /// `prune_interval` (every instance prunes: a purge below a
        /// sequence is idempotent and a watermark only rises, so pruning
        /// needs no leader and goes on while any instance lives); `None`
        /// otherwise.
        #[cfg(feature = "log")]
        pub async fn log_parts(
            &self,
            prune_interval: std::time::Duration,
        ) -> Result<Option<super::LogParts>, ServerError> {
            let Some(nats) = &self.nats else {
                return Ok(None);
            };
            let offsets = nats
                .offsets()
                .await
                .map_err(|e| ServerError::Startup(format!("NATS consumer offsets: {e}")))?;
            let log = nats.log();
            let pruner = super::TopicPruning(log.start_pruning(prune_interval));
            Ok(Some(super::LogParts {
                log: Arc::new(log),
                offsets: Arc::new(offsets),
                mark: nats.log_mark(),
                pruner,
            }))
        }

        /// `health` with the NATS link as a component.
        #[cfg(feature = "telemetry")]
        pub fn health(&self, health: event_telemetry::Health) -> event_telemetry::Health {
            use event_telemetry::ComponentStatus;
            let Some(c) = self.nats.clone() else {
                return health;
            };
            health.component("nats", move || match c.state() {
                event_nats::ConnectionState::Connected => ComponentStatus::up(),
                event_nats::ConnectionState::Disconnected => ComponentStatus::degraded(
                    "disconnected from NATS: serving local events only, reconnecting",
                ),
            })
        }
    }
}

/// The name of the instances' shared webhook work queue (its JetStream
/// consumer is `work_webhooks`).
#[cfg(all(feature = "nats", feature = "webhook"))]
const WEBHOOK_QUEUE: &str = "webhooks";

/// Webhook deliveries derived from the stream: acknowledged once committed.
#[cfg(all(feature = "nats", feature = "webhook"))]
struct Derivation(event_webhook::Deriver);

#[cfg(all(feature = "nats", feature = "webhook"))]
#[event_core::async_trait]
impl event_nats::WorkHandler for Derivation {
    async fn handle(
        &self,
        events: Vec<Arc<event_core::Event>>,
    ) -> Result<(), event_nats::WorkError> {
        self.0
            .derive(&events)
            .await
            .map(|_| ())
            .map_err(|e| event_nats::WorkError(e.to_string()))
    }
}

/// This instance's share of a work queue the instances share (cluster
/// mode only).
#[cfg(feature = "nats")]
pub struct WorkQueue(event_nats::WorkQueue);

/// No cluster, no shared work.
#[cfg(not(feature = "nats"))]
pub struct WorkQueue;

impl WorkQueue {
    /// Stops pulling; what this instance pulled and did not handle goes
    /// back to the other instances at once.
    pub async fn stop(self, deadline: std::time::Duration) {
        #[cfg(feature = "nats")]
        self.0.shutdown(deadline).await;
        #[cfg(not(feature = "nats"))]
        let _ = deadline;
    }
}

#[cfg(not(feature = "nats"))]
mod imp {
    use super::*;

    /// A single instance: this build has no cluster mode (feature `nats`).
    #[derive(Default)]
    pub struct Cluster;

    impl Cluster {
        /// Always the single instance; `NATS_URL` is refused by the
        /// configuration of a build without `nats`.
        pub async fn connect(
            _config: &Config,
            _bus: &BusConfig,
            _io: Option<tokio::runtime::Handle>,
        ) -> Result<Cluster, ServerError> {
            Ok(Cluster)
        }

        /// Never: this build has no cluster mode.
        pub fn is_active(&self) -> bool {
            false
        }

        /// A new local bus.
        pub fn bus(&self, config: BusConfig) -> EventBus {
            EventBus::new(config)
        }

        /// No replay beyond the ring.
        pub fn replay_source(&self) -> Option<Arc<dyn ReplaySource>> {
            None
        }

        /// Groups stay in this instance's log.
        pub fn group_backend(&self) -> Option<Arc<dyn GroupBackend>> {
            None
        }

        /// One instance: every ack reaches the consumer it is for.
        pub fn ack_relay(&self) -> Option<Arc<dyn event_core::AckRelay>> {
            None
        }

        /// Every event is local: `sink` unchanged.
        pub fn local_origin_only(&self, sink: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
            sink
        }

        /// Every event is local: `sink` unchanged.
        pub fn local_only_events(&self, sink: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
            sink
        }

        /// No cluster: the sink queues every delivery.
        #[cfg(feature = "webhook")]
        pub async fn webhook_queue(
            &self,
            _webhooks: &event_webhook::Webhooks,
            _config: &Config,
        ) -> Result<Option<super::WorkQueue>, ServerError> {
            Ok(None)
        }

        /// Nothing to close.
        pub fn leave(self) {}

        /// No cluster: no stream to serve as the log.
        #[cfg(feature = "log")]
        pub async fn log_parts(
            &self,
            _prune_interval: std::time::Duration,
        ) -> Result<Option<super::LogParts>, ServerError> {
            Ok(None)
        }

        /// `health` unchanged.
        #[cfg(feature = "telemetry")]
        pub fn health(&self, health: event_telemetry::Health) -> event_telemetry::Health {
            health
        }
    }
}
