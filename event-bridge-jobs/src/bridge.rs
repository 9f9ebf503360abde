//! The bridge task: worker channel in, bus out, queue status on the side.
//!
//! # Model
//!
//! One task per worker channel. It reads [`WorkerEvent`]s, applies the
//! ordering, rate and counting rules (see the crate docs), and publishes the
//! resulting [`ServerEvent`]s on the [`EventBus`]. Three clocks drive it
//! besides the worker: the per-job progress timers (trailing edge, re-send),
//! the `QueueStatus` coalescing timer, and the periodic `QueueStatus` tick
//! that runs only while at least one WebSocket/SSE client is connected
//! (watched through [`ConnectionRegistry::watch_total`]); internal sinks never
//! count as clients.
//!
//! Queue depth has two sources. The bridge counts jobs from the events it
//! sees, which is free and immediate; the host's [`QueueStats`] (typically a
//! job-table query) is the source of truth. The counts drive the
//! publish-on-change path (no database round trip per job event); the source
//! is consulted at start-up, on every tick, after a worker-side lag and for
//! [`QueueSnapshot`] requests, and the counts are reset to its answer.

use std::sync::Arc;
use std::time::Duration;

use event_core::{
    Actor, ConnectionRegistry, Event, EventBus, EventKind, EventMeta, QueueSnapshot, QueueStatus,
    ServerEvent, Uuid, async_trait,
};
use opentelemetry::KeyValue;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::classify::{DefaultClassifier, ErrorClassifier};
use crate::core::{BridgeCore, Timing};
use crate::stats::{BridgeStats, BridgeStatsSnapshot};
use crate::worker::WorkerEvent;

/// How the bridge paces what it publishes. `Default` = the protocol's values.
#[derive(Debug, Clone)]
pub struct JobBridgeConfig {
    /// At most one `JobProgress` per job per this interval; the latest value
    /// is delivered when it ends (trailing edge). Default 100 ms.
    pub progress_interval: Duration,
    /// A running job whose progress has not been published for this long gets
    /// its last progress re-sent (UC-001: at least every 5 s). Default 5 s.
    pub progress_resend_interval: Duration,
    /// At most one change-driven `QueueStatus` per this interval (changes in
    /// between are coalesced into one). Default 250 ms.
    pub queue_status_interval: Duration,
    /// While a client is connected, a `QueueStatus` goes out this often even
    /// without changes. Default 5 s.
    ///
    /// The tick is skipped when another producer's unscoped `QueueStatus`
    /// reached the bus within it — in a cluster, another instance's tick,
    /// which this instance's clients received too — and comes a quarter
    /// tick after that producer's next status is due instead. So a
    /// cluster's clients get about one periodic status per tick, not one per
    /// instance (at most a tick and a quarter apart).
    pub queue_status_tick: Duration,
    /// A running job with no worker event for this long is forgotten (its
    /// terminal event was probably lost). Default 30 min.
    pub job_idle_timeout: Duration,
    /// How many finished job ids are remembered to drop late or duplicate
    /// events for them. Default 10 000.
    pub finished_capacity: usize,
    /// How long a [`QueueStats`] query may take. Default 2 s.
    pub queue_stats_timeout: Duration,
    /// The actor of every event the bridge publishes. Default: service
    /// `job-worker`.
    pub actor: Actor,
}

impl Default for JobBridgeConfig {
    fn default() -> Self {
        JobBridgeConfig {
            progress_interval: Duration::from_millis(100),
            progress_resend_interval: Duration::from_secs(5),
            queue_status_interval: Duration::from_millis(250),
            queue_status_tick: Duration::from_secs(5),
            job_idle_timeout: Duration::from_secs(30 * 60),
            finished_capacity: 10_000,
            queue_stats_timeout: Duration::from_secs(2),
            actor: Actor {
                kind: "service".to_owned(),
                id: Some("job-worker".to_owned()),
                name: None,
            },
        }
    }
}

impl JobBridgeConfig {
    fn timing(&self) -> Timing {
        // Zero intervals would spin the timer loop; one millisecond is the
        // tokio timer resolution anyway.
        let min = Duration::from_millis(1);
        Timing {
            progress_interval: self.progress_interval,
            progress_resend: self.progress_resend_interval.max(min),
            queue_status_interval: self.queue_status_interval,
            job_idle_timeout: self.job_idle_timeout.max(min),
            finished_capacity: self.finished_capacity,
        }
    }
}

