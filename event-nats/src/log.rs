//! The cluster's JetStream stream as an [`EventLog`]: what the event log
//! API, history and named consumers read in cluster mode.
//!
//! In cluster mode there is no second log: every event a bus delivers was
//! stored in the stream first (the source injects it from there), so the
//! stream *is* the log. [`JetStreamLog`] reads it through the same code as
//! the replay of old cursors:
//!
//! | [`EventLog`] | on JetStream |
//! |---|---|
//! | `read_after` | an ordered consumer from [`DeliverPolicy::ByStartSequence`], at most `limit` (and [`NatsConfig::max_replay`](crate::NatsConfig::max_replay)) events, within [`NatsConfig::replay_timeout`](crate::NatsConfig::replay_timeout) |
//! | `seq_at_time` | an ordered consumer (headers only) from [`DeliverPolicy::ByStartTime`]: by the time the stream *stored* the event, which follows its `occurred_at` by the publish latency |
//! | `seq_of` | the UUID search of resuming cursors (around the UUIDv7's time, [`NatsConfig::id_search_window`](crate::NatsConfig::id_search_window) either side) |
//! | `first_seq`, `bounds` | the stream's info (`bytes` are the stream's stored bytes: envelopes plus subjects and headers) |
//! | `topics` | the newest [`NatsConfig::topic_scan`](crate::NatsConfig::topic_scan) events only (default 10,000): a stream of a million events is not read for an operator's listing |
//! | `prune` | nothing (returns 0): the stream applies its own retention ([`NatsConfig::retention`](crate::NatsConfig::retention)) |
//! | `append` | nothing: see below |
//! | `topic_retentions`, `set_topic_retention` | records in the key-value bucket [`NatsConfig::topics_bucket`](crate::NatsConfig::topics_bucket), shared by every instance (at most [`MAX_TOPIC_RECORDS`](crate::MAX_TOPIC_RECORDS)); a write never lowers a watermark |
//! | `prune_topic` | purges the topic's subjects `<prefix>.*.*.*.<topic>` below the newest message `max_events`, `max_age` or `max_bytes` removes, after raising the topic's watermark to it (the exact newest removed event); by the time the stream *stored* each event; by the payload sizes (`Nats-Msg-Size`, the envelope JSON's length, as the SQL logs count), from an index of them each instance keeps (one mark per [`MARK_EVERY`](crate::MARK_EVERY) messages), so a round reads what was stored since the last and at most `MARK_EVERY` older messages |
//!
//! No [`LogWriter`](event_core::LogWriter) runs in cluster mode, so nothing
//! calls `prune_topic` by itself: [`JetStreamLog::start_pruning`] runs a
//! [`TopicPruner`], which applies every topic's retention each interval
//! ([`JetStreamLog::prune_topics`]). Every instance may run one: a purge
//! below a sequence is idempotent and the watermark only rises, so two
//! instances pruning at once remove nothing twice and lose no watermark,
//! and pruning goes on while any instance lives (no election to fail).
//!
//! **Why `append` does nothing.** Events reach the stream through the
//! publisher ([`EventBus::publish`](event_core::EventBus::publish) hands
//! them to JetStream, which numbers them); the events a bus holds are
//! copies read back *from* the stream. Appending them again would store
//! every event twice. So never tap a [`LogWriter`](event_core::LogWriter)
//! onto this log: consumers learn how far the log reaches from
//! [`NatsCluster::log_mark`] instead of from a writer's commits.
//!
//! Sequence numbers are bus sequence numbers ([`bus_seq`]): stream
//! sequence `s` is `s × SEQ_STRIDE`. Events an instance delivered locally
//! only during a NATS outage never entered the stream and are not in this
//! log.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;
use event_core::{
    Event, EventLog, LogBounds, LogError, LogMark, Retention, TopicRetention, TopicStats,
    async_trait,
};
use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Shared;
use crate::codec::{SEQ_STRIDE, bus_seq, stream_seq};
use crate::{Error, NatsCluster};

/// The stream of a [`NatsCluster`] as an [`EventLog`] (see the module docs).
/// Cheap to clone; it does not keep the cluster's tasks running.
#[derive(Clone)]
pub struct JetStreamLog {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for JetStreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLog")
            .field("stream", &self.shared.config.stream)
            .finish()
    }
}

impl NatsCluster {
    /// The stream as an [`EventLog`].
    pub fn log(&self) -> JetStreamLog {
        JetStreamLog {
            shared: self.shared().clone(),
        }
    }

    /// How far [`log`](Self::log) holds this bus's events (the newest
    /// stream event injected, as a bus sequence), for
    /// [`Consumers::with_mark`](event_core::Consumers::with_mark).
    pub fn log_mark(&self) -> LogMark {
        LogMark {
            through: self.shared().logged.subscribe(),
            stride: SEQ_STRIDE,
        }
    }
}

