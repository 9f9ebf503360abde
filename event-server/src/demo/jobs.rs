//! `POST /api/v1/jobs` and `GET /api/v1/jobs/status`: jobs run by the
//! simulated worker, bridged onto the bus like matric-jobs' real worker.
//!
//! An `AiRevision` job with a `note_id` edits its note, commits and announces
//! `NoteUpdated` in its completion hook, which runs before the worker reports
//! the job completed — so a client sees `NoteUpdated` and then
//! `JobCompleted`, and a re-fetch after either shows the revised note
//! (seed use case UC-002).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use event_bridge_jobs::simulator::{HookError, SimulatedJob, SimulatedWorker};
use event_core::QueueStatus;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::notes::{self, NotesState};
use crate::error::ServerError;

/// The job type whose completion revises its note.
pub const AI_REVISION: &str = "AiRevision";

/// Longest accepted job type.
const MAX_JOB_TYPE: usize = 64;
/// Largest job request body (`413` beyond).
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// The `Retry-After` of a `429` when the queue is full: the simulated worker
/// finishes a job every second or so.
const RETRY_AFTER_SECS: u64 = 5;

/// State of the job routes.
#[derive(Clone)]
pub struct JobsState {
    /// The simulated worker.
    pub worker: Arc<SimulatedWorker>,
    /// Jobs that may wait in the queue (`DEMO_MAX_QUEUED_JOBS`); beyond it a
    /// submission gets `429`.
    pub max_queued: usize,
}

/// Body of `POST /api/v1/jobs`.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// What kind of job (`Embedding`, `AiRevision`, `Linking`, …).
    pub job_type: String,
    /// The note it works on.
    #[serde(default)]
    pub note_id: Option<Uuid>,
}

/// The `202` answer.
#[derive(Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
pub struct Submitted {
    /// The new job's id.
    pub job_id: Uuid,
    /// Its type.
    pub job_type: String,
}

/// Installs the `AiRevision` completion hook on `worker`.
pub fn install_hooks(worker: &SimulatedWorker, notes: NotesState) {
    worker.on_complete(AI_REVISION, move |job: SimulatedJob| {
        let notes = notes.clone();
        async move {
            let Some(note_id) = job.note_id else {
                return Ok(());
            };
            match notes::ai_revise(&notes, note_id).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(HookError::from(format!(
                    "validation: note {note_id} not found"
                ))),
                Err(e) => Err(HookError::from(e.to_string())),
            }
        }
    });
}

/// The job routes.
pub fn router<S: Clone + Send + Sync + 'static>(state: JobsState) -> Router<S> {
    Router::new()
        .route("/api/v1/jobs", post(submit))
        .route("/api/v1/jobs/status", get(status))
        .with_state(state)
}

async fn submit(
    State(state): State<JobsState>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Submitted>), ServerError> {
    let job: NewJob = serde_json::from_slice(&body)
        .map_err(|e| ServerError::bad_request("invalid_body", format!("invalid job body: {e}")))?;
    let job_type = job.job_type.trim();
    if job_type.is_empty()
        || job_type.len() > MAX_JOB_TYPE
        || !job_type
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(ServerError::bad_request(
            "invalid_job_type",
            "`job_type` must be 1-64 ASCII letters, digits, `_` or `-`",
        ));
    }
    // Checked, then submitted: concurrent submissions may pass the check
    // together, so the queue can overshoot by at most the number of
    // requests in flight at that moment.
    let pending = state.worker.queue_status().pending;
    if pending >= state.max_queued as u64 {
        return Err(ServerError::TooManyRequests {
            message: format!(
                "the demo job queue is full ({pending} jobs waiting, DEMO_MAX_QUEUED_JOBS={})",
                state.max_queued
            ),
            retry_after_secs: RETRY_AFTER_SECS,
        });
    }
    let job_id = state
        .worker
        .submit(job_type, job.note_id)
        .map_err(|e| ServerError::Unavailable(format!("the worker refused the job: {e}")))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            job_id,
            job_type: job_type.to_owned(),
        }),
    ))
}

async fn status(State(state): State<JobsState>) -> Json<QueueStatus> {
    Json(state.worker.queue_status())
}
