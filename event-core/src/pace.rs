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
//! the pacer was full — is counted in a lag marker ([`Outgoing::Lagged`])
//! at its place in the stream, which the transport writes as its lag signal
//! (`events.lagged` with `dropped_count`). The consumer is never
//! disconnected for its own limit.
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
use crate::fanout::{OutboxLimits, Outgoing, WireForm};
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

/// A held entry: an event, or the number of events dropped at this place.
#[derive(Debug)]
enum Held {
    Event { event: Arc<Event>, size: usize },
    Lag(u64),
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
    scratch: Vec<Outgoing>,
}

/// What a held event counts against the budget beyond its JSON (the same
/// allowance the outbox makes for framing).
const FRAME_OVERHEAD: usize = 64;

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
            scratch: Vec::new(),
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

    /// Takes `items` (what the outbox gave since the last call, in stream
    /// order) and leaves in it what may be written at `now`: released held events first, then
    /// new ones while tokens last, lag markers where events were dropped.
    /// The rest is held.
    pub fn pace(&mut self, items: &mut Vec<Outgoing>, now: Instant) {
        let mut input = std::mem::replace(items, std::mem::take(&mut self.scratch));
        self.release(items, now);
        for item in input.drain(..) {
            match item {
                Outgoing::Lagged(n) if self.held.is_empty() => push_lag(items, n),
                Outgoing::Lagged(n) => self.hold_lag(n),
                Outgoing::Event(event) => {
                    if self.held.is_empty() && self.take(now) {
                        items.push(Outgoing::Event(event));
                    } else {
                        self.hold(event);
                    }
                }
            }
        }
        self.scratch = input;
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
    fn release(&mut self, out: &mut Vec<Outgoing>, now: Instant) {
        while let Some(front) = self.held.front() {
            match front {
                Held::Lag(n) => push_lag(out, *n),
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
                out.push(Outgoing::Event(event));
            }
        }
    }

    fn hold_lag(&mut self, n: u64) {
        match self.held.back_mut() {
            Some(Held::Lag(m)) => *m += n,
            _ => self.held.push_back(Held::Lag(n)),
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
            *slot = Held::Lag(1);
        }
        let size = self.wire.bytes(&event).len() + FRAME_OVERHEAD;
        let fits = self.events == 0
            || (self.events < self.limits.max_messages
                && self.bytes.saturating_add(size) <= self.limits.max_bytes);
        if !fits {
            self.hold_lag(1);
            return;
        }
        if let Some(key) = key {
            self.index.insert(key, self.base + self.held.len() as u64);
        }
        self.held.push_back(Held::Event { event, size });
        self.events += 1;
        self.bytes += size;
        // Replaced events leave a marker each; merging neighbours keeps the
        // queue within about twice its events.
        if self.held.len() > 2 * self.events + 64 {
            self.compact();
        }
    }

    /// Merges adjacent lag markers and renumbers the index.
    fn compact(&mut self) {
        let mut merged: VecDeque<Held> = VecDeque::with_capacity(2 * self.events + 1);
        for entry in self.held.drain(..) {
            match (merged.back_mut(), entry) {
                (Some(Held::Lag(m)), Held::Lag(n)) => *m += n,
                (_, entry) => merged.push_back(entry),
            }
        }
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

fn push_lag(out: &mut Vec<Outgoing>, n: u64) {
    match out.last_mut() {
        Some(Outgoing::Lagged(m)) => *m += n,
        _ => out.push(Outgoing::Lagged(n)),
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

    fn shape(items: &[Outgoing]) -> Vec<String> {
        items
            .iter()
            .map(|o| match o {
                Outgoing::Event(e) => match e.payload() {
                    ServerEvent::JobProgress(p) => format!("p{}", p.progress),
                    ServerEvent::QueueStatus(q) => format!("q{}", q.total_jobs),
                    other => other.type_name().to_owned(),
                },
                Outgoing::Lagged(n) => format!("lag{n}"),
            })
            .collect()
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
        pacer.pace(&mut items, now);
        // Two tokens: the first two go; 30..50 are replaced by 60.
        assert_eq!(shape(&items), ["p10", "p20"]);
        assert_eq!(pacer.held_events(), 3, "p60, JobCompleted, q2");
        let next = pacer.next_release().unwrap();
        assert_eq!(next - now, Duration::from_millis(500));
        items.clear();
        pacer.pace(&mut items, next);
        assert_eq!(shape(&items), ["lag3", "p60"]);
        items.clear();
        let next = pacer.next_release().unwrap();
        pacer.pace(&mut items, next);
        // The marker of q1 (replaced) goes with the event before it.
        assert_eq!(shape(&items), ["JobCompleted", "lag1"]);
        items.clear();
        let next = pacer.next_release().unwrap();
        pacer.pace(&mut items, next);
        assert_eq!(shape(&items), ["q2"]);
        assert!(pacer.is_empty());
        assert_eq!(pacer.next_release(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_pacer_drops_and_counts_in_place() {
        let bus = EventBus::default();
        let mut pacer = Pacer::new(rate(1), limits(2), WireForm::Flat);
        let jobs: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
        let mut items: Vec<Outgoing> = jobs
            .iter()
            .map(|j| Outgoing::Event(completed(&bus, *j)))
            .collect();
        items.push(Outgoing::Lagged(2));
        let now = Instant::now();
        pacer.pace(&mut items, now);
        assert_eq!(items.len(), 1, "one token");
        assert_eq!(pacer.held_events(), 2);
        let mut out = Vec::new();
        for secs in [1, 2] {
            items.clear();
            pacer.pace(&mut items, now + Duration::from_secs(secs));
            out.append(&mut items);
        }
        // Two held, two dropped for room plus two lost upstream: one marker.
        assert_eq!(shape(&out), ["JobCompleted", "JobCompleted", "lag4"]);
        assert!(pacer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn lifting_the_limit_releases_everything_held() {
        let bus = EventBus::default();
        let mut pacer = Pacer::new(rate(1), limits(100), WireForm::Flat);
        let mut items: Vec<Outgoing> = (0..4)
            .map(|_| Outgoing::Event(completed(&bus, Uuid::now_v7())))
            .collect();
        let now = Instant::now();
        pacer.pace(&mut items, now);
        assert_eq!(items.len(), 1);
        pacer.set_rate(None);
        items.clear();
        pacer.pace(&mut items, now);
        assert_eq!(items.len(), 3);
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
            let mut items: Vec<Outgoing> = jobs
                .iter()
                .map(|j| Outgoing::Event(progress(&bus, *j, round)))
                .collect();
            published += items.len() as u64;
            pacer.pace(&mut items, start + Duration::from_millis(u64::from(round)));
            got.append(&mut items);
            assert!(pacer.held.len() <= 2 * pacer.events + 65);
        }
        let mut items: Vec<Outgoing> = jobs
            .iter()
            .map(|j| Outgoing::Event(completed(&bus, *j)))
            .collect();
        published += items.len() as u64;
        let mut at = start + Duration::from_secs(1);
        pacer.pace(&mut items, at);
        got.append(&mut items);
        while let Some(next) = pacer.next_release() {
            at = next;
            pacer.pace(&mut items, at);
            got.append(&mut items);
        }
        let events = got
            .iter()
            .filter(|o| matches!(o, Outgoing::Event(_)))
            .count() as u64;
        let lagged: u64 = got
            .iter()
            .map(|o| match o {
                Outgoing::Lagged(n) => *n,
                Outgoing::Event(_) => 0,
            })
            .sum();
        assert_eq!(events + lagged, published, "every event sent or counted");
        for job in &jobs {
            let last: Vec<String> = got
                .iter()
                .filter_map(|o| match o {
                    Outgoing::Event(e) if e.payload().entity().map(|(_, id)| id) == Some(*job) => {
                        Some(shape(std::slice::from_ref(o))[0].clone())
                    }
                    _ => None,
                })
                .collect();
            assert_eq!(last[last.len() - 2..], ["p99", "JobCompleted"]);
        }
    }
}
