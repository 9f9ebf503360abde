//! Per-topic retention on the cluster's stream: the records in a key-value
//! bucket every instance shares, and pruning one topic's subjects.
//!
//! # Records
//!
//! One key per topic with a retention of its own (or a pruning watermark)
//! in the bucket [`NatsConfig::topics_bucket`](crate::NatsConfig::topics_bucket),
//! `t_<topic in hex>` (a topic may hold `.` sequences a key may not). The
//! value is the JSON of the record:
//! `{"topic","retention":{"max_age_ms","max_events","max_bytes"}|null,"pruned_through"}`
//! with `pruned_through` a bus sequence number. The bucket keeps one
//! revision per key, with the stream's replicas and storage, at most
//! [`MAX_TOPIC_RECORDS`] keys of at most [`MAX_TOPIC_RECORD_BYTES`].
//!
//! Every write is a compare-and-set on the key's revision, and a write
//! never lowers the watermark: an admin's `PUT` racing a prune on another
//! instance keeps the newer watermark, and the prune, which only raises
//! the watermark, keeps the admin's bounds.
//!
//! Readers (every replay from the stream, named consumers at a gap) ask
//! the records often, so each instance keeps them in memory and re-reads
//! them only when the bucket's stream changed (one stream-info request
//! per question, not one per key).
//!
//! # Pruning
//!
//! An event's subject is `<prefix>.<dot name>.<partition>.<topic>`, so a
//! topic's events are exactly the subjects `<prefix>.*.*.*.<topic>`
//! ([`NatsConfig::topic_subjects`](crate::NatsConfig::topic_subjects)).
//! [`JetStreamLog::prune_topic`](crate::JetStreamLog) reads that filter's
//! oldest messages, headers only, and finds the newest one a bound
//! removes: by `max_events`, a message with at least that many of the
//! topic's messages after it (the consumer's `pending` count); by
//! `max_age`, a message the stream stored before `now - max_age`. It
//! raises the topic's watermark to that message's bus sequence (exact:
//! the newest removed event) *before* it purges the filter below it
//! (`purge { filter, seq }`), so a reader who checks the watermark after
//! its read sees every purge that could have cut into it. At most
//! [`PRUNE_CHUNK`] messages are read before each purge and
//! [`MAX_PRUNE_PER_ROUND`] per topic and round; the rest waits for the
//! next round.
//!
//! By `max_bytes`, the cut is the newest message with more than that
//! many bytes of the topic at and after it; [`sizes`] finds it from an
//! index each instance keeps of the topic's message sizes, reading only
//! what was stored since its last round and at most [`MARK_EVERY`] older
//! messages.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use async_nats::jetstream::stream;
use event_core::{MAX_TOPIC_RETENTIONS, Retention, TopicRetention};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::Error;
use crate::cluster::Shared;
use crate::codec::bus_seq;
use crate::replay::ordered_on;

mod prune;
mod sizes;
pub(crate) use prune::prune;
pub use sizes::{MARK_EVERY, MAX_INDEX_PER_ROUND};

/// Most keys in the topics bucket: [`MAX_TOPIC_RETENTIONS`] topics with a
/// retention (the API's bound) and as many watermarks of removed ones,
/// which are dropped once the stream's own retention has passed them.
pub const MAX_TOPIC_RECORDS: usize = 2 * MAX_TOPIC_RETENTIONS;

/// Largest stored record, in bytes (a record is about 150).
pub const MAX_TOPIC_RECORD_BYTES: usize = 1024;

/// Messages of a topic read before their purge.
pub const PRUNE_CHUNK: usize = 10_000;

/// Most messages of one topic removed in one round.
pub const MAX_PRUNE_PER_ROUND: usize = 100_000;

/// How long one request (or one message of a scan) may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Compare-and-set attempts before a write gives up (instances writing
/// the same key at once).
const CAS_ATTEMPTS: usize = 16;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    topic: String,
    #[serde(default)]
    retention: Option<Bounds>,
    pruned_through: u64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Bounds {
    max_age_ms: Option<u64>,
    max_events: Option<u64>,
    max_bytes: Option<u64>,
}

