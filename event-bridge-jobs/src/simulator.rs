//! A simulated job worker (feature `simulator`).
//!
//! # Model
//!
//! [`SimulatedWorker`] is an in-process job queue with a fixed number of
//! worker slots. Each job runs `steps` steps of `step_duration`, reporting
//! progress after each, and then completes — or fails at a random step with
//! probability `failure_rate`, with realistic raw error text that the bridge
//! turns into a short code. It emits real [`WorkerEvent`]s on a broadcast
//! channel, exactly like matric-jobs' worker, so the host's demo mode, the
//! examples and the tests run the same [`JobBridge`](crate::JobBridge) path
//! as production.
//!
//! A [`CompletionHook`] registered for a job type runs after the last step
//! and *before* `JobCompleted` is emitted; the job completes only when the
//! hook returns `Ok`, and fails with the hook's error otherwise. That is
//! where the host's `AiRevision` job edits its note (committing through an
//! [`AfterCommit`](crate::AfterCommit)), so `NoteUpdated` always precedes
//! `JobCompleted`.
//!
//! ```
//! use event_bridge_jobs::simulator::{SimulatedWorker, SimulatorConfig};
//! use event_bridge_jobs::WorkerEvent;
//! use std::time::Duration;
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let worker = SimulatedWorker::start(SimulatorConfig {
//!     steps: 2,
//!     step_duration: Duration::from_millis(1),
//!     ..SimulatorConfig::default()
//! });
//! let mut events = worker.subscribe();
//! let job_id = worker.submit("Embedding", None).unwrap();
//! loop {
//!     match events.recv().await.unwrap() {
//!         WorkerEvent::JobCompleted { job_id: done, .. } if done == job_id => break,
//!         _ => {}
//!     }
//! }
//! worker.shutdown().await;
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use event_core::{QueueStatus, async_trait};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use crate::Error;
use crate::bridge::QueueStats;
use crate::worker::WorkerEvent;

/// Raw failure texts, as real backends word them.
const FAILURES: [&str; 5] = [
    "request to inference backend timed out after 30s",
    "HTTP 429 Too Many Requests: rate limit exceeded",
    "error sending request: connection refused (os error 111)",
    "model returned invalid JSON: expected value at line 1 column 1",
    "embedding dimension mismatch in vector index",
];

/// How the simulated worker behaves. `Default` suits a live demo.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Steps per job; progress is reported after each. Default 5.
    pub steps: u32,
    /// How long each step takes. Default 400 ms.
    pub step_duration: Duration,
    /// Probability (0–1) that an attempt fails at a random step. Default 0.
    pub failure_rate: f64,
    /// How often a failed attempt is retried (`JobRetryScheduled`, back to
    /// the queue) before the job fails for good. Default 0.
    pub retries: u32,
    /// Jobs running at once. Default 2.
    pub concurrency: usize,
    /// Capacity of the worker event channel. Default 1024.
    pub channel_capacity: usize,
    /// Seed for the failure dice (reproducible runs); random when `None`.
    pub seed: Option<u64>,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            steps: 5,
            step_duration: Duration::from_millis(400),
            failure_rate: 0.0,
            retries: 0,
            concurrency: 2,
            channel_capacity: 1024,
            seed: None,
        }
    }
}

/// Exactly how one job will run (overrides the configuration's dice).
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// Steps; progress is reported after each.
    pub steps: u32,
    /// Duration of each step.
    pub step_duration: Duration,
    /// Fail instead of finishing this step (0 = right after starting), with
    /// this raw error text. Applies to the first attempt; retries roll the
    /// configured failure dice.
    pub fail_at: Option<(u32, String)>,
}

/// A job as the completion hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedJob {
    /// The job.
    pub job_id: Uuid,
    /// Its type.
    pub job_type: String,
    /// The note it works on, if any.
    pub note_id: Option<Uuid>,
}

/// The error a completion hook may return; its text becomes the job's raw
/// failure (classified by the bridge).
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Work to do when a job's steps are done, before it is reported completed.
///
/// Implemented for async closures `Fn(SimulatedJob) -> impl Future<Output =
/// Result<(), HookError>>`.
#[async_trait]
pub trait CompletionHook: Send + Sync + 'static {
    /// Runs the job's final work; `Err` fails the job instead of completing it.
    async fn before_complete(&self, job: &SimulatedJob) -> Result<(), HookError>;
}

