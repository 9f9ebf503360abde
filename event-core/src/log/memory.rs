//! An [`EventLog`] in memory: for tests, examples and embedders that want
//! the log's API without storage (it survives nothing).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{EventLog, LogBounds, LogError, Retention, TopicRetention};
use crate::event::Event;

/// An in-memory [`EventLog`]. Cheap to clone; clones share the events.
///
/// ```
/// use std::sync::Arc;
/// use event_core::log::{EventLog, MemoryLog};
/// use event_core::{EventBus, QueueStatus};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = EventBus::default();
/// let log = MemoryLog::default();
/// log.append(&[bus.publish(QueueStatus::new(1, 0))]).await.unwrap();
/// assert_eq!(log.bounds().await.unwrap().events, 1);
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    events: Arc<Mutex<VecDeque<Arc<Event>>>>,
    topics: Arc<Mutex<std::collections::BTreeMap<String, TopicRetention>>>,
}

impl MemoryLog {
    fn events(&self) -> MutexGuard<'_, VecDeque<Arc<Event>>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    fn name(&self) -> &str {
        "memory"
    }

    async fn append(&self, batch: &[Arc<Event>]) -> Result<(), LogError> {
        let mut events = self.events();
        let last = events.back().map_or(0, |e| e.seq());
        events.extend(batch.iter().filter(|e| e.seq() > last).cloned());
        Ok(())
    }

    async fn read_after(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, LogError> {
        let events = self.events();
        let start = events.partition_point(|e| e.seq() <= after_seq);
        Ok(events.range(start..).take(limit).cloned().collect())
    }

    async fn seq_at_time(&self, time: OffsetDateTime) -> Result<Option<u64>, LogError> {
        Ok(self
            .events()
            .iter()
            .find(|e| e.occurred_at() >= time)
            .map(|e| e.seq()))
    }

    async fn seq_of(&self, id: Uuid) -> Result<Option<u64>, LogError> {
        Ok(self.events().iter().find(|e| e.id() == id).map(|e| e.seq()))
    }

    async fn first_seq(&self) -> Result<u64, LogError> {
        Ok(self.events().front().map_or(0, |e| e.seq()))
    }

    async fn bounds(&self) -> Result<LogBounds, LogError> {
        let events = self.events();
        Ok(LogBounds {
            first_seq: events.front().map_or(0, |e| e.seq()),
            last_seq: events.back().map_or(0, |e| e.seq()),
            events: events.len() as u64,
            bytes: events.iter().map(|e| e.envelope_json().len() as u64).sum(),
        })
    }

    async fn topics(&self) -> Result<Vec<super::TopicStats>, LogError> {
        Ok(super::topic_stats(self.events().iter()))
    }

    async fn prune(&self, retention: &Retention, now: OffsetDateTime) -> Result<u64, LogError> {
        let mut events = self.events();
        let before = events.len();
        if let Some(age) = retention.max_age {
            let cutoff = now - age;
            while events.front().is_some_and(|e| e.occurred_at() < cutoff) {
                events.pop_front();
            }
        }
        if let Some(max) = retention.max_events {
            while events.len() as u64 > max {
                events.pop_front();
            }
        }
        if let Some(max) = retention.max_bytes {
            let mut bytes: u64 = events.iter().map(|e| e.envelope_json().len() as u64).sum();
            while bytes > max {
                match events.pop_front() {
                    Some(e) => bytes -= e.envelope_json().len() as u64,
                    None => break,
                }
            }
        }
        Ok((before - events.len()) as u64)
    }

    async fn topic_retentions(&self) -> Result<Vec<TopicRetention>, LogError> {
        Ok(self.topic_map().values().cloned().collect())
    }

    async fn set_topic_retention(&self, record: &TopicRetention) -> Result<(), LogError> {
        let mut map = self.topic_map();
        // A higher stored watermark stays (see `EventLog::prune_topic`).
        let kept = map.get(&record.topic).map_or(0, |r| r.pruned_through);
        let mut record = record.clone();
        record.pruned_through = record.pruned_through.max(kept);
        map.insert(record.topic.clone(), record);
        Ok(())
    }

    async fn prune_topic(
        &self,
        topic: &str,
        retention: &Retention,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, LogError> {
        let mut events = self.events();
        let mine: Vec<(u64, OffsetDateTime, u64)> = events
            .iter()
            .filter(|e| e.topic() == topic)
            .map(|e| (e.seq(), e.occurred_at(), e.envelope_json().len() as u64))
            .collect();
        // The newest of the topic's events that must go, by each bound.
        let mut through: Option<u64> = None;
        if let Some(age) = retention.max_age {
            let cutoff = now - age;
            through = through.max(mine.iter().filter(|e| e.1 < cutoff).map(|e| e.0).max());
        }
        if let Some(max) = retention.max_events {
            let excess = mine
                .len()
                .saturating_sub(usize::try_from(max).unwrap_or(usize::MAX));
            through = through.max(excess.checked_sub(1).map(|i| mine[i].0));
        }
        if let Some(max) = retention.max_bytes {
            let mut kept = 0;
            for e in mine.iter().rev() {
                kept += e.2;
                if kept > max {
                    through = through.max(Some(e.0));
                    break;
                }
            }
        }
        if let Some(through) = through {
            // The mark first (see `EventLog::prune_topic`).
            if let Some(record) = self.topic_map().get_mut(topic) {
                record.pruned_through = record.pruned_through.max(through);
            }
            events.retain(|e| e.topic() != topic || e.seq() > through);
        }
        Ok(through)
    }
}

impl MemoryLog {
    fn topic_map(&self) -> MutexGuard<'_, std::collections::BTreeMap<String, TopicRetention>> {
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }
}
