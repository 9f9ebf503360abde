//! The bridge's state machine, free of I/O and clocks.
//!
//! [`BridgeCore`] takes worker events and timer ticks with an explicit
//! `now` and appends the events to publish to an output vector. The async
//! task in [`bridge`](crate::bridge) only moves data between the worker
//! channel, the clock and the bus; every rule lives here, which is what the
//! property tests drive.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use event_core::{
    JobCompleted, JobFailed, JobProgress, JobQueued, JobStarted, QueueStatus, ServerEvent,
};
use tokio::time::Instant;
use uuid::Uuid;

use crate::classify::ErrorClassifier;
use crate::stats::BridgeStats;
use crate::worker::WorkerEvent;

/// The timing rules of the core (a subset of [`JobBridgeConfig`](crate::JobBridgeConfig)).
#[derive(Debug, Clone)]
pub(crate) struct Timing {
    pub progress_interval: Duration,
    pub progress_resend: Duration,
    pub queue_status_interval: Duration,
    pub job_idle_timeout: Duration,
    pub finished_capacity: usize,
}

/// Which queue count a job is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Pending,
    Running,
}

#[derive(Debug)]
struct JobState {
    /// Whether `JobStarted` (or something after it) was published.
    started: bool,
    slot: Slot,
    /// The highest accepted progress.
    high: Option<u8>,
    /// The message of the highest accepted progress.
    high_message: Option<String>,
    /// The last `JobProgress` published: value, message.
    last_sent: Option<(u8, Option<String>)>,
    /// When the last progress (or the start) went out; rate limit and re-send
    /// are measured from here.
    last_emit: Option<Instant>,
    /// A progress held back by the rate limit (trailing edge).
    trailing: Option<JobProgress>,
    note_id: Option<Uuid>,
    /// The last worker event for this job.
    last_activity: Instant,
    /// The job's entry in the timer index.
    timer: Option<Instant>,
}

/// The per-job ordering, rate and counting rules.
pub(crate) struct BridgeCore {
    timing: Timing,
    classifier: Arc<dyn ErrorClassifier>,
    stats: Arc<BridgeStats>,
    jobs: HashMap<Uuid, JobState>,
    timers: BTreeSet<(Instant, Uuid)>,
    finished: HashSet<Uuid>,
    finished_order: VecDeque<Uuid>,
    pending: u64,
    running: u64,
    last_status: Option<QueueStatus>,
    last_status_at: Option<Instant>,
    status_due: Option<Instant>,
    /// Worker events still to come that the last resync already counted.
    uncounted: usize,
    /// Whether the event being applied moves the counts.
    counting: bool,
}

impl BridgeCore {
    pub(crate) fn new(
        timing: Timing,
        classifier: Arc<dyn ErrorClassifier>,
        stats: Arc<BridgeStats>,
    ) -> Self {
        BridgeCore {
            timing,
            classifier,
            stats,
            jobs: HashMap::new(),
            timers: BTreeSet::new(),
            finished: HashSet::new(),
            finished_order: VecDeque::new(),
            pending: 0,
            running: 0,
            // Clients start from an empty queue; the first change is news.
            last_status: Some(QueueStatus::new(0, 0)),
            last_status_at: None,
            status_due: None,
            uncounted: 0,
            counting: true,
        }
    }

    /// The queue status from the bridge's own counts.
    pub(crate) fn counts(&self) -> QueueStatus {
        QueueStatus::new(self.pending, self.running)
    }

    /// Jobs the bridge is tracking (queued or running).
    #[cfg(test)]
    pub(crate) fn tracked_jobs(&self) -> usize {
        self.jobs.len()
    }

