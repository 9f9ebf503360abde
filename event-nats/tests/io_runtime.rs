//! The link to NATS on a runtime of its own (`NatsCluster::connect_on`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::mpsc;
use std::time::Duration;

use common::*;
use event_core::{AckedEvent, EventMeta};
use event_nats::NatsCluster;

/// The caller's runtime has one worker, and a task holds it: nothing else
/// runs there, not even its I/O, as when the fan-out's writes saturate the
/// main runtime. An awaited publish on the link's runtime is still
/// acknowledged; the event reaches the bus once the worker is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_awaited_publish_is_answered_while_the_callers_runtime_is_held() {
    let Some(url) = nats_url("an_awaited_publish_is_answered_while_the_callers_runtime_is_held")
    else {
        return;
    };
    let config = unique_config(&url, "a");
    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("link")
        .enable_all()
        .build()
        .unwrap();
    let a = NatsCluster::connect_on(config.clone(), bus_config(64), Some(io.handle().clone()))
        .await
        .expect("connect to NATS");
    let mut sub = a.bus().subscribe();
    let publish = |n: u8| {
        let bus = a.bus().clone();
        io.spawn(async move {
            bus.publish_acked(
                vec![AckedEvent::new(progress(n))],
                &EventMeta::default(),
                WAIT,
            )
            .await
        })
    };
    // The stream is there and answering before the worker is taken.
    let first = publish(1)
        .await
        .unwrap()
        .expect("first publish acknowledged");
    assert_eq!(next_event(&mut sub, "first").await.id(), first[0].event_id);

    let (busy_tx, busy_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let held = tokio::spawn(async move {
        busy_tx.send(()).unwrap();
        // Blocks the worker on purpose; `true` when released by the test.
        release_rx.recv_timeout(Duration::from_secs(60)).is_ok()
    });
    busy_rx
        .recv_timeout(WAIT)
        .expect("the worker took the holding task");

    let stored = publish(2).await.unwrap();
    release_tx.send(()).unwrap();
    assert!(
        held.await.unwrap(),
        "the worker was held for the whole publish"
    );
    let stored = stored.expect("acknowledged while the caller's runtime was held");
    assert_eq!(stored.len(), 1);
    assert!(!stored[0].local_only, "stored in the stream: {stored:?}");
    assert!(stored[0].seq > first[0].seq);
    // The stream's events are injected on the caller's runtime.
    let got = next_event(&mut sub, "the event held back").await;
    assert_eq!((got.id(), got.seq()), (stored[0].event_id, stored[0].seq));

    a.shutdown(Duration::from_secs(2)).await;
    cleanup(&config).await;
    io.shutdown_background();
}