#[async_trait]
impl<F, Fut> CompletionHook for F
where
    F: Fn(SimulatedJob) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HookError>> + Send + 'static,
{
    async fn before_complete(&self, job: &SimulatedJob) -> Result<(), HookError> {
        self(job.clone()).await
    }
}

struct QueuedJob {
    job: SimulatedJob,
    plan: JobPlan,
    /// 1-based.
    attempt: u32,
}

/// Why an attempt did not complete.
enum Failure {
    /// Shutdown: never retried.
    Cancelled,
    /// Raw error text: retried while attempts remain.
    Error(String),
}

const CANCELLED: &str = "job cancelled: worker shutting down";

struct Inner {
    config: SimulatorConfig,
    sender: Mutex<Option<broadcast::Sender<WorkerEvent>>>,
    queue: mpsc::UnboundedSender<QueuedJob>,
    hooks: RwLock<HashMap<String, Arc<dyn CompletionHook>>>,
    pending: AtomicU64,
    running: AtomicU64,
    rng: Mutex<StdRng>,
    cancel: CancellationToken,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment or lookup.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    fn emit(&self, event: WorkerEvent) {
        if let Some(sender) = lock(&self.sender).as_ref() {
            // No receiver is fine: nobody is listening yet.
            let _ = sender.send(event);
        }
    }

    /// Rolls the failure dice: the step to fail at and the raw error.
    fn roll_failure(&self) -> Option<(u32, String)> {
        let mut rng = lock(&self.rng);
        rng.random_bool(self.config.failure_rate).then(|| {
            let step = rng.random_range(0..=self.config.steps);
            let error = FAILURES[rng.random_range(0..FAILURES.len())];
            (step, error.to_owned())
        })
    }

    fn hook(&self, job_type: &str) -> Option<Arc<dyn CompletionHook>> {
        self.hooks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(job_type)
            .cloned()
    }

    fn finish(&self, job: &SimulatedJob, error: Option<String>, started: tokio::time::Instant) {
        self.running.fetch_sub(1, Ordering::Relaxed);
        let SimulatedJob {
            job_id,
            job_type,
            note_id,
        } = job.clone();
        self.emit(match error {
            None => WorkerEvent::JobCompleted {
                job_id,
                job_type,
                note_id,
                duration_ms: Some(u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)),
            },
            Some(error) => WorkerEvent::JobFailed {
                job_id,
                job_type,
                note_id,
                error,
            },
        });
    }
}

/// A simulated job worker. Cheap to clone; the worker stops when
/// [`shutdown`](Self::shutdown) is called or the last clone is dropped.
#[derive(Clone)]
pub struct SimulatedWorker {
    inner: Arc<Inner>,
    _stop_on_drop: Arc<DropGuard>,
}

impl std::fmt::Debug for SimulatedWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedWorker")
            .field("config", &self.inner.config)
            .field("pending", &self.inner.pending.load(Ordering::Relaxed))
            .field("running", &self.inner.running.load(Ordering::Relaxed))
            .finish()
    }
}

impl SimulatedWorker {
    /// Starts the worker on the current Tokio runtime. Out-of-range values
    /// are clamped (failure rate into 0–1, at least one slot).
    pub fn start(config: SimulatorConfig) -> Self {
        let mut config = config;
        config.failure_rate = if config.failure_rate.is_finite() {
            config.failure_rate.clamp(0.0, 1.0)
        } else {
            0.0
        };
        config.concurrency = config.concurrency.max(1);
        let (sender, _) = broadcast::channel(config.channel_capacity.max(1));
        let (queue, jobs) = mpsc::unbounded_channel();
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let cancel = CancellationToken::new();
        let inner = Arc::new(Inner {
            config,
            sender: Mutex::new(Some(sender)),
            queue,
            hooks: RwLock::new(HashMap::new()),
            pending: AtomicU64::new(0),
            running: AtomicU64::new(0),
            rng: Mutex::new(rng),
            cancel: cancel.clone(),
            dispatcher: Mutex::new(None),
        });
        let handle = tokio::spawn(dispatch(inner.clone(), jobs));
        *lock(&inner.dispatcher) = Some(handle);
        SimulatedWorker {
            inner,
            _stop_on_drop: Arc::new(cancel.drop_guard()),
        }
    }

