//! [`DeliveryWorker`]: claims due deliveries and sends them.
//!
//! # Model
//!
//! Rows reach the per-webhook local queues two ways. Rows the sink of this
//! process queues are inserted already claimed and handed over directly
//! when the webhook holds fewer than
//! [`handoff_hold`](crate::WebhookConfig::handoff_hold) rows (module
//! `handoff`): no claim query at all on the steady path, whole batches at a
//! time; while older rows of their webhook may be due in the store they
//! wait (parked) until a claim has taken those. Everything else
//! (retries coming due, a backlog, rows queued by other instances) is
//! claimed in batches by a dispatcher loop, skipping webhooks that already
//! hold enough. The loop claims only while the store may hold due rows it
//! has not claimed (woken when rows are queued unclaimed, on a retry it
//! scheduled coming due, and every `poll_interval`, or every 50 ms while
//! claims keep finding rows), since a claim is a write transaction: an
//! empty one after every attempt would cost more than the deliveries.
//!
//! Attempt tasks run within two limits: `max_concurrency` in total and
//! `per_endpoint_concurrency` per webhook. An attempt task that finishes
//! takes the next row of its webhook's queue unless another webhook is
//! waiting for a slot, so a busy endpoint needs no database round trip per
//! delivery and cannot starve the others. Attempt results go to one
//! recorder task that waits up to 10 ms for company and writes up to 1,024
//! results in a single transaction of a few set-based statements, so one
//! commit is shared by hundreds of outcomes. Until its result commits a row
//! stays claimed; if the process dies first, the row is sent again
//! (at-least-once).
//!
//! A claim brings a webhook's rows only while it has fewer than 16 rounds
//! of its slots claimed locally (queued or running), all webhooks 16 rounds
//! of the global slots, so each claim brings many rows; with the sink's
//! rows a webhook holds at most the larger of that and `handoff_hold`. A
//! row still waiting when an attempt started now might outlast its claim (a
//! slow endpoint) is handed back unattempted and claimed again later, so no
//! row is ever sent on an expired claim; rows still queued at shutdown are
//! released at once. A slow endpoint occupies only its own slots. At
//! start-up, claims left by a dead process are freed; succeeded rows older
//! than `retention` are pruned periodically.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use uuid::Uuid;

use crate::deliver::{Exchange, decide, send};
use crate::model::{AttemptOutcome, AttemptRecord, ClaimRequest, ClaimedDelivery, Webhook};
use crate::service::Shared;
use crate::ssrf::host_of;

mod handoff;
mod state;
mod stats;

pub(crate) use handoff::{InsertDone, Inserted, Reservation, WorkerLink};
use state::{Held, State};
pub(crate) use stats::QueueCounters;
pub use stats::QueueStats;

/// Most attempt results written in one transaction. The stores write a
/// batch with a fixed number of set-based statements, so a large batch
/// costs little more than a small one: under load the recorder keeps up by
/// writing more per transaction, not by adding round trips.
const RECORD_BATCH: usize = 1024;

/// How long the recorder waits for more results before writing a small
/// batch. A result only has to be durable before its claim runs out, so
/// waiting costs nothing but a slightly longer window in which a crash
/// would send the delivery again, and it turns hundreds of small
/// transactions a second into a few large ones.
const RECORD_LINGER: Duration = Duration::from_millis(10);

/// The poll interval, at most, while claims keep finding rows.
const BUSY_POLL: Duration = Duration::from_millis(50);

/// Rounds of its slots' worth of rows a webhook may hold locally (see
/// `Dispatcher::hold`).
const ROUNDS: usize = 16;

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
        let hold = per * ROUNDS;
        let capacity = cfg.max_concurrency.max(1) * ROUNDS;
        let dispatcher = Arc::new(Dispatcher {
            stop: stop.clone(),
            recovered: CancellationToken::new(),
            tracker: tracker.clone(),
            slots: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
            state: Mutex::new(State::new()),
            slot_freed: Notify::new(),
            per,
            // How many rows one webhook may hold locally: `ROUNDS` rounds of
            // its slots, so each claim (a commit) brings many rows. A row
            // still waiting when its claim is about to run out (a slow
            // endpoint) is handed back unattempted.
            hold,
            // All webhooks together: as many rounds of the global slots.
            capacity,
            // Rows from this process's sink need no claim: a webhook may
            // hold more of those, so whole batches go over (`handoff`).
            fresh_hold: cfg.handoff_hold,
            fresh_capacity: capacity.max(cfg.handoff_hold),
            max_hold: hold.max(cfg.handoff_hold),
            // Time to start an attempt after claiming: the lease less the
            // longest attempt, with a margin for recording the result.
            window: cfg.lease.saturating_sub(cfg.request_timeout).mul_f64(0.9),
            records: record_tx,
            shared,
        });
        dispatcher.shared.worker.attach(&dispatcher);
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

