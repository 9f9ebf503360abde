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
        self.behind
            .retain(|w, at| *at > epoch || excluded.contains(w));
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

    /// Rows of `webhook` this worker holds: queued, running or reserved.
    pub fn held(&self, webhook: &Uuid) -> usize {
        self.queued.get(webhook).map_or(0, VecDeque::len)
            + self.running.get(webhook).copied().unwrap_or(0)
            + self.reserved.get(webhook).copied().unwrap_or(0)
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
    use super::State;
    use uuid::Uuid;

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
