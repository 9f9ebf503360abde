//! One behaviour, both engines: every test runs on a fresh SQLite file and,
//! when `TEST_POSTGRES_URL` is set (required under
//! `EVENT_TEST_REQUIRE_SERVICES=1`), on PostgreSQL in a schema of its own.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use event_core::{
    BusConfig, Event, EventBus, EventLog, EventMeta, JobProgress, QueueStatus, Retention, SeqStart,
};
use event_test_support::runtime::{occupy, one_worker};
use time::OffsetDateTime;
use uuid::Uuid;

fn sqlite_url() -> (String, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("event-log-{}.db", Uuid::new_v4()));
    (format!("sqlite://{}", path.display()), path)
}

fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("TEST_POSTGRES_URL is not set but EVENT_TEST_REQUIRE_SERVICES=1");
            }
            eprintln!("skipping PostgreSQL: TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// The logs to test: SQLite always, PostgreSQL when configured.
async fn logs() -> Vec<Arc<dyn EventLog>> {
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut logs: Vec<Arc<dyn EventLog>> = vec![event_log::open(&sqlite_url().0).await.unwrap()];
    #[cfg(feature = "postgres")]
    if let Some(url) = postgres_url() {
        let schema = format!("log_test_{}", Uuid::new_v4().simple());
        logs.push(Arc::new(
            event_log::PostgresLog::connect_in_schema(&url, &schema)
                .await
                .unwrap(),
        ));
    }
    #[cfg(not(feature = "postgres"))]
    let _ = postgres_url;
    logs
}

fn bus() -> EventBus {
    EventBus::new(BusConfig {
        seq_start: SeqStart::At(1),
        ..BusConfig::default()
    })
}

fn progress(n: u8) -> JobProgress {
    JobProgress {
        job_id: Uuid::now_v7(),
        note_id: Some(Uuid::now_v7()),
        progress: n,
        message: Some(format!("step {n} \u{e9}\u{1f680}")),
    }
}

fn seqs(events: &[Arc<Event>]) -> Vec<u64> {
    events.iter().map(|e| e.seq()).collect()
}

#[tokio::test]
async fn events_read_back_identical_in_order_and_a_retried_batch_is_skipped() {
    for log in logs().await {
        let bus = bus();
        let meta = EventMeta::default()
            .memory("m1")
            .tenant("t1")
            .correlation(Uuid::now_v7());
        let events: Vec<_> = (0..2500)
            .map(|i| bus.publish_with(progress((i % 100) as u8), meta.clone()))
            .collect();
        log.append(&events[..1200]).await.unwrap();
        // Overlapping retry: the first 1200 are already there.
        log.append(&events).await.unwrap();
        let back = log.read_after(0, usize::MAX).await.unwrap();
        assert_eq!(
            seqs(&back),
            (1..=2500).collect::<Vec<_>>(),
            "{}",
            log.name()
        );
        for (a, b) in events.iter().zip(&back) {
            assert_eq!(a.id(), b.id());
            assert_eq!(a.meta(), b.meta());
            assert_eq!(a.json(), b.json());
            assert_eq!(a.envelope_json(), b.envelope_json());
        }
        let page = log.read_after(100, 5).await.unwrap();
        assert_eq!(seqs(&page), [101, 102, 103, 104, 105]);
        assert!(log.read_after(2500, 10).await.unwrap().is_empty());
        assert_eq!(log.seq_of(events[41].id()).await.unwrap(), Some(42));
        assert_eq!(log.seq_of(Uuid::now_v7()).await.unwrap(), None);
        assert_eq!(log.first_seq().await.unwrap(), 1);
        let bounds = log.bounds().await.unwrap();
        assert_eq!(
            (bounds.first_seq, bounds.last_seq, bounds.events),
            (1, 2500, 2500)
        );
        let bytes: usize = events.iter().map(|e| e.envelope_json().len()).sum();
        assert_eq!(bounds.bytes, bytes as u64);
    }
}

#[tokio::test]
async fn an_empty_log_has_empty_bounds() {
    for log in logs().await {
        assert_eq!(log.first_seq().await.unwrap(), 0);
        assert_eq!(
            log.bounds().await.unwrap(),
            event_core::LogBounds::default()
        );
        assert!(log.read_after(0, 10).await.unwrap().is_empty());
        assert_eq!(
            log.seq_at_time(OffsetDateTime::UNIX_EPOCH).await.unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn events_are_found_by_time() {
    for log in logs().await {
        let bus = bus();
        let t0 = OffsetDateTime::now_utc();
        let old: Vec<_> = (0..3)
            .map(|i| bus.publish(QueueStatus::new(i, 0)))
            .collect();
        log.append(&old).await.unwrap();
        // The envelope keeps milliseconds: step past the next one.
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while OffsetDateTime::now_utc() - t0 < time::Duration::milliseconds(3) {
            assert!(std::time::Instant::now() < deadline);
            std::hint::spin_loop();
        }
        let t1 = OffsetDateTime::now_utc();
        let new = bus.publish(QueueStatus::new(9, 9));
        log.append(std::slice::from_ref(&new)).await.unwrap();
        assert_eq!(log.seq_at_time(t1).await.unwrap(), Some(new.seq()));
        assert_eq!(
            log.seq_at_time(t0 - time::Duration::seconds(1))
                .await
                .unwrap(),
            Some(1)
        );
        assert_eq!(
            log.seq_at_time(t1 + time::Duration::seconds(60))
                .await
                .unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn retention_removes_the_oldest_by_count_bytes_and_age() {
    for log in logs().await {
        let bus = bus();
        let events: Vec<_> = (0..30)
            .map(|i| bus.publish(QueueStatus::new(i, 0)))
            .collect();
        log.append(&events).await.unwrap();
        let keep = |max_events, max_bytes| Retention {
            max_age: None,
            max_events,
            max_bytes,
        };
        let now = OffsetDateTime::now_utc();
        assert_eq!(log.prune(&keep(None, None), now).await.unwrap(), 0);
        assert_eq!(log.prune(&keep(Some(20), None), now).await.unwrap(), 10);
        assert_eq!(log.first_seq().await.unwrap(), 11);
        // Room for exactly the newest five.
        let five: u64 = events[25..]
            .iter()
            .map(|e| e.envelope_json().len() as u64)
            .sum();
        assert_eq!(log.prune(&keep(None, Some(five)), now).await.unwrap(), 15);
        assert_eq!(log.first_seq().await.unwrap(), 26);
        let by_age = Retention {
            max_age: Some(Duration::from_secs(60)),
            max_events: None,
            max_bytes: None,
        };
        assert_eq!(log.prune(&by_age, now).await.unwrap(), 0);
        let later = now + time::Duration::seconds(120);
        assert_eq!(log.prune(&by_age, later).await.unwrap(), 5);
        assert_eq!(log.bounds().await.unwrap().events, 0);
    }
}

#[tokio::test]
async fn a_reopened_sqlite_log_keeps_its_events() {
    let (url, path) = sqlite_url();
    let bus = bus();
    let events: Vec<_> = (0..10)
        .map(|i| bus.publish(QueueStatus::new(i, 1)))
        .collect();
    {
        let log = event_log::open(&url).await.unwrap();
        log.append(&events).await.unwrap();
    }
    let log = event_log::open(&url).await.unwrap();
    assert_eq!(log.bounds().await.unwrap().last_seq, 10);
    assert_eq!(log.read_after(9, 1).await.unwrap()[0].id(), events[9].id());
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_new_sqlite_log_makes_its_directory_and_an_owner_only_file() {
    let dir = std::env::temp_dir().join(format!("event-log-dir-{}", Uuid::new_v4()));
    let path = dir.join("nested").join("events-log.db");
    event_log::open(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unknown_url_scheme_is_a_clear_error() {
    let err = match event_log::open("mysql://x").await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("opened a mysql log"),
    };
    assert!(err.contains("unsupported event log URL scheme"), "{err}");
}

/// The offset stores to test, like [`logs`].
async fn stores() -> Vec<Arc<dyn event_core::OffsetStore>> {
    let (_, store) = event_log::open_with_offsets(&sqlite_url().0).await.unwrap();
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut stores = vec![store];
    #[cfg(feature = "postgres")]
    if let Some(url) = postgres_url() {
        let schema = format!("log_test_{}", Uuid::new_v4().simple());
        stores.push(Arc::new(
            event_log::PostgresLog::connect_in_schema(&url, &schema)
                .await
                .unwrap(),
        ));
    }
    stores
}

#[tokio::test]
async fn consumer_offsets_are_stored_replaced_listed_and_deleted() {
    use event_core::{AckMode, ConsumerRecord};
    for store in stores().await {
        assert_eq!(store.load("a").await.unwrap(), None);
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut a = ConsumerRecord {
            name: "a".into(),
            shared: false,
            mode: AckMode::Auto,
            ack_wait: Duration::from_secs(30),
            committed: 1_733_000_000_000_123,
            updated_at: now,
        };
        store.save(&a).await.unwrap();
        assert_eq!(store.load("a").await.unwrap().as_ref(), Some(&a));
        // Saving again replaces the row.
        a.committed += 10;
        a.mode = AckMode::Explicit;
        a.shared = true;
        store.save(&a).await.unwrap();
        let b = ConsumerRecord {
            name: "b.group-1".into(),
            committed: 0,
            ..a.clone()
        };
        store.save(&b).await.unwrap();
        assert_eq!(store.list().await.unwrap(), vec![a.clone(), b.clone()]);
        assert!(store.delete("a").await.unwrap());
        assert!(!store.delete("a").await.unwrap());
        assert_eq!(store.list().await.unwrap(), vec![b]);
    }
}

#[tokio::test]
async fn a_topic_retention_prunes_only_that_topics_oldest_events_and_is_stored() {
    use event_core::TopicRetention;
    for log in logs().await {
        assert_eq!(log.topic_retentions().await.unwrap(), vec![]);
        let bus = bus();
        let gpu = EventMeta::default().topic("gpu");
        let mut events = Vec::new();
        for i in 0..10 {
            events.push(bus.publish_with(progress(i), gpu.clone()));
            events.push(bus.publish(QueueStatus::new(i as u64, 0)));
        }
        log.append(&events).await.unwrap();
        let gpu_seqs: Vec<u64> = events
            .iter()
            .filter(|e| e.topic() == "gpu")
            .map(|e| e.seq())
            .collect();
        let now = OffsetDateTime::now_utc();
        // Keep the topic's newest 4: the six before go, nothing else.
        let keep_four = Retention {
            max_age: None,
            max_events: Some(4),
            max_bytes: None,
        };
        // A stored record: the prune raises its watermark itself, before
        // the events go (a reader checks it after reading).
        log.set_topic_retention(&TopicRetention {
            topic: "gpu".into(),
            retention: Some(keep_four),
            pruned_through: 0,
        })
        .await
        .unwrap();
        let through = log.prune_topic("gpu", &keep_four, now).await.unwrap();
        assert_eq!(through, Some(gpu_seqs[5]), "{}", log.name());
        let marks = log.topic_retentions().await.unwrap();
        assert_eq!(marks[0].pruned_through, gpu_seqs[5], "{}", log.name());
        let left = log.read_after(0, 100).await.unwrap();
        assert_eq!(left.len(), 14, "{}", log.name());
        assert_eq!(
            left.iter()
                .filter(|e| e.topic() == "gpu")
                .map(|e| e.seq())
                .collect::<Vec<_>>(),
            gpu_seqs[6..]
        );
        assert_eq!(log.prune_topic("gpu", &keep_four, now).await.unwrap(), None);
        // By bytes: at most one event's worth.
        let one = left.iter().find(|e| e.topic() == "gpu").unwrap();
        let by_bytes = Retention {
            max_age: None,
            max_events: None,
            max_bytes: Some(one.envelope_json().len() as u64),
        };
        assert_eq!(
            log.prune_topic("gpu", &by_bytes, now).await.unwrap(),
            Some(gpu_seqs[8])
        );
        // By age: everything older than a minute from now.
        let by_age = Retention {
            max_age: Some(Duration::from_secs(60)),
            max_events: None,
            max_bytes: None,
        };
        let later = now + Duration::from_secs(3600);
        assert_eq!(
            log.prune_topic("gpu", &by_age, later).await.unwrap(),
            Some(gpu_seqs[9])
        );
        assert_eq!(log.read_after(0, 100).await.unwrap().len(), 10);
        // The record round-trips, and a removed retention keeps its mark.
        let mut record = TopicRetention {
            topic: "gpu".into(),
            retention: Some(by_bytes),
            pruned_through: gpu_seqs[9],
        };
        log.set_topic_retention(&record).await.unwrap();
        assert_eq!(log.topic_retentions().await.unwrap(), vec![record.clone()]);
        record.retention = None;
        log.set_topic_retention(&record).await.unwrap();
        assert_eq!(log.topic_retentions().await.unwrap(), vec![record.clone()]);
        // A record read before a prune and stored after it (a lower mark)
        // keeps the stored one.
        let stale = TopicRetention {
            pruned_through: gpu_seqs[2],
            ..record.clone()
        };
        log.set_topic_retention(&stale).await.unwrap();
        assert_eq!(log.topic_retentions().await.unwrap(), vec![record]);
    }
}

/// A host opens the log at startup, on its main runtime, and appends from
/// a thread of its own (event-server's `event-log` runtime), because the
/// main runtime's workers are busy with the fan-out. An append must not
/// wait for them: here the runtime that opened the log is blocked outright
/// while another appends. (PostgreSQL's connections are sockets served by
/// the driver of the runtime that opened them; SQLite's run on threads of
/// their own.)
#[test]
fn an_append_does_not_wait_for_the_runtime_that_opened_the_log() {
    let (main, writer) = (one_worker("test-main"), one_worker("test-log-writer"));
    let bus = bus();
    for log in main.block_on(logs()) {
        // Opened and used on `main`: its connections are there.
        main.block_on(log.bounds()).unwrap();
        let stuck = occupy(&main, Duration::from_secs(60));
        let event = bus.publish(progress(1));
        let appended = writer.block_on(async {
            tokio::time::timeout(Duration::from_secs(20), log.append(&[event])).await
        });
        drop(stuck);
        assert!(
            matches!(appended, Ok(Ok(()))),
            "{}: the append waited for the blocked runtime ({appended:?})",
            log.name()
        );
    }
    main.shutdown_background();
    writer.shutdown_background();
}
