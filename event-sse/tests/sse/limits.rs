//! Limits of issue 15: the connection limit (item 4) and the byte bound of
//! a replay (item 3).

use std::time::Duration;

use event_core::{BusConfig, NoteUpdated, OutboxLimits, QueueStatus, SeqStart, Uuid};
use event_sse::SseConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use crate::common::{Options, RawSse, Server, WAIT};

async fn wait_streams(server: &Server, n: usize) {
    tokio::time::timeout(WAIT, async {
        while server.endpoint.connections() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "expected {n} open streams, have {}",
            server.endpoint.connections()
        )
    });
}

#[tokio::test]
async fn streams_beyond_max_connections_get_503_with_retry_after() {
    let server = Server::with(Options {
        config: SseConfig {
            max_connections: 3,
            ..SseConfig::default()
        },
        ..Options::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
        assert_eq!(c.status, 200);
        c.skip_preamble().await;
        open.push(c);
    }
    server.wait_connections(3).await;

    let mut refused = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert_eq!(refused.header("retry-after").as_deref(), Some("5"));
    assert!(
        refused
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{}",
        refused.head
    );
    let body: serde_json::Value = serde_json::from_str(&refused.body_text().await).unwrap();
    assert_eq!(body["error"], "too_many_connections", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains('3')),
        "{body}"
    );
    // The alias path counts against the same limit.
    let alias = RawSse::connect(server.addr, "/api/v1/events/stream", &[]).await;
    assert_eq!(alias.status, 503);
    assert_eq!(server.registry.total(), 3);

    // One leaves: its place is free again.
    drop(open.pop());
    wait_streams(&server, 2).await;
    let mut again = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    assert_eq!(again.status, 200, "{}", again.head);
    again.skip_preamble().await;
    assert_eq!(server.endpoint.connections(), 3);
}

fn large_note(i: u64, bytes: usize) -> NoteUpdated {
    NoteUpdated {
        note_id: Uuid::now_v7(),
        title: Some(format!("{i} {}", "x".repeat(bytes))),
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    }
}

/// A server whose ring holds `n` events of about 100 KiB each, and the
/// sequence of the first.
async fn ring_of_large_events(n: usize, ring: usize) -> (Server, u64) {
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 16_384,
            replay_size: ring,
            seq_start: SeqStart::At(1),
        },
        ..Options::default()
    })
    .await;
    // This is about the connection's budget, not the ring's byte bound
    // (400 of these weigh more than its 64 MiB default).
    server.bus.set_replay_max_bytes(usize::MAX);
    let first = (0..n as u64)
        .map(|i| {
            server
                .bus
                .try_publish(large_note(i, 100 * 1024))
                .unwrap()
                .seq()
        })
        .min()
        .unwrap();
    assert_eq!(server.bus.retained(), n);
    (server, first)
}

/// The next event frame, failing the test at `deadline`.
async fn event_by(client: &mut RawSse, deadline: tokio::time::Instant) -> crate::common::Frame {
    tokio::time::timeout_at(deadline, client.event_frame())
        .await
        .expect("no event frame before the deadline")
}

