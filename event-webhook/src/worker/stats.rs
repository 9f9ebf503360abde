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
    /// Rows the sink inserted unclaimed (no room, or older rows of their
    /// webhook waiting), left for a claim.
    pub queued_unclaimed: u64,
    /// Claim queries run.
    pub claims: u64,
    /// Rows claim queries returned.
    pub claimed: u64,
    /// Rows the sink has queued for insertion and not yet inserted (a
    /// gauge; at most `insert_pending` and one batch of the sink runner).
    pub insert_pending: u64,
    /// Insert statements the sink has run (each may take several of its
    /// batches).
    pub inserts: u64,
    /// Batches the sink has queued for insertion.
    pub insert_batches: u64,
}

/// The counters behind [`QueueStats`].
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub handed_off: AtomicU64,
    pub queued_unclaimed: AtomicU64,
    pub claims: AtomicU64,
    pub claimed: AtomicU64,
    pub insert_pending: AtomicU64,
    pub inserts: AtomicU64,
    pub insert_batches: AtomicU64,
}

impl QueueCounters {
    pub fn snapshot(&self) -> QueueStats {
        QueueStats {
            handed_off: self.handed_off.load(Ordering::Relaxed),
            queued_unclaimed: self.queued_unclaimed.load(Ordering::Relaxed),
            claims: self.claims.load(Ordering::Relaxed),
            claimed: self.claimed.load(Ordering::Relaxed),
            insert_pending: self.insert_pending.load(Ordering::Relaxed),
            inserts: self.inserts.load(Ordering::Relaxed),
            insert_batches: self.insert_batches.load(Ordering::Relaxed),
        }
    }
}
