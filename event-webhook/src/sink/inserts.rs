//! The sink's inserts: batches of delivery rows on their way into the
//! store, coalesced while the database is busy.
//!
//! The sink hands a batch's rows to this process's worker first (they are
//! sent while they are inserted, `worker::handoff`) and then queues the
//! batch here; [`Inserts::push`] waits only when
//! [`insert_pending`](crate::WebhookConfig::insert_pending) rows are
//! queued or being inserted already. Up to
//! [`ENQUEUE_PIPELINE`] insert tasks run at once; each takes *every*
//! queued batch (up to [`INSERT_MAX_ROWS`] rows) into one statement, so
//! when the database is slow the batches it has not reached yet are
//! written together and the cost per row falls, while the rows' delivery
//! never waits for any of it. Before, the sink itself waited for a free
//! transaction, so a slow commit held up the next batch's hand-over and
//! the rows reached the worker in large bursts (BENCHMARKS.md).
//!
//! Rows inserted claimed carry the worker's claim token: batches handed to
//! the same worker share it, so they can be merged; a merged insert claims
//! the handed rows of every batch with the earliest lease among them.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::model::{BatchClaim, NewDelivery};
use crate::service::Shared;
use crate::worker::{InsertDone, Reservation};

/// Insert transactions in flight at once. With one, every batch would wait
/// for the previous batch's commit (a round trip and, on PostgreSQL, a WAL
/// flush); a few in flight share the flushes (group commit).
pub(crate) const ENQUEUE_PIPELINE: usize = 4;

/// Most rows one insert takes.
pub(crate) const INSERT_MAX_ROWS: usize = 4096;

/// Back-off between insert attempts when the database is briefly away
/// (about 18 s in all, within the runner's 30-second delivery timeout;
/// meanwhile new events wait in the intake).
const ENQUEUE_BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

/// One batch of rows from the sink, waiting for its insert.
pub(crate) struct PendingBatch {
    /// The handed-over rows first (`claim.count` of them), then the rest.
    pub rows: Vec<NewDelivery>,
    pub claim: Option<BatchClaim>,
    /// Tells the worker whether the insert committed.
    pub done: InsertDone,
    /// The reservation of a worker that stopped before the hand-over: its
    /// rows are released once committed.
    pub stopped: Option<Reservation>,
    /// The newest event sequence of the batch (for the log cursor).
    pub newest: u64,
    /// When the batch's oldest event occurred (for the timing log).
    pub oldest: Option<OffsetDateTime>,
}

impl PendingBatch {
    fn claimed(&self) -> usize {
        self.claim.map_or(0, |c| c.count.min(self.rows.len()))
    }
}

/// A queued batch and its place in arrival order.
struct Queued {
    batch: PendingBatch,
    ticket: u64,
}

#[derive(Default)]
struct Pending {
    batches: VecDeque<Queued>,
    /// Rows queued or being inserted.
    rows: usize,
    order: InOrder,
}

/// The insert queue; see the module docs.
pub(crate) struct Inserts {
    pending: Mutex<Pending>,
    room: Notify,
    slots: Arc<Semaphore>,
}

impl Inserts {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Inserts {
            pending: Mutex::default(),
            room: Notify::new(),
            slots: Arc::new(Semaphore::new(ENQUEUE_PIPELINE)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `batch` (waiting while `insert_pending` rows are queued)
    /// and starts an insert task if one may run; `false` once shut down.
    pub(crate) async fn push(self: &Arc<Self>, shared: &Arc<Shared>, batch: PendingBatch) -> bool {
        loop {
            if self.slots.is_closed() {
                return false;
            }
            {
                let mut p = self.lock();
                if p.rows < shared.config.insert_pending || p.batches.is_empty() {
                    let ticket = p.order.start(batch.newest);
                    p.rows += batch.rows.len();
                    shared
                        .counters
                        .insert_pending
                        .fetch_add(batch.rows.len() as u64, Ordering::Relaxed);
                    shared
                        .counters
                        .insert_batches
                        .fetch_add(1, Ordering::Relaxed);
                    p.batches.push_back(Queued { batch, ticket });
                    // Under the lock: an insert task that found the queue
                    // empty has given its permit back before we look.
                    if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                        tokio::spawn(run(self.clone(), shared.clone(), permit));
                    }
                    return true;
                }
            }
            self.room.notified().await;
        }
    }

