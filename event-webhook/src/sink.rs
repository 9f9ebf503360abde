//! [`WebhookSink`]: turns bus events into durable delivery rows.
//!
//! The sink takes its events through an *intake* (see
//! [`EventSink::intake_capacity`]): the publisher itself hands every event
//! that has a subscriber to a queue of up to
//! [`intake_capacity`](crate::WebhookConfig::intake_capacity) events, so
//! neither a burst nor a slow database makes the sink lag behind the bus's
//! bounded channel and lose events. Only when that queue is full are events
//! dropped (counted, logged; the publisher is never blocked).
//!
//! For each batch the runner takes from the intake, the sink looks the
//! subscribers of each event up in the in-memory index, renders the request
//! body once per event (shared by every webhook), and writes one row per
//! (event, webhook) in a single transaction. Up to four such transactions
//! are in flight at once, so a batch waits for its own commit only, not for
//! the commits of the batches before it (on PostgreSQL each is a round trip
//! and a WAL flush, which concurrent commits share). The rows this
//! process's worker has room for go to it before the transaction starts
//! and are sent while it commits (`worker::handoff`): the commit is not
//! part of a delivery's latency. The event-log cursor passes a batch only
//! once it and every batch before it are committed. While the
//! transactions run, the intake fills, so under load batches grow (up to the
//! runner's batch limit) and the database cost per row falls.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use event_core::{Cursor, Event, EventSink, ReplaySource, SinkError, async_trait};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::deliver::body_for;
use crate::model::{BatchClaim, NewDelivery};
use crate::service::Shared;
use crate::worker::{InsertDone, Inserted, Reservation};

/// The webhook [`EventSink`]. Obtain it from
/// [`Webhooks::sink`](crate::Webhooks::sink).
pub struct WebhookSink {
    shared: Arc<Shared>,
    /// Enqueue transactions in flight (at most [`ENQUEUE_PIPELINE`]).
    slots: Arc<Semaphore>,
    /// Batches in arrival order, so the log cursor passes a batch only once
    /// it and every batch before it are queued.
    order: Arc<Mutex<InOrder>>,
}

impl WebhookSink {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        WebhookSink {
            shared,
            slots: Arc::new(Semaphore::new(ENQUEUE_PIPELINE)),
            order: Arc::default(),
        }
    }

    fn rows_for(&self, events: &[Arc<Event>]) -> Vec<NewDelivery> {
        rows_for(&self.shared, events, false)
    }
}

/// One row per (event, subscribed webhook); with `existed_then`, only for
/// webhooks created at or before the event occurred (a catch-up of old
/// events, a derivation from a shared stream).
pub(crate) fn rows_for(
    shared: &Shared,
    events: &[Arc<Event>],
    existed_then: bool,
) -> Vec<NewDelivery> {
    let now = OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    for event in events {
        let mut subscribers = shared.index.subscribers(event.kind());
        if existed_then {
            subscribers.retain(|w| w.created_at <= event.occurred_at());
        }
        if subscribers.is_empty() {
            continue;
        }
        let body = body_for(event);
        let trace = event.meta().trace.as_ref().map(crate::model::encode_trace);
        for w in subscribers {
            rows.push(NewDelivery {
                id: Uuid::now_v7(),
                webhook_id: w.id,
                event_id: event.id(),
                event_type: event.kind().type_name(),
                body: body.clone(),
                created_at: now,
                next_attempt_at: Some(now),
                trace: trace.clone(),
            });
        }
    }
    rows
}

/// Where the event log catch-up resumes: the sequence of the newest event
/// whose deliveries are queued, stored at most every 200 ms (a crash
/// repeats at most that long of deliveries, with the same `webhook-id`).
#[derive(Debug)]
pub(crate) struct LogCursor {
    /// The newest event of a queued batch.
    queued: AtomicU64,
    /// Unix milliseconds of the last store.
    stored_at: AtomicU64,
    /// Set until a catch-up has run (a host without an event log never
    /// stores a cursor), and again for good after a batch could not be
    /// queued: the stored cursor then stays where a restart must resume.
    frozen: AtomicBool,
}

impl Default for LogCursor {
    fn default() -> Self {
        LogCursor {
            queued: AtomicU64::new(0),
            stored_at: AtomicU64::new(0),
            frozen: AtomicBool::new(true),
        }
    }
}

