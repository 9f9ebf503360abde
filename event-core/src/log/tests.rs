use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use uuid::Uuid;

use super::*;
use crate::bus::{BusConfig, EventBus, SeqStart};
use crate::event::EventMeta;
use crate::filter::{EventFilter, TopicPattern};
use crate::payload::QueueStatus;
use crate::replay_source::ReplaySource;
use crate::ring::{Cursor, ReplayMiss};

/// A [`MemoryLog`] whose appends can be held (a semaphore permit per
/// append) or made to fail, to drive the writer through a slow or broken
/// storage, and whose next read can be preceded by a topic's prune (the
/// pruner's round landing inside a reader's read).
#[derive(Clone, Default)]
pub(super) struct Faulty {
    pub(super) inner: MemoryLog,
    fail_next: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
    appends: Arc<AtomicUsize>,
    /// A topic and the retention to prune it by at the start of the next
    /// read (taken by that read).
    pub(super) prune_on_read: Arc<std::sync::Mutex<Option<(String, Retention)>>>,
}

#[async_trait]
impl EventLog for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    async fn append(&self, events: &[Arc<Event>]) -> Result<(), LogError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(LogError::Storage {
                message: "injected failure".into(),
                source: None,
            });
        }
        self.appends.fetch_add(1, Ordering::SeqCst);
        self.inner.append(events).await
    }
    async fn read_after(&self, after: u64, limit: usize) -> Result<Vec<Arc<Event>>, LogError> {
        let prune = self
            .prune_on_read
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some((topic, retention)) = prune {
            let now = OffsetDateTime::now_utc();
            self.inner.prune_topic(&topic, &retention, now).await?;
        }
        self.inner.read_after(after, limit).await
    }
    async fn seq_at_time(&self, t: OffsetDateTime) -> Result<Option<u64>, LogError> {
        self.inner.seq_at_time(t).await
    }
    async fn seq_of(&self, id: Uuid) -> Result<Option<u64>, LogError> {
        self.inner.seq_of(id).await
    }
    async fn first_seq(&self) -> Result<u64, LogError> {
        self.inner.first_seq().await
    }
    async fn bounds(&self) -> Result<LogBounds, LogError> {
        self.inner.bounds().await
    }
    async fn prune(&self, r: &Retention, now: OffsetDateTime) -> Result<u64, LogError> {
        self.inner.prune(r, now).await
    }
    async fn topic_retentions(&self) -> Result<Vec<TopicRetention>, LogError> {
        self.inner.topic_retentions().await
    }
    async fn set_topic_retention(&self, record: &TopicRetention) -> Result<(), LogError> {
        self.inner.set_topic_retention(record).await
    }
    async fn prune_topic(
        &self,
        topic: &str,
        retention: &Retention,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, LogError> {
        self.inner.prune_topic(topic, retention, now).await
    }
}

fn status(n: u64) -> QueueStatus {
    QueueStatus::new(n, 0)
}

fn bus_at(first: u64, replay: usize) -> EventBus {
    EventBus::new(BusConfig {
        replay_size: replay,
        seq_start: SeqStart::At(first),
        ..BusConfig::default()
    })
}

async fn seqs(log: &dyn EventLog) -> Vec<u64> {
    log.read_after(0, usize::MAX)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq())
        .collect()
}