/// The host's source of truth for queue depth (e.g. a `SELECT count(*) …
/// GROUP BY status` on the job table).
#[async_trait]
pub trait QueueStats: Send + Sync + 'static {
    /// Pending and running jobs right now.
    async fn queue_stats(&self) -> Result<QueueStatus, Error>;
}

/// A [`QueueStats`] from an async closure, e.g. a job-table query:
///
/// ```
/// use event_bridge_jobs::queue_stats_fn;
/// use event_core::QueueStatus;
/// let stats = queue_stats_fn(|| async { Ok(QueueStatus::new(3, 1)) });
/// # let _ = stats;
/// ```
pub fn queue_stats_fn<F, Fut>(query: F) -> Arc<dyn QueueStats>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<QueueStatus, Error>> + Send + 'static,
{
    struct FnStats<F>(F);

    #[async_trait]
    impl<F, Fut> QueueStats for FnStats<F>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<QueueStatus, Error>> + Send + 'static,
    {
        async fn queue_stats(&self) -> Result<QueueStatus, Error> {
            (self.0)().await
        }
    }

    Arc::new(FnStats(query))
}

struct Shared {
    counts: watch::Sender<QueueStatus>,
    stats: Arc<BridgeStats>,
    source: Option<Arc<dyn QueueStats>>,
    stats_timeout: Duration,
}

impl Shared {
    async fn query_source(&self) -> Option<QueueStatus> {
        let source = self.source.as_ref()?;
        match tokio::time::timeout(self.stats_timeout, source.queue_stats()).await {
            Ok(Ok(status)) => Some(QueueStatus::new(status.pending, status.running)),
            Ok(Err(error)) => {
                tracing::warn!(%error, "queue stats query failed; keeping the bridge's counts");
                None
            }
            Err(_) => {
                tracing::warn!("queue stats query timed out; keeping the bridge's counts");
                None
            }
        }
    }
}

/// Builds and starts the bridge task.
///
/// ```
/// use event_bridge_jobs::{JobBridge, JobBridgeConfig, WorkerEvent};
/// use event_core::{ConnectionRegistry, EventBus, Received, ServerEvent};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let bus = EventBus::default();
/// let registry = ConnectionRegistry::new();
/// let mut sub = bus.subscribe();
/// let (worker_tx, worker_rx) = tokio::sync::broadcast::channel(256);
/// let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default()).spawn(worker_rx);
///
/// let job_id = uuid::Uuid::now_v7();
/// worker_tx.send(WorkerEvent::JobQueued { job_id, job_type: "Embedding".into(), note_id: None }).unwrap();
/// drop(worker_tx); // the worker stops: the bridge drains and ends
/// bridge.join().await;
///
/// let Received::Event(ev) = sub.recv().await else { panic!() };
/// assert!(matches!(ev.payload(), ServerEvent::JobQueued(q) if q.job_id == job_id));
/// # }
/// ```
pub struct JobBridge {
    bus: EventBus,
    registry: ConnectionRegistry,
    config: JobBridgeConfig,
    source: Option<Arc<dyn QueueStats>>,
    classifier: Arc<dyn ErrorClassifier>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for JobBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobBridge")
            .field("config", &self.config)
            .field("has_queue_stats", &self.source.is_some())
            .finish()
    }
}

impl JobBridge {
    /// A bridge publishing on `bus`; `registry` tells it whether any client
    /// is connected (for the periodic `QueueStatus`).
    pub fn new(bus: &EventBus, registry: &ConnectionRegistry, config: JobBridgeConfig) -> Self {
        JobBridge {
            bus: bus.clone(),
            registry: registry.clone(),
            config,
            source: None,
            classifier: Arc::new(DefaultClassifier),
            cancel: CancellationToken::new(),
        }
    }

    /// Uses the host's queue depth as the source of truth.
    pub fn with_queue_stats(mut self, source: Arc<dyn QueueStats>) -> Self {
        self.source = Some(source);
        self
    }

    /// Replaces the failure classifier ([`DefaultClassifier`] by default).
    pub fn with_classifier(mut self, classifier: Arc<dyn ErrorClassifier>) -> Self {
        self.classifier = classifier;
        self
    }

