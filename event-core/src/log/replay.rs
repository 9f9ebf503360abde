//! Replay from the log for cursors the ring no longer (or never) held.

use std::sync::Arc;

use async_trait::async_trait;

use super::{EventLog, LogError};
use crate::bus::EventBus;
use crate::event::Event;
use crate::filter::EventFilter;
use crate::replay_source::{ReplayPermit, ReplaySource, Replayed};
use crate::ring::{Cursor, ReplayMiss};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a replay waits for the log to commit what the bus published.
const COMMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A [`ReplaySource`] reading an [`EventLog`], then joining the bus's ring.
///
/// The log may be a little behind the bus (the last batch is still being
/// committed): a replay waits until the log holds everything published
/// when it was asked (a few milliseconds), then reads the log after the
/// cursor and joins the ring. A history page reads the log and joins the
/// ring when the ring still holds the log's end; otherwise the page ends
/// with the log.
#[derive(Clone)]
pub struct LogReplay {
    bus: EventBus,
    log: Arc<dyn EventLog>,
    max_replay: usize,
    max_replay_bytes: usize,
    /// The memory every replay from the log shares, in KiB.
    memory: Arc<Semaphore>,
    /// Reads from the log in progress: what a read decodes is held before
    /// it can be weighed, so few run at once.
    reads: Arc<Semaphore>,
}

/// Rows read from the log at a time: small, because a read is weighed only
/// once decoded (32 events of the largest size are 8 MiB).
const READ_CHUNK: usize = 32;
/// Reads from the log decoding at once, across all replays.
const CONCURRENT_READS: usize = 2;
/// Most bytes of events in one history page (at least one event).
pub const MAX_PAGE_BYTES: usize = 4 << 20;
/// How long a replay waits for room in the shared replay memory.
const MEMORY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What a replayed event holds in memory: its payload and its envelope.
fn weight(event: &Event) -> usize {
    event.envelope_json().len().saturating_mul(2)
}

impl std::fmt::Debug for LogReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogReplay")
            .field("log", &self.log.name())
            .field("max_replay", &self.max_replay)
            .field("max_replay_bytes", &self.max_replay_bytes)
            .field("memory_kib_free", &self.memory.available_permits())
            .finish()
    }
}

impl LogReplay {
    /// Replays from `log` for `bus`: at most 100,000 events and 8 MiB per
    /// replay, 64 MiB for all replays at once.
    pub fn new(bus: &EventBus, log: Arc<dyn EventLog>) -> Self {
        LogReplay {
            bus: bus.clone(),
            log,
            max_replay: 100_000,
            max_replay_bytes: 8 << 20,
            memory: Arc::new(Semaphore::new(64 << 10)),
            reads: Arc::new(Semaphore::new(CONCURRENT_READS)),
        }
    }

    /// Up to `limit` events after `after` from the log, one bounded read at
    /// a time.
    async fn read(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let _slot = self
            .reads
            .acquire()
            .await
            .map_err(|_| ReplayMiss::Expired)?;
        self.log
            .read_after(after, limit.min(READ_CHUNK))
            .await
            .map_err(unavailable)
    }

    /// The most bytes of events one replay holds (`EVENT_LOG_MAX_REPLAY_BYTES`,
    /// each event counted twice: payload and envelope); a cursor further
    /// behind is [`ReplayMiss::Expired`].
    pub fn max_replay_bytes(mut self, max: usize) -> Self {
        self.max_replay_bytes = max.max(1);
        self
    }

    /// The memory all replays from the log share
    /// (`EVENT_LOG_REPLAY_MEMORY_BYTES`): a replay holds its share until its
    /// events are written; one that finds no room within 2 s is
    /// [`ReplayMiss::Expired`] (the client resyncs), so clients that resume
    /// together and read slowly cannot make the server hold more.
    pub fn replay_memory(mut self, bytes: usize) -> Self {
        let kib = (bytes >> 10).clamp(1, Semaphore::MAX_PERMITS);
        self.memory = Arc::new(Semaphore::new(kib));
        self
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
        // This process's events are numbered without gaps and all logged:
        // a cursor among them is served while the event after it is stored
        // (or, with nothing stored yet, still to come).
        if seq + 1 >= self.bus.first_seq() {
            return match first {
                0 => Ok(seq),
                first if seq + 1 >= first => Ok(seq),
                _ => Err(ReplayMiss::Expired),
            };
        }
        // An earlier process's numbers may have gaps: the cursor's own
        // event must still be stored, else what came between it and the
        // oldest stored event may have been pruned or never logged.
        if first == 0 || seq < first {
            return Err(ReplayMiss::Expired);
        }
        Ok(seq)
    }

    /// At most `limit` events (and about [`MAX_PAGE_BYTES`]) after the
    /// sequence `after` (which [`resolve`](Self::resolve) accepted), from
    /// the log and then the ring, oldest first.
    pub async fn page(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut bytes = 0;
        let mut cursor = after;
        loop {
            let want = (limit - events.len()).min(READ_CHUNK);
            let chunk = self.read(cursor, want).await?;
            let exhausted = chunk.len() < want;
            for ev in chunk {
                if !events.is_empty() && bytes + weight(&ev) > MAX_PAGE_BYTES {
                    return Ok(events);
                }
                bytes += weight(&ev);
                cursor = ev.seq();
                events.push(ev);
            }
            if events.len() >= limit {
                return Ok(events);
            }
            if exhausted {
                break;
            }
        }
        self.join_ring(&mut events, after, limit);
        Ok(events)
    }

