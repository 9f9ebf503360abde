//! Rules of the bridge core, driven with an explicit clock.

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::classify::DefaultClassifier;

const INTERVAL: Duration = Duration::from_millis(100);
const RESEND: Duration = Duration::from_secs(5);
const STATUS: Duration = Duration::from_millis(250);

fn core() -> BridgeCore {
    BridgeCore::new(
        Timing {
            progress_interval: INTERVAL,
            progress_resend: RESEND,
            queue_status_interval: STATUS,
            job_idle_timeout: Duration::from_secs(3600),
            finished_capacity: 1000,
        },
        Arc::new(DefaultClassifier),
        Arc::new(BridgeStats::default()),
    )
}

/// Drives a core like the bridge task does: timers fire at their deadline.
struct Driver {
    core: BridgeCore,
    now: Instant,
    out: Vec<(Instant, ServerEvent)>,
}

impl Driver {
    fn new() -> Self {
        Driver {
            core: core(),
            now: Instant::now(),
            out: Vec::new(),
        }
    }

    fn send(&mut self, ev: WorkerEvent) {
        let mut out = Vec::new();
        self.core.on_worker_event(ev, self.now, &mut out);
        self.record(out);
    }

    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(due) = self.core.next_deadline().filter(|d| *d <= target) {
            self.now = self.now.max(due);
            let mut out = Vec::new();
            self.core.on_timer(self.now, &mut out);
            self.record(out);
        }
        self.now = target;
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        self.core.flush(self.now, &mut out);
        self.record(out);
    }

    fn record(&mut self, out: Vec<ServerEvent>) {
        let now = self.now;
        self.out.extend(out.into_iter().map(|e| (now, e)));
    }

    fn progress_of(&self, job: Uuid) -> Vec<u8> {
        self.out
            .iter()
            .filter_map(|(_, e)| match e {
                ServerEvent::JobProgress(p) if p.job_id == job => Some(p.progress),
                _ => None,
            })
            .collect()
    }

    fn kinds(&self) -> Vec<&'static str> {
        self.out.iter().map(|(_, e)| e.type_name()).collect()
    }
}

fn queued(job_id: Uuid) -> WorkerEvent {
    WorkerEvent::JobQueued {
        job_id,
        job_type: "Embedding".into(),
        note_id: None,
    }
}

fn started(job_id: Uuid) -> WorkerEvent {
    WorkerEvent::JobStarted {
        job_id,
        job_type: "Embedding".into(),
        note_id: None,
    }
}

fn progress(job_id: Uuid, percent: i32) -> WorkerEvent {
    WorkerEvent::JobProgress {
        job_id,
        note_id: None,
        percent,
        message: None,
    }
}

fn completed(job_id: Uuid) -> WorkerEvent {
    WorkerEvent::JobCompleted {
        job_id,
        job_type: "Embedding".into(),
        note_id: None,
        duration_ms: Some(5),
    }
}

#[test]
fn burst_of_progress_is_rate_limited_and_the_last_value_wins() {
    let mut d = Driver::new();
    let job = Uuid::now_v7();
    d.send(started(job));
    for p in 1..=50 {
        d.send(progress(job, p));
        d.advance(Duration::from_millis(10));
    }
    d.advance(Duration::from_millis(200));
    let values = d.progress_of(job);
    assert_eq!(values.last(), Some(&50), "{values:?}");
    // 500 ms of updates at 10 ms spacing → about one per 100 ms, not 50.
    assert!(values.len() <= 7, "{values:?}");
    let times: Vec<Instant> = d
        .out
        .iter()
        .filter(|(_, e)| e.kind() == event_core::EventKind::JobProgress)
        .map(|(t, _)| *t)
        .collect();
    for w in times.windows(2) {
        assert!(w[1] - w[0] >= INTERVAL);
    }
}

#[test]
fn terminal_flushes_pending_progress_first() {
    let mut d = Driver::new();
    let job = Uuid::now_v7();
    d.send(started(job));
    d.send(progress(job, 10));
    d.send(progress(job, 90)); // held back (same instant)
    d.send(completed(job));
    assert_eq!(
        d.kinds(),
        [
            "JobStarted",
            "QueueStatus", // running 1
            "JobProgress",
            "JobProgress",
            "JobCompleted",
        ]
    );
    assert_eq!(d.progress_of(job), [10, 90]);
    assert_eq!(d.core.tracked_jobs(), 0);
    assert_eq!(
        d.core.next_deadline().is_some(),
        d.core.status_due.is_some()
    );
}