    /// Stops the bridge when `token` is cancelled (held-back progress is
    /// flushed first). Without it the bridge runs until the worker channel
    /// closes or [`JobBridgeHandle::shutdown`] is called.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Starts the bridge task on the current Tokio runtime.
    pub fn spawn(self, worker: broadcast::Receiver<WorkerEvent>) -> JobBridgeHandle {
        let stats = Arc::new(BridgeStats::default());
        let shared = Arc::new(Shared {
            counts: watch::Sender::new(QueueStatus::new(0, 0)),
            stats: stats.clone(),
            source: self.source.clone(),
            stats_timeout: self.config.queue_stats_timeout,
        });
        let core = BridgeCore::new(self.config.timing(), self.classifier.clone(), stats);
        // The drop series exists (at 0) before the first loss, so `rate()`
        // and alerts see it.
        event_core::metrics::dropped_counter(&event_core::metrics::meter())
            .add(0, &[KeyValue::new("consumer", "job_bridge")]);
        let cancel = self.cancel.clone();
        let task = Runner {
            bus: self.bus,
            registry: self.registry,
            meta: EventMeta::default().actor(self.config.actor.clone()),
            tick: self.config.queue_status_tick.max(Duration::from_millis(1)),
            shared: shared.clone(),
            core,
            cancel: self.cancel,
            out: Vec::new(),
            own_status: None,
        };
        JobBridgeHandle {
            view: QueueView { shared },
            task: tokio::spawn(task.run(worker)),
            cancel,
        }
    }
}

struct Runner {
    bus: EventBus,
    registry: ConnectionRegistry,
    meta: EventMeta,
    tick: Duration,
    shared: Arc<Shared>,
    core: BridgeCore,
    cancel: CancellationToken,
    out: Vec<ServerEvent>,
    /// The id of the last `QueueStatus` this bridge published.
    own_status: Option<Uuid>,
}

impl Runner {
    async fn run(mut self, mut worker: broadcast::Receiver<WorkerEvent>) {
        let mut clients = self.registry.watch_total();
        let mut watching_clients = true;
        let mut next_tick = (*clients.borrow_and_update() > 0).then(|| Instant::now() + self.tick);

        if let Some(status) = self.shared.query_source().await {
            self.core.resync(&status, worker.len());
            self.core
                .publish_status(Instant::now(), true, &mut self.out);
            self.publish();
        }

        loop {
            let deadline = self.core.next_deadline();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                received = worker.recv() => match received {
                    Ok(event) => {
                        BridgeStats::inc(&self.shared.stats.worker_events);
                        self.core.on_worker_event(event, Instant::now(), &mut self.out);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n, &worker).await,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.core.on_timer(Instant::now(), &mut self.out);
                }
                () = sleep_until(next_tick), if next_tick.is_some() => {
                    if let Some(status) = self.shared.query_source().await {
                        self.core.resync(&status, worker.len());
                    }
                    let now = Instant::now();
                    let latest = self.bus.latest(EventKind::QueueStatus);
                    let wall = time::OffsetDateTime::now_utc();
                    match tick_decision(latest.as_deref(), self.own_status, wall, self.tick) {
                        Tick::PutOff(wait) => {
                            // Another instance's status already reached
                            // this instance's clients (or will first): a
                            // tick now would repeat it. Counts that changed
                            // still go out.
                            self.core.status_changed(now, &mut self.out);
                            next_tick = Some(now + wait);
                        }
                        Tick::Publish => {
                            self.core.publish_status(now, false, &mut self.out);
                            next_tick = Some(now + self.tick);
                        }
                    }
                }
                changed = clients.changed(), if watching_clients => {
                    if changed.is_err() {
                        // The registry is gone: no client can connect any more.
                        watching_clients = false;
                        next_tick = None;
                    } else if *clients.borrow_and_update() == 0 {
                        next_tick = None;
                    } else if next_tick.is_none() {
                        // The client got a fresh status on connect; tick from here.
                        next_tick = Some(Instant::now() + self.tick);
                    }
                }
            }
            self.publish();
        }
        self.core.flush(Instant::now(), &mut self.out);
        self.publish();
        tracing::debug!(stats = ?self.shared.stats.snapshot(), "job bridge stopped");
    }

    async fn lagged(&mut self, n: u64, worker: &broadcast::Receiver<WorkerEvent>) {
        tracing::warn!(
            missed = n,
            "job bridge fell behind the worker channel; publishing a fresh queue status"
        );
        BridgeStats::add(&self.shared.stats.worker_lagged, n);
        event_core::metrics::dropped_counter(&event_core::metrics::meter())
            .add(n, &[KeyValue::new("consumer", "job_bridge")]);
        if let Some(status) = self.shared.query_source().await {
            self.core.resync(&status, worker.len());
        }
        self.core
            .publish_status(Instant::now(), true, &mut self.out);
    }

    fn publish(&mut self) {
        for event in self.out.drain(..) {
            let is_status = matches!(event, ServerEvent::QueueStatus(_));
            let published = self.bus.publish_with(event, self.meta.clone());
            if is_status {
                self.own_status = Some(published.id());
            }
            BridgeStats::inc(&self.shared.stats.published);
        }
        let counts = self.core.counts();
        self.shared.counts.send_if_modified(|c| {
            let changed = *c != counts;
            *c = counts;
            changed
        });
    }
}