    /// Waits for every queued batch to be inserted, then refuses more.
    pub(crate) async fn shutdown(&self) {
        let all = u32::try_from(ENQUEUE_PIPELINE).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
        self.slots.close();
    }

    /// Takes the batches one insert writes: every queued one up to
    /// [`INSERT_MAX_ROWS`] rows (at least one), all claimed with one token.
    /// Empty when nothing is queued; then `permit` is given back, under
    /// the lock.
    fn take(&self, permit: &mut Option<OwnedSemaphorePermit>) -> Vec<Queued> {
        let mut p = self.lock();
        let mut taken: Vec<Queued> = Vec::new();
        let mut rows = 0;
        let mut token: Option<Uuid> = None;
        while let Some(next) = p.batches.front() {
            let n = next.batch.rows.len();
            let its = next.batch.claim.filter(|c| c.count > 0).map(|c| c.token);
            let fits = taken.is_empty()
                || (rows + n <= INSERT_MAX_ROWS
                    && (its.is_none() || token.is_none() || its == token));
            if !fits {
                break;
            }
            token = token.or(its);
            rows += n;
            if let Some(q) = p.batches.pop_front() {
                taken.push(q);
            }
        }
        if taken.is_empty() {
            drop(permit.take());
        }
        taken
    }

    /// Notes that the batches `tickets` (of `rows` rows) are done; returns
    /// the newest sequence through which every batch is, if that moved.
    fn finished(&self, tickets: &[u64], rows: usize) -> Option<u64> {
        let mut p = self.lock();
        p.rows -= rows;
        let mut through = None;
        for t in tickets {
            if let Some(seq) = p.order.done(*t) {
                through = Some(through.map_or(seq, |s: u64| s.max(seq)));
            }
        }
        through
    }
}

/// An insert task: writes what is queued until nothing is, and moves the
/// event-log cursor past what is written.
async fn run(inserts: Arc<Inserts>, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    loop {
        let taken = inserts.take(&mut permit);
        if taken.is_empty() {
            return;
        }
        let tickets: Vec<u64> = taken.iter().map(|q| q.ticket).collect();
        let rows = taken.iter().map(|q| q.batch.rows.len()).sum();
        if !insert(&shared, taken.into_iter().map(|q| q.batch).collect()).await {
            // The cursor stays where a restart must catch these up from
            // the log.
            shared.log_cursor.frozen.store(true, Ordering::Relaxed);
        }
        let through = inserts.finished(&tickets, rows);
        inserts.room.notify_one();
        if let Some(seq) = through {
            shared.log_cursor.queued(shared.store.as_ref(), seq).await;
        }
    }
}

/// Writes `batches` in one statement (retrying while the database is
/// briefly away), tells the worker how that went and gives rows of a
/// stopped worker back; whether they were queued.
async fn insert(shared: &Shared, batches: Vec<PendingBatch>) -> bool {
    let total: usize = batches.iter().map(|b| b.rows.len()).sum();
    let oldest = batches.iter().filter_map(|b| b.oldest).min();
    // The handed-over rows of every batch first, then the rest.
    let mut rows = Vec::with_capacity(total);
    let mut rest = Vec::new();
    let mut claim: Option<BatchClaim> = None;
    let mut after = Vec::with_capacity(batches.len());
    for mut b in batches {
        let claimed = b.claimed();
        if let Some(c) = b.claim.filter(|_| claimed > 0) {
            let merged = claim.get_or_insert(BatchClaim { count: 0, ..c });
            merged.count += claimed;
            merged.lease_until = merged.lease_until.min(c.lease_until);
        }
        let unclaimed = b.rows.split_off(claimed);
        let released: Vec<Uuid> = if b.stopped.is_some() {
            b.rows.iter().map(|r| r.id).collect()
        } else {
            Vec::new()
        };
        rows.append(&mut b.rows);
        rest.extend(unclaimed);
        after.push((b.done, b.stopped, released));
    }
    let claimed = rows.len();
    rows.extend(rest);
    let ok = rows.is_empty() || write(shared, &rows, claim.as_ref()).await;
    shared
        .counters
        .insert_pending
        .fetch_sub(rows.len() as u64, Ordering::Relaxed);
    if ok {
        tracing::debug!(
            target: "matric::webhooks::timing",
            rows = rows.len(),
            claimed,
            batches = after.len(),
            waited_us = oldest.map_or(0, |t| (OffsetDateTime::now_utc() - t).whole_microseconds().max(0) as u64),
            "webhook enqueue"
        );
    }
    for (done, stopped, released) in after {
        done.finish(ok);
        if let Some(reservation) = stopped.filter(|_| ok) {
            reservation.release_after_insert(&released).await;
        }
    }
    if ok && claimed < rows.len() {
        let unclaimed = &rows[claimed..];
        shared
            .counters
            .queued_unclaimed
            .fetch_add(unclaimed.len() as u64, Ordering::Relaxed);
        // Noted again now they are committed: a claim that ran between the
        // reservation and the commit did not see them.
        shared
            .worker
            .note_behind(unclaimed.iter().map(|r| r.webhook_id));
        shared.wake.notify_one();
    }
    ok
}

/// One insert, retried along [`ENQUEUE_BACKOFF`]; whether it committed.
async fn write(shared: &Shared, rows: &[NewDelivery], claim: Option<&BatchClaim>) -> bool {
    let mut tries = ENQUEUE_BACKOFF.iter();
    loop {
        shared.counters.inserts.fetch_add(1, Ordering::Relaxed);
        match shared.store.enqueue_claiming(rows, claim).await {
            Ok(()) => return true,
            Err(error) => match tries.next() {
                Some(pause) => {
                    tracing::warn!(%error, rows = rows.len(), "webhook enqueue failed; retrying");
                    tokio::time::sleep(*pause).await;
                }
                None => {
                    tracing::error!(%error, rows = rows.len(), "could not queue webhook deliveries; a restart catches them up from the event log, if any");
                    return false;
                }
            },
        }
    }
}

/// Batches whose insert has started, oldest first: the newest event
/// sequence of each and whether it is queued.
#[derive(Default)]
struct InOrder {
    /// The ticket of the front entry.
    first: u64,
    batches: VecDeque<(u64, bool)>,
}

impl InOrder {
    /// Notes a batch whose newest event is `seq`; returns its ticket.
    fn start(&mut self, seq: u64) -> u64 {
        self.batches.push_back((seq, false));
        self.first + self.batches.len() as u64 - 1
    }

