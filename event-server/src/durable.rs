//! The durable event log as the host runs it (feature `log`).
//!
//! Outside cluster mode, with `EVENT_LOG` not `off`, the host opens the log
//! before it builds the bus (so the bus continues the log's sequence),
//! taps the bus with a [`LogWriter`] (group commit; the publish API's `202`
//! waits for it through [`EventBus::publish_durable`], so the writer runs
//! on a thread of its own, see [`crate::runtimes`]) and serves cursors
//! older than the ring from a [`LogReplay`].
//!
//! In cluster mode (`NATS_URL`, feature `nats`) the JetStream stream already
//! is the log: [`for_cluster`] serves the log API, history and named
//! consumers from it (`event_nats::JetStreamLog`), with offsets in the
//! cluster's key-value bucket (`event_nats::KvOffsets`) so a consumer
//! resumes on any instance. No [`LogWriter`] runs then (every event is in
//! the stream before the bus has it), so there is no group commit to wait
//! for and the stream's own retention applies to the whole log; each
//! topic's own retention (the topics API) is applied by a pruner every
//! `EVENT_LOG_PRUNE_INTERVAL_SECS` on every instance
//! (`event_nats::TopicPruner`). Sinks catch up from the stream
//! (`Cluster::replay_source`) and webhooks are derived from it
//! (`Cluster::webhook_queue`) instead. `EVENT_LOG=off` turns these routes
//! off in cluster mode too; any other value is ignored there.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use event_core::{
    ConsumerConfig, Consumers, EventBus, EventLog, LogConfig, LogReplay, LogWriter, OffsetStore,
    ReplaySource, Retention, SeqStart,
};

use crate::config::Config;
use crate::error::ServerError;
use crate::runtimes::Dedicated;

/// An opened log, before the bus exists.
pub struct OpenedLog {
    log: Arc<dyn EventLog>,
    offsets: Arc<dyn OffsetStore>,
    /// Where the bus's sequence continues.
    pub seq_start: SeqStart,
}

/// The running log.
pub struct HostLog {
    /// The writer and replay of a log this host appends to; `None` in
    /// cluster mode, where the stream is appended to by publishing.
    writer: Option<(LogWriter, Arc<LogReplay>)>,
    log: Arc<dyn EventLog>,
    consumers: Consumers,
    /// Per-topic pruning of the cluster's stream (cluster mode only).
    pruner: Option<crate::cluster::TopicPruning>,
    /// The writer's own thread (see [`crate::runtimes`]); last, so it
    /// outlives the writer's tasks.
    _runtime: Option<Dedicated>,
}

/// Opens the log `config` names, or `None` (`EVENT_LOG=off`).
pub async fn open(config: &Config) -> Result<Option<OpenedLog>, ServerError> {
    let Some(url) = config.event_log_url().map_err(ServerError::Startup)? else {
        return Ok(None);
    };
    let (log, offsets) = event_log::open_with_offsets(&url)
        .await
        .map_err(|e| ServerError::Startup(format!("EVENT_LOG: {e}")))?;
    let bounds = log
        .bounds()
        .await
        .map_err(|e| ServerError::Startup(format!("EVENT_LOG: {e}")))?;
    // After the log's last event, and never below the clock start a bus
    // without a log would take: a cursor an earlier process handed out for
    // an event it published but never committed must not name a new event.
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1);
    tracing::info!(
        log = log.name(),
        events = bounds.events,
        first_seq = bounds.first_seq,
        last_seq = bounds.last_seq,
        "event log opened"
    );
    Ok(Some(OpenedLog {
        log,
        offsets,
        seq_start: SeqStart::At(clock.max(bounds.last_seq + 1)),
    }))
}

