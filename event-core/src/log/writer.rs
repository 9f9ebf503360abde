//! Group commit: the tap that queues each published event and the task that
//! appends the queue to the log in batches.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Counter, Histogram, ObservableGauge};
use time::OffsetDateTime;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{EventLog, LogBounds, LogError, Retention};
use crate::bus::{EventBus, Tap, TapId};
use crate::event::Event;
use crate::metrics;

/// How a [`LogWriter`] batches, waits and prunes.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Most events in one append (one transaction). Default 4,096.
    pub max_batch: usize,
    /// Events queued and not yet committed before durable publishers wait
    /// (`EVENT_LOG_MAX_PENDING`). Default 100,000. Events of publishers
    /// that do not wait are dropped from the log past twice this.
    pub max_pending: usize,
    /// How long [`EventBus::publish_durable`] waits for room in the queue
    /// and then for its commit (`EVENT_LOG_COMMIT_TIMEOUT_MS`). Default 5 s.
    pub commit_timeout: Duration,
    /// What the log keeps (`EVENT_LOG_MAX_AGE_SECS`, `EVENT_LOG_MAX_EVENTS`,
    /// `EVENT_LOG_MAX_BYTES`).
    pub retention: Retention,
    /// How often retention is applied. Default 60 s.
    pub prune_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_batch: 4096,
            max_pending: 100_000,
            commit_timeout: Duration::from_secs(5),
            retention: Retention::default(),
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// Counters of a [`LogWriter`] (read through [`LogWriter::stats`]).
#[derive(Debug, Default)]
pub(crate) struct LogStats {
    appended: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    pruned: AtomicU64,
    first_seq: AtomicU64,
    last_seq: AtomicU64,
    stored_events: AtomicU64,
    stored_bytes: AtomicU64,
}

/// A copy of a [`LogWriter`]'s counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStatsSnapshot {
    /// Events appended.
    pub appended: u64,
    /// Appends (transactions).
    pub batches: u64,
    /// Failed appends (each retried).
    pub errors: u64,
    /// Events not logged because the queue was full.
    pub dropped: u64,
    /// Events removed by retention.
    pub pruned: u64,
    /// Events queued and not yet committed.
    pub pending: u64,
    /// The committed mark: every event at or below it is stored.
    pub committed_seq: u64,
    /// The log's extent as last read (at start, after each prune).
    pub bounds: LogBounds,
}

/// Sequence ranges the tap could not queue, newest last, for durable
/// publishers to check their events against.
const MAX_DROPPED_RANGES: usize = 1024;

struct Shared {
    /// Each event with the moment it was queued.
    queue: Mutex<VecDeque<(Arc<Event>, Instant)>>,
    /// Wakes the writer task.
    wake: Notify,
    /// Wakes durable publishers waiting for room.
    room: Notify,
    pending: AtomicUsize,
    /// The newest event queued (not dropped).
    queued_through: AtomicU64,
    committed: watch::Sender<u64>,
    dropped: Mutex<VecDeque<(u64, u64)>>,
    stats: LogStats,
    config: LogConfig,
    stop: CancellationToken,
    instruments: Instruments,
}

struct Instruments {
    appended: Counter<u64>,
    dropped: Counter<u64>,
    errors: Counter<u64>,
    append_seconds: Histogram<f64>,
    commit_wait_seconds: Histogram<f64>,
    _gauges: Vec<ObservableGauge<u64>>,
}