impl LogCursor {
    /// Notes a queued batch; stores the cursor when 200 ms have passed.
    async fn queued(&self, store: &dyn crate::store::WebhookStore, seq: u64) {
        self.queued.fetch_max(seq, Ordering::Relaxed);
        if self.frozen.load(Ordering::Relaxed) {
            return;
        }
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        if now.saturating_sub(self.stored_at.load(Ordering::Relaxed)) < CURSOR_STORE_EVERY_MS {
            return;
        }
        self.stored_at.store(now, Ordering::Relaxed);
        let seq = self.queued.load(Ordering::Relaxed);
        if let Err(error) = store.set_log_cursor(seq).await {
            tracing::warn!(%error, "webhook log cursor not stored");
        }
    }
}

/// See [`Webhooks::catch_up`](crate::Webhooks::catch_up).
pub(crate) async fn catch_up(
    shared: &Shared,
    source: &dyn ReplaySource,
    until: u64,
) -> crate::error::Result<u64> {
    let cursor = &shared.log_cursor;
    let Some(mut after) = shared.store.log_cursor().await? else {
        shared.store.set_log_cursor(until).await?;
        cursor.frozen.store(false, Ordering::Relaxed);
        return Ok(0);
    };
    if after >= until {
        cursor.frozen.store(false, Ordering::Relaxed);
        return Ok(0);
    }
    let mut queued = 0;
    let outcome = loop {
        let page = match source
            .history(Some(&Cursor::Seq(after)), CATCH_UP_PAGE)
            .await
        {
            Ok(page) => page,
            Err(miss) => {
                tracing::error!(
                    after,
                    until,
                    reason = miss.as_str(),
                    "webhook catch-up: the event log no longer holds these events; their deliveries are lost"
                );
                break Ok(());
            }
        };
        let page: Vec<Arc<Event>> = page.into_iter().filter(|e| e.seq() <= until).collect();
        let Some(last) = page.last().map(|e| e.seq()) else {
            break Ok(());
        };
        let rows = rows_for(shared, &page, true);
        if !rows.is_empty() {
            if let Err(e) = shared.store.enqueue(&rows).await {
                break Err(e);
            }
            queued += rows.len() as u64;
            // Older than anything the sink queues now.
            shared.worker.note_unknown();
            shared.wake.notify_one();
        }
        shared.store.set_log_cursor(last).await?;
        after = last;
        if last >= until {
            break Ok(());
        }
    };
    outcome?;
    shared.store.set_log_cursor(until).await?;
    cursor.frozen.store(false, Ordering::Relaxed);
    if queued > 0 {
        tracing::info!(
            deliveries = queued,
            "webhook deliveries recovered from the event log"
        );
    }
    Ok(queued)
}

/// Batches whose enqueue has started, oldest first: the newest event
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

/// Enqueue transactions the sink keeps in flight. With one, every batch
/// waits for the previous batch's commit (a round trip and, on PostgreSQL,
/// a WAL flush) before its own starts; a few in flight share the flushes
/// (group commit) and a batch waits only for its own. While the store
/// holds the inserts up, the sink takes at most one batch more from the
/// bus, which then waits for a slot.
pub const ENQUEUE_PIPELINE: usize = 4;

/// How often the log cursor is stored at most (a crash repeats at most
/// this long of deliveries).
const CURSOR_STORE_EVERY_MS: u64 = 200;

/// Events read from the log per catch-up page.
const CATCH_UP_PAGE: usize = 1024;

/// Back-off between enqueue attempts when the database is briefly away
/// (about 18 s in all, within the runner's 30-second delivery timeout;
/// meanwhile new events wait in the intake).
const ENQUEUE_BACKOFF: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
    Duration::from_secs(10),
];