    /// A receiver of the worker's events from now on (give it to
    /// [`JobBridge::spawn`](crate::JobBridge::spawn)). After shutdown it is
    /// already closed.
    pub fn subscribe(&self) -> broadcast::Receiver<WorkerEvent> {
        match lock(&self.inner.sender).as_ref() {
            Some(sender) => sender.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Runs `hook` before completing every job of `job_type` (replacing an
    /// earlier hook for that type).
    pub fn on_complete(&self, job_type: impl Into<String>, hook: impl CompletionHook) {
        self.inner
            .hooks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_type.into(), Arc::new(hook));
    }

    /// Queues a job with the configured steps and failure dice; returns its id.
    /// `JobQueued` is emitted before this returns.
    pub fn submit(&self, job_type: &str, note_id: Option<Uuid>) -> Result<Uuid, Error> {
        let config = &self.inner.config;
        let fail_at = self.inner.roll_failure();
        self.submit_plan(
            job_type,
            note_id,
            JobPlan {
                steps: config.steps,
                step_duration: config.step_duration,
                fail_at,
            },
        )
    }

    /// Queues a job that runs exactly as `plan` says; returns its id.
    pub fn submit_plan(
        &self,
        job_type: &str,
        note_id: Option<Uuid>,
        plan: JobPlan,
    ) -> Result<Uuid, Error> {
        if self.inner.cancel.is_cancelled() {
            return Err(Error::WorkerStopped);
        }
        let job = SimulatedJob {
            job_id: Uuid::now_v7(),
            job_type: job_type.to_owned(),
            note_id,
        };
        self.inner.pending.fetch_add(1, Ordering::Relaxed);
        // Emitted before the job can be picked up, so `JobQueued` always
        // comes first.
        self.inner.emit(WorkerEvent::JobQueued {
            job_id: job.job_id,
            job_type: job.job_type.clone(),
            note_id,
        });
        let job_id = job.job_id;
        if let Err(mpsc::error::SendError(lost)) = self.inner.queue.send(QueuedJob {
            job,
            plan,
            attempt: 1,
        }) {
            self.inner.pending.fetch_sub(1, Ordering::Relaxed);
            self.inner.running.fetch_add(1, Ordering::Relaxed);
            self.inner.finish(
                &lost.job,
                Some(CANCELLED.to_owned()),
                tokio::time::Instant::now(),
            );
            return Err(Error::WorkerStopped);
        }
        Ok(job_id)
    }

    /// The worker's queue depth as a [`QueueStats`] source for the
    /// [`JobBridge`](crate::JobBridge). Holding it does not keep the worker
    /// running.
    pub fn stats_source(&self) -> Arc<dyn QueueStats> {
        Arc::new(SimulatorStats(self.inner.clone()))
    }

    /// Jobs waiting and running right now.
    pub fn queue_status(&self) -> QueueStatus {
        QueueStatus::new(
            self.inner.pending.load(Ordering::Relaxed),
            self.inner.running.load(Ordering::Relaxed),
        )
    }

    /// Stops the worker: queued and running jobs fail as cancelled,
    /// `WorkerStopped` is emitted, and the event channel closes (so a
    /// [`JobBridge`](crate::JobBridge) on it ends).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        let dispatcher = lock(&self.inner.dispatcher).take();
        if let Some(handle) = dispatcher
            && let Err(error) = handle.await
        {
            tracing::error!(%error, "simulated worker dispatcher failed");
        }
        lock(&self.inner.sender).take();
    }
}

/// The simulator's queue depth; holds the shared state but not the
/// stop-on-drop guard, so it does not keep the worker running.
struct SimulatorStats(Arc<Inner>);

#[async_trait]
impl QueueStats for SimulatorStats {
    async fn queue_stats(&self) -> Result<QueueStatus, Error> {
        Ok(QueueStatus::new(
            self.0.pending.load(Ordering::Relaxed),
            self.0.running.load(Ordering::Relaxed),
        ))
    }
}

async fn dispatch(inner: Arc<Inner>, mut jobs: mpsc::UnboundedReceiver<QueuedJob>) {
    inner.emit(WorkerEvent::WorkerStarted);
    let slots = Arc::new(Semaphore::new(inner.config.concurrency));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            () = inner.cancel.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            permit = slots.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let next = tokio::select! {
            biased;
            () = inner.cancel.cancelled() => break,
            next = jobs.recv() => next,
        };
        let Some(queued) = next else { break };
        let inner = inner.clone();
        running.spawn(async move {
            run_job(&inner, queued).await;
            drop(permit);
        });
    }
    jobs.close();
    while let Ok(queued) = jobs.try_recv() {
        inner.pending.fetch_sub(1, Ordering::Relaxed);
        inner.running.fetch_add(1, Ordering::Relaxed);
        inner.finish(
            &queued.job,
            Some(CANCELLED.to_owned()),
            tokio::time::Instant::now(),
        );
    }
    while running.join_next().await.is_some() {}
    inner.emit(WorkerEvent::WorkerStopped);
    // Close the channel now, even if clones of the worker (or its stats
    // source) live on, so a bridge reading it ends.
    lock(&inner.sender).take();
}