#[tokio::test]
async fn durable_publish_resolves_after_the_commit_and_plain_publishes_are_logged_too() {
    let bus = bus_at(1, 16);
    let log = MemoryLog::default();
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), LogConfig::default())
        .await
        .unwrap();
    bus.publish(status(1));
    let events = bus
        .publish_durable([status(2), status(3)], &EventMeta::default())
        .await
        .unwrap();
    assert_eq!(events.iter().map(|e| e.seq()).collect::<Vec<_>>(), [2, 3]);
    // Resolved means stored: no wait needed here.
    assert_eq!(seqs(&log).await, [1, 2, 3]);
    let stored = log.read_after(1, 1).await.unwrap();
    assert_eq!(stored[0].id(), events[0].id());
    assert_eq!(stored[0].json(), events[0].json());
    writer.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(writer.stats().committed_seq, 3);
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn concurrent_durable_publishers_share_commits() {
    let bus = bus_at(1, 16);
    let gate = Arc::new(Semaphore::new(0));
    let log = Faulty {
        gate: Some(gate.clone()),
        ..Faulty::default()
    };
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), LogConfig::default())
        .await
        .unwrap();
    let publishers: Vec<_> = (0..50)
        .map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.publish_durable([status(i)], &EventMeta::default())
                    .await
                    .map(|e| e[0].seq())
            })
        })
        .collect();
    // Every publisher is waiting before any append may finish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while bus.last_seq() < 50 {
        assert!(tokio::time::Instant::now() < deadline, "publishers stuck");
        tokio::task::yield_now().await;
    }
    gate.add_permits(1000);
    for p in publishers {
        p.await.unwrap().unwrap();
    }
    let appends = log.appends.load(Ordering::SeqCst);
    assert!(
        appends < 50,
        "{appends} appends for 50 events: no group commit"
    );
    assert_eq!(seqs(&log).await, (1..=50).collect::<Vec<_>>());
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_failing_append_is_retried_and_durable_publishers_time_out_meanwhile() {
    let bus = bus_at(1, 16);
    let log = Faulty::default();
    log.fail_next.store(3, Ordering::SeqCst);
    let config = LogConfig {
        commit_timeout: Duration::from_millis(30),
        ..LogConfig::default()
    };
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), config)
        .await
        .unwrap();
    let err = bus
        .publish_durable([status(1)], &EventMeta::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Timeout(_)), "{err:?}");
    // Published anyway, and stored once the storage recovers.
    writer.flush(Duration::from_secs(10)).await.unwrap();
    assert_eq!(seqs(&log).await, [1]);
    assert!(writer.stats().errors >= 1);
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_full_queue_holds_durable_publishers_and_drops_only_past_twice_the_bound() {
    let bus = bus_at(1, 64);
    let gate = Arc::new(Semaphore::new(0));
    let log = Faulty {
        gate: Some(gate.clone()),
        ..Faulty::default()
    };
    let config = LogConfig {
        max_pending: 4,
        commit_timeout: Duration::from_millis(50),
        ..LogConfig::default()
    };
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), config)
        .await
        .unwrap();
    for i in 0..10 {
        bus.publish(status(i));
    }
    // 8 queued (twice the bound), 2 not logged.
    assert_eq!(writer.stats().dropped, 2);
    let before = bus.last_seq();
    let err = bus
        .publish_durable([status(99)], &EventMeta::default())
        .await
        .unwrap_err();
    assert!(matches!(err, LogError::Timeout(_)), "{err:?}");
    assert_eq!(bus.last_seq(), before, "a held durable publisher published");
    gate.add_permits(1000);
    writer.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(seqs(&log).await, (1..=8).collect::<Vec<_>>());
    // Room again: durable publishing works.
    let e = bus
        .publish_durable([status(100)], &EventMeta::default())
        .await
        .unwrap();
    assert_eq!(seqs(&log).await.last(), Some(&e[0].seq()));
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn without_a_writer_durable_publishing_is_plain_publishing() {
    let bus = bus_at(1, 16);
    let e = bus
        .publish_durable([status(1)], &EventMeta::default())
        .await
        .unwrap();
    assert_eq!(e[0].seq(), 1);
}

/// A log holding 1..=100 and a restarted bus continuing at `first`.
async fn restarted(first: u64, replay: usize) -> (MemoryLog, EventBus, Vec<Arc<Event>>) {
    let old = bus_at(1, 8);
    let log = MemoryLog::default();
    let events: Vec<_> = (0..100).map(|i| old.publish(status(i))).collect();
    log.append(&events).await.unwrap();
    (log, bus_at(first, replay), events)
}

#[tokio::test]
async fn a_cursor_from_before_a_restart_resumes_from_the_log_then_the_ring() {
    let (log, bus, old) = restarted(101, 8).await;
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), LogConfig::default())
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish(status(i));
    }
    let replay = LogReplay::new(&bus, Arc::new(log.clone()));
    // By sequence and by id, across the restart.
    for cursor in [Cursor::Seq(90), Cursor::Id(old[89].id())] {
        let got = replay.replay_since(&cursor).await.unwrap();
        let seqs: Vec<u64> = got.events.iter().map(|e| e.seq()).collect();
        assert_eq!(seqs, (91..=105).collect::<Vec<_>>(), "{cursor}");
        assert_eq!(got.through, 105);
    }
    // Newest event: nothing to replay.
    assert!(
        replay
            .replay_since(&Cursor::Seq(105))
            .await
            .unwrap()
            .events
            .is_empty()
    );
    assert_eq!(
        replay.replay_since(&Cursor::Seq(500)).await.unwrap_err(),
        ReplayMiss::Unknown
    );
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_restart_at_a_later_sequence_leaves_no_gap_in_a_replay() {
    // The clock-based start jumps past the log's end.
    let (log, bus, _) = restarted(1_000_000, 8).await;
    bus.publish(status(7));
    let replay = LogReplay::new(&bus, Arc::new(log));
    let got = replay.replay_since(&Cursor::Seq(99)).await.unwrap();
    let seqs: Vec<u64> = got.events.iter().map(|e| e.seq()).collect();
    assert_eq!(seqs, [100, 1_000_000]);
}

