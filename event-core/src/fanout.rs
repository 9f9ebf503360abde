//! Fan-out from one bus subscription to many client connections.
//!
//! # Model
//!
//! A transport registers one [`FanoutHub`] on the bus as its
//! [`EventSink`]. Each client connection subscribes to the hub and gets an
//! [`Outbox`]: a bounded queue of events already filtered for that
//! connection (kinds, entity, memory, principal scope). The hub's task does
//! the filtering and pushes shared `Arc<Event>`s (whose wire bytes are
//! rendered once, on first use); the connection's task drains everything
//! pending in one go and writes it with a single syscall.
//!
//! This keeps three costs flat: a publish touches one channel per transport,
//! not one per client; an event is serialized once per wire form; and a
//! connection wakes once per batch, not once per event.
//!
//! An outbox is bounded in messages and bytes. What happens when a client
//! does not keep up is the [`OverflowPolicy`]: the WebSocket closes the
//! connection (close code 4008), SSE drops the excess and tells the client
//! how many it missed.
//!
//! # Concurrency model
//!
//! An outbox's queue lock comes from [`crate::sync`], so `loom_model`
//! below checks, under `--cfg loom`, the hub pushing batches while the
//! connection waits on [`Outbox::ready`] and drains: no batch is left
//! queued with the connection asleep, and every event arrives once, in
//! order, whichever way the two interleave. `ready` is a
//! `tokio::sync::Notify`, which loom cannot see into: the model takes each
//! of its calls as one atomic step (Tokio model-checks it), and checks what
//! is hand-written here — the wake is sent after the batch is queued and
//! its lock released. The subscriber table (`RwLock`) and the counters stay
//! `std`: they carry no wake-up protocol.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::auth::Principal;
use crate::event::Event;
use crate::filter::{EventFilter, KindSet};
use crate::sink::{EventSink, SinkError};
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
    /// queue, and keep going (SSE: `events.lagged`).
    DropAndCount,
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
struct OutboxState<T> {
    queue: VecDeque<Outgoing<T>>,
    bytes: usize,
    messages: usize,
    overflowed: bool,
    /// When the outbox last hit its limit without being drained since.
    full_since: Option<Instant>,
}

// By hand: a derive would ask `T: Default`.
impl<T> Default for OutboxState<T> {
    fn default() -> Self {
        OutboxState {
            queue: VecDeque::new(),
            bytes: 0,
            messages: 0,
            overflowed: false,
            full_since: None,
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
    notify: Notify,
    /// `notify`'s calls, for the loom model (zero-sized otherwise).
    notify_calls: Unmodelled,
    limits: OutboxLimits,
    policy: OverflowPolicy,
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
        }
    }

    fn lock(&self) -> MutexGuard<'_, OutboxState<T>> {
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
    pub fn drain_into(&self, out: &mut Vec<Outgoing<T>>) -> DrainStatus {
        let mut st = self.lock();
        out.extend(st.queue.drain(..));
        st.bytes = 0;
        st.messages = 0;
        st.full_since = None;
        DrainStatus {
            overflowed: st.overflowed,
        }
    }

    /// How long the outbox has been full without a drain, if it is.
    pub fn full_for(&self) -> Option<Duration> {
        self.lock().full_since.map(|t| t.elapsed())
    }

    /// The wire bytes queued right now (what this connection holds in
    /// memory beyond the shared events themselves, by the budget's measure).
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The limits.
    pub fn limits(&self) -> OutboxLimits {
        self.limits
    }

    /// Whether the outbox overflowed under [`OverflowPolicy::Close`].
    pub fn is_overflowed(&self) -> bool {
        self.lock().overflowed
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
        if let Some(Outgoing::Lagged(n)) = st.queue.back_mut() {
            *n += missed;
        } else {
            st.queue.push_back(Outgoing::Lagged(missed));
        }
    }

    /// Pushes one event of wire size `size` (what it counts against the
    /// byte budget) and wakes the connection. Returns `false` if it was not
    /// queued: the outbox is full, and the [`OverflowPolicy`] applied
    /// (under [`DropAndCount`](OverflowPolicy::DropAndCount) the drop is
    /// counted in a [`Outgoing::Lagged`] marker).
    ///
    /// An event always fits an outbox that holds no event: a client that
    /// reads everything it is sent is never dropped for one event. A
    /// [`FanoutHub`] pushes a whole batch under one lock instead; this is
    /// for a single producer's own items.
    pub fn push(&self, event: &Arc<T>, size: usize) -> bool {
        let queued = {
            let mut st = self.lock();
            self.push_locked(&mut st, event, size)
        };
        // Woken also when dropped: the lag marker is news to the client.
        self.notify_calls.step();
        self.notify.notify_one();
        queued
    }

