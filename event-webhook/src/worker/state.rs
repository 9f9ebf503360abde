//! The dispatcher's state: local queues, running attempts, and whether the
//! store may hold due rows this worker has not claimed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::time::Instant;
use uuid::Uuid;

use super::handoff::Inserted;
use crate::model::ClaimedDelivery;

/// A claimed row waiting for a slot.
pub(super) struct Held {
    pub row: ClaimedDelivery,
    /// After this the claim may run out before an attempt started now has
    /// been recorded: the row is handed back instead.
    pub attempt_by: Instant,
    /// For a row handed over by the sink before its insert committed: what
    /// the worker writes about the row waits for the commit.
    pub inserted: Option<Inserted>,
}

impl Held {
    /// Waits for the row's insert, if it was handed over before it; whether
    /// the row is in the store (so writing about it has an effect).
    pub async fn in_store(&self) -> bool {
        match &self.inserted {
            Some(inserted) => inserted.committed().await,
            None => true,
        }
    }
}

/// The dispatcher's bookkeeping, under one lock.
#[derive(Default)]
pub(super) struct State {
    /// Claimed rows waiting for a slot, per webhook.
    pub queued: HashMap<Uuid, VecDeque<Held>>,
    /// Attempts running, per webhook.
    pub running: HashMap<Uuid, usize>,
    /// Rows in `queued`.
    pub queued_total: usize,
    /// Rows the sink is queuing claimed for this worker, per webhook (see
    /// `handoff`).
    pub reserved: HashMap<Uuid, usize>,
    /// Rows in `reserved`.
    pub reserved_total: usize,
    /// Rows the sink handed over while older rows of their webhook may be
    /// due in the store (`unknown`, or the webhook `behind`), per webhook:
    /// inserted claimed like every handed-over row, they wait here until a
    /// claim has taken those older rows, then queue after them
    /// ([`release_parked`](Self::release_parked)). Inserted unclaimed
    /// instead, they would keep the webhook behind for as long as fresh rows
    /// keep coming: each claim would find the rows committed while it ran.
    pub parked: HashMap<Uuid, VecDeque<Held>>,
    /// Rows in `parked`.
    pub parked_total: usize,
    /// Parked rows on their way back to the store (their webhook's hold
    /// overflowed), per webhook: until they are there, a claim cannot have
    /// taken them, so their webhook stays behind.
    pub releasing: HashMap<Uuid, usize>,
    /// Whether the store may hold due rows this worker has not claimed:
    /// the dispatcher claims while it is set.
    pub backlog: bool,
    /// Set (with the claim epoch it was set in) while the store may hold
    /// due rows older than fresh ones, of webhooks this worker cannot name
    /// (rows from before it started, retries coming due, rows the API
    /// queued again): the sink's rows are then inserted unclaimed, so they
    /// do not overtake those.
    pub unknown: Option<u64>,
    /// Webhooks known to have due rows in the store older than fresh ones
    /// (rows this process queued unclaimed, rows handed back), with the
    /// claim epoch each was noted in: their fresh rows are inserted
    /// unclaimed until a claim that included the webhook took all of them.
    pub behind: HashMap<Uuid, u64>,
    /// Counts claims started, so a claim clears only what was noted before
    /// it looked.
    pub epoch: u64,
    /// The earliest retry this worker scheduled and has not looked for yet.
    pub next_retry: Option<OffsetDateTime>,
    /// The webhooks left out of the last claim, when it found nothing: due
    /// rows, if any, belong to them, so claiming again is pointless while
    /// they are all still full.
    pub fruitless: Option<Vec<Uuid>>,
}

impl State {
    pub fn new() -> Self {
        State {
            // Rows may be waiting from before this worker started.
            backlog: true,
            unknown: Some(0),
            ..State::default()
        }
    }

    /// Notes that the store may hold due rows this worker has not claimed
    /// (and that are not older than the sink's fresh rows in any way that
    /// matters: rows of other instances, or a periodic look).
    pub fn note_backlog(&mut self) {
        self.backlog = true;
        self.fruitless = None;
    }

    /// Notes that the store may hold due rows, of webhooks not known here,
    /// that fresh rows must not overtake.
    pub fn note_unknown(&mut self) {
        self.note_backlog();
        self.unknown = Some(self.epoch);
    }

    /// Notes that `webhook` has due rows in the store that its fresh rows
    /// must not overtake.
    pub fn note_behind(&mut self, webhook: Uuid) {
        self.note_backlog();
        self.behind.insert(webhook, self.epoch);
    }

    /// Starts a claim: returns its epoch.
    pub fn start_claim(&mut self) -> u64 {
        let epoch = self.epoch;
        self.epoch += 1;
        epoch
    }

    /// A claim of `epoch` that left out `excluded` came back short: every
    /// due row of the other webhooks noted before it started is claimed.
    /// What was unknown then may still be due for the excluded ones.
    pub fn caught_up(&mut self, epoch: u64, excluded: &[Uuid]) {
        if let Some(at) = self.unknown.filter(|at| *at <= epoch) {
            self.unknown = None;
            for w in excluded {
                self.behind.entry(*w).or_insert(at);
            }
        }
        let excluded: HashSet<&Uuid> = excluded.iter().collect();
        let releasing = &self.releasing;
        self.behind
            .retain(|w, at| *at > epoch || excluded.contains(w) || releasing.contains_key(w));
    }

