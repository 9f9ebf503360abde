//! The stream as the cluster's event log ([`event_nats::JetStreamLog`]) and
//! the shared consumer offsets ([`event_nats::KvOffsets`]), on a real NATS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use event_core::{
    AckMode, AttachRequest, ConsumerRecord, Delivery, EventLog, Member, OffsetStore, Principal,
    Retention, StartAt, TopicRetention,
};
use event_nats::{NatsCluster, Retention as StreamRetention, bus_seq};
use time::OffsetDateTime;
use uuid::Uuid;

/// Publishes `n` events on `cluster`, one at a time, each once its bus
/// has the one before (so a stream that keeps only a few still hands every
/// event to the bus before it removes it).
async fn publish(cluster: &NatsCluster, n: usize) -> Vec<Arc<event_core::Event>> {
    let mut sub = cluster.bus().subscribe();
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        cluster.bus().publish(progress(i as u8));
        events.push(next_event(&mut sub, &format!("published #{i}")).await);
    }
    events
}

#[tokio::test]
async fn the_stream_reads_as_a_log_by_seq_time_and_id() {
    let Some(url) = nats_url("the_stream_reads_as_a_log_by_seq_time_and_id") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let log = a.log();
    assert_eq!(log.first_seq().await.unwrap(), 0, "empty");
    assert_eq!(
        log.bounds().await.unwrap(),
        event_core::LogBounds::default()
    );
    assert!(log.read_after(0, 10).await.unwrap().is_empty());
    assert_eq!(
        log.seq_at_time(OffsetDateTime::UNIX_EPOCH).await.unwrap(),
        None
    );

    let t0 = OffsetDateTime::now_utc();
    let first = publish(&a, 10).await;
    // Every event below is stored after `t1` (the stream stamps it when it
    // takes the publish, after the bus had the first ten).
    let t1 = OffsetDateTime::now_utc();
    let second = publish(&a, 10).await;
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();

    let back = log.read_after(0, 100).await.unwrap();
    assert_eq!(identity(&back), identity(&all));
    for (a, b) in all.iter().zip(&back) {
        assert_eq!(a.envelope_json(), b.envelope_json());
        assert_eq!(a.meta(), b.meta());
    }
    let page = log.read_after(bus_seq(5), 3).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        [bus_seq(6), bus_seq(7), bus_seq(8)]
    );
    // A local-only number between two stream events reads on from the next.
    let page = log.read_after(bus_seq(5) + 3, 1).await.unwrap();
    assert_eq!(page[0].seq(), bus_seq(6));
    assert!(log.read_after(bus_seq(20), 10).await.unwrap().is_empty());

    assert_eq!(log.seq_of(all[7].id()).await.unwrap(), Some(bus_seq(8)));
    assert_eq!(log.seq_of(Uuid::now_v7()).await.unwrap(), None);

    assert_eq!(log.seq_at_time(t1).await.unwrap(), Some(bus_seq(11)));
    assert_eq!(
        log.seq_at_time(t0 - time::Duration::seconds(1))
            .await
            .unwrap(),
        Some(bus_seq(1))
    );
    assert_eq!(
        log.seq_at_time(OffsetDateTime::now_utc() + time::Duration::seconds(60))
            .await
            .unwrap(),
        None
    );

    assert_eq!(log.first_seq().await.unwrap(), bus_seq(1));
    let bounds = log.bounds().await.unwrap();
    assert_eq!(
        (bounds.first_seq, bounds.last_seq, bounds.events),
        (bus_seq(1), bus_seq(20), 20)
    );
    let envelopes: u64 = all.iter().map(|e| e.envelope_json().len() as u64).sum();
    assert!(bounds.bytes >= envelopes, "{} < {envelopes}", bounds.bytes);

    let topics = log.topics().await.unwrap();
    assert_eq!(topics.len(), 1, "{topics:?}");
    assert_eq!(
        (
            topics[0].name.as_str(),
            topics[0].events,
            topics[0].first_seq,
            topics[0].last_seq
        ),
        ("job", 20, bus_seq(1), bus_seq(20))
    );

    // The stream keeps its own retention; the log neither prunes nor
    // appends. A topic's own retention, `max_bytes` included (the
    // default's 1 GiB), is stored (tests/topics.rs has the rest of
    // per-topic retention).
    assert_eq!(
        log.prune(&Retention::default(), OffsetDateTime::now_utc())
            .await
            .unwrap(),
        0
    );
    log.append(&all).await.unwrap();
    assert_eq!(
        log.bounds().await.unwrap().events,
        20,
        "append stored nothing"
    );
    let job = TopicRetention {
        topic: "job".into(),
        retention: Some(Retention::default()),
        pruned_through: 0,
    };
    log.set_topic_retention(&job).await.unwrap();
    assert_eq!(log.topic_retentions().await.unwrap(), vec![job]);

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn the_log_starts_where_the_streams_retention_left_it() {
    let Some(url) = nats_url("the_log_starts_where_the_streams_retention_left_it") else {
        return;
    };
    let config = event_nats::NatsConfig {
        retention: StreamRetention {
            max_messages: 5,
            ..StreamRetention::default()
        },
        topic_scan: 3,
        ..unique_config(&url, "a")
    };
    let a = connect(&config, 64).await;
    let events = publish(&a, 12).await;
    let log = a.log();

    assert_eq!(log.first_seq().await.unwrap(), bus_seq(8));
    let bounds = log.bounds().await.unwrap();
    assert_eq!(
        (bounds.first_seq, bounds.last_seq, bounds.events),
        (bus_seq(8), bus_seq(12), 5)
    );
    // From before the retention's edge: what is left, from the oldest kept.
    let back = log.read_after(0, 100).await.unwrap();
    assert_eq!(identity(&back), identity(&events[7..]));
    let back = log.read_after(bus_seq(2), 2).await.unwrap();
    assert_eq!(identity(&back), identity(&events[7..9]));
    assert_eq!(log.seq_of(events[0].id()).await.unwrap(), None, "removed");
    assert_eq!(log.seq_of(events[9].id()).await.unwrap(), Some(bus_seq(10)));
    // The topics listing reads only the newest `topic_scan` events.
    let topics = log.topics().await.unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!((topics[0].events, topics[0].first_seq), (3, bus_seq(10)));

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

fn record(name: &str, committed: u64) -> ConsumerRecord {
    ConsumerRecord {
        name: name.to_owned(),
        shared: false,
        mode: AckMode::Explicit,
        ack_wait: Duration::from_secs(30),
        committed,
        // The store keeps nanoseconds.
        updated_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap(),
    }
}

#[tokio::test]
async fn offsets_are_shared_by_every_instance() {
    let Some(url) = nats_url("offsets_are_shared_by_every_instance") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let (on_a, on_b) = (a.offsets().await.unwrap(), b.offsets().await.unwrap());

    assert!(on_b.list().await.unwrap().is_empty());
    assert_eq!(on_b.load("reader").await.unwrap(), None);
    // Names that are valid for consumers but not as bucket keys.
    let names = ["reader", "a..b", ".x.", &"n".repeat(64)];
    for (i, name) in names.iter().enumerate() {
        on_a.save(&record(name, bus_seq(i as u64 + 1)))
            .await
            .unwrap();
    }
    assert_eq!(
        on_b.load("reader").await.unwrap(),
        Some(record("reader", bus_seq(1)))
    );
    let mut listed: Vec<String> = on_b
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);

    // B moves it on; A reads B's write.
    on_b.save(&record("reader", bus_seq(9))).await.unwrap();
    assert_eq!(
        on_a.load("reader").await.unwrap().unwrap().committed,
        bus_seq(9)
    );

    assert!(on_b.delete("a..b").await.unwrap());
    assert!(!on_a.delete("a..b").await.unwrap(), "already gone");
    assert_eq!(on_a.load("a..b").await.unwrap(), None);
    assert_eq!(on_a.list().await.unwrap().len(), 3);

    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

async fn next(member: &mut Member) -> Arc<event_core::Event> {
    match tokio::time::timeout(WAIT, member.recv()).await {
        Ok(Some(Delivery::Event { event, .. })) => event,
        other => panic!("no event: {other:?}"),
    }
}

/// Waits until the offset stored for `worker` is `seq`.
async fn stored_reaches(cluster: &NatsCluster, seq: u64) {
    let store = cluster.offsets().await.unwrap();
    let reached = tokio::time::timeout(WAIT, async {
        loop {
            if store.load("worker").await.unwrap().map(|r| r.committed) == Some(seq) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the stored offset did not reach {seq}");
}

#[tokio::test]
async fn a_consumer_resumes_on_another_instance_after_its_offset() {
    let Some(url) = nats_url("a_consumer_resumes_on_another_instance_after_its_offset") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let (on_a, on_b) = (consumers(&a).await, consumers(&b).await);
    let request = || AttachRequest {
        mode: AckMode::Explicit,
        start: StartAt::Earliest,
        ..AttachRequest::new("worker", Principal::anonymous())
    };

    let first = publish(&a, 5).await;
    let mut member = on_a.attach(request()).await.unwrap();
    for want in &first[..3] {
        let got = next(&mut member).await;
        assert_eq!(got.id(), want.id());
        member.ack(vec![event_core::Cursor::Seq(got.seq())]);
    }
    // Detached with events 4 and 5 delivered or queued, not acknowledged:
    // the offset stored when the last member leaves is the third event's.
    drop(member);
    stored_reaches(&a, first[2].seq()).await;
    let more = publish(&b, 3).await;

    let info = on_b.list().await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].committed_seq, first[2].seq());
    assert_eq!(info[0].lag, 5, "two left of the first batch, three new");

    let mut member = on_b.attach(request()).await.unwrap();
    let expected: Vec<_> = first[3..].iter().chain(&more).map(|e| e.id()).collect();
    let mut got = Vec::new();
    for _ in 0..expected.len() {
        let ev = next(&mut member).await;
        member.ack(vec![event_core::Cursor::Seq(ev.seq())]);
        got.push(ev.id());
    }
    assert_eq!(got, expected, "right after the committed offset, no gap");
    drop(member);
    stored_reaches(&a, more[2].seq()).await;

    // Back on A, whose dispatcher still remembers the old position: it
    // takes the offset B stored, so nothing is delivered twice.
    let last = publish(&a, 2).await;
    let mut member = on_a.attach(request()).await.unwrap();
    for want in &last {
        let ev = next(&mut member).await;
        assert_eq!(ev.id(), want.id(), "after B's offset");
        member.ack(vec![event_core::Cursor::Seq(ev.seq())]);
    }
    drop(member);
    on_a.shutdown().await;
    on_b.shutdown().await;
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn offsets_list_while_another_instance_saves() {
    let Some(url) = nats_url("offsets_list_while_another_instance_saves") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let (on_a, on_b) = (a.offsets().await.unwrap(), b.offsets().await.unwrap());
    assert!(
        on_b.list().await.unwrap().is_empty(),
        "an empty bucket lists"
    );
    let writer = tokio::spawn(async move {
        for i in 0..200u64 {
            on_a.save(&record(&format!("c{}", i % 5), bus_seq(i)))
                .await
                .unwrap();
        }
    });
    while !writer.is_finished() {
        let listed = on_b.list().await.unwrap();
        assert!(listed.len() <= 5, "{listed:?}");
    }
    writer.await.unwrap();
    assert_eq!(on_b.list().await.unwrap().len(), 5);
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}
