//! Two or more instances on one NATS JetStream stream.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use event_core::{Cursor, ReplayMiss};
use event_nats::{ConnectionState, Error, NatsConfig, SEQ_STRIDE, bus_seq, stream_seq};
use uuid::Uuid;

#[tokio::test]
async fn event_from_a_reaches_b_once_and_a_once() {
    let Some(url) = nats_url("event_from_a_reaches_b_once_and_a_once") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let (mut sub_a, mut sub_b) = (a.bus().subscribe(), b.bus().subscribe());

    let sent = a.bus().publish(progress(10));
    assert_eq!(sent.seq(), 0, "sequenced by the stream, not locally");
    let on_a = next_event(&mut sub_a, "A").await;
    let on_b = next_event(&mut sub_b, "B").await;
    for ev in [&on_a, &on_b] {
        assert_eq!(ev.id(), sent.id());
        assert_eq!(ev.seq(), bus_seq(1));
        assert_eq!(ev.json(), sent.json());
    }
    assert!(a.originated_here(&on_a));
    assert!(!b.originated_here(&on_b));

    // Nothing else arrives before the next event (no duplicate, no echo):
    // the next thing each bus sees is B's marker.
    let marker = b.bus().publish(progress(20));
    for sub in [&mut sub_a, &mut sub_b] {
        let next = next_event(sub, "marker").await;
        assert_eq!((next.id(), next.seq()), (marker.id(), bus_seq(2)));
    }

    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    // After shutdown every acknowledgement and injection has been counted.
    assert_eq!((a.health().published, b.health().published), (1, 1));
    assert_eq!((a.health().received, b.health().received), (2, 2));
    cleanup(&config).await;
}

