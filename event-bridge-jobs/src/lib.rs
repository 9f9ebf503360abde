//! # event-bridge-jobs
//!
//! Where matric's background work meets the event bus: the job worker's
//! events become the HotM job events and `QueueStatus` (docs/protocol.md §1), and
//! note changes become `NoteUpdated` — only once they are committed.
//!
//! ## The job bridge
//!
//! ```text
//!  matric-jobs worker ──broadcast<WorkerEvent>──► JobBridge ──► EventBus ──► WS / SSE / webhooks
//!                                                  │  ▲
//!                          QueueStats (job table) ─┘  └─ ConnectionRegistry (any client open?)
//! ```
//!
//! A [`JobBridge`] task reads [`WorkerEvent`]s and publishes the matching
//! [`ServerEvent`](event_core::ServerEvent), enforcing what clients rely on:
//!
//! * **Order per job**: `JobQueued` < `JobStarted` < `JobProgress`* <
//!   exactly one of `JobCompleted` / `JobFailed`. Anything after the
//!   terminal event, a second terminal event, and a queued/started that
//!   arrives late are dropped (and counted). A restart after a retry is not
//!   announced again.
//! * **Progress** is clamped to 0–100 and never goes backwards. At most one
//!   `JobProgress` per job per `progress_interval` (100 ms) goes out, and the
//!   *latest* value always does (trailing edge); a terminal event first
//!   flushes a held-back progress. A running job that has been silent for
//!   `progress_resend_interval` (5 s) gets its last progress re-sent, so a
//!   client sees an update at least every 5 s (UC-001).
//! * **Failures** are published as a stable short code (`timed_out`,
//!   `rate_limited`, `connection`, `validation`, …) by an [`ErrorClassifier`],
//!   never as raw backend text.
//! * **Worker lifecycle** and **retry-scheduled** events are counted in
//!   [`BridgeStatsSnapshot`], not published.
//! * **QueueStatus** (`total_jobs = pending + running`) is published when the
//!   counts change (coalesced, at most one per 250 ms) and every 5 s while at
//!   least one WebSocket/SSE client is connected — never otherwise. A tick
//!   is put off when another producer's unscoped `QueueStatus` reached the
//!   bus within it: in a cluster each instance's bridge publishes onto the
//!   one stream every instance's clients read, so they get about one
//!   periodic status per 5 s, not one per instance. The
//!   bridge counts jobs from the events it sees; the host's [`QueueStats`]
//!   (e.g. a job-table query) is the source of truth it resyncs from at
//!   start, on each tick and after the bridge lagged behind the worker.
//!   [`JobBridgeHandle::queue_snapshot`] implements event-core's
//!   [`QueueSnapshot`](event_core::QueueSnapshot) for the transports.
//! * The bridge ends when the worker channel closes (after flushing held-back
//!   progress), on [`JobBridgeHandle::shutdown`], or when the host's
//!   cancellation token fires.
//!
//! ## Note events after commit
//!
//! [`NoteEvents::updated`] publishes a `NoteUpdated` from a [`NoteChange`].
//! Handlers that write inside a transaction use [`AfterCommit`] instead: the
//! events queued on it are published only after `commit()` succeeds, exactly
//! once, and dropped on rollback, error or drop. See [`after_commit`] for the
//! pattern matric-api's note handlers and the AI-revision job follow.
//!
//! ## Simulated worker
//!
//! With feature `simulator`, `simulator::SimulatedWorker` is an in-process
//! job queue (steps, durations, failure rate, concurrency) emitting real
//! [`WorkerEvent`]s, with a completion hook that runs — and commits — before
//! `JobCompleted` is emitted.
//!
//! ## Host wiring
//!
//! 1. Build the bridge from the shared `EventBus` and `ConnectionRegistry`:
//!    `JobBridge::new(&bus, &registry, JobBridgeConfig::default())`, add
//!    `.with_queue_stats(..)` (the job table) and `.with_cancellation(token)`,
//!    then `.spawn(worker.subscribe())` with the worker's broadcast receiver
//!    (matric-jobs' worker, or a `simulator::SimulatedWorker` in demo mode,
//!    whose `stats_source()` is a [`QueueStats`]).
//! 2. Pass [`JobBridgeHandle::queue_snapshot`] to the WebSocket and SSE
//!    endpoints as their `QueueSnapshot`.
//! 3. Note handlers publish through [`AfterCommit`] (or [`NoteEvents`] for
//!    changes that are already committed).
//! 4. On shutdown: stop the worker (its channel closes and the bridge ends
//!    after flushing), or cancel the token; `join()`/`shutdown()` return the
//!    final [`BridgeStatsSnapshot`].
//!
//! ## Example
//!
//! ```
//! use event_bridge_jobs::{JobBridge, JobBridgeConfig, WorkerEvent};
//! use event_core::{ConnectionRegistry, EventBus, Received, ServerEvent};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bus = EventBus::default();
//! let registry = ConnectionRegistry::new();
//! let mut sub = bus.subscribe();
//!
//! let (worker, worker_rx) = tokio::sync::broadcast::channel(1024);
//! let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default()).spawn(worker_rx);
//! // Host: give `bridge.queue_snapshot()` to the WebSocket/SSE endpoints.
//!
//! let job_id = uuid::Uuid::now_v7();
//! let job_type = "AiRevision".to_owned();
//! worker.send(WorkerEvent::JobStarted { job_id, job_type: job_type.clone(), note_id: None }).unwrap();
//! worker.send(WorkerEvent::JobProgress { job_id, note_id: None, percent: 140, message: None }).unwrap();
//! worker.send(WorkerEvent::JobFailed { job_id, job_type, note_id: None,
//!     error: "POST https://llm.internal/v1 failed: operation timed out".into() }).unwrap();
//! drop(worker);
//! bridge.join().await;
//!
//! let mut seen = Vec::new();
//! while let Some(Received::Event(ev)) = sub.try_recv() {
//!     seen.push(std::str::from_utf8(ev.json()).unwrap().to_owned());
//! }
//! assert!(seen.iter().any(|j| j.contains(r#""progress":100"#)));
//! assert!(seen.iter().any(|j| j.contains(r#""error":"timed_out""#)));
//! assert!(!seen.iter().any(|j| j.contains("llm.internal")));
//! # }
//! ```

pub mod after_commit;
mod bridge;
mod classify;
mod core;
mod error;
mod notes;
#[cfg(feature = "simulator")]
pub mod simulator;
mod stats;
mod worker;

pub use after_commit::{AfterCommit, PendingEvents};
pub use bridge::{
    JobBridge, JobBridgeConfig, JobBridgeHandle, QueueStats, QueueView, queue_stats_fn,
};
pub use classify::{DefaultClassifier, ErrorClassifier, classify_error, codes};
pub use error::Error;
pub use notes::{NoteChange, NoteEvents};
pub use stats::{BridgeStats, BridgeStatsSnapshot};
pub use worker::WorkerEvent;
