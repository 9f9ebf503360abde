//! The in-process event bus.
//!
//! # Model
//!
//! One [`EventBus`] per process. Producers call [`EventBus::publish`], which
//! is synchronous: it assigns the next sequence number and a UUIDv7, appends
//! the event to the [`ReplayRing`], remembers it as the latest of its kind,
//! and hands it to a `tokio::sync::broadcast` channel, all inside one short
//! critical section. That single ordering point is what makes sequence
//! order, id order, ring order and delivery order the same thing for every
//! subscriber, even with many concurrent publishers.
//!
//! Publishing never waits for consumers. The channel is bounded; a
//! subscriber that falls more than `capacity` events behind loses the oldest
//! ones and learns exactly how many through [`Received::Lagged`].
//!
//! No event larger than [`EventBus::max_event_bytes`] (256 KiB of rendered
//! JSON by default) gets in. The publisher compares an upper bound of the
//! JSON's length (from the lengths of the event's strings) with the limit;
//! only an event whose bound is over it is rendered, before the critical
//! section, and measured exactly (the event keeps that rendering).
//! [`EventBus::try_publish`] reports a refusal; [`EventBus::publish`] logs it.
//!
//! The critical section's lock comes from `crate::sync`, so
//! `loom_model` below checks, under `--cfg loom`, that concurrent
//! publishers and readers see one order: sequence, id, ring, tap and
//! channel order agree, a concurrent replay is a gap-free run, and the
//! replay/live hand-over of [`EventBus::subscribe_from`] neither loses nor
//! repeats an event. The channel itself (`tokio::sync::broadcast`) is not
//! loom-aware; the models take each send as one atomic step, made inside the
//! lock.
//!
//! Subscribers are few by design: each transport registers one
//! [`EventSink`](crate::EventSink) (which fans out to its own connections),
//! so the cost of a publish does not grow with the number of clients.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::Error;
use crate::event::{Event, EventMeta, render_json};
use crate::log::LogError;
use crate::log::writer::Durability;
use crate::payload::{EventKind, ServerEvent};
use crate::ring::{Cursor, ReplayMiss, ReplayRing};
use crate::sync::{Mutex, MutexGuard, Unmodelled};

/// Default capacity of the broadcast channel.
pub const DEFAULT_BUS_CAPACITY: usize = 1024;
/// Default number of events kept for replay.
pub const DEFAULT_REPLAY_SIZE: usize = 1024;
pub use crate::ring::DEFAULT_REPLAY_MAX_BYTES;
/// Default largest event the bus publishes: 256 KiB of rendered JSON
/// (`EVENT_MAX_BYTES`). See [`EventBus::max_event_bytes`].
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;
/// The smallest per-event limit [`EventBus::set_max_event_bytes`] accepts
/// (1 KiB): below it ordinary events would be refused.
pub const MIN_MAX_EVENT_BYTES: usize = 1024;

/// Where sequence numbers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeqStart {
    /// At the current Unix time in microseconds. Sequence numbers then keep
    /// increasing across restarts (at under a million events per second), so
    /// a cursor from an earlier process is recognised as expired instead of
    /// being mistaken for a recent event.
    #[default]
    Clock,
    /// At this number (tests, or an external sequence source).
    At(u64),
}

/// Bus configuration.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Broadcast channel capacity: how far a subscriber may fall behind
    /// before it loses events. At least 1.
    pub capacity: usize,
    /// How many recent events the replay ring keeps (0 disables replay).
    pub replay_size: usize,
    /// The first sequence number.
    pub seq_start: SeqStart,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            capacity: DEFAULT_BUS_CAPACITY,
            replay_size: DEFAULT_REPLAY_SIZE,
            seq_start: SeqStart::Clock,
        }
    }
}

struct BusState {
    next_seq: u64,
    ring: ReplayRing,
    latest: [Option<Arc<Event>>; 7],
    taps: Vec<(TapId, Arc<dyn Tap>)>,
    next_tap: u64,
}

/// A synchronous consumer of the bus, for consumers that must see every
/// event however fast they are published (see [`EventBus::add_tap`]).
///
/// A [`Subscription`] is bounded: a subscriber that is not scheduled while a
/// burst is published loses the oldest events. A tap is handed each event by
/// the publisher itself, so it cannot fall behind; it must keep up by being
/// cheap instead.
pub trait Tap: Send + Sync + 'static {
    /// Takes one event. Called in sequence order from inside
    /// [`EventBus::publish`] (and the other publishing methods), under the
    /// bus's ordering lock: it must be quick, must not block, and must not
    /// call back into the bus. Hand the event to a queue.
    fn take(&self, event: &Arc<Event>);
}

/// Identifies a tap added with [`EventBus::add_tap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapId(u64);

struct BusInner {
    state: Mutex<BusState>,
    sender: broadcast::Sender<Arc<Event>>,
    /// The channel's calls, for the loom model (zero-sized otherwise).
    channel: Unmodelled,
    capacity: usize,
    max_event_bytes: AtomicUsize,
    upstream: RwLock<Option<Arc<dyn Upstream>>>,
    /// The log [`EventBus::publish_durable`] waits for, while a
    /// [`LogWriter`](crate::log::LogWriter) runs.
    durability: RwLock<Option<Durability>>,
    first_seq: u64,
    /// `matric_replay_ring_events` and `matric_replay_ring_bytes`, read
    /// from the ring when a reader collects (kept only to stay registered).
    _gauges: [opentelemetry::metrics::ObservableGauge<u64>; 2],
}

