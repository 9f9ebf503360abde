//! The error type of event-bridge-jobs.

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A database operation (begin, commit, rollback) failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The host's [`QueueStats`](crate::QueueStats) source failed.
    #[error("queue stats unavailable: {0}")]
    QueueStats(String),
    /// The host's queue stats source did not answer in time.
    #[error("queue stats timed out")]
    QueueStatsTimeout,
    /// The simulated worker is shut down and accepts no more jobs.
    #[error("the simulated worker is stopped")]
    WorkerStopped,
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// A short machine-readable code (`{"error": code, …}` bodies).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Database(_) => "database",
            Error::QueueStats(_) | Error::QueueStatsTimeout => "queue_stats_unavailable",
            Error::WorkerStopped => "worker_stopped",
            Error::Config(_) => "invalid_config",
        }
    }
}
