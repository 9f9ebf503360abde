//! The replay ring: the last N published events, for resuming clients.
//!
//! A reconnecting SSE client names the last event it saw (by sequence number
//! or by UUID); [`ReplayRing::since`] returns everything after it, or says the
//! cursor can no longer be served. Both id forms are ordered the same way
//! (the bus assigns them in one critical section), so both lookups are binary
//! searches over the ring.
//!
//! # Bounds
//!
//! The ring keeps at most `capacity` events *and* at most
//! [`max_bytes`](ReplayRing::max_bytes) of their [weight](ReplayRing::weight)
//! (default [`DEFAULT_REPLAY_MAX_BYTES`], 64 MiB), evicting the oldest
//! first: a ring of large events holds fewer of them. A cursor older than
//! what is kept is [`ReplayMiss::Expired`], as with the count bound.
//!
//! # Other item types
//!
//! The ring is generic over what it keeps: any [`Sequenced`] item (a
//! sequence number and a weight). `ReplayRing` alone means
//! `ReplayRing<Event>`, the bus's ring, which also answers [`Cursor`]s by
//! event id; any other item type (e.g. `event_sse::SseChannel`'s) is
//! replayed by sequence number ([`ReplayRing::after_seq`]) or by a match
//! of its own ([`ReplayRing::after_first`]).
//!
//! # Concurrency
//!
//! The ring has no synchronization of its own and so no model of its own:
//! it lives inside the [`EventBus`](crate::EventBus)'s state and is only
//! touched under the bus's ordering lock. `bus::loom_model` checks it there
//! (concurrent publishers and a concurrent reader).

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

/// Default byte bound of a replay ring (64 MiB of event
/// [weight](ReplayRing::weight)); see [`ReplayRing::set_max_bytes`].
pub const DEFAULT_REPLAY_MAX_BYTES: usize = 64 * 1024 * 1024;

/// What an event holds besides its renderings, counted once per event in
/// its [weight](ReplayRing::weight): the `Event` itself, its metadata and
/// the framing lines around each rendering.
const EVENT_OVERHEAD_BYTES: usize = 1024;

/// An item a [`ReplayRing`] (and so a replayable stream) can keep: it has a
/// position in its stream and a size to bound the ring by.
///
/// Implemented by [`Event`]; a transport streaming items of its own
/// implements it for them.
pub trait Sequenced: Send + Sync + 'static {
    /// The item's position in its stream: strictly increasing from one item
    /// to the next, as pushed.
    fn seq(&self) -> u64;

    /// What the item counts against a ring's byte bound: an upper estimate
    /// of the memory it holds (or can come to hold, with cached renderings)
    /// while retained. Read once, when the item is pushed.
    fn weight_bytes(&self) -> usize;
}

impl Sequenced for Event {
    #[inline]
    fn seq(&self) -> u64 {
        Event::seq(self)
    }

    #[inline]
    fn weight_bytes(&self) -> usize {
        ReplayRing::weight(self)
    }
}

/// A bounded, ordered window of the most recent items: by default the
/// bus's [`Event`]s (see [Other item types](self#other-item-types)).
#[derive(Debug)]
pub struct ReplayRing<T = Event> {
    events: VecDeque<Arc<T>>,
    /// The weight of each event in `events`, in the same order (an event's
    /// weight is fixed when it is pushed, so eviction subtracts exactly
    /// what was added).
    weights: VecDeque<usize>,
    /// The sum of `weights`.
    bytes: usize,
    max_bytes: usize,
    capacity: usize,
    /// The sequence number of the newest event ever pushed (`first_seq - 1`
    /// before any), which tells an expired cursor from one never valid.
    newest_seq: u64,
    /// Every cursor below this can no longer be served completely: the newest
    /// evicted sequence, or `first_seq - 1` before any eviction.
    evicted_seq: u64,
}