fn lock_state(inner: &BusInner) -> MutexGuard<'_, BusState> {
    // A panic while holding this lock could only come from an allocation
    // failure; the state is still consistent (each step is a single
    // assignment), so keep going rather than poisoning every publisher.
    inner
        .state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The replay ring's gauges, observed through a weak handle so that they
/// do not keep the bus alive.
fn ring_gauges(
    bus: &std::sync::Weak<BusInner>,
) -> [opentelemetry::metrics::ObservableGauge<u64>; 2] {
    let meter = crate::metrics::meter();
    type Read = fn(&BusInner) -> u64;
    let gauges: [(&'static str, &'static str, Read); 2] = [
        (
            crate::metrics::REPLAY_RING_EVENTS,
            "Events the replay ring holds",
            |inner| lock_state(inner).ring.len() as u64,
        ),
        (
            crate::metrics::REPLAY_RING_BYTES,
            "The summed weight of the events the replay ring holds (bounded by EVENT_REPLAY_MAX_BYTES)",
            |inner| lock_state(inner).ring.bytes() as u64,
        ),
    ];
    gauges.map(|(name, description, read)| {
        crate::metrics::weak_gauge(&meter, name, description, bus, read)
    })
}

/// An external sequencer for a bus: a shared log (e.g. a NATS JetStream
/// stream, see `event-nats`) that orders the events of several processes.
///
/// With an upstream set, [`EventBus::publish`] / [`EventBus::publish_with`]
/// do not sequence the event locally: they give it an id and a time, hand it
/// to [`Upstream::forward`] and return it with sequence number `0`
/// ("not sequenced yet"). The upstream later brings the event back through
/// [`EventBus::publish_event`] with its cluster-wide sequence number, the
/// same on every process, and only then do subscribers see it.
pub trait Upstream: Send + Sync + 'static {
    /// Takes a locally published event (`seq() == 0`). Must not block.
    /// Returning `Err(event)` makes the bus publish the event locally right
    /// away with the next local sequence number (e.g. while the upstream is
    /// unreachable).
    fn forward(&self, event: Arc<Event>) -> Result<(), Arc<Event>>;

    /// Takes a locally published event (`seq() == 0`) whose publisher waits
    /// until the upstream stored it ([`EventBus::publish_acked`]), with what
    /// the upstream deduplicates it on when not its id (`dedup`). Must not
    /// block; returns the acknowledgement to await. `Err(event)`: it cannot
    /// take the event now; as with [`forward`](Self::forward), the bus then
    /// publishes it locally (reported [`Stored::local_only`](crate::upstream::Stored::local_only)).
    ///
    /// The default has no acknowledgement to give: it
    /// [`forward`](Self::forward)s the event and reports it stored at once,
    /// with sequence number `0` (not known) and never as a duplicate.
    fn forward_acked(
        &self,
        event: Arc<Event>,
        dedup: Option<crate::upstream::DedupKey>,
    ) -> Result<crate::upstream::PendingAck, Arc<Event>> {
        let _ = dedup;
        let event_id = event.id();
        self.forward(event)?;
        Ok(Box::pin(std::future::ready(Ok(crate::upstream::Stored {
            seq: 0,
            event_id,
            duplicate: false,
            fingerprint: None,
            local_only: false,
        }))))
    }
}

/// The event bus. Cheap to clone; all clones publish to the same stream.
///
/// ```
/// use event_core::{EventBus, ServerEvent, QueueStatus, Received};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = EventBus::default();
/// let mut sub = bus.subscribe();
/// let published = bus.publish(ServerEvent::QueueStatus(QueueStatus::new(3, 1)));
/// match sub.recv().await {
///     Received::Event(ev) => assert_eq!(ev.seq(), published.seq()),
///     other => panic!("unexpected {other:?}"),
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<BusInner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("capacity", &self.inner.capacity)
            .field("last_seq", &self.last_seq())
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(BusConfig::default())
    }
}

