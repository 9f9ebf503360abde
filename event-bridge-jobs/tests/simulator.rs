//! The simulated worker through the real bridge onto a real bus, including
//! the AI-revision pattern: the note update commits (and `NoteUpdated` goes
//! out) before `JobCompleted`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Duration;

use event_bridge_jobs::simulator::{JobPlan, SimulatedJob, SimulatedWorker, SimulatorConfig};
use event_bridge_jobs::{AfterCommit, JobBridge, JobBridgeConfig, NoteChange, WorkerEvent};
use event_core::{
    ConnectionRegistry, EventBus, NoteOperation, QueueStatus, Received, ServerEvent, Subscription,
};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use tokio::time::timeout;
use uuid::Uuid;

fn fast() -> SimulatorConfig {
    SimulatorConfig {
        steps: 4,
        step_duration: Duration::from_millis(5),
        concurrency: 2,
        seed: Some(7),
        ..SimulatorConfig::default()
    }
}

/// Events on the bus until (and including) `job`'s terminal event.
async fn until_terminal(sub: &mut Subscription, job: Uuid) -> Vec<ServerEvent> {
    let mut seen = Vec::new();
    timeout(Duration::from_secs(10), async {
        loop {
            match sub.recv().await {
                Received::Event(ev) => {
                    let p = ev.payload().clone();
                    let done = p.job_id() == Some(job)
                        && matches!(p, ServerEvent::JobCompleted(_) | ServerEvent::JobFailed(_));
                    seen.push(p);
                    if done {
                        return;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("job did not finish in time");
    seen
}

#[tokio::test]
async fn simulator_drives_a_job_from_queued_to_completed_with_monotone_progress() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let worker = SimulatedWorker::start(fast());
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(worker.stats_source())
        .spawn(worker.subscribe());

    let note = Uuid::now_v7();
    let job = worker.submit("Embedding", Some(note)).unwrap();
    let events = until_terminal(&mut sub, job).await;
    let mine: Vec<&ServerEvent> = events.iter().filter(|e| e.job_id() == Some(job)).collect();
    assert!(matches!(mine.first(), Some(ServerEvent::JobQueued(q)) if q.note_id == Some(note)));
    assert!(matches!(mine.get(1), Some(ServerEvent::JobStarted(_))));
    let progress: Vec<u8> = mine
        .iter()
        .filter_map(|e| match e {
            ServerEvent::JobProgress(p) => Some(p.progress),
            _ => None,
        })
        .collect();
    assert!(!progress.is_empty());
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&100));
    let ServerEvent::JobCompleted(done) = mine.last().unwrap() else {
        panic!("{mine:?}")
    };
    assert_eq!(done.note_id, Some(note));
    assert!(done.duration_ms.is_some());
    assert_eq!(worker.queue_status(), QueueStatus::new(0, 0));

    worker.shutdown().await;
    let stats = timeout(Duration::from_secs(5), bridge.join())
        .await
        .expect("bridge ends with the worker");
    assert_eq!(
        stats.worker_lifecycle, 2,
        "WorkerStarted and WorkerStopped counted"
    );
}

#[tokio::test]
async fn queue_status_from_a_late_bridge_does_not_double_count() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let worker = SimulatedWorker::start(fast());
    let rx = worker.subscribe();
    // Jobs submitted before the bridge runs: the worker's own numbers
    // already include them when the bridge asks at start-up.
    let jobs: Vec<Uuid> = (0..3)
        .map(|_| worker.submit("Embedding", None).unwrap())
        .collect();
    let _bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(worker.stats_source())
        .spawn(rx);
    let mut statuses = Vec::new();
    let mut done = 0;
    timeout(Duration::from_secs(10), async {
        while done < jobs.len() {
            let Received::Event(ev) = sub.recv().await else {
                panic!("bus closed")
            };
            match ev.payload() {
                ServerEvent::QueueStatus(q) => statuses.push(q.clone()),
                ServerEvent::JobCompleted(_) => done += 1,
                _ => {}
            }
        }
        // The final status follows the last completion (coalesced).
        while statuses.last() != Some(&QueueStatus::new(0, 0)) {
            if let Received::Event(ev) = sub.recv().await
                && let ServerEvent::QueueStatus(q) = ev.payload()
            {
                statuses.push(q.clone());
            }
        }
    })
    .await
    .expect("queue drains to zero");
    assert!(
        statuses.iter().all(|q| q.total_jobs <= 3 && q.running <= 2),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn planned_failure_is_published_as_a_code() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let worker = SimulatedWorker::start(fast());
    let _bridge =
        JobBridge::new(&bus, &registry, JobBridgeConfig::default()).spawn(worker.subscribe());
    let job = worker
        .submit_plan(
            "Embedding",
            None,
            JobPlan {
                steps: 4,
                step_duration: Duration::from_millis(2),
                fail_at: Some((
                    2,
                    "HTTP 429 Too Many Requests from https://api.example/v1".into(),
                )),
            },
        )
        .unwrap();
    let events = until_terminal(&mut sub, job).await;
    let ServerEvent::JobFailed(f) = events.last().unwrap() else {
        panic!("{events:?}")
    };
    assert_eq!(f.error, "rate_limited");
    let progress: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::JobProgress(p) if p.job_id == job => Some(p.progress),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [25], "only the step before the failure");
}

#[tokio::test]
async fn failed_attempt_is_retried_and_the_bridge_counts_it_without_publishing() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let worker = SimulatedWorker::start(SimulatorConfig {
        retries: 1,
        ..fast()
    });
    let mut raw = worker.subscribe();
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(worker.stats_source())
        .spawn(worker.subscribe());
    let job = worker
        .submit_plan(
            "Embedding",
            None,
            JobPlan {
                steps: 4,
                step_duration: Duration::from_millis(2),
                fail_at: Some((3, "upstream 503 Service Unavailable".into())),
            },
        )
        .unwrap();
    let events = until_terminal(&mut sub, job).await;
    let mine: Vec<&ServerEvent> = events.iter().filter(|e| e.job_id() == Some(job)).collect();
    assert!(
        matches!(mine.last(), Some(ServerEvent::JobCompleted(_))),
        "{mine:?}"
    );
    let starts = mine
        .iter()
        .filter(|e| matches!(e, ServerEvent::JobStarted(_)))
        .count();
    assert_eq!(starts, 1, "the retry's start is not announced again");
    let progress: Vec<u8> = mine
        .iter()
        .filter_map(|e| match e {
            ServerEvent::JobProgress(p) => Some(p.progress),
            _ => None,
        })
        .collect();
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&100));
    let mut saw_retry = false;
    while let Ok(ev) = raw.try_recv() {
        saw_retry |= matches!(ev, WorkerEvent::JobRetryScheduled { attempt: 2, .. });
    }
    assert!(saw_retry, "the worker announced the retry");
    worker.shutdown().await;
    let stats = timeout(Duration::from_secs(5), bridge.join())
        .await
        .unwrap();
    assert_eq!(stats.retries_scheduled, 1);
}

