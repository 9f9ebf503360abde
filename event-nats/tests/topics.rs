//! Per-topic retention on the cluster's stream ([`event_nats::JetStreamLog`]
//! with the topics key-value bucket), on a real NATS: records shared by the
//! instances, pruning by count and by age of one topic's subjects only,
//! and the readers a prune concerns told to resync.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use event_core::{
    AttachRequest, Cursor, Delivery, Event, EventFilter, EventLog, EventMeta, LogError, Member,
    Principal, ReplayMiss, ReplaySource, Retention, TopicPattern, TopicRetention,
};
use event_nats::{MAX_TOPIC_RECORDS, NatsCluster, bus_seq};
use time::OffsetDateTime;
use uuid::Uuid;

/// Publishes one event per topic of `topics` on `cluster`, each once its
/// bus has the one before (so each has the next stream sequence).
async fn publish(cluster: &NatsCluster, topics: &[&str]) -> Vec<Arc<Event>> {
    let mut sub = cluster.bus().subscribe();
    let mut events = Vec::with_capacity(topics.len());
    for (i, topic) in topics.iter().enumerate() {
        cluster
            .bus()
            .publish_with(progress(i as u8), EventMeta::default().topic(*topic));
        events.push(next_event(&mut sub, &format!("published #{i}")).await);
    }
    events
}

fn retention(max_events: Option<u64>, max_age: Option<Duration>) -> Retention {
    Retention {
        max_age,
        max_events,
        max_bytes: None,
    }
}

fn removed_again(record: &TopicRetention) -> TopicRetention {
    TopicRetention {
        retention: None,
        ..record.clone()
    }
}

fn only(topic: &str) -> EventFilter {
    EventFilter::all().with_topics(vec![TopicPattern::parse(topic).unwrap()])
}

fn ids(events: &[Arc<Event>]) -> Vec<Uuid> {
    events.iter().map(|e| e.id()).collect()
}

/// `log`'s record of `topic`, once `check` holds for it.
async fn record_when(
    log: &dyn EventLog,
    topic: &str,
    check: impl Fn(&TopicRetention) -> bool,
) -> TopicRetention {
    let mut last = None;
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let records = log.topic_retentions().await.unwrap();
            last = records.iter().find(|r| r.topic == topic).cloned();
            if let Some(record) = last.as_ref().filter(|r| check(r)) {
                return record.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("topic {topic}: last record {last:?}"))
}

