//! Sinks: the one trait every transport implements, and the runner that
//! drives them.
//!
//! # Model
//!
//! Like `tracing`'s `Subscriber`, [`EventSink`] is the single seam between the
//! bus and everything that consumes it. The host composes sinks on a
//! [`SinkRunner`]; sinks never know about each other.
//!
//! Each registered sink gets its own task and its own bus subscription. The
//! task waits for an event, takes whatever else is already queued (up to a
//! batch limit) and hands the batch to [`EventSink::deliver_batch`]. A sink
//! that is slow only lags its own subscription; a sink that returns errors
//! is counted and logged; a sink that panics is counted, logged and resumed
//! with the next batch (the rest of the batch that panicked is lost to that
//! sink: the runner cannot know which events it had handled); a sink whose
//! delivery hangs is given up on after the delivery timeout. None of this reaches the bus or the other sinks.
//!
//! A sink that must not lose events to a burst (the durable webhook queue)
//! asks for an *intake* instead ([`EventSink::intake_capacity`]): the
//! publisher hands it each event it accepts, through a bus
//! [`Tap`](crate::bus::Tap), into a queue of its own, so it cannot lag
//! however fast events are published or however long its deliveries take,
//! until that queue is full.
//!
//! [`SinkRunner::shutdown`] stops accepting new events, lets each sink
//! deliver what its subscription already holds, calls
//! [`EventSink::shutdown`], and aborts whatever is still running at the
//! deadline.

use std::any::Any;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::{EventBus, Received, Subscription, TapId};

mod intake;

use crate::event::Event;
use crate::replay_source::ReplaySource;
use crate::ring::Cursor;
use intake::Intake;

/// A failure reported by a sink. Opaque to the runner, which only counts and
/// logs it.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl SinkError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            source: None,
        }
    }

    /// An error wrapping a cause.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        SinkError {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A consumer of bus events: a transport, the webhook queue, the telemetry
/// mirror.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// A short, stable name for logs and metrics (`ws`, `sse`, `webhook`, …).
    fn name(&self) -> &str;

    /// Whether this sink wants the event at all (checked before delivery;
    /// default: every event).
    fn accepts(&self, _event: &Event) -> bool {
        true
    }

    /// Handles one event.
    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError>;

    /// Handles several events, in order. The default calls
    /// [`deliver`](Self::deliver) for each and reports the first error;
    /// sinks that can do better with a batch (one wake-up per connection, one
    /// database transaction) override it.
    async fn deliver_batch(&self, events: Vec<Arc<Event>>) -> Result<(), SinkError> {
        let mut first_error = None;
        for event in events {
            if let Err(e) = self.deliver(event).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether the runner should recover the events this sink's
    /// subscription lost by lagging from the bus's replay ring, instead of
    /// reporting them lost through [`on_lag`](Self::on_lag). Default: no.
    ///
    /// Sinks that must not lose events (the durable webhook queue) say yes:
    /// while the missed events are still retained (`EVENT_REPLAY_SIZE`), the
    /// runner delivers them in order, exactly once, and `on_lag` is called
    /// only for what the ring no longer holds.
    fn recover_lagged(&self) -> bool {
        false
    }

    /// `Some(n)`: instead of a bus subscription (bounded by the bus's
    /// capacity), the sink gets an intake queue of up to `n` events that the
    /// publisher fills directly (a bus [`Tap`](crate::bus::Tap)), so a burst
    /// cannot outrun the sink until `n` accepted events are waiting. Beyond that the
    /// overflow is treated like a lag (recovered from the replay ring when
    /// [`recover_lagged`](Self::recover_lagged), else reported through
    /// [`on_lag`](Self::on_lag)); the publisher is never blocked.
    ///
    /// With an intake, [`accepts`](Self::accepts) also runs on the
    /// publisher's thread, inside the bus's ordering lock: it must be cheap
    /// and must not touch the bus. Default: `None`.
    fn intake_capacity(&self) -> Option<usize> {
        None
    }

    /// Called when the sink's subscription lost `missed` events because the
    /// sink fell behind.
    async fn on_lag(&self, _missed: u64) {}

    /// Called once when the runner stops, after the last delivery.
    async fn shutdown(&self) {}
}

/// Counters for one registered sink.
#[derive(Debug, Default)]
pub struct SinkStats {
    delivered: AtomicU64,
    batches: AtomicU64,
    errors: AtomicU64,
    panics: AtomicU64,
    timeouts: AtomicU64,
    lagged: AtomicU64,
    recovered: AtomicU64,
}

/// A copy of a sink's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct SinkStatsSnapshot {
    /// Events handed to the sink (including failed ones).
    pub delivered: u64,
    /// Batches handed to the sink.
    pub batches: u64,
    /// Batches that returned an error.
    pub errors: u64,
    /// Batches that panicked.
    pub panics: u64,
    /// Batches given up on after the delivery timeout.
    pub timeouts: u64,
    /// Events the sink's subscription lost by lagging (and that were not
    /// recovered).
    pub lagged: u64,
    /// Events the subscription missed by lagging that were recovered from the
    /// replay ring (see [`EventSink::recover_lagged`]).
    pub recovered: u64,
}