fn events_sent(server: &Server) -> u64 {
    server.registry.list().iter().map(|c| c.events_sent).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_client_that_reads_nothing_holds_at_most_its_budget() {
    // 40 times the connection's budget in the ring.
    const EVENTS: usize = 400;
    let (server, first) = ring_of_large_events(EVENTS, EVENTS).await;
    let budget = OutboxLimits::default().max_bytes;
    // About 40 MB to replay; the client sends its request and reads nothing.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let request = format!(
        "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nLast-Event-ID: {first}\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    server.wait_connections(1).await;

    // Until the server has stopped making progress for this client (the
    // socket's buffers are full), the bytes it holds for it never exceed
    // the budget.
    let (mut last_sent, mut unchanged, mut most) = (0, 0, 0);
    tokio::time::timeout(WAIT, async {
        while unchanged < 50 {
            let held = server.endpoint.buffered_bytes();
            assert!(held <= budget, "holds {held} bytes, budget {budget}");
            most = most.max(held);
            let sent = events_sent(&server);
            if sent > 0 && sent == last_sent {
                unchanged += 1;
            } else {
                unchanged = 0;
            }
            last_sent = sent;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server kept writing to a client that reads nothing");
    // What went out fits the socket's buffers: far from the whole replay.
    assert!(
        last_sent < EVENTS as u64 / 2,
        "{last_sent} of {EVENTS} events framed for a client that reads nothing"
    );
    assert!(most > 0, "nothing was ever in flight");
    drop(stream);
    tokio::time::timeout(WAIT, async {
        while server.endpoint.buffered_bytes() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the replay's bytes are released when the client leaves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_client_that_reads_gets_the_whole_replay_in_order_then_live() {
    const EVENTS: usize = 300;
    let (server, first) = ring_of_large_events(EVENTS, 1000).await;
    let mut client = RawSse::connect(
        server.addr,
        "/api/v1/events",
        &[("Last-Event-ID", &first.to_string())],
    )
    .await;
    client.skip_preamble().await;
    let mut expected = first + 1;
    let mut last_live = 0;
    let mut replayed = 0;
    // One deadline for the whole stream (keep-alive comments would reset a
    // per-frame one).
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    loop {
        if replayed == 100 {
            // Live events published in the middle of the replay come after it.
            for i in 0..50 {
                last_live = server.bus.publish(QueueStatus::new(i, 0)).seq();
            }
        }
        let frame = event_by(&mut client, deadline).await;
        assert_eq!(
            frame.event.as_deref().map(|e| e.contains('.')),
            Some(false),
            "{:?}",
            frame.event
        );
        assert_eq!(frame.seq(), expected, "gap or duplicate");
        expected += 1;
        replayed += 1;
        if last_live != 0 && frame.seq() == last_live {
            break;
        }
    }
    assert_eq!(replayed, EVENTS - 1 + 50);
    let live = server.bus.publish(QueueStatus::new(99, 0));
    assert_eq!(event_by(&mut client, deadline).await.seq(), live.seq());
    // The replay came in pieces, not as one first chunk.
    assert!(client.chunks >= 20, "{} chunks", client.chunks);
    assert_eq!(server.endpoint.buffered_bytes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_overtaken_by_the_ring_gets_resync_required_then_live() {
    let (server, first) = ring_of_large_events(40, 40).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let mut client = RawSse::over(
        stream,
        server.addr,
        "/api/v1/events",
        &[("Last-Event-ID", &first.to_string())],
    )
    .await;
    client.skip_preamble().await;
    // The client pauses; the whole ring is overwritten meanwhile.
    let overwrite: Vec<u64> = (0..40)
        .map(|i| {
            server
                .bus
                .try_publish(large_note(i, 100 * 1024))
                .unwrap()
                .seq()
        })
        .collect();
    let mut expected = first + 1;
    let deadline = tokio::time::Instant::now() + 3 * WAIT;
    let resync = loop {
        let frame = event_by(&mut client, deadline).await;
        if frame.event.as_deref() == Some("resync_required") {
            break frame;
        }
        assert_eq!(frame.seq(), expected, "gap or duplicate before the resync");
        expected += 1;
    };
    // It names the last event the client got, so a reconnect would resume there.
    assert_eq!(resync.json()["last_event_id"], (expected - 1).to_string());
    assert!(resync.id.is_none());
    // Then live: whatever comes next is newer than the resync point and in order.
    let live = server.bus.publish(QueueStatus::new(7, 0));
    let mut last = expected - 1;
    loop {
        let frame = event_by(&mut client, deadline).await;
        assert!(frame.seq() > last, "out of order after the resync");
        last = frame.seq();
        if last == live.seq() {
            break;
        }
        assert!(overwrite.contains(&last));
    }
}
