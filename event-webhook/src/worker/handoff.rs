//! Rows the sink queues go straight to this process's worker, already
//! claimed, when it has room and nothing older of their webhook is waiting
//! in the store.
//!
//! A claim is a write transaction that rewrites every row it takes; for a
//! delivery that was queued a moment ago by this very process it is pure
//! overhead, and worse, the rows wait for it after their commit. So the
//! sink asks the worker to [`reserve`](WorkerLink::reserve) room for the
//! rows it is about to insert, and hands them over with
//! [`Reservation::hand_over`] *before* inserting them, claimed, in the same
//! transaction as the rest. The room is
//! [`handoff_hold`](crate::WebhookConfig::handoff_hold) rows per webhook
//! (queued, running or being inserted), larger than what a claim may bring
//! (16 rounds of the webhook's slots), so whole batches go over even while
//! earlier ones are still being inserted or sent.
//!
//! # Sent while the insert commits
//!
//! A handed-over row is sent at once; its insert commits meanwhile. The
//! commit (a WAL flush on PostgreSQL, shared with every other writer of the
//! database, the event log among them) is then not part of the delivery's
//! latency. What the worker writes *about* such a row (the attempt's
//! outcome, a release) waits for [`Inserted::committed`]: written before the
//! insert committed, it would find no row, and the row would then sit
//! claimed until its lease ran out and be sent again. If the insert never
//! commits (the database stayed away through every retry), nothing is
//! written about the row: the sink leaves the event log cursor before the
//! batch, so a restart derives the deliveries again (at least once, with the
//! same `webhook-id`).
//!
//! Rows without room are inserted unclaimed and claimed the usual way. Fresh
//! rows never overtake older rows of their webhook waiting in the store:
//! while a webhook has such rows (it is *behind*: rows of it were inserted
//! unclaimed, or handed back), and while the store may hold due rows of
//! webhooks this worker cannot name (at start-up, a retry coming due, a
//! redelivery), its fresh rows are still handed over, claimed in their
//! insert, but *parked*: they wait in the worker until a claim has taken the
//! older rows, and queue after them. Inserting them unclaimed instead (as
//! before) kept a webhook behind for as long as fresh rows kept coming under
//! load: every claim found the rows committed while it ran, so it never came
//! back short, and every delivery went through the claim path (on
//! PostgreSQL at 5,000/s, 100–250 ms instead of ~1 ms). Parked rows count
//! against the hold, not against what a claim may bring. A reservation that
//! is dropped without being handed over gives its room back.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock, Weak};

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Dispatcher;
use super::state::Held;
use crate::model::{BatchClaim, ClaimedDelivery, NewDelivery};

/// The sink's link to the worker running in this process, if any.
#[derive(Default)]
pub(crate) struct WorkerLink(RwLock<Option<Weak<Dispatcher>>>);

impl std::fmt::Debug for WorkerLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerLink")
    }
}

