//! The replay ring: the last N published events, for resuming clients.
//!
//! A reconnecting SSE client names the last event it saw (by sequence number
//! or by UUID); [`ReplayRing::since`] returns everything after it, or says the
//! cursor can no longer be served. Both id forms are ordered the same way
//! (the bus assigns them in one critical section), so both lookups are binary
//! searches over the ring.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use uuid::Uuid;

use crate::Error;
use crate::event::Event;

/// A position in the event stream, as a client names it in `Last-Event-ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cursor {
    /// A bus sequence number (the SSE `v1` `id:`).
    Seq(u64),
    /// An event UUID (the SSE `envelope` `id:`).
    Id(Uuid),
}

impl Cursor {
    /// Parses either id form. Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Cursor, Error> {
        let t = text.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t
                .parse::<u64>()
                .map(Cursor::Seq)
                .map_err(|_| Error::InvalidCursor(text.to_owned()));
        }
        Uuid::try_parse(t)
            .map(Cursor::Id)
            .map_err(|_| Error::InvalidCursor(text.to_owned()))
    }

    /// Whether `event` is the event this cursor names.
    pub fn names(&self, event: &Event) -> bool {
        match self {
            Cursor::Seq(s) => event.seq() == *s,
            Cursor::Id(id) => event.id() == *id,
        }
    }
}

impl FromStr for Cursor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cursor::parse(s)
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cursor::Seq(s) => write!(f, "{s}"),
            Cursor::Id(id) => write!(f, "{id}"),
        }
    }
}

/// Why a cursor cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMiss {
    /// The events after the cursor are no longer retained.
    Expired,
    /// The cursor names no event this bus has published (a sequence from the
    /// future, e.g. from before a restart, or an id never seen).
    Unknown,
}

impl ReplayMiss {
    /// A short code for logs and resync frames.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplayMiss::Expired => "expired",
            ReplayMiss::Unknown => "unknown",
        }
    }
}

/// A bounded, ordered window of the most recent events.
#[derive(Debug)]
pub struct ReplayRing {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// The sequence number of the newest event ever pushed (`first_seq - 1`
    /// before any), which tells an expired cursor from one never valid.
    newest_seq: u64,
    /// Every cursor below this can no longer be served completely: the newest
    /// evicted sequence, or `first_seq - 1` before any eviction.
    evicted_seq: u64,
}

impl ReplayRing {
    /// A ring keeping at most `capacity` events (0 keeps none), for a bus
    /// whose first sequence number is 1.
    pub fn new(capacity: usize) -> Self {
        ReplayRing::starting_at(capacity, 1)
    }

    /// A ring for a bus whose first event has sequence number `first_seq`.
    ///
    /// Cursors below `first_seq - 1` come from before this bus existed (an
    /// earlier process) and are reported as expired, never replayed as if
    /// nothing had happened in between.
    pub fn starting_at(capacity: usize, first_seq: u64) -> Self {
        let floor = first_seq.saturating_sub(1);
        ReplayRing {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            newest_seq: floor,
            evicted_seq: floor,
        }
    }

    /// Appends an event, evicting the oldest when full. Events must arrive in
    /// increasing sequence order (the bus guarantees it).
    pub fn push(&mut self, event: Arc<Event>) {
        self.newest_seq = event.seq();
        if self.capacity == 0 {
            self.evicted_seq = event.seq();
            return;
        }
        if self.events.len() == self.capacity
            && let Some(old) = self.events.pop_front()
        {
            self.evicted_seq = old.seq();
        }
        self.events.push_back(event);
    }

    /// Declares that the events up to sequence `seq` cannot all be
    /// replayed, though no retained event was evicted: cursors below `seq`
    /// become expired. For a bus fed from an external log that skipped
    /// events (e.g. removed by the log's retention before they were read).
    pub fn expire_through(&mut self, seq: u64) {
        self.evicted_seq = self.evicted_seq.max(seq);
    }