#[tokio::test]
async fn records_are_shared_and_a_write_never_lowers_a_watermark() {
    let Some(url) = nats_url("records_are_shared_and_a_write_never_lowers_a_watermark") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let (on_a, on_b) = (a.log(), b.log());
    assert_eq!(on_b.topic_retentions().await.unwrap(), vec![], "no bucket");

    let gpu = TopicRetention {
        topic: "gpu.large".into(),
        retention: Some(retention(Some(2), Some(Duration::from_secs(90)))),
        pruned_through: bus_seq(5),
    };
    on_a.set_topic_retention(&gpu).await.unwrap();
    assert_eq!(on_b.topic_retentions().await.unwrap(), vec![gpu.clone()]);

    // New bounds from B with a stale watermark: the bounds change, the
    // watermark stays.
    let stale = TopicRetention {
        retention: Some(retention(Some(3), None)),
        pruned_through: 0,
        ..gpu.clone()
    };
    on_b.set_topic_retention(&stale).await.unwrap();
    let want = TopicRetention {
        pruned_through: bus_seq(5),
        ..stale.clone()
    };
    assert_eq!(on_a.topic_retentions().await.unwrap(), vec![want]);
    // Removed: only the watermark is left.
    let removed = TopicRetention {
        retention: None,
        ..gpu.clone()
    };
    on_a.set_topic_retention(&removed).await.unwrap();
    assert_eq!(on_b.topic_retentions().await.unwrap(), vec![removed]);

    // A bound by size is kept like the others.
    let sized = TopicRetention {
        topic: "job".into(),
        retention: Some(Retention {
            max_bytes: Some(1024),
            ..retention(Some(1), None)
        }),
        pruned_through: 0,
    };
    on_a.set_topic_retention(&sized).await.unwrap();
    assert_eq!(
        on_b.topic_retentions().await.unwrap(),
        vec![removed_again(&gpu), sized]
    );

    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_records_are_bounded_and_updates_still_pass_at_the_bound() {
    let Some(url) = nats_url("the_records_are_bounded_and_updates_still_pass_at_the_bound") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let log = a.log();
    let record = |i: usize, events: u64| TopicRetention {
        topic: format!("t{i}"),
        retention: Some(retention(Some(events), None)),
        pruned_through: 0,
    };
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                for i in (w..MAX_TOPIC_RECORDS).step_by(8) {
                    log.set_topic_retention(&record(i, 10)).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        log.topic_retentions().await.unwrap().len(),
        MAX_TOPIC_RECORDS
    );
    let refused = log
        .set_topic_retention(&record(MAX_TOPIC_RECORDS, 10))
        .await;
    assert!(
        matches!(refused, Err(LogError::Storage { .. })),
        "{refused:?}"
    );
    // At the bound, existing records still change.
    log.set_topic_retention(&record(7, 20)).await.unwrap();
    let records = log.topic_retentions().await.unwrap();
    let seven = records.iter().find(|r| r.topic == "t7").unwrap();
    assert_eq!(seven.retention.unwrap().max_events, Some(20));
    assert_eq!(records.len(), MAX_TOPIC_RECORDS);

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

fn request(name: &str, filter: EventFilter) -> AttachRequest {
    AttachRequest {
        filter,
        ..AttachRequest::new(name, Principal::anonymous())
    }
}

/// The ids of `member`'s next `n` deliveries (`None` for a gap).
async fn deliveries(member: &mut Member, n: usize) -> Vec<Option<Uuid>> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, member.recv()).await {
            Ok(Some(Delivery::Event { event, .. })) => out.push(Some(event.id())),
            Ok(Some(Delivery::Gap { .. })) => out.push(None),
            other => panic!("after {out:?}: {other:?}"),
        }
    }
    out
}