impl SinkStats {
    /// A snapshot of the counters.
    pub fn snapshot(&self) -> SinkStatsSnapshot {
        SinkStatsSnapshot {
            delivered: self.delivered.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            panics: self.panics.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            lagged: self.lagged.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
        }
    }
}

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Most events handed to a sink at once.
    pub max_batch: usize,
    /// How long one delivery may take before the runner gives up on it and
    /// moves on (the batch counts as a timeout).
    pub deliver_timeout: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            max_batch: 256,
            deliver_timeout: Duration::from_secs(30),
        }
    }
}

struct Registered {
    name: String,
    stats: Arc<SinkStats>,
    task: JoinHandle<()>,
}

/// Drives registered sinks from a bus.
pub struct SinkRunner {
    bus: EventBus,
    config: RunnerConfig,
    stop: CancellationToken,
    sinks: Vec<Registered>,
    catch_up: Option<Arc<dyn ReplaySource>>,
}

impl fmt::Debug for SinkRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkRunner")
            .field(
                "sinks",
                &self.sinks.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// What [`SinkRunner::shutdown`] observed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Sinks that finished within the deadline.
    pub finished: Vec<String>,
    /// Sinks aborted at the deadline.
    pub aborted: Vec<String>,
}

impl SinkRunner {
    /// A runner on `bus` with default settings.
    pub fn new(bus: &EventBus) -> Self {
        SinkRunner::with_config(bus, RunnerConfig::default())
    }

    /// A runner with explicit settings.
    pub fn with_config(bus: &EventBus, config: RunnerConfig) -> Self {
        SinkRunner {
            bus: bus.clone(),
            config,
            stop: CancellationToken::new(),
            sinks: Vec::new(),
            catch_up: None,
        }
    }

    /// Sinks registered from now on that fall behind the bus catch up from
    /// `source` (the event log: a [`LogReplay`](crate::LogReplay)) instead
    /// of losing events: the runner first waits for the log to hold what
    /// the sink missed, then delivers it in pages, in order and exactly
    /// once, and `on_lag` is called only when the source cannot serve the
    /// gap (pruned, or more than it replays at once).
    pub fn set_catch_up(&mut self, source: Arc<dyn ReplaySource>) {
        self.catch_up = Some(source);
    }

    /// Registers a sink. Its subscription starts now, so it receives every
    /// event published after this call. Must be called within a Tokio runtime.
    pub fn register(&mut self, sink: Arc<dyn EventSink>) -> Arc<SinkStats> {
        let stats = Arc::new(SinkStats::default());
        let name = sink.name().to_owned();
        let (source, last_seq) = match sink.intake_capacity() {
            Some(capacity) => {
                let intake = Arc::new(Intake::new(sink.clone(), capacity));
                let (tap, last_seq) = self.bus.add_tap(intake.clone());
                (Source::Intake(intake, tap), last_seq)
            }
            None => {
                // Read before subscribing: every event after this one reaches
                // the subscription (or, after a lag, is still in the ring).
                let last_seq = self.bus.last_seq();
                (Source::Bus(self.bus.subscribe()), last_seq)
            }
        };
        let worker = SinkTask {
            sink,
            bus: self.bus.clone(),
            last_seq,
            skip_through: None,
            source,
            stats: stats.clone(),
            stop: self.stop.clone(),
            config: self.config.clone(),
            catch_up: self.catch_up.clone(),
        };
        let task = tokio::spawn(worker.run());
        self.sinks.push(Registered {
            name,
            stats: stats.clone(),
            task,
        });
        stats
    }

