//! Named consumers' committed offsets in a JetStream key-value bucket, so
//! every instance of a cluster shares them.
//!
//! One key per consumer, `c_<name in hex>` (consumer names may hold `.`
//! sequences a key may not, so keys are encoded; the name itself is in the
//! value). The value is the JSON of the record:
//! `{"name","shared","mode","ack_wait_ms","committed","updated_at"}` with
//! `committed` a bus sequence number and `updated_at` in Unix nanoseconds.
//! The bucket keeps one revision per key, with the stream's replicas and
//! storage. Names are already bounded (64 bytes), and a value is at most
//! [`MAX_VALUE_BYTES`].
//!
//! Two instances saving the same consumer: the last write wins. A single
//! consumer has one connection at a time (a reconnect elsewhere is a new
//! connection, which reads the offset when it attaches), so the writes do
//! not interleave in practice; a consumer the old instance still holds
//! saves once more when its connection ends, at most moving the offset to
//! what that connection really consumed.

use std::time::Duration;

use async_nats::jetstream::{kv, stream};
use event_core::{AckMode, ConsumerRecord, LogError, OffsetStore, async_trait};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{Error, NatsCluster};

/// Largest stored record, in bytes (a record is about 200).
pub const MAX_VALUE_BYTES: usize = 1024;

/// Most records one listing reads (the host stores at most
/// `CONSUMER_MAX`, 1,000 by default).
const MAX_LISTED: usize = 100_000;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// [`OffsetStore`] in the cluster's key-value bucket
/// ([`NatsConfig::consumers_bucket`](crate::NatsConfig::consumers_bucket)).
#[derive(Clone)]
pub struct KvOffsets {
    store: kv::Store,
    bucket: String,
}

impl std::fmt::Debug for KvOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvOffsets")
            .field("bucket", &self.bucket)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    name: String,
    shared: bool,
    mode: String,
    ack_wait_ms: u64,
    committed: u64,
    updated_at: i128,
}

impl NatsCluster {
    /// The consumers' offset store, creating (or updating) its bucket.
    pub async fn offsets(&self) -> Result<KvOffsets, Error> {
        let config = self.config();
        let js = &self.shared().js;
        let stream = format!("KV_{}", config.consumers_bucket);
        let failed = |e: &dyn std::fmt::Display| Error::Stream {
            stream: stream.clone(),
            message: e.to_string(),
        };
        js.create_or_update_stream(stream::Config {
            max_message_size: MAX_VALUE_BYTES as i32,
            ..crate::bucket::bucket_stream(
                config,
                &config.consumers_bucket,
                "matric named consumers' committed offsets",
            )
        })
        .await
        .map_err(|e| failed(&e))?;
        let store = js
            .get_key_value(&config.consumers_bucket)
            .await
            .map_err(|e| failed(&e))?;
        Ok(KvOffsets {
            store,
            bucket: config.consumers_bucket.clone(),
        })
    }
}

fn key(name: &str) -> String {
    crate::bucket::hex_key("c_", name)
}

fn storage(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> LogError {
    // The driver's words in the message too: the host's JSON error shows
    // only the message (they never hold the NATS URL).
    LogError::storage(
        format!("consumer offsets (JetStream key-value): {what}: {e}"),
        e,
    )
}

async fn bounded<T, E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, LogError> {
    match tokio::time::timeout(CALL_TIMEOUT, work).await {
        Ok(result) => result.map_err(|e| storage(what, e)),
        Err(_) => Err(storage(
            what,
            Error::Replay(format!("no answer within {} ms", CALL_TIMEOUT.as_millis())),
        )),
    }
}

fn decode(bytes: &[u8]) -> Result<ConsumerRecord, LogError> {
    let stored: Stored = serde_json::from_slice(bytes).map_err(|e| storage("decode", e))?;
    Ok(ConsumerRecord {
        mode: AckMode::parse(&stored.mode).ok_or_else(|| {
            storage(
                "decode",
                Error::Replay(format!("ack mode {:?}", stored.mode)),
            )
        })?,
        name: stored.name,
        shared: stored.shared,
        ack_wait: Duration::from_millis(stored.ack_wait_ms),
        committed: stored.committed,
        updated_at: OffsetDateTime::from_unix_timestamp_nanos(stored.updated_at)
            .map_err(|e| storage("decode", e))?,
    })
}

#[async_trait]
impl OffsetStore for KvOffsets {
    async fn load(&self, name: &str) -> Result<Option<ConsumerRecord>, LogError> {
        match bounded("load", self.store.get(key(name))).await? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn save(&self, record: &ConsumerRecord) -> Result<(), LogError> {
        let stored = Stored {
            name: record.name.clone(),
            shared: record.shared,
            mode: record.mode.as_str().to_owned(),
            ack_wait_ms: u64::try_from(record.ack_wait.as_millis()).unwrap_or(u64::MAX),
            committed: record.committed,
            updated_at: record.updated_at.unix_timestamp_nanos(),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| storage("encode", e))?;
        bounded("save", self.store.put(key(&record.name), value.into())).await?;
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<bool, LogError> {
        let key = key(name);
        if bounded("delete", self.store.get(key.clone()))
            .await?
            .is_none()
        {
            return Ok(false);
        }
        bounded("delete", self.store.purge(key)).await?;
        Ok(true)
    }

    async fn list(&self) -> Result<Vec<ConsumerRecord>, LogError> {
        let failed = |e: &dyn std::fmt::Display| Error::Stream {
            stream: format!("KV_{}", self.bucket),
            message: e.to_string(),
        };
        let records = bounded("list", async {
            let mut listing = self.store.keys().await.map_err(|e| failed(&e))?;
            // A key written while the listing runs comes again: once each.
            let mut keys = std::collections::BTreeSet::new();
            while let Some(key) = listing.next().await {
                keys.insert(key.map_err(|e| failed(&e))?);
                if keys.len() > MAX_LISTED {
                    return Err(failed(&format!("more than {MAX_LISTED} consumers stored")));
                }
            }
            let mut records = Vec::with_capacity(keys.len());
            for key in keys {
                // Removed since the listing started: skip.
                if let Some(bytes) = self.store.get(key).await.map_err(|e| failed(&e))? {
                    records.push(bytes);
                }
            }
            Ok::<_, Error>(records)
        })
        .await?;
        let mut records = records
            .iter()
            .map(|bytes| decode(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_consumer_name_is_a_valid_key() {
        assert_eq!(key("a.b"), "c_612e62");
        // `..`, a leading or trailing `.` are valid names but not keys.
        for name in ["..", ".a", "a.", "x".repeat(64).as_str()] {
            let k = key(name);
            assert!(
                k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{k}"
            );
        }
    }
}
