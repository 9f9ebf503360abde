//! What an outbox under [`OverflowPolicy::Coalesce`](super::OverflowPolicy::Coalesce) keeps of the events
//! that did not fit: the latest state per key.
//!
//! When the whole machine is the bottleneck every client looks slow, and
//! closing each one whose outbox fills disconnects everyone. Coalescing
//! keeps such a client: while its outbox is full, the events pushed to it
//! are not queued but folded into a [`Spill`] — the latest `JobProgress`
//! per job, the latest `QueueStatus`, each job's end (`JobCompleted` /
//! `JobFailed`, which a UI needs to see) — and every event not kept is
//! counted. The next drain hands out the queue, then one lag marker with
//! the count, then what was kept, so the client ends up with the current
//! state of everything it follows and knows how much it missed.
//!
//! The spill has a budget of its own, equal to the outbox's
//! ([`OutboxLimits`]): an outbox that coalesces holds at most twice its
//! limits. A key not yet kept that does not fit is dropped and counted;
//! the latest state of a key already kept always replaces it in place
//! (when the newer one is larger and no longer fits, the older is dropped
//! too, and the newer is kept only if it fits as a new key).
//!
//! The spill is allocated the first time an outbox overflows and cleared
//! at each drain, so a connection that keeps up never pays for it, and the
//! push of an outbox with room is unchanged.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use uuid::Uuid;

use super::outbox::{OutboxLimits, Outgoing};
use crate::event::Event;
use crate::payload::ServerEvent;

/// What a coalescing outbox keeps of an event that overflowed it: the
/// latest event of each key (see [`event_coalesce_key`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CoalesceKey {
    /// The queue's status: the latest `QueueStatus`.
    QueueStatus,
    /// A job's progress: its latest `JobProgress`.
    JobProgress(Uuid),
    /// A job's end: its `JobCompleted` or `JobFailed` (the latest, should a
    /// job end twice).
    JobEnd(Uuid),
}

/// The key under which a coalescing outbox keeps `event`, `None` for the
/// kinds it drops and counts (`JobQueued`, `JobStarted`, `NoteUpdated`:
/// a client that lagged re-reads those from the API).
pub fn event_coalesce_key(event: &Event) -> Option<CoalesceKey> {
    match event.payload() {
        ServerEvent::QueueStatus(_) => Some(CoalesceKey::QueueStatus),
        ServerEvent::JobProgress(p) => Some(CoalesceKey::JobProgress(p.job_id)),
        ServerEvent::JobCompleted(c) => Some(CoalesceKey::JobEnd(c.job_id)),
        ServerEvent::JobFailed(f) => Some(CoalesceKey::JobEnd(f.job_id)),
        ServerEvent::JobQueued(_) | ServerEvent::JobStarted(_) | ServerEvent::NoteUpdated(_) => {
            None
        }
    }
}

/// How an outbox finds an item's key ([`Outbox`](super::Outbox) of items
/// other than events keeps none).
pub(crate) type KeyFn<T> = fn(&T) -> Option<CoalesceKey>;

/// The [`KeyFn`] of items that have no state to keep.
pub(crate) fn no_key<T>(_: &T) -> Option<CoalesceKey> {
    None
}

/// What a push did: whether the event will reach the client, and whether
/// an event kept before was replaced by it (and will not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// The event was queued or kept.
    pub(crate) kept: bool,
    /// An event kept earlier (counted as delivered then) was dropped.
    pub(crate) replaced: bool,
}

impl Pushed {
    /// Queued, or kept as a new key.
    pub(crate) const KEPT: Pushed = Pushed {
        kept: true,
        replaced: false,
    };
    /// Not queued nor kept (counted as lagged, or refused under
    /// [`OverflowPolicy::Close`](super::OverflowPolicy::Close)).
    pub(crate) const DROPPED: Pushed = Pushed {
        kept: false,
        replaced: false,
    };

    /// Events this push made miss the client: this one if not kept, and
    /// the one it replaced.
    pub(crate) fn lost(self) -> u64 {
        u64::from(!self.kept) + u64::from(self.replaced)
    }
}

#[derive(Debug)]
struct Kept<T> {
    item: Arc<T>,
    size: usize,
}

/// The state kept, and the count of what was not, since an outbox
/// overflowed under [`OverflowPolicy::Coalesce`](super::OverflowPolicy::Coalesce) (see the module docs).
#[derive(Debug)]
pub(crate) struct Spill<T> {
    /// Events dropped since the last drain: not kept, or replaced.
    dropped: u64,
    /// Kept events in the order their key first overflowed; `None` where
    /// one was removed to make way for a larger one.
    kept: Vec<Option<Kept<T>>>,
    /// Where each key's event is in `kept`.
    index: HashMap<CoalesceKey, usize, KeyState>,
    live: usize,
    bytes: usize,
}