struct Dispatcher {
    shared: Arc<Shared>,
    stop: CancellationToken,
    /// Cancelled once the start-up recovery has run (or failed, or the
    /// loop ended): rows inserted claimed for the handoff wait for it (see
    /// `Reservation::recovered`).
    recovered: CancellationToken,
    tracker: TaskTracker,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    slot_freed: Notify,
    per: usize,
    /// Rows of one webhook a claim may bring it up to (queued or running).
    hold: usize,
    /// Rows all webhooks may hold locally for a claim (queued or reserved).
    capacity: usize,
    /// Rows of one webhook the sink may hand over up to (all held rows).
    fresh_hold: usize,
    /// Rows all webhooks may hold locally for the handoff.
    fresh_capacity: usize,
    /// Rows one webhook may hold in all: the larger hold.
    max_hold: usize,
    window: Duration,
    records: mpsc::Sender<(AttemptRecord, Option<Inserted>)>,
}

impl Dispatcher {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self: Arc<Self>) {
        let cfg = &self.shared.config;
        // However this loop ends (even dropped before the recovery ran),
        // no insert of handed-over rows waits for the recovery for ever.
        let recovered = self.recovered.clone().drop_guard();
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
        drop(recovered);
        self.shared.refresh_index().await;
        let mut next_prune = Instant::now();
        let mut next_refresh = Instant::now() + cfg.index_refresh_interval;
        let mut next_gauge = Instant::now();
        let mut next_poll = Instant::now();
        while !self.stop.is_cancelled() {
            let now = Instant::now();
            // Rows this worker was not told about (retries coming due, rows
            // queued by other instances) are looked for on a timer: a busy
            // worker is woken constantly, so the timer is absolute.
            if now >= next_poll {
                next_poll = now + cfg.poll_interval;
                self.state().note_backlog();
            }
            let retry_at = self.state().retry_due_in(OffsetDateTime::now_utc());
            if retry_at.is_some_and(|d| d.is_zero()) {
                let mut st = self.state();
                // A retry is older than the sink's fresh rows.
                st.note_unknown();
                st.next_retry = None;
            }
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
            // Claim only while the store may hold due rows this worker has
            // not claimed: a claim is a write transaction, and an empty one
            // after every attempt would cost more than the deliveries.
            let claimed = if self.state().backlog {
                self.claim().await
            } else {
                0
            };
            self.dispatch();
            if claimed > 0 {
                if self.state().backlog {
                    continue;
                }
                // Rows are arriving that nobody told this worker about
                // (another process queues them, or retries come due): look
                // again soon rather than a whole poll interval later.
                next_poll = next_poll.min(Instant::now() + BUSY_POLL);
            }
            let wake_at = retry_at.map_or(next_poll, |d| (Instant::now() + d).min(next_poll));
            tokio::select! {
                () = self.stop.cancelled() => break,
                // New rows in the store (the sink, the API).
                () = self.shared.wake.notified() => self.state().note_backlog(),
                () = self.slot_freed.notified() => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
        self.shared.worker.detach();
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
        let (room, exclude, per_webhook) = {
            let st = self.state();
            let room = capacity.saturating_sub(st.local_total());
            // Rows still being inserted for the handoff do not count
            // against a claim's hold (they count against the larger one):
            // a webhook with a steady stream of fresh rows is still claimed
            // for, so its retries are not starved by its fresh rows.
            let room_of = |w: &Uuid| {
                (self.hold.saturating_sub(st.active(w)))
                    .min(self.max_hold.saturating_sub(st.claimable_held(w)))
            };
            let (exclude, open): (Vec<Uuid>, Vec<Uuid>) = st
                .busy_webhooks()
                .into_iter()
                .partition(|w| room_of(w) == 0);
            // Ask for no more of a webhook than the fullest open one can
            // take, so no row comes back only to be given back.
            let per_webhook = open.iter().map(room_of).min().unwrap_or(self.hold);
            (room, exclude, per_webhook)
        };
        if room == 0 {
            return 0;
        }
        let constrained = !exclude.is_empty();
        if let Some(fruitless) = &self.state().fruitless
            && fruitless.iter().all(|w| exclude.contains(w))
        {
            return 0;
        }
        let now = OffsetDateTime::now_utc();
        let lease = time::Duration::try_from(cfg.lease).unwrap_or(time::Duration::minutes(5));
        let request = ClaimRequest {
            now,
            limit: u32::try_from(room).unwrap_or(u32::MAX).min(cfg.claim_batch),
            per_webhook: u32::try_from(per_webhook).unwrap_or(u32::MAX),
            exclude,
            lease_until: now + lease,
            token: Uuid::new_v4(),
        };
        let attempt_by = Instant::now() + self.window;
        let started = Instant::now();
        let epoch = self.state().start_claim();
        self.shared.counters.claims.fetch_add(1, Ordering::Relaxed);
        let rows = match self.shared.store.claim_due(&request).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "claiming webhook deliveries failed");
                return 0;
            }
        };
        tracing::debug!(
            target: "matric::webhooks::timing",
            rows = rows.len(),
            claim_us = started.elapsed().as_micros() as u64,
            "webhook claim"
        );
        self.shared
            .counters
            .claimed
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        let mut kept = 0;
        let mut give_back = Vec::new();
        {
            let mut st = self.state();
            // A short answer that no limit shaped means nothing else is due:
            // no more claims until something new is queued or comes due.
            let mut per_webhook: HashMap<Uuid, u32> = HashMap::new();
            for row in &rows {
                *per_webhook.entry(row.webhook_id).or_default() += 1;
            }
            let capped = per_webhook.values().any(|&n| n >= request.per_webhook);
            let short = rows.len() < request.limit as usize && !capped;
            if short {
                st.caught_up(epoch, &request.exclude);
            }
            // What was noted while this claim ran (rows committed unclaimed
            // meanwhile, a retry come due) needs another look: parked rows
            // wait for it.
            st.backlog = !short || constrained || st.unknown.is_some() || !st.behind.is_empty();
            st.fruitless = (rows.is_empty() && constrained).then(|| request.exclude.clone());
            for row in rows {
                let w = row.webhook_id;
                if st.active(&w) >= self.hold || st.claimable_held(&w) >= self.max_hold {
                    give_back.push(row.id);
                    // Older than the webhook's fresh rows: those wait.
                    st.note_behind(w);
                } else {
                    st.push(Held {
                        row,
                        attempt_by,
                        inserted: None,
                    });
                    kept += 1;
                }
            }
            // Older rows first: what this claim brought, then the fresh rows
            // that waited for it.
            st.release_parked();
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
                let Some(held) = st.pop(&w) else {
                    break;
                };
                *st.running.entry(w).or_insert(0) += 1;
                self.tracker.spawn(self.clone().attempts(held, permit));
            }
        }
    }

    /// Runs attempts for one webhook: `row`, then its queued successors
    /// while no other webhook waits for a slot.
    async fn attempts(self: Arc<Self>, mut held: Held, _permit: OwnedSemaphorePermit) {
        let webhook_id = held.row.webhook_id;
        loop {
            if Instant::now() <= held.attempt_by {
                self.attempt(&held).await;
            } else {
                self.hand_back(&held).await;
            }
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
                    held = n;
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
        let rows: Vec<Held> = {
            let mut st = self.state();
            st.queued_total = 0;
            let mut rows: Vec<Held> = st.queued.drain().flat_map(|(_, q)| q).collect();
            rows.extend(st.drain_parked());
            rows
        };
        self.release_rows(&rows, "shutdown").await;
    }

    /// Gives `rows` back to the store unclaimed, each once its insert has
    /// committed (a row whose insert failed is not there to give back). A
    /// failed release is logged (`during` says when); those rows come
    /// back when their lease ends.
    pub(super) async fn release_rows(&self, rows: &[Held], during: &'static str) {
        let mut by_token: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
        for held in rows {
            if held.in_store().await {
                by_token
                    .entry(held.row.claim_token)
                    .or_default()
                    .push(held.row.id);
            }
        }
        for (token, ids) in by_token {
            if let Err(error) = self.shared.store.release(&ids, token).await {
                tracing::warn!(%error, during, rows = ids.len(), "giving webhook deliveries back failed; they return after their lease");
            }
        }
    }

    /// Gives back a row whose claim would run out before an attempt started
    /// now is recorded: it is claimed again later with a fresh lease.
    async fn hand_back(&self, held: &Held) {
        let row = &held.row;
        if !held.in_store().await {
            return;
        }
        tracing::debug!(delivery_id = %row.id, "webhook delivery waited too long locally; handed back");
        if let Err(error) = self.shared.store.release(&[row.id], row.claim_token).await {
            tracing::warn!(%error, "handing back a webhook delivery failed; it returns after its lease");
        }
        self.state().note_behind(row.webhook_id);
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

    async fn attempt(&self, held: &Held) {
        let (shared, row) = (&self.shared, &held.row);
        let Some(webhook) = self.webhook(row.webhook_id).await else {
            // Deleted meanwhile (its rows go with it) or unreadable: the
            // claim expires and the row, if any, comes back.
            return;
        };
        if !webhook.active {
            // Disabled since the claim (410, too many dead deliveries, the
            // API): hand the row back untouched.
            if held.in_store().await
                && let Err(error) = shared.store.release(&[row.id], row.claim_token).await
            {
                tracing::warn!(%error, "releasing a delivery of a disabled webhook failed");
            }
            return;
        }
        let attempt = row.attempts + 1;
        // One span per attempt, a child of the event's trace when it has
        // one; the request carries the span's context on (or the event's
        // own, without trace export).
        let span = tracing::info_span!(
            target: "matric::webhooks",
            "webhook.attempt",
            "event.id" = %row.event_id,
            "event.type" = %row.event_type,
            "webhook.endpoint_id" = %row.webhook_id,
            "webhook.attempt" = attempt,
            "webhook.status" = tracing::field::Empty,
        );
        let trace = row.trace.as_deref().and_then(crate::model::decode_trace);
        if let Some(context) = &trace {
            event_core::trace::link(&span, context);
        }
        let outgoing = event_core::trace::outgoing(&span, trace.as_ref());
        let exchange = send(
            shared,
            &webhook,
            row.id,
            row.event_id,
            &row.event_type,
            row.body.clone(),
            outgoing.as_ref(),
        )
        .instrument(span.clone())
        .await;
        tracing::debug!(
            target: "matric::webhooks::timing",
            queued_us = (exchange.started_at - row.created_at).whole_microseconds().max(0) as u64,
            http_us = exchange.duration.as_micros() as u64,
            "webhook attempt"
        );
        if let Some(status) = exchange.status {
            span.record("webhook.status", status);
        }
        let outcome = decide(&shared.config, &exchange, attempt, webhook.max_retries);
        if let AttemptOutcome::Retry(at) = outcome {
            self.state().retry_at(at);
        }
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
        // this one's transaction (nor for the row's own insert, if it was
        // handed over before it). Until it commits the claim protects the
        // row; if the process dies first, the row is sent again.
        let _ = self.records.send((record, held.inserted.clone())).await;
    }
}

/// Writes attempt results in batches: whatever arrived while the previous
/// transaction ran goes into the next one. A result of a row handed over
/// before its insert committed waits for that commit, and is dropped if
/// the insert failed (there is no row to record it on).
async fn record_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(AttemptRecord, Option<Inserted>)>,
) {
    let mut arrived = Vec::with_capacity(RECORD_BATCH);
    let mut batch: Vec<AttemptRecord> = Vec::with_capacity(RECORD_BATCH);
    while rx.recv_many(&mut arrived, RECORD_BATCH).await > 0 {
        let until = Instant::now() + RECORD_LINGER;
        while arrived.len() < RECORD_BATCH {
            let room = RECORD_BATCH - arrived.len();
            match tokio::time::timeout_at(until, rx.recv_many(&mut arrived, room)).await {
                Ok(n) if n > 0 => {}
                // Time is up, or every sender is gone (shutdown).
                _ => break,
            }
        }
        for (record, inserted) in arrived.drain(..) {
            let in_store = match &inserted {
                Some(inserted) => inserted.committed().await,
                None => true,
            };
            if in_store {
                batch.push(record);
            }
        }
        if batch.is_empty() {
            continue;
        }
        let mut tries = 0u64;
        let started = Instant::now();
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
        tracing::debug!(
            target: "matric::webhooks::timing",
            records = batch.len(),
            record_us = started.elapsed().as_micros() as u64,
            "webhook record"
        );
        let mut disabled = false;
        for (record, effect) in batch.iter().zip(&effects) {
            if effect.lost_claim {
                tracing::warn!(delivery_id = %record.delivery_id, "webhook attempt not recorded: the claim expired or the delivery was deleted");
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