impl Instruments {
    fn new(shared: &std::sync::Weak<Shared>) -> Self {
        let meter = metrics::meter();
        let gauge = |name, description, read: fn(&Shared) -> u64| {
            metrics::weak_gauge(&meter, name, description, shared, read)
        };
        let instruments = Instruments {
            appended: meter
                .u64_counter(metrics::LOG_APPENDED)
                .with_description("Events appended to the event log")
                .build(),
            dropped: meter
                .u64_counter(metrics::LOG_DROPPED)
                .with_description("Events not logged because the log's queue was full")
                .build(),
            errors: meter
                .u64_counter(metrics::LOG_APPEND_ERRORS)
                .with_description("Failed appends to the event log (each is retried)")
                .build(),
            append_seconds: meter
                .f64_histogram(metrics::LOG_APPEND_SECONDS)
                .with_description("Time of one append (one batch, one transaction)")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ])
                .build(),
            commit_wait_seconds: meter
                .f64_histogram(metrics::LOG_COMMIT_WAIT_SECONDS)
                .with_description(
                    "Time from an event's publication to its commit: the oldest event of each batch",
                )
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ])
                .build(),
            _gauges: vec![
                gauge(
                    metrics::LOG_PENDING,
                    "Events queued for the log, not yet committed",
                    |s| s.pending.load(Ordering::Relaxed) as u64,
                ),
                gauge(
                    metrics::LOG_FIRST_SEQ,
                    "Sequence number of the oldest event in the log",
                    |s| s.stats.first_seq.load(Ordering::Relaxed),
                ),
                gauge(
                    metrics::LOG_LAST_SEQ,
                    "Sequence number of the newest committed event",
                    |s| s.stats.last_seq.load(Ordering::Relaxed),
                ),
                gauge(metrics::LOG_EVENTS, "Events stored in the log", |s| {
                    s.stats.stored_events.load(Ordering::Relaxed)
                }),
                gauge(
                    metrics::LOG_BYTES,
                    "Bytes of envelope JSON stored in the log",
                    |s| s.stats.stored_bytes.load(Ordering::Relaxed),
                ),
            ],
        };
        // Served at 0 from the start, so `increase()` and alerts see them.
        for counter in [
            &instruments.appended,
            &instruments.dropped,
            &instruments.errors,
        ] {
            counter.add(0, &[]);
        }
        instruments
    }
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<(Arc<Event>, Instant)>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dropped(&self) -> MutexGuard<'_, VecDeque<(u64, u64)>> {
        self.dropped.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn was_dropped(&self, seq: u64) -> bool {
        self.dropped()
            .iter()
            .any(|&(first, last)| (first..=last).contains(&seq))
    }

    fn set_bounds(&self, bounds: LogBounds) {
        let s = &self.stats;
        s.first_seq.store(bounds.first_seq, Ordering::Relaxed);
        s.last_seq.fetch_max(bounds.last_seq, Ordering::Relaxed);
        s.stored_events.store(bounds.events, Ordering::Relaxed);
        s.stored_bytes.store(bounds.bytes, Ordering::Relaxed);
    }
}

/// The bus side: called by the publisher under the bus's ordering lock.
struct LogTap(Arc<Shared>);

impl Tap for LogTap {
    fn take(&self, event: &Arc<Event>) {
        let shared = &self.0;
        if shared.pending.load(Ordering::Relaxed) >= shared.config.max_pending.saturating_mul(2) {
            let seq = event.seq();
            let mut dropped = shared.dropped();
            match dropped.back_mut() {
                Some((_, last)) if *last + 1 == seq => *last = seq,
                _ => {
                    if dropped.len() == MAX_DROPPED_RANGES {
                        dropped.pop_front();
                    }
                    dropped.push_back((seq, seq));
                }
            }
            drop(dropped);
            if shared.stats.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                tracing::error!(seq, "event log queue full: events are not being logged");
            }
            shared.instruments.dropped.add(1, &[]);
            return;
        }
        shared.pending.fetch_add(1, Ordering::Relaxed);
        shared.queued_through.store(event.seq(), Ordering::Relaxed);
        shared.queue().push_back((event.clone(), Instant::now()));
        shared.wake.notify_one();
    }
}

/// Appends every event a bus publishes to an [`EventLog`], in batches, and
/// applies retention. See the [module documentation](super).
///
/// ```
/// use std::sync::Arc;
/// use event_core::log::{EventLog, LogConfig, LogWriter, MemoryLog};
/// use event_core::{EventBus, EventMeta, QueueStatus};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = EventBus::default();
/// let log = MemoryLog::default();
/// let writer = LogWriter::start(&bus, Arc::new(log.clone()), LogConfig::default()).await.unwrap();
/// // Resolves once the event is in the log.
/// let events = bus.publish_durable([QueueStatus::new(2, 1)], &EventMeta::default()).await.unwrap();
/// assert_eq!(log.bounds().await.unwrap().last_seq, events[0].seq());
/// writer.shutdown(std::time::Duration::from_secs(1)).await;
/// # }
/// ```
pub struct LogWriter {
    bus: EventBus,
    shared: Arc<Shared>,
    tap: TapId,
    tasks: Vec<JoinHandle<()>>,
    log: Arc<dyn EventLog>,
}

impl std::fmt::Debug for LogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogWriter")
            .field("log", &self.log.name())
            .field("stats", &self.stats())
            .finish()
    }
}

impl LogWriter {
    /// Reads the log's extent, taps `bus` and starts the writer and pruner
    /// tasks; from now on [`EventBus::publish_durable`] waits for this log.
    ///
    /// Build the bus so that its sequence continues after
    /// [`LogBounds::last_seq`] (read it with [`EventLog::bounds`] first):
    /// an event at or below a stored sequence would be skipped by the log.
    pub async fn start(
        bus: &EventBus,
        log: Arc<dyn EventLog>,
        config: LogConfig,
    ) -> Result<LogWriter, LogError> {
        Self::start_on(bus, log, config, &tokio::runtime::Handle::current()).await
    }

