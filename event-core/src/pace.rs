//! Per-consumer rate limits: [`Pacer`].
//!
//! # Model
//!
//! A consumer that asked for at most `N` events per second (SSE
//! `?max_rate=N`, the WebSocket `subscribe` field `max_rate`, or the host's
//! default) gets a `Pacer` between its outbox and its socket. The fan-out
//! is not involved: the hub filters and pushes as for everyone, each event
//! is still rendered once and its shared frame written as is, and a
//! connection without a limit has no pacer at all (an `Option` that is
//! `None`).
//!
//! The pacer lets events through while its token bucket has tokens (a
//! bucket of `N` tokens refilled at `N` per second, so a quiet consumer may
//! receive a burst of up to one second's worth). Beyond that it *holds*
//! them, in stream order, and releases them as tokens come back; while held
//! they are coalesced:
//!
//! * a `JobProgress` replaces the held `JobProgress` of the same job,
//! * a `QueueStatus` replaces the held `QueueStatus`,
//!
//! so the consumer always ends up with the latest progress of every job and
//! the latest queue status, however far over its rate the stream runs.
//! Every event it does not get — replaced while held, or not held because
//! the pacer was full — is counted in a marker ([`Paced::Dropped`]) at its
//! place in the stream, which the transport writes as its lag signal
//! (`events.lagged` with `dropped_count`) and counts in
//! [`EVENTS_PACED`](crate::metrics::EVENTS_PACED), not in the drops of
//! clients that fell behind: the consumer chose it. Lag markers from before
//! the pacer (the outbox's) are passed on as [`Paced::Lagged`], in order,
//! never merged with its own. The consumer is never disconnected for its
//! own limit.
//!
//! What is held is bounded by the connection's [`OutboxLimits`] (messages
//! and bytes, the same budget as its outbox): an event that would exceed it
//! is dropped and counted. The released lag markers do not count against
//! the rate.
//!
//! # Why not `governor`
//!
//! The host's per-producer limits (`PUBLISH_MAX_RATE`) use `governor`'s
//! keyed limiter, shared by every request of a route. A pacer is owned by
//! one connection task and touched only by it, so it needs no atomics; it
//! must tell that task *when* the next token is due, on the Tokio clock its
//! other timers (ping, idle, keep-alive) run on and that tests can pause;
//! and event-core, which every transport and embedding service builds on,
//! would gain governor's dependencies for a GCRA check of a few lines. The
//! check below is that same algorithm (GCRA: a "theoretical arrival time"
//! advanced by one interval per event, with one second of burst).

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use crate::event::Event;
use crate::fanout::{FRAME_OVERHEAD, OutboxLimits, Outgoing, WireForm};
use crate::payload::ServerEvent;

/// The largest `max_rate` a consumer may ask for, in events per second
/// (a consumer that can take more needs no limit).
pub const MAX_STREAM_RATE: u32 = 10_000;

/// Parses a consumer's `max_rate` (events per second): `0` means unlimited
/// (`None`), `1..=`[`MAX_STREAM_RATE`] a limit; anything else is an error
/// saying what is accepted.
///
/// ```
/// use event_core::pace::{parse_max_rate, MAX_STREAM_RATE};
/// assert_eq!(parse_max_rate("5").unwrap().map(|n| n.get()), Some(5));
/// assert_eq!(parse_max_rate("0").unwrap(), None);
/// assert!(parse_max_rate(&(MAX_STREAM_RATE + 1).to_string()).is_err());
/// assert!(parse_max_rate("fast").is_err());
/// ```
pub fn parse_max_rate(text: &str) -> Result<Option<NonZeroU32>, String> {
    text.trim()
        .parse::<u64>()
        .map_err(|_| max_rate_range())
        .and_then(max_rate)
}

/// [`parse_max_rate`] for a number already parsed (a JSON field).
pub fn max_rate(n: u64) -> Result<Option<NonZeroU32>, String> {
    if n > u64::from(MAX_STREAM_RATE) {
        return Err(max_rate_range());
    }
    // At most MAX_STREAM_RATE: fits.
    Ok(NonZeroU32::new(u32::try_from(n).unwrap_or(MAX_STREAM_RATE)))
}

fn max_rate_range() -> String {
    format!("expected events per second from 1 to {MAX_STREAM_RATE}, or 0 for no limit")
}