impl WorkerLink {
    pub(super) fn attach(&self, dispatcher: &Arc<Dispatcher>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::downgrade(dispatcher));
    }

    pub(super) fn detach(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Notes that rows of these webhooks were committed unclaimed: their
    /// later rows are not handed over until a claim has taken these.
    pub(crate) fn note_behind(&self, webhooks: impl IntoIterator<Item = Uuid>) {
        if let Some(worker) = self.get() {
            let mut st = worker.state();
            for w in webhooks {
                st.note_behind(w);
            }
        }
    }

    /// Notes that due rows of webhooks not named here may be waiting in the
    /// store (queued again through the API, or caught up from the log):
    /// nothing is handed over until a claim has looked.
    pub(crate) fn note_unknown(&self) {
        if let Some(worker) = self.get() {
            worker.state().note_unknown();
        }
    }

    fn get(&self) -> Option<Arc<Dispatcher>> {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .and_then(Weak::upgrade)
    }

    /// Reserves room for as many of `rows` as the worker can take now and
    /// moves those to the front of `rows`; `None` when it takes none.
    pub(crate) fn reserve(&self, rows: &mut Vec<NewDelivery>) -> Option<Reservation> {
        let worker = self.get()?;
        if worker.stop.is_cancelled() {
            return None;
        }
        if worker.fresh_hold == 0 {
            return None;
        }
        let mut taken: HashMap<Uuid, Taken> = HashMap::new();
        let mut take = Vec::with_capacity(rows.len());
        let mut evicted = Vec::new();
        {
            let mut st = worker.state();
            // Whether each webhook's rows must wait for a claim, as things
            // stood before this batch (its own overflow below marks the
            // webhook behind, but its rows before the overflow are older).
            let mut blocked: HashMap<Uuid, bool> = HashMap::new();
            let mut overflowed: HashSet<Uuid> = HashSet::new();
            for row in rows.iter() {
                let w = row.webhook_id;
                let park = *blocked.entry(w).or_insert_with(|| st.blocked(&w));
                let fits = !overflowed.contains(&w)
                    && st.held(&w) < worker.fresh_hold
                    && st.local_total() + st.parked_total < worker.fresh_capacity;
                if fits {
                    *st.reserved.entry(w).or_default() += 1;
                    st.reserved_total += 1;
                    let t = taken.entry(w).or_insert(Taken { rows: 0, park });
                    t.rows += 1;
                } else {
                    // This row goes to the store unclaimed: the webhook's
                    // later rows must not overtake it.
                    overflowed.insert(w);
                    st.note_behind(w);
                }
                take.push(fits);
            }
            // A webhook that overflowed with rows parked, or about to be:
            // those are older than the rows now going to the store
            // unclaimed, which a claim may bring before they are released.
            // So they go to the store too, and the claims take all of them
            // in order.
            for w in &overflowed {
                if taken.get(w).is_some_and(|t| t.park) {
                    for (row, t) in rows.iter().zip(take.iter_mut()) {
                        if *t && row.webhook_id == *w {
                            *t = false;
                            st.unreserve(w);
                        }
                    }
                    taken.remove(w);
                }
                evicted.extend(st.evict_parked(w));
            }
        }
        if !evicted.is_empty() {
            give_back_parked(&worker, evicted);
        }
        let count = take.iter().filter(|t| **t).count();
        if count == 0 {
            return None;
        }
        // The taken rows first, each group in its original order.
        let mut first = Vec::with_capacity(rows.len());
        let mut rest = Vec::new();
        for (row, taken) in rows.drain(..).zip(take) {
            if taken {
                first.push(row);
            } else {
                rest.push(row);
            }
        }
        first.extend(rest);
        *rows = first;
        let now = OffsetDateTime::now_utc();
        let lease = time::Duration::try_from(worker.shared.config.lease)
            .unwrap_or(time::Duration::minutes(5));
        Some(Reservation {
            attempt_by: Instant::now() + worker.window,
            claim: BatchClaim {
                count,
                token: Uuid::new_v4(),
                lease_until: now + lease,
            },
            taken,
            worker,
        })
    }
}

/// Gives parked rows back to the store, unclaimed (once their insert has
/// committed), so that claims take them in order with the rows of their
/// webhook that went there after them. Their webhook stays behind until
/// this is done (`State::releasing`).
fn give_back_parked(worker: &Arc<Dispatcher>, rows: Vec<Held>) {
    tracing::debug!(
        rows = rows.len(),
        "webhook hold overflowed with rows parked; they wait for a claim instead"
    );
    let worker = worker.clone();
    worker.tracker.clone().spawn(async move {
        let mut webhooks: HashMap<Uuid, usize> = HashMap::new();
        for held in &rows {
            *webhooks.entry(held.row.webhook_id).or_default() += 1;
        }
        worker.release_rows(&rows, "hold overflow").await;
        {
            let mut st = worker.state();
            for (w, n) in webhooks {
                st.released_back(w, n);
            }
        }
        worker.shared.wake.notify_one();
    });
}

/// A webhook's rows in a reservation.
struct Taken {
    /// Rows reserved and not handed over yet.
    rows: usize,
    /// Whether they wait for a claim (parked) at the hand-over, if they
    /// still must then.
    park: bool,
}

/// Room reserved in the worker for rows being inserted claimed. Dropped
/// without [`hand_over`](Self::hand_over), it gives the room back.
pub(crate) struct Reservation {
    worker: Arc<Dispatcher>,
    taken: HashMap<Uuid, Taken>,
    claim: BatchClaim,
    attempt_by: Instant,
}