/// What a bridge does when its periodic tick is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tick {
    /// Publish the periodic status; the next tick is a tick later.
    Publish,
    /// Skip it (another producer's status stands in); tick after this long.
    PutOff(Duration),
}

/// The tick's decision at `now`, given the bus's latest `QueueStatus` and
/// the id of the bridge's own last one.
///
/// A status from another producer younger than the tick stands in for it
/// (see [`foreign_status_age`]). The bridge then ticks a quarter tick after
/// the other's *next* status is due, not at the same moment: by then that
/// status has crossed to this instance and stands in again, so the other
/// instance leads and this one keeps following. Ticking at the same moment
/// put both in phase, where neither saw the other's status of that tick
/// and both went out every time (the two-instance cluster test).
///
/// Instances can still be in phase (they started so, or a status crossed
/// late): the other's status is then about a tick old. Every instance sees
/// the same latest status (the stream's order), so the one that sent it
/// ticks and the others step back a quarter tick, to follow it from then on.
fn tick_decision(
    latest: Option<&Event>,
    own: Option<Uuid>,
    now: time::OffsetDateTime,
    tick: Duration,
) -> Tick {
    let margin = tick / 4;
    match latest.and_then(|latest| foreign_status_age(latest, own, now)) {
        Some(age) if age < tick => Tick::PutOff(tick - age + margin),
        Some(age) if age < tick + margin => Tick::PutOff(margin),
        _ => Tick::Publish,
    }
}

/// The age of `latest`, the bus's newest `QueueStatus`, at `now`, when it
/// stands in for this bridge's tick: not the bridge's own (`own`), and
/// unscoped and on the default topic, so every client that gets the tick
/// got it. The age is by the publisher's clock (`occurred_at`): a status
/// from the future counts as just published; a publisher's clock behind by
/// more than the tick only makes both ticks go out, as before.
fn foreign_status_age(
    latest: &Event,
    own: Option<Uuid>,
    now: time::OffsetDateTime,
) -> Option<Duration> {
    let meta = latest.meta();
    if own == Some(latest.id())
        || meta.memory.is_some()
        || meta.tenant_id.is_some()
        || meta.topic.is_some()
    {
        return None;
    }
    Some(Duration::try_from(now - latest.occurred_at()).unwrap_or(Duration::ZERO))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The running bridge.
#[derive(Debug)]
pub struct JobBridgeHandle {
    view: QueueView,
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

impl JobBridgeHandle {
    /// What the bridge has seen and done so far.
    pub fn stats(&self) -> BridgeStatsSnapshot {
        self.view.shared.stats.snapshot()
    }

    /// The bridge's own queue counts (as of its last publish).
    pub fn counts(&self) -> QueueStatus {
        self.view.shared.counts.borrow().clone()
    }

    /// Watches the bridge's queue counts.
    pub fn watch_counts(&self) -> watch::Receiver<QueueStatus> {
        self.view.shared.counts.subscribe()
    }

    /// The queue status provider to give the WebSocket/SSE endpoints (so a
    /// new connection and `refresh` get fresh numbers).
    pub fn queue_snapshot(&self) -> Arc<dyn QueueSnapshot> {
        Arc::new(self.view.clone())
    }

    /// A cloneable view of the queue status ([`QueueSnapshot`]).
    pub fn queue_view(&self) -> QueueView {
        self.view.clone()
    }

    /// Whether the task has ended (worker channel closed or cancelled).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits until the bridge ends on its own (the worker channel closed);
    /// returns its final counters.
    pub async fn join(self) -> BridgeStatsSnapshot {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "job bridge task failed");
        }
        self.view.shared.stats.snapshot()
    }

    /// Stops the bridge (held-back progress is flushed) and waits for it.
    pub async fn shutdown(self) -> BridgeStatsSnapshot {
        self.cancel.cancel();
        self.join().await
    }
}

