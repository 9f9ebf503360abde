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
//! (event, webhook) in a single transaction before returning. Only then is
//! the batch acknowledged, and the worker is woken. While a transaction
//! runs, the intake fills, so under load the next batch is larger (up to
//! the runner's batch limit) and the database cost per row falls.

use std::sync::Arc;
use std::time::Duration;

use event_core::{Event, EventSink, SinkError, async_trait};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::deliver::body_for;
use crate::model::NewDelivery;
use crate::service::Shared;

/// The webhook [`EventSink`]. Obtain it from
/// [`Webhooks::sink`](crate::Webhooks::sink).
pub struct WebhookSink {
    shared: Arc<Shared>,
}

impl WebhookSink {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        WebhookSink { shared }
    }

    fn rows_for(&self, events: &[Arc<Event>]) -> Vec<NewDelivery> {
        let now = OffsetDateTime::now_utc();
        let mut rows = Vec::new();
        for event in events {
            let subscribers = self.shared.index.subscribers(event.kind());
            if subscribers.is_empty() {
                continue;
            }
            let body = body_for(event);
            for w in subscribers {
                rows.push(NewDelivery {
                    id: Uuid::now_v7(),
                    webhook_id: w.id,
                    event_id: event.id(),
                    event_type: event.kind().type_name(),
                    body: body.clone(),
                    created_at: now,
                    next_attempt_at: Some(now),
                });
            }
        }
        rows
    }
}

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

    async fn deliver_batch(&self, events: Vec<Arc<Event>>) -> Result<(), SinkError> {
        let mut rows = self.rows_for(&events);
        if rows.is_empty() {
            return Ok(());
        }
        // Rows this process's worker has room for are inserted claimed and
        // handed to it directly (see `worker::handoff`).
        let reservation = self.shared.worker.reserve(&mut rows);
        let claim = reservation.as_ref().map(|r| *r.claim());
        let claimed = claim.map_or(0, |c| c.count);
        let mut tries = ENQUEUE_BACKOFF.iter();
        loop {
            match self
                .shared
                .store
                .enqueue_claiming(&rows, claim.as_ref())
                .await
            {
                Ok(()) => break,
                Err(error) => match tries.next() {
                    Some(pause) => {
                        tracing::warn!(%error, rows = rows.len(), "webhook enqueue failed; retrying");
                        tokio::time::sleep(*pause).await;
                    }
                    None => {
                        return Err(SinkError::with_source(
                            format!("could not queue {} webhook deliveries", rows.len()),
                            error,
                        ));
                    }
                },
            }
        }
        if let Some(reservation) = reservation {
            reservation.adopt(&rows).await;
        }
        if claimed < rows.len() {
            self.shared.wake.notify_one();
        }
        Ok(())
    }
}