impl<T: Sequenced> ReplayRing<T> {
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
            weights: VecDeque::with_capacity(capacity.min(4096)),
            bytes: 0,
            max_bytes: DEFAULT_REPLAY_MAX_BYTES,
            capacity,
            newest_seq: floor,
            evicted_seq: floor,
        }
    }

    /// This ring with its byte bound set to `max_bytes` (see
    /// [`set_max_bytes`](Self::set_max_bytes)).
    #[must_use]
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Self {
        self.set_max_bytes(max_bytes);
        self
    }

    /// Sets the byte bound: the retained events' [weights](Self::weight)
    /// add up to at most `max_bytes` (0 keeps none). Lowering it evicts the
    /// oldest events at once.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        while self.bytes > self.max_bytes && self.evict_oldest() {}
    }

    /// The byte bound (default [`DEFAULT_REPLAY_MAX_BYTES`]).
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// The summed [weight](Self::weight) of the retained events.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends an event, evicting the oldest while the ring is over either
    /// bound. An event heavier than the whole byte bound is not kept (and
    /// then neither is anything before it: the ring only ever holds the
    /// newest events without a gap). Events must arrive in increasing
    /// sequence order (the bus guarantees it).
    #[inline]
    pub fn push(&mut self, event: Arc<T>) {
        self.newest_seq = event.seq();
        let weight = event.weight_bytes();
        if self.capacity == 0 || weight > self.max_bytes {
            self.events.clear();
            self.weights.clear();
            self.bytes = 0;
            self.evicted_seq = event.seq();
            return;
        }
        while (self.events.len() >= self.capacity
            || self.bytes.saturating_add(weight) > self.max_bytes)
            && self.evict_oldest()
        {}
        self.events.push_back(event);
        self.weights.push_back(weight);
        self.bytes += weight;
    }

    /// Drops the oldest event; `false` when there was none.
    fn evict_oldest(&mut self) -> bool {
        let Some(old) = self.events.pop_front() else {
            return false;
        };
        self.bytes -= self.weights.pop_front().unwrap_or(0);
        self.evicted_seq = old.seq();
        true
    }

    /// Declares that the events up to sequence `seq` cannot all be
    /// replayed, though no retained event was evicted: cursors below `seq`
    /// become expired. For a bus fed from an external log that skipped
    /// events (e.g. removed by the log's retention before they were read).
    pub fn expire_through(&mut self, seq: u64) {
        self.evicted_seq = self.evicted_seq.max(seq);
    }

    /// Puts `item` in the place of the retained item with the same
    /// sequence number and returns the one it replaced; `None` (and `item`
    /// is dropped) when no retained item has that number. The weight
    /// counted for the place is kept: `item` must be an equal copy (see
    /// [`Event::relocated`]).
    pub fn replace(&mut self, item: Arc<T>) -> Option<Arc<T>> {
        let seq = item.seq();
        let at = self.events.binary_search_by_key(&seq, |e| e.seq()).ok()?;
        let slot = self.events.get_mut(at)?;
        Some(std::mem::replace(slot, item))
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
    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.events.iter()
    }

    /// The retained items with a sequence number above `seq`, oldest
    /// first, found by binary search. Unlike [`after_seq`](Self::after_seq)
    /// this does not ask whether everything after `seq` is still retained:
    /// for walking the ring in pieces, not for serving a cursor.
    pub fn newer_than(&self, seq: u64) -> impl Iterator<Item = &Arc<T>> {
        self.events.range(self.first_newer_than(seq)..)
    }

    /// Every retained item after the one with sequence number `seq`,
    /// oldest first (none when `seq` is the newest), or why they cannot
    /// all be served: [`ReplayMiss::Expired`] when some were evicted,
    /// [`ReplayMiss::Unknown`] when `seq` is newer than any item pushed.
    pub fn after_seq(&self, seq: u64) -> Result<impl Iterator<Item = &Arc<T>>, ReplayMiss> {
        let start = self.position_after_seq(seq)?;
        Ok(self.events.range(start..))
    }

    /// Every retained item after the oldest one `names` matches, oldest
    /// first; `None` when no retained item matches. For streams whose items
    /// are also named by something other than their sequence (a text id):
    /// the scan is linear.
    pub fn after_first(
        &self,
        mut names: impl FnMut(&T) -> bool,
    ) -> Option<impl Iterator<Item = &Arc<T>>> {
        let pos = self.events.iter().position(|e| names(e))?;
        Some(self.events.range(pos + 1..))
    }

    /// The index of the first retained item after sequence number `seq`.
    fn position_after_seq(&self, seq: u64) -> Result<usize, ReplayMiss> {
        if seq > self.newest_seq {
            return Err(ReplayMiss::Unknown);
        }
        // Everything after `seq` must still be here: the first item after
        // it is `seq + 1` or later, so nothing newer than `seq` may have
        // been evicted.
        if self.evicted_seq > seq {
            return Err(ReplayMiss::Expired);
        }
        Ok(self.first_newer_than(seq))
    }

    /// The index of the first retained item with a sequence number above
    /// `seq` (the length when there is none).
    fn first_newer_than(&self, seq: u64) -> usize {
        self.events.partition_point(|e| e.seq() <= seq)
    }
}

