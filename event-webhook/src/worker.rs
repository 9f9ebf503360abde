//! [`DeliveryWorker`]: claims due deliveries and sends them.
//!
//! # Model
//!
//! A dispatcher loop claims due rows in batches (skipping webhooks that
//! already hold enough) into per-webhook local queues, and starts attempt
//! tasks within two limits: `max_concurrency` in total and
//! `per_endpoint_concurrency` per webhook. An attempt task that finishes
//! takes the next row of its webhook's queue unless another webhook is
//! waiting for a slot, so a busy endpoint needs no database round trip per
//! delivery and cannot starve the others. Attempt results go to one
//! recorder task that writes whatever has accumulated (up to 1,024) in a
//! single transaction of a few set-based statements, so the database cost
//! per delivery is a fraction of one round trip and one commit is shared by
//! hundreds of outcomes. Until its result commits a row stays claimed; if
//! the process dies first, the row is sent again (at-least-once).
//!
//! Local queues are bounded so every claimed row is attempted well within
//! its lease; rows still queued at shutdown are released at once. A slow
//! endpoint occupies only its own slots. At start-up, claims left by a dead
//! process are freed; succeeded rows older than `retention` are pruned
//! periodically.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::deliver::{Exchange, decide, send};
use crate::model::{AttemptOutcome, AttemptRecord, ClaimRequest, ClaimedDelivery, Webhook};
use crate::service::Shared;
use crate::ssrf::host_of;

/// Most attempt results written in one transaction. The stores write a
/// batch with a fixed number of set-based statements, so a large batch
/// costs little more than a small one: under load the recorder keeps up by
/// writing more per transaction, not by adding round trips.
const RECORD_BATCH: usize = 1024;

/// A running delivery worker.
#[derive(Debug)]
pub struct DeliveryWorker {
    stop: CancellationToken,
    task: JoinHandle<()>,
    tracker: TaskTracker,
}

impl DeliveryWorker {
    pub(crate) fn start(shared: Arc<Shared>, shutdown: CancellationToken) -> Self {
        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        let (record_tx, record_rx) = mpsc::channel(RECORD_BATCH * 4);
        tracker.spawn(record_loop(shared.clone(), record_rx));
        let cfg = shared.config.clone();
        let per = cfg.per_endpoint_concurrency.max(1);
        // How many rows one webhook may hold locally: enough to keep its
        // slots busy between claims, few enough that the last one is
        // attempted long before its lease ends (each round takes at most
        // `request_timeout`).
        let rounds = (cfg.lease.as_secs_f64()
            / (2.0 * cfg.request_timeout.as_secs_f64().max(0.001)))
        .floor()
        .clamp(1.0, 4.0) as usize;
        let dispatcher = Arc::new(Dispatcher {
            shared,
            stop: stop.clone(),
            tracker: tracker.clone(),
            slots: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
            state: Mutex::default(),
            slot_freed: Notify::new(),
            per,
            hold: per * rounds,
            // Claim ahead (a claim is a commit, so each should bring many
            // rows), but no more than the slots get through in `rounds`
            // rounds, so rows waiting for a global slot are attempted within
            // their lease too.
            capacity: cfg.max_concurrency.max(1) * rounds.max(2),
            records: record_tx,
        });
        let task = tokio::spawn(dispatcher.run());
        DeliveryWorker {
            stop,
            task,
            tracker,
        }
    }

    /// Stops claiming, lets attempts in flight finish until `deadline`, and
    /// returns whether all did. Unfinished attempts are retried later (their
    /// claims expire), so nothing is lost either way.
    pub async fn shutdown(self, deadline: Duration) -> bool {
        self.stop.cancel();
        let until = Instant::now() + deadline;
        let _ = tokio::time::timeout_at(until, self.task).await;
        self.tracker.close();
        tokio::time::timeout_at(until, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Whether the worker loop has ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

#[derive(Default)]
struct State {
    queued: HashMap<Uuid, VecDeque<ClaimedDelivery>>,
    running: HashMap<Uuid, usize>,
    queued_total: usize,
}

impl State {
    fn held(&self, webhook: &Uuid) -> usize {
        self.queued.get(webhook).map_or(0, VecDeque::len)
            + self.running.get(webhook).copied().unwrap_or(0)
    }

    fn pop(&mut self, webhook: &Uuid) -> Option<ClaimedDelivery> {
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
    fn others_waiting(&self, me: &Uuid, per: usize) -> bool {
        self.queued
            .keys()
            .any(|w| w != me && self.running.get(w).copied().unwrap_or(0) < per)
    }
}

struct Dispatcher {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    slot_freed: Notify,
    per: usize,
    hold: usize,
    capacity: usize,
    records: mpsc::Sender<AttemptRecord>,
}

impl Dispatcher {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>) {
        let cfg = &self.shared.config;
        match self
            .shared
            .store
            .recover_in_flight(OffsetDateTime::now_utc())
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "recovered deliveries left in flight"),
            Err(error) => tracing::warn!(%error, "recovering in-flight deliveries failed"),
        }
        self.shared.refresh_index().await;
        let mut next_prune = Instant::now();
        let mut next_refresh = Instant::now() + cfg.index_refresh_interval;
        let mut next_gauge = Instant::now();
        while !self.stop.is_cancelled() {
            let now = Instant::now();
            if now >= next_prune {
                next_prune = now + cfg.prune_interval;
                self.prune().await;
            }
            if now >= next_refresh {
                next_refresh = now + cfg.index_refresh_interval;
                self.shared.refresh_index().await;
            }
            if now >= next_gauge {
                next_gauge = now + Duration::from_secs(5);
                if let Ok(depth) = self.shared.store.queue_depth().await {
                    self.shared.metrics.queue_depth(depth);
                }
            }
            let claimed = self.claim().await;
            self.dispatch();
            if claimed > 0 {
                continue;
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.shared.wake.notified() => {}
                () = self.slot_freed.notified() => {}
                () = tokio::time::sleep(cfg.poll_interval) => {}
            }
        }
        self.release_queued().await;
    }

    async fn prune(&self) {
        let retention = time::Duration::try_from(self.shared.config.retention)
            .unwrap_or(time::Duration::days(7));
        match self
            .shared
            .store
            .prune_succeeded(OffsetDateTime::now_utc() - retention)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(rows = n, "pruned succeeded webhook deliveries"),
            Err(error) => tracing::warn!(%error, "pruning webhook deliveries failed"),
        }
    }