impl Stored {
    fn of(record: &TopicRetention) -> Stored {
        Stored {
            topic: record.topic.clone(),
            retention: record.retention.map(|r| Bounds {
                max_age_ms: r
                    .max_age
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                max_events: r.max_events,
                max_bytes: r.max_bytes,
            }),
            pruned_through: record.pruned_through,
        }
    }

    fn record(self) -> TopicRetention {
        TopicRetention {
            topic: self.topic,
            retention: self.retention.map(|b| Retention {
                max_age: b.max_age_ms.map(Duration::from_millis),
                max_events: b.max_events,
                max_bytes: b.max_bytes,
            }),
            pruned_through: self.pruned_through,
        }
    }
}

fn key(topic: &str) -> String {
    crate::bucket::hex_key("t_", topic)
}

/// The records as last read, and the bucket state they were read at.
struct Cached {
    /// The bucket stream's last sequence and message count.
    state: (u64, u64),
    records: Arc<Vec<TopicRetention>>,
}

/// One instance's handle on the topics bucket (in [`Shared`]).
#[derive(Default)]
pub(crate) struct TopicRecords {
    store: OnceCell<kv::Store>,
    cache: Mutex<Option<Cached>>,
    /// This instance's index of each `max_bytes` topic's sizes, each
    /// behind a lock of its own, held across one round's reads of that
    /// topic only.
    sizes: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<sizes::SizeIndex>>>>,
}

fn bucket_error(shared: &Shared, e: impl std::fmt::Display) -> Error {
    Error::Stream {
        stream: format!("KV_{}", shared.config.topics_bucket()),
        message: e.to_string(),
    }
}

/// `work` within [`CALL_TIMEOUT`].
async fn bounded<T>(
    shared: &Shared,
    what: &str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(CALL_TIMEOUT, work).await {
        Ok(result) => result,
        Err(_) => Err(bucket_error(
            shared,
            format!("{what}: no answer within {} ms", CALL_TIMEOUT.as_millis()),
        )),
    }
}

