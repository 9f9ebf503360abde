//! The durable event log: what survives a restart.
//!
//! # Model
//!
//! The bus's [`ReplayRing`](crate::ReplayRing) is memory: a restart forgets
//! it and it holds only the newest events. An [`EventLog`] is the same
//! ordered stream kept in storage — SQLite or PostgreSQL (`event-log`), or a
//! JetStream stream in cluster mode — as far back as its [`Retention`]
//! reaches.
//!
//! Three pieces connect a log to a bus, and none of them slows
//! [`EventBus::publish`](crate::EventBus::publish) down:
//!
//! * [`LogWriter`] is a bus [`Tap`](crate::bus::Tap): the publisher hands
//!   it each event in sequence order (one queue push), and a task appends
//!   whatever has queued up as one batch — one transaction however many
//!   events arrived meanwhile (*group commit*). After each commit it
//!   advances the *committed* mark: every event at or below it is stored.
//! * [`EventBus::publish_durable`](crate::EventBus::publish_durable)
//!   publishes like [`try_publish_all_with`](crate::EventBus::try_publish_all_with)
//!   and then waits for the committed mark to pass its events: the publish
//!   API answers `202` only then, so an acknowledged event is never lost
//!   to a crash. Publishers that cannot wait (the job bridge, in-process
//!   code) keep calling `publish`: their events reach the log the same
//!   way, only nobody waits for the commit.
//! * [`LogReplay`] is a [`ReplaySource`](crate::ReplaySource): when a
//!   resuming client's cursor is older than the ring (or from before a
//!   restart), the transport reads the gap from the log and then joins the
//!   ring, so the client misses nothing while its cursor is within
//!   retention.
//!
//! A restarted process continues the sequence after the log's last event
//! ([`BusConfig::seq_start`](crate::BusConfig::seq_start) from
//! [`LogBounds::last_seq`]), so cursors stay comparable across restarts.
//!
//! # Limits
//!
//! | limit | set with | default | at the limit |
//! |---|---|---|---|
//! | events queued for the log, not yet committed | [`LogConfig::max_pending`] | 100,000 | durable publishers wait (their requests answer `503 log_unavailable` after [`LogConfig::commit_timeout`]); past twice the bound, events from publishers that do not wait are not logged (counted in [`LogStatsSnapshot::dropped`], logged as an error), and a durable publish whose event was among them fails |
//! | events per append | [`LogConfig::max_batch`] | 4,096 | the rest go in the next batch |
//! | wait for a commit | [`LogConfig::commit_timeout`] | 5 s | [`LogError::Timeout`] (the event is published and stays queued for the log) |
//! | one replay from the log | [`LogReplay::max_replay`] | 100,000 events | [`ReplayMiss::Expired`](crate::ReplayMiss::Expired): the client resyncs |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::event::Event;

mod memory;
mod replay;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod topic_prune_tests;
pub(crate) mod writer;

pub use memory::MemoryLog;
pub use replay::{LogReplay, MAX_PAGE_BYTES};
pub use writer::{LogConfig, LogStatsSnapshot, LogWriter};

/// Groups `events` by topic (for in-memory logs and tests).
fn topic_stats<'a>(events: impl Iterator<Item = &'a Arc<Event>>) -> Vec<TopicStats> {
    let mut by_topic: std::collections::BTreeMap<String, TopicStats> = Default::default();
    for e in events {
        let bytes = e.envelope_json().len() as u64;
        by_topic
            .entry(e.topic().to_owned())
            .and_modify(|t| {
                t.events += 1;
                t.bytes += bytes;
                t.first_seq = t.first_seq.min(e.seq());
                t.last_seq = t.last_seq.max(e.seq());
            })
            .or_insert_with(|| TopicStats {
                name: e.topic().to_owned(),
                events: 1,
                bytes,
                first_seq: e.seq(),
                last_seq: e.seq(),
            });
    }
    by_topic.into_values().collect()
}

