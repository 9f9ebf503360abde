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
//! does not keep up is the [`OverflowPolicy`]: by default the WebSocket and
//! SSE [`Coalesce`](OverflowPolicy::Coalesce) — the excess is dropped and
//! counted (the lag signal) except the latest state per job and of the
//! queue, which the client gets right after the lag marker — so that under
//! saturation a client that keeps reading stays connected; the WebSocket
//! can instead close the connection (close code 4008) on overflow
//! ([`Close`](OverflowPolicy::Close)). A client that stops reading is cut
//! by its transport's stall timeout.
//!
//! # Concurrency model
//!
//! An outbox's queue lock comes from `crate::sync`, so `loom_model`
//! below checks, under `--cfg loom`, the hub pushing batches while the
//! connection waits on [`Outbox::ready`] and drains: no batch is left
//! queued with the connection asleep, and every event arrives once, in
//! order, whichever way the two interleave. `ready` is a
//! `tokio::sync::Notify`, which loom cannot see into: the model takes each
//! of its calls as one atomic step (Tokio model-checks it), and checks what
//! is hand-written here — the wake is sent after the batch is queued and
//! its lock released. The subscriber table (`RwLock`) and the counters stay
//! `std`: they carry no wake-up protocol.

mod coalesce;
mod outbox;
pub mod thread_list;

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::auth::Principal;
use crate::event::Event;
use crate::filter::{EventFilter, KindSet};
use crate::sink::{EventSink, SinkError};
use crate::sync::MutexGuard;

pub use coalesce::{CoalesceKey, event_coalesce_key};
pub(crate) use outbox::FRAME_OVERHEAD;
use outbox::OutboxState;
pub use outbox::{
    DrainStatus, EVENT_SLACK_BYTES, Outbox, OutboxLimits, Outgoing, OverflowPolicy, WireForm,
};

/// The bit of [`HubSubscriber::kinds`] beyond the seven kinds that says the
/// connection set a filter of its own ([`HubSubscription::set_filter`]): a
/// connection without one pays no lock for it, only this bit, read with the
/// kinds it is stored beside.
const EXTRA_FILTER: u8 = 0x80;

struct HubSubscriber {
    filter: EventFilter,
    /// The kinds delivered (the low seven bits) and [`EXTRA_FILTER`].
    kinds: AtomicU8,
    /// Where the subscriber is in the hub's table. Changed only under the
    /// table's write lock, when the last subscriber is moved into the place
    /// of one that left. 32 bits: it fits beside `kinds` in what was
    /// padding, so a subscriber is no larger for it (a process cannot hold
    /// 2^32 subscribers: each is over 300 bytes).
    index: AtomicU32,
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

/// Table capacity below which the hub never shrinks its subscriber table.
const SHRINK_ABOVE: usize = 1024;

struct HubInner {
    name: String,
    /// Every subscriber, packed: one that leaves is replaced by the last
    /// (whose `index` is updated), so a fan-out walks no holes and the
    /// table can give back its room after a mass close.
    subscribers: RwLock<Vec<Arc<HubSubscriber>>>,
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
                subscribers: RwLock::new(Vec::new()),
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
            index: AtomicU32::new(0),
            filter: options.filter,
            extra: RwLock::new(None),
            principal: options.principal,
            wire: options.wire,
            outbox: Arc::new(
                Outbox::new(options.limits, options.policy).with_coalesce_keys(event_coalesce_key),
            ),
        });
        let mut subscribers = self.inner.write();
        assert!(
            subscribers.len() < u32::MAX as usize,
            "a hub holds fewer than 2^32 subscribers (`index` is 32 bits)"
        );
        sub.index.store(subscribers.len() as u32, Ordering::Relaxed);
        subscribers.push(sub.clone());
        HubSubscription {
            hub: self.inner.clone(),
            sub,
        }
    }

    /// Open subscriptions.
    pub fn len(&self) -> usize {
        self.inner.read().len()
    }

    /// Subscribers the table has room for (for the shrink test).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.inner.read().capacity()
    }

    /// Whether there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events pushed into outboxes so far (one per event per connection),
    /// less those a coalescing outbox replaced by a newer state.
    pub fn delivered(&self) -> u64 {
        self.inner.delivered.load(Ordering::Relaxed)
    }

    /// Events not queued because an outbox was full, and events a
    /// coalescing outbox replaced by a newer state: what the lag markers of
    /// overflowing outboxes count.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// The wire bytes queued in all outboxes right now. Visits every
    /// connection: for diagnostics and tests, not for a hot path.
    pub fn queued_bytes(&self) -> usize {
        self.inner
            .read()
            .iter()
            .map(|sub| sub.outbox.queued_bytes())
            .sum()
    }

    /// Pushes a batch of events (in order) to every interested connection,
    /// waking each connection at most once.
    pub fn fan_out(&self, events: &[Arc<Event>]) {
        let subscribers = self.inner.read();
        let (mut delivered, mut dropped) = (0u64, 0u64);
        for sub in subscribers.iter() {
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
                let pushed = sub.outbox.push_locked(st, ev, size);
                // A replaced event was counted as delivered when kept: the
                // sum never goes below zero, only this batch's part may.
                delivered = delivered
                    .wrapping_add(u64::from(pushed.kept))
                    .wrapping_sub(u64::from(pushed.replaced));
                dropped += pushed.lost();
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
        for sub in self.inner.read().iter() {
            sub.outbox.push_lagged(missed);
        }
    }
}