    /// How many events are retained.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is retained.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The retained events, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Event>> {
        self.events.iter()
    }

    /// Every retained event after `cursor`, oldest first; empty when the
    /// cursor is the newest event.
    pub fn since(&self, cursor: &Cursor) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let start = self.position_after(cursor)?;
        Ok(self.events.range(start..).cloned().collect())
    }

    /// The sequence number of the event `cursor` names, if every event after
    /// it is still retained (the same condition as [`since`](Self::since)):
    /// a cursor to page through the replay with [`Cursor::Seq`], without
    /// copying it whole.
    pub fn resolve(&self, cursor: &Cursor) -> Result<u64, ReplayMiss> {
        let start = self.position_after(cursor)?;
        match *cursor {
            Cursor::Seq(seq) => Ok(seq),
            Cursor::Id(_) => start
                .checked_sub(1)
                .and_then(|i| self.events.get(i))
                .map(|e| e.seq())
                .ok_or(ReplayMiss::Unknown),
        }
    }

    /// At most `limit` retained events after `cursor` (or from the oldest when
    /// `cursor` is `None`), oldest first.
    pub fn page(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        let start = match cursor {
            Some(c) => self.position_after(c)?,
            None => 0,
        };
        Ok(self.events.range(start..).take(limit).cloned().collect())
    }

    /// The index of the first retained event after `cursor`.
    fn position_after(&self, cursor: &Cursor) -> Result<usize, ReplayMiss> {
        match *cursor {
            Cursor::Seq(seq) => {
                if seq > self.newest_seq {
                    return Err(ReplayMiss::Unknown);
                }
                // Everything after `seq` must still be here: the first event
                // after it is `seq + 1` or later, so nothing newer than `seq`
                // may have been evicted.
                if self.evicted_seq > seq {
                    return Err(ReplayMiss::Expired);
                }
                Ok(self.events.partition_point(|e| e.seq() <= seq))
            }
            Cursor::Id(id) => {
                let idx = self.events.partition_point(|e| e.id() < id);
                match self.events.get(idx) {
                    Some(e) if e.id() == id => Ok(idx + 1),
                    // Events re-injected from other instances (through
                    // `EventBus::publish_event`) carry ids made by several
                    // clocks, so id order may differ from sequence order
                    // there: look at every retained event before giving up.
                    // On a bus whose ids are all its own this finds nothing
                    // the binary search missed.
                    _ => match self.events.iter().rposition(|e| e.id() == id) {
                        Some(pos) => Ok(pos + 1),
                        None if idx == 0 && self.evicted_seq > 0 => Err(ReplayMiss::Expired),
                        None => Err(ReplayMiss::Unknown),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventMeta;
    use crate::payload::{QueueStatus, ServerEvent};
    use time::OffsetDateTime;

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            ServerEvent::QueueStatus(QueueStatus::new(seq, 0)),
        ))
    }

    fn seqs(v: &[Arc<Event>]) -> Vec<u64> {
        v.iter().map(|e| e.seq()).collect()
    }

    #[test]
    fn cursor_parses_both_forms() {
        assert_eq!(Cursor::parse(" 42 ").unwrap(), Cursor::Seq(42));
        let id = Uuid::now_v7();
        assert_eq!(Cursor::parse(&id.to_string()).unwrap(), Cursor::Id(id));
        for bad in [
            "",
            "-1",
            "abc",
            "18446744073709551616",
            "12ab",
            "0197c0de-zzzz",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn since_by_seq_and_id() {
        let mut ring = ReplayRing::new(4);
        let all: Vec<_> = (10..=15).map(ev).collect();
        for e in &all {
            ring.push(e.clone());
        }
        // Retained: 12..=15.
        assert_eq!(
            seqs(&ring.since(&Cursor::Seq(11)).unwrap()),
            vec![12, 13, 14, 15]
        );
        assert_eq!(seqs(&ring.since(&Cursor::Seq(13)).unwrap()), vec![14, 15]);
        assert!(ring.since(&Cursor::Seq(15)).unwrap().is_empty());
        assert_eq!(
            ring.since(&Cursor::Seq(10)).unwrap_err(),
            ReplayMiss::Expired
        );
        assert_eq!(
            ring.since(&Cursor::Seq(16)).unwrap_err(),
            ReplayMiss::Unknown
        );

        let id13 = Cursor::Id(all[3].id());
        assert_eq!(seqs(&ring.since(&id13).unwrap()), vec![14, 15]);
        let id11 = Cursor::Id(all[1].id());
        assert_eq!(ring.since(&id11).unwrap_err(), ReplayMiss::Expired);
        assert_eq!(
            ring.since(&Cursor::Id(Uuid::now_v7())).unwrap_err(),
            ReplayMiss::Unknown
        );
    }

    #[test]
    fn resolve_names_the_sequence_of_a_servable_cursor() {
        let mut ring = ReplayRing::new(4);
        let all: Vec<_> = (10..=15).map(ev).collect();
        for e in &all {
            ring.push(e.clone());
        }
        assert_eq!(ring.resolve(&Cursor::Seq(11)), Ok(11));
        assert_eq!(ring.resolve(&Cursor::Seq(15)), Ok(15));
        assert_eq!(ring.resolve(&Cursor::Id(all[3].id())), Ok(13));
        assert_eq!(ring.resolve(&Cursor::Id(all[5].id())), Ok(15));
        assert_eq!(ring.resolve(&Cursor::Seq(10)), Err(ReplayMiss::Expired));
        assert_eq!(ring.resolve(&Cursor::Seq(16)), Err(ReplayMiss::Unknown));
        assert_eq!(
            ring.resolve(&Cursor::Id(Uuid::now_v7())),
            Err(ReplayMiss::Unknown)
        );
    }

    #[test]
    fn ids_out_of_sequence_order_are_found() {
        let smaller = Uuid::now_v7();
        let larger = Uuid::now_v7();
        let with = |seq: u64, id: Uuid| {
            Arc::new(Event::new(
                seq,
                id,
                OffsetDateTime::now_utc(),
                EventMeta::default(),
                ServerEvent::QueueStatus(QueueStatus::new(seq, 0)),
            ))
        };
        let mut ring = ReplayRing::new(8);
        // Sequence order is the opposite of id order, as when two instances'
        // events reach the shared log in the other order.
        ring.push(with(1, larger));
        ring.push(with(2, smaller));
        ring.push(ev(3));
        assert_eq!(seqs(&ring.since(&Cursor::Id(larger)).unwrap()), vec![2, 3]);
        assert_eq!(seqs(&ring.since(&Cursor::Id(smaller)).unwrap()), vec![3]);
    }

    #[test]
    fn expire_through_marks_a_gap() {
        let mut ring = ReplayRing::new(8);
        ring.push(ev(1));
        // Events 2..=4 never reached this ring.
        ring.expire_through(4);
        ring.push(ev(5));
        assert_eq!(
            ring.since(&Cursor::Seq(2)).unwrap_err(),
            ReplayMiss::Expired
        );
        assert_eq!(seqs(&ring.since(&Cursor::Seq(4)).unwrap()), vec![5]);
        ring.expire_through(1); // never lowers the bound
        assert_eq!(
            ring.since(&Cursor::Seq(3)).unwrap_err(),
            ReplayMiss::Expired
        );
    }

    #[test]
    fn page_limits() {
        let mut ring = ReplayRing::new(10);
        for s in 1..=5 {
            ring.push(ev(s));
        }
        assert_eq!(seqs(&ring.page(None, 2).unwrap()), vec![1, 2]);
        assert_eq!(
            seqs(&ring.page(Some(&Cursor::Seq(2)), 2).unwrap()),
            vec![3, 4]
        );
    }

    #[test]
    fn cursors_from_before_the_bus_are_expired() {
        let mut ring = ReplayRing::starting_at(10, 1000);
        let first = ev(1000);
        ring.push(first.clone());
        ring.push(ev(1001));
        assert_eq!(
            ring.since(&Cursor::Seq(500)).unwrap_err(),
            ReplayMiss::Expired
        );
        assert_eq!(
            seqs(&ring.since(&Cursor::Seq(999)).unwrap()),
            vec![1000, 1001]
        );
        assert_eq!(
            seqs(&ring.since(&Cursor::Id(first.id())).unwrap()),
            vec![1001]
        );
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut ring = ReplayRing::new(0);
        ring.push(ev(1));
        ring.push(ev(2));
        assert!(ring.is_empty());
        assert_eq!(
            ring.since(&Cursor::Seq(1)).unwrap_err(),
            ReplayMiss::Expired
        );
        assert!(ring.since(&Cursor::Seq(2)).unwrap().is_empty());
    }
}