/// What a held event may be replaced by: a later event with the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Queue,
    Progress(Uuid),
}

fn key_of(event: &Event) -> Option<Key> {
    match event.payload() {
        ServerEvent::QueueStatus(_) => Some(Key::Queue),
        ServerEvent::JobProgress(p) => Some(Key::Progress(p.job_id)),
        _ => None,
    }
}

/// What a [`Pacer`] lets through, in stream order.
#[derive(Debug, Clone)]
pub enum Paced {
    /// An event to write.
    Event(Arc<Event>),
    /// This many events were lost before the pacer (an outbox lag marker,
    /// passed on).
    Lagged(u64),
    /// This many events were not delivered here because of the rate limit
    /// (replaced by a later one while held, or over what the pacer may
    /// hold).
    Dropped(u64),
}

/// A held entry: an event, or a marker.
#[derive(Debug)]
enum Held {
    Event { event: Arc<Event>, size: usize },
    Lagged(u64),
    Dropped(u64),
}

/// A consumer's rate limit, between its outbox and its socket (see the
/// [module docs](self)).
#[derive(Debug)]
pub struct Pacer {
    /// `None` once the limit was lifted: what is held goes at once.
    interval: Option<Duration>,
    /// How far ahead of now `tat` may run (one second of burst minus one
    /// interval).
    tau: Duration,
    /// The GCRA's theoretical arrival time of the next event.
    tat: Instant,
    rate: Option<NonZeroU32>,
    held: VecDeque<Held>,
    /// The absolute position (`base` + index) of the held event of each key.
    index: HashMap<Key, u64>,
    /// The absolute position of `held[0]`.
    base: u64,
    /// Held events (not lag markers), and their wire bytes.
    events: usize,
    bytes: usize,
    limits: OutboxLimits,
    wire: WireForm,
    /// What the last [`pace`](Pacer::pace) lets through.
    out: Vec<Paced>,
}

impl Pacer {
    /// A pacer letting through at most `rate` events per second (bursts of
    /// up to `rate`), holding at most `limits` of events in `wire` form.
    pub fn new(rate: NonZeroU32, limits: OutboxLimits, wire: WireForm) -> Pacer {
        let mut pacer = Pacer {
            interval: None,
            tau: Duration::ZERO,
            tat: Instant::now(),
            rate: None,
            held: VecDeque::new(),
            index: HashMap::new(),
            base: 0,
            events: 0,
            bytes: 0,
            limits,
            wire,
            out: Vec::new(),
        };
        pacer.set_rate(Some(rate));
        pacer
    }

    /// The limit, `None` once lifted.
    pub fn rate(&self) -> Option<NonZeroU32> {
        self.rate
    }