    /// Each sink's name and counters.
    pub fn stats(&self) -> Vec<(String, SinkStatsSnapshot)> {
        self.sinks
            .iter()
            .map(|s| (s.name.clone(), s.stats.snapshot()))
            .collect()
    }

    /// Stops every sink: each delivers what it has already received, then
    /// its `shutdown` runs. Sinks still running at `deadline` are aborted.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        self.stop.cancel();
        let until = tokio::time::Instant::now() + deadline;
        let mut report = ShutdownReport::default();
        for mut s in self.sinks {
            match tokio::time::timeout_at(until, &mut s.task).await {
                Ok(_) => report.finished.push(s.name),
                Err(_) => {
                    s.task.abort();
                    tracing::warn!(sink = %s.name, "sink did not stop before the deadline; aborted");
                    report.aborted.push(s.name);
                }
            }
        }
        report
    }
}

/// Where a sink's events come from.
enum Source {
    /// A bus subscription.
    Bus(Subscription),
    /// An intake filled by the publisher through a tap.
    Intake(Arc<Intake>, TapId),
}

impl Source {
    async fn recv(&mut self) -> Received {
        match self {
            Source::Bus(sub) => sub.recv().await,
            Source::Intake(intake, _) => intake.recv().await,
        }
    }

    fn try_recv(&mut self) -> Option<Received> {
        match self {
            Source::Bus(sub) => sub.try_recv(),
            Source::Intake(intake, _) => intake.pop(),
        }
    }
}

struct SinkTask {
    sink: Arc<dyn EventSink>,
    bus: EventBus,
    /// The sequence of the last event received (delivered or filtered out).
    last_seq: u64,
    /// After a recovery from the ring: events up to here were delivered
    /// already and are skipped when the subscription hands them over too.
    skip_through: Option<u64>,
    source: Source,
    stats: Arc<SinkStats>,
    stop: CancellationToken,
    config: RunnerConfig,
    catch_up: Option<Arc<dyn ReplaySource>>,
}

/// Events read from a catch-up source at a time.
const CATCH_UP_PAGE: usize = 1024;
/// How long a lagging sink waits for the log to commit what it missed.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload")
}