async fn run_job(inner: &Inner, queued: QueuedJob) {
    let QueuedJob { job, plan, attempt } = queued;
    inner.pending.fetch_sub(1, Ordering::Relaxed);
    inner.running.fetch_add(1, Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    inner.emit(WorkerEvent::JobStarted {
        job_id: job.job_id,
        job_type: job.job_type.clone(),
        note_id: job.note_id,
    });
    match run_attempt(inner, &job, &plan).await {
        Ok(()) => inner.finish(&job, None, started),
        Err(Failure::Cancelled) => inner.finish(&job, Some(CANCELLED.to_owned()), started),
        Err(Failure::Error(error))
            if attempt <= inner.config.retries && !inner.cancel.is_cancelled() =>
        {
            inner.running.fetch_sub(1, Ordering::Relaxed);
            inner.pending.fetch_add(1, Ordering::Relaxed);
            inner.emit(WorkerEvent::JobRetryScheduled {
                job_id: job.job_id,
                job_type: job.job_type.clone(),
                note_id: job.note_id,
                attempt: attempt + 1,
                delay_ms: None,
            });
            let retry = QueuedJob {
                job,
                plan: JobPlan {
                    fail_at: inner.roll_failure(),
                    ..plan
                },
                attempt: attempt + 1,
            };
            if let Err(mpsc::error::SendError(lost)) = inner.queue.send(retry) {
                inner.pending.fetch_sub(1, Ordering::Relaxed);
                inner.running.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%error, "retry dropped: the worker is stopping");
                inner.finish(&lost.job, Some(CANCELLED.to_owned()), started);
            }
        }
        Err(Failure::Error(error)) => inner.finish(&job, Some(error), started),
    }
}

/// One attempt: the steps with their progress, then the completion hook.
async fn run_attempt(inner: &Inner, job: &SimulatedJob, plan: &JobPlan) -> Result<(), Failure> {
    let fail_at = plan.fail_at.as_ref();
    if let Some((0, error)) = fail_at {
        return Err(Failure::Error(error.clone()));
    }
    for step in 1..=plan.steps {
        tokio::select! {
            () = inner.cancel.cancelled() => return Err(Failure::Cancelled),
            () = tokio::time::sleep(plan.step_duration) => {}
        }
        if let Some((at, error)) = fail_at
            && *at == step
        {
            return Err(Failure::Error(error.clone()));
        }
        let percent = i32::try_from(u64::from(step) * 100 / u64::from(plan.steps)).unwrap_or(100);
        inner.emit(WorkerEvent::JobProgress {
            job_id: job.job_id,
            note_id: job.note_id,
            percent,
            message: Some(format!("Step {step}/{}", plan.steps)),
        });
    }
    match inner.hook(&job.job_type) {
        Some(hook) => hook
            .before_complete(job)
            .await
            .map_err(|e| Failure::Error(e.to_string())),
        None => Ok(()),
    }
}
