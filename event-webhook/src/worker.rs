//! [`DeliveryWorker`]: claims due deliveries and sends them.
//!
//! # Model
//!
//! One loop claims due rows (at most the free global slots, at most
//! `per_endpoint_concurrency` per webhook, skipping webhooks already at
//! their limit) and spawns one task per attempt. Each task sends, decides
//! (success, retry with back-off, dead, gone) and records the result in one
//! transaction. The loop sleeps until new rows are queued by this process,
//! a slot frees up, or `poll_interval` passes (rows queued by other
//! instances, retries coming due).
//!
//! A slow endpoint occupies at most its own per-endpoint slots, so the
//! others keep flowing. At start-up, claims left by a dead process are
//! freed; succeeded rows older than `retention` are pruned periodically.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::deliver::{Exchange, decide, send};
use crate::model::{AttemptOutcome, AttemptRecord, ClaimRequest, ClaimedDelivery, Webhook};
use crate::service::Shared;
use crate::ssrf::host_of;

/// A running delivery worker.
#[derive(Debug)]
pub struct DeliveryWorker {
    stop: CancellationToken,
    task: JoinHandle<()>,
    tracker: TaskTracker,
}

/// Per-webhook in-flight counts.
type InFlight = Arc<Mutex<HashMap<Uuid, usize>>>;

fn lock(m: &Mutex<HashMap<Uuid, usize>>) -> std::sync::MutexGuard<'_, HashMap<Uuid, usize>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Loop {
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    in_flight: InFlight,
    slot_freed: Arc<Notify>,
}

impl DeliveryWorker {
    pub(crate) fn start(shared: Arc<Shared>, shutdown: CancellationToken) -> Self {
        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        let lp = Loop {
            slots: Arc::new(Semaphore::new(shared.config.max_concurrency.max(1))),
            shared,
            stop: stop.clone(),
            tracker: tracker.clone(),
            in_flight: Arc::default(),
            slot_freed: Arc::new(Notify::new()),
        };
        let task = tokio::spawn(lp.run());
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

impl Loop {
    async fn run(self) {
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
            let claimed = self.claim_and_spawn().await;
            if claimed > 0 && self.slots.available_permits() > 0 {
                continue;
            }
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = self.shared.wake.notified() => {}
                () = self.slot_freed.notified() => {}
                () = tokio::time::sleep(cfg.poll_interval) => {}
            }
        }
        self.tracker.close();
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

    /// Claims what fits and spawns attempts; returns how many were claimed.
    async fn claim_and_spawn(&self) -> usize {
        let cfg = &self.shared.config;
        let free = self.slots.available_permits();
        if free == 0 {
            return 0;
        }
        let per = cfg.per_endpoint_concurrency.max(1);
        let exclude: Vec<Uuid> = lock(&self.in_flight)
            .iter()
            .filter(|(_, n)| **n >= per)
            .map(|(id, _)| *id)
            .collect();
        let now = OffsetDateTime::now_utc();
        let lease = time::Duration::try_from(cfg.lease).unwrap_or(time::Duration::minutes(5));
        let request = ClaimRequest {
            now,
            limit: u32::try_from(free).unwrap_or(u32::MAX).min(cfg.claim_batch),
            per_webhook: u32::try_from(per).unwrap_or(u32::MAX),
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
        let n = rows.len();
        let mut give_back = Vec::new();
        for row in rows {
            let permit = {
                let mut map = lock(&self.in_flight);
                let count = map.entry(row.webhook_id).or_insert(0);
                if *count >= per {
                    None
                } else {
                    match self.slots.clone().try_acquire_owned() {
                        Ok(p) => {
                            *count += 1;
                            Some(p)
                        }
                        Err(_) => None,
                    }
                }
            };
            match permit {
                Some(permit) => {
                    let task = Attempt {
                        shared: self.shared.clone(),
                        in_flight: self.in_flight.clone(),
                        slot_freed: self.slot_freed.clone(),
                        _permit: permit,
                    };
                    self.tracker.spawn(task.run(row));
                }
                None => give_back.push(row.id),
            }
        }
        if !give_back.is_empty()
            && let Err(error) = self.shared.store.release(&give_back, request.token).await
        {
            tracing::warn!(%error, "releasing webhook deliveries failed; they return after the lease");
        }
        n
    }
}

/// One attempt's task; frees its slots when dropped.
struct Attempt {
    shared: Arc<Shared>,
    in_flight: InFlight,
    slot_freed: Arc<Notify>,
    _permit: OwnedSemaphorePermit,
}

impl Attempt {
    async fn run(self, row: ClaimedDelivery) {
        self.attempt(&row).await;
        {
            let mut map = lock(&self.in_flight);
            if let Some(c) = map.get_mut(&row.webhook_id) {
                *c = c.saturating_sub(1);
                if *c == 0 {
                    map.remove(&row.webhook_id);
                }
            }
        }
        self.slot_freed.notify_one();
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
        self.observe(&webhook, row, &exchange, outcome, attempt);
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
        let mut tries = 0;
        let effect = loop {
            match shared.store.complete_attempt(&record).await {
                Ok(effect) => break Some(effect),
                Err(error) if tries < 3 => {
                    tries += 1;
                    tracing::warn!(%error, "recording webhook attempt failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                Err(error) => {
                    // The claim expires and the delivery is sent again:
                    // at-least-once.
                    tracing::error!(%error, delivery_id = %row.id, "recording webhook attempt failed");
                    break None;
                }
            }
        };
        if let Some(effect) = effect {
            if effect.lost_claim {
                tracing::warn!(delivery_id = %row.id, "webhook claim expired before the attempt was recorded");
            }
            if effect.webhook_disabled {
                tracing::warn!(
                    webhook_id = %webhook.id,
                    host = %host_of(&webhook.url),
                    "webhook disabled"
                );
                shared.refresh_index().await;
            }
        }
    }

    fn observe(
        &self,
        webhook: &Webhook,
        row: &ClaimedDelivery,
        exchange: &Exchange,
        outcome: AttemptOutcome,
        attempt: u32,
    ) {
        let metrics = &self.shared.metrics;
        let host = host_of(&webhook.url);
        match outcome {
            AttemptOutcome::Succeeded => {
                metrics.attempt("success");
                let queued_ms =
                    (OffsetDateTime::now_utc() - row.created_at).as_seconds_f64() * 1000.0;
                metrics.latency_ms(queued_ms.max(0.0));
                tracing::debug!(delivery_id = %row.id, %host, attempt, "webhook delivered");
            }
            AttemptOutcome::Retry(_) => {
                metrics.attempt("retry");
                tracing::debug!(
                    delivery_id = %row.id, %host, attempt,
                    error = exchange.error.as_deref().unwrap_or(""),
                    "webhook attempt failed; will retry"
                );
            }
            AttemptOutcome::Dead | AttemptOutcome::Gone | AttemptOutcome::FailedOnce => {
                metrics.attempt("failed");
                tracing::warn!(
                    delivery_id = %row.id,
                    webhook_id = %webhook.id,
                    %host,
                    attempt,
                    error = exchange.error.as_deref().unwrap_or(""),
                    "webhook delivery dead"
                );
            }
        }
    }
}
