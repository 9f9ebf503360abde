//! Replay from the log for cursors the ring no longer (or never) held.

use std::sync::Arc;

use async_trait::async_trait;

use super::{EventLog, LogError};
use crate::bus::EventBus;
use crate::event::Event;
use crate::replay_source::{ReplaySource, Replayed};
use crate::ring::{Cursor, ReplayMiss};

/// A [`ReplaySource`] reading an [`EventLog`], then joining the bus's ring.
///
/// The log may be a little behind the bus (the last batch is still being
/// committed), so a replay reads the log after the cursor and then takes
/// the rest from the ring; if the ring cannot join the log's end (the log
/// is more than a ring behind), the client resyncs rather than missing
/// events.
#[derive(Clone)]
pub struct LogReplay {
    bus: EventBus,
    log: Arc<dyn EventLog>,
    max_replay: usize,
}

impl std::fmt::Debug for LogReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReplay")
            .field("log", &self.log.name())
            .field("max_replay", &self.max_replay)
            .finish()
    }
}

impl LogReplay {
    /// Replays from `log` for `bus`, at most 100,000 events at a time.
    pub fn new(bus: &EventBus, log: Arc<dyn EventLog>) -> Self {
        LogReplay {
            bus: bus.clone(),
            log,
            max_replay: 100_000,
        }
    }

    /// The most events one replay returns (`EVENT_LOG_MAX_REPLAY`); a cursor
    /// further behind is [`ReplayMiss::Expired`].
    pub fn max_replay(mut self, max: usize) -> Self {
        self.max_replay = max.max(1);
        self
    }

    /// The sequence number of the event `cursor` names, if the log can
    /// serve everything after it.
    pub async fn resolve(&self, cursor: &Cursor) -> Result<u64, ReplayMiss> {
        let first = self.log.first_seq().await.map_err(unavailable)?;
        let seq = match *cursor {
            Cursor::Seq(seq) => seq,
            Cursor::Id(id) => self
                .log
                .seq_of(id)
                .await
                .map_err(unavailable)?
                // Not in the log: either never published here, or pruned.
                .ok_or(if first > 0 {
                    ReplayMiss::Expired
                } else {
                    ReplayMiss::Unknown
                })?,
        };
        if seq > self.bus.last_seq() {
            return Err(ReplayMiss::Unknown);
        }
        // A cursor older than the oldest stored event: what came between
        // it and that event may have been pruned, or never logged.
        if first == 0 || seq < first {
            return Err(ReplayMiss::Expired);
        }
        Ok(seq)
    }

    /// At most `limit` events after the sequence `after` (which
    /// [`resolve`](Self::resolve) accepted), from the log and then the
    /// ring, oldest first.
    pub async fn page(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let mut events = self
            .log
            .read_after(after, limit)
            .await
            .map_err(unavailable)?;
        if events.len() < limit {
            // Events between the log's end and this process's first
            // sequence were published by an earlier process and never
            // committed: they are gone, and nobody was told they were kept.
            let through = events
                .last()
                .map_or(after, |e| e.seq())
                .max(self.bus.first_seq().saturating_sub(1));
            if through < self.bus.last_seq() {
                let rest = self
                    .bus
                    .history(Some(&Cursor::Seq(through)), limit - events.len())?;
                events.extend(rest);
            }
        }
        Ok(events)
    }

    /// The oldest event's sequence number in the log (0: empty).
    pub async fn first_seq(&self) -> Result<u64, ReplayMiss> {
        self.log.first_seq().await.map_err(unavailable)
    }
}

fn unavailable(error: LogError) -> ReplayMiss {
    tracing::warn!(%error, "event log unreadable for a replay");
    ReplayMiss::Expired
}

#[async_trait]
impl ReplaySource for LogReplay {
    async fn replay_since(&self, cursor: &Cursor) -> Result<Replayed, ReplayMiss> {
        let after = self.resolve(cursor).await?;
        let events = self.page(after, self.max_replay + 1).await?;
        if events.len() > self.max_replay {
            return Err(ReplayMiss::Expired);
        }
        // `page` joined the ring when the log ran out: anything after the
        // last event here is live.
        Ok(Replayed::new(events, after))
    }

    async fn history(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let after = match cursor {
            Some(cursor) => self.resolve(cursor).await?,
            None => self.first_seq().await?.saturating_sub(1),
        };
        self.page(after, limit).await
    }
}