    /// [`start`](Self::start), with the writer and pruner tasks on
    /// `runtime`.
    ///
    /// Every durable publish waits for the writer's commit, so the writer
    /// must be scheduled promptly even when the runtime that serves the
    /// connections is saturated by fan-out writes: there, each wake of the
    /// writer queues behind thousands of connection tasks and publishers
    /// time out waiting for commits that are late only for want of a turn.
    /// A host gives the writer a runtime (a thread) of its own.
    pub async fn start_on(
        bus: &EventBus,
        log: Arc<dyn EventLog>,
        config: LogConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Result<LogWriter, LogError> {
        let bounds = log.bounds().await?;
        let shared = Arc::new_cyclic(|weak| Shared {
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            room: Notify::new(),
            pending: AtomicUsize::new(0),
            queued_through: AtomicU64::new(0),
            committed: watch::Sender::new(0),
            dropped: Mutex::new(VecDeque::new()),
            stats: LogStats::default(),
            config: LogConfig {
                max_batch: config.max_batch.max(1),
                max_pending: config.max_pending.max(1),
                ..config
            },
            stop: CancellationToken::new(),
            instruments: Instruments::new(weak),
        });
        shared.set_bounds(bounds);
        let (tap, seen_through) = bus.add_tap(Arc::new(LogTap(shared.clone())));
        // Everything before the tap is as committed as it will ever be.
        shared.committed.send_replace(seen_through);
        bus.set_durability(Some(Durability(shared.clone())));
        let tasks = vec![
            runtime.spawn(write_loop(shared.clone(), log.clone())),
            runtime.spawn(prune_loop(shared.clone(), log.clone())),
        ];
        Ok(LogWriter {
            bus: bus.clone(),
            shared,
            tap,
            tasks,
            log,
        })
    }

    /// The log written to.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// The counters as they are now.
    pub fn stats(&self) -> LogStatsSnapshot {
        let s = &self.shared.stats;
        LogStatsSnapshot {
            appended: s.appended.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            pruned: s.pruned.load(Ordering::Relaxed),
            pending: self.shared.pending.load(Ordering::Relaxed) as u64,
            committed_seq: *self.shared.committed.borrow(),
            bounds: LogBounds {
                first_seq: s.first_seq.load(Ordering::Relaxed),
                last_seq: s.last_seq.load(Ordering::Relaxed),
                events: s.stored_events.load(Ordering::Relaxed),
                bytes: s.stored_bytes.load(Ordering::Relaxed),
            },
        }
    }

    /// Waits until every event queued so far is committed, up to
    /// `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), LogError> {
        let through = self.shared.queued_through.load(Ordering::Relaxed);
        Durability(self.shared.clone())
            .committed(through, timeout)
            .await
    }