    /// Pushes one event of wire size `size`. Returns `false` if it was not
    /// queued (overflow).
    ///
    /// An event always fits an outbox that holds no event: a client that
    /// reads everything it is sent is never dropped for one event, however
    /// the budget compares to the event's size.
    #[inline]
    fn push_locked(&self, st: &mut OutboxState<T>, event: &Arc<T>, size: usize) -> bool {
        if st.overflowed {
            return false;
        }
        let fits = st.messages == 0
            || (st.messages < self.limits.max_messages
                && st.bytes.saturating_add(size) <= self.limits.max_bytes);
        if fits {
            st.queue.push_back(Outgoing::Event(event.clone()));
            st.messages += 1;
            st.bytes += size;
            return true;
        }
        st.full_since.get_or_insert_with(Instant::now);
        match self.policy {
            OverflowPolicy::Close => {
                st.overflowed = true;
            }
            OverflowPolicy::DropAndCount => Self::add_lag(st, 1),
        }
        false
    }
}

/// The bit of [`HubSubscriber::kinds`] beyond the seven kinds that says the
/// connection set a filter of its own ([`HubSubscription::set_filter`]): a
/// connection without one pays no lock for it, only this bit, read with the
/// kinds it is stored beside.
const EXTRA_FILTER: u8 = 0x80;

struct HubSubscriber {
    filter: EventFilter,
    /// The kinds delivered (the low seven bits) and [`EXTRA_FILTER`].
    kinds: AtomicU8,
    /// A filter the connection set after subscribing (WebSocket `subscribe`
    /// with `topics` or `filter`), ANDed with `filter`; read only when
    /// [`EXTRA_FILTER`] is set.
    extra: RwLock<Option<EventFilter>>,
    principal: Principal,
    wire: WireForm,
    outbox: Arc<Outbox>,
}

impl HubSubscriber {
    fn wants(&self, kinds: KindSet, extra: Option<&EventFilter>, event: &Event) -> bool {
        kinds.contains(event.kind())
            && self.filter.matches_except_kind(event)
            && extra.is_none_or(|f| f.matches_except_kind(event))
            && self.principal.can_see(event)
    }

    /// The connection's own filter, if it set one (`bits` as loaded from
    /// `kinds`).
    fn extra(&self, bits: u8) -> Option<std::sync::RwLockReadGuard<'_, Option<EventFilter>>> {
        (bits & EXTRA_FILTER != 0).then(|| self.extra.read().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Default)]
struct Slots {
    slots: Vec<Option<Arc<HubSubscriber>>>,
    free: Vec<usize>,
    live: usize,
}

struct HubInner {
    name: String,
    subscribers: RwLock<Slots>,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

/// Options for one hub subscription.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// Which events the connection wants.
    pub filter: EventFilter,
    /// Who is connected (scope checks).
    pub principal: Principal,
    /// The outbox bounds.
    pub limits: OutboxLimits,
    /// What to do on overflow.
    pub policy: OverflowPolicy,
    /// Which rendering the connection writes (for byte accounting).
    pub wire: WireForm,
}

/// A sink that fans events out to per-connection outboxes. Cheap to clone.
#[derive(Clone)]
pub struct FanoutHub {
    inner: Arc<HubInner>,
}

impl fmt::Debug for FanoutHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanoutHub")
            .field("name", &self.inner.name)
            .field("subscribers", &self.len())
            .finish()
    }
}