    /// Notes a retry scheduled at `at`.
    pub fn retry_at(&mut self, at: OffsetDateTime) {
        self.next_retry = Some(self.next_retry.map_or(at, |n| n.min(at)));
    }

    /// How long until the earliest scheduled retry is due (zero when it is).
    pub fn retry_due_in(&self, now: OffsetDateTime) -> Option<Duration> {
        self.next_retry
            .map(|at| Duration::try_from(at - now).unwrap_or(Duration::ZERO))
    }

    /// Rows of `webhook` this worker holds: queued, running, reserved or
    /// parked (what the sink's handoff may fill up to its hold).
    pub fn held(&self, webhook: &Uuid) -> usize {
        self.claimable_held(webhook) + self.parked.get(webhook).map_or(0, VecDeque::len)
    }

    /// Rows of `webhook` held and not parked: what a claim's room counts.
    /// Parked rows wait for a claim, so they must not keep it from taking
    /// the older rows they wait for.
    pub fn claimable_held(&self, webhook: &Uuid) -> usize {
        self.queued.get(webhook).map_or(0, VecDeque::len)
            + self.running.get(webhook).copied().unwrap_or(0)
            + self.reserved.get(webhook).copied().unwrap_or(0)
    }

    /// Whether due rows of `webhook` older than fresh ones may be waiting in
    /// the store: its fresh rows then wait for a claim ([`park`](Self::park)).
    pub fn blocked(&self, webhook: &Uuid) -> bool {
        self.unknown.is_some() || self.behind.contains_key(webhook)
    }

    /// Holds a handed-over row back until a claim has taken the older rows
    /// of its webhook.
    pub fn park(&mut self, held: Held) {
        self.parked_total += 1;
        self.parked
            .entry(held.row.webhook_id)
            .or_default()
            .push_back(held);
    }

    /// Queues the parked rows of every webhook no longer blocked, after the
    /// rows already queued (those a claim just brought are older); how many.
    pub fn release_parked(&mut self) -> usize {
        let free: Vec<Uuid> = self
            .parked
            .keys()
            .filter(|w| !self.blocked(w))
            .copied()
            .collect();
        let mut released = 0;
        for w in free {
            for held in self.parked.remove(&w).unwrap_or_default() {
                self.parked_total -= 1;
                self.push(held);
                released += 1;
            }
        }
        released
    }

    /// Takes the parked rows of `webhook` out, to go back to the store
    /// (see [`released_back`](Self::released_back)).
    pub fn evict_parked(&mut self, webhook: &Uuid) -> Vec<Held> {
        let rows: Vec<Held> = self.parked.remove(webhook).unwrap_or_default().into();
        if !rows.is_empty() {
            self.parked_total -= rows.len();
            *self.releasing.entry(*webhook).or_default() += rows.len();
        }
        rows
    }

    /// `n` evicted rows of `webhook` are back in the store (or their
    /// release failed, and they return when their lease ends): a claim
    /// must take them before the webhook's fresh rows go out.
    pub fn released_back(&mut self, webhook: Uuid, n: usize) {
        if let Some(left) = self.releasing.get_mut(&webhook) {
            *left = left.saturating_sub(n);
            if *left == 0 {
                self.releasing.remove(&webhook);
            }
        }
        self.note_behind(webhook);
    }

    /// Takes every parked row out (shutdown).
    pub fn drain_parked(&mut self) -> Vec<Held> {
        self.parked_total = 0;
        self.parked.drain().flat_map(|(_, q)| q).collect()
    }

    /// Rows of `webhook` claimed and not finished: queued or running (not
    /// those still being inserted).
    pub fn active(&self, webhook: &Uuid) -> usize {
        self.queued.get(webhook).map_or(0, VecDeque::len)
            + self.running.get(webhook).copied().unwrap_or(0)
    }

    /// Rows held locally and not running: queued or reserved.
    pub fn local_total(&self) -> usize {
        self.queued_total + self.reserved_total
    }

    /// Every webhook with rows held.
    pub fn busy_webhooks(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self
            .queued
            .keys()
            .chain(self.running.keys())
            .chain(self.reserved.keys())
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn push(&mut self, held: Held) {
        self.queued_total += 1;
        self.queued
            .entry(held.row.webhook_id)
            .or_default()
            .push_back(held);
    }

    /// Takes one reservation of `webhook` back.
    pub fn unreserve(&mut self, webhook: &Uuid) {
        if let Some(n) = self.reserved.get_mut(webhook) {
            *n -= 1;
            self.reserved_total -= 1;
            if *n == 0 {
                self.reserved.remove(webhook);
            }
        }
    }

    pub fn pop(&mut self, webhook: &Uuid) -> Option<Held> {
        let q = self.queued.get_mut(webhook)?;
        let row = q.pop_front();
        if q.is_empty() {
            self.queued.remove(webhook);
        }
        if row.is_some() {
            self.queued_total -= 1;
        }
        row
    }

    /// Whether a webhook other than `me` has rows waiting for a free slot.
    pub fn others_waiting(&self, me: &Uuid, per: usize) -> bool {
        self.queued
            .keys()
            .any(|w| w != me && self.running.get(w).copied().unwrap_or(0) < per)
    }
}

#[cfg(test)]
mod tests {
    use super::{Held, State};
    use crate::model::ClaimedDelivery;
    use time::OffsetDateTime;
    use tokio::time::Instant;
    use uuid::Uuid;

