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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use event_core::{Cursor, Event, EventSink, ReplaySource, SinkError, async_trait};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::deliver::body_for;
use crate::model::NewDelivery;
use crate::service::Shared;
use crate::worker::Inserted;

mod inserts;

use inserts::{Inserts, PendingBatch};

/// The webhook [`EventSink`]. Obtain it from
/// [`Webhooks::sink`](crate::Webhooks::sink).
pub struct WebhookSink {
    shared: Arc<Shared>,
    /// Batches waiting for (or in) their insert.
    inserts: Arc<Inserts>,
}

impl WebhookSink {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        WebhookSink {
            shared,
            inserts: Inserts::new(),
        }
    }

    fn rows_for(&self, events: &[Arc<Event>]) -> Vec<NewDelivery> {
        rows_for(&self.shared, events, false)
    }
}

/// One row per (event, subscribed webhook); with `existed_then`, only for
/// webhooks created before the event occurred (a catch-up of old events).
fn rows_for(shared: &Shared, events: &[Arc<Event>], existed_then: bool) -> Vec<NewDelivery> {
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

/// How often the log cursor is stored at most (a crash repeats at most
/// this long of deliveries).
const CURSOR_STORE_EVERY_MS: u64 = 200;

/// Events read from the log per catch-up page.
const CATCH_UP_PAGE: usize = 1024;

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

    // Hands the rows the worker has room for to it at once (they are sent
    // while they are inserted), then queues the batch for its insert and
    // returns: it waits only while `insert_pending` rows are queued, so
    // the next batch's hand-over never waits for a commit. The log cursor
    // moves past a batch only once it and every earlier one are committed.
    async fn deliver_batch(&self, events: Vec<Arc<Event>>) -> Result<(), SinkError> {
        let newest = events.iter().map(|e| e.seq()).max().unwrap_or(0);
        let mut rows = self.rows_for(&events);
        // Reserved and handed over here, in batch order: the room goes to
        // the oldest rows, and they go out in order.
        let reservation = if rows.is_empty() {
            None
        } else {
            self.shared.worker.reserve(&mut rows)
        };
        let (done, inserted) = Inserted::channel();
        let claim = reservation.as_ref().map(|r| *r.claim());
        let stopped = reservation.and_then(|r| r.hand_over(&rows, &inserted).err());
        let batch = PendingBatch {
            rows,
            claim,
            done,
            stopped,
            newest,
            oldest: events.iter().map(|e| e.occurred_at()).min(),
        };
        if self.inserts.push(&self.shared, batch).await {
            Ok(())
        } else {
            // Shut down: rows already handed over are not recorded (their
            // insert counts as failed), and the log cursor stays before them.
            Err(SinkError::new("the webhook sink is shut down"))
        }
    }

    // Waits for the inserts queued and in flight.
    async fn shutdown(&self) {
        self.inserts.shutdown().await;
    }
}