/// The hash of the spill's index. Under saturation every push to every
/// connection looks a key up, and SipHash (the std default) was a third of
/// that cost; this is a folded multiply per word (as foldhash and wyhash
/// do), keyed by seeds drawn from the std `RandomState`, so job ids chosen
/// to collide cannot be prepared in advance (and the index is bounded by
/// the outbox limits whatever happens).
#[derive(Debug, Clone)]
struct KeyState {
    k0: u64,
    k1: u64,
}

impl KeyState {
    fn new() -> KeyState {
        let seeds = RandomState::new();
        KeyState {
            k0: seeds.hash_one(0x243f_6a88_85a3_08d3_u64),
            k1: seeds.hash_one(0x1319_8a2e_0370_7344_u64) | 1,
        }
    }
}

impl BuildHasher for KeyState {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher {
            acc: self.k0,
            k1: self.k1,
        }
    }
}

/// See [`KeyState`].
struct KeyHasher {
    acc: u64,
    k1: u64,
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let product = u128::from(self.acc ^ n) * u128::from(self.k1);
        // The high and low halves folded: every input bit reaches the output.
        self.acc = (product as u64) ^ ((product >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }

    fn finish(&self) -> u64 {
        self.acc
    }
}

/// A spill whose buffers grew past this many entries is released at the
/// drain rather than kept for the next overflow.
const KEEP_CAPACITY: usize = 64;

// By hand: a derive would ask `T: Default`.
impl<T> Default for Spill<T> {
    fn default() -> Self {
        Spill {
            dropped: 0,
            kept: Vec::new(),
            index: HashMap::with_hasher(KeyState::new()),
            live: 0,
            bytes: 0,
        }
    }
}

impl<T> Spill<T> {
    /// Takes one event of wire size `size` that did not fit the queue.
    pub(crate) fn push(
        &mut self,
        key: Option<CoalesceKey>,
        item: &Arc<T>,
        size: usize,
        limits: OutboxLimits,
    ) -> Pushed {
        let Some(key) = key else {
            self.dropped += 1;
            return Pushed::DROPPED;
        };
        let mut replaced = false;
        if let Some(&at) = self.index.get(&key)
            && let Some(slot) = self.kept.get_mut(at)
            && let Some(old) = slot
        {
            let others = self.bytes - old.size;
            replaced = true;
            self.dropped += 1;
            if self.live == 1 || others.saturating_add(size) <= limits.max_bytes {
                self.bytes = others + size;
                *old = Kept {
                    item: item.clone(),
                    size,
                };
                return Pushed {
                    kept: true,
                    replaced,
                };
            }
            // Larger than its room: the newer state competes as a new key.
            *slot = None;
            self.index.remove(&key);
            self.live -= 1;
            self.bytes = others;
        }
        let fits = self.kept.len() < limits.max_messages
            && (self.live == 0 || self.bytes.saturating_add(size) <= limits.max_bytes);
        if !fits {
            self.dropped += 1;
            return Pushed {
                kept: false,
                replaced,
            };
        }
        self.index.insert(key, self.kept.len());
        self.kept.push(Some(Kept {
            item: item.clone(),
            size,
        }));
        self.live += 1;
        self.bytes += size;
        Pushed {
            kept: true,
            replaced,
        }
    }

    /// The wire bytes kept.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Appends the lag marker (if anything was dropped) and then what was
    /// kept, and empties the spill. Returns the count in the marker.
    pub(crate) fn drain_into(&mut self, out: &mut Vec<Outgoing<T>>) -> u64 {
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            out.push(Outgoing::Lagged(dropped));
        }
        out.extend(
            self.kept
                .drain(..)
                .flatten()
                .map(|k| Outgoing::Event(k.item)),
        );
        self.index.clear();
        self.live = 0;
        self.bytes = 0;
        dropped
    }

