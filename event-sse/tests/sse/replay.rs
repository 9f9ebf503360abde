//! Replay by `Last-Event-ID` / `last_event_id`, the replay/live hand-over,
//! and resync on cursors that cannot be served.

use std::sync::Arc;

use event_core::{BusConfig, Event, QueueStatus, SeqStart};

use crate::common::{EsClient, Options, RawSse, Server};

fn publish_n(server: &Server, n: u64) -> Vec<Arc<Event>> {
    (0..n)
        .map(|i| server.bus.publish(QueueStatus::new(i, 0)))
        .collect()
}

#[tokio::test]
async fn replay_by_header_with_a_sequence_number() {
    let server = Server::start().await;
    let events = publish_n(&server, 10);
    let cursor = events[3].seq().to_string();
    let mut client =
        EsClient::connect(&server.url("/api/v1/events"), &[("Last-Event-ID", &cursor)]).await;
    assert_eq!(client.next().await.event, "QueueStatus"); // confirmation
    for ev in &events[4..] {
        let got = client.next().await;
        assert_eq!(got.id, ev.seq().to_string());
        assert_eq!(got.data.as_bytes(), &ev.json()[..]);
    }
    let live = server.bus.publish(QueueStatus::new(99, 0));
    assert_eq!(client.next().await.id, live.seq().to_string());
}

#[tokio::test]
async fn replay_by_query_with_an_event_uuid() {
    let server = Server::start().await;
    let events = publish_n(&server, 10);
    let url = server.url(&format!(
        "/api/v1/events?format=envelope&last_event_id={}",
        events[5].id()
    ));
    let mut client = EsClient::connect(&url, &[]).await;
    assert_eq!(client.next().await.event, "queue.status");
    for ev in &events[6..] {
        let got = client.next().await;
        assert_eq!(got.event, "queue.status");
        assert_eq!(got.id, ev.id().to_string());
        assert_eq!(got.data.as_bytes(), &ev.envelope_json()[..]);
    }
    let live = server.bus.publish(QueueStatus::new(99, 0));
    assert_eq!(client.next().await.id, live.id().to_string());
}

#[tokio::test]
async fn replay_by_query_with_a_sequence_and_by_header_with_a_uuid() {
    let server = Server::start().await;
    let events = publish_n(&server, 6);
    let url = server.url(&format!("/api/v1/events?last_event_id={}", events[1].seq()));
    let mut by_query = EsClient::connect(&url, &[]).await;
    by_query.next().await;
    for ev in &events[2..] {
        assert_eq!(by_query.next().await.id, ev.seq().to_string());
    }
    let uuid = events[2].id().to_string();
    let mut by_header =
        RawSse::connect(server.addr, "/api/v1/events", &[("Last-Event-ID", &uuid)]).await;
    by_header.skip_preamble().await;
    for ev in &events[3..] {
        // v1 format: replayed frames carry the sequence whatever the cursor form.
        assert_eq!(by_header.event_frame().await.seq(), ev.seq());
    }
}

#[tokio::test]
async fn header_takes_precedence_over_query() {
    let server = Server::start().await;
    let events = publish_n(&server, 10);
    let path = format!("/api/v1/events?last_event_id={}", events[7].seq());
    let header = events[4].seq().to_string();
    let mut client = RawSse::connect(server.addr, &path, &[("Last-Event-ID", &header)]).await;
    client.skip_preamble().await;
    assert_eq!(client.event_frame().await.seq(), events[5].seq());
}

#[tokio::test]
async fn replay_applies_the_filters() {
    let server = Server::start().await;
    let first = server.bus.publish(QueueStatus::new(0, 0));
    let note = server.bus.publish(event_core::NoteUpdated {
        note_id: event_core::Uuid::now_v7(),
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    });
    server.bus.publish(QueueStatus::new(1, 0));
    let path = format!("/api/v1/events?types=note&last_event_id={}", first.seq());
    let mut client = RawSse::connect(server.addr, &path, &[]).await;
    client.skip_preamble().await;
    assert_eq!(client.event_frame().await.seq(), note.seq());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_during_5000_concurrent_publishes_is_gap_and_duplicate_free() {
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 16_384,
            replay_size: 8192,
            seq_start: SeqStart::At(1),
        },
        config: event_sse::SseConfig {
            outbox: event_core::OutboxLimits {
                max_messages: 100_000,
                max_bytes: 64 << 20,
            },
            ..event_sse::SseConfig::default()
        },
        ..Options::default()
    })
    .await;
    let before = publish_n(&server, 100);
    let cursor = before[49].seq();

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let bus = server.bus.clone();
    let publisher = tokio::spawn(async move {
        let mut started = Some(started_tx);
        let mut last = 0;
        for i in 0..5000u64 {
            last = bus.publish(QueueStatus::new(i, 1)).seq();
            if i == 500
                && let Some(tx) = started.take()
            {
                let _ = tx.send(());
            }
            if i % 25 == 0 {
                tokio::task::yield_now().await;
            }
        }
        last
    });
    // Connect while the publisher is running.
    started_rx.await.unwrap();
    let mut client = RawSse::connect(
        server.addr,
        "/api/v1/events",
        &[("Last-Event-ID", &cursor.to_string())],
    )
    .await;
    client.skip_preamble().await;
    let last = publisher.await.unwrap();
    let mut expected = cursor + 1;
    while expected <= last {
        let frame = client.event_frame().await;
        assert_ne!(
            frame.event.as_deref(),
            Some("events.lagged"),
            "lost events: {frame:?}"
        );
        assert_eq!(frame.seq(), expected, "gap or duplicate");
        expected += 1;
    }
    // And nothing after the last one.
    let tail = server.bus.publish(QueueStatus::new(0, 0));
    assert_eq!(client.event_frame().await.seq(), tail.seq());
}

