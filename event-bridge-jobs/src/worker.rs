//! What the job worker broadcasts.
//!
//! [`WorkerEvent`] mirrors the events matric-jobs' worker sends on its
//! `tokio::sync::broadcast` channel. It is deliberately looser than the wire
//! contract: progress is a plain integer that may be out of range, failures
//! carry raw backend text, and there are lifecycle and retry events clients
//! never see. The [`JobBridge`](crate::JobBridge) turns it into the seven
//! docs/protocol.md §1 events.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One event from the job worker.
///
/// The JSON form (for logs and cross-process relays) is internally tagged by
/// `type`, like the wire events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WorkerEvent {
    /// A job entered the queue.
    JobQueued {
        /// The job.
        job_id: Uuid,
        /// What kind of work (`Embedding`, `AiRevision`, …).
        job_type: String,
        /// The note the job works on, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note_id: Option<Uuid>,
    },
    /// A worker picked the job up.
    JobStarted {
        /// The job.
        job_id: Uuid,
        /// What kind of work.
        job_type: String,
        /// The note the job works on, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note_id: Option<Uuid>,
    },
    /// The job reports how far it is.
    JobProgress {
        /// The job.
        job_id: Uuid,
        /// The note the job works on, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note_id: Option<Uuid>,
        /// Percent done. Values outside 0–100 are clamped by the bridge.
        percent: i32,
        /// A short step description.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// The job finished successfully.
    JobCompleted {
        /// The job.
        job_id: Uuid,
        /// What kind of work.
        job_type: String,
        /// The note the job worked on, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note_id: Option<Uuid>,
        /// How long it ran.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
    },
    /// The job gave up for good.
    JobFailed {
        /// The job.
        job_id: Uuid,
        /// What kind of work.
        job_type: String,
        /// The note the job worked on, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note_id: Option<Uuid>,
        /// Raw error text from the backend. Never published as is: the
        /// bridge reduces it to a short code.
        error: String,
    },
    /// The attempt failed and the job goes back to the queue.
    JobRetryScheduled {
        /// The job.
        job_id: Uuid,
        /// What kind of work.
        job_type: String,
        /// The note the job works on, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note_id: Option<Uuid>,
        /// The attempt that will run next (1-based).
        #[serde(default)]
        attempt: u32,
        /// How long until it runs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delay_ms: Option<u64>,
    },
    /// A worker came up.
    WorkerStarted,
    /// A worker shut down.
    WorkerStopped,
}

impl WorkerEvent {
    /// The job this event is about (`None` for worker lifecycle events).
    pub fn job_id(&self) -> Option<Uuid> {
        match self {
            WorkerEvent::JobQueued { job_id, .. }
            | WorkerEvent::JobStarted { job_id, .. }
            | WorkerEvent::JobProgress { job_id, .. }
            | WorkerEvent::JobCompleted { job_id, .. }
            | WorkerEvent::JobFailed { job_id, .. }
            | WorkerEvent::JobRetryScheduled { job_id, .. } => Some(*job_id),
            WorkerEvent::WorkerStarted | WorkerEvent::WorkerStopped => None,
        }
    }

    /// Whether this event ends its job (`JobCompleted` or `JobFailed`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            WorkerEvent::JobCompleted { .. } | WorkerEvent::JobFailed { .. }
        )
    }
}
