//! Rows the sink queues go straight to this process's worker, already
//! claimed, when it has room and nothing older is waiting in the store.
//!
//! A claim is a write transaction that rewrites every row it takes; for a
//! delivery that was queued a moment ago by this very process it is pure
//! overhead. So the sink asks the worker to [`reserve`](WorkerLink::reserve)
//! room for the rows it is about to insert, inserts those rows claimed (in
//! the same transaction as the rest), and hands them over with
//! [`Reservation::adopt`]. Rows without room, or any rows while the store
//! may hold older due ones (so fresh rows do not overtake a backlog), are
//! inserted unclaimed and claimed the usual way. A reservation that is
//! dropped without being adopted (the insert failed) gives its room back.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use time::OffsetDateTime;
use tokio::time::Instant;
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
        let mut taken: HashMap<Uuid, usize> = HashMap::new();
        let mut take = Vec::with_capacity(rows.len());
        {
            let mut st = worker.state();
            // Something older may be due in the store: claim in order.
            if st.backlog {
                return None;
            }
            for row in rows.iter() {
                let fits =
                    st.held(&row.webhook_id) < worker.hold && st.local_total() < worker.capacity;
                if fits {
                    *st.reserved.entry(row.webhook_id).or_default() += 1;
                    st.reserved_total += 1;
                    *taken.entry(row.webhook_id).or_default() += 1;
                }
                take.push(fits);
            }
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

/// Room reserved in the worker for rows being inserted claimed. Dropped
/// without [`adopt`](Self::adopt), it gives the room back.
pub(crate) struct Reservation {
    worker: Arc<Dispatcher>,
    taken: HashMap<Uuid, usize>,
    claim: BatchClaim,
    attempt_by: Instant,
}

impl Reservation {
    /// The claim to insert the first rows with.
    pub(crate) fn claim(&self) -> &BatchClaim {
        &self.claim
    }

    /// Hands the rows, now committed claimed, to the worker: `rows` is the
    /// batch given to [`WorkerLink::reserve`].
    pub(crate) async fn adopt(mut self, rows: &[NewDelivery]) {
        let claimed = &rows[..self.claim.count.min(rows.len())];
        let worker = self.worker.clone();
        if worker.stop.is_cancelled() {
            // Stopped meanwhile: give the rows back to the store.
            let ids: Vec<Uuid> = claimed.iter().map(|r| r.id).collect();
            if let Err(error) = worker.shared.store.release(&ids, self.claim.token).await {
                tracing::warn!(%error, "releasing webhook deliveries failed; they return after the lease");
            }
            return;
        }
        {
            let mut st = worker.state();
            for d in claimed {
                st.unreserve(&d.webhook_id);
                if let Some(n) = self.taken.get_mut(&d.webhook_id) {
                    *n = n.saturating_sub(1);
                }
                st.push(Held {
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
                });
            }
        }
        self.taken.clear();
        worker.dispatch();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.taken.values().all(|n| *n == 0) {
            return;
        }
        let mut st = self.worker.state();
        for (w, n) in self.taken.drain() {
            for _ in 0..n {
                st.unreserve(&w);
            }
        }
    }
}
