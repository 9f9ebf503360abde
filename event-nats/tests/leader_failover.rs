//! The node leading the stream's replicas killed and restarted under two
//! publishing instances (three-node NATS, replicas 3): every event the
//! stream acknowledged reaches both buses once, in one order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use event_core::{Received, Subscription};
use event_nats::testing::{PrivateNatsCluster, nats_server_available};
use event_nats::{NatsCluster, NatsConfig};
use tokio::time::Instant;
use uuid::Uuid;

/// Longest wait for the instances to catch up with the stream after the
/// failover (a consumer lost with its node is replaced in about 10 s).
const CATCH_UP: Duration = Duration::from_secs(40);

/// Everything `sub` receives until `stop` and then nothing for a second.
fn record(mut sub: Subscription, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<Uuid>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(1), sub.recv()).await {
                Ok(Received::Event(event)) => got.push(event.id()),
                Ok(other) => panic!("subscription: unexpected {other:?}"),
                Err(_) if stop.load(Ordering::SeqCst) => return got,
                Err(_) => {}
            }
        }
    })
}

/// Stream events acknowledged so far, by both instances.
fn published(a: &NatsCluster, b: &NatsCluster) -> u64 {
    a.health().published + b.health().published
}

async fn wait_published(a: &NatsCluster, b: &NatsCluster, count: u64, what: &str) {
    let deadline = Instant::now() + CATCH_UP;
    while published(a, b) < count {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_leader_killed_and_restarted_both_instances_get_every_event() {
    let test = "stream_leader_killed_and_restarted_both_instances_get_every_event";
    if nats_url(test).is_none() || !nats_server_available(test) {
        return;
    }
    let mut nats = PrivateNatsCluster::start().await;
    let config = NatsConfig {
        replicas: 3,
        ..unique_config(&nats.url(), "a")
    };
    let a = connect(&config, 4096).await;
    let b = connect(&instance(&config, "b"), 4096).await;
    let stop_recording = Arc::new(AtomicBool::new(false));
    let on_a = record(a.bus().subscribe(), stop_recording.clone());
    let on_b = record(b.bus().subscribe(), stop_recording.clone());

    // 200 events/s, alternately from A and B.
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (bus_a, bus_b, stop) = (a.bus().clone(), b.bus().clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                let bus = if n.is_multiple_of(2) { &bus_a } else { &bus_b };
                for i in 0..10 {
                    sent.push(bus.publish(progress(i)).id());
                }
                n += 1;
            }
            sent
        })
    };
    wait_published(&a, &b, 200, "200 events before the kill").await;

    let leader = nats
        .stream_leader(&config.stream)
        .await
        .expect("the stream has a leader");
    let before = published(&a, &b);
    nats.kill(leader).await;
    let killed_at = Instant::now();
    wait_published(&a, &b, before + 600, "600 events without the leader").await;
    nats.restart(leader).await;
    let down_for = killed_at.elapsed();
    let at_restart = published(&a, &b);
    wait_published(&a, &b, at_restart + 400, "400 events after the restart").await;
    stop.store(true, Ordering::SeqCst);
    let sent = publishing.await.unwrap();
    let sent_count = sent.len() as u64;
    let deadline = Instant::now() + CATCH_UP;
    while published(&a, &b) + a.health().local_only + b.health().local_only < sent_count {
        assert!(Instant::now() < deadline, "queued events never resolved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        (a.health().local_only, b.health().local_only),
        (0, 0),
        "events delivered locally only"
    );

    // Both buses catch up with the stream: every event, once, one order.
    let caught_up = tokio::join!(
        a.wait_for_stream_seq(sent_count, CATCH_UP),
        b.wait_for_stream_seq(sent_count, CATCH_UP),
    );
    if caught_up != (true, true) {
        panic!(
            "instances stalled after the leader {} was killed for {:.1} s: A at {}, B at {} of \
             {sent_count}\n{}\nstream: {}",
            nats.name(leader),
            down_for.as_secs_f64(),
            a.last_stream_seq(),
            b.last_stream_seq(),
            nats.jetstream_report(&config.stream).await,
            nats.stream_report(&config.stream).await,
        );
    }
    stop_recording.store(true, Ordering::SeqCst);
    let (got_a, got_b) = (on_a.await.unwrap(), on_b.await.unwrap());
    assert_eq!(got_a, got_b, "A and B saw different events or orders");
    let unique: HashSet<&Uuid> = got_a.iter().collect();
    assert_eq!(unique.len(), got_a.len(), "duplicates");
    assert_eq!(
        unique,
        sent.iter().collect::<HashSet<_>>(),
        "not every event"
    );
    println!(
        "leader {} killed for {:.1} s: {sent_count} events, {} of them while it was down, \
         all at both instances once, in one order",
        nats.name(leader),
        down_for.as_secs_f64(),
        at_restart - before,
    );

    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
}
