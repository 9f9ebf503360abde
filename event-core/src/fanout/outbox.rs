//! A connection's bounded queue: [`Outbox`], its limits and overflow policy.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[cfg(doc)]
use super::FanoutHub;
pub(crate) use super::coalesce::Pushed;
use super::coalesce::{CoalesceKey, KeyFn, Spill, no_key};
use crate::event::Event;
use crate::sync::{Mutex, MutexGuard, Unmodelled};

/// How much an outbox may hold before its connection counts as slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Maximum queued messages.
    pub max_messages: usize,
    /// Maximum queued bytes (wire size).
    pub max_bytes: usize,
}

impl Default for OutboxLimits {
    /// 1,024 messages or 1 MiB (room for two events of the bus's default
    /// size limit, [`DEFAULT_MAX_EVENT_BYTES`](crate::bus::DEFAULT_MAX_EVENT_BYTES)).
    fn default() -> Self {
        OutboxLimits {
            max_messages: 1024,
            max_bytes: 1024 * 1024,
        }
    }
}

/// Room per event, beyond its JSON, that [`OutboxLimits::fit_event`]
/// reserves: the envelope's identity, time, actor and scope fields and the
/// SSE framing (16 KiB).
pub const EVENT_SLACK_BYTES: usize = 16 * 1024;

impl OutboxLimits {
    /// The smallest byte budget that holds two events of `max_event_bytes`
    /// (the bus's [`max_event_bytes`](crate::EventBus::max_event_bytes)) in
    /// either wire form: `2 × (max_event_bytes + EVENT_SLACK_BYTES)`.
    pub const fn min_bytes_for(max_event_bytes: usize) -> usize {
        max_event_bytes
            .saturating_add(EVENT_SLACK_BYTES)
            .saturating_mul(2)
    }

    /// These limits ([`fit_event`](Self::fit_event)ted) with the byte budget
    /// a client asked for (`buffer_max_bytes`): a client may lower its
    /// budget, to hear of lag sooner, down to what holds two of the largest
    /// events, never raise it. `Err` says the range.
    ///
    /// ```
    /// use event_core::OutboxLimits;
    /// let server = OutboxLimits { max_messages: 1024, max_bytes: 1 << 20 };
    /// let min = OutboxLimits::min_bytes_for(1000);
    /// assert_eq!(server.with_client_budget(Some(min as u64), 1000).unwrap().max_bytes, min);
    /// assert_eq!(server.with_client_budget(None, 1000).unwrap().max_bytes, 1 << 20);
    /// assert!(server.with_client_budget(Some(min as u64 - 1), 1000).is_err());
    /// assert!(server.with_client_budget(Some((1 << 20) + 1), 1000).is_err());
    /// ```
    pub fn with_client_budget(
        self,
        requested: Option<u64>,
        max_event_bytes: usize,
    ) -> Result<Self, String> {
        let fitted = self.fit_event(max_event_bytes);
        let Some(requested) = requested else {
            return Ok(fitted);
        };
        let min = Self::min_bytes_for(max_event_bytes);
        match usize::try_from(requested) {
            Ok(n) if (min..=fitted.max_bytes).contains(&n) => Ok(OutboxLimits {
                max_bytes: n,
                ..fitted
            }),
            _ => Err(format!(
                "expected bytes from {min} (two of the largest events) to {} (the server's budget)",
                fitted.max_bytes
            )),
        }
    }

    /// These limits with the byte budget raised, if needed, to
    /// [`min_bytes_for`](Self::min_bytes_for)`(max_event_bytes)` (and room
    /// for at least two messages), so that one event, however large the bus
    /// lets it be, can never overflow the budget of a client that reads.
    #[must_use]
    pub const fn fit_event(self, max_event_bytes: usize) -> Self {
        let min = Self::min_bytes_for(max_event_bytes);
        OutboxLimits {
            max_messages: if self.max_messages < 2 {
                2
            } else {
                self.max_messages
            },
            max_bytes: if self.max_bytes < min {
                min
            } else {
                self.max_bytes
            },
        }
    }
}