impl TopicRecords {
    /// The bucket, created (or updated) first when `create`; `None` when it
    /// does not exist and `create` is false (no retention was ever set).
    async fn store(&self, shared: &Shared, create: bool) -> Result<Option<kv::Store>, Error> {
        if let Some(store) = self.store.get() {
            return Ok(Some(store.clone()));
        }
        let config = &shared.config;
        let bucket = config.topics_bucket();
        let name = format!("KV_{bucket}");
        if create {
            shared
                .js
                .create_or_update_stream(stream::Config {
                    max_messages: MAX_TOPIC_RECORDS as i64,
                    max_message_size: MAX_TOPIC_RECORD_BYTES as i32,
                    ..crate::bucket::bucket_stream(
                        config,
                        &bucket,
                        "matric per-topic retentions and pruning watermarks",
                    )
                })
                .await
                .map_err(|e| bucket_error(shared, e))?;
        } else {
            match shared.js.get_stream(&name).await {
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                        if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
                {
                    return Ok(None);
                }
                Err(e) => return Err(bucket_error(shared, e)),
            }
        }
        let store = shared
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|e| bucket_error(shared, e))?;
        Ok(Some(
            self.store.get_or_init(|| async { store }).await.clone(),
        ))
    }

    /// The lock of `topic`'s size index (made empty the first time).
    pub(crate) fn size_index(&self, topic: &str) -> Arc<tokio::sync::Mutex<sizes::SizeIndex>> {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .clone()
    }

    /// Keeps the size indexes of `keep`'s topics only.
    pub(crate) fn retain_size_indexes(&self, keep: &[&str]) {
        self.sizes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|topic, _| keep.contains(&topic.as_str()));
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record, by topic: from memory while the bucket is unchanged.
    pub(crate) async fn records(&self, shared: &Shared) -> Result<Arc<Vec<TopicRetention>>, Error> {
        bounded(shared, "read the topic records", async {
            let Some(store) = self.store(shared, false).await? else {
                return Ok(Arc::default());
            };
            let info = store
                .stream
                .get_info()
                .await
                .map_err(|e| bucket_error(shared, e))?;
            let state = (info.state.last_sequence, info.state.messages);
            if let Some(cached) = self.cached().as_ref()
                && cached.state == state
            {
                return Ok(cached.records.clone());
            }
            let records = Arc::new(load(shared, &store, info.state.messages).await?);
            *self.cached() = Some(Cached {
                state,
                records: records.clone(),
            });
            Ok(records)
        })
        .await
    }

    /// Creates or replaces `record`; the stored watermark stays if higher.
    pub(crate) async fn set(&self, shared: &Shared, record: &TopicRetention) -> Result<(), Error> {
        let new = Stored::of(record);
        self.modify(shared, &record.topic, |current| {
            Some(Stored {
                pruned_through: current
                    .map_or(0, |c| c.pruned_through)
                    .max(new.pruned_through),
                ..new.clone()
            })
        })
        .await
    }

    /// Raises `topic`'s watermark to `through` (a bus sequence), keeping
    /// its bounds.
    pub(crate) async fn raise(
        &self,
        shared: &Shared,
        topic: &str,
        through: u64,
    ) -> Result<(), Error> {
        self.modify(shared, topic, |current| match current {
            Some(c) if c.pruned_through >= through => None,
            Some(c) => Some(Stored {
                pruned_through: through,
                ..c.clone()
            }),
            None => Some(Stored {
                topic: topic.to_owned(),
                retention: None,
                pruned_through: through,
            }),
        })
        .await
    }

    /// Writes `change(current)` by compare-and-set (`None`: nothing to
    /// write), retrying when another instance wrote first.
    async fn modify(
        &self,
        shared: &Shared,
        topic: &str,
        change: impl Fn(Option<&Stored>) -> Option<Stored>,
    ) -> Result<(), Error> {
        let store = self
            .store(shared, true)
            .await?
            .ok_or_else(|| bucket_error(shared, "the bucket was not created"))?;
        let key = key(topic);
        for _ in 0..CAS_ATTEMPTS {
            let entry = bounded(shared, "read a topic record", async {
                store
                    .entry(key.clone())
                    .await
                    .map_err(|e| bucket_error(shared, e))
            })
            .await?
            .filter(|e| e.operation == kv::Operation::Put);
            let current = match &entry {
                Some(e) => Some(
                    serde_json::from_slice::<Stored>(&e.value)
                        .map_err(|e| bucket_error(shared, format!("topic {topic:?}: {e}")))?,
                ),
                None => None,
            };
            let Some(next) = change(current.as_ref()) else {
                return Ok(());
            };
            let value = serde_json::to_vec(&next).map_err(|e| bucket_error(shared, e))?;
            let written = bounded(shared, "write a topic record", async {
                Ok(match &entry {
                    Some(e) => match store.update(&key, value.into(), e.revision).await {
                        Ok(_) => Ok(()),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Err(None),
                        Err(e) => Err(Some(e.to_string())),
                    },
                    None => {
                        // One message per key: the stream's count is the
                        // number of records.
                        let stored = store
                            .stream
                            .get_info()
                            .await
                            .map_err(|e| bucket_error(shared, e))?
                            .state
                            .messages;
                        if stored >= MAX_TOPIC_RECORDS as u64 {
                            return Err(bucket_error(
                                shared,
                                format!(
                                    "at most {MAX_TOPIC_RECORDS} topic records (retentions and \
                                     the watermarks of removed ones) may be stored"
                                ),
                            ));
                        }
                        match store.create(&key, value.into()).await {
                            Ok(_) => Ok(()),
                            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Err(None),
                            Err(e) => Err(Some(e.to_string())),
                        }
                    }
                })
            })
            .await?;
            match written {
                Ok(()) => return Ok(()),
                // Another instance wrote first: read again.
                Err(None) => continue,
                Err(Some(message)) => {
                    return Err(bucket_error(shared, format!("topic {topic:?}: {message}")));
                }
            }
        }
        Err(bucket_error(
            shared,
            format!("topic {topic:?}: still contended after {CAS_ATTEMPTS} attempts"),
        ))
    }

    /// Removes the records that only keep a watermark the stream's own
    /// retention has passed (every cursor below it is expired anyway);
    /// returns how many.
    pub(crate) async fn forget_passed(&self, shared: &Shared) -> Result<usize, Error> {
        let Some(store) = self.store(shared, false).await? else {
            return Ok(0);
        };
        let info = bounded(shared, "stream info", async {
            shared
                .stream
                .get_info()
                .await
                .map_err(|e| Error::Replay(e.to_string()))
        })
        .await?;
        let first = bus_seq(info.state.first_sequence);
        let mut forgotten = 0;
        for record in self.records(shared).await?.iter() {
            if record.retention.is_some() || record.pruned_through >= first {
                continue;
            }
            let key = key(&record.topic);
            let entry = bounded(shared, "read a topic record", async {
                store
                    .entry(key.clone())
                    .await
                    .map_err(|e| bucket_error(shared, e))
            })
            .await?;
            let Some(entry) = entry else { continue };
            let still = serde_json::from_slice::<Stored>(&entry.value)
                .is_ok_and(|s| s.retention.is_none() && s.pruned_through < first);
            if !still {
                continue;
            }
            // Below the revision read: a record written since is kept.
            let subject = format!("{}{key}", store.prefix);
            bounded(shared, "forget a topic record", async {
                store
                    .stream
                    .purge()
                    .filter(subject)
                    .sequence(entry.revision + 1)
                    .await
                    .map_err(|e| bucket_error(shared, e))
            })
            .await?;
            forgotten += 1;
        }
        Ok(forgotten)
    }
}