fn failed(what: &str, error: Error) -> LogError {
    LogError::storage(format!("JetStream: {what}"), error)
}

impl JetStreamLog {
    /// Runs `work` holding a replay slot, within the replay timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, LogError> {
        let shared = &self.shared;
        if !shared.state.is_connected() {
            return Err(failed(what, Error::Disconnected));
        }
        let timeout = shared.config.replay_timeout;
        let run = async {
            let _slot = shared
                .replay_slots
                .acquire()
                .await
                .map_err(|e| Error::Replay(e.to_string()))?;
            work.await
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result.map_err(|e| failed(what, e)),
            Err(_) => Err(failed(
                what,
                Error::Replay(format!("no answer within {} ms", timeout.as_millis())),
            )),
        }
    }

    async fn state(&self) -> Result<async_nats::jetstream::stream::State, Error> {
        self.shared
            .stream
            .get_info()
            .await
            .map(|info| info.state)
            .map_err(|e| Error::Replay(e.to_string()))
    }
}

#[async_trait]
impl EventLog for JetStreamLog {
    fn name(&self) -> &str {
        "jetstream"
    }

    /// Nothing to do: the events are in the stream already (module docs).
    async fn append(&self, _events: &[Arc<Event>]) -> Result<(), LogError> {
        Ok(())
    }