#[test]
fn silent_job_gets_progress_resent() {
    let mut d = Driver::new();
    let job = Uuid::now_v7();
    d.send(started(job));
    d.send(progress(job, 40));
    d.advance(Duration::from_secs(16));
    assert_eq!(d.progress_of(job), [40, 40, 40, 40]);
    d.send(completed(job));
    d.advance(Duration::from_secs(30));
    assert_eq!(d.progress_of(job).len(), 4, "nothing re-sent after the end");
}

#[test]
fn started_job_without_progress_reports_zero_after_silence() {
    let mut d = Driver::new();
    let job = Uuid::now_v7();
    d.send(started(job));
    d.advance(Duration::from_millis(5001));
    assert_eq!(d.progress_of(job), [0]);
}

#[test]
fn queue_status_changes_are_coalesced() {
    let mut d = Driver::new();
    let jobs: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    for j in &jobs {
        d.send(queued(*j));
    }
    d.advance(Duration::from_secs(1));
    let statuses: Vec<QueueStatus> = d
        .out
        .iter()
        .filter_map(|(_, e)| match e {
            ServerEvent::QueueStatus(q) => Some(q.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [QueueStatus::new(1, 0), QueueStatus::new(10, 0)]);
}

#[test]
fn retry_moves_the_job_back_to_pending_without_publishing() {
    let mut d = Driver::new();
    let job = Uuid::now_v7();
    d.send(queued(job));
    d.send(started(job));
    d.send(progress(job, 30));
    d.send(WorkerEvent::JobRetryScheduled {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: None,
        attempt: 2,
        delay_ms: Some(1000),
    });
    assert_eq!(d.core.counts(), QueueStatus::new(1, 0));
    d.send(started(job));
    d.send(progress(job, 10)); // the new attempt starts over: not shown
    d.send(progress(job, 60));
    assert_eq!(d.core.counts(), QueueStatus::new(0, 1));
    let starts = d.kinds().iter().filter(|k| **k == "JobStarted").count();
    assert_eq!(starts, 1);
    assert_eq!(d.progress_of(job).first(), Some(&30));
    assert_eq!(d.core.stats.snapshot().retries_scheduled, 1);
}

#[derive(Debug, Clone)]
enum Op {
    Queued(usize),
    Started(usize),
    Progress(usize, i32, u8),
    Completed(usize),
    Failed(usize),
    Retry(usize),
    Lifecycle,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let job = 0usize..4;
    prop_oneof![
        1 => job.clone().prop_map(Op::Queued),
        1 => job.clone().prop_map(Op::Started),
        4 => (job.clone(), -30i32..140, 0u8..3).prop_map(|(j, p, m)| Op::Progress(j, p, m)),
        1 => job.clone().prop_map(Op::Completed),
        1 => job.clone().prop_map(Op::Failed),
        1 => job.prop_map(Op::Retry),
        1 => Just(Op::Lifecycle),
        3 => (0u64..400).prop_map(Op::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_interleavings_keep_the_ordering_rules(ops in proptest::collection::vec(op(), 1..120)) {
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        let mut d = Driver::new();
        // What the final delivered progress must be: the highest value the
        // worker reported before the job's first terminal event.
        let mut highest: HashMap<Uuid, u8> = HashMap::new();
        let mut ended: HashMap<Uuid, bool> = HashMap::new();
        let mut terminal_sent: HashMap<Uuid, bool> = HashMap::new();
        for op in ops {
            match op {
                Op::Queued(j) => d.send(queued(ids[j])),
                Op::Started(j) => d.send(started(ids[j])),
                Op::Progress(j, p, m) => {
                    if !ended.contains_key(&ids[j]) {
                        let v = p.clamp(0, 100) as u8;
                        let h = highest.entry(ids[j]).or_insert(v);
                        *h = (*h).max(v);
                    }
                    d.send(WorkerEvent::JobProgress {
                        job_id: ids[j],
                        note_id: None,
                        percent: p,
                        message: (m > 0).then(|| format!("step {m}")),
                    });
                }
                Op::Completed(j) => {
                    ended.insert(ids[j], true);
                    terminal_sent.insert(ids[j], true);
                    d.send(completed(ids[j]));
                }
                Op::Failed(j) => {
                    ended.insert(ids[j], true);
                    terminal_sent.insert(ids[j], true);
                    d.send(WorkerEvent::JobFailed {
                        job_id: ids[j],
                        job_type: "Embedding".into(),
                        note_id: None,
                        error: "Connection reset by peer at 10.0.0.7:5432".into(),
                    });
                }
                Op::Retry(j) => d.send(WorkerEvent::JobRetryScheduled {
                    job_id: ids[j],
                    job_type: "Embedding".into(),
                    note_id: None,
                    attempt: 2,
                    delay_ms: None,
                }),
                Op::Lifecycle => d.send(WorkerEvent::WorkerStopped),
                Op::Advance(ms) => d.advance(Duration::from_millis(ms)),
            }
        }
        d.advance(Duration::from_secs(1));
        d.flush();

        let mut last_status_at: Option<Instant> = None;
        for (at, e) in &d.out {
            if let ServerEvent::QueueStatus(q) = e {
                prop_assert_eq!(q.total_jobs, q.pending + q.running);
                if let Some(prev) = last_status_at {
                    prop_assert!(*at - prev >= STATUS, "QueueStatus too often");
                }
                last_status_at = Some(*at);
            }
            prop_assert!(e.validate().is_ok(), "{:?}", e);
        }

        for id in &ids {
            let mine: Vec<&(Instant, ServerEvent)> =
                d.out.iter().filter(|(_, e)| e.job_id() == Some(*id)).collect();
            let rank = |e: &ServerEvent| match e {
                ServerEvent::JobQueued(_) => 0,
                ServerEvent::JobStarted(_) => 1,
                ServerEvent::JobProgress(_) => 2,
                _ => 3,
            };
            let mut prev_rank = -1;
            let mut prev_progress = 0u8;
            let mut prev_progress_at: Option<Instant> = None;
            for (i, (at, e)) in mine.iter().enumerate() {
                let r = rank(e);
                prop_assert!(prev_rank < 3, "event after terminal: {:?}", e);
                if r == 2 {
                    prop_assert!(r >= prev_rank);
                } else {
                    prop_assert!(r > prev_rank, "out of order: {:?}", e);
                }
                prev_rank = r;
                if let ServerEvent::JobProgress(p) = e {
                    prop_assert!(p.progress <= 100);
                    prop_assert!(p.progress >= prev_progress, "progress went back");
                    prev_progress = p.progress;
                    let flushed_by_terminal = mine
                        .get(i + 1)
                        .is_some_and(|(t, n)| rank(n) == 3 && t == at);
                    if let Some(prev) = prev_progress_at {
                        prop_assert!(
                            *at - prev >= INTERVAL || flushed_by_terminal,
                            "progress faster than the rate limit"
                        );
                    }
                    prev_progress_at = Some(*at);
                }
                if let ServerEvent::JobFailed(f) = e {
                    prop_assert_eq!(f.error.as_str(), "connection");
                }
            }
            let terminals = mine.iter().filter(|(_, e)| rank(e) == 3).count();
            prop_assert_eq!(terminals, usize::from(terminal_sent.contains_key(id)));
            if let Some(h) = highest.get(id) {
                let delivered = d.progress_of(*id);
                prop_assert_eq!(delivered.last(), Some(h), "final progress lost");
            }
        }
        let expected = d.core.counts();
        let last = d.out.iter().rev().find_map(|(_, e)| match e {
            ServerEvent::QueueStatus(q) => Some(q.clone()),
            _ => None,
        });
        prop_assert_eq!(last.unwrap_or(QueueStatus::new(0, 0)), expected);
    }
}

#[test]
fn resync_does_not_count_events_the_source_already_includes() {
    let mut d = Driver::new();
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    // The host says 2 pending while our two JobQueued are still in the channel.
    d.core.resync(&QueueStatus::new(2, 0), 2);
    d.send(queued(a));
    d.send(queued(b));
    assert_eq!(d.core.counts(), QueueStatus::new(2, 0));
    d.send(queued(c));
    d.send(started(a));
    assert_eq!(d.core.counts(), QueueStatus::new(2, 1));
    assert_eq!(d.kinds().iter().filter(|k| **k == "JobQueued").count(), 3);
}