    /// Claims due rows into the local queues; returns how many were kept.
    async fn claim(&self) -> usize {
        let cfg = &self.shared.config;
        let capacity = self.capacity;
        let (room, exclude) = {
            let st = self.state();
            let room = capacity.saturating_sub(st.queued_total);
            let mut ids: Vec<Uuid> = st.queued.keys().chain(st.running.keys()).copied().collect();
            ids.sort_unstable();
            ids.dedup();
            let exclude: Vec<Uuid> = ids
                .into_iter()
                .filter(|w| st.held(w) >= self.hold)
                .collect();
            (room, exclude)
        };
        if room == 0 {
            return 0;
        }
        let now = OffsetDateTime::now_utc();
        let lease = time::Duration::try_from(cfg.lease).unwrap_or(time::Duration::minutes(5));
        let request = ClaimRequest {
            now,
            limit: u32::try_from(room).unwrap_or(u32::MAX).min(cfg.claim_batch),
            per_webhook: u32::try_from(self.hold).unwrap_or(u32::MAX),
            exclude,
            lease_until: now + lease,
            token: Uuid::new_v4(),
        };
        let rows = match self.shared.store.claim_due(&request).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "claiming webhook deliveries failed");
                return 0;
            }
        };
        let mut kept = 0;
        let mut give_back = Vec::new();
        {
            let mut st = self.state();
            for row in rows {
                if st.held(&row.webhook_id) >= self.hold {
                    give_back.push(row.id);
                } else {
                    st.queued_total += 1;
                    st.queued.entry(row.webhook_id).or_default().push_back(row);
                    kept += 1;
                }
            }
        }
        if !give_back.is_empty()
            && let Err(error) = self.shared.store.release(&give_back, request.token).await
        {
            tracing::warn!(%error, "releasing webhook deliveries failed; they return after the lease");
        }
        kept
    }

    /// Starts attempts for queued rows while slots are free.
    fn dispatch(self: &Arc<Self>) {
        let mut st = self.state();
        let webhooks: Vec<Uuid> = st.queued.keys().copied().collect();
        for w in webhooks {
            while st.running.get(&w).copied().unwrap_or(0) < self.per {
                let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                    return;
                };
                let Some(row) = st.pop(&w) else {
                    break;
                };
                *st.running.entry(w).or_insert(0) += 1;
                self.tracker.spawn(self.clone().attempts(row, permit));
            }
        }
    }

    /// Runs attempts for one webhook: `row`, then its queued successors
    /// while no other webhook waits for a slot.
    async fn attempts(self: Arc<Self>, mut row: ClaimedDelivery, _permit: OwnedSemaphorePermit) {
        let webhook_id = row.webhook_id;
        loop {
            self.attempt(&row).await;
            let mut st = self.state();
            let next = if self.stop.is_cancelled()
                || (self.slots.available_permits() == 0 && st.others_waiting(&webhook_id, self.per))
            {
                None
            } else {
                st.pop(&webhook_id)
            };
            // Running low: let the dispatcher claim more for this webhook.
            let low = st.queued.get(&webhook_id).map_or(0, VecDeque::len) < self.per;
            match next {
                Some(n) => {
                    row = n;
                    drop(st);
                    if low {
                        self.slot_freed.notify_one();
                    }
                }
                None => {
                    if let Some(c) = st.running.get_mut(&webhook_id) {
                        *c = c.saturating_sub(1);
                        if *c == 0 {
                            st.running.remove(&webhook_id);
                        }
                    }
                    drop(st);
                    self.slot_freed.notify_one();
                    return;
                }
            }
        }
    }

    async fn release_queued(&self) {
        let rows: Vec<ClaimedDelivery> = {
            let mut st = self.state();
            st.queued_total = 0;
            st.queued.drain().flat_map(|(_, q)| q).collect()
        };
        let mut by_token: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for r in rows {
            by_token.entry(r.claim_token).or_default().push(r.id);
        }
        for (token, ids) in by_token {
            if let Err(error) = self.shared.store.release(&ids, token).await {
                tracing::warn!(%error, "releasing queued deliveries at shutdown failed");
            }
        }
    }

    async fn webhook(&self, id: Uuid) -> Option<Arc<Webhook>> {
        if let Some(w) = self.shared.index.get(id) {
            return Some(w);
        }
        // Created through another instance since the last reload.
        match self.shared.store.get_webhook(id).await {
            Ok(w) => w.map(Arc::new),
            Err(error) => {
                tracing::warn!(%error, "loading webhook failed");
                None
            }
        }
    }

    async fn attempt(&self, row: &ClaimedDelivery) {
        let shared = &self.shared;
        let Some(webhook) = self.webhook(row.webhook_id).await else {
            // Deleted meanwhile (its rows go with it) or unreadable: the
            // claim expires and the row, if any, comes back.
            return;
        };
        if !webhook.active {
            // Disabled since the claim (410, too many dead deliveries, the
            // API): hand the row back untouched.
            if let Err(error) = shared.store.release(&[row.id], row.claim_token).await {
                tracing::warn!(%error, "releasing a delivery of a disabled webhook failed");
            }
            return;
        }
        let attempt = row.attempts + 1;
        let exchange = send(
            shared,
            &webhook,
            row.id,
            row.event_id,
            &row.event_type,
            row.body.clone(),
        )
        .await;
        let outcome = decide(&shared.config, &exchange, attempt, webhook.max_retries);
        observe(shared, &webhook, row, &exchange, outcome, attempt);
        let record = AttemptRecord {
            delivery_id: row.id,
            webhook_id: row.webhook_id,
            claim_token: row.claim_token,
            attempt,
            started_at: exchange.started_at,
            duration_ms: exchange.duration.as_millis() as u64,
            status_code: exchange.status,
            error: exchange.error.clone(),
            outcome,
            disable_after_dead: shared.config.disable_after_dead,
        };
        // Recorded in the background: the next attempt need not wait for
        // this one's transaction. Until it commits the claim protects the
        // row; if the process dies first, the row is sent again.
        let _ = self.records.send(record).await;
    }
}