    async fn read_after(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, LogError> {
        let limit = limit.min(self.shared.config.max_replay);
        self.bounded("read", async {
            let state = self.state().await?;
            if state.messages == 0 {
                return Ok(Vec::new());
            }
            let start = stream_seq(after_seq)
                .saturating_add(1)
                .max(state.first_sequence);
            self.shared
                .read_range(start, state.last_sequence, limit)
                .await
        })
        .await
    }

    async fn seq_at_time(&self, time: OffsetDateTime) -> Result<Option<u64>, LogError> {
        self.bounded("find by time", async {
            let state = self.state().await?;
            // A consumer waits for new messages: only start one when a
            // stored event is at or after `time`.
            if state.messages == 0 || state.last_timestamp < time {
                return Ok(None);
            }
            let (mut headers, _consumer) = self
                .shared
                .ordered(DeliverPolicy::ByStartTime { start_time: time }, true)
                .await?;
            match headers.next().await {
                Some(Ok(message)) => {
                    let info = message.info().map_err(|e| Error::Replay(e.to_string()))?;
                    Ok(Some(bus_seq(info.stream_sequence)))
                }
                Some(Err(e)) => Err(Error::Replay(e.to_string())),
                None => Ok(None),
            }
        })
        .await
    }

    async fn seq_of(&self, id: Uuid) -> Result<Option<u64>, LogError> {
        self.bounded("find by id", async {
            let state = self.state().await?;
            match self
                .shared
                .locate(id, state.first_sequence, state.last_sequence)
                .await
            {
                Ok(seq) => Ok(Some(bus_seq(seq))),
                Err(Error::CursorUnknown(_) | Error::CursorExpired(_)) => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn first_seq(&self) -> Result<u64, LogError> {
        let state = self.bounded("stream info", self.state()).await?;
        Ok(match state.messages {
            0 => 0,
            _ => bus_seq(state.first_sequence),
        })
    }

    async fn bounds(&self) -> Result<LogBounds, LogError> {
        let state = self.bounded("stream info", self.state()).await?;
        if state.messages == 0 {
            return Ok(LogBounds::default());
        }
        Ok(LogBounds {
            first_seq: bus_seq(state.first_sequence),
            last_seq: bus_seq(state.last_sequence),
            events: state.messages,
            bytes: state.bytes,
        })
    }

    /// The topics of the newest [`NatsConfig::topic_scan`](crate::NatsConfig::topic_scan)
    /// events (not the whole stream).
    async fn topics(&self) -> Result<Vec<TopicStats>, LogError> {
        let scan = self.shared.config.topic_scan as u64;
        let events = self
            .bounded("topics", async {
                let state = self.state().await?;
                if state.messages == 0 || scan == 0 {
                    return Ok(Vec::new());
                }
                let start = state
                    .last_sequence
                    .saturating_sub(scan - 1)
                    .max(state.first_sequence);
                self.shared
                    .read_range(start, state.last_sequence, scan as usize)
                    .await
            })
            .await?;
        let mut by_topic: BTreeMap<&str, TopicStats> = BTreeMap::new();
        for e in &events {
            let bytes = e.envelope_json().len() as u64;
            let t = by_topic.entry(e.topic()).or_insert_with(|| TopicStats {
                name: e.topic().to_owned(),
                events: 0,
                bytes: 0,
                first_seq: e.seq(),
                last_seq: e.seq(),
            });
            t.events += 1;
            t.bytes += bytes;
            t.first_seq = t.first_seq.min(e.seq());
            t.last_seq = t.last_seq.max(e.seq());
        }
        Ok(by_topic.into_values().collect())
    }

    /// Nothing to do (returns 0): the stream applies its own retention.
    async fn prune(&self, _retention: &Retention, _now: OffsetDateTime) -> Result<u64, LogError> {
        Ok(0)
    }

    /// The records of the topics bucket, by topic (from memory while the
    /// bucket is unchanged).
    async fn topic_retentions(&self) -> Result<Vec<TopicRetention>, LogError> {
        let shared = &self.shared;
        let records = shared
            .topics
            .records(shared)
            .await
            .map_err(|e| failed("topic retentions", e))?;
        Ok(records.as_ref().clone())
    }

    /// Stores `record` in the topics bucket, keeping a higher stored
    /// watermark.
    async fn set_topic_retention(&self, record: &TopicRetention) -> Result<(), LogError> {
        let shared = &self.shared;
        if !shared.state.is_connected() {
            return Err(failed("store a topic retention", Error::Disconnected));
        }
        shared
            .topics
            .set(shared, record)
            .await
            .map_err(|e| failed("store a topic retention", e))
    }

    /// Purges the oldest of `topic`'s events that `retention`'s bounds
    /// remove, after raising its watermark to the newest of them (so the
    /// returned sequence is stored already). A `max_bytes` bound is applied
    /// from this instance's index of the topic's message sizes (one mark
    /// per [`MARK_EVERY`](crate::MARK_EVERY) messages; docs/cluster.md).
    async fn prune_topic(
        &self,
        topic: &str,
        retention: &Retention,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, LogError> {
        let shared = &self.shared;
        if !shared.state.is_connected() {
            return Err(failed("prune a topic", Error::Disconnected));
        }
        crate::topics::prune(shared, topic, retention, now)
            .await
            .map_err(|e| failed("prune a topic", e))
    }
}

impl JetStreamLog {
    /// One round of per-topic retention: prunes every topic with a
    /// retention of its own at `now` (each topic's failure is logged and
    /// the others go on), then forgets the watermarks of removed
    /// retentions the stream's own retention has passed. Returns how many
    /// topics lost events.
    pub async fn prune_topics(&self, now: OffsetDateTime) -> Result<usize, LogError> {
        let records = self.topic_retentions().await?;
        let by_size: Vec<&str> = records
            .iter()
            .filter(|r| r.retention.is_some_and(|r| r.max_bytes.is_some()))
            .map(|r| r.topic.as_str())
            .collect();
        self.shared.topics.retain_size_indexes(&by_size);
        let mut pruned = 0;
        for record in records {
            let Some(retention) = record.retention else {
                continue;
            };
            match self.prune_topic(&record.topic, &retention, now).await {
                Ok(Some(through)) => {
                    pruned += 1;
                    tracing::debug!(topic = %record.topic, through, "topic pruned");
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, topic = %record.topic, "topic prune failed"),
            }
        }
        let shared = &self.shared;
        match shared.topics.forget_passed(shared).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(forgotten = n, "passed topic watermarks forgotten"),
            Err(error) => tracing::warn!(%error, "passed topic watermarks not forgotten"),
        }
        Ok(pruned)
    }

    /// Runs [`prune_topics`](Self::prune_topics) every `interval` (at least
    /// 10 ms; the first round after one interval) until the returned
    /// pruner is shut down or dropped.
    pub fn start_pruning(&self, interval: Duration) -> TopicPruner {
        let cancel = CancellationToken::new();
        let log = self.clone();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let period = interval.max(Duration::from_millis(10));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let round = log.prune_topics(OffsetDateTime::now_utc());
                tokio::select! {
                    result = round => {
                        if let Err(error) = result {
                            tracing::warn!(%error, "topic retentions not applied");
                        }
                    }
                    () = stop.cancelled() => return,
                }
            }
        });
        TopicPruner {
            cancel,
            task: Some(task),
        }
    }
}

/// The task applying per-topic retention in cluster mode
/// ([`JetStreamLog::start_pruning`]); stops when dropped.
#[derive(Debug)]
pub struct TopicPruner {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl TopicPruner {
    /// Stops the task, waiting up to `deadline` for a round in progress to
    /// end (a purge already sent completes in NATS either way).
    pub async fn shutdown(mut self, deadline: Duration) {
        self.cancel.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(deadline, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl Drop for TopicPruner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
