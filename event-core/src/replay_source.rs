//! Replay beyond the local ring: a longer history the host can plug in.
//!
//! The bus's [`ReplayRing`](crate::ReplayRing) keeps only the most recent
//! events. A host that also has a durable, ordered log of the same events —
//! a NATS JetStream stream shared by several instances, for example — can
//! offer it as a [`ReplaySource`]. A transport asks the source only when the
//! ring cannot serve a client's cursor ([`ReplayMiss`]); if the source cannot
//! either, the client is told to resync as before.
//!
//! The hand-over to live delivery stays the transport's job and works as
//! with the ring: subscribe to live events first, then ask the source, then
//! drop live events whose sequence is at most [`Replayed::through`]. The
//! source may answer with events the local bus has not delivered yet (the
//! log can be ahead of the bus); `through` covers them, so they are sent once,
//! from the replay.

use std::sync::Arc;

use async_trait::async_trait;

use crate::filter::EventFilter;

use crate::event::Event;
use crate::ring::{Cursor, ReplayMiss};

/// What a [`ReplaySource`] returns for a cursor it can serve.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    /// Every event after the cursor, oldest first, with the bus sequence
    /// numbers the local bus gives (or will give) them.
    pub events: Vec<Arc<Event>>,
    /// The bus sequence through which this replay is complete: live events
    /// at or below it are covered by it (sent or deliberately not). The last
    /// event's sequence, or — when there are none — the cursor's own.
    pub through: u64,
    /// The source's share of its replay memory that these events hold:
    /// keep it until they are written (dropping it lets other replays in).
    pub hold: Option<ReplayPermit>,
}

impl Replayed {
    /// A replay of `events`; `through` is the last event's sequence, or
    /// `cursor_seq` (the sequence of the event the cursor names) when
    /// `events` is empty.
    pub fn new(events: Vec<Arc<Event>>, cursor_seq: u64) -> Self {
        let through = events.last().map_or(cursor_seq, |e| e.seq());
        Replayed {
            events,
            through,
            hold: None,
        }
    }
}

/// A share of a replay source's memory budget, held by the events of one
/// replay until they are written; released when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct ReplayPermit(
    #[allow(dead_code, reason = "held for its drop")] Arc<tokio::sync::OwnedSemaphorePermit>,
);

impl ReplayPermit {
    /// Wraps a permit of the source's semaphore.
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        ReplayPermit(Arc::new(permit))
    }
}

/// A history older than the bus's replay ring, for resuming clients.
///
/// Implementations bound their own work (time, number of events) and answer
/// [`ReplayMiss`] when they cannot serve a cursor completely: the transport
/// then sends `resync_required`. Never answer with a partial replay.
#[async_trait]
pub trait ReplaySource: Send + Sync + 'static {
    /// Every event after `cursor`, oldest first. Called only after the local
    /// ring missed, so it may skip the ring.
    async fn replay_since(&self, cursor: &Cursor) -> Result<Replayed, ReplayMiss>;

    /// At most `limit` events after `cursor` — or from the oldest the source
    /// holds when `None` — oldest first: a page of history. The default
    /// answers a cursor with the start of [`replay_since`](Self::replay_since)
    /// and cannot start from the oldest ([`ReplayMiss::Expired`]).
    async fn history(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        match cursor {
            Some(cursor) => {
                let mut events = self.replay_since(cursor).await?.events;
                events.truncate(limit);
                Ok(events)
            }
            None => Err(ReplayMiss::Expired),
        }
    }

    /// [`replay_since`](Self::replay_since) for a reader with `filter`: a
    /// source that pruned some topics earlier than others refuses only
    /// readers whose filter can match those. The default ignores the filter.
    async fn replay_matching(
        &self,
        cursor: &Cursor,
        filter: &EventFilter,
    ) -> Result<Replayed, ReplayMiss> {
        let _ = filter;
        self.replay_since(cursor).await
    }

    /// [`history`](Self::history) for a reader with `filter` (see
    /// [`replay_matching`](Self::replay_matching)).
    async fn history_matching(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let _ = filter;
        self.history(cursor, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventMeta;
    use crate::payload::{QueueStatus, ServerEvent};

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            uuid::Uuid::now_v7(),
            time::OffsetDateTime::now_utc(),
            EventMeta::default(),
            ServerEvent::QueueStatus(QueueStatus::new(seq, 0)),
        ))
    }

    #[test]
    fn through_is_the_last_event_or_the_cursor() {
        assert_eq!(Replayed::new(vec![ev(5), ev(9)], 3).through, 9);
        assert_eq!(Replayed::new(Vec::new(), 3).through, 3);
    }
}