/// Every record in the bucket (`messages` of them, one per key).
async fn load(
    shared: &Shared,
    store: &kv::Store,
    messages: u64,
) -> Result<Vec<TopicRetention>, Error> {
    if messages == 0 {
        return Ok(Vec::new());
    }
    // One message per key (the bucket keeps one revision): all of them.
    let (mut stream, _guard, pending) = ordered_on(
        &store.stream,
        pull::OrderedConfig {
            filter_subject: format!("{}>", store.prefix),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        },
    )
    .await?;
    let mut records = Vec::new();
    if pending == 0 {
        return Ok(records);
    }
    while let Some(item) = stream.next().await {
        let message = item.map_err(|e| bucket_error(shared, e))?;
        let info = message.info().map_err(|e| bucket_error(shared, e))?;
        let pending = info.pending;
        let marker = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some();
        if !marker {
            match serde_json::from_slice::<Stored>(&message.payload) {
                Ok(stored) => records.push(stored.record()),
                Err(error) => {
                    tracing::warn!(%error, subject = %message.subject, "undecodable topic record; skipped")
                }
            }
        }
        if pending == 0 || records.len() > MAX_TOPIC_RECORDS {
            break;
        }
    }
    records.sort_by(|a, b| a.topic.cmp(&b.topic));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_topic_is_a_valid_key() {
        assert_eq!(key("a.b"), "t_612e62");
        for topic in ["a..b", "a.", "x".repeat(128).as_str()] {
            let k = key(topic);
            assert!(
                k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{k}"
            );
        }
    }

    #[test]
    fn a_record_survives_its_json() {
        let record = TopicRetention {
            topic: "gpu.large".into(),
            retention: Some(Retention {
                max_age: Some(Duration::from_secs(90)),
                max_events: None,
                max_bytes: Some(7),
            }),
            pruned_through: 42_000_000,
        };
        let json = serde_json::to_vec(&Stored::of(&record)).unwrap();
        assert!(json.len() < MAX_TOPIC_RECORD_BYTES);
        let back: Stored = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.record(), record);
    }
}