    fn held(webhook: Uuid) -> Held {
        Held {
            row: ClaimedDelivery {
                id: Uuid::now_v7(),
                webhook_id: webhook,
                event_id: Uuid::now_v7(),
                event_type: "JobQueued".into(),
                body: "{}".into(),
                attempts: 0,
                created_at: OffsetDateTime::now_utc(),
                claim_token: Uuid::new_v4(),
                trace: None,
            },
            attempt_by: Instant::now(),
            inserted: None,
        }
    }

    #[test]
    fn parked_rows_queue_after_the_claimed_ones_once_nothing_older_waits() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut st = State::new();
        // At start-up everything waits for the first claim.
        assert!(st.blocked(&a) && st.blocked(&b));
        let (pa, pb) = (held(a), held(b));
        let (pa_id, pb_id) = (pa.row.id, pb.row.id);
        st.park(pa);
        st.park(pb);
        assert_eq!(st.held(&a), 1, "parked rows count against the hold");
        assert_eq!(st.claimable_held(&a), 0, "but not against a claim's room");
        assert_eq!(st.release_parked(), 0, "no claim has looked yet");
        // A claim that left b out comes back short, with an older row of a.
        let epoch = st.start_claim();
        let older = held(a);
        let older_id = older.row.id;
        st.caught_up(epoch, &[b]);
        st.push(older);
        assert_eq!(st.release_parked(), 1);
        let order: Vec<Uuid> = std::iter::from_fn(|| st.pop(&a))
            .map(|h| h.row.id)
            .collect();
        assert_eq!(order, [older_id, pa_id], "the claimed row first");
        assert!(st.blocked(&b), "b was left out: still behind");
        assert_eq!(st.parked_total, 1);
        let epoch = st.start_claim();
        st.caught_up(epoch, &[]);
        assert_eq!(st.release_parked(), 1);
        assert_eq!(st.pop(&b).map(|h| h.row.id), Some(pb_id));
        assert_eq!((st.parked_total, st.queued_total), (0, 0));
    }

    #[test]
    fn a_webhook_stays_behind_while_its_evicted_rows_go_back() {
        let a = Uuid::now_v7();
        let mut st = State::new();
        let epoch = st.start_claim();
        st.caught_up(epoch, &[]);
        st.note_behind(a);
        st.park(held(a));
        st.park(held(a));
        assert_eq!(st.evict_parked(&a).len(), 2);
        assert_eq!((st.parked_total, st.held(&a)), (0, 0));
        // A claim that could not see them yet does not clear the webhook.
        let epoch = st.start_claim();
        st.caught_up(epoch, &[]);
        assert!(st.blocked(&a));
        st.released_back(a, 2);
        assert!(st.releasing.is_empty());
        assert!(st.blocked(&a), "the next claim must look");
        let epoch = st.start_claim();
        st.caught_up(epoch, &[]);
        assert!(!st.blocked(&a));
    }

    #[test]
    fn a_short_claim_clears_only_what_was_noted_before_it_and_not_the_excluded() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let mut st = State::new();
        st.note_behind(a);
        st.note_behind(b);
        let epoch = st.start_claim();
        // Noted while the claim ran: it may not have seen those rows.
        st.note_behind(c);
        st.caught_up(epoch, &[b]);
        assert!(st.unknown.is_none(), "the start-up unknown is cleared");
        assert!(!st.behind.contains_key(&a), "claimed for, came back short");
        assert!(st.behind.contains_key(&b), "left out of the claim");
        assert!(st.behind.contains_key(&c), "noted after the claim looked");
    }

    #[test]
    fn what_was_unknown_stays_behind_for_the_webhooks_a_claim_left_out() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut st = State::new();
        let first = st.start_claim();
        st.caught_up(first, &[]);
        assert!(st.unknown.is_none() && st.behind.is_empty());
        st.note_unknown();
        let epoch = st.start_claim();
        st.caught_up(epoch, &[a]);
        assert!(st.unknown.is_none());
        assert!(st.behind.contains_key(&a));
        assert!(!st.behind.contains_key(&b));
        // Unknown again while a claim runs: that claim does not clear it.
        let epoch = st.start_claim();
        st.note_unknown();
        st.caught_up(epoch, &[]);
        assert!(st.unknown.is_some());
        assert!(st.behind.is_empty(), "a was claimed for this time");
    }
}