impl EventBus {
    /// A bus with the given configuration.
    pub fn new(config: BusConfig) -> Self {
        let capacity = config.capacity.max(1);
        let first_seq = match config.seq_start {
            SeqStart::At(n) => n.max(1),
            SeqStart::Clock => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
                .unwrap_or(1)
                .max(1),
        };
        let (sender, _) = broadcast::channel(capacity);
        EventBus {
            inner: Arc::new_cyclic(|weak| BusInner {
                state: Mutex::new(BusState {
                    next_seq: first_seq,
                    ring: ReplayRing::starting_at(config.replay_size, first_seq),
                    latest: Default::default(),
                    taps: Vec::new(),
                    next_tap: 0,
                }),
                sender,
                channel: Unmodelled::new(),
                capacity,
                max_event_bytes: AtomicUsize::new(DEFAULT_MAX_EVENT_BYTES),
                upstream: RwLock::new(None),
                durability: RwLock::new(None),
                first_seq,
                _gauges: ring_gauges(weak),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, BusState> {
        lock_state(&self.inner)
    }

    /// Publishes an unscoped event caused by the system.
    ///
    /// An event whose rendered JSON is over [`max_event_bytes`](Self::max_event_bytes)
    /// is refused (logged, reaching no subscriber) and returned with sequence
    /// number `0`; use [`try_publish`](Self::try_publish) to get the error.
    pub fn publish(&self, payload: impl Into<ServerEvent>) -> Arc<Event> {
        self.publish_with(payload, EventMeta::default())
    }

    /// Publishes an event with actor, scope and correlation. Synchronous and
    /// non-blocking: it never waits for a subscriber.
    ///
    /// With an [`Upstream`] set, the event goes to the upstream instead and is
    /// returned with sequence number `0`; see [`EventBus::set_upstream`].
    ///
    /// An event over [`max_event_bytes`](Self::max_event_bytes) is refused
    /// like in [`publish`](Self::publish); [`try_publish_with`](Self::try_publish_with)
    /// reports it.
    pub fn publish_with(&self, payload: impl Into<ServerEvent>, meta: EventMeta) -> Arc<Event> {
        match self.checked(payload.into()) {
            Ok((payload, json)) => self.sequence(payload, json, meta),
            Err((payload, error)) => {
                tracing::warn!(%error, "event refused");
                Arc::new(Event::new(
                    0,
                    Uuid::now_v7(),
                    OffsetDateTime::now_utc(),
                    meta,
                    payload,
                ))
            }
        }
    }

    /// Like [`publish`](Self::publish), but an event over
    /// [`max_event_bytes`](Self::max_event_bytes) is an
    /// [`Error::EventTooLarge`] (and is not published).
    pub fn try_publish(&self, payload: impl Into<ServerEvent>) -> Result<Arc<Event>, Error> {
        self.try_publish_with(payload, EventMeta::default())
    }

    /// Like [`publish_with`](Self::publish_with), but an event over
    /// [`max_event_bytes`](Self::max_event_bytes) is an
    /// [`Error::EventTooLarge`] (and is not published): for publishers that
    /// answer someone, e.g. the publish API with `413`.
    pub fn try_publish_with(
        &self,
        payload: impl Into<ServerEvent>,
        meta: EventMeta,
    ) -> Result<Arc<Event>, Error> {
        let (payload, json) = self.checked(payload.into()).map_err(|(_, e)| e)?;
        Ok(self.sequence(payload, json, meta))
    }

    /// Publishes several events, in order, all with a copy of `meta` — or
    /// none of them: if any is over [`max_event_bytes`](Self::max_event_bytes),
    /// nothing is published and the first such event's
    /// [`Error::EventTooLarge`] is returned. For a request that must be
    /// refused whole (the publish API's `413`). Each event is rendered once,
    /// as in [`try_publish_with`](Self::try_publish_with).
    pub fn try_publish_all_with<P: Into<ServerEvent>>(
        &self,
        payloads: impl IntoIterator<Item = P>,
        meta: &EventMeta,
    ) -> Result<Vec<Arc<Event>>, Error> {
        let checked = payloads
            .into_iter()
            .map(|p| self.checked(p.into()).map_err(|(_, e)| e))
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(checked
            .into_iter()
            .map(|(payload, json)| self.sequence(payload, json, meta.clone()))
            .collect())
    }

    /// Publishes like [`try_publish_all_with`](Self::try_publish_all_with)
    /// and resolves once the events are committed to the event log
    /// (see [`log`](crate::log)): for publishers that acknowledge to someone
    /// (the publish API's `202`). Many concurrent calls share one commit
    /// (group commit).
    ///
    /// Before publishing it waits, up to the log's commit timeout, while
    /// the log's queue is full, so a slow log slows the publishers that can
    /// wait instead of dropping events. Without a log writer (or with an
    /// [`Upstream`], whose own stream is the log) it returns at once.
    ///
    /// On [`LogError::Timeout`] the events *are* published (and still
    /// queued for the log); only their commit was not confirmed in time.
    pub async fn publish_durable<P: Into<ServerEvent>>(
        &self,
        payloads: impl IntoIterator<Item = P>,
        meta: &EventMeta,
    ) -> Result<Vec<Arc<Event>>, LogError> {
        let Some(durability) = self.durability() else {
            return self
                .try_publish_all_with(payloads, meta)
                .map_err(LogError::Refused);
        };
        let timeout = durability.commit_timeout();
        durability.room(timeout).await?;
        let events = self
            .try_publish_all_with(payloads, meta)
            .map_err(LogError::Refused)?;
        if let Some(last) = events.iter().map(|e| e.seq()).max().filter(|s| *s > 0) {
            durability.committed(last, timeout).await?;
            if let Some(lost) = events.iter().find(|e| durability.was_dropped(e.seq())) {
                return Err(LogError::Dropped(lost.seq()));
            }
        }
        Ok(events)
    }

    /// Waits, up to `timeout`, until the event log has committed every
    /// event through `seq`; at once when no log writer runs. `false` when
    /// the wait ended otherwise (timeout, writer stopped). For consumers that
    /// read the log for events the bus delivered while they lagged.
    pub async fn logged(&self, seq: u64, timeout: Duration) -> bool {
        match self.durability() {
            Some(d) => d.committed(seq, timeout).await.is_ok(),
            None => true,
        }
    }

    /// The sequence number through which the event log holds every event:
    /// what this process committed, and at least everything before its
    /// first sequence number (earlier runs' events are stored or were
    /// never acknowledged). `None` when no log writer runs.
    pub fn logged_through(&self) -> Option<u64> {
        self.durability()
            .map(|d| d.committed_now().max(self.first_seq().saturating_sub(1)))
    }

    /// A receiver of this process's commits (the sequence number through
    /// which it has committed) that wakes on every commit; `None` when no
    /// log writer runs. See [`logged_through`](Self::logged_through).
    pub fn watch_logged(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.durability().map(|d| d.watch_committed())
    }

    fn durability(&self) -> Option<Durability> {
        self.inner
            .durability
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub(crate) fn set_durability(&self, durability: Option<Durability>) {
        *self
            .inner
            .durability
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = durability;
    }

    /// The first sequence number this bus gave or accepts
    /// ([`BusConfig::seq_start`]): events below it are from before this
    /// process.
    pub fn first_seq(&self) -> u64 {
        self.inner.first_seq
    }

    /// The largest event this bus publishes, in bytes of rendered JSON
    /// (docs/protocol.md §1, the WebSocket message and SSE `data`). Default
    /// [`DEFAULT_MAX_EVENT_BYTES`] (256 KiB).
    ///
    /// Every way into the bus enforces it, so no subscriber ever sees a
    /// larger event: a transport's per-connection budget only has to hold a
    /// couple of events this large (see
    /// [`OutboxLimits::fit_event`](crate::OutboxLimits::fit_event)) for a
    /// single event never to cost a reading client its connection.
    pub fn max_event_bytes(&self) -> usize {
        self.inner.max_event_bytes.load(Ordering::Relaxed)
    }

    /// Sets [`max_event_bytes`](Self::max_event_bytes) (the host's
    /// `EVENT_MAX_BYTES`). At least [`MIN_MAX_EVENT_BYTES`]; a smaller value
    /// is an [`Error::InvalidSetting`] and changes nothing.
    ///
    /// Set it before building transports: connections take their byte
    /// budget from it when they open.
    pub fn set_max_event_bytes(&self, max: usize) -> Result<(), Error> {
        if max < MIN_MAX_EVENT_BYTES {
            return Err(Error::InvalidSetting {
                setting: "max_event_bytes",
                message: format!("{max} is below the minimum of {MIN_MAX_EVENT_BYTES} bytes"),
            });
        }
        self.inner.max_event_bytes.store(max, Ordering::Relaxed);
        Ok(())
    }

    /// Checks the payload against the limit, outside the ordering lock. An
    /// ordinary event passes on an upper bound of its JSON's length, without
    /// rendering; only one whose bound is over the limit is rendered (the
    /// event keeps that rendering, so it is still rendered once) and checked
    /// exactly.
    #[allow(clippy::result_large_err)]
    pub(crate) fn checked(
        &self,
        payload: ServerEvent,
    ) -> Result<(ServerEvent, Option<Bytes>), (ServerEvent, Error)> {
        let limit = self.max_event_bytes();
        if payload.json_len_bound() <= limit {
            return Ok((payload, None));
        }
        let json = render_json(&payload);
        match self.check_size(payload.type_name(), json.len()) {
            Ok(()) => Ok((payload, Some(json))),
            Err(e) => Err((payload, e)),
        }
    }

    /// Checks an event that already exists, rendering it only when its
    /// bound is over the limit.
    fn check_event(&self, event: &Event) -> Result<(), Error> {
        if event.payload().json_len_bound() <= self.max_event_bytes() {
            return Ok(());
        }
        self.check_size(event.payload().type_name(), event.json().len())
    }

    fn check_size(&self, event_type: &'static str, size: usize) -> Result<(), Error> {
        let limit = self.max_event_bytes();
        if size > limit {
            return Err(Error::EventTooLarge {
                event_type,
                size,
                limit,
            });
        }
        Ok(())
    }

    /// Gives an accepted event its identity and publishes it (or hands it to
    /// the upstream).
    fn sequence(&self, payload: ServerEvent, json: Option<Bytes>, meta: EventMeta) -> Arc<Event> {
        let meta = self.with_trace_owned(meta);
        if let Some(upstream) = self.upstream() {
            let event = Arc::new(
                Event::new(0, Uuid::now_v7(), OffsetDateTime::now_utc(), meta, payload)
                    .with_json(json),
            );
            return match upstream.forward(event.clone()) {
                Ok(()) => event,
                Err(refused) => self.publish_local(&refused),
            };
        }
        self.sequence_local(payload, json, meta, None)
    }

    /// `meta` joining the trace the caller runs in, if it names none: in-process
    /// publishers join their trace (only with an installed propagation; one
    /// atomic load otherwise).
    pub(crate) fn with_trace(&self, meta: &EventMeta) -> EventMeta {
        self.with_trace_owned(meta.clone())
    }

    fn with_trace_owned(&self, mut meta: EventMeta) -> EventMeta {
        if meta.trace.is_none() {
            meta.trace = crate::trace::current();
        }
        meta
    }

    /// Sequences and publishes an event on this bus, with `id` or a new
    /// UUIDv7.
    pub(crate) fn sequence_local(
        &self,
        payload: ServerEvent,
        json: Option<Bytes>,
        meta: EventMeta,
        id: Option<Uuid>,
    ) -> Arc<Event> {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        // Generated inside the lock: the shared v7 context is monotonic, so
        // id order follows sequence order.
        let id = id.unwrap_or_else(Uuid::now_v7);
        let event =
            Arc::new(Event::new(seq, id, OffsetDateTime::now_utc(), meta, payload).with_json(json));
        Self::commit(&mut state, &self.inner, &event);
        event
    }

    /// Publishes an event that already has its identity (sequence, id, time),
    /// e.g. one received from another instance. Its sequence number must be
    /// higher than every one published so far; otherwise it is refused
    /// ([`Error::OutOfOrder`]), so that order stays total. An event over
    /// [`max_event_bytes`](Self::max_event_bytes) is refused too
    /// ([`Error::EventTooLarge`]).
    pub fn publish_event(&self, event: Event) -> Result<Arc<Event>, Error> {
        self.check_event(&event)?;
        let mut state = self.state();
        if event.seq() < state.next_seq {
            return Err(Error::OutOfOrder {
                seq: event.seq(),
                next: state.next_seq,
            });
        }
        state.next_seq = event.seq() + 1;
        let event = Arc::new(event);
        Self::commit(&mut state, &self.inner, &event);
        Ok(event)
    }

    /// Publishes a copy of `event` (same id, time, metadata and payload) on
    /// this bus only, with the next local sequence number, bypassing any
    /// [`Upstream`]. For an upstream that cannot reach its log.
    ///
    /// An event over [`max_event_bytes`](Self::max_event_bytes) is refused
    /// (logged, reaching no subscriber) and returned with sequence number `0`.
    pub fn publish_local(&self, event: &Event) -> Arc<Event> {
        let copy = |seq| {
            Event::new(
                seq,
                event.id(),
                event.occurred_at(),
                event.meta().clone(),
                event.payload().clone(),
            )
            .with_json(event.rendered_json().cloned())
        };
        if let Err(error) = self.check_event(event) {
            tracing::warn!(%error, "event refused");
            return Arc::new(copy(0));
        }
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        let event = Arc::new(copy(seq));
        Self::commit(&mut state, &self.inner, &event);
        event
    }

    /// Declares that events up to sequence `seq` are missing from this bus
    /// (an upstream skipped them): the replay ring reports cursors below
    /// `seq` as expired instead of replaying around the gap.
    pub fn expire_through(&self, seq: u64) {
        self.state().ring.expire_through(seq);
    }

    /// Sets (or with `None` removes) the [`Upstream`] that sequences locally
    /// published events. Without one (the default) the bus sequences events
    /// itself.
    pub fn set_upstream(&self, upstream: Option<Arc<dyn Upstream>>) {
        *self
            .inner
            .upstream
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = upstream;
    }

    /// Whether an [`Upstream`] is set.
    pub fn has_upstream(&self) -> bool {
        self.upstream().is_some()
    }

    pub(crate) fn upstream(&self) -> Option<Arc<dyn Upstream>> {
        self.inner
            .upstream
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn commit(state: &mut BusState, inner: &BusInner, event: &Arc<Event>) {
        let (sender, channel) = (&inner.sender, &inner.channel);
        state.ring.push(event.clone());
        state.latest[event.kind().index()] = Some(event.clone());
        for (_, tap) in &state.taps {
            tap.take(event);
        }
        // An error only means nobody is subscribed right now, which is fine:
        // the event is still in the ring and in `latest`.
        channel.step();
        let _ = sender.send(event.clone());
    }

    /// Adds a [`Tap`]: from now on every event is handed to it as it is
    /// published, until [`remove_tap`](Self::remove_tap). Returns its id and
    /// the sequence number of the last event it did *not* see.
    pub fn add_tap(&self, tap: Arc<dyn Tap>) -> (TapId, u64) {
        let mut state = self.state();
        let id = TapId(state.next_tap);
        state.next_tap += 1;
        state.taps.push((id, tap));
        (id, state.next_seq - 1)
    }

    /// Removes a tap; `false` when it was not there.
    pub fn remove_tap(&self, id: TapId) -> bool {
        let mut state = self.state();
        let before = state.taps.len();
        state.taps.retain(|(t, _)| *t != id);
        state.taps.len() != before
    }

    /// A new subscriber that receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        self.inner.channel.step();
        Subscription {
            receiver: self.inner.sender.subscribe(),
        }
    }

    /// Every retained event after `cursor`, oldest first.
    pub fn replay_since(&self, cursor: &Cursor) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        self.state().ring.since(cursor)
    }

    /// The sequence number of the event `cursor` names, if the ring can
    /// serve everything after it (see [`ReplayRing::resolve`]): the start of
    /// a replay read page by page with [`history`](Self::history) and
    /// [`Cursor::Seq`], so that a long replay is never copied whole.
    pub fn resolve_cursor(&self, cursor: &Cursor) -> Result<u64, ReplayMiss> {
        self.state().ring.resolve(cursor)
    }

    /// Subscribes and reads the replay in one step, so that the hand-over
    /// from replay to live delivery loses nothing: events published after the
    /// replay was read arrive on the subscription (some may arrive on both;
    /// drop live events with `seq <=` the last replayed one).
    pub fn subscribe_from(
        &self,
        cursor: &Cursor,
    ) -> (Subscription, Result<Vec<Arc<Event>>, ReplayMiss>) {
        let state = self.state();
        // Subscribing under the state lock means the subscription starts
        // exactly after the last event in the ring: no gap, no overlap.
        let sub = self.subscribe();
        let replay = state.ring.since(cursor);
        (sub, replay)
    }

    /// At most `limit` retained events after `cursor` (from the oldest
    /// retained when `None`), oldest first.
    pub fn history(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        self.state().ring.page(cursor, limit)
    }

    /// The most recent event of a kind, if any was published (e.g. the
    /// latest `QueueStatus` for a new connection).
    pub fn latest(&self, kind: EventKind) -> Option<Arc<Event>> {
        self.state().latest[kind.index()].clone()
    }

    /// The sequence number of the newest event (the one before the first
    /// when nothing was published).
    pub fn last_seq(&self) -> u64 {
        self.state().next_seq - 1
    }

    /// How many subscriptions are open.
    pub fn subscriber_count(&self) -> usize {
        self.inner.sender.receiver_count()
    }

    /// The channel capacity.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// How many events the replay ring holds right now.
    pub fn retained(&self) -> usize {
        self.state().ring.len()
    }

    /// The summed [weight](ReplayRing::weight) of the events the replay
    /// ring holds right now (at most [`replay_max_bytes`](Self::replay_max_bytes)).
    pub fn retained_bytes(&self) -> usize {
        self.state().ring.bytes()
    }

    /// Copies every event the replay ring holds into allocations made on
    /// the calling thread and puts the copies in the originals' places
    /// (also where one is the latest of its kind); returns how many were
    /// replaced. The copies leave the cached renderings behind (see
    /// [`Event::relocated`]): a copy that is delivered again is rendered
    /// again, once per wire format. Subscribers that still hold an
    /// original keep it.
    ///
    /// For a host that returns freed memory to the system after many
    /// connections closed: each retained event's renderings were allocated
    /// by a worker thread among the connections' buffers while it was
    /// delivered, and once those buffers are freed each rendering keeps its
    /// page resident — 6–12 times its own size (BENCHMARKS.md, branch
    /// `close-fanout`). Called on a thread of its own (a blocking one)
    /// just before the trim, the copies land in that thread's memory and
    /// the pages the originals pinned can be returned. The copying happens
    /// outside the bus's lock, 64 events at a time; publishers wait only
    /// for each chunk's swap.
    pub fn relocate_retained(&self) -> usize {
        // In chunks, so that at most one chunk's originals and copies
        // exist side by side (not the whole ring twice, up to
        // `EVENT_REPLAY_MAX_BYTES` more), and the lock is taken briefly.
        const CHUNK: usize = 64;
        let mut done = 0;
        let mut after = 0;
        loop {
            let originals: Vec<Arc<Event>> = self
                .state()
                .ring
                .newer_than(after)
                .take(CHUNK)
                .cloned()
                .collect();
            let Some(last) = originals.last() else {
                return done;
            };
            after = last.seq();
            let copies: Vec<Arc<Event>> =
                originals.iter().map(|e| Arc::new(e.relocated())).collect();
            let mut state = self.state();
            for copy in copies {
                for latest in state.latest.iter_mut().flatten() {
                    if latest.seq() == copy.seq() {
                        *latest = copy.clone();
                    }
                }
                done += usize::from(state.ring.replace(copy).is_some());
            }
            drop(state);
            // The chunk's originals are freed here, outside the lock.
        }
    }

    /// The replay ring's byte bound. Default [`DEFAULT_REPLAY_MAX_BYTES`]
    /// (64 MiB).
    pub fn replay_max_bytes(&self) -> usize {
        self.state().ring.max_bytes()
    }

    /// Sets the replay ring's byte bound (the host's
    /// `EVENT_REPLAY_MAX_BYTES`): besides keeping at most
    /// [`BusConfig::replay_size`] events, the ring keeps only as many of the
    /// newest as fit `max` bytes of [weight](ReplayRing::weight) (an upper
    /// estimate of what an event holds with all its renderings cached),
    /// evicting the oldest first — at once if it holds more. A cursor older
    /// than what is kept is [`ReplayMiss::Expired`] (a client then resyncs).
    /// 0 keeps nothing; any value is accepted.
    pub fn set_replay_max_bytes(&self, max: usize) {
        self.state().ring.set_max_bytes(max);
    }
}

/// What a [`Subscription`] yields.
#[derive(Debug, Clone)]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// This many events were lost because the subscriber fell behind; the
    /// next call continues with the oldest event still available.
    Lagged(u64),
    /// The bus is gone.
    Closed,
}

/// A live view of the bus from the moment it was created.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Arc<Event>>,
}

impl Subscription {
    /// Waits for the next event (cancel-safe).
    pub async fn recv(&mut self) -> Received {
        match self.receiver.recv().await {
            Ok(ev) => Received::Event(ev),
            Err(broadcast::error::RecvError::Lagged(n)) => Received::Lagged(n),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }

    /// The next event if one is ready, without waiting.
    pub fn try_recv(&mut self) -> Option<Received> {
        match self.receiver.try_recv() {
            Ok(ev) => Some(Received::Event(ev)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Received::Lagged(n)),
            Err(broadcast::error::TryRecvError::Closed) => Some(Received::Closed),
            Err(broadcast::error::TryRecvError::Empty) => None,
        }
    }

    /// How many events are waiting.
    pub fn pending(&self) -> usize {
        self.receiver.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::payload::QueueStatus;

    fn bus(capacity: usize, replay: usize) -> EventBus {
        EventBus::new(BusConfig {
            capacity,
            replay_size: replay,
            seq_start: SeqStart::At(1),
        })
    }

    #[test]
    fn publish_without_subscribers_is_fine() {
        let bus = bus(4, 4);
        for i in 0..10 {
            bus.publish(QueueStatus::new(i, 0));
        }
        assert_eq!(bus.last_seq(), 10);
        assert_eq!(bus.retained(), 4);
    }

    #[test]
    fn clock_start_is_above_old_small_sequences() {
        let bus = EventBus::default();
        let ev = bus.publish(QueueStatus::new(0, 0));
        assert!(ev.seq() > 1_700_000_000_000_000);
        assert_eq!(
            bus.replay_since(&Cursor::Seq(12345)).unwrap_err(),
            ReplayMiss::Expired
        );
    }

    #[test]
    fn latest_per_kind() {
        let bus = bus(4, 4);
        assert!(bus.latest(EventKind::QueueStatus).is_none());
        bus.publish(QueueStatus::new(1, 0));
        let second = bus.publish(QueueStatus::new(2, 0));
        assert_eq!(
            bus.latest(EventKind::QueueStatus).unwrap().seq(),
            second.seq()
        );
        assert!(bus.latest(EventKind::JobQueued).is_none());
    }

    #[test]
    fn relocating_the_retained_events_puts_equal_copies_in_their_places() {
        let bus_with = bus;
        let bus = bus_with(4, 3);
        let originals: Vec<Arc<Event>> = (0..5)
            .map(|i| bus.publish(QueueStatus::new(i, 0)))
            .collect();
        for ev in &originals {
            let _ = ev.json();
        }
        let weight = bus.retained_bytes();
        assert_eq!(bus.relocate_retained(), 3);
        assert_eq!(bus.retained_bytes(), weight, "the bound counted as before");
        let retained = bus.history(None, 10).unwrap();
        assert_eq!(retained.len(), 3);
        for (now, before) in retained.iter().zip(&originals[2..]) {
            assert_eq!(now.seq(), before.seq());
            assert!(now.rendered_json().is_none(), "a rendering came along");
            assert_eq!(now.json(), before.json());
            assert!(!Arc::ptr_eq(now, before), "seq {} not replaced", now.seq());
        }
        // The latest of its kind is the ring's copy, not the original.
        let latest = bus.latest(EventKind::QueueStatus).unwrap();
        assert!(Arc::ptr_eq(&latest, &retained[2]));
        // The ring's bookkeeping is unchanged: cursors and the next event.
        assert_eq!(
            bus.replay_since(&Cursor::Seq(originals[2].seq()))
                .unwrap()
                .len(),
            2
        );
        let next = bus.publish(QueueStatus::new(9, 0));
        assert_eq!(next.seq(), originals[4].seq() + 1);

        // Over several chunks of 64: every one replaced, none twice.
        let bus = bus_with(4, 150);
        let originals: Vec<Arc<Event>> = (0..150)
            .map(|i| bus.publish(QueueStatus::new(i, 0)))
            .collect();
        assert_eq!(bus.relocate_retained(), 150);
        let retained = bus.history(None, 1000).unwrap();
        assert_eq!(retained.len(), 150);
        assert!(
            retained
                .iter()
                .zip(&originals)
                .all(|(now, before)| now.seq() == before.seq() && !Arc::ptr_eq(now, before))
        );
    }

    struct Collect(Mutex<Vec<Arc<Event>>>, bool);

    impl Upstream for Collect {
        fn forward(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
            if self.1 {
                self.0.lock().unwrap().push(event);
                Ok(())
            } else {
                Err(event)
            }
        }
    }

    #[test]
    fn upstream_takes_local_publishes() {
        let bus = bus(4, 4);
        let mut sub = bus.subscribe();
        let up = Arc::new(Collect(Mutex::new(Vec::new()), true));
        bus.set_upstream(Some(up.clone()));
        assert!(bus.has_upstream());
        let forwarded = bus.publish(QueueStatus::new(1, 0));
        assert_eq!(forwarded.seq(), 0);
        assert!(sub.try_recv().is_none(), "not local until it comes back");
        assert_eq!(up.0.lock().unwrap()[0].id(), forwarded.id());
        // The upstream brings it back with its cluster sequence.
        let back = Event::new(
            7,
            forwarded.id(),
            forwarded.occurred_at(),
            EventMeta::default(),
            forwarded.payload().clone(),
        );
        bus.publish_event(back).unwrap();
        match sub.try_recv() {
            Some(Received::Event(ev)) => assert_eq!((ev.seq(), ev.id()), (7, forwarded.id())),
            other => panic!("unexpected {other:?}"),
        }

        // A refusing upstream: the bus publishes locally, keeping the id.
        bus.set_upstream(Some(Arc::new(Collect(Mutex::new(Vec::new()), false))));
        let local = bus.publish(QueueStatus::new(2, 0));
        assert_eq!(local.seq(), 8);
        bus.set_upstream(None);
        assert!(!bus.has_upstream());
        assert_eq!(bus.publish(QueueStatus::new(3, 0)).seq(), 9);
    }

    struct Seqs(Mutex<Vec<u64>>);

    impl Tap for Seqs {
        fn take(&self, event: &Arc<Event>) {
            self.0.lock().unwrap().push(event.seq());
        }
    }

    #[test]
    fn taps_see_every_event_in_order_however_small_the_channel() {
        let bus = bus(1, 1);
        bus.publish(QueueStatus::new(0, 0));
        let tap = Arc::new(Seqs(Mutex::new(Vec::new())));
        let (id, after) = bus.add_tap(tap.clone());
        assert_eq!(after, 1);
        for i in 0..100 {
            bus.publish(QueueStatus::new(i, 0));
        }
        let remote = Event::new(
            500,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            QueueStatus::new(0, 0).into(),
        );
        bus.publish_event(remote).unwrap();
        let expected: Vec<u64> = (2..=101).chain([500]).collect();
        assert_eq!(*tap.0.lock().unwrap(), expected);
        assert!(bus.remove_tap(id));
        assert!(!bus.remove_tap(id));
        bus.publish(QueueStatus::new(0, 0));
        assert_eq!(tap.0.lock().unwrap().len(), expected.len());
    }

    #[test]
    fn publish_event_keeps_order() {
        let bus = bus(4, 4);
        bus.publish(QueueStatus::new(1, 0));
        let stale = Event::new(
            1,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            QueueStatus::new(0, 0).into(),
        );
        assert!(bus.publish_event(stale).is_err());
        let fresh = Event::new(
            100,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            QueueStatus::new(0, 0).into(),
        );
        assert_eq!(bus.publish_event(fresh).unwrap().seq(), 100);
        assert_eq!(bus.publish(QueueStatus::new(0, 0)).seq(), 101);
    }
}

/// Loom models (`RUSTFLAGS="--cfg loom" cargo test -p event-core --release
/// --lib loom_model`).
#[cfg(all(test, loom))]
mod loom_model {
    use std::sync::Mutex;

    use loom::thread;

    use super::*;
    use crate::payload::QueueStatus;

    struct Seqs(Mutex<Vec<u64>>);

    impl Tap for Seqs {
        fn take(&self, event: &Arc<Event>) {
            self.0.lock().expect("tap").push(event.seq());
        }
    }

    fn bus(replay: usize) -> EventBus {
        EventBus::new(BusConfig {
            capacity: 8,
            replay_size: replay,
            seq_start: SeqStart::At(1),
        })
    }

    fn publisher(bus: &EventBus, n: u64) -> thread::JoinHandle<Vec<Arc<Event>>> {
        let bus = bus.clone();
        thread::spawn(move || {
            (0..n)
                .map(|i| bus.publish(QueueStatus::new(i, 0)))
                .collect()
        })
    }

    fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.seq()).collect()
    }

    /// Two publishers (two events and one) while the main thread reads the
    /// ring (which holds two): sequence numbers 1, 2, 3 each given once,
    /// ids in sequence order, the tap and the channel see 1, 2, 3, each of
    /// a publisher's own events in its publishing order, and every replay
    /// read is a gap-free run ending at the newest event then published.
    #[test]
    fn concurrent_publishers_see_one_order() {
        loom::model(|| {
            let bus = bus(2);
            let tap = Arc::new(Seqs(Mutex::new(Vec::new())));
            bus.add_tap(tap.clone());
            let mut sub = bus.subscribe();
            let a = publisher(&bus, 2);
            let b = publisher(&bus, 1);
            // A concurrent reader: whatever it sees is consecutive.
            match bus.replay_since(&Cursor::Seq(0)) {
                Ok(run) => assert_eq!(seqs(&run), (1..=run.len() as u64).collect::<Vec<_>>()),
                Err(miss) => assert_eq!(miss, ReplayMiss::Expired),
            }
            if let Ok(run) = bus.history(None, 8) {
                let s = seqs(&run);
                assert!(s.windows(2).all(|w| w[1] == w[0] + 1), "{s:?}");
            }
            let a = a.join().expect("a");
            let b = b.join().expect("b");
            assert!(a[0].seq() < a[1].seq(), "a publisher's own order kept");
            let mut all: Vec<u64> = seqs(&a).into_iter().chain(seqs(&b)).collect();
            all.sort_unstable();
            assert_eq!(all, [1, 2, 3], "each number given once");

            let mut delivered = Vec::new();
            while let Some(Received::Event(e)) = sub.try_recv() {
                delivered.push(e);
            }
            assert_eq!(seqs(&delivered), [1, 2, 3]);
            assert!(
                delivered.windows(2).all(|w| w[0].id() < w[1].id()),
                "ids in sequence order"
            );
            assert_eq!(*tap.0.lock().expect("tap"), [1, 2, 3]);
            let ring = bus.replay_since(&Cursor::Seq(1)).expect("ring");
            assert_eq!(seqs(&ring), [2, 3]);
            assert_eq!(
                bus.replay_since(&Cursor::Seq(0)).unwrap_err(),
                ReplayMiss::Expired
            );
        });
    }

    /// A client resuming with `subscribe_from` while two publishers run:
    /// the replay followed by the live events newer than its last one is
    /// exactly 1, 2, 3 — nothing lost at the hand-over, nothing twice.
    #[test]
    fn the_replay_live_hand_over_loses_and_repeats_nothing() {
        loom::model(|| {
            let bus = bus(4);
            let a = publisher(&bus, 2);
            let b = publisher(&bus, 1);
            let (mut sub, replay) = bus.subscribe_from(&Cursor::Seq(0));
            let mut got = seqs(&replay.expect("the ring holds everything"));
            a.join().expect("a");
            b.join().expect("b");
            while let Some(Received::Event(e)) = sub.try_recv() {
                if got.last().is_none_or(|&last| e.seq() > last) {
                    got.push(e.seq());
                }
            }
            assert_eq!(got, [1, 2, 3]);
        });
    }

    /// The byte bound under concurrency: with room for two events'
    /// weight, two publishers leave the ring holding the newest two and
    /// never more than the bound.
    #[test]
    fn the_byte_bound_holds_under_concurrent_publishers() {
        loom::model(|| {
            let bus = bus(8);
            let weight = ReplayRing::weight(&bus.publish(QueueStatus::new(0, 0)));
            bus.set_replay_max_bytes(2 * weight);
            let a = publisher(&bus, 1);
            let b = publisher(&bus, 1);
            assert!(bus.retained_bytes() <= 2 * weight);
            a.join().expect("a");
            b.join().expect("b");
            assert_eq!(bus.retained(), 2);
            assert_eq!(
                seqs(&bus.replay_since(&Cursor::Seq(1)).expect("ring")),
                [2, 3]
            );
            assert_eq!(
                bus.replay_since(&Cursor::Seq(0)).unwrap_err(),
                ReplayMiss::Expired
            );
        });
    }
}