impl SinkTask {
    async fn run(mut self) {
        let mut batch = Vec::with_capacity(16);
        loop {
            let first = tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                r = self.source.recv() => r,
            };
            if !self.absorb(first, &mut batch).await {
                break;
            }
            while batch.len() < self.config.max_batch {
                match self.source.try_recv() {
                    Some(r) => {
                        if !self.absorb(r, &mut batch).await {
                            break;
                        }
                    }
                    None => break,
                }
            }
            self.flush(&mut batch).await;
        }
        // Drain what the subscription already holds, then say goodbye.
        if let Source::Intake(_, tap) = &self.source {
            self.bus.remove_tap(*tap);
        }
        while let Some(r) = self.source.try_recv() {
            if !self.absorb(r, &mut batch).await {
                break;
            }
            if batch.len() >= self.config.max_batch {
                self.flush(&mut batch).await;
            }
        }
        self.flush(&mut batch).await;
        let name = self.sink.name().to_owned();
        if AssertUnwindSafe(self.sink.shutdown())
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(sink = %name, "sink panicked during shutdown");
        }
    }

    /// Adds a received item to the batch; returns `false` when the bus is gone.
    async fn absorb(&mut self, received: Received, batch: &mut Vec<Arc<Event>>) -> bool {
        match received {
            Received::Event(ev) => {
                if self.skip_through.is_some_and(|s| ev.seq() <= s) {
                    return true;
                }
                self.last_seq = ev.seq();
                if self.sink.accepts(&ev) {
                    batch.push(ev);
                }
                true
            }
            Received::Lagged(missed) => {
                // Deliver what came before the gap first, so the sink sees
                // the lag at the right place in the stream.
                self.flush(batch).await;
                if (self.sink.recover_lagged() || self.catch_up.is_some())
                    && self.recover(missed, batch).await
                {
                    return true;
                }
                self.stats.lagged.fetch_add(missed, Ordering::Relaxed);
                tracing::warn!(sink = %self.sink.name(), missed, "sink fell behind the bus");
                if AssertUnwindSafe(self.sink.on_lag(missed))
                    .catch_unwind()
                    .await
                    .is_err()
                {
                    self.stats.panics.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(sink = %self.sink.name(), "sink panicked in on_lag");
                }
                true
            }
            Received::Closed => false,
        }
    }

    /// Delivers, from the replay ring or else the catch-up source, every
    /// event after the last one received; `false` when neither holds them
    /// all.
    async fn recover(&mut self, missed: u64, batch: &mut Vec<Arc<Event>>) -> bool {
        let Ok(events) = self.bus.replay_since(&Cursor::Seq(self.last_seq)) else {
            return self.catch_up(missed, batch).await;
        };
        let Some(newest) = events.last().map(|e| e.seq()) else {
            return true;
        };
        tracing::debug!(sink = %self.sink.name(), missed, "sink fell behind the bus; recovering from the replay ring");
        self.stats.recovered.fetch_add(missed, Ordering::Relaxed);
        for ev in events {
            if self.sink.accepts(&ev) {
                batch.push(ev);
                if batch.len() >= self.config.max_batch {
                    self.flush(batch).await;
                }
            }
        }
        self.flush(batch).await;
        self.last_seq = newest;
        self.skip_through = Some(newest);
        true
    }

    /// Pages through the catch-up source from the last event received up
    /// to the newest it holds, once the log holds everything published so
    /// far.
    async fn catch_up(&mut self, missed: u64, batch: &mut Vec<Arc<Event>>) -> bool {
        let Some(source) = self.catch_up.clone() else {
            return false;
        };
        // The subscription goes on after the events retained at the lag, so
        // catching up to the newest event now leaves no gap; the log may be
        // behind the bus, so what was missed must be in it first.
        let target = self.bus.last_seq();
        if !self.bus.logged(target, CATCH_UP_WAIT).await {
            return false;
        }
        tracing::debug!(sink = %self.sink.name(), missed, "sink fell behind the bus; catching up from the log");
        let mut caught_up = 0;
        loop {
            let page = match source
                .history(Some(&Cursor::Seq(self.last_seq)), CATCH_UP_PAGE)
                .await
            {
                Ok(page) => page,
                // The source cannot serve the (rest of the) gap: report
                // the lag, with the reason.
                Err(miss) => {
                    tracing::warn!(sink = %self.sink.name(), reason = miss.as_str(), caught_up, "catching up from the log stopped");
                    self.stats.recovered.fetch_add(caught_up, Ordering::Relaxed);
                    return false;
                }
            };
            let Some(newest) = page.last().map(|e| e.seq()) else {
                break;
            };
            for ev in page {
                self.last_seq = ev.seq();
                caught_up += 1;
                if self.sink.accepts(&ev) {
                    batch.push(ev);
                    if batch.len() >= self.config.max_batch {
                        self.flush(batch).await;
                    }
                }
            }
            self.flush(batch).await;
            if newest >= target {
                break;
            }
        }
        if self.last_seq < target {
            tracing::warn!(sink = %self.sink.name(), "the log ended before the sink caught up");
            return false;
        }
        self.stats.recovered.fetch_add(caught_up, Ordering::Relaxed);
        self.skip_through = Some(self.last_seq);
        true
    }

    async fn flush(&mut self, batch: &mut Vec<Arc<Event>>) {
        if batch.is_empty() {
            return;
        }
        let events = std::mem::take(batch);
        let n = events.len() as u64;
        self.stats.delivered.fetch_add(n, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        let delivery = AssertUnwindSafe(self.sink.deliver_batch(events)).catch_unwind();
        match tokio::time::timeout(self.config.deliver_timeout, delivery).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = %self.sink.name(), events = n, %error, "sink delivery failed");
            }
            Ok(Err(panic)) => {
                self.stats.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    sink = %self.sink.name(),
                    events = n,
                    panic = panic_message(panic.as_ref()),
                    "sink panicked; resuming with the next batch"
                );
            }
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    sink = %self.sink.name(),
                    events = n,
                    timeout_ms = self.config.deliver_timeout.as_millis() as u64,
                    "sink delivery timed out; moving on"
                );
            }
        }
    }
}
