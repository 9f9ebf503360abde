//! Sink isolation: failing, panicking and stuck sinks never affect a healthy one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use event_core::{
    BusConfig, Event, EventBus, EventSink, QueueStatus, RunnerConfig, SeqStart, SinkError,
    SinkRunner, async_trait,
};
use tokio::sync::Notify;

const EVENTS: u64 = 10_000;

#[derive(Default)]
struct Healthy {
    count: AtomicU64,
    last_seq: AtomicU64,
    out_of_order: AtomicU64,
    done: Notify,
}

#[async_trait]
impl EventSink for Healthy {
    fn name(&self) -> &str {
        "healthy"
    }
    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        let prev = self.last_seq.swap(event.seq(), Ordering::SeqCst);
        if prev >= event.seq() {
            self.out_of_order.fetch_add(1, Ordering::SeqCst);
        }
        if self.count.fetch_add(1, Ordering::SeqCst) + 1 == EVENTS {
            self.done.notify_one();
        }
        Ok(())
    }
}

/// Counts calls and signals once a threshold is reached.
#[derive(Default)]
struct Calls {
    n: AtomicU64,
    reached: Notify,
}

impl Calls {
    fn hit(&self, threshold: u64) {
        if self.n.fetch_add(1, Ordering::SeqCst) + 1 == threshold {
            self.reached.notify_one();
        }
    }
}

struct Failing(Calls);

#[async_trait]
impl EventSink for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    async fn deliver(&self, _event: Arc<Event>) -> Result<(), SinkError> {
        self.0.hit(100);
        Err(SinkError::new("always fails"))
    }
}

struct Panicking(Calls);

#[async_trait]
impl EventSink for Panicking {
    fn name(&self) -> &str {
        "panicking"
    }
    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        self.0.hit(20);
        if event.seq().is_multiple_of(2) {
            panic!("sink bug on event {}", event.seq());
        }
        Ok(())
    }
}

struct Stuck;