impl FanoutHub {
    /// A hub; `name` is the sink name used in logs and metrics.
    pub fn new(name: impl Into<String>) -> Self {
        FanoutHub {
            inner: Arc::new(HubInner {
                name: name.into(),
                subscribers: RwLock::new(Slots::default()),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Adds a connection. It receives every event the hub delivers from now
    /// on that passes its filter and scope. Dropping the subscription
    /// removes it.
    pub fn subscribe(&self, options: SubscribeOptions) -> HubSubscription {
        let sub = Arc::new(HubSubscriber {
            kinds: AtomicU8::new(options.filter.kinds().bits()),
            filter: options.filter,
            extra: RwLock::new(None),
            principal: options.principal,
            wire: options.wire,
            outbox: Arc::new(Outbox::new(options.limits, options.policy)),
        });
        let mut slots = self
            .inner
            .subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let key = match slots.free.pop() {
            Some(k) => {
                slots.slots[k] = Some(sub.clone());
                k
            }
            None => {
                slots.slots.push(Some(sub.clone()));
                slots.slots.len() - 1
            }
        };
        slots.live += 1;
        HubSubscription {
            hub: self.inner.clone(),
            key,
            sub,
        }
    }

    /// Open subscriptions.
    pub fn len(&self) -> usize {
        self.inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .live
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events pushed into outboxes so far (one per event per connection).
    pub fn delivered(&self) -> u64 {
        self.inner.delivered.load(Ordering::Relaxed)
    }

    /// Events not queued because an outbox was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The wire bytes queued in all outboxes right now. Visits every
    /// connection: for diagnostics and tests, not for a hot path.
    pub fn queued_bytes(&self) -> usize {
        let slots = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        slots
            .slots
            .iter()
            .flatten()
            .map(|sub| sub.outbox.queued_bytes())
            .sum()
    }

    /// Pushes a batch of events (in order) to every interested connection,
    /// waking each connection at most once.
    pub fn fan_out(&self, events: &[Arc<Event>]) {
        let slots = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for sub in slots.slots.iter().flatten() {
            let bits = sub.kinds.load(Ordering::Relaxed);
            let kinds = KindSet::from_bits(bits);
            let extra = sub.extra(bits);
            let extra = extra.as_deref().and_then(Option::as_ref);
            let mut state: Option<MutexGuard<'_, OutboxState<Event>>> = None;
            for ev in events {
                if !sub.wants(kinds, extra, ev) {
                    continue;
                }
                let size = sub.wire.bytes(ev).len() + FRAME_OVERHEAD;
                let st = state.get_or_insert_with(|| sub.outbox.lock());
                if sub.outbox.push_locked(st, ev, size) {
                    delivered += 1;
                } else {
                    dropped += 1;
                }
            }
            if state.take().is_some() {
                sub.outbox.notify_calls.step();
                sub.outbox.notify.notify_one();
            }
        }
        self.inner.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.inner.dropped.fetch_add(dropped, Ordering::Relaxed);
    }

    /// Tells every connection that `missed` events were lost before reaching
    /// the hub.
    pub fn lagged(&self, missed: u64) {
        let slots = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner());
        for sub in slots.slots.iter().flatten() {
            sub.outbox.push_lagged(missed);
        }
    }
}

#[async_trait]
impl EventSink for FanoutHub {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        self.fan_out(std::slice::from_ref(&event));
        Ok(())
    }

    async fn deliver_batch(&self, events: Vec<Arc<Event>>) -> Result<(), SinkError> {
        // Traced events get a span of their own around the fan-out, in
        // their trace (one check per event for the others).
        let spans: Vec<tracing::Span> = events
            .iter()
            .filter_map(|e| {
                let context = e.meta().trace.as_ref()?;
                let span = tracing::info_span!(
                    target: "matric::fanout",
                    "fanout",
                    "event.id" = %e.id(),
                    "fanout.hub" = %self.inner.name,
                );
                crate::trace::link(&span, context);
                Some(span)
            })
            .collect();
        self.fan_out(&events);
        drop(spans);
        Ok(())
    }

    async fn on_lag(&self, missed: u64) {
        self.lagged(missed);
    }
}

/// A connection's membership in a [`FanoutHub`]; dropping it unsubscribes.
pub struct HubSubscription {
    hub: Arc<HubInner>,
    key: usize,
    sub: Arc<HubSubscriber>,
}

impl fmt::Debug for HubSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSubscription")
            .field("hub", &self.hub.name)
            .field("key", &self.key)
            .finish()
    }
}

impl HubSubscription {
    /// The connection's outbox.
    pub fn outbox(&self) -> &Outbox {
        &self.sub.outbox
    }

    /// The kinds currently delivered.
    pub fn kinds(&self) -> KindSet {
        KindSet::from_bits(self.sub.kinds.load(Ordering::Relaxed))
    }

    /// Changes the kinds delivered from now on (WebSocket `subscribe` /
    /// `unsubscribe`).
    pub fn set_kinds(&self, kinds: KindSet) {
        // Only this connection's task writes `kinds`: the filter bit is
        // kept as it is.
        let filtered = self.sub.kinds.load(Ordering::Relaxed) & EXTRA_FILTER;
        self.sub
            .kinds
            .store(kinds.bits() | filtered, Ordering::Relaxed);
    }