#[tokio::test]
async fn pruned_or_too_long_replays_are_expired() {
    let (log, bus, old) = restarted(101, 8).await;
    log.prune(
        &Retention {
            max_age: None,
            max_events: Some(50),
            max_bytes: None,
        },
        OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let replay = LogReplay::new(&bus, Arc::new(log.clone())).max_replay(20);
    assert_eq!(
        replay.replay_since(&Cursor::Seq(10)).await.unwrap_err(),
        ReplayMiss::Expired
    );
    assert_eq!(
        replay
            .replay_since(&Cursor::Id(old[9].id()))
            .await
            .unwrap_err(),
        ReplayMiss::Expired
    );
    // 49 events after 51: more than 20.
    assert_eq!(
        replay.replay_since(&Cursor::Seq(51)).await.unwrap_err(),
        ReplayMiss::Expired
    );
    assert_eq!(
        replay
            .replay_since(&Cursor::Seq(85))
            .await
            .unwrap()
            .events
            .len(),
        15
    );
    // History pages start at the log's oldest.
    let page = replay.history(None, 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        [51, 52, 53]
    );
}

#[tokio::test]
async fn a_log_far_behind_the_ring_is_a_resync_not_a_gap() {
    let bus = bus_at(1, 4);
    let log = MemoryLog::default();
    let early: Vec<_> = (0..3).map(|i| bus.publish(status(i))).collect();
    log.append(&early).await.unwrap();
    for i in 0..10 {
        bus.publish(status(i)); // 4..=13, never logged; the ring keeps 10..=13
    }
    let replay = LogReplay::new(&bus, Arc::new(log));
    assert_eq!(
        replay.replay_since(&Cursor::Seq(1)).await.unwrap_err(),
        ReplayMiss::Expired
    );
}

#[tokio::test]
async fn the_writer_applies_retention_in_the_background() {
    let bus = bus_at(1, 16);
    let log = MemoryLog::default();
    let config = LogConfig {
        retention: Retention {
            max_age: None,
            max_events: Some(5),
            max_bytes: None,
        },
        prune_interval: Duration::from_millis(10),
        ..LogConfig::default()
    };
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), config)
        .await
        .unwrap();
    for i in 0..20 {
        bus.publish(status(i));
    }
    writer.flush(Duration::from_secs(5)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = writer.stats();
        if s.pruned == 15 && s.bounds.first_seq == 16 && s.bounds.events == 5 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not pruned: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seqs(&log).await, (16..=20).collect::<Vec<_>>());
    writer.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_topic_retention_prunes_in_the_background_and_refuses_only_readers_of_that_topic() {
    // A ring of 2: replays come from the log.
    let bus = bus_at(1, 2);
    let log = MemoryLog::default();
    log.set_topic_retention(&TopicRetention {
        topic: "noisy".into(),
        retention: Some(Retention {
            max_age: None,
            max_events: Some(2),
            max_bytes: None,
        }),
        pruned_through: 0,
    })
    .await
    .unwrap();
    let config = LogConfig {
        prune_interval: Duration::from_millis(10),
        ..LogConfig::default()
    };
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), config)
        .await
        .unwrap();
    let noisy = EventMeta::default().topic("noisy");
    for i in 0..6 {
        bus.publish_with(status(i), noisy.clone()); // 1, 3, 5, 7, 9, 11
        bus.publish(status(i)); // 2, 4, …, 12: topic `queue`
    }
    writer.flush(Duration::from_secs(5)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let marks = log.topic_retentions().await.unwrap();
        if marks[0].pruned_through == 7 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not pruned: {marks:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(seqs(&log).await, [2, 4, 6, 8, 9, 10, 11, 12]);
    let replay = LogReplay::new(&bus, Arc::new(log.clone()));
    let queue_only = EventFilter::all().with_topics(vec![TopicPattern::parse("queue").unwrap()]);
    // A reader of `queue` resumes from before the topic's pruning ...
    let got = replay
        .replay_matching(&Cursor::Seq(2), &queue_only)
        .await
        .unwrap();
    assert_eq!(got.events.first().map(|e| e.seq()), Some(4));
    // ... a reader that may see `noisy` (or anything) resyncs,
    for filter in [
        EventFilter::all(),
        EventFilter::all().with_topics(vec![TopicPattern::parse("no*").unwrap()]),
    ] {
        assert_eq!(
            replay
                .replay_matching(&Cursor::Seq(2), &filter)
                .await
                .unwrap_err(),
            ReplayMiss::Expired
        );
    }
    assert_eq!(
        replay.replay_since(&Cursor::Seq(2)).await.unwrap_err(),
        ReplayMiss::Expired
    );
    // ... unless its cursor is past the topic's watermark.
    assert_eq!(
        replay
            .replay_matching(&Cursor::Seq(7), &EventFilter::all())
            .await
            .unwrap()
            .events
            .first()
            .map(|e| e.seq()),
        Some(8)
    );
    let page = replay
        .history_matching(Some(&Cursor::Seq(2)), 2, &queue_only)
        .await
        .unwrap();
    assert_eq!(page.iter().map(|e| e.seq()).collect::<Vec<_>>(), [4, 6]);
    writer.shutdown(Duration::from_secs(5)).await;
}

/// Blocks the calling thread (and so its current-thread runtime) until the
/// writer has committed `seq`, or `deadline` passes.
fn committed_while_blocked(writer: &LogWriter, seq: u64, deadline: Duration) -> bool {
    let until = std::time::Instant::now() + deadline;
    while std::time::Instant::now() < until {
        if writer.stats().committed_seq >= seq {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

#[tokio::test(flavor = "current_thread")]
async fn a_writer_on_its_own_runtime_commits_while_the_publishers_runtime_is_busy() {
    let own = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let bus = bus_at(1, 16);
    let log = MemoryLog::default();
    let writer = LogWriter::start_on(
        &bus,
        Arc::new(log.clone()),
        LogConfig::default(),
        own.handle(),
    )
    .await
    .unwrap();
    let seq = bus.publish(status(1)).seq();
    // This runtime's only thread never yields here: only a writer that runs
    // elsewhere can commit.
    assert!(committed_while_blocked(
        &writer,
        seq,
        Duration::from_secs(10)
    ));
    assert_eq!(seqs(&log).await, [1]);
    writer.shutdown(Duration::from_secs(5)).await;
    own.shutdown_background();
}

#[tokio::test(flavor = "current_thread")]
async fn a_writer_on_the_publishers_runtime_waits_for_its_turn() {
    // The counterpart of the test above: it shows that test can fail.
    let bus = bus_at(1, 16);
    let log = MemoryLog::default();
    let writer = LogWriter::start(&bus, Arc::new(log.clone()), LogConfig::default())
        .await
        .unwrap();
    let seq = bus.publish(status(1)).seq();
    assert!(!committed_while_blocked(
        &writer,
        seq,
        Duration::from_millis(200)
    ));
    writer.flush(Duration::from_secs(5)).await.unwrap();
    assert_eq!(writer.stats().committed_seq, seq);
    writer.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn durable_publishing_can_run_on_any_worker_thread() {
    fn send<T: Send>(_: T) {}
    let bus = bus_at(1, 4);
    let meta = EventMeta::default();
    send(bus.publish_durable([status(1)], &meta));
}

/// A sink that records what it gets and can be held.
struct Held {
    gate: Arc<Semaphore>,
    got: std::sync::Mutex<Vec<u64>>,
    lags: AtomicUsize,
}

#[async_trait]
impl crate::sink::EventSink for Held {
    fn name(&self) -> &str {
        "held"
    }
    async fn deliver(&self, event: Arc<Event>) -> Result<(), crate::sink::SinkError> {
        self.gate.acquire().await.expect("gate").forget();
        self.got.lock().unwrap().push(event.seq());
        Ok(())
    }
    async fn on_lag(&self, _missed: u64) {
        self.lags.fetch_add(1, Ordering::SeqCst);
    }
}

/// A channel and a ring of 4, a sink held while a burst of 300 overruns
/// both, then released; with `with_log`, the runner catches up from a log.
async fn burst_past_a_held_sink(
    with_log: bool,
) -> (Arc<Held>, crate::sink::SinkRunner, Option<LogWriter>) {
    let bus = EventBus::new(BusConfig {
        capacity: 4,
        replay_size: 4,
        seq_start: SeqStart::At(1),
    });
    let mut runner = crate::sink::SinkRunner::new(&bus);
    let writer = if with_log {
        let log = MemoryLog::default();
        let writer = LogWriter::start(&bus, Arc::new(log.clone()), LogConfig::default())
            .await
            .unwrap();
        runner.set_catch_up(Arc::new(LogReplay::new(&bus, Arc::new(log))));
        Some(writer)
    } else {
        None
    };
    let sink = Arc::new(Held {
        gate: Arc::new(Semaphore::new(0)),
        got: std::sync::Mutex::new(Vec::new()),
        lags: AtomicUsize::new(0),
    });
    runner.register(sink.clone());
    for i in 0..300 {
        bus.publish(status(i));
    }
    sink.gate.add_permits(10_000);
    (sink, runner, writer)
}

/// Waits (up to 10 s) until `done` holds for `sink`.
async fn until(sink: &Held, what: &str, done: impl Fn(&Held) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(sink) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} delivered, {} lags",
            sink.got.lock().unwrap().len(),
            sink.lags.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_sink_that_falls_behind_catches_up_from_the_log_without_loss() {
    let (sink, runner, writer) = burst_past_a_held_sink(true).await;
    until(&sink, "all 300 delivered", |s| {
        s.got.lock().unwrap().len() >= 300
    })
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    assert_eq!(*sink.got.lock().unwrap(), (1..=300).collect::<Vec<_>>());
    assert_eq!(sink.lags.load(Ordering::SeqCst), 0, "reported a lag");
    if let Some(writer) = writer {
        writer.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test]
async fn without_a_log_the_same_sink_reports_the_lag() {
    let (sink, runner, _) = burst_past_a_held_sink(false).await;
    until(&sink, "a lag reported", |s| {
        s.lags.load(Ordering::SeqCst) > 0
    })
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    assert!(sink.got.lock().unwrap().len() < 300);
}

fn big(n: u64) -> crate::payload::JobProgress {
    crate::payload::JobProgress {
        job_id: Uuid::now_v7(),
        note_id: None,
        progress: (n % 100) as u8,
        message: Some("x".repeat(10 * 1024)),
    }
}

#[tokio::test]
async fn a_replay_over_its_byte_bound_is_expired() {
    let bus = bus_at(1, 2);
    let log = MemoryLog::default();
    let events: Vec<_> = (0..40).map(|i| bus.publish(big(i))).collect();
    log.append(&events).await.unwrap();
    // ~20 KiB per event counted (payload and envelope): 40 need ~800 KiB.
    let replay = LogReplay::new(&bus, Arc::new(log.clone())).max_replay_bytes(400 << 10);
    assert_eq!(
        replay.replay_since(&Cursor::Seq(1)).await.unwrap_err(),
        ReplayMiss::Expired
    );
    let near = replay.replay_since(&Cursor::Seq(30)).await.unwrap();
    assert_eq!(near.events.len(), 10);
    assert!(near.hold.is_some(), "the replay holds its memory");
}

#[tokio::test]
async fn replays_share_a_memory_budget_released_when_written() {
    let bus = bus_at(1, 2);
    let log = MemoryLog::default();
    let events: Vec<_> = (0..40).map(|i| bus.publish(big(i))).collect();
    log.append(&events).await.unwrap();
    // Room for about one replay of 20 events (~400 KiB).
    let replay = LogReplay::new(&bus, Arc::new(log.clone())).replay_memory(500 << 10);
    let first = replay.replay_since(&Cursor::Seq(20)).await.unwrap();
    assert_eq!(first.events.len(), 20);
    assert_eq!(
        replay.replay_since(&Cursor::Seq(20)).await.unwrap_err(),
        ReplayMiss::Expired,
        "a second replay found room the first holds"
    );
    drop(first);
    assert_eq!(
        replay
            .replay_since(&Cursor::Seq(20))
            .await
            .unwrap()
            .events
            .len(),
        20
    );
}

#[tokio::test]
async fn history_pages_are_bounded_in_bytes() {
    let bus = bus_at(1, 2);
    let log = MemoryLog::default();
    // ~400 KiB counted each (under EVENT_MAX_BYTES): about ten fit a
    // page's 4 MiB, not all fifteen.
    let huge = |n| crate::payload::JobProgress {
        message: Some("y".repeat(200 << 10)),
        ..big(n)
    };
    let events: Vec<_> = (0..15).map(|i| bus.publish(huge(i))).collect();
    assert!(events.iter().all(|e| e.seq() > 0));
    log.append(&events).await.unwrap();
    let replay = LogReplay::new(&bus, Arc::new(log));
    // Seq 0 is before this bus's first event: the page starts at 1.
    let page = replay.history(Some(&Cursor::Seq(0)), 100).await.unwrap();
    assert!(
        (8..=11).contains(&page.len()),
        "{} events in one page",
        page.len()
    );
    assert_eq!(page[0].seq(), 1);
}