/// What went wrong in a log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The storage failed (connection, disk, SQL).
    #[error("event log storage failed: {message}")]
    Storage {
        /// What was being done.
        message: String,
        /// The storage driver's error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A stored event could not be read back.
    #[error("stored event {seq} cannot be decoded")]
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The commit did not happen within the wait (the storage is slow or
    /// down; the event stays queued and is appended once it is back).
    #[error("the event log did not commit within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// The event was not logged: the log's queue was over twice
    /// [`LogConfig::max_pending`] when it was published.
    #[error("event {0} was not logged: the log's queue was full")]
    Dropped(u64),
    /// The event was refused before it reached the log (over the bus's
    /// per-event limit).
    #[error("the event was not published")]
    Refused(#[source] crate::Error),
    /// The writer has stopped (the host is shutting down).
    #[error("the event log writer has stopped")]
    Closed,
    /// This log does not do that (a bound per topic the log cannot
    /// enforce, such as `max_bytes` on the JetStream stream); `what` says
    /// what and why.
    #[error("the {log} log does not support {what}")]
    Unsupported {
        /// The log's [`EventLog::name`].
        log: String,
        /// What it does not do.
        what: &'static str,
    },
}

impl LogError {
    /// A storage failure with its driver error.
    pub fn storage(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        LogError::Storage {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// The extent of a log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogBounds {
    /// The oldest stored event's sequence number (0: empty).
    pub first_seq: u64,
    /// The newest stored event's sequence number (0: empty).
    pub last_seq: u64,
    /// How many events are stored.
    pub events: u64,
    /// Their envelope JSON, in bytes.
    pub bytes: u64,
}

/// One topic's share of a log ([`EventLog::topics`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TopicStats {
    /// The topic ([`Event::topic`]).
    pub name: String,
    /// Its stored events.
    pub events: u64,
    /// Their envelope JSON, in bytes.
    pub bytes: u64,
    /// Its oldest stored event's sequence number.
    pub first_seq: u64,
    /// Its newest stored event's sequence number.
    pub last_seq: u64,
}

/// How much a log keeps. Each bound is checked on its own; the oldest events
/// go first. `None` keeps without bound on that axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this are removed.
    pub max_age: Option<Duration>,
    /// At most this many events are kept.
    pub max_events: Option<u64>,
    /// At most this many bytes of envelope JSON are kept.
    pub max_bytes: Option<u64>,
}

impl Default for Retention {
    /// Seven days, ten million events, 1 GiB.
    fn default() -> Self {
        Retention {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_events: Some(10_000_000),
            max_bytes: Some(1 << 30),
        }
    }
}

/// A topic's own retention: its events are pruned by these bounds (counted
/// over the topic alone) besides the log's [`Retention`], which still
/// applies to every event (the stricter wins).
///
/// `pruned_through` is the newest sequence number among the topic's events
/// removed (or being removed) so far: a reader whose filter can match the topic and whose
/// cursor is older cannot be served without a gap, so replays refuse it
/// ([`ReplayMiss::Expired`](crate::ReplayMiss::Expired)). It is kept when
/// the bounds are removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRetention {
    /// The topic.
    pub topic: String,
    /// Its bounds; `None` once removed (only the watermark remains).
    pub retention: Option<Retention>,
    /// The topic's watermark: the sequence number through which its events
    /// are pruned (0: none yet). A prune raises it before it deletes them
    /// (see [`EventLog::prune_topic`]), so some may still be stored for a
    /// moment; a reader whose cursor is older is refused either way. Never
    /// lowered.
    pub pruned_through: u64,
}

/// Most topics with a retention of their own.
pub const MAX_TOPIC_RETENTIONS: usize = 1_000;

fn unsupported(log: &str, what: &'static str) -> LogError {
    LogError::Unsupported {
        log: log.to_owned(),
        what,
    }
}

/// An ordered, durable store of a bus's events.
///
/// Events are appended in sequence order, each batch atomically (all or
/// none), and read back by sequence. Implementations keep each event's
/// envelope JSON ([`Event::envelope_json`]) and rebuild it with
/// [`Event::from_envelope_json`].
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// A short name for logs and metrics (`sqlite`, `postgres`).
    fn name(&self) -> &str;

    /// Stores `events` (sequence order, each above every stored one) in one
    /// transaction. An event already stored (same sequence) is skipped, so
    /// a retried batch is harmless.
    async fn append(&self, events: &[Arc<Event>]) -> Result<(), LogError>;

    /// At most `limit` events with sequence above `after_seq`, oldest first.
    async fn read_after(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, LogError>;

    /// The sequence number of the first event that occurred at or after
    /// `time`, if any.
    async fn seq_at_time(&self, time: OffsetDateTime) -> Result<Option<u64>, LogError>;

    /// The sequence number of the event with this id, if stored.
    async fn seq_of(&self, id: Uuid) -> Result<Option<u64>, LogError>;

    /// The oldest stored event's sequence number (0: empty). Cheap: asked
    /// on every replay from the log.
    async fn first_seq(&self) -> Result<u64, LogError>;

    /// The log's extent. May count every stored event: asked at start and
    /// after each prune, not per request.
    async fn bounds(&self) -> Result<LogBounds, LogError>;

    /// Every topic with stored events, by name. Reads the whole log (an
    /// operator's question, not a hot path). The default knows none.
    async fn topics(&self) -> Result<Vec<TopicStats>, LogError> {
        Ok(Vec::new())
    }

    /// Removes the oldest events until `retention` holds at `now`; returns
    /// how many were removed.
    async fn prune(&self, retention: &Retention, now: OffsetDateTime) -> Result<u64, LogError>;

    /// Every topic with a retention of its own (or a pruning watermark).
    /// The default has none.
    async fn topic_retentions(&self) -> Result<Vec<TopicRetention>, LogError> {
        Ok(Vec::new())
    }

    /// Creates or replaces a topic's retention record, keeping a higher
    /// stored `pruned_through` (the pruner may have raised it since the
    /// caller read the record).
    async fn set_topic_retention(&self, record: &TopicRetention) -> Result<(), LogError> {
        let _ = record;
        Err(unsupported(self.name(), "per-topic retention"))
    }

    /// Removes the oldest events of `topic` until `retention` holds for the
    /// topic's events at `now`; returns the newest removed sequence number,
    /// if any was removed.
    ///
    /// The topic's stored record (if it has one) has its `pruned_through`
    /// raised to that number **before** any event goes: a reader that checks
    /// the watermark after reading (as [`LogReplay`] does) then cannot have
    /// missed a removed event without seeing the mark that tells it to
    /// resync.
    async fn prune_topic(
        &self,
        topic: &str,
        retention: &Retention,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, LogError> {
        let _ = (topic, retention, now);
        Err(unsupported(self.name(), "per-topic retention"))
    }
}

/// Whether a reader with `filter` (`None`: any event) may have missed
/// events pruned under `retentions` after the sequence `after`: some topic
/// the filter can match was pruned through a sequence above `after`.
///
/// Every replay from a log with per-topic retention asks this before it
/// serves a cursor ([`LogReplay`] here, the JetStream stream's replay in
/// `event-nats`), and named consumers ask it when the log skips sequence
/// numbers ahead of them.
///
/// ```
/// use event_core::log::{TopicRetention, pruned_for};
/// let gpu = TopicRetention { topic: "gpu".into(), retention: None, pruned_through: 10 };
/// assert!(pruned_for(std::slice::from_ref(&gpu), None, 9));
/// assert!(!pruned_for(std::slice::from_ref(&gpu), None, 10));
/// ```
pub fn pruned_for(
    retentions: &[TopicRetention],
    filter: Option<&crate::filter::EventFilter>,
    after: u64,
) -> bool {
    retentions
        .iter()
        .any(|r| r.pruned_through > after && filter.is_none_or(|f| f.may_match_topic(&r.topic)))
}
