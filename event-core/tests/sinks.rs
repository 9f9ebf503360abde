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