#[tokio::test]
async fn count_retention_prunes_only_its_topic_and_only_its_readers_resync() {
    let Some(url) = nats_url("count_retention_prunes_only_its_topic_and_only_its_readers_resync")
    else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let on_b = consumers(&b).await;

    let first = publish(&a, &["job"]).await;
    // Two named consumers with their offsets at the first event.
    for (name, filter) in [("all", EventFilter::all()), ("jobs", only("job"))] {
        drop(on_b.attach(request(name, filter)).await.unwrap());
    }
    let stored = b.offsets().await.unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            let list = on_b.list().await.unwrap();
            if list.len() == 2 && list.iter().all(|c| c.members == 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("both consumers detached");
    for name in ["all", "jobs"] {
        let committed = event_core::OffsetStore::load(&stored, name)
            .await
            .unwrap()
            .unwrap()
            .committed;
        assert_eq!(committed, first[0].seq(), "{name}");
    }
    let events = publish(&a, &["gpu", "job", "gpu", "job", "gpu", "gpu", "gpu"]).await;
    let (gpu, job): (Vec<_>, Vec<_>) = events.iter().cloned().partition(|e| e.topic() == "gpu");

    // Set on A, applied by B's pruner.
    a.log()
        .set_topic_retention(&TopicRetention {
            topic: "gpu".into(),
            retention: Some(retention(Some(2), None)),
            pruned_through: 0,
        })
        .await
        .unwrap();
    let pruner = b.log().start_pruning(Duration::from_millis(100));
    let record = record_when(&a.log(), "gpu", |r| r.pruned_through > 0).await;
    assert_eq!(record.pruned_through, gpu[2].seq(), "the newest removed");
    pruner.shutdown(Duration::from_secs(5)).await;
    // Exactly the oldest three of `gpu`; `job` untouched.
    let left = a.log().read_after(0, 100).await.unwrap();
    let want: Vec<_> = first.iter().chain(&job).chain(&gpu[3..]).cloned().collect();
    let mut want = ids(&want);
    want.sort();
    let mut got = ids(&left);
    got.sort();
    assert_eq!(got, want);
    // Nothing more to remove.
    assert_eq!(
        b.log()
            .prune_topics(OffsetDateTime::now_utc())
            .await
            .unwrap(),
        0
    );

    // Replays from before the pruned range: a reader of `job` resumes, a
    // reader that may see `gpu` resyncs, by sequence and by id.
    let before = Cursor::Seq(first[0].seq());
    let replayed = b.replay_matching(&before, &only("job")).await.unwrap();
    assert_eq!(ids(&replayed.events), ids(&left[1..]));
    let by_id = Cursor::Id(first[0].id());
    assert!(b.replay_matching(&by_id, &only("job")).await.is_ok());
    for cursor in [&before, &by_id] {
        assert_eq!(
            b.replay_matching(cursor, &only("gpu")).await.unwrap_err(),
            ReplayMiss::Expired
        );
        assert_eq!(
            ReplaySource::replay_since(&b, cursor).await.unwrap_err(),
            ReplayMiss::Expired
        );
    }
    let page = b
        .history_matching(Some(&before), 100, &only("job"))
        .await
        .unwrap();
    assert_eq!(ids(&page), ids(&left[1..]));
    assert_eq!(
        b.history_matching(Some(&before), 100, &only("gpu*"))
            .await
            .unwrap_err(),
        ReplayMiss::Expired
    );
    // After the pruned range, everyone resumes.
    let after = Cursor::Seq(gpu[2].seq());
    let replayed = ReplaySource::replay_since(&b, &after).await.unwrap();
    assert_eq!(ids(&replayed.events), ids(&gpu[3..]));
    assert!(b.replay_from_stream(&before).await.is_err());

    // Named consumers: the one that may see `gpu` is told of the gap first.
    let mut jobs = on_b.attach(request("jobs", only("job"))).await.unwrap();
    let want: Vec<_> = job.iter().map(|e| Some(e.id())).collect();
    assert_eq!(deliveries(&mut jobs, 2).await, want);
    let mut all = on_b
        .attach(request("all", EventFilter::all()))
        .await
        .unwrap();
    let mut want = vec![None];
    want.extend(left[1..].iter().map(|e| Some(e.id())));
    assert_eq!(deliveries(&mut all, want.len()).await, want);

    drop((jobs, all));
    on_b.shutdown().await;
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn age_retention_prunes_what_the_stream_stored_before_the_cutoff() {
    let Some(url) = nats_url("age_retention_prunes_what_the_stream_stored_before_the_cutoff")
    else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let log = a.log();
    let old = publish(&a, &["gpu", "job", "gpu"]).await;
    // Everything below is stored after `t1`.
    let t1 = OffsetDateTime::now_utc();
    let new = publish(&a, &["gpu", "job"]).await;
    let minute = Duration::from_secs(60);
    let age = retention(None, Some(minute));

    let through = log.prune_topic("gpu", &age, t1 + minute).await.unwrap();
    assert_eq!(through, Some(old[2].seq()));
    let left = log.read_after(0, 100).await.unwrap();
    assert_eq!(ids(&left), [old[1].id(), new[0].id(), new[1].id()]);
    let record = record_when(&log, "gpu", |_| true).await;
    assert_eq!(
        record.pruned_through,
        old[2].seq(),
        "stored before the purge"
    );

    // A day on, every `gpu` event is older: all of them go, `job` stays.
    let through = log
        .prune_topic("gpu", &age, t1 + time::Duration::days(1))
        .await
        .unwrap();
    assert_eq!(through, Some(new[0].seq()));
    let left = log.read_after(0, 100).await.unwrap();
    assert_eq!(ids(&left), [old[1].id(), new[1].id()]);
    // Nothing of the topic left: nothing to do.
    assert_eq!(
        log.prune_topic("gpu", &age, t1 + time::Duration::days(1))
            .await
            .unwrap(),
        None
    );

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn a_removed_retentions_watermark_is_forgotten_once_the_stream_passed_it() {
    let Some(url) =
        nats_url("a_removed_retentions_watermark_is_forgotten_once_the_stream_passed_it")
    else {
        return;
    };
    let config = event_nats::NatsConfig {
        retention: event_nats::Retention {
            max_messages: 3,
            ..event_nats::Retention::default()
        },
        ..unique_config(&url, "a")
    };
    let a = connect(&config, 64).await;
    let log = a.log();
    // The stream's first event stays while `gpu` is pruned.
    let gpu = publish(&a, &["job", "gpu", "gpu"]).await.split_off(1);
    let kept = |topic: &str| TopicRetention {
        topic: topic.into(),
        retention: Some(retention(Some(1), None)),
        pruned_through: 0,
    };
    for topic in ["gpu", "kept"] {
        log.set_topic_retention(&kept(topic)).await.unwrap();
    }
    assert_eq!(
        log.prune_topics(OffsetDateTime::now_utc()).await.unwrap(),
        1
    );
    // Removed: the watermark stays while cursors before it can be served.
    log.set_topic_retention(&TopicRetention {
        retention: None,
        pruned_through: gpu[0].seq(),
        ..kept("gpu")
    })
    .await
    .unwrap();
    log.prune_topics(OffsetDateTime::now_utc()).await.unwrap();
    let topics = |records: Vec<TopicRetention>| -> Vec<String> {
        records.into_iter().map(|r| r.topic).collect()
    };
    assert_eq!(
        topics(log.topic_retentions().await.unwrap()),
        ["gpu", "kept"]
    );
    // The stream's own retention passes it: forgotten. A topic with
    // bounds stays whatever its watermark.
    publish(&a, &["job", "job", "job"]).await;
    assert!(log.first_seq().await.unwrap() > gpu[0].seq());
    log.prune_topics(OffsetDateTime::now_utc()).await.unwrap();
    assert_eq!(topics(log.topic_retentions().await.unwrap()), ["kept"]);

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn topics_with_empty_parts_are_stored_and_pruned_apart() {
    let Some(url) = nats_url("topics_with_empty_parts_are_stored_and_pruned_apart") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let log = a.log();
    // Valid topics whose empty parts a subject could not carry as they are;
    // `a.e.b` would collide with `a..b` if the empty part were written `e`.
    let events = publish(&a, &["a..b", "a.", "a.e.b", "a..b"]).await;
    let stored = log.read_after(0, 100).await.unwrap();
    assert_eq!(ids(&stored), ids(&events), "every event reached the stream");
    assert!(
        stored
            .iter()
            .zip(&events)
            .all(|(s, e)| s.topic() == e.topic())
    );

    let through = log
        .prune_topic("a..b", &retention(Some(1), None), OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(through, Some(events[0].seq()));
    let left = log.read_after(0, 100).await.unwrap();
    assert_eq!(
        ids(&left),
        [events[1].id(), events[2].id(), events[3].id()],
        "only the oldest `a..b` event went"
    );

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

/// The bytes of `events` from the `n`-th newest on: what a topic holding
/// exactly those holds (the envelope JSON is the stored payload).
fn newest_bytes(events: &[Arc<Event>], n: usize) -> u64 {
    events[events.len() - n..]
        .iter()
        .map(|e| e.envelope_json().len() as u64)
        .sum()
}

fn by_size(max_bytes: u64) -> Retention {
    Retention {
        max_bytes: Some(max_bytes),
        ..retention(None, None)
    }
}

/// The ids of `topic`'s events left in the stream.
async fn left_of(log: &dyn EventLog, topic: &str) -> Vec<Uuid> {
    let left = log.read_after(0, 100_000).await.unwrap();
    left.iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.id())
        .collect()
}

#[tokio::test]
async fn size_retention_keeps_the_newest_that_fit_across_instances_and_rounds() {
    let Some(url) =
        nats_url("size_retention_keeps_the_newest_that_fit_across_instances_and_rounds")
    else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let (on_a, on_b) = (a.log(), b.log());
    // 2,600 `gpu` events (several of the index's stretches) between `job` ones.
    let topics: Vec<&str> = (0..3250)
        .map(|i| if i % 5 == 4 { "job" } else { "gpu" })
        .collect();
    let published = publish(&a, &topics).await;
    let (mut gpu, job): (Vec<_>, Vec<_>) = published.into_iter().partition(|e| e.topic() == "gpu");
    assert_eq!(gpu.len(), 2600);

    // Exactly the newest 700 fit: the 701st newest is the last removed.
    let max = newest_bytes(&gpu, 700);
    let through = on_a
        .prune_topic("gpu", &by_size(max), OffsetDateTime::now_utc())
        .await;
    assert_eq!(through.unwrap(), Some(gpu[gpu.len() - 701].seq()));
    assert_eq!(left_of(&on_a, "gpu").await, ids(&gpu[gpu.len() - 700..]));
    assert_eq!(left_of(&on_a, "job").await, ids(&job), "other topics stay");
    let record = record_when(&on_b, "gpu", |r| r.pruned_through > 0).await;
    assert_eq!(record.pruned_through, gpu[gpu.len() - 701].seq());
    // Already within the bound: nothing to do.
    let again = on_a
        .prune_topic("gpu", &by_size(max), OffsetDateTime::now_utc())
        .await;
    assert_eq!(again.unwrap(), None);
    // One byte less: one more goes.
    let through = on_a
        .prune_topic("gpu", &by_size(max - 1), OffsetDateTime::now_utc())
        .await;
    assert_eq!(through.unwrap(), Some(gpu[gpu.len() - 700].seq()));

    // B, through the shared record and its own index, keeps only 300.
    on_a.set_topic_retention(&TopicRetention {
        topic: "gpu".into(),
        retention: Some(by_size(newest_bytes(&gpu, 300))),
        pruned_through: 0,
    })
    .await
    .unwrap();
    assert_eq!(
        on_b.prune_topics(OffsetDateTime::now_utc()).await.unwrap(),
        1
    );
    assert_eq!(left_of(&on_a, "gpu").await, ids(&gpu[gpu.len() - 300..]));

    // A's index still counts what B purged; after 1,500 more it must cut
    // by what is stored, not by what it read.
    let more: Vec<&str> = vec!["gpu"; 1500];
    gpu.extend(publish(&a, &more).await);
    let max = newest_bytes(&gpu, 1000);
    let through = on_a
        .prune_topic("gpu", &by_size(max), OffsetDateTime::now_utc())
        .await;
    assert_eq!(through.unwrap(), Some(gpu[gpu.len() - 1001].seq()));
    assert_eq!(left_of(&on_a, "gpu").await, ids(&gpu[gpu.len() - 1000..]));
    // And a new instance, whose index starts from what is stored, agrees.
    let c = connect(&instance(&config, "c"), 64).await;
    let max = newest_bytes(&gpu, 999);
    let through = c
        .log()
        .prune_topic("gpu", &by_size(max), OffsetDateTime::now_utc())
        .await;
    assert_eq!(through.unwrap(), Some(gpu[gpu.len() - 1000].seq()));
    assert_eq!(left_of(&on_a, "gpu").await, ids(&gpu[gpu.len() - 999..]));
    assert_eq!(left_of(&on_a, "job").await, ids(&job), "other topics stay");

    for cluster in [a, b, c] {
        cluster.shutdown(Duration::from_secs(2)).await;
    }
    cleanup(&config).await;
}