/// The bus's ring: cursors by sequence number or event id.
impl ReplayRing<Event> {
    /// What an event counts against the byte bound: an upper estimate of
    /// the memory it can come to hold while retained, once every rendering
    /// is cached — its payload, its flat and envelope JSON and one frame
    /// per [`RenderKey`](crate::event::RenderKey) registered in the process
    /// (three with the SSE and WebSocket transports, which register theirs
    /// when their endpoint is built), each taken as long as the flat JSON,
    /// plus a fixed 1 KiB. Counting the registered keys rather than
    /// [`MAX_RENDER_KEYS`](crate::event::MAX_RENDER_KEYS) keeps the bound
    /// from reserving room for renderings no transport makes; a key
    /// registered after an event was pushed is not counted in that event's
    /// weight.
    ///
    /// The JSON's length is the exact one when the event was rendered
    /// already (the bus renders every event near the size limit before
    /// publishing it) and otherwise the bound the bus checks the limit
    /// with, so weighing costs no rendering.
    pub fn weight(event: &Event) -> usize {
        let json = event
            .rendered_json()
            .map_or_else(|| event.payload().json_len_bound(), |j| j.len());
        json.saturating_mul(3 + crate::event::RenderKey::registered_weight())
            .saturating_add(EVENT_OVERHEAD_BYTES)
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
            Cursor::Seq(seq) => self.position_after_seq(seq),
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
    fn replace_swaps_the_item_of_the_same_seq_only() {
        let mut ring = ReplayRing::new(3);
        for seq in 1..=4 {
            ring.push(ev(seq));
        }
        let bytes = ring.bytes();
        let copy = ev(3);
        let old = ring.replace(copy.clone()).expect("seq 3 is retained");
        assert_eq!(old.seq(), 3);
        assert!(!Arc::ptr_eq(&old, &copy));
        assert!(ring.iter().any(|e| Arc::ptr_eq(e, &copy)));
        // Evicted or never pushed: nothing replaced.
        assert!(ring.replace(ev(1)).is_none());
        assert!(ring.replace(ev(9)).is_none());
        // Walking on from any number, evicted or not.
        let newer = |seq| seqs(&ring.newer_than(seq).cloned().collect::<Vec<_>>());
        assert_eq!(newer(0), vec![2, 3, 4]);
        assert_eq!(newer(2), vec![3, 4]);
        assert!(newer(4).is_empty());
        assert_eq!(
            seqs(&ring.iter().cloned().collect::<Vec<_>>()),
            vec![2, 3, 4]
        );
        assert_eq!(ring.bytes(), bytes);
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

    fn large(seq: u64, title_bytes: usize) -> Arc<Event> {
        use crate::payload::NoteUpdated;
        Arc::new(Event::new(
            seq,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            ServerEvent::NoteUpdated(NoteUpdated {
                note_id: Uuid::nil(),
                title: Some("x".repeat(title_bytes)),
                tags: vec![],
                has_ai_content: false,
                has_links: false,
                operation: None,
                user_id: None,
            }),
        ))
    }

    #[test]
    fn the_byte_bound_evicts_oldest_first() {
        let one = ReplayRing::weight(&large(1, 10_000));
        // Room for three such events, not four.
        let mut ring = ReplayRing::new(100).with_max_bytes(3 * one + one / 2);
        for s in 1..=10 {
            ring.push(large(s, 10_000));
            assert!(ring.bytes() <= ring.max_bytes());
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.bytes(), 3 * one);
        // Resuming within what is kept works; the cursor whose next event
        // was just evicted is expired.
        assert_eq!(seqs(&ring.since(&Cursor::Seq(7)).unwrap()), vec![8, 9, 10]);
        assert_eq!(
            ring.since(&Cursor::Seq(6)).unwrap_err(),
            ReplayMiss::Expired
        );
        // Lowering the bound evicts at once; small events still fit.
        ring.set_max_bytes(one);
        assert_eq!(seqs(&ring.since(&Cursor::Seq(9)).unwrap()), vec![10]);
        assert_eq!(ring.bytes(), one);
        ring.push(ev(11));
        assert_eq!(seqs(&ring.since(&Cursor::Seq(10)).unwrap()), vec![11]);
        assert_eq!(ring.bytes(), ReplayRing::weight(&ev(11)));
    }

    #[test]
    fn the_weight_counts_every_rendering_an_event_can_hold() {
        // This process's keys, registered before anything is weighed.
        let _ = crate::event::tests::test_keys();
        let keys = crate::event::RenderKey::registered_weight();
        assert_eq!(keys, 2, "two keys of weight 1");
        let e = large(1, 100_000);
        // Unrendered: the JSON bound (six bytes a string byte, at most).
        let bound = ReplayRing::weight(&e);
        assert!(bound >= (3 + keys) * 6 * 100_000, "{bound}");
        // Rendered: the exact JSON, five times over (payload, flat and
        // envelope JSON, one per registered render key), plus the fixed
        // part.
        let json = e.json().len();
        let rendered = Event::new(
            2,
            e.id(),
            e.occurred_at(),
            EventMeta::default(),
            e.payload().clone(),
        )
        .with_json(Some(e.json().clone()));
        assert_eq!(ReplayRing::weight(&rendered), (3 + keys) * json + 1024);
    }

    #[test]
    fn an_event_heavier_than_the_bound_is_not_kept() {
        let mut ring = ReplayRing::new(8);
        ring.push(ev(1));
        ring.set_max_bytes(ReplayRing::weight(&large(2, 10_000)) - 1);
        ring.push(large(2, 10_000));
        assert!(ring.is_empty());
        assert_eq!(ring.bytes(), 0);
        assert_eq!(
            ring.since(&Cursor::Seq(1)).unwrap_err(),
            ReplayMiss::Expired
        );
        assert!(ring.since(&Cursor::Seq(2)).unwrap().is_empty());
        ring.push(ev(3));
        assert_eq!(seqs(&ring.since(&Cursor::Seq(2)).unwrap()), vec![3]);
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
