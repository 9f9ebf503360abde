//! Counts of how rows reached the worker: through the sink's handoff or
//! through claim queries.

use std::sync::atomic::{AtomicU64, Ordering};

/// How rows reached this process's worker, counted since the service was
/// built (see [`Webhooks::queue_stats`](crate::Webhooks::queue_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Rows the sink inserted already claimed and handed straight to the
    /// worker (no claim query).
    pub handed_off: u64,
    /// Of `handed_off`, rows that waited in the worker until a claim had
    /// taken older rows of their webhook from the store (see
    /// `worker::handoff`).
    pub parked: u64,
    /// Rows the sink inserted unclaimed (no room, or older rows of their
    /// webhook waiting), left for a claim.
    pub queued_unclaimed: u64,
    /// Claim queries run.
    pub claims: u64,
    /// Rows claim queries returned.
    pub claimed: u64,
}

/// The counters behind [`QueueStats`].
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub handed_off: AtomicU64,
    pub parked: AtomicU64,
    pub queued_unclaimed: AtomicU64,
    pub claims: AtomicU64,
    pub claimed: AtomicU64,
}

impl QueueCounters {
    pub fn snapshot(&self) -> QueueStats {
        QueueStats {
            handed_off: self.handed_off.load(Ordering::Relaxed),
            parked: self.parked.load(Ordering::Relaxed),
            queued_unclaimed: self.queued_unclaimed.load(Ordering::Relaxed),
            claims: self.claims.load(Ordering::Relaxed),
            claimed: self.claimed.load(Ordering::Relaxed),
        }
    }
}
