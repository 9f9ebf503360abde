//! Fan-out under load: many clients in order, and a slow consumer that is
//! dropped without holding anyone else back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Setup, TestServer, WAIT, expect_close, next_text};
use event_core::{NoteUpdated, OutboxLimits, QueueStatus, Uuid};
use event_ws::{WsConfig, close_code};
use tokio::sync::watch;

fn text(e: &event_core::Event) -> String {
    String::from_utf8(e.json().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_each_receive_a_thousand_events_in_order() {
    const CLIENTS: usize = 200;
    const EVENTS: u64 = 1_000;
    let server = TestServer::start(WsConfig::default()).await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(server.connect().await);
    }
    server.wait_registered(CLIENTS).await;

    let expected: Arc<Vec<String>> = Arc::new(
        (0..EVENTS)
            .map(|i| text(&server.bus.publish(QueueStatus::new(i, i % 3))))
            .collect(),
    );
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let expected = expected.clone();
            tokio::spawn(async move {
                for (i, want) in expected.iter().enumerate() {
                    let got = next_text(&mut client).await;
                    assert_eq!(&got, want, "event {i} out of order or altered");
                }
                client
            })
        })
        .collect();
    for r in readers {
        tokio::time::timeout(Duration::from_secs(120), r)
            .await
            .expect("a client did not receive everything in time")
            .expect("a reader failed");
    }
    // Every event was rendered once, however many clients got it.
    let last = server
        .bus
        .latest(event_core::EventKind::QueueStatus)
        .unwrap();
    assert_eq!(last.render_count(), 1);
    assert_eq!(server.endpoint.hub().dropped(), 0);
    assert_eq!(server.endpoint.hub().delivered(), CLIENTS as u64 * EVENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_4008_while_others_get_everything() {
    const READERS: usize = 50;
    const CHUNK: usize = 32;
    const CHUNKS: usize = 20;
    let server = TestServer::start_with(Setup {
        send_buffer: Some(16 * 1024),
        config: WsConfig {
            // Small budget: the readers drain each chunk before the next one is
            // published, so only the stalled client can exceed it.
            outbox: OutboxLimits {
                max_messages: 2 * CHUNK,
                max_bytes: 16 * 1024 * 1024,
            },
            // The stalled client's outbox coalesces; it is closed once its
            // write has made no progress for this long.
            write_timeout: Duration::from_secs(2),
            // Long enough for the test to read the stalled client's backlog
            // and reach the close frame.
            close_timeout: Duration::from_secs(60),
            ..WsConfig::default()
        },
        ..Setup::default()
    })
    .await;

    // The stalled client: a tiny receive buffer, and it stops reading after
    // the initial status.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(server.url(), tcp)
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stalled))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        first
            .to_text()
            .unwrap()
            .starts_with(r#"{"type":"QueueStatus""#)
    );

    let (progress_tx, mut progress) = watch::channel(0usize);
    let progress_tx = Arc::new(progress_tx);
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut client = server.connect().await;
        let progress_tx = progress_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(CHUNK * CHUNKS);
            for _ in 0..CHUNK * CHUNKS {
                got.push(next_text(&mut client).await);
                progress_tx.send_modify(|n| *n += 1);
            }
            (got, client)
        }));
    }

    // ~2 KiB events, so the stalled client's socket buffers fill quickly.
    let padding = "x".repeat(2048);
    let mut published = Vec::with_capacity(CHUNK * CHUNKS);
    for chunk in 0..CHUNKS {
        for i in 0..CHUNK {
            let event = server.bus.publish(NoteUpdated {
                note_id: Uuid::now_v7(),
                title: Some(format!("{chunk}-{i}-{padding}")),
                tags: vec![],
                has_ai_content: false,
                has_links: false,
                operation: None,
                user_id: None,
            });
            published.push(text(&event));
        }
        let want = READERS * CHUNK * (chunk + 1);
        tokio::time::timeout(WAIT, progress.wait_for(|n| *n >= want))
            .await
            .expect("the readers fell behind: the stalled client held them up")
            .unwrap();
    }
    let mut reader_clients = Vec::new();
    for r in readers {
        let (got, client) = r.await.unwrap();
        assert_eq!(got, published, "a reader missed or reordered events");
        reader_clients.push(client);
    }
    assert!(
        server.endpoint.hub().dropped() > 0,
        "the stalled client should have exceeded its budget"
    );
    // Its connection ends after the write timeout (the sub goes first).
    tokio::time::timeout(WAIT, async {
        while server.endpoint.hub().len() > READERS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stalled client was not closed");

    // The stalled client, reading at last, finds part of the stream and then
    // the slow-consumer close code.
    assert_eq!(expect_close(&mut stalled).await, close_code::SLOW_CONSUMER);
    // The readers were never disturbed.
    server.wait_registered(READERS).await;
    for mut c in reader_clients {
        common::send_text(&mut c, r#"{"type":"ping"}"#).await;
        assert_eq!(next_text(&mut c).await, r#"{"type":"pong"}"#);
    }
}

#[tokio::test]
async fn a_stalled_write_drops_the_client_even_within_its_budget() {
    let server = TestServer::start_with(Setup {
        send_buffer: Some(16 * 1024),
        config: WsConfig {
            write_timeout: Duration::from_millis(300),
            close_timeout: Duration::from_millis(200),
            ..WsConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(server.url(), tcp)
        .await
        .unwrap();
    futures_util::StreamExt::next(&mut stalled)
        .await
        .unwrap()
        .unwrap();
    server.wait_registered(1).await;

    // Far more bytes than the socket buffers hold, far fewer messages than
    // the outbox budget: the write blocks but nothing overflows.
    let padding = "x".repeat(4096);
    for i in 0..200 {
        server.bus.publish(NoteUpdated {
            note_id: Uuid::now_v7(),
            title: Some(format!("{i}-{padding}")),
            tags: vec![],
            has_ai_content: false,
            has_links: false,
            operation: None,
            user_id: None,
        });
    }
    // The server gives up on the client (the default write timeout of 30 s
    // would outlast this wait).
    server.wait_registered(0).await;
    assert_eq!(server.endpoint.hub().dropped(), 0, "not an overflow");
    assert!(server.endpoint.hub().is_empty());
}

/// On this single-threaded runtime the sink runner cannot run while the
/// test publishes, so a burst larger than the bus capacity makes the
/// endpoint itself miss events.
#[tokio::test]
async fn clients_are_closed_with_4008_when_the_endpoint_missed_events() {
    let server = TestServer::start_with(Setup {
        bus_capacity: Some(8),
        ..Setup::default()
    })
    .await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    for i in 0..100 {
        server.bus.publish(QueueStatus::new(i, 0));
    }
    // Rather than skipping events silently, both are told to reconnect.
    assert_eq!(expect_close(&mut a).await, close_code::SLOW_CONSUMER);
    assert_eq!(expect_close(&mut b).await, close_code::SLOW_CONSUMER);
    server.wait_registered(0).await;
    // A reconnecting client starts over with a fresh status.
    let (_c, first) = server.connect_with_status().await;
    assert_eq!(
        first,
        r#"{"type":"QueueStatus","total_jobs":99,"running":0,"pending":99}"#
    );
}