impl HubInner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<HubSubscriber>>> {
        // Pushes, swaps and shrinks cannot leave it inconsistent; ignore
        // poisoning.
        self.subscribers.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<HubSubscriber>>> {
        self.subscribers.write().unwrap_or_else(|p| p.into_inner())
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
    sub: Arc<HubSubscriber>,
}

impl fmt::Debug for HubSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSubscription")
            .field("hub", &self.hub.name)
            .field("index", &self.sub.index.load(Ordering::Relaxed))
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
        let mut subscribers = self.hub.write();
        // Read under the write lock, which every move of it holds too.
        let index = self.sub.index.load(Ordering::Relaxed) as usize;
        // Always this subscriber (every move updates `index`); checked so
        // that a broken invariant cannot remove another connection.
        if !subscribers
            .get(index)
            .is_some_and(|s| Arc::ptr_eq(s, &self.sub))
        {
            debug_assert!(false, "subscriber {index} not where its index says");
            return;
        }
        subscribers.swap_remove(index);
        if let Some(moved) = subscribers.get(index) {
            moved.index.store(index as u32, Ordering::Relaxed);
        }
        // After a mass close the table would keep the peak's room for the
        // process's life: give most of it back once it is a quarter full
        // (amortised, like its growth), as the connection registry does.
        if subscribers.capacity() > SHRINK_ABOVE && subscribers.len() < subscribers.capacity() / 4 {
            let keep = subscribers.len() * 2;
            subscribers.shrink_to(keep);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{BusConfig, EventBus, SeqStart};
    use crate::event::EventMeta;
    use crate::payload::{EventKind, JobCompleted, JobProgress, NoteUpdated, QueueStatus};
    use uuid::Uuid;

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

    /// `e<seq>` per event, `lag<n>` per marker (the coalescing tests use it too).
    pub(super) fn shape(out: &[Outgoing]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Outgoing::Event(e) => format!("e{}", e.seq()),
                Outgoing::Lagged(n) => format!("lag{n}"),
            })
            .collect()
    }

    fn progress(bus: &EventBus, job: Uuid, percent: u8) -> Arc<Event> {
        bus.publish(JobProgress {
            job_id: job,
            note_id: None,
            progress: percent,
            message: None,
        })
    }

    fn note(bus: &EventBus) -> Arc<Event> {
        bus.publish(NoteUpdated {
            note_id: Uuid::now_v7(),
            title: None,
            tags: vec![],
            has_ai_content: false,
            has_links: false,
            operation: None,
            user_id: None,
        })
    }

    #[test]
    fn coalesce_policy_keeps_the_latest_state_after_the_lag_marker() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(options(OverflowPolicy::Coalesce, 4));
        let bus = EventBus::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let queued = [
            bus.publish(QueueStatus::new(1, 0)),
            progress(&bus, a, 1),
            progress(&bus, b, 1),
            note(&bus),
        ];
        let a2 = progress(&bus, a, 2);
        let qs2 = bus.publish(QueueStatus::new(2, 0));
        let skipped = note(&bus);
        let b2 = progress(&bus, b, 2);
        let a3 = progress(&bus, a, 3);
        let done = bus.publish(JobCompleted {
            job_id: a,
            job_type: "Embedding".to_owned(),
            note_id: None,
            duration_ms: None,
        });
        let qs3 = bus.publish(QueueStatus::new(3, 0));
        hub.fan_out(&queued);
        hub.fan_out(&[a2, qs2, skipped, b2.clone(), a3.clone(), done.clone()]);
        hub.fan_out(std::slice::from_ref(&qs3));
        assert!(sub.outbox().full_for().is_some());

        let mut out = Vec::new();
        let status = sub.outbox().drain_into(&mut out);
        assert!(!status.overflowed, "coalescing never closes");
        // a2, qs2 (replaced) and the note (not kept).
        assert_eq!(status.dropped, 3);
        // The queue as it was, the marker, then the latest state per key
        // in the order each key first overflowed.
        let mut want: Vec<String> = queued.iter().map(|e| format!("e{}", e.seq())).collect();
        want.push("lag3".into());
        for e in [&a3, &qs3, &b2, &done] {
            want.push(format!("e{}", e.seq()));
        }
        assert_eq!(shape(&out), want);
        assert_eq!(hub.dropped(), 3);
        assert_eq!(
            hub.delivered() + hub.dropped(),
            11,
            "every push counted once"
        );
        assert_eq!(sub.outbox().queued_bytes(), 0);
        assert_eq!(sub.outbox().full_for(), None);

        // Caught up: pushes go to the queue again, in order.
        out.clear();
        let next = bus.publish(QueueStatus::new(4, 0));
        hub.fan_out(std::slice::from_ref(&next));
        let status = sub.outbox().drain_into(&mut out);
        assert_eq!((status.overflowed, status.dropped), (false, 0));
        assert_eq!(shape(&out), [format!("e{}", next.seq())]);
    }

    #[test]
    fn coalesced_state_is_bounded_by_the_limits() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(options(OverflowPolicy::Coalesce, 4));
        let bus = EventBus::default();
        // 4 queued, 4 jobs kept (the spill's own budget), 92 dropped.
        let jobs: Vec<Arc<Event>> = (0..100)
            .map(|_| progress(&bus, Uuid::now_v7(), 1))
            .collect();
        hub.fan_out(&jobs);
        let size = jobs[0].json().len() + FRAME_OVERHEAD;
        assert_eq!(sub.outbox().queued_bytes(), 8 * size);
        let mut out = Vec::new();
        assert_eq!(sub.outbox().drain_into(&mut out).dropped, 92);
        let mut want: Vec<String> = jobs[..8].iter().map(|e| format!("e{}", e.seq())).collect();
        want.insert(4, "lag92".into());
        assert_eq!(shape(&out), want);

        // By bytes too: a budget of about two events keeps two.
        let small = hub.subscribe(SubscribeOptions {
            limits: OutboxLimits {
                max_messages: 100,
                max_bytes: 2 * size,
            },
            ..options(OverflowPolicy::Coalesce, 100)
        });
        hub.fan_out(&jobs);
        let mut out = Vec::new();
        assert_eq!(small.outbox().drain_into(&mut out).dropped, 96);
        assert_eq!(out.len(), 5);
    }

    #[test]
    fn an_upstream_loss_is_told_apart_from_the_outbox_drops() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(options(OverflowPolicy::Coalesce, 1));
        let bus = EventBus::default();
        hub.fan_out(&[note(&bus), note(&bus)]);
        hub.lagged(5);
        let mut out = Vec::new();
        let status = sub.outbox().drain_into(&mut out);
        let total: u64 = out
            .iter()
            .map(|o| match o {
                Outgoing::Lagged(n) => *n,
                Outgoing::Event(_) => 0,
            })
            .sum();
        assert_eq!((total, status.dropped), (6, 1));
    }

    /// An idle connection's periodic event leaves no queue buffer behind
    /// (the outbox holds a lone event inline; see `outbox.rs`).
    #[test]
    fn a_lone_event_fanned_out_allocates_no_queue() {
        let hub = FanoutHub::new("t");
        let sub = hub.subscribe(options(OverflowPolicy::Coalesce, 1024));
        let mut out = Vec::new();
        for ev in events(3) {
            hub.fan_out(std::slice::from_ref(&ev));
            assert_eq!(sub.outbox().queue_capacity(), 0);
            out.clear();
            sub.outbox().drain_into(&mut out);
            assert_eq!(shape(&out), [format!("e{}", ev.seq())]);
        }
        assert_eq!(sub.outbox().queue_capacity(), 0);
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

    /// A subscriber is kept per connection for its whole life (idle
    /// memory): its table index must fit in what was padding.
    #[test]
    fn a_subscriber_is_no_larger_than_before_the_index() {
        // 296 bytes on x86_64 before `index` was added (the idle-memory
        // analysis in BENCHMARKS.md counts 312 with the `Arc`'s counts).
        assert!(
            std::mem::size_of::<HubSubscriber>() <= 296,
            "{} bytes",
            std::mem::size_of::<HubSubscriber>()
        );
    }

    /// Events that reach each of `subs` now, by position in `subs`.
    fn received(hub: &FanoutHub, subs: &[HubSubscription]) -> Vec<usize> {
        hub.fan_out(&events(1));
        let mut out = Vec::new();
        subs.iter()
            .map(|s| {
                out.clear();
                s.outbox().drain_into(&mut out);
                out.len()
            })
            .collect()
    }

    #[test]
    fn leaving_in_any_order_keeps_every_other_subscriber() {
        let hub = FanoutHub::new("t");
        let mut subs: Vec<_> = (0..8)
            .map(|_| hub.subscribe(options(OverflowPolicy::DropAndCount, 100)))
            .collect();
        // The first, one in the middle, the last: each time the others
        // (one of them moved into the hole) still get every event, once.
        for at in [0, 3, 5] {
            drop(subs.remove(at));
            assert_eq!(hub.len(), subs.len());
            assert_eq!(received(&hub, &subs), vec![1; subs.len()]);
        }
        let late = hub.subscribe(options(OverflowPolicy::DropAndCount, 100));
        subs.push(late);
        assert_eq!(received(&hub, &subs), vec![1; subs.len()]);
        subs.clear();
        assert!(hub.is_empty());
        assert!(received(&hub, &subs).is_empty());
    }

    #[test]
    fn the_subscriber_table_shrinks_after_a_mass_close() {
        let hub = FanoutHub::new("t");
        let mut subs: Vec<_> = (0..20_000)
            .map(|_| hub.subscribe(options(OverflowPolicy::DropAndCount, 4)))
            .collect();
        let peak = hub.capacity();
        assert!(peak >= 20_000);
        // Keep a few from the end of the table, which move as the others
        // leave.
        let kept: Vec<_> = subs.drain(19_990..).collect();
        drop(subs);
        assert_eq!(hub.len(), kept.len());
        assert!(
            hub.capacity() <= SHRINK_ABOVE * 2,
            "room for {} subscribers kept after the close (peak {peak})",
            hub.capacity()
        );
        assert_eq!(received(&hub, &kept), vec![1; kept.len()]);
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