#[tokio::test]
async fn expired_cursor_gets_resync_required_first_then_live() {
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 1024,
            replay_size: 5,
            seq_start: SeqStart::At(1),
        },
        ..Options::default()
    })
    .await;
    let events = publish_n(&server, 20);
    for cursor in [events[1].seq().to_string(), events[1].id().to_string()] {
        let mut client =
            RawSse::connect(server.addr, "/api/v1/events", &[("Last-Event-ID", &cursor)]).await;
        assert_eq!(client.frame().await.raw, "retry: 3000\n\n");
        let resync = client.frame().await;
        assert_eq!(
            resync.raw,
            format!(
                "event: resync_required\ndata: {{\"type\":\"resync_required\",\"reason\":\"cursor_expired\",\"last_event_id\":\"{cursor}\"}}\n\n"
            )
        );
        assert_eq!(client.frame().await.event.as_deref(), Some("QueueStatus"));
        let live = server.bus.publish(QueueStatus::new(1, 1));
        assert_eq!(client.event_frame().await.seq(), live.seq());
    }
}

/// The ring's byte bound: of events near the size limit it keeps only
/// what fits, resumes within that, and sends `resync_required` for a
/// cursor whose next event was just evicted.
#[tokio::test]
async fn the_replay_byte_bound_expires_cursors_it_cannot_serve() {
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 1024,
            replay_size: 1024,
            seq_start: SeqStart::At(1),
        },
        ..Options::default()
    })
    .await;
    let note = |i: u64| event_core::NoteUpdated {
        note_id: event_core::Uuid::now_v7(),
        title: Some(format!("{i} {}", "x".repeat(200 * 1024))),
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    };
    let first = server.bus.try_publish(note(0)).unwrap();
    let weight = event_core::ReplayRing::weight(&first);
    // Room for three.
    server.bus.set_replay_max_bytes(3 * weight + weight / 2);
    let events: Vec<_> = std::iter::once(first)
        .chain((1..10).map(|i| server.bus.try_publish(note(i)).unwrap()))
        .collect();
    assert_eq!(server.bus.retained(), 3);
    assert!(server.bus.retained_bytes() <= server.bus.replay_max_bytes());

    // Resuming from the last evicted event replays the three kept.
    let cursor = events[6].seq().to_string();
    let mut client =
        RawSse::connect(server.addr, "/api/v1/events", &[("Last-Event-ID", &cursor)]).await;
    client.frame().await; // retry
    assert_eq!(client.frame().await.event.as_deref(), Some("QueueStatus"));
    for ev in &events[7..] {
        assert_eq!(client.event_frame().await.seq(), ev.seq());
    }

    // The cursor before it is expired.
    let cursor = events[5].seq().to_string();
    let mut client =
        RawSse::connect(server.addr, "/api/v1/events", &[("Last-Event-ID", &cursor)]).await;
    client.frame().await; // retry
    let resync = client.frame().await;
    assert_eq!(resync.event.as_deref(), Some("resync_required"));
    assert_eq!(resync.json()["reason"], "cursor_expired");
    assert_eq!(resync.json()["last_event_id"], cursor.as_str());
}

#[tokio::test]
async fn unknown_and_malformed_cursors_get_resync_required() {
    let server = Server::start().await;
    let events = publish_n(&server, 3);
    let future_seq = (events[2].seq() + 1000).to_string();
    let unknown_uuid = event_core::Uuid::now_v7().to_string();
    for cursor in [future_seq.as_str(), unknown_uuid.as_str(), "not-an-id"] {
        let path = format!("/api/v1/events?last_event_id={cursor}");
        let mut client = RawSse::connect(server.addr, &path, &[]).await;
        client.frame().await;
        let resync = client.frame().await;
        assert_eq!(resync.event.as_deref(), Some("resync_required"), "{cursor}");
        assert_eq!(resync.id, None);
        assert_eq!(resync.json()["last_event_id"], cursor);
        assert_eq!(resync.json()["reason"], "cursor_expired");
    }
}

#[tokio::test]
async fn cursor_at_the_newest_event_replays_nothing_and_continues_live() {
    let server = Server::start().await;
    for by_uuid in [false, true] {
        let newest = publish_n(&server, 3).pop().unwrap();
        let cursor = if by_uuid {
            newest.id().to_string()
        } else {
            newest.seq().to_string()
        };
        let mut client =
            RawSse::connect(server.addr, "/api/v1/events", &[("Last-Event-ID", &cursor)]).await;
        client.skip_preamble().await;
        let live = server.bus.publish(QueueStatus::new(5, 0));
        assert_eq!(client.event_frame().await.seq(), live.seq());
    }
}