    /// Whether the buffers grew enough to be released rather than kept.
    pub(crate) fn is_large(&self) -> bool {
        self.kept.capacity() > KEEP_CAPACITY || self.index.capacity() > KEEP_CAPACITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::EventBus;
    use crate::fanout::tests::shape;
    use crate::payload::{JobCompleted, JobProgress, NoteUpdated, QueueStatus};

    fn limits(max_messages: usize, max_bytes: usize) -> OutboxLimits {
        OutboxLimits {
            max_messages,
            max_bytes,
        }
    }

    fn progress(bus: &EventBus, job: Uuid, percent: u8) -> Arc<Event> {
        bus.publish(JobProgress {
            job_id: job,
            note_id: None,
            progress: percent,
            message: None,
        })
    }

    #[test]
    fn keys_of_the_kinds() {
        let bus = EventBus::default();
        let job = Uuid::now_v7();
        assert_eq!(
            event_coalesce_key(&progress(&bus, job, 1)),
            Some(CoalesceKey::JobProgress(job))
        );
        assert_eq!(
            event_coalesce_key(&bus.publish(QueueStatus::new(1, 0))),
            Some(CoalesceKey::QueueStatus)
        );
        assert_eq!(
            event_coalesce_key(&bus.publish(JobCompleted {
                job_id: job,
                job_type: "Embedding".to_owned(),
                note_id: None,
                duration_ms: None,
            })),
            Some(CoalesceKey::JobEnd(job))
        );
        let note = bus.publish(NoteUpdated {
            note_id: Uuid::now_v7(),
            title: None,
            tags: vec![],
            has_ai_content: false,
            has_links: false,
            operation: None,
            user_id: None,
        });
        assert_eq!(event_coalesce_key(&note), None);
    }

    #[test]
    fn a_key_kept_is_replaced_in_place_and_counted() {
        let bus = EventBus::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut spill = Spill::default();
        let lim = limits(8, usize::MAX);
        let evs = [
            progress(&bus, a, 1),
            progress(&bus, b, 1),
            progress(&bus, a, 2),
            progress(&bus, a, 3),
        ];
        let pushed: Vec<Pushed> = evs
            .iter()
            .map(|e| spill.push(event_coalesce_key(e), e, 10, lim))
            .collect();
        assert_eq!(pushed[0], Pushed::KEPT);
        assert_eq!(
            pushed[2],
            Pushed {
                kept: true,
                replaced: true
            }
        );
        assert_eq!(pushed[2].lost(), 1);
        assert_eq!(spill.bytes(), 20);
        let mut out = Vec::new();
        assert_eq!(spill.drain_into(&mut out), 2);
        // a keeps its place (first overflow), with its latest state.
        let want = [
            "lag2".to_owned(),
            format!("e{}", evs[3].seq()),
            format!("e{}", evs[1].seq()),
        ];
        assert_eq!(shape(&out), want);
        assert_eq!(spill.bytes(), 0);
        out.clear();
        assert_eq!(spill.drain_into(&mut out), 0);
        assert!(out.is_empty(), "a drain empties the spill");
    }

    #[test]
    fn new_keys_beyond_the_budget_are_dropped_and_counted() {
        let bus = EventBus::default();
        let mut spill = Spill::default();
        // Two entries by count, 25 bytes.
        let lim = limits(2, 25);
        let jobs: Vec<Arc<Event>> = (0..4).map(|_| progress(&bus, Uuid::now_v7(), 1)).collect();
        let kept: Vec<bool> = jobs
            .iter()
            .map(|e| spill.push(event_coalesce_key(e), e, 10, lim).kept)
            .collect();
        assert_eq!(kept, [true, true, false, false]);
        // A replacement that would break the byte budget drops the older
        // state, and the newer one does not fit as a new key (count full).
        let grown = progress(&bus, progress_job(&jobs[0]), 9);
        assert_eq!(
            spill.push(event_coalesce_key(&grown), &grown, 20, lim),
            Pushed {
                kept: false,
                replaced: true
            }
        );
        let mut out = Vec::new();
        assert_eq!(spill.drain_into(&mut out), 4);
        assert_eq!(
            shape(&out),
            ["lag4".to_owned(), format!("e{}", jobs[1].seq())]
        );
    }

    fn progress_job(e: &Event) -> Uuid {
        match e.payload() {
            ServerEvent::JobProgress(p) => p.job_id,
            _ => Uuid::nil(),
        }
    }

    #[test]
    fn kinds_without_state_are_dropped_and_counted() {
        let bus = EventBus::default();
        let mut spill: Spill<Event> = Spill::default();
        let e = bus.publish(QueueStatus::new(1, 0));
        assert_eq!(spill.push(None, &e, 10, limits(8, 100)), Pushed::DROPPED);
        let mut out = Vec::new();
        assert_eq!(spill.drain_into(&mut out), 1);
        assert_eq!(shape(&out), ["lag1"]);
    }
}