    /// Sets a filter of the connection's own, ANDed with the one it
    /// subscribed with, for the events delivered from now on (WebSocket
    /// `subscribe` with `topics` or `filter`); `None` removes it. Only its
    /// entity, memory and topic parts apply here: kinds are chosen with
    /// [`set_kinds`](Self::set_kinds). The caller checks that the principal
    /// may see a memory it names, as at subscribe time.
    pub fn set_filter(&self, filter: Option<EventFilter>) {
        let mut extra = self.sub.extra.write().unwrap_or_else(|p| p.into_inner());
        let kinds = self.sub.kinds.load(Ordering::Relaxed) & !EXTRA_FILTER;
        let flag = if filter.is_some() { EXTRA_FILTER } else { 0 };
        *extra = filter;
        // Stored under the write lock: a fan-out that sees the bit reads
        // the filter set with it, or a newer one.
        self.sub.kinds.store(kinds | flag, Ordering::Relaxed);
    }

    /// The principal of the connection.
    pub fn principal(&self) -> &Principal {
        &self.sub.principal
    }

    /// Whether this connection would receive `event` (filter and scope),
    /// for events it gets outside the hub (replay, snapshots).
    pub fn wants(&self, event: &Event) -> bool {
        let bits = self.sub.kinds.load(Ordering::Relaxed);
        let extra = self.sub.extra(bits);
        self.sub.wants(
            KindSet::from_bits(bits),
            extra.as_deref().and_then(Option::as_ref),
            event,
        )
    }
}

impl Drop for HubSubscription {
    fn drop(&mut self) {
        let mut slots = self
            .hub
            .subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.slots.get_mut(self.key)
            && slot.take().is_some()
        {
            slots.free.push(self.key);
            slots.live -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{BusConfig, EventBus, SeqStart};
    use crate::event::EventMeta;
    use crate::payload::{EventKind, QueueStatus};

    fn options(policy: OverflowPolicy, max_messages: usize) -> SubscribeOptions {
        SubscribeOptions {
            filter: EventFilter::all(),
            principal: Principal::anonymous(),
            limits: OutboxLimits {
                max_messages,
                max_bytes: usize::MAX,
            },
            policy,
            wire: WireForm::Flat,
        }
    }

    fn events(n: u64) -> Vec<Arc<Event>> {
        let bus = EventBus::new(BusConfig {
            seq_start: SeqStart::At(1),
            ..BusConfig::default()
        });
        (0..n)
            .map(|i| bus.publish(QueueStatus::new(i, 0)))
            .collect()
    }

    #[test]
    fn drop_policy_counts_in_place() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(options(OverflowPolicy::DropAndCount, 3));
        hub.fan_out(&events(5));
        let mut out = Vec::new();
        assert!(!sub.outbox().drain_into(&mut out).overflowed);
        let shape: Vec<String> = out
            .iter()
            .map(|o| match o {
                Outgoing::Event(e) => format!("e{}", e.seq()),
                Outgoing::Lagged(n) => format!("lag{n}"),
            })
            .collect();
        assert_eq!(shape, ["e1", "e2", "e3", "lag2"]);
        assert_eq!(hub.dropped(), 2);
    }

    #[test]
    fn close_policy_marks_overflow() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(options(OverflowPolicy::Close, 2));
        hub.fan_out(&events(3));
        let mut out = Vec::new();
        assert!(sub.outbox().drain_into(&mut out).overflowed);
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn an_event_larger_than_the_budget_still_fits_an_empty_outbox() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(SubscribeOptions {
            limits: OutboxLimits {
                max_messages: 8,
                max_bytes: 16,
            },
            ..options(OverflowPolicy::Close, 8)
        });
        let evs = events(2);
        // Alone it goes through, though it is larger than the budget …
        hub.fan_out(&evs[..1]);
        let mut out = Vec::new();
        assert!(!sub.outbox().drain_into(&mut out).overflowed);
        assert_eq!(out.len(), 1);
        assert_eq!(sub.outbox().queued_bytes(), 0);
        // … a second one behind it does not.
        hub.fan_out(&evs);
        assert!(sub.outbox().queued_bytes() > 16);
        assert!(sub.outbox().drain_into(&mut out).overflowed);
    }