/// What an outbox does when a push would exceed its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverflowPolicy {
    /// Stop accepting and mark the outbox overflowed; the connection should
    /// close (WebSocket: 4008).
    Close,
    /// Drop the excess, counting it as a [`Outgoing::Lagged`] marker in the
    /// queue, and keep going.
    DropAndCount,
    /// Keep going, and keep of the excess only the latest state per key
    /// (the latest `JobProgress` per job, the latest `QueueStatus`, each
    /// job's end; see [`CoalesceKey`]) within a second budget equal to the
    /// limits, counting the rest. The next drain gives the queue, then one
    /// [`Outgoing::Lagged`] with the count, then what was kept, newest state
    /// last per key; pushes go to the queue again after it. The WebSocket
    /// and SSE fan-out use it: when the whole machine is the bottleneck,
    /// a client that keeps reading stays connected with current state.
    ///
    /// Items of an outbox made without
    /// [`with_coalesce_keys`](Outbox::with_coalesce_keys) have no key: the
    /// excess is dropped and counted (as [`DropAndCount`](Self::DropAndCount),
    /// with the marker after the queue).
    Coalesce,
}

/// Which rendering of an event a connection writes, used to account bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireForm {
    /// The flat §1 JSON.
    #[default]
    Flat,
    /// The §3 envelope JSON.
    Envelope,
}

impl WireForm {
    /// The bytes of `event` in this form (rendered once per event).
    pub fn bytes(self, event: &Event) -> &bytes::Bytes {
        match self {
            WireForm::Flat => event.json(),
            WireForm::Envelope => event.envelope_json(),
        }
    }
}

/// Frame overhead per message beyond the JSON (SSE `id:`/`event:` lines);
/// the pacer counts its held events the same way.
pub(crate) const FRAME_OVERHEAD: usize = 64;

/// One item in an outbox: by default of a bus [`Event`] (see [`Outbox`]).
#[derive(Debug)]
pub enum Outgoing<T = Event> {
    /// An event to write.
    Event(Arc<T>),
    /// This many events were dropped at this point of the stream.
    Lagged(u64),
}

// By hand: a derive would ask `T: Clone`, where only the `Arc` is cloned.
impl<T> Clone for Outgoing<T> {
    fn clone(&self) -> Self {
        match self {
            Outgoing::Event(e) => Outgoing::Event(e.clone()),
            Outgoing::Lagged(n) => Outgoing::Lagged(*n),
        }
    }
}

#[derive(Debug)]
pub(crate) struct OutboxState<T> {
    /// The oldest item, held inline while it is alone: a connection that
    /// gets one event (or a lag marker) between drains, as an idle one gets
    /// the periodic `QueueStatus`, never allocates `queue`. The items are
    /// `head` then `queue`, in that order; `head` is empty only while
    /// `queue` is too.
    head: Option<Outgoing<T>>,
    /// The items after `head`: allocated at the first push that finds
    /// `head` taken, and kept (a busy connection does not allocate per
    /// event).
    queue: VecDeque<Outgoing<T>>,
    bytes: usize,
    messages: usize,
    /// Pushes do not go to the queue: it overflowed under
    /// [`OverflowPolicy::Close`] (for good), or it is coalescing into
    /// `spill` (until the next drain). One flag, so that a push with room
    /// tests one branch, as before coalescing existed.
    diverted: bool,
    /// What coalescing keeps; allocated at the first overflow.
    spill: Option<Box<Spill<T>>>,
    /// Events dropped under [`OverflowPolicy::DropAndCount`] since the
    /// last drain.
    dropped: u64,
    /// When the outbox last hit its limit without being drained since.
    full_since: Option<Instant>,
}

// By hand: a derive would ask `T: Default`.
impl<T> Default for OutboxState<T> {
    fn default() -> Self {
        OutboxState {
            head: None,
            queue: VecDeque::new(),
            bytes: 0,
            messages: 0,
            diverted: false,
            spill: None,
            dropped: 0,
            full_since: None,
        }
    }
}

impl<T> OutboxState<T> {
    /// Appends `item` after everything held: into `head` if nothing is.
    #[inline]
    fn push_back(&mut self, item: Outgoing<T>) {
        if self.head.is_none() {
            self.head = Some(item);
        } else {
            self.queue.push_back(item);
        }
    }