/// Writes attempt results in batches: whatever arrived while the previous
/// transaction ran goes into the next one.
async fn record_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<AttemptRecord>) {
    let mut batch: Vec<AttemptRecord> = Vec::with_capacity(RECORD_BATCH);
    while rx.recv_many(&mut batch, RECORD_BATCH).await > 0 {
        let mut tries = 0u64;
        let effects = loop {
            match shared.store.complete_attempts(&batch).await {
                Ok(effects) => break effects,
                Err(error) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(%error, "recording webhook attempts failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(error) => {
                    // The claims expire and the deliveries are sent again:
                    // at-least-once.
                    tracing::error!(%error, attempts = batch.len(), "recording webhook attempts failed");
                    break Vec::new();
                }
            }
        };
        let mut disabled = false;
        for (record, effect) in batch.iter().zip(&effects) {
            if effect.lost_claim {
                tracing::warn!(delivery_id = %record.delivery_id, "webhook claim expired before the attempt was recorded");
            }
            if effect.webhook_disabled {
                tracing::warn!(webhook_id = %record.webhook_id, "webhook disabled");
                disabled = true;
            }
        }
        if disabled {
            shared.refresh_index().await;
        }
        batch.clear();
    }
}

fn observe(
    shared: &Shared,
    webhook: &Webhook,
    row: &ClaimedDelivery,
    exchange: &Exchange,
    outcome: AttemptOutcome,
    attempt: u32,
) {
    let metrics = &shared.metrics;
    match outcome {
        AttemptOutcome::Succeeded => {
            metrics.attempt("success");
            let queued_ms = (OffsetDateTime::now_utc() - row.created_at).as_seconds_f64() * 1000.0;
            metrics.latency_ms(queued_ms.max(0.0));
        }
        AttemptOutcome::Retry(_) => {
            metrics.attempt("retry");
            tracing::debug!(
                delivery_id = %row.id,
                host = %host_of(&webhook.url),
                attempt,
                error = exchange.error.as_deref().unwrap_or(""),
                "webhook attempt failed; will retry"
            );
        }
        AttemptOutcome::Dead | AttemptOutcome::Gone | AttemptOutcome::FailedOnce => {
            metrics.attempt("failed");
            tracing::warn!(
                delivery_id = %row.id,
                webhook_id = %webhook.id,
                host = %host_of(&webhook.url),
                attempt,
                error = exchange.error.as_deref().unwrap_or(""),
                "webhook delivery dead"
            );
        }
    }
}
