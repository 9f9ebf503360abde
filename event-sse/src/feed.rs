//! The feed of one `/api/v1/events` connection: its replay, read from the
//! ring a piece at a time, then its live hub subscription.
//!
//! # Model
//!
//! A resuming client's replay is never copied whole. The connection keeps a
//! cursor into the bus's replay ring and, each time the body is polled,
//! frames the next events after it, as many as fit the connection's byte
//! budget (its outbox's `max_bytes`) minus the replay bytes still in flight.
//! Each such chunk carries a [`Credit`] owner: when the HTTP server has
//! written it to the socket and drops it, its bytes are released and the
//! connection is woken to frame more. A client that reads nothing therefore
//! holds at most one budget of replay, however much the ring holds.
//!
//! While it replays from the ring the connection is not subscribed to the
//! hub: events published meanwhile land in the ring and are replayed too.
//! Once it has caught up with the ring and everything it framed has been
//! written, it subscribes, reads what was published since its last page, and
//! drops live events it already sent (by sequence): no gap, no duplicate,
//! exactly as at connect time. If the ring overwrites events it has not
//! replayed yet (a client reading slower than events are published), it
//! writes `resync_required` naming the last event it did send and goes on
//! live.
//!
//! A replay from a [`ReplaySource`](event_core::ReplaySource) arrives as one
//! list (the source bounds it); it is written in budgeted pieces the same
//! way, while the hub subscription, opened first, collects live events.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use std::num::NonZeroU32;

use event_core::{
    Cursor, Event, EventBus, FanoutHub, HubSubscription, OutboxLimits, Outgoing, Paced, Pacer,
    ReplayPermit, SubscribeOptions, Uuid, WireForm,
};
use tokio::sync::Notify;

use crate::event::{Format, SseEvent};
use crate::scratch;
use crate::stream::{Feed, Item};

/// Events read from the ring per page.
const PAGE: usize = 32;
/// Largest replay chunk: pieces this size keep writes efficient without
/// waiting for the whole budget to drain.
const MAX_PIECE_BYTES: usize = 256 * 1024;

/// The replay bytes of one connection handed to the HTTP server and not yet
/// written to the socket.
pub(crate) struct Credit {
    held: AtomicUsize,
    notify: Notify,
    /// The endpoint-wide sum, for [`SseEndpoint::buffered_bytes`](crate::SseEndpoint::buffered_bytes).
    total: Arc<AtomicUsize>,
}

impl Credit {
    pub(crate) fn new(total: Arc<AtomicUsize>) -> Arc<Credit> {
        Arc::new(Credit {
            held: AtomicUsize::new(0),
            notify: Notify::new(),
            total,
        })
    }

    fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Counts `chunk` as held until the server drops it.
    fn hold(self: &Arc<Self>, chunk: Bytes) -> Bytes {
        let len = chunk.len();
        self.held.fetch_add(len, Ordering::AcqRel);
        self.total.fetch_add(len, Ordering::AcqRel);
        Bytes::from_owner(Piece {
            bytes: chunk,
            credit: self.clone(),
        })
    }
}

