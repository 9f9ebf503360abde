//! Counters the bridge keeps about what it saw and what it held back.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a running [`JobBridge`](crate::JobBridge).
#[derive(Debug, Default)]
pub struct BridgeStats {
    pub(crate) worker_events: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) worker_lifecycle: AtomicU64,
    pub(crate) retries_scheduled: AtomicU64,
    pub(crate) dropped_out_of_order: AtomicU64,
    pub(crate) progress_suppressed: AtomicU64,
    pub(crate) progress_coalesced: AtomicU64,
    pub(crate) progress_resent: AtomicU64,
    pub(crate) jobs_expired: AtomicU64,
    pub(crate) worker_lagged: AtomicU64,
}

impl BridgeStats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> BridgeStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BridgeStatsSnapshot {
            worker_events: get(&self.worker_events),
            published: get(&self.published),
            worker_lifecycle: get(&self.worker_lifecycle),
            retries_scheduled: get(&self.retries_scheduled),
            dropped_out_of_order: get(&self.dropped_out_of_order),
            progress_suppressed: get(&self.progress_suppressed),
            progress_coalesced: get(&self.progress_coalesced),
            progress_resent: get(&self.progress_resent),
            jobs_expired: get(&self.jobs_expired),
            worker_lagged: get(&self.worker_lagged),
        }
    }
}

/// A copy of [`BridgeStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BridgeStatsSnapshot {
    /// Worker events received.
    pub worker_events: u64,
    /// Events published on the bus.
    pub published: u64,
    /// `WorkerStarted` / `WorkerStopped` seen (counted, not published).
    pub worker_lifecycle: u64,
    /// `JobRetryScheduled` seen (counted, not published).
    pub retries_scheduled: u64,
    /// Events dropped because they would break the per-job order
    /// (anything after a terminal, a second terminal, a late queued/started).
    pub dropped_out_of_order: u64,
    /// Progress values dropped because they went backwards or repeated.
    pub progress_suppressed: u64,
    /// Progress values replaced by a newer one within the rate interval.
    pub progress_coalesced: u64,
    /// Progress re-sent during a silent job.
    pub progress_resent: u64,
    /// Running jobs forgotten after the idle timeout.
    pub jobs_expired: u64,
    /// Worker events lost because the bridge lagged behind the worker channel.
    pub worker_lagged: u64,
}
