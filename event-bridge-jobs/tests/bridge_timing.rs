//! Interval logic of the bridge task, on Tokio's paused clock: progress rate
//! and re-send, QueueStatus coalescing and the client-gated ticker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use event_bridge_jobs::{JobBridge, JobBridgeConfig, JobBridgeHandle, WorkerEvent};
use event_core::{
    ConnectionRegistry, EventBus, Principal, QueueStatus, Received, ServerEvent, Subscription,
    Transport,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use uuid::Uuid;

struct Rig {
    bus: EventBus,
    registry: ConnectionRegistry,
    sub: Subscription,
    worker: broadcast::Sender<WorkerEvent>,
    bridge: JobBridgeHandle,
}

fn rig(config: JobBridgeConfig) -> Rig {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let sub = bus.subscribe();
    let (worker, rx) = broadcast::channel(1024);
    let bridge = JobBridge::new(&bus, &registry, config).spawn(rx);
    Rig {
        bus,
        registry,
        sub,
        worker,
        bridge,
    }
}

/// The next event on the bus, or `None` if nothing arrives within `within`
/// (virtual time: on the paused clock this returns at once).
async fn next(sub: &mut Subscription, within: Duration) -> Option<ServerEvent> {
    match timeout(within, sub.recv()).await {
        Ok(Received::Event(ev)) => Some(ev.payload().clone()),
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => None,
    }
}

async fn next_matching(
    sub: &mut Subscription,
    within: Duration,
    pred: impl Fn(&ServerEvent) -> bool,
) -> Option<ServerEvent> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(sub, left).await {
            Some(ev) if pred(&ev) => return Some(ev),
            Some(_) => continue,
            None => return None,
        }
    }
}

fn started(job_id: Uuid) -> WorkerEvent {
    WorkerEvent::JobStarted {
        job_id,
        job_type: "AiRevision".into(),
        note_id: None,
    }
}

fn progress(job_id: Uuid, percent: i32) -> WorkerEvent {
    WorkerEvent::JobProgress {
        job_id,
        note_id: None,
        percent,
        message: Some(format!("{percent}%")),
    }
}

fn is_progress(ev: &ServerEvent) -> bool {
    matches!(ev, ServerEvent::JobProgress(_))
}

#[tokio::test(start_paused = true)]
async fn long_silent_job_gets_its_progress_resent() {
    let mut r = rig(JobBridgeConfig {
        progress_resend_interval: Duration::from_secs(1),
        ..JobBridgeConfig::default()
    });
    let job = Uuid::now_v7();
    r.worker.send(started(job)).unwrap();
    r.worker.send(progress(job, 40)).unwrap();
    let first = next_matching(&mut r.sub, Duration::from_millis(10), is_progress).await;
    let t0 = Instant::now();
    assert!(matches!(first, Some(ServerEvent::JobProgress(p)) if p.progress == 40));
    for i in 1..=3u32 {
        let ev = next_matching(&mut r.sub, Duration::from_secs(2), is_progress)
            .await
            .expect("progress re-sent during a silent job");
        let ServerEvent::JobProgress(p) = ev else {
            unreachable!()
        };
        assert_eq!((p.progress, p.message.as_deref()), (40, Some("40%")));
        assert_eq!(Instant::now() - t0, Duration::from_secs(1) * i);
    }
    r.worker
        .send(WorkerEvent::JobCompleted {
            job_id: job,
            job_type: "AiRevision".into(),
            note_id: None,
            duration_ms: None,
        })
        .unwrap();
    assert!(
        next_matching(&mut r.sub, Duration::from_millis(10), |e| matches!(
            e,
            ServerEvent::JobCompleted(_)
        ))
        .await
        .is_some()
    );
    assert!(
        next_matching(&mut r.sub, Duration::from_secs(10), is_progress)
            .await
            .is_none(),
        "no re-send after the job ended"
    );
    assert!(r.bridge.stats().progress_resent >= 3);
}

/// docs/protocol.md §1 / UC-001: a running job's progress is repeated at least
/// every 5 s, with the defaults the host runs (the conformance suite checks
/// the order and count of a job's events, this the interval, in virtual
/// time).
#[tokio::test(start_paused = true)]
async fn with_the_defaults_progress_is_repeated_every_5_s() {
    let mut r = rig(JobBridgeConfig::default());
    let job = Uuid::now_v7();
    r.worker.send(started(job)).unwrap();
    r.worker.send(progress(job, 40)).unwrap();
    let first = next_matching(&mut r.sub, Duration::from_millis(10), is_progress).await;
    assert!(first.is_some());
    let t0 = Instant::now();
    for i in 1..=2u32 {
        next_matching(&mut r.sub, Duration::from_secs(6), is_progress)
            .await
            .expect("progress re-sent during a silent job");
        assert_eq!(Instant::now() - t0, Duration::from_secs(5) * i);
    }
}