    /// The earliest time [`on_timer`](Self::on_timer) has work to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let job = self.timers.first().map(|(t, _)| *t);
        match (job, self.status_due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies one worker event.
    pub(crate) fn on_worker_event(
        &mut self,
        event: WorkerEvent,
        now: Instant,
        out: &mut Vec<ServerEvent>,
    ) {
        self.counting = self.uncounted == 0;
        self.uncounted = self.uncounted.saturating_sub(1);
        match event {
            WorkerEvent::JobQueued {
                job_id,
                job_type,
                note_id,
            } => self.queued(job_id, job_type, note_id, now, out),
            WorkerEvent::JobStarted {
                job_id,
                job_type,
                note_id,
            } => self.started(job_id, job_type, note_id, now, out),
            WorkerEvent::JobProgress {
                job_id,
                note_id,
                percent,
                message,
            } => self.progress(job_id, note_id, percent, message, now, out),
            WorkerEvent::JobCompleted {
                job_id,
                job_type,
                note_id,
                duration_ms,
            } => {
                let event = ServerEvent::JobCompleted(JobCompleted {
                    job_id,
                    job_type,
                    note_id,
                    duration_ms,
                });
                self.terminal(job_id, event, now, out);
            }
            WorkerEvent::JobFailed {
                job_id,
                job_type,
                note_id,
                error,
            } => {
                let code = self.classifier.classify(&job_type, &error);
                tracing::debug!(%job_id, job_type = %job_type, code, "job failed");
                let event = ServerEvent::JobFailed(JobFailed {
                    job_id,
                    job_type,
                    note_id,
                    error: code.to_owned(),
                });
                self.terminal(job_id, event, now, out);
            }
            WorkerEvent::JobRetryScheduled { job_id, .. } => {
                BridgeStats::inc(&self.stats.retries_scheduled);
                if let Some(job) = self.jobs.get_mut(&job_id) {
                    job.last_activity = now;
                    let was_running = job.slot == Slot::Running;
                    job.slot = Slot::Pending;
                    if was_running {
                        self.shift(1, -1);
                    }
                    self.reschedule(job_id);
                }
            }
            WorkerEvent::WorkerStarted | WorkerEvent::WorkerStopped => {
                BridgeStats::inc(&self.stats.worker_lifecycle);
            }
        }
        self.status_changed(now, out);
    }

    fn dropped(&self) {
        BridgeStats::inc(&self.stats.dropped_out_of_order);
    }

    fn queued(
        &mut self,
        job_id: Uuid,
        job_type: String,
        note_id: Option<Uuid>,
        now: Instant,
        out: &mut Vec<ServerEvent>,
    ) {
        if self.finished.contains(&job_id) || self.jobs.contains_key(&job_id) {
            return self.dropped();
        }
        self.jobs
            .insert(job_id, JobState::new(Slot::Pending, note_id, now));
        self.shift(1, 0);
        out.push(ServerEvent::JobQueued(JobQueued {
            job_id,
            job_type,
            note_id,
        }));
    }

    fn started(
        &mut self,
        job_id: Uuid,
        job_type: String,
        note_id: Option<Uuid>,
        now: Instant,
        out: &mut Vec<ServerEvent>,
    ) {
        if self.finished.contains(&job_id) {
            return self.dropped();
        }
        let mut newly_running = false;
        let job = self.jobs.entry(job_id).or_insert_with(|| {
            // Started without a queued event seen (the bridge came up late):
            // count it as running from here.
            newly_running = true;
            JobState::new(Slot::Running, note_id, now)
        });
        let delta = if newly_running {
            (0, 1)
        } else if job.slot == Slot::Pending {
            job.slot = Slot::Running;
            (-1, 1)
        } else {
            (0, 0)
        };
        job.last_activity = now;
        if job.note_id.is_none() {
            job.note_id = note_id;
        }
        if job.started {
            // A restart after a retry or a duplicate: clients already saw
            // the start, and progress keeps its high-water mark.
            BridgeStats::inc(&self.stats.dropped_out_of_order);
        } else {
            job.started = true;
            job.last_emit = Some(now);
            out.push(ServerEvent::JobStarted(JobStarted {
                job_id,
                job_type,
                note_id: job.note_id,
            }));
        }
        self.shift(delta.0, delta.1);
        self.reschedule(job_id);
    }

    fn progress(
        &mut self,
        job_id: Uuid,
        note_id: Option<Uuid>,
        percent: i32,
        message: Option<String>,
        now: Instant,
        out: &mut Vec<ServerEvent>,
    ) {
        if self.finished.contains(&job_id) {
            return self.dropped();
        }
        let mut newly_running = false;
        let job = self.jobs.entry(job_id).or_insert_with(|| {
            newly_running = true;
            JobState::new(Slot::Running, note_id, now)
        });
        job.last_activity = now;
        if job.note_id.is_none() {
            job.note_id = note_id;
        }
        let delta = if newly_running {
            (0, 1)
        } else if job.slot == Slot::Pending {
            // Progress after a retry without a start: it runs again.
            job.slot = Slot::Running;
            (-1, 1)
        } else {
            (0, 0)
        };
        // Clamped into range; `as` is exact after the clamp.
        let value = percent.clamp(0, 100) as u8;
        if let Some(high) = job.high
            && (value < high || (value == high && message == job.high_message))
        {
            BridgeStats::inc(&self.stats.progress_suppressed);
            self.shift(delta.0, delta.1);
            self.reschedule(job_id);
            return;
        }
        // Any start or progress published marks the job as started for
        // ordering purposes: a late `JobStarted` would go backwards.
        job.started = true;
        job.high = Some(value);
        job.high_message.clone_from(&message);
        let event = JobProgress {
            job_id,
            note_id: job.note_id,
            progress: value,
            message,
        };
        let free = job
            .last_emit
            .is_none_or(|at| now >= at + self.timing.progress_interval)
            // The start itself does not rate-limit the first progress value.
            || job.last_sent.is_none();
        if free {
            job.trailing = None;
            job.send(event, now, out);
        } else {
            if job.trailing.replace(event).is_some() {
                BridgeStats::inc(&self.stats.progress_coalesced);
            }
        }
        self.shift(delta.0, delta.1);
        self.reschedule(job_id);
    }

    fn terminal(
        &mut self,
        job_id: Uuid,
        event: ServerEvent,
        now: Instant,
        out: &mut Vec<ServerEvent>,
    ) {
        if self.finished.contains(&job_id) {
            return self.dropped();
        }
        if let Some(mut job) = self.jobs.remove(&job_id) {
            if let Some(t) = job.timer.take() {
                self.timers.remove(&(t, job_id));
            }
            if let Some(pending) = job.trailing.take() {
                job.send(pending, now, out);
            }
            match job.slot {
                Slot::Pending => self.shift(-1, 0),
                Slot::Running => self.shift(0, -1),
            }
        }
        out.push(event);
        self.remember_finished(job_id);
    }

    fn remember_finished(&mut self, job_id: Uuid) {
        if self.timing.finished_capacity == 0 {
            return;
        }
        if self.finished.insert(job_id) {
            self.finished_order.push_back(job_id);
        }
        while self.finished_order.len() > self.timing.finished_capacity {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
    }

    /// Recomputes a job's timer: trailing progress due, progress re-send,
    /// idle expiry.
    fn reschedule(&mut self, job_id: Uuid) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let mut due: Option<Instant> = None;
        let mut consider = |t: Instant| due = Some(due.map_or(t, |d| d.min(t)));
        if job.trailing.is_some() {
            consider(
                job.last_emit
                    .map_or(job.last_activity, |at| at + self.timing.progress_interval),
            );
        }
        if job.slot == Slot::Running {
            if job.started {
                let from = job.last_emit.unwrap_or(job.last_activity);
                consider(from + self.timing.progress_resend);
            }
            consider(job.last_activity + self.timing.job_idle_timeout);
        }
        if job.timer != due {
            if let Some(old) = job.timer.take() {
                self.timers.remove(&(old, job_id));
            }
            if let Some(new) = due {
                self.timers.insert((new, job_id));
            }
            job.timer = due;
        }
    }

    /// Fires every timer that is due at `now`.
    pub(crate) fn on_timer(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        while let Some(&(at, job_id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            job.timer = None;
            if job.slot == Slot::Running && now >= job.last_activity + self.timing.job_idle_timeout
            {
                // The worker went silent for too long (its terminal event was
                // probably lost in a lag): stop tracking rather than
                // re-sending progress forever.
                tracing::warn!(%job_id, "job silent past the idle timeout; no longer tracked");
                BridgeStats::inc(&self.stats.jobs_expired);
                self.jobs.remove(&job_id);
                self.counting = true;
                self.shift(0, -1);
                continue;
            }
            let interval_over = job
                .last_emit
                .is_none_or(|at| now >= at + self.timing.progress_interval);
            if interval_over && let Some(pending) = job.trailing.take() {
                job.send(pending, now, out);
            }
            if job.slot == Slot::Running
                && job.started
                && job
                    .last_emit
                    .is_none_or(|at| now >= at + self.timing.progress_resend)
            {
                // Keep a long, silent job visibly alive (UC-001: a progress
                // update at least every 5 s).
                let (progress, message) = job.last_sent.clone().unwrap_or((0, None));
                let event = JobProgress {
                    job_id,
                    note_id: job.note_id,
                    progress,
                    message,
                };
                BridgeStats::inc(&self.stats.progress_resent);
                job.send(event, now, out);
            }
            self.reschedule(job_id);
        }
        if self.status_due.is_some_and(|t| t <= now) {
            self.status_due = None;
            self.status_changed(now, out);
        }
    }

    /// Publishes a `QueueStatus` if the counts changed and the rate allows,
    /// else schedules one (coalescing).
    pub(crate) fn status_changed(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        let current = self.counts();
        if self.last_status.as_ref() == Some(&current) {
            self.status_due = None;
            return;
        }
        match self.last_status_at {
            Some(at) if now < at + self.timing.queue_status_interval => {
                if self.status_due.is_none() {
                    self.status_due = Some(at + self.timing.queue_status_interval);
                }
            }
            _ => self.emit_status(now, out),
        }
    }

    fn emit_status(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        let status = self.counts();
        self.last_status = Some(status.clone());
        self.last_status_at = Some(now);
        self.status_due = None;
        out.push(ServerEvent::QueueStatus(status));
    }

    /// Replaces the counts with the host's authoritative numbers.
    ///
    /// `already_counted` is how many worker events were waiting in the
    /// channel when the answer arrived: they happened before the query (give
    /// or take the query's own duration), so the source already counts them
    /// and applying them again would count them twice. They are still
    /// published and tracked, just not counted.
    pub(crate) fn resync(&mut self, status: &QueueStatus, already_counted: usize) {
        self.pending = status.pending;
        self.running = status.running;
        self.uncounted = already_counted;
    }

    /// Moves the queue counts, unless the current event is one the host's
    /// numbers already include.
    fn shift(&mut self, pending: i64, running: i64) {
        if !self.counting {
            return;
        }
        let apply = |n: u64, d: i64| {
            if d >= 0 {
                n.saturating_add(d.unsigned_abs())
            } else {
                n.saturating_sub(d.unsigned_abs())
            }
        };
        self.pending = apply(self.pending, pending);
        self.running = apply(self.running, running);
    }

    /// Publishes the current status now (periodic tick, after a lag), unless
    /// one went out within the coalescing interval and nothing changed since.
    pub(crate) fn publish_status(&mut self, now: Instant, force: bool, out: &mut Vec<ServerEvent>) {
        let recent = self
            .last_status_at
            .is_some_and(|at| now < at + self.timing.queue_status_interval);
        if force || !recent {
            self.emit_status(now, out);
        } else {
            self.status_changed(now, out);
        }
    }

    /// Sends every held-back progress value (the worker channel closed).
    pub(crate) fn flush(&mut self, now: Instant, out: &mut Vec<ServerEvent>) {
        for job in self.jobs.values_mut() {
            if let Some(pending) = job.trailing.take() {
                job.send(pending, now, out);
            }
        }
        if self.status_due.is_some() {
            self.emit_status(now, out);
        }
    }
}

impl JobState {
    fn new(slot: Slot, note_id: Option<Uuid>, now: Instant) -> Self {
        JobState {
            started: false,
            slot,
            high: None,
            high_message: None,
            last_sent: None,
            last_emit: None,
            trailing: None,
            note_id,
            last_activity: now,
            timer: None,
        }
    }

    fn send(&mut self, event: JobProgress, now: Instant, out: &mut Vec<ServerEvent>) {
        self.last_sent = Some((event.progress, event.message.clone()));
        self.last_emit = Some(now);
        out.push(ServerEvent::JobProgress(event));
    }
}

#[cfg(test)]
#[path = "core_tests.rs"]
mod tests;
