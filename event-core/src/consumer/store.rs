//! Where consumers keep their committed offsets.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::AckMode;
use crate::log::LogError;

/// A named consumer as stored: its settings and committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The consumer's (or group's) name.
    pub name: String,
    /// A group (several members share the stream) rather than a single
    /// consumer.
    pub shared: bool,
    /// The acknowledgement mode.
    pub mode: AckMode,
    /// How long an explicit-mode delivery waits for its ack.
    pub ack_wait: Duration,
    /// Every event at or below this sequence number is done with
    /// (acknowledged, or filtered out).
    pub committed: u64,
    /// When the record was last written.
    pub updated_at: OffsetDateTime,
}

/// Storage for [`ConsumerRecord`]s: the event log's database (`event-log`
/// implements it for SQLite and PostgreSQL), or [`MemoryOffsets`].
///
/// Writes are rare (a consumer saves at most every
/// [`ConsumerConfig::save_interval`](super::ConsumerConfig::save_interval)),
/// so implementations need not batch.
#[async_trait]
pub trait OffsetStore: Send + Sync + 'static {
    /// The record named `name`, if any.
    async fn load(&self, name: &str) -> Result<Option<ConsumerRecord>, LogError>;
    /// Creates or replaces `record`.
    async fn save(&self, record: &ConsumerRecord) -> Result<(), LogError>;
    /// Removes the record; `false` if there was none.
    async fn delete(&self, name: &str) -> Result<bool, LogError>;
    /// Every record, by name.
    async fn list(&self) -> Result<Vec<ConsumerRecord>, LogError>;
}

/// Offsets in memory: for tests and hosts without a database (forgotten at
/// restart).
#[derive(Debug, Default)]
pub struct MemoryOffsets(Mutex<BTreeMap<String, ConsumerRecord>>);

impl MemoryOffsets {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ConsumerRecord>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl OffsetStore for MemoryOffsets {
    async fn load(&self, name: &str) -> Result<Option<ConsumerRecord>, LogError> {
        Ok(self.map().get(name).cloned())
    }

    async fn save(&self, record: &ConsumerRecord) -> Result<(), LogError> {
        self.map().insert(record.name.clone(), record.clone());
        Ok(())
    }

    async fn delete(&self, name: &str) -> Result<bool, LogError> {
        Ok(self.map().remove(name).is_some())
    }

    async fn list(&self) -> Result<Vec<ConsumerRecord>, LogError> {
        Ok(self.map().values().cloned().collect())
    }
}
