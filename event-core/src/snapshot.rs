//! Fresh queue status on demand.
//!
//! A new WebSocket connection and a `refresh` request both want the current
//! queue depth. The host knows it best (a job-table query, the job bridge's
//! counters) and supplies it through [`QueueSnapshot`]; when it has none or
//! it fails, the last published `QueueStatus` (or an empty queue) is used.

use async_trait::async_trait;

use crate::Error;
use crate::bus::EventBus;
use crate::payload::{EventKind, QueueStatus, ServerEvent};

/// A source of the current queue status.
#[async_trait]
pub trait QueueSnapshot: Send + Sync + 'static {
    /// The queue status right now.
    async fn queue_status(&self) -> Result<QueueStatus, Error>;
}

/// The best available queue status: the provider's answer, else the last
/// published one, else an empty queue. Never fails.
pub async fn current_queue_status(
    bus: &EventBus,
    provider: Option<&dyn QueueSnapshot>,
) -> QueueStatus {
    if let Some(p) = provider {
        match p.queue_status().await {
            Ok(status) => return status,
            Err(error) => {
                tracing::warn!(%error, "queue snapshot failed; using the last published status")
            }
        }
    }
    bus.latest(EventKind::QueueStatus)
        .and_then(|ev| match ev.payload() {
            ServerEvent::QueueStatus(q) => Some(q.clone()),
            _ => None,
        })
        .unwrap_or_else(|| QueueStatus::new(0, 0))
}
