//! [`Deriver`]: deliveries derived from a shared event stream, once per
//! event, acknowledged only when committed.
//!
//! The [sink](crate::WebhookSink) queues the deliveries of the events its
//! own bus carries and returns before they are committed; a host whose
//! instances each see every event (cluster mode) needs one of them, not
//! every one, to queue an event's deliveries, and it needs to know when
//! they are committed before it lets go of the event. The host hands
//! batches of the stream's events to [`Deriver::derive`] (in `event-server`,
//! from the JetStream work queue all instances share): it finds each
//! event's subscribers, queues one row per (event, webhook) and records the
//! event as derived in one transaction, and returns once that transaction
//! committed. An event derived before (the stream handed it out again
//! because an acknowledgement was lost with a killed instance) queues
//! nothing the second time, so each delivery is queued once; the delivery
//! itself stays at least once, as always (`webhook-id` is the event id).
//!
//! **Which webhooks.** An event goes to the active webhooks subscribed to
//! its type that were created at or before the moment it occurred (so a
//! derivation repeated later, or one that catches up after every instance
//! was down, matches the same webhooks as the first). The subscribers come
//! from the in-memory index, which other instances' registrations reach
//! only when it is reloaded: unless the index was loaded after the batch's
//! newest event occurred, the deriver asks the store for the webhook list's
//! fingerprint (count and newest `updated_at`, one small query) and
//! reloads the index when it changed. So a webhook registered on any
//! instance receives every event that occurs after its registration
//! (within the instances' clock skew).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use event_core::Event;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Result;
use crate::service::Shared;

/// How often the record of derived events is pruned, at most.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Derives and queues webhook deliveries from a shared event stream (see
/// the module docs). Obtain it from [`Webhooks::deriver`](crate::Webhooks::deriver).
pub struct Deriver {
    shared: Arc<Shared>,
    /// How long derived events are remembered (see
    /// [`Webhooks::deriver`](crate::Webhooks::deriver)).
    memory: Duration,
    /// When the record of derived events was last pruned.
    pruned: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl std::fmt::Debug for Deriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deriver")
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl Deriver {
    pub(crate) fn new(shared: Arc<Shared>, memory: Duration) -> Self {
        Deriver {
            shared,
            memory,
            pruned: tokio::sync::Mutex::new(None),
        }
    }

    /// Queues the deliveries of `events` that no earlier call queued, in one
    /// transaction, and returns how many rows it queued once they are
    /// committed. An error means nothing of the batch was committed: hand
    /// the events in again.
    pub async fn derive(&self, events: &[Arc<Event>]) -> Result<u64> {
        let shared = &self.shared;
        if let Some(newest) = events.iter().map(|e| e.occurred_at()).max() {
            self.fresh_index(newest).await?;
        }
        let rows = crate::sink::rows_for(shared, events, true);
        let queued = if rows.is_empty() {
            0
        } else {
            shared
                .store
                .enqueue_derived(&rows, OffsetDateTime::now_utc())
                .await?
        };
        if queued > 0 {
            shared
                .counters
                .queued_unclaimed
                .fetch_add(queued, Ordering::Relaxed);
            // Committed unclaimed: this process's worker claims them (and
            // hands none of these webhooks' later rows over before).
            let webhooks: HashSet<Uuid> = rows.iter().map(|r| r.webhook_id).collect();
            shared.worker.note_behind(webhooks);
            shared.wake.notify_one();
        }
        self.prune().await;
        Ok(queued)
    }

    /// Makes sure the index holds every webhook registered before `newest`
    /// occurred: it was loaded after that, or the store's fingerprint shows
    /// no change since it was loaded (one small query), or it is reloaded.
    async fn fresh_index(&self, newest: OffsetDateTime) -> Result<()> {
        let shared = &self.shared;
        if shared.index.loaded_at().is_some_and(|at| at >= newest) {
            return Ok(());
        }
        let now = shared.store.webhooks_fingerprint().await?;
        if now.is_none() || now != shared.index.fingerprint() {
            shared.index.reload(shared.store.as_ref()).await?;
        }
        Ok(())
    }

    /// Forgets derived events older than the memory, at most every
    /// [`PRUNE_EVERY`]; a failure is logged and retried next time.
    async fn prune(&self) {
        let now = tokio::time::Instant::now();
        let mut pruned = self.pruned.lock().await;
        if pruned.is_some_and(|at| now.duration_since(at) < PRUNE_EVERY) {
            return;
        }
        *pruned = Some(now);
        let before = OffsetDateTime::now_utc() - self.memory;
        match self.shared.store.prune_derived(before).await {
            Ok(n) if n > 0 => tracing::debug!(events = n, "derived webhook events forgotten"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "derived webhook events not pruned"),
        }
    }
}