impl Reservation {
    /// The claim to insert the first rows with.
    pub(crate) fn claim(&self) -> &BatchClaim {
        &self.claim
    }

    /// Cancelled once the worker's start-up recovery has run: the insert
    /// of the claimed rows must wait for it. On SQLite the recovery frees
    /// every claim it finds (they belong to a process that is gone), so a
    /// handed-over row committed before it would lose its claim, and the
    /// first claim would take it a second time, out of the handoff's order.
    pub(crate) fn recovered(&self) -> CancellationToken {
        self.worker.recovered.clone()
    }

    /// Hands the reserved rows (the first ones of `rows`, the batch given
    /// to [`WorkerLink::reserve`]) to the worker before their insert
    /// commits; `inserted` tells the worker when it has. A worker that has
    /// stopped meanwhile takes nothing: the reservation comes back, to
    /// [`release_after_insert`](Self::release_after_insert).
    pub(crate) fn hand_over(
        mut self,
        rows: &[NewDelivery],
        inserted: &Inserted,
    ) -> Result<(), Reservation> {
        let claimed = &rows[..self.claim.count.min(rows.len())];
        let worker = self.worker.clone();
        if worker.stop.is_cancelled() {
            return Err(self);
        }
        let mut parked = 0;
        {
            let mut st = worker.state();
            for d in claimed {
                st.unreserve(&d.webhook_id);
                let park = match self.taken.get_mut(&d.webhook_id) {
                    Some(t) => {
                        t.rows = t.rows.saturating_sub(1);
                        t.park
                    }
                    None => false,
                };
                let held = Held {
                    row: ClaimedDelivery {
                        id: d.id,
                        webhook_id: d.webhook_id,
                        event_id: d.event_id,
                        event_type: d.event_type.to_owned(),
                        body: String::from_utf8_lossy(&d.body).into_owned(),
                        attempts: 0,
                        created_at: d.created_at,
                        claim_token: self.claim.token,
                        trace: d.trace.clone(),
                    },
                    attempt_by: self.attempt_by,
                    inserted: Some(inserted.clone()),
                };
                // A claim may have caught up since the reservation: then
                // nothing older waits in the store any more.
                if park && st.blocked(&d.webhook_id) {
                    st.park(held);
                    parked += 1;
                } else {
                    st.push(held);
                }
            }
        }
        self.taken.clear();
        let counters = &worker.shared.counters;
        counters
            .handed_off
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        counters.parked.fetch_add(parked, Ordering::Relaxed);
        worker.dispatch();
        Ok(())
    }

    /// For a worker that stopped before the hand-over: gives the rows,
    /// now committed claimed, back to the store.
    pub(crate) async fn release_after_insert(self, rows: &[NewDelivery]) {
        let ids: Vec<Uuid> = rows[..self.claim.count.min(rows.len())]
            .iter()
            .map(|r| r.id)
            .collect();
        if let Err(error) = self
            .worker
            .shared
            .store
            .release(&ids, self.claim.token)
            .await
        {
            tracing::warn!(%error, "releasing webhook deliveries failed; they return after the lease");
        }
    }
}

/// Tells the worker whether the insert of rows handed over before their
/// commit committed (see the module docs). Cheap to clone: one per row.
#[derive(Clone, Debug)]
pub(crate) struct Inserted(watch::Receiver<Option<bool>>);

/// The sink's end of an [`Inserted`]: dropped unfinished, the insert
/// counts as failed.
#[derive(Debug)]
pub(crate) struct InsertDone(watch::Sender<Option<bool>>);

impl Inserted {
    pub(crate) fn channel() -> (InsertDone, Inserted) {
        let (tx, rx) = watch::channel(None);
        (InsertDone(tx), Inserted(rx))
    }

    /// Waits for the insert; whether it committed.
    pub(crate) async fn committed(&self) -> bool {
        let mut rx = self.0.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(done) => done.unwrap_or(false),
            Err(_) => false,
        }
    }
}

impl InsertDone {
    pub(crate) fn finish(self, committed: bool) {
        self.0.send_replace(Some(committed));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.taken.values().all(|t| t.rows == 0) {
            return;
        }
        let mut st = self.worker.state();
        for (w, Taken { rows: n, .. }) in self.taken.drain() {
            for _ in 0..n {
                st.unreserve(&w);
            }
        }
    }
}
