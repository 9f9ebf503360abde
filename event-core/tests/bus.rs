//! Bus ordering, lag reporting, replay and render-once under fan-out.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use event_core::{
    BusConfig, Cursor, Event, EventBus, EventFilter, FanoutHub, JobProgress, OutboxLimits,
    Outgoing, OverflowPolicy, Principal, QueueStatus, Received, ReplayMiss, SeqStart,
    SubscribeOptions, WireForm,
};
use uuid::Uuid;

fn bus(capacity: usize, replay: usize) -> EventBus {
    EventBus::new(BusConfig {
        capacity,
        replay_size: replay,
        seq_start: SeqStart::At(1),
    })
}

async fn collect(mut sub: event_core::Subscription, n: usize) -> Vec<Arc<Event>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), sub.recv())
            .await
            .expect("timed out")
        {
            Received::Event(e) => out.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishers_share_one_total_order() {
    const PUBLISHERS: u64 = 8;
    const EACH: u64 = 10_000;
    let total = (PUBLISHERS * EACH) as usize;
    let bus = bus(total + 1, total);
    // The ring keeps all 80,000 (more than its default byte bound holds).
    bus.set_replay_max_bytes(usize::MAX);
    let subs: Vec<_> = (0..3)
        .map(|_| tokio::spawn(collect(bus.subscribe(), total)))
        .collect();

    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    bus.publish(QueueStatus::new(p, i));
                }
            })
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }

    let mut seen = Vec::new();
    for s in subs {
        seen.push(s.await.unwrap());
    }
    let reference: Vec<(u64, Uuid)> = seen[0].iter().map(|e| (e.seq(), e.id())).collect();
    // Strictly increasing sequence and id, no repeats.
    assert!(
        reference
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1)
    );
    let ids: HashSet<Uuid> = reference.iter().map(|r| r.1).collect();
    assert_eq!(ids.len(), total);
    // Every subscriber saw the same order.
    for other in &seen[1..] {
        let theirs: Vec<(u64, Uuid)> = other.iter().map(|e| (e.seq(), e.id())).collect();
        assert_eq!(theirs, reference);
    }
    // The ring agrees.
    let ring: Vec<(u64, Uuid)> = bus
        .history(None, total)
        .unwrap()
        .iter()
        .map(|e| (e.seq(), e.id()))
        .collect();
    assert_eq!(ring, reference);
    // Each publisher's own events stay in its publish order.
    for p in 0..PUBLISHERS {
        let mine: Vec<u64> = seen[0]
            .iter()
            .filter_map(|e| match e.payload() {
                event_core::ServerEvent::QueueStatus(q) if q.pending == p => Some(q.running),
                _ => None,
            })
            .collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn lagging_subscriber_learns_exact_count() {
    let bus = bus(16, 16);
    let mut slow = bus.subscribe();
    for i in 0..100 {
        bus.publish(QueueStatus::new(i, 0));
    }
    match slow.recv().await {
        Received::Lagged(n) => assert_eq!(n, 100 - 16),
        other => panic!("expected lag, got {other:?}"),
    }
    // Then the oldest retained event, and the rest in order.
    let mut next = Vec::new();
    while let Some(Received::Event(e)) = slow.try_recv() {
        next.push(e.seq());
    }
    assert_eq!(next, (85..=100).collect::<Vec<_>>());
}

#[tokio::test]
async fn replay_both_id_forms_and_expiry() {
    let bus = bus(64, 10);
    let events: Vec<_> = (0..25)
        .map(|i| bus.publish(QueueStatus::new(i, 0)))
        .collect();
    // Ring holds seq 16..=25.
    let by_seq = bus.replay_since(&Cursor::Seq(20)).unwrap();
    assert_eq!(
        by_seq.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![21, 22, 23, 24, 25]
    );
    let by_id = bus
        .replay_since(&Cursor::parse(&events[19].id().to_string()).unwrap())
        .unwrap();
    assert_eq!(
        by_id.iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![21, 22, 23, 24, 25]
    );
    assert_eq!(
        bus.replay_since(&Cursor::Seq(3)).unwrap_err(),
        ReplayMiss::Expired
    );
    assert_eq!(
        bus.replay_since(&Cursor::Id(events[2].id())).unwrap_err(),
        ReplayMiss::Expired
    );
    assert_eq!(
        bus.replay_since(&Cursor::Seq(999)).unwrap_err(),
        ReplayMiss::Unknown
    );
}

#[tokio::test]
async fn subscribe_from_hands_over_without_gap_or_overlap() {
    let bus = bus(100_000, 100_000);
    for i in 0..10 {
        bus.publish(QueueStatus::new(i, 0));
    }
    let publisher = {
        let bus = bus.clone();
        std::thread::spawn(move || {
            for i in 0..5_000 {
                bus.publish(QueueStatus::new(i, 1));
            }
        })
    };
    let (mut sub, replay) = bus.subscribe_from(&Cursor::Seq(5));
    publisher.join().unwrap();
    let mut seqs: Vec<u64> = replay.unwrap().iter().map(|e| e.seq()).collect();
    while let Some(Received::Event(e)) = sub.try_recv() {
        seqs.push(e.seq());
    }
    assert_eq!(seqs, (6..=5010).collect::<Vec<_>>());
}

#[tokio::test]
async fn each_wire_form_renders_once_for_100_subscribers() {
    let bus = bus(64, 64);
    let hub = FanoutHub::new("test");
    let subs: Vec<_> = (0..100)
        .map(|i| {
            hub.subscribe(SubscribeOptions {
                filter: EventFilter::all(),
                principal: Principal::anonymous(),
                limits: OutboxLimits::default(),
                policy: OverflowPolicy::Close,
                wire: if i % 2 == 0 {
                    WireForm::Flat
                } else {
                    WireForm::Envelope
                },
            })
        })
        .collect();
    let ev = bus.publish(JobProgress {
        job_id: Uuid::now_v7(),
        note_id: None,
        progress: 5,
        message: None,
    });
    hub.fan_out(std::slice::from_ref(&ev));
    let mut total_bytes = 0;
    for (i, s) in subs.iter().enumerate() {
        let mut out = Vec::new();
        s.outbox().drain_into(&mut out);
        let [Outgoing::Event(e)] = out.as_slice() else {
            panic!("expected one event")
        };
        let bytes = if i % 2 == 0 {
            e.json()
        } else {
            e.envelope_json()
        };
        total_bytes += bytes.len();
        // Shared, not copied: every subscriber gets the same allocation.
        let canonical = if i % 2 == 0 {
            ev.json()
        } else {
            ev.envelope_json()
        };
        assert_eq!(bytes.as_ptr(), canonical.as_ptr());
    }
    assert!(total_bytes > 0);
    assert_eq!(ev.render_count(), 2);
}