impl OpenedLog {
    /// Taps `bus` and starts the writer.
    pub async fn start(self, bus: &EventBus, config: &Config) -> Result<HostLog, ServerError> {
        let log_config = LogConfig {
            max_pending: config.event_log_max_pending,
            commit_timeout: Duration::from_millis(config.event_log_commit_timeout_ms as u64),
            prune_interval: Duration::from_secs(config.event_log_prune_interval_secs as u64),
            retention: Retention {
                max_age: Some(Duration::from_secs(config.event_log_max_age_secs)),
                max_events: Some(config.event_log_max_events as u64),
                max_bytes: Some(config.event_log_max_bytes as u64),
            },
            ..LogConfig::default()
        };
        let replay = LogReplay::new(bus, self.log.clone())
            .max_replay(config.event_log_max_replay)
            .max_replay_bytes(config.event_log_max_replay_bytes)
            .replay_memory(config.event_log_replay_memory_bytes);
        // Every durable publish waits for this writer's commit: it runs on
        // a thread of its own, so a saturated fan-out cannot delay it.
        let runtime = Dedicated::start("event-log", 1)?;
        let handle = runtime
            .handle()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let writer = LogWriter::start_on(bus, self.log.clone(), log_config, &handle)
            .await
            .map_err(|e| ServerError::Startup(format!("EVENT_LOG: {e}")))?;
        let consumers =
            Consumers::new(bus.clone(), self.log, self.offsets, consumer_config(config));
        Ok(HostLog {
            log: writer.log().clone(),
            writer: Some((writer, Arc::new(replay))),
            consumers,
            pruner: None,
            _runtime: Some(runtime),
        })
    }
}

/// The bounds of the host's named consumers.
fn consumer_config(config: &Config) -> ConsumerConfig {
    ConsumerConfig {
        max_consumers: config.consumer_max,
        max_members: config.consumer_max_members,
        max_ack_pending: config.consumer_max_ack_pending,
        default_ack_wait: Duration::from_secs(config.consumer_ack_wait_secs as u64),
        ..ConsumerConfig::default()
    }
}

/// In cluster mode: the log API and named consumers over the cluster's
/// stream and offset bucket, or `None` outside cluster mode (or with
/// `EVENT_LOG=off`). Never taps a [`LogWriter`]: the stream is not
/// appended to through the log.
pub async fn for_cluster(
    cluster: &crate::cluster::Cluster,
    bus: &EventBus,
    config: &Config,
) -> Result<Option<HostLog>, ServerError> {
    if config
        .event_log_url()
        .map_err(ServerError::Startup)?
        .is_none()
    {
        return Ok(None);
    }
    let prune_interval = Duration::from_secs(config.event_log_prune_interval_secs as u64);
    let Some(parts) = cluster.log_parts(prune_interval).await? else {
        return Ok(None);
    };
    let consumers = Consumers::with_mark(
        bus.clone(),
        parts.log.clone(),
        parts.offsets,
        consumer_config(config),
        parts.mark,
    );
    tracing::info!(
        log = parts.log.name(),
        "event log API and named consumers served from the cluster's stream"
    );
    Ok(Some(HostLog {
        writer: None,
        log: parts.log,
        consumers,
        pruner: Some(parts.pruner),
        _runtime: None,
    }))
}

impl HostLog {
    /// Where transports replay cursors older than the ring from, and sinks
    /// and webhooks catch up from; `None` in cluster mode (the cluster's
    /// stream is the replay and catch-up source there).
    pub fn replay_source(&self) -> Option<Arc<dyn ReplaySource>> {
        self.writer
            .as_ref()
            .map(|(_, replay)| replay.clone() as Arc<dyn ReplaySource>)
    }

    /// The log itself (for the topics API).
    pub fn log(&self) -> Arc<dyn EventLog> {
        self.log.clone()
    }

    /// Whether this is the cluster's stream (appended to by publishing,
    /// pruned per topic by its own task).
    pub fn is_cluster_stream(&self) -> bool {
        self.writer.is_none()
    }

    /// The named consumers and groups, read from this log.
    pub fn consumers(&self) -> Consumers {
        self.consumers.clone()
    }

    /// Stores the consumers' offsets, appends what is queued and stops
    /// (after the producers stopped).
    pub async fn stop(self, deadline: Duration) {
        if let Some(pruner) = self.pruner {
            pruner.stop(deadline).await;
        }
        let _ = tokio::time::timeout(deadline, self.consumers.shutdown()).await;
        if let Some((writer, _)) = self.writer {
            writer.shutdown(deadline).await;
        }
    }
}