    /// Stops taking events, appends what is queued (until `deadline`) and
    /// stops the tasks. Events published after this are not logged.
    pub async fn shutdown(self, deadline: Duration) {
        self.bus.remove_tap(self.tap);
        self.bus.set_durability(None);
        self.shared.stop.cancel();
        self.shared.wake.notify_one();
        let stop = async {
            for task in self.tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(deadline, stop).await.is_err() {
            tracing::warn!(
                pending = self.shared.pending.load(Ordering::Relaxed),
                "event log writer did not finish within the shutdown deadline"
            );
        }
    }
}

/// What the bus holds to make [`EventBus::publish_durable`] wait.
#[derive(Clone)]
pub(crate) struct Durability(Arc<Shared>);

impl Durability {
    /// Waits (up to `timeout`) until the queue has room: durable publishers
    /// are the ones that can be slowed down, so they are.
    pub(crate) async fn room(&self, timeout: Duration) -> Result<(), LogError> {
        let shared = &self.0;
        let wait = async {
            loop {
                let notified = shared.room.notified();
                if shared.pending.load(Ordering::Relaxed) < shared.config.max_pending {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| LogError::Timeout(timeout))
    }

    /// Waits (up to `timeout`) until the event at `seq` is committed.
    pub(crate) async fn committed(&self, seq: u64, timeout: Duration) -> Result<(), LogError> {
        let mut rx = self.0.committed.subscribe();
        match tokio::time::timeout(timeout, rx.wait_for(|c| *c >= seq)).await {
            Err(_) => Err(LogError::Timeout(timeout)),
            Ok(Err(_)) => Err(LogError::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    pub(crate) fn committed_now(&self) -> u64 {
        *self.0.committed.borrow()
    }

    pub(crate) fn watch_committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.committed.subscribe()
    }

    pub(crate) fn was_dropped(&self, seq: u64) -> bool {
        self.0.was_dropped(seq)
    }

    pub(crate) fn commit_timeout(&self) -> Duration {
        self.0.config.commit_timeout
    }
}

async fn write_loop(shared: Arc<Shared>, log: Arc<dyn EventLog>) {
    let mut batch = Vec::with_capacity(shared.config.max_batch.min(4096));
    loop {
        let oldest = {
            let mut queue = shared.queue();
            let n = queue.len().min(shared.config.max_batch);
            let oldest = queue.front().map(|(_, at)| *at);
            batch.extend(queue.drain(..n).map(|(event, _)| event));
            oldest
        };
        if batch.is_empty() {
            if shared.stop.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = shared.stop.cancelled() => {}
            }
            continue;
        }
        append_until_stored(&shared, log.as_ref(), &batch).await;
        let last = batch.last().map_or(0, |e| e.seq());
        let n = batch.len();
        batch.clear();
        shared.pending.fetch_sub(n, Ordering::Relaxed);
        shared.stats.last_seq.fetch_max(last, Ordering::Relaxed);
        shared.committed.send_replace(last);
        shared.room.notify_waiters();
        if let Some(at) = oldest {
            shared
                .instruments
                .commit_wait_seconds
                .record(at.elapsed().as_secs_f64(), &[]);
        }
    }
}

/// Appends one batch, retrying with backoff until it is stored: an event
/// accepted into the queue is not given up on while the process lives.
async fn append_until_stored(shared: &Shared, log: &dyn EventLog, batch: &[Arc<Event>]) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let started = Instant::now();
        match log.append(batch).await {
            Ok(()) => {
                let n = batch.len() as u64;
                let bytes: u64 = batch.iter().map(|e| e.envelope_json().len() as u64).sum();
                let s = &shared.stats;
                s.appended.fetch_add(n, Ordering::Relaxed);
                s.batches.fetch_add(1, Ordering::Relaxed);
                s.stored_events.fetch_add(n, Ordering::Relaxed);
                s.stored_bytes.fetch_add(bytes, Ordering::Relaxed);
                if s.first_seq.load(Ordering::Relaxed) == 0 {
                    s.first_seq
                        .store(batch.first().map_or(0, |e| e.seq()), Ordering::Relaxed);
                }
                shared.instruments.appended.add(n, &[]);
                shared
                    .instruments
                    .append_seconds
                    .record(started.elapsed().as_secs_f64(), &[]);
                return;
            }
            Err(error) => {
                shared.stats.errors.fetch_add(1, Ordering::Relaxed);
                shared.instruments.errors.add(1, &[]);
                tracing::warn!(
                    %error,
                    events = batch.len(),
                    retry_in_ms = backoff.as_millis() as u64,
                    "event log append failed"
                );
                if shared.stop.is_cancelled() && backoff >= Duration::from_secs(1) {
                    tracing::error!(
                        events = batch.len(),
                        "event log append abandoned at shutdown"
                    );
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Applies each topic's own retention. The log raises each watermark
/// itself, before the events go (`EventLog::prune_topic`); storing the
/// record read at the round's start here would also undo a retention
/// changed meanwhile.
async fn prune_topics(log: &dyn EventLog) {
    let topics = match log.topic_retentions().await {
        Ok(topics) => topics,
        Err(error) => {
            tracing::warn!(%error, "topic retentions unreadable");
            return;
        }
    };
    for record in topics {
        let Some(retention) = record.retention else {
            continue;
        };
        match log
            .prune_topic(&record.topic, &retention, OffsetDateTime::now_utc())
            .await
        {
            Ok(Some(through)) => {
                tracing::debug!(topic = %record.topic, through, "topic pruned");
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, topic = %record.topic, "topic prune failed"),
        }
    }
}

async fn prune_loop(shared: Arc<Shared>, log: Arc<dyn EventLog>) {
    let mut tick =
        tokio::time::interval(shared.config.prune_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.stop.cancelled() => return,
        }
        match log
            .prune(&shared.config.retention, OffsetDateTime::now_utc())
            .await
        {
            Ok(n) => {
                shared.stats.pruned.fetch_add(n, Ordering::Relaxed);
                if n > 0 {
                    tracing::debug!(removed = n, "event log pruned");
                }
            }
            Err(error) => tracing::warn!(%error, "event log prune failed"),
        }
        prune_topics(log.as_ref()).await;
        match log.bounds().await {
            Ok(bounds) => shared.set_bounds(bounds),
            Err(error) => tracing::warn!(%error, "event log bounds unreadable"),
        }
    }
}