    /// Changes the limit from now on (a full bucket at the new rate);
    /// `None` lifts it: what is held is released by the next
    /// [`pace`](Self::pace), and the pacer can be dropped once
    /// [`is_empty`](Self::is_empty).
    pub fn set_rate(&mut self, rate: Option<NonZeroU32>) {
        self.rate = rate;
        match rate {
            Some(rate) => {
                let interval = Duration::from_secs(1) / rate.get();
                self.interval = Some(interval);
                self.tau = interval * (rate.get() - 1);
                self.tat = Instant::now();
            }
            None => self.interval = None,
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Events held right now.
    pub fn held_events(&self) -> usize {
        self.events
    }

    /// When held events may go next (the time to call [`pace`](Self::pace)
    /// again), `None` when nothing is held.
    pub fn next_release(&self) -> Option<Instant> {
        if self.events == 0 {
            return None;
        }
        Some(match self.interval {
            Some(_) => self.tat.checked_sub(self.tau).unwrap_or(self.tat),
            None => Instant::now(),
        })
    }

    /// Takes (drains) `input`, what the outbox gave since the last call in
    /// stream order, and returns what may be written at `now`: released
    /// held events first, then new ones while tokens last, with markers
    /// where events were dropped or lost. The rest is held.
    pub fn pace(&mut self, input: &mut Vec<Outgoing>, now: Instant) -> std::vec::Drain<'_, Paced> {
        let mut out = std::mem::take(&mut self.out);
        self.release(&mut out, now);
        for item in input.drain(..) {
            match item {
                Outgoing::Lagged(n) if self.held.is_empty() => push(&mut out, Paced::Lagged(n)),
                Outgoing::Lagged(n) => self.hold_marker(Held::Lagged(n)),
                Outgoing::Event(event) => {
                    if self.held.is_empty() && self.take(now) {
                        out.push(Paced::Event(event));
                    } else {
                        self.hold(event);
                    }
                }
            }
        }
        self.out = out;
        self.out.drain(..)
    }

    /// Takes a token at `now`, if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let Some(interval) = self.interval else {
            return true;
        };
        let tat = self.tat.max(now);
        if tat.duration_since(now) > self.tau {
            return false;
        }
        self.tat = tat + interval;
        true
    }

    /// Moves what may go at `now` from the front of the held queue to `out`.
    fn release(&mut self, out: &mut Vec<Paced>, now: Instant) {
        while let Some(front) = self.held.front() {
            match front {
                Held::Lagged(n) => push(out, Paced::Lagged(*n)),
                Held::Dropped(n) => push(out, Paced::Dropped(*n)),
                Held::Event { .. } => {
                    if !self.take(now) {
                        return;
                    }
                }
            }
            let at = self.base;
            self.base += 1;
            if let Some(Held::Event { event, size }) = self.held.pop_front() {
                self.events -= 1;
                self.bytes -= size;
                if let Some(key) = key_of(&event)
                    && self.index.get(&key) == Some(&at)
                {
                    self.index.remove(&key);
                }
                out.push(Paced::Event(event));
            }
        }
    }

    /// Queues a marker, merged into the last entry if that is one of its
    /// kind.
    fn hold_marker(&mut self, marker: Held) {
        match (self.held.back_mut(), marker) {
            (Some(Held::Lagged(m)), Held::Lagged(n))
            | (Some(Held::Dropped(m)), Held::Dropped(n)) => *m += n,
            (_, marker) => self.held.push_back(marker),
        }
    }

    /// Holds `event`: it replaces a held event of its key, else it is
    /// queued if it fits the budget, else dropped (counted).
    fn hold(&mut self, event: Arc<Event>) {
        let key = key_of(&event);
        if let Some(key) = key
            && let Some(&at) = self.index.get(&key)
            && let Some(slot) = at
                .checked_sub(self.base)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.held.get_mut(i))
            && let Held::Event { size, .. } = slot
        {
            self.events -= 1;
            self.bytes -= *size;
            *slot = Held::Dropped(1);
        }
        let size = self.wire.bytes(&event).len() + FRAME_OVERHEAD;
        let fits = self.events == 0
            || (self.events < self.limits.max_messages
                && self.bytes.saturating_add(size) <= self.limits.max_bytes);
        if !fits {
            self.hold_marker(Held::Dropped(1));
            return;
        }
        if let Some(key) = key {
            self.index.insert(key, self.base + self.held.len() as u64);
        }
        self.held.push_back(Held::Event { event, size });
        self.events += 1;
        self.bytes += size;
        // Replaced events leave a marker each; compacting keeps the queue
        // within about three entries per event.
        if self.held.len() > 3 * self.events + 64 {
            self.compact();
        }
    }

    /// Folds each run of markers between two events into at most two (one
    /// per kind, the first kind first: nothing lies between them to order)
    /// and renumbers the index.
    fn compact(&mut self) {
        let mut merged: VecDeque<Held> = VecDeque::with_capacity(3 * self.events + 2);
        let mut run: Vec<Held> = Vec::with_capacity(2);
        let flush = |run: &mut Vec<Held>, merged: &mut VecDeque<Held>| merged.extend(run.drain(..));
        for entry in self.held.drain(..) {
            match entry {
                Held::Event { .. } => {
                    flush(&mut run, &mut merged);
                    merged.push_back(entry);
                }
                Held::Lagged(n) => match run.iter_mut().find(|h| matches!(h, Held::Lagged(_))) {
                    Some(Held::Lagged(m)) => *m += n,
                    _ => run.push(Held::Lagged(n)),
                },
                Held::Dropped(n) => match run.iter_mut().find(|h| matches!(h, Held::Dropped(_))) {
                    Some(Held::Dropped(m)) => *m += n,
                    _ => run.push(Held::Dropped(n)),
                },
            }
        }
        flush(&mut run, &mut merged);
        self.held = merged;
        self.index.clear();
        for (i, entry) in self.held.iter().enumerate() {
            if let Held::Event { event, .. } = entry
                && let Some(key) = key_of(event)
            {
                self.index.insert(key, self.base + i as u64);
            }
        }
    }
}