    /// Notes that batch `ticket` is queued; returns the newest sequence
    /// through which every batch is, when that moved.
    fn done(&mut self, ticket: u64) -> Option<u64> {
        let i = usize::try_from(ticket.checked_sub(self.first)?).ok()?;
        if let Some(entry) = self.batches.get_mut(i) {
            entry.1 = true;
        }
        let mut through = None;
        while let Some(&(seq, true)) = self.batches.front() {
            self.batches.pop_front();
            self.first += 1;
            through = Some(through.map_or(seq, |t: u64| t.max(seq)));
        }
        through
    }
}

#[cfg(test)]
mod tests {
    use super::InOrder;

    #[test]
    fn the_cursor_passes_a_batch_only_when_every_earlier_one_is_queued() {
        let mut order = InOrder::default();
        let a = order.start(10);
        let b = order.start(20);
        let c = order.start(30);
        // The later ones finish first: nothing moves.
        assert_eq!(order.done(c), None);
        assert_eq!(order.done(b), None);
        // The first one finishes: through the last, at once.
        assert_eq!(order.done(a), Some(30));
        let d = order.start(40);
        let e = order.start(50);
        assert_eq!(order.done(d), Some(40));
        assert_eq!(order.done(e), Some(50));
        // A ticket seen already changes nothing.
        assert_eq!(order.done(a), None);
    }
}