    /// The last item held.
    fn back_mut(&mut self) -> Option<&mut Outgoing<T>> {
        match self.queue.back_mut() {
            Some(item) => Some(item),
            None => self.head.as_mut(),
        }
    }

    /// Moves every item held into `out`, in order. `queue` keeps its buffer.
    fn drain_into(&mut self, out: &mut Vec<Outgoing<T>>) {
        if let Some(head) = self.head.take() {
            out.push(head);
            out.extend(self.queue.drain(..));
        }
    }
}

/// A connection's bounded queue of outgoing events.
///
/// `Outbox` alone queues the bus's [`Event`]s (what a [`FanoutHub`] fills);
/// a transport streaming items of its own uses `Outbox<T>` with the same
/// bounds, overflow policy and wake-ups, filling it with [`push`](Self::push).
pub struct Outbox<T = Event> {
    state: Mutex<OutboxState<T>>,
    pub(super) notify: Notify,
    /// `notify`'s calls, for the loom model (zero-sized otherwise).
    pub(super) notify_calls: Unmodelled,
    limits: OutboxLimits,
    policy: OverflowPolicy,
    /// The key of an item, for [`OverflowPolicy::Coalesce`].
    keys: KeyFn<T>,
}

impl<T> fmt::Debug for Outbox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("limits", &self.limits)
            .field("policy", &self.policy)
            .finish()
    }
}

/// What a drain found besides the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainStatus {
    /// The outbox overflowed under [`OverflowPolicy::Close`]: close the connection.
    pub overflowed: bool,
    /// How many of the drained [`Outgoing::Lagged`] counts are this
    /// outbox's own drops (overflow under
    /// [`DropAndCount`](OverflowPolicy::DropAndCount) or
    /// [`Coalesce`](OverflowPolicy::Coalesce)); the rest were lost upstream
    /// ([`push_lagged`](Outbox::push_lagged)).
    pub dropped: u64,
}