/// Appends `item`, a marker merged into the last one if that is of its
/// kind.
fn push(out: &mut Vec<Paced>, item: Paced) {
    match (out.last_mut(), item) {
        (Some(Paced::Lagged(m)), Paced::Lagged(n))
        | (Some(Paced::Dropped(m)), Paced::Dropped(n)) => *m += n,
        (_, item) => out.push(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::EventBus;
    use crate::payload::{JobCompleted, JobProgress, QueueStatus};

    fn limits(max_messages: usize) -> OutboxLimits {
        OutboxLimits {
            max_messages,
            max_bytes: usize::MAX,
        }
    }

    fn progress(bus: &EventBus, job: Uuid, p: u8) -> Arc<Event> {
        bus.publish(JobProgress {
            job_id: job,
            note_id: None,
            progress: p,
            message: None,
        })
    }

    fn completed(bus: &EventBus, job: Uuid) -> Arc<Event> {
        bus.publish(JobCompleted {
            job_id: job,
            job_type: "Embedding".to_owned(),
            note_id: None,
            duration_ms: None,
        })
    }

    fn shape(items: &[Paced]) -> Vec<String> {
        items
            .iter()
            .map(|o| match o {
                Paced::Event(e) => match e.payload() {
                    ServerEvent::JobProgress(p) => format!("p{}", p.progress),
                    ServerEvent::QueueStatus(q) => format!("q{}", q.total_jobs),
                    other => other.type_name().to_owned(),
                },
                Paced::Dropped(n) => format!("drop{n}"),
                Paced::Lagged(n) => format!("lag{n}"),
            })
            .collect()
    }

    /// Paces `input` at `now` and returns what goes.
    fn go(pacer: &mut Pacer, mut input: Vec<Outgoing>, now: Instant) -> Vec<Paced> {
        let out = pacer.pace(&mut input, now).collect();
        assert!(input.is_empty(), "the input is taken");
        out
    }

    fn rate(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_then_progress_is_coalesced_and_the_rest_waits() {
        let bus = EventBus::default();
        let job = Uuid::now_v7();
        let mut pacer = Pacer::new(rate(2), limits(100), WireForm::Flat);
        let mut items: Vec<Outgoing> = (1..=6)
            .map(|p| Outgoing::Event(progress(&bus, job, p * 10)))
            .collect();
        items.push(Outgoing::Event(completed(&bus, job)));
        items.push(Outgoing::Event(bus.publish(QueueStatus::new(1, 0))));
        items.push(Outgoing::Event(bus.publish(QueueStatus::new(2, 0))));
        let now = Instant::now();
        // Two tokens: the first two go; 30..50 are replaced by 60.
        assert_eq!(shape(&go(&mut pacer, items, now)), ["p10", "p20"]);
        assert_eq!(pacer.held_events(), 3, "p60, JobCompleted, q2");
        let next = pacer.next_release().unwrap();
        assert_eq!(next - now, Duration::from_millis(500));
        assert_eq!(shape(&go(&mut pacer, Vec::new(), next)), ["drop3", "p60"]);
        let next = pacer.next_release().unwrap();
        // The marker of q1 (replaced) goes with the event before it.
        assert_eq!(
            shape(&go(&mut pacer, Vec::new(), next)),
            ["JobCompleted", "drop1"]
        );
        let next = pacer.next_release().unwrap();
        assert_eq!(shape(&go(&mut pacer, Vec::new(), next)), ["q2"]);
        assert!(pacer.is_empty());
        assert_eq!(pacer.next_release(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pacer_drops_and_counts_in_place_apart_from_upstream_losses() {
        let bus = EventBus::default();
        let mut pacer = Pacer::new(rate(1), limits(2), WireForm::Flat);
        let mut items: Vec<Outgoing> = (0..5)
            .map(|_| Outgoing::Event(completed(&bus, Uuid::now_v7())))
            .collect();
        items.push(Outgoing::Lagged(2));
        items.push(Outgoing::Event(completed(&bus, Uuid::now_v7())));
        let now = Instant::now();
        assert_eq!(go(&mut pacer, items, now).len(), 1, "one token");
        assert_eq!(pacer.held_events(), 2);
        let mut out = Vec::new();
        for secs in [1, 2] {
            out.extend(go(&mut pacer, Vec::new(), now + Duration::from_secs(secs)));
        }
        // Two held; two, then one more, dropped for room; the two lost
        // upstream kept apart, in place.
        assert_eq!(
            shape(&out),
            ["JobCompleted", "JobCompleted", "drop2", "lag2", "drop1"]
        );
        assert!(pacer.is_empty());
        // With nothing held, an upstream loss goes at once.
        assert_eq!(
            shape(&go(&mut pacer, vec![Outgoing::Lagged(3)], now)),
            ["lag3"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn lifting_the_limit_releases_everything_held() {
        let bus = EventBus::default();
        let mut pacer = Pacer::new(rate(1), limits(100), WireForm::Flat);
        let items: Vec<Outgoing> = (0..4)
            .map(|_| Outgoing::Event(completed(&bus, Uuid::now_v7())))
            .collect();
        let now = Instant::now();
        assert_eq!(go(&mut pacer, items, now).len(), 1);
        pacer.set_rate(None);
        assert_eq!(pacer.rate(), None);
        assert_eq!(go(&mut pacer, Vec::new(), now).len(), 3);
        assert!(pacer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_overload_keeps_the_queue_bounded_and_every_latest_state() {
        let bus = EventBus::default();
        let jobs: Vec<Uuid> = (0..8).map(|_| Uuid::now_v7()).collect();
        let mut pacer = Pacer::new(rate(1), limits(64), WireForm::Flat);
        let start = Instant::now();
        let mut got = Vec::new();
        let mut published = 0u64;
        for round in 0..100u8 {
            let items: Vec<Outgoing> = jobs
                .iter()
                .map(|j| Outgoing::Event(progress(&bus, *j, round)))
                .collect();
            published += items.len() as u64;
            let at = start + Duration::from_millis(u64::from(round));
            got.extend(go(&mut pacer, items, at));
            assert!(pacer.held.len() <= 3 * pacer.events + 65);
        }
        let items: Vec<Outgoing> = jobs
            .iter()
            .map(|j| Outgoing::Event(completed(&bus, *j)))
            .collect();
        published += items.len() as u64;
        got.extend(go(&mut pacer, items, start + Duration::from_secs(1)));
        while let Some(next) = pacer.next_release() {
            got.extend(go(&mut pacer, Vec::new(), next));
        }
        let events = got.iter().filter(|o| matches!(o, Paced::Event(_))).count() as u64;
        let dropped: u64 = got
            .iter()
            .map(|o| match o {
                Paced::Dropped(n) => *n,
                Paced::Lagged(_) | Paced::Event(_) => 0,
            })
            .sum();
        assert_eq!(events + dropped, published, "every event sent or counted");
        for job in &jobs {
            let last: Vec<String> = got
                .iter()
                .filter_map(|o| match o {
                    Paced::Event(e) if e.payload().entity().map(|(_, id)| id) == Some(*job) => {
                        Some(shape(std::slice::from_ref(o))[0].clone())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(last[last.len() - 2..], ["p99", "JobCompleted"]);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn compaction_keeps_markers_of_each_kind_and_the_index_right() {
        let bus = EventBus::default();
        let job = Uuid::now_v7();
        let mut pacer = Pacer::new(rate(1), limits(1000), WireForm::Flat);
        let now = Instant::now();
        let first = go(&mut pacer, vec![Outgoing::Event(completed(&bus, job))], now);
        assert_eq!(first.len(), 1);
        let mut items = Vec::new();
        for p in 0..100u8 {
            items.push(Outgoing::Event(progress(&bus, job, p)));
            if p % 10 == 0 {
                items.push(Outgoing::Lagged(1));
            }
        }
        assert!(go(&mut pacer, items, now).is_empty());
        assert_eq!(pacer.held_events(), 1, "one progress, the latest");
        assert!(pacer.held.len() <= 3 * pacer.events + 65);
        let mut out = Vec::new();
        while let Some(next) = pacer.next_release() {
            out.extend(go(&mut pacer, Vec::new(), next));
        }
        let (mut dropped, mut lagged) = (0, 0);
        for item in &out {
            match item {
                Paced::Dropped(n) => dropped += n,
                Paced::Lagged(n) => lagged += n,
                Paced::Event(_) => {}
            }
        }
        assert_eq!((dropped, lagged), (99, 10));
        assert_eq!(shape(&out[out.len() - 1..]), ["p99"]);
    }
}