    /// Extends events read to the log's end with the ring's newer ones, when
    /// the ring still holds the log's end.
    fn join_ring(&self, events: &mut Vec<Arc<Event>>, after: u64, limit: usize) {
        // Events between the log's end and this process's first sequence
        // were published by an earlier process and never committed: they
        // are gone, and nobody was told they were kept.
        let through = events
            .last()
            .map_or(after, |e| e.seq())
            .max(self.bus.first_seq().saturating_sub(1));
        // The ring may have moved past the log's end (a burst the log has
        // not committed yet): then the events end with the log.
        if through < self.bus.last_seq()
            && let Ok(rest) = self
                .bus
                .history(Some(&Cursor::Seq(through)), limit - events.len())
        {
            events.extend(rest);
        }
    }

    /// Everything after `after` within the replay bounds, holding its share
    /// of the replay memory.
    async fn bounded_replay(&self, after: u64) -> Result<Replayed, ReplayMiss> {
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut bytes = 0;
        let mut held: Option<OwnedSemaphorePermit> = None;
        let mut cursor = after;
        loop {
            let chunk = self.read(cursor, READ_CHUNK).await?;
            let exhausted = chunk.len() < READ_CHUNK;
            let chunk_bytes: usize = chunk.iter().map(|e| weight(e)).sum();
            bytes += chunk_bytes;
            if events.len() + chunk.len() > self.max_replay || bytes > self.max_replay_bytes {
                return Err(ReplayMiss::Expired);
            }
            let kib = u32::try_from(chunk_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
            if kib > 0 {
                let permit =
                    tokio::time::timeout(MEMORY_WAIT, self.memory.clone().acquire_many_owned(kib))
                        .await
                        .map_err(|_| {
                            tracing::debug!("replay memory full; the client resyncs");
                            ReplayMiss::Expired
                        })?
                        .map_err(|_| ReplayMiss::Expired)?;
                match held.as_mut() {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
            }
            if let Some(last) = chunk.last() {
                cursor = last.seq();
            }
            events.extend(chunk);
            if exhausted {
                break;
            }
        }
        self.join_ring(&mut events, after, usize::MAX);
        let mut replayed = Replayed::new(events, after);
        replayed.hold = held.map(ReplayPermit::new);
        Ok(replayed)
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

impl LogReplay {
    /// Refuses a reader (with `filter`; `None`: any) that would miss events
    /// a topic's own retention removed after `after`.
    async fn check_topics(
        &self,
        after: u64,
        filter: Option<&EventFilter>,
    ) -> Result<(), ReplayMiss> {
        let retentions = self.log.topic_retentions().await.map_err(unavailable)?;
        if super::pruned_for(&retentions, filter, after) {
            return Err(ReplayMiss::Expired);
        }
        Ok(())
    }

    async fn replay_for(
        &self,
        cursor: &Cursor,
        filter: Option<&EventFilter>,
    ) -> Result<Replayed, ReplayMiss> {
        // The caller subscribed before asking: once the log holds every
        // event published until now, the replay reaches the live stream.
        let target = self.bus.last_seq();
        if !self.bus.logged(target, COMMIT_WAIT).await {
            return Err(ReplayMiss::Expired);
        }
        let after = self.resolve(cursor).await?;
        self.check_topics(after, filter).await?;
        let replayed = self.bounded_replay(after).await?;
        // Again after reading: a topic pruned while we read raised its mark
        // before its events went, so a read that missed them is caught here.
        self.check_topics(after, filter).await?;
        // Joined to the ring where the log ran out: anything after the last
        // event here is live.
        if replayed.through < target {
            return Err(ReplayMiss::Expired);
        }
        Ok(replayed)
    }

    async fn history_for(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let (after, checked) = match cursor {
            Some(cursor) => {
                let after = self.resolve(cursor).await?;
                self.check_topics(after, filter).await?;
                (after, true)
            }
            None => (self.first_seq().await?.saturating_sub(1), false),
        };
        let page = self.page(after, limit).await?;
        if checked {
            // As in `replay_for`: pruned while we read.
            self.check_topics(after, filter).await?;
        }
        Ok(page)
    }
}

#[async_trait]
impl ReplaySource for LogReplay {
    async fn replay_since(&self, cursor: &Cursor) -> Result<Replayed, ReplayMiss> {
        self.replay_for(cursor, None).await
    }

    async fn replay_matching(
        &self,
        cursor: &Cursor,
        filter: &EventFilter,
    ) -> Result<Replayed, ReplayMiss> {
        self.replay_for(cursor, Some(filter)).await
    }

    async fn history(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        self.history_for(cursor, limit, None).await
    }

    async fn history_matching(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        self.history_for(cursor, limit, Some(filter)).await
    }
}
