//! A topic pruned while a reader reads: the watermark goes up before the
//! events go, and the replay looks at it again after its read, so a reader
//! that read around removed events resyncs instead of missing them.

use std::sync::Arc;

use time::OffsetDateTime;

use super::tests::Faulty;
use super::*;
use crate::bus::{BusConfig, EventBus, SeqStart};
use crate::event::EventMeta;
use crate::filter::{EventFilter, TopicPattern};
use crate::payload::QueueStatus;
use crate::replay_source::ReplaySource;
use crate::ring::{Cursor, ReplayMiss};

fn keep_two() -> Retention {
    Retention {
        max_age: None,
        max_events: Some(2),
        max_bytes: None,
    }
}

/// Arms `log` to prune `noisy` to its newest two at the start of its next
/// read: between the replay's first watermark check and its read.
fn prune_during_next_read(log: &Faulty) {
    *log.prune_on_read.lock().unwrap() = Some(("noisy".into(), keep_two()));
}

/// A bus whose ring holds two events (replays come from the log) and a log
/// holding `noisy` at 1, 3, …, 11 and `queue` at 2, 4, …, 12, with a
/// retention of two for `noisy` not yet applied.
async fn logged() -> (EventBus, Faulty) {
    let bus = EventBus::new(BusConfig {
        replay_size: 2,
        seq_start: SeqStart::At(1),
        ..BusConfig::default()
    });
    let log = Faulty::default();
    log.set_topic_retention(&TopicRetention {
        topic: "noisy".into(),
        retention: Some(keep_two()),
        pruned_through: 0,
    })
    .await
    .unwrap();
    let noisy = EventMeta::default().topic("noisy");
    let mut events = Vec::new();
    for i in 0..6 {
        events.push(bus.publish_with(QueueStatus::new(i, 0), noisy.clone()));
        events.push(bus.publish(QueueStatus::new(i, 0)));
    }
    log.append(&events).await.unwrap();
    (bus, log)
}

#[tokio::test]
async fn pruning_raises_the_watermark_itself_and_a_stored_record_never_lowers_it() {
    let (_bus, log) = logged().await;
    let now = OffsetDateTime::now_utc();
    assert_eq!(
        log.prune_topic("noisy", &keep_two(), now).await.unwrap(),
        Some(7)
    );
    let marks = log.topic_retentions().await.unwrap();
    assert_eq!(marks[0].pruned_through, 7, "{marks:?}");
    // A record read before the prune and stored after it keeps the mark.
    log.set_topic_retention(&TopicRetention {
        topic: "noisy".into(),
        retention: None,
        pruned_through: 0,
    })
    .await
    .unwrap();
    let marks = log.topic_retentions().await.unwrap();
    assert_eq!((marks[0].pruned_through, marks[0].retention), (7, None));
}

#[tokio::test]
async fn a_replay_that_read_around_a_prune_resyncs() {
    let (bus, log) = logged().await;
    let replay = LogReplay::new(&bus, Arc::new(log.clone()));
    // Before its read the watermark is 0, so the first check lets it in.
    prune_during_next_read(&log);
    assert_eq!(
        replay
            .replay_matching(&Cursor::Seq(2), &EventFilter::all())
            .await
            .unwrap_err(),
        ReplayMiss::Expired
    );
    prune_during_next_read(&log);
    let page = replay
        .history_matching(Some(&Cursor::Seq(2)), 100, &EventFilter::all())
        .await;
    assert_eq!(page.unwrap_err(), ReplayMiss::Expired);
}

#[tokio::test]
async fn a_reader_of_another_topic_is_not_refused_by_a_prune_during_its_read() {
    let (bus, log) = logged().await;
    let replay = LogReplay::new(&bus, Arc::new(log.clone()));
    let queue_only = EventFilter::all().with_topics(vec![TopicPattern::parse("queue").unwrap()]);
    prune_during_next_read(&log);
    let got = replay
        .replay_matching(&Cursor::Seq(2), &queue_only)
        .await
        .unwrap();
    // `noisy` lost 1, 3, 5, 7 during the read; `queue` lost nothing.
    assert_eq!(got.events.first().map(|e| e.seq()), Some(4));
}