#[async_trait]
impl EventSink for Stuck {
    fn name(&self) -> &str {
        "stuck"
    }
    async fn deliver(&self, _event: Arc<Event>) -> Result<(), SinkError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sinks_do_not_disturb_a_healthy_one() {
    // Room for every event, so the healthy sink cannot lag however the
    // scheduler interleaves it with the publisher.
    let bus = EventBus::new(BusConfig {
        capacity: EVENTS as usize + 1,
        replay_size: 16,
        seq_start: SeqStart::At(1),
    });
    let mut runner = SinkRunner::with_config(
        &bus,
        RunnerConfig {
            max_batch: 64,
            deliver_timeout: Duration::from_secs(60),
        },
    );
    let healthy = Arc::new(Healthy::default());
    let failing = Arc::new(Failing(Calls::default()));
    let panicking = Arc::new(Panicking(Calls::default()));
    let healthy_stats = runner.register(healthy.clone());
    let failing_stats = runner.register(failing.clone());
    let panicking_stats = runner.register(panicking.clone());
    let stuck_stats = runner.register(Arc::new(Stuck));

    let publisher = {
        let bus = bus.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..EVENTS {
                bus.publish(QueueStatus::new(i, 0));
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(60), healthy.done.notified())
        .await
        .expect("healthy sink starved");
    publisher.await.unwrap();
    let wait = Duration::from_secs(60);
    tokio::time::timeout(wait, failing.0.reached.notified())
        .await
        .expect("failing sink never called");
    tokio::time::timeout(wait, panicking.0.reached.notified())
        .await
        .expect("panicking sink not resumed");

    assert_eq!(healthy.count.load(Ordering::SeqCst), EVENTS);
    assert_eq!(healthy.out_of_order.load(Ordering::SeqCst), 0);
    assert_eq!(healthy_stats.snapshot().lagged, 0);
    assert!(failing_stats.snapshot().errors > 0);
    // The panicking sink was resumed after each panic and saw later events.
    assert!(panicking_stats.snapshot().panics > 0);
    // The stuck sink got one batch and never returned from it.
    assert_eq!(stuck_stats.snapshot().batches, 1);

    let report = runner.shutdown(Duration::from_millis(500)).await;
    assert!(report.aborted.contains(&"stuck".to_owned()), "{report:?}");
    assert!(report.finished.contains(&"healthy".to_owned()));
}

#[tokio::test]
async fn shutdown_drains_pending_events() {
    let bus = EventBus::new(BusConfig {
        capacity: 4096,
        replay_size: 16,
        seq_start: SeqStart::At(1),
    });
    let mut runner = SinkRunner::new(&bus);
    let healthy = Arc::new(Healthy::default());
    runner.register(healthy.clone());
    for i in 0..1000 {
        bus.publish(QueueStatus::new(i, 0));
    }
    let report = runner.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.finished, vec!["healthy".to_owned()]);
    assert_eq!(healthy.count.load(Ordering::SeqCst), 1000);
}

#[tokio::test(start_paused = true)]
async fn hung_delivery_times_out_and_the_sink_moves_on() {
    struct SlowOnce(AtomicU64);
    #[async_trait]
    impl EventSink for SlowOnce {
        fn name(&self) -> &str {
            "slow-once"
        }
        async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
            if event.seq() == 1 {
                std::future::pending::<()>().await;
            }
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let bus = EventBus::new(BusConfig {
        capacity: 64,
        replay_size: 0,
        seq_start: SeqStart::At(1),
    });
    let mut runner = SinkRunner::with_config(
        &bus,
        RunnerConfig {
            max_batch: 1,
            deliver_timeout: Duration::from_secs(1),
        },
    );
    let sink = Arc::new(SlowOnce(AtomicU64::new(0)));
    let stats = runner.register(sink.clone());
    bus.publish(QueueStatus::new(1, 0));
    bus.publish(QueueStatus::new(2, 0));
    tokio::time::timeout(Duration::from_secs(10), async {
        while sink.0.load(Ordering::SeqCst) < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the second event was never delivered");
    assert_eq!(stats.snapshot().timeouts, 1);
    runner.shutdown(Duration::from_secs(1)).await;
}

/// A sink that holds its first delivery until released and records every
/// sequence number it is given.
struct Gated {
    recover: bool,
    intake: Option<usize>,
    gate: tokio::sync::Semaphore,
    seqs: std::sync::Mutex<Vec<u64>>,
    lagged: AtomicU64,
    progress: tokio::sync::watch::Sender<usize>,
}

#[async_trait]
impl EventSink for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn recover_lagged(&self) -> bool {
        self.recover
    }
    fn intake_capacity(&self) -> Option<usize> {
        self.intake
    }
    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        // The first delivery waits for the test; later ones pass freely.
        let _permit = self.gate.acquire().await.unwrap();
        let n = {
            let mut seqs = self.seqs.lock().unwrap();
            seqs.push(event.seq());
            seqs.len()
        };
        self.progress.send_replace(n);
        Ok(())
    }
    async fn on_lag(&self, missed: u64) {
        self.lagged.fetch_add(missed, Ordering::SeqCst);
    }
}

async fn run_gated(recover: bool) -> (Vec<u64>, u64, event_core::SinkStatsSnapshot) {
    run_gated_with(recover, None, 200).await
}

/// Publishes `burst` events while the sink's first delivery is held, then
/// one more after releasing it.
async fn run_gated_with(
    recover: bool,
    intake: Option<usize>,
    burst: u64,
) -> (Vec<u64>, u64, event_core::SinkStatsSnapshot) {
    let bus = EventBus::new(BusConfig {
        capacity: 4,
        replay_size: 1024,
        seq_start: SeqStart::At(1),
    });
    let (progress, mut watch) = tokio::sync::watch::channel(0);
    let sink = Arc::new(Gated {
        recover,
        intake,
        gate: tokio::sync::Semaphore::new(0),
        seqs: std::sync::Mutex::new(Vec::new()),
        lagged: AtomicU64::new(0),
        progress,
    });
    let mut runner = SinkRunner::with_config(
        &bus,
        RunnerConfig {
            max_batch: 1,
            ..RunnerConfig::default()
        },
    );
    let stats = runner.register(sink.clone());
    for _ in 0..burst {
        bus.publish(QueueStatus::new(1, 0));
    }
    sink.gate.add_permits(1_000_000);
    // Either everything arrives (recovery) or the sink stops short (lag):
    // wait for the last event or for the stream to go quiet with a lag seen.
    let last = bus.publish(QueueStatus::new(0, 0)).seq();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        watch.wait_for(|_| sink.seqs.lock().unwrap().last() == Some(&last)),
    )
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    let seqs = sink.seqs.lock().unwrap().clone();
    (seqs, sink.lagged.load(Ordering::SeqCst), stats.snapshot())
}

#[tokio::test]
async fn a_recovering_sink_gets_every_lagged_event_from_the_ring_once_in_order() {
    let (seqs, lagged, stats) = run_gated(true).await;
    assert_eq!(seqs, (1..=201).collect::<Vec<u64>>());
    assert_eq!(lagged, 0, "nothing should be reported lost");
    assert!(
        stats.recovered > 0,
        "the sink never lagged: the test proves nothing"
    );
    assert_eq!(stats.lagged, 0);
}

#[tokio::test]
async fn a_plain_sink_is_told_what_it_lost() {
    let (seqs, lagged, stats) = run_gated(false).await;
    assert!(lagged > 0);
    assert_eq!(
        seqs.len() as u64 + lagged,
        201,
        "every event is delivered or reported lost"
    );
    assert_eq!(stats.recovered, 0);
}

#[tokio::test]
async fn a_sink_with_an_intake_cannot_be_outrun_by_a_burst() {
    // Bus capacity 4, the sink stuck on its first event, 5,000 published.
    let (seqs, lagged, stats) = run_gated_with(false, Some(10_000), 5_000).await;
    assert_eq!(seqs, (1..=5_001).collect::<Vec<u64>>());
    assert_eq!(lagged, 0);
    assert_eq!((stats.lagged, stats.recovered), (0, 0));
}

#[tokio::test]
async fn an_overflowing_intake_reports_what_did_not_fit_and_resumes() {
    let bus = EventBus::new(BusConfig {
        capacity: 4,
        replay_size: 4,
        seq_start: SeqStart::At(1),
    });
    let (progress, mut watch) = tokio::sync::watch::channel(0);
    let sink = Arc::new(Gated {
        recover: false,
        intake: Some(100),
        gate: tokio::sync::Semaphore::new(0),
        seqs: std::sync::Mutex::new(Vec::new()),
        lagged: AtomicU64::new(0),
        progress,
    });
    let mut runner = SinkRunner::new(&bus);
    let stats = runner.register(sink.clone());
    // The sink task has not run yet (single-threaded runtime): the intake
    // takes the first 100, the other 900 do not fit.
    for _ in 0..1_000 {
        bus.publish(QueueStatus::new(1, 0));
    }
    sink.gate.add_permits(1_000_000);
    tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|n| *n == 100))
        .await
        .expect("the queued events were not delivered")
        .unwrap();
    let last = bus.publish(QueueStatus::new(0, 0)).seq();
    tokio::time::timeout(Duration::from_secs(5), watch.wait_for(|n| *n == 101))
        .await
        .expect("the intake did not resume after the overflow")
        .unwrap();
    runner.shutdown(Duration::from_secs(5)).await;
    let expected: Vec<u64> = (1..=100).chain([last]).collect();
    assert_eq!(*sink.seqs.lock().unwrap(), expected);
    assert_eq!(sink.lagged.load(Ordering::SeqCst), 900);
    assert_eq!(stats.snapshot().lagged, 900);
}