/// A replay chunk that gives its bytes back to the [`Credit`] when dropped.
struct Piece {
    bytes: Bytes,
    credit: Arc<Credit>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Piece {
    fn drop(&mut self) {
        let len = self.bytes.len();
        self.credit.held.fetch_sub(len, Ordering::AcqRel);
        self.credit.total.fetch_sub(len, Ordering::AcqRel);
        self.credit.notify.notify_one();
    }
}

/// Where the connection is.
enum Phase {
    /// Replaying from the ring after the event with this sequence (the last
    /// one sent or filtered out); not subscribed to the hub yet.
    Ring {
        after: u64,
        /// The id of that event, for a `resync_required` in envelope format.
        after_id: Option<Uuid>,
    },
    /// Writing a replay source's events; the hub subscription collects
    /// live ones meanwhile.
    /// (With the source's share of its replay memory, released when the
    /// feed goes live.)
    Source(
        VecDeque<Arc<Event>>,
        #[allow(dead_code, reason = "held for its drop")] Option<ReplayPermit>,
    ),
    /// Live, from the hub subscription.
    Live,
}

/// How a connection starts.
pub(crate) enum Start {
    /// Live at once (no cursor, or one that got `resync_required`).
    Live(HubSubscription),
    /// Replay the ring after the event with this sequence.
    Ring {
        after: u64,
        /// The raw cursor the client sent, for a `resync_required`.
        raw: String,
    },
    /// Write these events (from a replay source), then go live, skipping
    /// live events up to `through`.
    Source {
        sub: HubSubscription,
        events: Vec<Arc<Event>>,
        through: u64,
        hold: Option<ReplayPermit>,
    },
}

/// The feed of an `/api/v1/events` connection.
pub(crate) struct HubFeed {
    bus: EventBus,
    hub: FanoutHub,
    /// The subscription to open once the ring replay has caught up (kept
    /// only while replaying from the ring).
    /// (Boxed: ~200 bytes that a live connection, most of them, would
    /// otherwise keep room for.)
    options: Option<Box<SubscribeOptions>>,
    sub: Option<HubSubscription>,
    phase: Phase,
    format: Format,
    /// The raw cursor, until the first replayed event replaces it.
    raw_cursor: Option<String>,
    /// Live events at or below this were replayed already.
    skip_through: u64,
    /// The connection's byte budget, shared by replay in flight.
    budget: usize,
    /// Replay bytes in flight (only while replaying: a live connection
    /// keeps nothing for it).
    credit: Option<Arc<Credit>>,
    /// Since when the replay has been waiting for its bytes to be written.
    blocked_since: Option<Instant>,
    /// The connection's outbox limits (what a pacer may hold, too).
    limits: OutboxLimits,
    /// The consumer's rate limit (`?max_rate=`), if it has one: live
    /// events pass through it; replays do not.
    pacer: Option<Box<Pacer>>,
    /// The connection's place under `max_connections`.
    _slot: Slot,
}

/// One open stream's place under [`SseConfig::max_connections`](crate::SseConfig::max_connections),
/// released when the response body (which owns the feed) is dropped,
/// however the stream ended.
pub(crate) struct Slot(pub(crate) Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HubFeed {
    pub(crate) fn new(
        bus: EventBus,
        hub: FanoutHub,
        options: SubscribeOptions,
        format: Format,
        start: Start,
        replay_held: &Arc<AtomicUsize>,
        slot: Slot,
    ) -> Self {
        let budget = options.limits.max_bytes;
        let limits = options.limits;
        let (sub, phase, skip_through, raw_cursor) = match start {
            Start::Live(sub) => (Some(sub), Phase::Live, 0, None),
            Start::Ring { after, raw } => (
                None,
                Phase::Ring {
                    after,
                    after_id: None,
                },
                after,
                Some(raw),
            ),
            Start::Source {
                sub,
                events,
                through,
                hold,
            } => (Some(sub), Phase::Source(events.into(), hold), through, None),
        };
        HubFeed {
            bus,
            hub,
            options: matches!(phase, Phase::Ring { .. }).then(|| Box::new(options)),
            credit: (!matches!(phase, Phase::Live)).then(|| Credit::new(replay_held.clone())),
            sub,
            phase,
            format,
            raw_cursor,
            skip_through,
            budget,
            blocked_since: None,
            limits,
            pacer: None,
            _slot: slot,
        }
    }

    /// Limits the live events to `rate` per second, coalescing over it
    /// (see [`event_core::pace`]); `None` leaves the feed unlimited.
    pub(crate) fn paced(mut self, rate: Option<NonZeroU32>) -> Self {
        let wire = match self.format {
            Format::V1 => WireForm::Flat,
            Format::Envelope => WireForm::Envelope,
        };
        self.pacer = rate.map(|rate| Box::new(Pacer::new(rate, self.limits, wire)));
        self
    }

    fn wants(&self, event: &Event) -> bool {
        match &self.sub {
            Some(sub) => sub.wants(event),
            None => self
                .options
                .as_ref()
                .is_some_and(|o| o.filter.matches(event) && o.principal.can_see(event)),
        }
    }

    /// Whether `size` more replay bytes fit beside `pending` framed in this
    /// drain. An event always goes when nothing is in flight, so a budget
    /// smaller than one event cannot stop the replay.
    fn fits(&self, pending: usize, size: usize) -> bool {
        let held = self.held() + pending;
        held == 0 || (held + size <= self.budget && pending + size <= MAX_PIECE_BYTES)
    }

    fn held(&self) -> usize {
        self.credit.as_ref().map_or(0, |c| c.held())
    }

    fn frame_size(&self, event: &Event) -> usize {
        event.frame(self.format).map_or(0, |f| f.len())
    }

    /// The next pieces of the ring replay, as far as the budget allows.
    fn drain_ring(&mut self, out: &mut Vec<Item<Event>>) {
        let mut pending = 0;
        let mut framed = false;
        loop {
            let Phase::Ring { after, after_id } = self.phase else {
                return;
            };
            let page = match self.bus.history(Some(&Cursor::Seq(after)), PAGE) {
                Ok(page) => page,
                Err(_) => {
                    // The ring overwrote events this client has not had.
                    let cursor = self.cursor_text(after, after_id);
                    tracing::debug!(after, "SSE replay fell behind the ring; resync");
                    out.push(Item::Resync(cursor));
                    self.go_live(after, out);
                    return;
                }
            };
            if page.is_empty() {
                if pending == 0 && self.held() == 0 {
                    self.catch_up(after, after_id, out);
                } else if !framed {
                    self.blocked_since.get_or_insert_with(Instant::now);
                }
                return;
            }
            for ev in page {
                if self.wants(&ev) {
                    let size = self.frame_size(&ev);
                    if !self.fits(pending, size) {
                        if !framed {
                            self.blocked_since.get_or_insert_with(Instant::now);
                        }
                        return;
                    }
                    pending += size;
                    framed = true;
                    self.blocked_since = None;
                    self.raw_cursor = None;
                    out.push(Item::Replayed(ev.clone()));
                }
                self.phase = Phase::Ring {
                    after: ev.seq(),
                    after_id: Some(ev.id()),
                };
            }
        }
    }

    /// The ring replay has caught up and nothing is in flight: subscribe,
    /// then replay what was published since the last page.
    fn catch_up(&mut self, after: u64, after_id: Option<Uuid>, out: &mut Vec<Item<Event>>) {
        if let Some(options) = self.options.take() {
            self.sub = Some(self.hub.subscribe(*options));
        }
        // Subscribed first: whatever is published from now on reaches the
        // outbox; what came before is in this read (or in both, and skipped).
        match self.bus.history(Some(&Cursor::Seq(after)), usize::MAX) {
            Ok(rest) => {
                let mut through = after;
                for ev in rest {
                    through = ev.seq();
                    if self.wants(&ev) {
                        out.push(Item::Replayed(ev));
                    }
                }
                self.skip_through = through;
            }
            Err(_) => {
                out.push(Item::Resync(self.cursor_text(after, after_id)));
                self.skip_through = after;
            }
        }
        self.blocked_since = None;
        self.phase = Phase::Live;
        self.drain_live(out);
    }

    /// Goes live after a resync: live events after `after` are new to the
    /// client.
    fn go_live(&mut self, after: u64, out: &mut Vec<Item<Event>>) {
        if self.sub.is_none()
            && let Some(options) = self.options.take()
        {
            self.sub = Some(self.hub.subscribe(*options));
        }
        self.skip_through = after;
        self.blocked_since = None;
        self.phase = Phase::Live;
        self.drain_live(out);
    }

    fn cursor_text(&self, after: u64, after_id: Option<Uuid>) -> String {
        match (&self.raw_cursor, self.format, after_id) {
            (Some(raw), _, _) => raw.clone(),
            (None, Format::Envelope, Some(id)) => id.to_string(),
            _ => after.to_string(),
        }
    }

    /// The next pieces of a replay source's events.
    fn drain_source(&mut self, out: &mut Vec<Item<Event>>) {
        let mut pending = 0;
        let mut framed = false;
        loop {
            let Phase::Source(events, _) = &self.phase else {
                return;
            };
            let Some(ev) = events.front().cloned() else {
                self.blocked_since = None;
                self.phase = Phase::Live;
                self.drain_live(out);
                return;
            };
            if self.wants(&ev) {
                let size = self.frame_size(&ev);
                if !self.fits(pending, size) {
                    if !framed {
                        self.blocked_since.get_or_insert_with(Instant::now);
                    }
                    return;
                }
                pending += size;
                framed = true;
                self.blocked_since = None;
                out.push(Item::Replayed(ev));
            }
            if let Phase::Source(events, _) = &mut self.phase {
                events.pop_front();
            }
        }
    }

    fn drain_live(&mut self, out: &mut Vec<Item<Event>>) {
        let Some(sub) = &self.sub else {
            return;
        };
        // The thread's list: filled and emptied here (see `scratch`).
        let mut scratch = scratch::lend_outgoing();
        sub.outbox().drain_into(&mut scratch);
        let skip = self.skip_through;
        if let Some(pacer) = self.pacer.as_mut() {
            // Events the replay already sent take no token.
            scratch.retain(|o| !matches!(o, Outgoing::Event(e) if e.seq() <= skip));
            out.extend(
                pacer
                    .pace(&mut scratch, tokio::time::Instant::now())
                    .map(|p| match p {
                        Paced::Event(e) => Item::Event(e),
                        Paced::Lagged(n) => Item::Lagged(n),
                        Paced::Dropped(n) => Item::Paced(n),
                    }),
            );
        } else {
            out.extend(scratch.drain(..).filter_map(|o| match o {
                Outgoing::Event(e) if e.seq() <= skip => None,
                Outgoing::Event(e) => Some(Item::Event(e)),
                Outgoing::Lagged(n) => Some(Item::Lagged(n)),
            }));
        }
        scratch::give_back_outgoing(scratch);
    }
}

impl Feed for HubFeed {
    type Event = Event;

    fn lend_items(_kept: &mut Vec<Item<Event>>) -> Vec<Item<Event>> {
        scratch::lend_items()
    }

    fn give_back_items(_kept: &mut Vec<Item<Event>>, items: Vec<Item<Event>>) {
        scratch::give_back_items(items);
    }

    async fn ready(&self) {
        match (&self.phase, &self.sub) {
            (Phase::Live, Some(sub)) => match self.pacer.as_ref().and_then(|p| p.next_release()) {
                None => sub.outbox().ready().await,
                // Or when the pacer may release what it holds.
                Some(at) => tokio::select! {
                    () = sub.outbox().ready() => {}
                    () = tokio::time::sleep_until(at) => {}
                },
            },
            // Replaying: more can be framed once bytes in flight are written.
            _ => match &self.credit {
                Some(credit) => credit.notify.notified().await,
                None => std::future::pending().await,
            },
        }
    }

    fn drain(&mut self, out: &mut Vec<Item<Event>>) {
        match self.phase {
            Phase::Live => self.drain_live(out),
            Phase::Ring { .. } => self.drain_ring(out),
            Phase::Source(..) => self.drain_source(out),
        }
    }

    fn queued_bytes(&self) -> usize {
        self.sub
            .as_ref()
            .map_or(0, |sub| sub.outbox().queued_bytes())
    }

    fn stalled_for(&self) -> Option<Duration> {
        match (&self.phase, &self.sub) {
            (Phase::Live, Some(sub)) => sub.outbox().full_for(),
            _ => self.blocked_since.map(|t| t.elapsed()),
        }
    }

    fn seal(&mut self, chunk: Bytes) -> Bytes {
        match &self.credit {
            Some(credit) => credit.hold(chunk),
            None => chunk,
        }
    }

    fn previous(&self, event: &Event) -> Option<Arc<Event>> {
        previous_on_bus(&self.bus, event.seq())
    }
}

/// The event numbered `seq - 1` on `bus`, if the replay ring still holds
/// it (for gzip's delta pieces, see [`crate::compress`]).
pub(crate) fn previous_on_bus(bus: &EventBus, seq: u64) -> Option<Arc<Event>> {
    let want = seq.checked_sub(1).filter(|s| *s > 0)?;
    let ev = bus
        .history(Some(&Cursor::Seq(want - 1)), 1)
        .ok()?
        .into_iter()
        .next()?;
    (ev.seq() == want).then_some(ev)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    use bytes::BytesMut;
    use event_core::{
        EventFilter, OverflowPolicy, Principal, QueueStatus, SubscribeOptions, WireForm,
    };

    use super::*;
    use crate::stream::Connection;

    fn connection(bus: &EventBus, hub: &FanoutHub) -> Connection<HubFeed> {
        let options = SubscribeOptions {
            filter: EventFilter::all(),
            principal: Principal::anonymous(),
            limits: OutboxLimits::default(),
            policy: OverflowPolicy::Coalesce,
            wire: WireForm::Flat,
        };
        let feed = HubFeed::new(
            bus.clone(),
            hub.clone(),
            options.clone(),
            Format::V1,
            Start::Live(hub.subscribe(options)),
            &Arc::new(AtomicUsize::new(0)),
            Slot(Arc::new(AtomicUsize::new(1))),
        );
        Connection::for_test(feed)
    }

    /// What keeps an idle connection small (BENCHMARKS.md, branch
    /// `lone-event`): its drains use the thread's lists, so after a lone
    /// event, or a burst, the connection keeps no list of its own.
    #[tokio::test]
    async fn a_drain_keeps_no_list_on_the_connection() {
        let bus = EventBus::default();
        let hub = FanoutHub::new("t");
        let mut conn = connection(&bus, &hub);
        let lone = bus.publish(QueueStatus::new(1, 0));
        hub.fan_out(std::slice::from_ref(&lone));
        assert_eq!(conn.drain_chunk(), lone.frame(Format::V1));
        assert_eq!(conn.kept_items(), 0);

        let burst: Vec<_> = (2..5)
            .map(|i| bus.publish(QueueStatus::new(i, 0)))
            .collect();
        hub.fan_out(&burst);
        let mut want = BytesMut::new();
        for ev in &burst {
            want.extend_from_slice(&ev.frame(Format::V1).unwrap());
        }
        assert_eq!(conn.drain_chunk(), Some(want.freeze()));
        assert_eq!(conn.kept_items(), 0);
        // The lists went back to this thread, for the next drain of any
        // connection.
        assert!(scratch::lend_items().capacity() >= 3);
        assert!(scratch::lend_outgoing().capacity() >= 3);
        assert_eq!(conn.drain_chunk(), None);
    }
}