#[tokio::test]
async fn failure_rate_one_fails_every_job_and_concurrency_is_respected() {
    let worker = SimulatedWorker::start(SimulatorConfig {
        failure_rate: 1.0,
        concurrency: 1,
        ..fast()
    });
    let mut events = worker.subscribe();
    let jobs: Vec<Uuid> = (0..3)
        .map(|_| worker.submit("Embedding", None).unwrap())
        .collect();
    let mut failed = 0;
    let mut running = 0i32;
    timeout(Duration::from_secs(10), async {
        while failed < jobs.len() {
            match events.recv().await.unwrap() {
                WorkerEvent::JobStarted { .. } => {
                    running += 1;
                    assert!(running <= 1, "more jobs running than slots");
                }
                WorkerEvent::JobFailed { .. } => {
                    running -= 1;
                    failed += 1;
                }
                WorkerEvent::JobCompleted { .. } => panic!("failure rate 1 completed a job"),
                _ => {}
            }
        }
    })
    .await
    .unwrap();
}

/// UC-002: the AI-revision job updates its note in a transaction, the
/// `NoteUpdated` is published on commit, and only then does the job complete.
#[tokio::test]
async fn ai_revision_hook_commits_note_before_job_completed() {
    let path = std::env::temp_dir().join(format!("ebj-sim-{}.db", Uuid::now_v7().simple()));
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
        .unwrap()
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    let note = Uuid::now_v7();
    sqlx::query("INSERT INTO notes (id, body) VALUES (?, 'draft')")
        .bind(note.to_string())
        .execute(&pool)
        .await
        .unwrap();

    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let worker = SimulatedWorker::start(fast());
    let _bridge =
        JobBridge::new(&bus, &registry, JobBridgeConfig::default()).spawn(worker.subscribe());
    {
        let pool = pool.clone();
        let bus = bus.clone();
        worker.on_complete("AiRevision", move |job: SimulatedJob| {
            let pool = pool.clone();
            let bus = bus.clone();
            async move {
                let note_id = job.note_id.ok_or("AiRevision needs a note")?;
                let mut tx = AfterCommit::begin(&pool, &bus).await?;
                sqlx::query("UPDATE notes SET body = 'revised by AI' WHERE id = ?")
                    .bind(note_id.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.note_updated(NoteChange::new(note_id, NoteOperation::Updated).ai_content(true));
                tx.commit().await?;
                Ok(())
            }
        });
    }

    let job = worker.submit("AiRevision", Some(note)).unwrap();
    let mut note_seen_at = None;
    let mut completed_at = None;
    timeout(Duration::from_secs(10), async {
        let mut i = 0;
        while completed_at.is_none() {
            let Received::Event(ev) = sub.recv().await else {
                panic!("bus closed")
            };
            match ev.payload() {
                ServerEvent::NoteUpdated(n) if n.note_id == note => {
                    assert!(n.has_ai_content);
                    // What a client re-fetching now would read.
                    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = ?")
                        .bind(note.to_string())
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                    assert_eq!(body, "revised by AI");
                    note_seen_at = Some(i);
                }
                ServerEvent::JobCompleted(c) if c.job_id == job => completed_at = Some(i),
                ServerEvent::JobFailed(f) if f.job_id == job => panic!("job failed: {f:?}"),
                _ => {}
            }
            i += 1;
        }
    })
    .await
    .unwrap();
    assert!(note_seen_at.is_some(), "NoteUpdated missing");
    assert!(
        note_seen_at < completed_at,
        "NoteUpdated must precede JobCompleted"
    );
    worker.shutdown().await;
    drop(pool);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test]
async fn hook_error_fails_the_job() {
    let worker = SimulatedWorker::start(fast());
    let mut events = worker.subscribe();
    worker.on_complete("AiRevision", |_job: SimulatedJob| async {
        Err::<(), _>("note not found".into())
    });
    let job = worker.submit("AiRevision", None).unwrap();
    let outcome = timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await.unwrap() {
                WorkerEvent::JobFailed { job_id, error, .. } if job_id == job => {
                    return Some(error);
                }
                WorkerEvent::JobCompleted { job_id, .. } if job_id == job => return None,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(outcome.as_deref(), Some("note not found"));
}

#[tokio::test]
async fn dropping_the_worker_stops_it_and_ends_the_bridge() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let worker = SimulatedWorker::start(fast());
    let bridge = JobBridge::new(&bus, &registry, JobBridgeConfig::default())
        .with_queue_stats(worker.stats_source())
        .spawn(worker.subscribe());
    drop(worker);
    let stats = timeout(Duration::from_secs(5), bridge.join())
        .await
        .expect("the bridge ends once the dropped worker has stopped");
    assert_eq!(stats.worker_lifecycle, 2);
}

#[tokio::test]
async fn shutdown_cancels_queued_jobs_and_closes_the_channel() {
    let worker = SimulatedWorker::start(SimulatorConfig {
        concurrency: 1,
        step_duration: Duration::from_secs(60),
        ..fast()
    });
    let mut events = worker.subscribe();
    let a = worker.submit("Embedding", None).unwrap();
    let b = worker.submit("Embedding", None).unwrap();
    timeout(Duration::from_secs(5), worker.shutdown())
        .await
        .unwrap();
    assert!(worker.submit("Embedding", None).is_err());
    let mut failed = Vec::new();
    let mut stopped = false;
    timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(WorkerEvent::JobFailed { job_id, .. }) => failed.push(job_id),
                Ok(WorkerEvent::WorkerStopped) => stopped = true,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("channel closes after shutdown");
    failed.sort();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(failed, expected);
    assert!(stopped);
    assert_eq!(worker.queue_status(), QueueStatus::new(0, 0));
}