#[tokio::test(start_paused = true)]
async fn final_progress_value_is_always_delivered() {
    let mut r = rig(JobBridgeConfig::default());
    let job = Uuid::now_v7();
    r.worker.send(started(job)).unwrap();
    for p in 1..=100 {
        r.worker.send(progress(job, p)).unwrap();
        tokio::time::advance(Duration::from_millis(3)).await;
    }
    let mut values = Vec::new();
    while let Some(ev) = next_matching(&mut r.sub, Duration::from_millis(500), is_progress).await {
        let ServerEvent::JobProgress(p) = ev else {
            unreachable!()
        };
        values.push(p.progress);
    }
    assert_eq!(values.last(), Some(&100), "{values:?}");
    assert!(values.windows(2).all(|w| w[0] <= w[1]));
    // 300 ms of updates at the default 100 ms rate.
    assert!(values.len() <= 5, "rate limit not applied: {values:?}");
}

fn status(ev: &ServerEvent) -> Option<QueueStatus> {
    match ev {
        ServerEvent::QueueStatus(q) => Some(q.clone()),
        _ => None,
    }
}

/// The most recent QueueStatus once the coalescing window has passed.
async fn settled_status(sub: &mut Subscription) -> Option<QueueStatus> {
    let mut last = None;
    while let Some(ev) = next(sub, Duration::from_millis(300)).await {
        if let Some(q) = status(&ev) {
            last = Some(q);
        }
    }
    last
}

#[tokio::test(start_paused = true)]
async fn queue_status_follows_queue_start_complete_fail() {
    let mut r = rig(JobBridgeConfig::default());
    let jobs: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let send = |ev| r.worker.send(ev).unwrap();
    for j in &jobs {
        send(WorkerEvent::JobQueued {
            job_id: *j,
            job_type: "Embedding".into(),
            note_id: None,
        });
    }
    assert_eq!(
        settled_status(&mut r.sub).await,
        Some(QueueStatus::new(4, 0))
    );
    send(started(jobs[0]));
    send(started(jobs[1]));
    send(started(jobs[2]));
    assert_eq!(
        settled_status(&mut r.sub).await,
        Some(QueueStatus::new(1, 3))
    );
    send(WorkerEvent::JobCompleted {
        job_id: jobs[0],
        job_type: "Embedding".into(),
        note_id: None,
        duration_ms: Some(1),
    });
    assert_eq!(
        settled_status(&mut r.sub).await,
        Some(QueueStatus::new(1, 2))
    );
    send(WorkerEvent::JobFailed {
        job_id: jobs[1],
        job_type: "Embedding".into(),
        note_id: None,
        error: "boom".into(),
    });
    assert_eq!(
        settled_status(&mut r.sub).await,
        Some(QueueStatus::new(1, 1))
    );
    // A queued job that fails before it starts leaves the pending count.
    send(WorkerEvent::JobFailed {
        job_id: jobs[3],
        job_type: "Embedding".into(),
        note_id: None,
        error: "cancelled".into(),
    });
    assert_eq!(
        settled_status(&mut r.sub).await,
        Some(QueueStatus::new(0, 1))
    );
    assert_eq!(r.bridge.counts(), QueueStatus::new(0, 1));
    let snapshot = r.bridge.queue_snapshot();
    assert_eq!(
        snapshot.queue_status().await.unwrap(),
        QueueStatus::new(0, 1)
    );
    assert_eq!(
        event_core::current_queue_status(&r.bus, Some(snapshot.as_ref())).await,
        QueueStatus::new(0, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn queue_status_changes_are_coalesced_to_one_per_interval() {
    let mut r = rig(JobBridgeConfig::default());
    for _ in 0..50 {
        r.worker
            .send(WorkerEvent::JobQueued {
                job_id: Uuid::now_v7(),
                job_type: "Embedding".into(),
                note_id: None,
            })
            .unwrap();
    }
    let mut times = Vec::new();
    let mut last = None;
    while let Some(ev) = next(&mut r.sub, Duration::from_secs(1)).await {
        if let Some(q) = status(&ev) {
            times.push(Instant::now());
            last = Some(q);
        }
    }
    assert_eq!(last, Some(QueueStatus::new(50, 0)));
    assert!(times.len() <= 2, "{} statuses for one burst", times.len());
    assert!(
        times
            .windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(250))
    );
}

#[tokio::test(start_paused = true)]
async fn ticker_runs_only_while_a_client_is_connected() {
    let mut r = rig(JobBridgeConfig {
        queue_status_tick: Duration::from_secs(5),
        ..JobBridgeConfig::default()
    });
    assert!(
        next(&mut r.sub, Duration::from_secs(30)).await.is_none(),
        "no ticks without clients"
    );

    let client = r
        .registry
        .register(Transport::WebSocket, None, &Principal::anonymous());
    let connected_at = Instant::now();
    for n in 1..=3u32 {
        let ev = next(&mut r.sub, Duration::from_secs(6))
            .await
            .expect("tick while connected");
        assert_eq!(status(&ev), Some(QueueStatus::new(0, 0)));
        assert_eq!(Instant::now() - connected_at, Duration::from_secs(5) * n);
    }

    drop(client);
    assert!(
        next(&mut r.sub, Duration::from_secs(30)).await.is_none(),
        "ticks stop when the last client leaves"
    );

    let _sse = r
        .registry
        .register(Transport::Sse, None, &Principal::anonymous());
    assert!(
        next(&mut r.sub, Duration::from_secs(6)).await.is_some(),
        "ticks resume"
    );
    drop(r.worker);
    timeout(Duration::from_secs(1), r.bridge.join())
        .await
        .unwrap();
}
