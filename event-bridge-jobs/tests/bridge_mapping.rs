//! Every `WorkerEvent` through the real bridge task onto a real bus.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use event_bridge_jobs::{Error, JobBridge, JobBridgeConfig, QueueStats, WorkerEvent};
use event_core::{
    ConnectionRegistry, Event, EventBus, QueueStatus, Received, ServerEvent, Subscription,
    async_trait,
};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

/// Everything the bus received, once the bridge has ended.
fn drain(sub: &mut Subscription) -> Vec<Arc<Event>> {
    let mut all = Vec::new();
    while let Some(r) = sub.try_recv() {
        match r {
            Received::Event(ev) => all.push(ev),
            other => panic!("unexpected {other:?}"),
        }
    }
    all
}

fn job_json(events: &[Arc<Event>]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| !matches!(e.payload(), ServerEvent::QueueStatus(_)))
        .map(|e| serde_json::from_slice(e.json()).unwrap())
        .collect()
}

async fn run(
    events: Vec<WorkerEvent>,
) -> (Vec<Arc<Event>>, event_bridge_jobs::BridgeStatsSnapshot) {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let (tx, rx) = broadcast::channel(1024);
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default()).spawn(rx);
    for ev in events {
        tx.send(ev).unwrap();
    }
    drop(tx);
    // The bridge ends by itself when the worker channel closes.
    let stats = tokio::time::timeout(Duration::from_secs(5), bridge.join())
        .await
        .expect("bridge stops when the worker channel closes");
    (drain(&mut sub), stats)
}

#[tokio::test]
async fn every_job_event_maps_to_its_wire_form() {
    let a = Uuid::now_v7();
    let b = Uuid::now_v7();
    let note = Uuid::now_v7();
    let (events, stats) = run(vec![
        WorkerEvent::JobQueued {
            job_id: a,
            job_type: "AiRevision".into(),
            note_id: Some(note),
        },
        WorkerEvent::JobStarted {
            job_id: a,
            job_type: "AiRevision".into(),
            note_id: Some(note),
        },
        WorkerEvent::JobProgress {
            job_id: a,
            note_id: Some(note),
            percent: 50,
            message: Some("Embedding chunk 3/6".into()),
        },
        WorkerEvent::JobCompleted {
            job_id: a,
            job_type: "AiRevision".into(),
            note_id: Some(note),
            duration_ms: Some(1234),
        },
        WorkerEvent::JobQueued {
            job_id: b,
            job_type: "Embedding".into(),
            note_id: None,
        },
        WorkerEvent::JobFailed {
            job_id: b,
            job_type: "Embedding".into(),
            note_id: None,
            error:
                "reqwest error: connection refused for url https://user:secret@backend:11434/api"
                    .into(),
        },
    ])
    .await;
    assert_eq!(stats.worker_events, 6);
    assert_eq!(
        job_json(&events),
        vec![
            json!({"type":"JobQueued","job_id":a,"job_type":"AiRevision","note_id":note}),
            json!({"type":"JobStarted","job_id":a,"job_type":"AiRevision","note_id":note}),
            json!({"type":"JobProgress","job_id":a,"note_id":note,"progress":50,"progress_percent":50,"message":"Embedding chunk 3/6"}),
            json!({"type":"JobCompleted","job_id":a,"job_type":"AiRevision","note_id":note,"duration_ms":1234}),
            json!({"type":"JobQueued","job_id":b,"job_type":"Embedding"}),
            json!({"type":"JobFailed","job_id":b,"job_type":"Embedding","error":"connection"}),
        ]
    );
    for ev in &events {
        assert!(ev.payload().validate().is_ok());
        assert!(!std::str::from_utf8(ev.json()).unwrap().contains("secret"));
        assert_eq!(ev.meta().actor.kind, "service");
    }
}

#[tokio::test]
async fn lifecycle_and_retry_events_are_counted_not_published() {
    let a = Uuid::now_v7();
    let (events, stats) = run(vec![
        WorkerEvent::WorkerStarted,
        WorkerEvent::JobRetryScheduled {
            job_id: a,
            job_type: "Embedding".into(),
            note_id: None,
            attempt: 2,
            delay_ms: Some(500),
        },
        WorkerEvent::WorkerStopped,
    ])
    .await;
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(stats.worker_lifecycle, 2);
    assert_eq!(stats.retries_scheduled, 1);
    assert_eq!(stats.published, 0);
}

#[tokio::test]
async fn progress_is_clamped_and_never_goes_back() {
    let a = Uuid::now_v7();
    let progress = |percent| WorkerEvent::JobProgress {
        job_id: a,
        note_id: None,
        percent,
        message: None,
    };
    let (events, stats) = run(vec![
        WorkerEvent::JobStarted {
            job_id: a,
            job_type: "Embedding".into(),
            note_id: None,
        },
        progress(-5),
        progress(250),
        progress(70),
    ])
    .await;
    let values: Vec<u8> = events
        .iter()
        .filter_map(|e| match e.payload() {
            ServerEvent::JobProgress(p) => Some(p.progress),
            _ => None,
        })
        .collect();
    // -5 → 0 goes out at once; 250 → 100 is held back by the rate limit and
    // flushed when the channel closes; 70 < 100 is dropped.
    assert_eq!(values, [0, 100]);
    assert_eq!(stats.progress_suppressed, 1);
}