#[tokio::test]
async fn thousand_events_from_both_sides_arrive_in_one_order() {
    let Some(url) = nats_url("thousand_events_from_both_sides_arrive_in_one_order") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 2048).await;
    let b = connect(&instance(&config, "b"), 2048).await;
    let (mut sub_a, mut sub_b) = (a.bus().subscribe(), b.bus().subscribe());

    let publish_500 = |bus: event_core::EventBus| {
        tokio::spawn(async move {
            let mut ids = Vec::with_capacity(500);
            for i in 0..500u32 {
                ids.push(bus.publish(progress((i % 100) as u8)).id());
                tokio::task::yield_now().await;
            }
            ids
        })
    };
    let from_a = publish_500(a.bus().clone());
    let from_b = publish_500(b.bus().clone());
    let on_a = collect(&mut sub_a, 1000, "A").await;
    let on_b = collect(&mut sub_b, 1000, "B").await;
    let (from_a, from_b) = (from_a.await.unwrap(), from_b.await.unwrap());

    assert_eq!(identity(&on_a), identity(&on_b), "same order, seqs and ids");
    assert!(on_a.windows(2).all(|w| w[0].seq() < w[1].seq()));
    let expected: Vec<u64> = (1..=1000).map(bus_seq).collect();
    assert_eq!(on_a.iter().map(|e| e.seq()).collect::<Vec<_>>(), expected);
    let got: HashSet<Uuid> = on_a.iter().map(|e| e.id()).collect();
    let sent: HashSet<Uuid> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(got, sent, "every event exactly once");
    // Each origin's events keep their publish order.
    let order_of = |ids: &[Uuid]| -> Vec<Uuid> {
        let mine: HashSet<&Uuid> = ids.iter().collect();
        on_a.iter()
            .map(|e| e.id())
            .filter(|id| mine.contains(id))
            .collect()
    };
    assert_eq!(order_of(&from_a), from_a);
    assert_eq!(order_of(&from_b), from_b);
    // The rings agree too, so a client can resume on either instance.
    let cursor = Cursor::Seq(on_a[499].seq());
    assert_eq!(
        identity(&a.bus().replay_since(&cursor).unwrap()),
        identity(&b.bus().replay_since(&cursor).unwrap())
    );

    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn late_joiner_replays_old_cursors_from_jetstream() {
    let Some(url) = nats_url("late_joiner_replays_old_cursors_from_jetstream") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 1024).await;
    let mut sub_a = a.bus().subscribe();
    for i in 0..50 {
        a.bus().publish(progress(i));
    }
    let seen = collect(&mut sub_a, 50, "A").await;

    // C joins later with a ring of 10: the warm-up fills it with the newest 10.
    let c = connect(&instance(&config, "c"), 10).await;
    assert_eq!(c.last_stream_seq(), 50);
    let ring = c.bus().history(None, 100).unwrap();
    assert_eq!(identity(&ring), identity(&seen[40..]));

    // A cursor older than C's ring: the ring cannot serve it, JetStream can.
    let cursor = Cursor::Seq(seen[4].seq());
    assert_eq!(
        c.bus().replay_since(&cursor).unwrap_err(),
        ReplayMiss::Expired
    );
    let replayed = c
        .replay_since(&cursor)
        .await
        .expect("replay from JetStream");
    assert_eq!(identity(&replayed), identity(&seen[5..]));
    assert_eq!(replayed[0].json(), seen[5].json());
    assert_eq!(replayed[0].envelope_json(), seen[5].envelope_json());

    // The same position named by the event's UUID (SSE envelope format).
    let by_id = c
        .replay_since(&Cursor::Id(seen[4].id()))
        .await
        .expect("replay by id");
    assert_eq!(identity(&by_id), identity(&seen[5..]));

    // A recent cursor comes from the ring; the newest one replays nothing.
    let recent = c.replay_since(&Cursor::Seq(seen[45].seq())).await.unwrap();
    assert_eq!(identity(&recent), identity(&seen[46..]));
    assert!(
        c.replay_since(&Cursor::Seq(seen[49].seq()))
            .await
            .unwrap()
            .is_empty()
    );

    a.shutdown(Duration::from_secs(2)).await;
    c.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn cursors_beyond_retention_or_bounds_require_resync() {
    let Some(url) = nats_url("cursors_beyond_retention_or_bounds_require_resync") else {
        return;
    };
    let mut config = unique_config(&url, "a");
    config.retention.max_messages = 20;
    config.max_replay = 5;
    let a = connect(&config, 64).await;
    // One instance's events enter the stream in its publish order.
    let sent: Vec<Uuid> = (0..30).map(|i| a.bus().publish(progress(i)).id()).collect();
    assert!(a.wait_for_stream_seq(30, WAIT).await);

    // Whether or not A's consumer read events 1..=10 before the stream
    // dropped them, A's ring never replays across a gap.
    if let Ok(events) = a.bus().replay_since(&Cursor::Seq(bus_seq(2))) {
        let seqs: Vec<u64> = events.iter().map(|e| e.seq()).collect();
        assert_eq!(seqs, (3..=30).map(bus_seq).collect::<Vec<_>>());
    }

    // Stream keeps 11..=30: a cursor at 2 lost events 3..=10.
    let expired = a
        .replay_from_stream(&Cursor::Seq(bus_seq(2)))
        .await
        .unwrap_err();
    assert!(matches!(expired, Error::CursorExpired(_)), "{expired:?}");
    let expired_id = a
        .replay_from_stream(&Cursor::Id(sent[1]))
        .await
        .unwrap_err();
    assert!(expired_id.requires_resync(), "{expired_id:?}");
    // From the future.
    let unknown = a
        .replay_from_stream(&Cursor::Seq(bus_seq(99)))
        .await
        .unwrap_err();
    assert!(matches!(unknown, Error::CursorUnknown(_)), "{unknown:?}");
    let unknown_id = a
        .replay_since(&Cursor::Id(Uuid::now_v7()))
        .await
        .unwrap_err();
    assert!(
        matches!(unknown_id, Error::CursorUnknown(_)),
        "{unknown_id:?}"
    );
    // Retained, but more than max_replay (5) events ago.
    let long = a
        .replay_from_stream(&Cursor::Seq(bus_seq(20)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            long,
            Error::ReplayTooLong {
                count: 10,
                limit: 5
            }
        ),
        "{long:?}"
    );
    assert!(expired.requires_resync() && unknown.requires_resync() && long.requires_resync());
    // Within every bound.
    let ok = a
        .replay_from_stream(&Cursor::Seq(bus_seq(26)))
        .await
        .unwrap();
    let ok: Vec<(u64, Uuid)> = ok.iter().map(|e| (e.seq(), e.id())).collect();
    let want: Vec<(u64, Uuid)> = (27..=30)
        .map(|s| (bus_seq(s), sent[s as usize - 1]))
        .collect();
    assert_eq!(ok, want);

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn restarted_instance_resumes_from_jetstream() {
    let Some(url) = nats_url("restarted_instance_resumes_from_jetstream") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 1024).await;
    let b = connect(&instance(&config, "b"), 32).await;
    let mut sub_a = a.bus().subscribe();
    let mut sub_b = b.bus().subscribe();
    for i in 0..10 {
        a.bus().publish(progress(i));
    }
    collect(&mut sub_a, 10, "A before").await;
    let before = collect(&mut sub_b, 10, "B before").await;
    let cursor = Cursor::Seq(before[9].seq()); // what B's SSE client last saw
    b.shutdown(Duration::from_secs(2)).await;
    drop((b, sub_b));

    for i in 0..100 {
        a.bus().publish(progress(i));
    }
    let missed = collect(&mut sub_a, 100, "A during").await;

    let b = connect(&instance(&config, "b"), 32).await;
    assert_eq!(b.last_stream_seq(), 110, "caught up before serving");
    let replayed = b
        .replay_since(&cursor)
        .await
        .expect("resume on restarted B");
    assert_eq!(identity(&replayed), identity(&missed));
    // Live delivery continues with the next stream sequence.
    let mut sub_b = b.bus().subscribe();
    let live = a.bus().publish(progress(1));
    let got = next_event(&mut sub_b, "B live").await;
    assert_eq!((got.id(), got.seq()), (live.id(), bus_seq(111)));

    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn instances_recover_when_nats_restarts() {
    // Needs only the nats-server binary, but runs with the other NATS tests.
    if nats_url("instances_recover_when_nats_restarts").is_none() {
        return;
    }
    let mut server = PrivateNats::start().await;
    // No reconnect grace: local-only from the first moment of the outage
    // (with the default grace the first events wait up to 2 s for a
    // failover first).
    let config = NatsConfig {
        reconnect_grace: Duration::ZERO,
        ..unique_config(&server.url(), "a")
    };
    let a = connect(&config, 256).await;
    let b = connect(&instance(&config, "b"), 256).await;
    let (mut sub_a, mut sub_b) = (a.bus().subscribe(), b.bus().subscribe());
    let first = a.bus().publish(progress(1));
    assert_eq!(next_event(&mut sub_a, "A first").await.id(), first.id());
    assert_eq!(next_event(&mut sub_b, "B first").await.id(), first.id());

    server.stop().await;
    wait_state(&a, ConnectionState::Disconnected, "A").await;
    wait_state(&b, ConnectionState::Disconnected, "B").await;
    assert_eq!(a.health().status.as_str(), "disconnected");

    // A keeps serving its own events, locally only, between stream sequences.
    let local = a.bus().publish(progress(2));
    assert_ne!(local.seq(), 0);
    let got = next_event(&mut sub_a, "A local").await;
    assert_eq!((got.id(), got.seq()), (local.id(), bus_seq(1) + 1));
    assert_eq!(stream_seq(got.seq()), 1);
    assert!(got.seq() % SEQ_STRIDE != 0);
    assert_eq!(a.health().local_only, 1);

    server.restart().await;
    wait_state(&a, ConnectionState::Connected, "A").await;
    wait_state(&b, ConnectionState::Connected, "B").await;

    // Both directions work again, without restarting the instances.
    let from_b = b.bus().publish(progress(3));
    let from_a = a.bus().publish(progress(4));
    let on_a = collect(&mut sub_a, 2, "A after").await;
    let on_b = collect(&mut sub_b, 2, "B after").await;
    assert_eq!(identity(&on_a), identity(&on_b));
    let ids: HashSet<Uuid> = on_b.iter().map(|e| e.id()).collect();
    assert_eq!(ids, HashSet::from([from_a.id(), from_b.id()]));
    // B never saw A's local-only event.
    assert!(!ids.contains(&local.id()));
    assert_eq!(
        on_a.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![bus_seq(2), bus_seq(3)]
    );
    assert!(a.health().reconnects >= 1 && b.health().reconnects >= 1);

    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

struct Recorder(tokio::sync::mpsc::UnboundedSender<Uuid>);

#[event_core::async_trait]
impl event_core::EventSink for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn deliver(
        &self,
        event: std::sync::Arc<event_core::Event>,
    ) -> Result<(), event_core::SinkError> {
        let _ = self.0.send(event.id());
        Ok(())
    }
}

#[tokio::test]
async fn local_origin_only_sink_runs_once_per_event_in_the_cluster() {
    let Some(url) = nats_url("local_origin_only_sink_runs_once_per_event_in_the_cluster") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let b = connect(&instance(&config, "b"), 64).await;
    let (tx_a, mut rx_a) = tokio::sync::mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = tokio::sync::mpsc::unbounded_channel();
    let mut runner_a = event_core::SinkRunner::new(a.bus());
    runner_a.register(a.local_origin_only(std::sync::Arc::new(Recorder(tx_a))));
    let mut runner_b = event_core::SinkRunner::new(b.bus());
    runner_b.register(b.local_origin_only(std::sync::Arc::new(Recorder(tx_b))));
    let (mut sub_a, mut sub_b) = (a.bus().subscribe(), b.bus().subscribe());

    let mine_a: Vec<Uuid> = (0..3).map(|i| a.bus().publish(progress(i)).id()).collect();
    let mine_b: Vec<Uuid> = (0..2).map(|i| b.bus().publish(progress(i)).id()).collect();
    collect(&mut sub_a, 5, "A").await;
    collect(&mut sub_b, 5, "B").await;
    // Shutting the runners down drains what their subscriptions hold.
    runner_a.shutdown(Duration::from_secs(5)).await;
    runner_b.shutdown(Duration::from_secs(5)).await;
    let drain = |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Uuid>| {
        let mut v = Vec::new();
        while let Ok(id) = rx.try_recv() {
            v.push(id);
        }
        v
    };
    assert_eq!(drain(&mut rx_a), mine_a);
    assert_eq!(drain(&mut rx_b), mine_b);
    let health = serde_json::to_value(a.health()).unwrap();
    assert_eq!(health["status"], "connected");
    assert_eq!(health["instance_id"], "a");

    a.shutdown(Duration::from_secs(2)).await;
    assert_eq!(a.health().published, 3);
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}

#[tokio::test]
async fn failed_publish_is_delivered_locally_not_lost() {
    let Some(url) = nats_url("failed_publish_is_delivered_locally_not_lost") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let mut sub = a.bus().subscribe();
    let first = a.bus().publish(progress(1));
    assert_eq!(next_event(&mut sub, "first").await.id(), first.id());

    // The stream disappears while NATS stays up: publishing fails, is
    // retried, then the event is delivered on this instance only.
    assert!(event_nats::delete_stream(&config).await.unwrap());
    let orphan = a.bus().publish(progress(2));
    assert_eq!(orphan.seq(), 0, "queued for the stream first");
    let got = next_event(&mut sub, "local fallback").await;
    assert_eq!(got.id(), orphan.id());
    assert_eq!(got.seq(), bus_seq(1) + 1, "between stream sequences");
    assert_eq!(a.health().local_only, 1);
    assert!(a.originated_here(&got));
    assert_eq!(a.state(), ConnectionState::Connected);

    a.shutdown(Duration::from_secs(2)).await;
    assert!(!event_nats::delete_stream(&config).await.unwrap());
}

#[tokio::test]
async fn foreign_garbage_on_the_stream_is_skipped() {
    let Some(url) = nats_url("foreign_garbage_on_the_stream_is_skipped") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 64).await;
    let mut sub = a.bus().subscribe();

    // Someone else publishes junk on one of the stream's subjects.
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.publish(
        config.subject_for("job.progress", 0, "job"),
        "not an event".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let next = a.bus().publish(progress(5));
    let got = next_event(&mut sub, "after junk").await;
    assert_eq!((got.id(), got.seq()), (next.id(), bus_seq(2)));
    // Replays skip it too.
    let replayed = a.replay_from_stream(&Cursor::Seq(0)).await.unwrap();
    assert_eq!(identity(&replayed), identity(&[got]));

    a.shutdown(Duration::from_secs(2)).await;
    assert_eq!(a.health().skipped, 1);
    cleanup(&config).await;
}

#[tokio::test]
async fn replay_source_serves_jetstream_with_its_hand_over_point() {
    use event_core::ReplaySource;
    let Some(url) = nats_url("replay_source_serves_jetstream_with_its_hand_over_point") else {
        return;
    };
    let config = unique_config(&url, "a");
    let a = connect(&config, 1024).await;
    let mut sub_a = a.bus().subscribe();
    for i in 0..20 {
        a.bus().publish(progress(i));
    }
    let seen = collect(&mut sub_a, 20, "A").await;
    let source: &dyn ReplaySource = &a;

    // By sequence and by id: everything after, through the last event.
    for cursor in [Cursor::Seq(seen[2].seq()), Cursor::Id(seen[2].id())] {
        let replayed = source.replay_since(&cursor).await.expect("served");
        assert_eq!(identity(&replayed.events), identity(&seen[3..]), "{cursor}");
        assert_eq!(replayed.through, bus_seq(20));
    }
    // Nothing after the newest: the hand-over point is the cursor's own
    // position, also for an id (its stream sequence).
    for cursor in [Cursor::Seq(seen[19].seq()), Cursor::Id(seen[19].id())] {
        let replayed = source.replay_since(&cursor).await.expect("served");
        assert!(replayed.events.is_empty(), "{cursor}");
        assert_eq!(replayed.through, bus_seq(20), "{cursor}");
    }
    // Cursors the stream never had are misses (resync_required).
    for cursor in [Cursor::Seq(bus_seq(500)), Cursor::Id(Uuid::now_v7())] {
        assert_eq!(
            source.replay_since(&cursor).await.unwrap_err(),
            ReplayMiss::Unknown,
            "{cursor}"
        );
    }

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}