#[async_trait]
impl EventSink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    fn accepts(&self, event: &Event) -> bool {
        self.shared.index.has_subscribers(event.kind())
    }

    // The publisher fills the intake directly: the sink cannot lag behind
    // the bus's bounded channel however long a transaction takes.
    fn intake_capacity(&self) -> Option<usize> {
        Some(self.shared.config.intake_capacity)
    }

    // If even the intake overflowed, what the replay ring still holds is
    // recovered instead of lost.
    fn recover_lagged(&self) -> bool {
        true
    }

    async fn on_lag(&self, missed: u64) {
        // Called only for events that neither the intake nor the replay ring
        // held: those cannot be queued.
        self.shared.metrics.dropped(missed);
        tracing::error!(
            missed,
            intake_capacity = self.shared.config.intake_capacity,
            "webhook intake overflowed; events were not queued"
        );
    }

    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        self.deliver_batch(vec![event]).await
    }

    // Returns once the batch's enqueue has started (at most
    // `ENQUEUE_PIPELINE` in flight, so the intake still fills while the
    // database is slow). The rows the worker has room for are handed to it
    // first, before any wait: they are sent while they are inserted. The
    // log cursor moves past the batch only once it is committed.
    async fn deliver_batch(&self, events: Vec<Arc<Event>>) -> Result<(), SinkError> {
        let newest = events.iter().map(|e| e.seq()).max().unwrap_or(0);
        let mut rows = self.rows_for(&events);
        // Reserved and handed over here, in batch order, not in the task:
        // the room goes to the oldest rows, and they go out in order.
        let reservation = if rows.is_empty() {
            None
        } else {
            self.shared.worker.reserve(&mut rows)
        };
        let (done, inserted) = Inserted::channel();
        let claim = reservation.as_ref().map(|r| *r.claim());
        let recovered = reservation.as_ref().map(|r| r.recovered());
        let stopped = reservation.and_then(|r| r.hand_over(&rows, &inserted).err());
        let waiting = std::time::Instant::now();
        let Ok(permit) = self.slots.clone().acquire_owned().await else {
            // Shut down: rows already handed over are not recorded (their
            // insert counts as failed), and the log cursor stays before them.
            return Err(SinkError::new("the webhook sink is shut down"));
        };
        let ticket = lock(&self.order).start(newest);
        let oldest = events.iter().map(|e| e.occurred_at()).min();
        // How long this batch (and the intake behind it) waited for an
        // enqueue slot: the next batch's hand-over waits as long.
        let slot_wait = waiting.elapsed();
        let (shared, order) = (self.shared.clone(), self.order.clone());
        tokio::spawn(async move {
            let batch = Batch {
                rows,
                claim,
                recovered,
                done,
                stopped,
                oldest,
                slot_wait,
            };
            if !enqueue(&shared, batch).await {
                // The cursor stays where a restart must catch these up
                // from the log.
                shared.log_cursor.frozen.store(true, Ordering::Relaxed);
            }
            let through = lock(&order).done(ticket);
            if let Some(seq) = through {
                shared.log_cursor.queued(shared.store.as_ref(), seq).await;
            }
            drop(permit);
        });
        Ok(())
    }

    // Waits for the enqueues in flight.
    async fn shutdown(&self) {
        let all = u32::try_from(ENQUEUE_PIPELINE).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
        self.slots.close();
    }
}

fn lock(order: &Mutex<InOrder>) -> std::sync::MutexGuard<'_, InOrder> {
    order.lock().unwrap_or_else(|p| p.into_inner())
}

/// One batch's rows on their way into the store.
struct Batch {
    rows: Vec<NewDelivery>,
    /// The claim the first rows are inserted with (handed to the worker).
    claim: Option<BatchClaim>,
    /// With a claim: the worker's start-up recovery, which the insert waits
    /// for (`Reservation::recovered`).
    recovered: Option<CancellationToken>,
    /// Tells the worker whether the insert committed.
    done: InsertDone,
    /// The reservation of a worker that stopped before the hand-over: its
    /// rows are released once committed.
    stopped: Option<Reservation>,
    oldest: Option<OffsetDateTime>,
    /// Time spent waiting for an enqueue slot (timing log).
    slot_wait: Duration,
}

/// Queues the batch's rows (retrying while the database is briefly away)
/// and tells the worker how that went; whether they were queued.
async fn enqueue(shared: &Shared, batch: Batch) -> bool {
    let Batch {
        rows,
        claim,
        recovered,
        done,
        stopped,
        oldest,
        slot_wait,
    } = batch;
    if rows.is_empty() {
        done.finish(true);
        return true;
    }
    let claimed = claim.map_or(0, |c| c.count);
    if let Some(recovered) = recovered {
        // Only at start-up: once the recovery ran, this returns at once.
        recovered.cancelled().await;
    }
    let started = std::time::Instant::now();
    let mut tries = ENQUEUE_BACKOFF.iter();
    loop {
        match shared.store.enqueue_claiming(&rows, claim.as_ref()).await {
            Ok(()) => break,
            Err(error) => match tries.next() {
                Some(pause) => {
                    tracing::warn!(%error, rows = rows.len(), "webhook enqueue failed; retrying");
                    tokio::time::sleep(*pause).await;
                }
                None => {
                    tracing::error!(%error, rows = rows.len(), "could not queue webhook deliveries; a restart catches them up from the event log, if any");
                    done.finish(false);
                    return false;
                }
            },
        }
    }
    done.finish(true);
    tracing::debug!(
        target: "matric::webhooks::timing",
        rows = rows.len(),
        claimed,
        enqueue_us = started.elapsed().as_micros() as u64,
        slot_wait_us = slot_wait.as_micros() as u64,
        waited_us = oldest.map_or(0, |t| (OffsetDateTime::now_utc() - t).whole_microseconds().max(0) as u64),
        "webhook enqueue"
    );
    if let Some(reservation) = stopped {
        reservation.release_after_insert(&rows).await;
    }
    if claimed < rows.len() {
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
    true
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