    #[test]
    fn a_filter_set_later_narrows_until_removed_and_keeps_the_kinds() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(options(OverflowPolicy::Close, 100));
        let bus = EventBus::default();
        let gpu = bus.publish_with(QueueStatus::new(1, 0), EventMeta::default().topic("gpu"));
        let other = bus.publish(QueueStatus::new(2, 0));
        sub.set_kinds(KindSet::only(EventKind::QueueStatus));
        sub.set_filter(Some(EventFilter::all().with_topics(vec![
            crate::filter::TopicPattern::parse("gpu*").unwrap(),
        ])));
        assert_eq!(sub.kinds(), KindSet::only(EventKind::QueueStatus));
        assert!(sub.wants(&gpu) && !sub.wants(&other));
        hub.fan_out(&[gpu.clone(), other.clone()]);
        sub.set_kinds(KindSet::ALL);
        assert!(!sub.wants(&other), "set_kinds keeps the filter");
        sub.set_filter(None);
        hub.fan_out(std::slice::from_ref(&other));
        let mut out = Vec::new();
        sub.outbox().drain_into(&mut out);
        let seqs: Vec<u64> = out
            .iter()
            .map(|o| match o {
                Outgoing::Event(e) => e.seq(),
                Outgoing::Lagged(_) => 0,
            })
            .collect();
        assert_eq!(seqs, [gpu.seq(), other.seq()]);
        assert_eq!(sub.kinds(), KindSet::ALL);
    }

    #[test]
    fn scope_and_kinds_are_applied() {
        let hub = FanoutHub::new("t");
        let mut limited = Principal::anonymous();
        limited.memories = crate::auth::Access::none();
        let sub = hub.subscribe(SubscribeOptions {
            principal: limited,
            ..options(OverflowPolicy::Close, 100)
        });
        let bus = EventBus::default();
        let scoped = bus.publish_with(QueueStatus::new(1, 0), EventMeta::default().memory("m"));
        let open = bus.publish(QueueStatus::new(2, 0));
        hub.fan_out(&[scoped, open.clone()]);
        sub.set_kinds(KindSet::only(EventKind::NoteUpdated));
        hub.fan_out(&[open]);
        let mut out = Vec::new();
        sub.outbox().drain_into(&mut out);
        assert_eq!(out.len(), 1);
        drop(sub);
        assert!(hub.is_empty());
    }
}

/// Loom models (`RUSTFLAGS="--cfg loom" cargo test -p event-core --release
/// --lib loom_model`).
#[cfg(all(test, loom))]
mod loom_model {
    use loom::thread;
    use time::OffsetDateTime;
    use uuid::Uuid;

    use super::*;
    use crate::event::EventMeta;
    use crate::payload::QueueStatus;

    fn ev(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            Uuid::nil(),
            OffsetDateTime::UNIX_EPOCH,
            EventMeta::default(),
            QueueStatus::new(seq, 0).into(),
        ))
    }

    /// The hub pushes `[1]` then `[2, 3]` while the connection waits and
    /// drains as a connection task does: it is never left asleep with
    /// events queued (loom reports the deadlock), and gets 1, 2, 3 once
    /// each, in order.
    #[test]
    fn no_lost_wake_up_and_order_kept() {
        loom::model(|| {
            let hub = FanoutHub::new("model");
            let sub = hub.subscribe(SubscribeOptions {
                filter: EventFilter::all(),
                principal: Principal::anonymous(),
                limits: OutboxLimits::default(),
                policy: OverflowPolicy::DropAndCount,
                wire: WireForm::Flat,
            });
            let publisher = {
                let hub = hub.clone();
                thread::spawn(move || {
                    hub.fan_out(&[ev(1)]);
                    hub.fan_out(&[ev(2), ev(3)]);
                })
            };
            let mut got = Vec::new();
            let mut out = Vec::new();
            while got.len() < 3 {
                loom::future::block_on(sub.outbox().ready());
                assert!(!sub.outbox().drain_into(&mut out).overflowed);
                for item in out.drain(..) {
                    match item {
                        Outgoing::Event(e) => got.push(e.seq()),
                        Outgoing::Lagged(n) => panic!("lagged {n}"),
                    }
                }
            }
            assert_eq!(got, [1, 2, 3]);
            publisher.join().expect("publisher");
            sub.outbox().drain_into(&mut out);
            assert!(out.is_empty(), "nothing delivered twice");
        });
    }
}