impl<T> Outbox<T> {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits, policy: OverflowPolicy) -> Self {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            notify: Notify::new(),
            notify_calls: Unmodelled::new(),
            limits,
            policy,
            keys: no_key,
        }
    }

    /// This outbox, keeping under [`OverflowPolicy::Coalesce`] the latest
    /// item of each key `keys` gives (`None`: not kept). A [`FanoutHub`]'s
    /// outboxes use [`event_coalesce_key`](super::event_coalesce_key).
    #[must_use]
    pub fn with_coalesce_keys(mut self, keys: fn(&T) -> Option<CoalesceKey>) -> Self {
        self.keys = keys;
        self
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, OutboxState<T>> {
        // Queue operations cannot leave the state inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until something was pushed since the last drain (cancel-safe;
    /// a push that happens before the wait is not lost).
    ///
    /// A named future, so a connection can keep it in its own state and
    /// poll it by hand: after it resolves, replace it with a fresh one and
    /// poll that before waiting (a push that lands in between is kept as a
    /// permit and resolves it at once).
    pub fn ready(&self) -> Notified<'_> {
        self.notify_calls.step();
        self.notify.notified()
    }

    /// Moves everything queued into `out` (appending) and reports overflow.
    /// Under [`OverflowPolicy::Coalesce`] the queue is followed by the lag
    /// marker and the state kept since it overflowed, and the outbox takes
    /// pushes into its queue again.
    pub fn drain_into(&self, out: &mut Vec<Outgoing<T>>) -> DrainStatus {
        let mut st = self.lock();
        st.drain_into(out);
        st.bytes = 0;
        st.messages = 0;
        st.full_since = None;
        let mut dropped = std::mem::take(&mut st.dropped);
        if self.policy != OverflowPolicy::Close {
            st.diverted = false;
        }
        if let Some(spill) = st.spill.as_mut() {
            dropped += spill.drain_into(out);
            if spill.is_large() {
                // A burst's buffers are not kept by a connection that has
                // caught up.
                st.spill = None;
            }
        }
        DrainStatus {
            overflowed: st.diverted,
            dropped,
        }
    }

    /// The room `queue` has, in items: 0 until two items were held at once
    /// (for the tests that a lone event allocates nothing).
    #[cfg(test)]
    pub(crate) fn queue_capacity(&self) -> usize {
        self.lock().queue.capacity()
    }

    /// How long the outbox has been full without a drain, if it is.
    pub fn full_for(&self) -> Option<Duration> {
        self.lock().full_since.map(|t| t.elapsed())
    }

    /// The wire bytes queued right now, coalesced state included (what this
    /// connection holds in memory beyond the shared events themselves, by
    /// the budget's measure).
    pub fn queued_bytes(&self) -> usize {
        let st = self.lock();
        st.bytes + st.spill.as_ref().map_or(0, |s| s.bytes())
    }

    /// The limits.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// The overflow policy.
    pub fn policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// Whether the outbox overflowed under [`OverflowPolicy::Close`].
    pub fn is_overflowed(&self) -> bool {
        self.policy == OverflowPolicy::Close && self.lock().diverted
    }

    /// Queues a lag marker (events lost upstream of this outbox).
    pub fn push_lagged(&self, missed: u64) {
        {
            let mut st = self.lock();
            Self::add_lag(&mut st, missed);
        }
        self.notify_calls.step();
        self.notify.notify_one();
    }

    fn add_lag(st: &mut OutboxState<T>, missed: u64) {
        if let Some(Outgoing::Lagged(n)) = st.back_mut() {
            *n += missed;
        } else {
            st.push_back(Outgoing::Lagged(missed));
        }
    }

    /// Pushes one event of wire size `size` (what it counts against the
    /// byte budget) and wakes the connection. Returns `false` if it was not
    /// queued nor kept: the outbox is full, and the [`OverflowPolicy`]
    /// applied (under [`DropAndCount`](OverflowPolicy::DropAndCount) and
    /// [`Coalesce`](OverflowPolicy::Coalesce) the drop is counted in a
    /// [`Outgoing::Lagged`] marker).
    ///
    /// An event always fits an outbox that holds no event: a client that
    /// reads everything it is sent is never dropped for one event. A
    /// [`FanoutHub`] pushes a whole batch under one lock instead; this is
    /// for a single producer's own items.
    pub fn push(&self, event: &Arc<T>, size: usize) -> bool {
        let pushed = {
            let mut st = self.lock();
            self.push_locked(&mut st, event, size)
        };
        // Woken also when dropped: the lag marker is news to the client.
        self.notify_calls.step();
        self.notify.notify_one();
        pushed.kept
    }

    /// Pushes one event of wire size `size`.
    ///
    /// An event always fits an outbox that holds no event: a client that
    /// reads everything it is sent is never dropped for one event, however
    /// the budget compares to the event's size.
    #[inline]
    pub(super) fn push_locked(
        &self,
        st: &mut OutboxState<T>,
        event: &Arc<T>,
        size: usize,
    ) -> Pushed {
        if !st.diverted {
            let fits = st.messages == 0
                || (st.messages < self.limits.max_messages
                    && st.bytes.saturating_add(size) <= self.limits.max_bytes);
            if fits {
                st.push_back(Outgoing::Event(event.clone()));
                st.messages += 1;
                st.bytes += size;
                return Pushed::KEPT;
            }
        }
        self.overflow(st, event, size)
    }

    /// A push that does not go to the queue: the policy decides.
    #[cold]
    #[inline(never)]
    fn overflow(&self, st: &mut OutboxState<T>, event: &Arc<T>, size: usize) -> Pushed {
        st.full_since.get_or_insert_with(Instant::now);
        match self.policy {
            OverflowPolicy::Close => {
                st.diverted = true;
                Pushed::DROPPED
            }
            OverflowPolicy::DropAndCount => {
                Self::add_lag(st, 1);
                st.dropped += 1;
                Pushed::DROPPED
            }
            OverflowPolicy::Coalesce => {
                st.diverted = true;
                let key = (self.keys)(event);
                st.spill
                    .get_or_insert_with(Box::default)
                    .push(key, event, size, self.limits)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(policy: OverflowPolicy, max_messages: usize) -> Outbox<u32> {
        Outbox::new(
            OutboxLimits {
                max_messages,
                max_bytes: usize::MAX,
            },
            policy,
        )
    }

    /// `n` per item, `lag<n>` per marker.
    fn shape(out: &[Outgoing<u32>]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outgoing::Event(e) => e.to_string(),
                Outgoing::Lagged(n) => format!("lag{n}"),
            })
            .collect()
    }

    fn drain(outbox: &Outbox<u32>) -> Vec<String> {
        let mut out = Vec::new();
        outbox.drain_into(&mut out);
        shape(&out)
    }

    /// What keeps an idle connection small (BENCHMARKS.md, branch
    /// `lone-event`): one event between drains is held inline, so the
    /// periodic `QueueStatus` leaves no queue buffer behind.
    #[test]
    fn a_lone_event_allocates_no_queue() {
        let outbox = outbox(OverflowPolicy::Coalesce, 8);
        for i in 0..3 {
            assert!(outbox.push(&Arc::new(i), 10));
            assert_eq!(outbox.queue_capacity(), 0, "push {i}");
            assert_eq!(outbox.queued_bytes(), 10);
            assert_eq!(drain(&outbox), [i.to_string()]);
            assert_eq!(outbox.queue_capacity(), 0, "drain {i}");
            assert_eq!(outbox.queued_bytes(), 0);
        }
        // A lone lag marker, and one that later losses add to, too.
        outbox.push_lagged(2);
        outbox.push_lagged(3);
        assert_eq!(outbox.queue_capacity(), 0);
        assert_eq!(drain(&outbox), ["lag5"]);
    }

    #[test]
    fn items_beyond_the_first_keep_their_order_and_the_queue_is_reused() {
        let outbox = outbox(OverflowPolicy::Close, 8);
        for i in 1..=3 {
            outbox.push(&Arc::new(i), 1);
        }
        outbox.push_lagged(4);
        outbox.push(&Arc::new(5), 1);
        assert_eq!(drain(&outbox), ["1", "2", "3", "lag4", "5"]);
        // The queue a burst allocated is kept for the next one (no
        // allocation per event on a busy connection) …
        let room = outbox.queue_capacity();
        assert!(room >= 3);
        outbox.push(&Arc::new(6), 1);
        outbox.push(&Arc::new(7), 1);
        assert_eq!(outbox.queue_capacity(), room);
        assert_eq!(drain(&outbox), ["6", "7"]);
        // … and a lone event still goes inline, in order with the rest.
        outbox.push(&Arc::new(8), 1);
        assert_eq!(drain(&outbox), ["8"]);
    }

    #[test]
    fn a_lag_marker_behind_the_inline_item_counts_every_drop() {
        let outbox = outbox(OverflowPolicy::DropAndCount, 1);
        assert!(outbox.push(&Arc::new(1), 1));
        assert!(!outbox.push(&Arc::new(2), 1));
        assert!(!outbox.push(&Arc::new(3), 1));
        outbox.push_lagged(4);
        let mut out = Vec::new();
        assert_eq!(outbox.drain_into(&mut out).dropped, 2);
        assert_eq!(shape(&out), ["1", "lag6"]);
    }

    #[test]
    fn coalescing_behind_the_inline_item_keeps_it_first() {
        // No keys: the excess is counted after what was queued.
        let outbox = outbox(OverflowPolicy::Coalesce, 1);
        outbox.push(&Arc::new(1), 1);
        outbox.push(&Arc::new(2), 1);
        let mut out = Vec::new();
        let status = outbox.drain_into(&mut out);
        assert_eq!((status.overflowed, status.dropped), (false, 1));
        assert_eq!(shape(&out), ["1", "lag1"]);
        assert_eq!(outbox.queue_capacity(), 0);
        // Caught up: the next event is queued again.
        outbox.push(&Arc::new(3), 1);
        assert_eq!(drain(&outbox), ["3"]);
    }

    #[test]
    fn close_overflows_behind_the_inline_item() {
        let outbox = outbox(OverflowPolicy::Close, 1);
        outbox.push(&Arc::new(1), 1);
        assert!(!outbox.push(&Arc::new(2), 1));
        assert!(outbox.is_overflowed());
        let mut out = Vec::new();
        assert!(outbox.drain_into(&mut out).overflowed);
        assert_eq!(shape(&out), ["1"]);
    }
}