/// The queue status as the bridge knows it: the host's [`QueueStats`] when
/// configured and answering, else the bridge's own counts.
#[derive(Clone)]
pub struct QueueView {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QueueView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueView")
            .field("counts", &*self.shared.counts.borrow())
            .finish()
    }
}

#[async_trait]
impl QueueSnapshot for QueueView {
    async fn queue_status(&self) -> Result<QueueStatus, event_core::Error> {
        if let Some(status) = self.shared.query_source().await {
            return Ok(status);
        }
        Ok(self.shared.counts.borrow().clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn status_at(at: time::OffsetDateTime, meta: EventMeta) -> Event {
        Event::new(
            7,
            Uuid::now_v7(),
            at,
            meta,
            ServerEvent::QueueStatus(QueueStatus::new(1, 0)),
        )
    }

    #[test]
    fn another_producers_unscoped_status_stands_in_for_the_tick() {
        let now = time::OffsetDateTime::now_utc();
        let two_s_ago = status_at(now - time::Duration::seconds(2), EventMeta::default());
        assert_eq!(
            foreign_status_age(&two_s_ago, None, now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            foreign_status_age(&two_s_ago, Some(Uuid::now_v7()), now),
            Some(Duration::from_secs(2)),
            "another id than the bridge's own"
        );
        // A publisher whose clock runs ahead: as if just published.
        let ahead = status_at(now + time::Duration::seconds(3), EventMeta::default());
        assert_eq!(foreign_status_age(&ahead, None, now), Some(Duration::ZERO));
    }

    const TICK: Duration = Duration::from_secs(4);

    #[test]
    fn a_follower_ticks_a_quarter_tick_after_the_leaders_next_status() {
        let now = time::OffsetDateTime::now_utc();
        let none = tick_decision(None, None, now, TICK);
        assert_eq!(none, Tick::Publish);
        // The other's status 3 s old: its next is due in 1 s; tick 1 s later.
        let recent = status_at(now - time::Duration::seconds(3), EventMeta::default());
        assert_eq!(
            tick_decision(Some(&recent), None, now, TICK),
            Tick::PutOff(Duration::from_secs(2))
        );
        // Following: the leader's status a quarter tick old puts it off a tick.
        let leader = status_at(now - time::Duration::seconds(1), EventMeta::default());
        let own = Some(Uuid::now_v7());
        assert_eq!(
            tick_decision(Some(&leader), own, now, TICK),
            Tick::PutOff(TICK)
        );
        // The bridge's own status, or one older than a tick and a quarter: tick.
        assert_eq!(
            tick_decision(Some(&recent), Some(recent.id()), now, TICK),
            Tick::Publish
        );
        let old = status_at(now - time::Duration::seconds(6), EventMeta::default());
        assert_eq!(tick_decision(Some(&old), own, now, TICK), Tick::Publish);
    }

    #[test]
    fn of_instances_in_phase_the_one_that_sent_the_latest_status_ticks() {
        let now = time::OffsetDateTime::now_utc();
        // Both ticked a tick (and a little) ago; B's status came last.
        let at = now - time::Duration::milliseconds(4_010);
        let (a, b) = (
            status_at(at, EventMeta::default()),
            status_at(at, EventMeta::default()),
        );
        assert_eq!(
            tick_decision(Some(&b), Some(a.id()), now, TICK),
            Tick::PutOff(TICK / 4)
        );
        assert_eq!(
            tick_decision(Some(&b), Some(b.id()), now, TICK),
            Tick::Publish
        );
    }

    #[test]
    fn the_bridges_own_or_a_scoped_status_does_not() {
        let now = time::OffsetDateTime::now_utc();
        let own = status_at(now, EventMeta::default());
        assert_eq!(foreign_status_age(&own, Some(own.id()), now), None);
        for meta in [
            EventMeta::default().tenant("t1"),
            EventMeta::default().memory("m1"),
            EventMeta {
                topic: Some("elsewhere".into()),
                ..EventMeta::default()
            },
        ] {
            assert_eq!(foreign_status_age(&status_at(now, meta), None, now), None);
        }
    }
}