#[tokio::test]
async fn nothing_after_a_terminal_event_and_only_one_terminal() {
    let a = Uuid::now_v7();
    let (events, stats) = run(vec![
        WorkerEvent::JobStarted {
            job_id: a,
            job_type: "Embedding".into(),
            note_id: None,
        },
        WorkerEvent::JobFailed {
            job_id: a,
            job_type: "Embedding".into(),
            note_id: None,
            error: "timeout".into(),
        },
        WorkerEvent::JobCompleted {
            job_id: a,
            job_type: "Embedding".into(),
            note_id: None,
            duration_ms: None,
        },
        WorkerEvent::JobProgress {
            job_id: a,
            note_id: None,
            percent: 100,
            message: None,
        },
        WorkerEvent::JobStarted {
            job_id: a,
            job_type: "Embedding".into(),
            note_id: None,
        },
    ])
    .await;
    let types: Vec<String> = job_json(&events)
        .iter()
        .map(|v| v["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(types, ["JobStarted", "JobFailed"]);
    assert_eq!(stats.dropped_out_of_order, 3);
    let failed = job_json(&events)[1].clone();
    assert_eq!(failed["error"], "timed_out");
}

struct FixedStats(QueueStatus);

#[async_trait]
impl QueueStats for FixedStats {
    async fn queue_stats(&self) -> Result<QueueStatus, Error> {
        Ok(self.0.clone())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn worker_side_lag_publishes_a_fresh_queue_status() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let (tx, rx) = broadcast::channel(4);
    let source = Arc::new(FixedStats(QueueStatus::new(7, 3)));
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(source)
        .spawn(rx);
    // On this single-threaded runtime the bridge cannot run before we yield,
    // so 20 events into a 4-slot channel make it lag.
    for _ in 0..20 {
        tx.send(WorkerEvent::WorkerStarted).unwrap();
    }
    drop(tx);
    let stats = tokio::time::timeout(Duration::from_secs(5), bridge.join())
        .await
        .unwrap();
    assert_eq!(stats.worker_lagged, 16);
    let statuses: Vec<QueueStatus> = drain(&mut sub)
        .iter()
        .filter_map(|e| match e.payload() {
            ServerEvent::QueueStatus(q) => Some(q.clone()),
            _ => None,
        })
        .collect();
    // One at start-up from the source, one after the lag.
    assert_eq!(statuses, [QueueStatus::new(7, 3), QueueStatus::new(7, 3)]);
}

#[tokio::test]
async fn queue_snapshot_prefers_the_host_source_and_falls_back_to_counts() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let (tx, rx) = broadcast::channel(16);
    let failing = event_bridge_jobs::queue_stats_fn(|| async {
        Err(Error::QueueStats("database is down".into()))
    });
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(failing)
        .spawn(rx);
    let mut counts = bridge.watch_counts();
    tx.send(WorkerEvent::JobQueued {
        job_id: Uuid::now_v7(),
        job_type: "Embedding".into(),
        note_id: None,
    })
    .unwrap();
    tokio::time::timeout(Duration::from_secs(5), counts.wait_for(|q| q.pending == 1))
        .await
        .unwrap()
        .unwrap();
    let snapshot = bridge.queue_snapshot();
    assert_eq!(
        snapshot.queue_status().await.unwrap(),
        QueueStatus::new(1, 0)
    );

    let (_tx2, rx2) = broadcast::channel::<WorkerEvent>(16);
    let healthy = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(Arc::new(FixedStats(QueueStatus::new(5, 2))))
        .spawn(rx2);
    assert_eq!(
        healthy.queue_snapshot().queue_status().await.unwrap(),
        QueueStatus::new(5, 2)
    );
    healthy.shutdown().await;
    drop(tx);
    bridge.join().await;
}

#[tokio::test]
async fn bridge_stops_when_the_worker_channel_closes() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let (tx, rx) = broadcast::channel::<WorkerEvent>(8);
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default()).spawn(rx);
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), bridge.join())
        .await
        .expect("bridge ends when the channel closes");
}

#[tokio::test]
async fn cancellation_token_stops_the_bridge() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let (_tx, rx) = broadcast::channel::<WorkerEvent>(8);
    let token = tokio_util::sync::CancellationToken::new();
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_cancellation(token.clone())
        .spawn(rx);
    token.cancel();
    tokio::time::timeout(Duration::from_secs(5), bridge.join())
        .await
        .expect("bridge ends on cancellation");
}
