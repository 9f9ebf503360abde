//! Named consumers and a topic's own retention: a consumer whose filter
//! can match a topic pruned ahead of it is told of the gap, once, where it
//! is; the others are not.

use super::*;
use crate::filter::{EventFilter, TopicPattern};
use crate::log::{EventLog, Retention, TopicRetention};

fn only(topic: &str) -> EventFilter {
    EventFilter::all().with_topics(vec![TopicPattern::parse(topic).unwrap()])
}

fn attach(name: &str, filter: EventFilter) -> AttachRequest {
    AttachRequest {
        filter,
        ..request(name)
    }
}

/// Publishes one event per topic, each committed; their sequences.
async fn publish(f: &Fixture, topics: &[&str]) -> Vec<u64> {
    let mut published = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let payload = ServerEvent::JobProgress(JobProgress {
            job_id: Uuid::now_v7(),
            note_id: None,
            progress: i as u8,
            message: None,
        });
        let meta = EventMeta::default().topic(*topic);
        let events = f.bus.publish_durable([payload], &meta).await.unwrap();
        published.push(events[0].seq());
    }
    published
}

/// Prunes `gpu` to its newest event as a log writer does (events, then
/// the watermark); the watermark.
async fn prune_gpu(f: &Fixture) -> u64 {
    let kept = Retention {
        max_age: None,
        max_events: Some(1),
        max_bytes: None,
    };
    let through = f
        .log
        .prune_topic("gpu", &kept, time::OffsetDateTime::now_utc())
        .await
        .unwrap()
        .unwrap();
    f.log
        .set_topic_retention(&TopicRetention {
            topic: "gpu".into(),
            retention: Some(kept),
            pruned_through: through,
        })
        .await
        .unwrap();
    through
}

#[tokio::test]
async fn a_consumer_behind_a_topics_retention_gets_a_gap_and_another_topics_does_not() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let start = f.publish([(Uuid::now_v7(), 0)]).await[0];
    // Both consumers exist, with their offsets at `start`.
    for (name, filter) in [("all", EventFilter::all()), ("jobs", only("job"))] {
        drop(consumers.attach(attach(name, filter)).await.unwrap());
        until_info(&consumers, name, |i| {
            i.members == 0 && i.committed_seq == start
        })
        .await;
    }
    // gpu, job, gpu, job, gpu: the oldest two of `gpu` are pruned.
    let published = publish(&f, &["gpu", "job", "gpu", "job", "gpu"]).await;
    assert_eq!(prune_gpu(&f).await, published[2]);

    let mut jobs = consumers.attach(attach("jobs", only("job"))).await.unwrap();
    assert_eq!(
        seqs(&take(&mut jobs, 2).await),
        [published[1], published[3]]
    );
    let mut all = consumers
        .attach(attach("all", EventFilter::all()))
        .await
        .unwrap();
    match tokio::time::timeout(WAIT, all.recv()).await {
        Ok(Some(Delivery::Gap { after })) => assert_eq!(after, start),
        other => panic!("expected the topic's gap first, got {other:?}"),
    }
    // One gap for the pruned range, then what is left, in order.
    assert_eq!(
        seqs(&take(&mut all, 3).await),
        [published[1], published[3], published[4]]
    );
}

#[tokio::test]
async fn a_gap_inside_a_read_is_told_after_the_events_before_it() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let start = f.publish([(Uuid::now_v7(), 0)]).await[0];
    drop(
        consumers
            .attach(attach("all", EventFilter::all()))
            .await
            .unwrap(),
    );
    until_info(&consumers, "all", |i| {
        i.members == 0 && i.committed_seq == start
    })
    .await;
    // job, gpu, job, gpu, gpu: the first two of `gpu` are pruned, after
    // the consumer's first event.
    let published = publish(&f, &["job", "gpu", "job", "gpu", "gpu"]).await;
    assert_eq!(prune_gpu(&f).await, published[3]);

    let mut all = consumers
        .attach(attach("all", EventFilter::all()))
        .await
        .unwrap();
    assert_eq!(seqs(&take(&mut all, 1).await), [published[0]]);
    match tokio::time::timeout(WAIT, all.recv()).await {
        Ok(Some(Delivery::Gap { after })) => assert_eq!(after, published[0]),
        other => panic!("expected the topic's gap, got {other:?}"),
    }
    assert_eq!(seqs(&take(&mut all, 2).await), [published[2], published[4]]);
}
