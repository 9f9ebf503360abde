//! `GET /api/v1/events/history`.

use event_core::{BusConfig, EventMeta, NoteUpdated, QueueStatus, SeqStart, Uuid};

use crate::common::{Options, Server, get_json};

fn note() -> NoteUpdated {
    NoteUpdated {
        note_id: Uuid::now_v7(),
        title: Some("n".into()),
        tags: vec!["t".into()],
        has_ai_content: false,
        has_links: true,
        operation: None,
        user_id: None,
    }
}

#[tokio::test]
async fn history_returns_retained_envelopes_oldest_first() {
    let server = Server::start().await;
    let mut events = Vec::new();
    for i in 0..10 {
        events.push(if i % 3 == 0 {
            server
                .bus
                .publish_with(note(), EventMeta::default().memory("m"))
        } else {
            server.bus.publish(QueueStatus::new(i, 0))
        });
    }
    let (status, body) = get_json(&server.url("/api/v1/events/history"), &[]).await;
    assert_eq!(status, 200);
    let items = body.as_array().unwrap();
    assert_eq!(items.len(), 10);
    for (item, ev) in items.iter().zip(&events) {
        // Each item is exactly the envelope the SSE `envelope` format sends.
        let expected: serde_json::Value = serde_json::from_slice(ev.envelope_json()).unwrap();
        assert_eq!(item, &expected);
    }

    let by_seq = format!("/api/v1/events/history?since={}", events[4].seq());
    let (_, body) = get_json(&server.url(&by_seq), &[]).await;
    let ids: Vec<_> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        events[5..]
            .iter()
            .map(|e| e.id().to_string())
            .collect::<Vec<_>>()
    );

    let by_id = format!("/api/v1/events/history?since={}&limit=2", events[4].id());
    let (_, body) = get_json(&server.url(&by_id), &[]).await;
    let ids: Vec<_> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        [events[5].id().to_string(), events[6].id().to_string()]
    );

    for query in [
        "types=note",
        "events=NoteUpdated",
        "memory=m&types=note.updated",
    ] {
        let (_, body) =
            get_json(&server.url(&format!("/api/v1/events/history?{query}")), &[]).await;
        let types: Vec<_> = body
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["note.updated"; 4], "{query}");
    }
    // `limit` counts matching events, not scanned ones.
    let (_, body) = get_json(
        &server.url("/api/v1/events/history?types=note&limit=3"),
        &[],
    )
    .await;
    assert_eq!(body.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn history_limit_is_capped_at_1000_and_validated() {
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 4096,
            replay_size: 1500,
            seq_start: SeqStart::At(1),
        },
        ..Options::default()
    })
    .await;
    for i in 0..1200 {
        server.bus.publish(QueueStatus::new(i, 0));
    }
    let (status, body) = get_json(&server.url("/api/v1/events/history?limit=5000"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 1000);
    let (_, body) = get_json(&server.url("/api/v1/events/history"), &[]).await;
    assert_eq!(body.as_array().unwrap().len(), 100, "default limit");
    for bad in ["limit=0", "limit=-3", "limit=lots", "since=yesterday"] {
        let (status, body) =
            get_json(&server.url(&format!("/api/v1/events/history?{bad}")), &[]).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(body["error"], "invalid_parameter");
        let value = bad.split_once('=').unwrap().1;
        assert!(body["message"].as_str().unwrap().contains(value), "{body}");
    }
}

#[tokio::test]
async fn history_with_an_expired_cursor_is_410() {
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 64,
            replay_size: 4,
            seq_start: SeqStart::At(1),
        },
        ..Options::default()
    })
    .await;
    let first = server.bus.publish(QueueStatus::new(0, 0));
    for i in 0..10 {
        server.bus.publish(QueueStatus::new(i, 0));
    }
    let (status, body) = get_json(
        &server.url(&format!("/api/v1/events/history?since={}", first.seq())),
        &[],
    )
    .await;
    assert_eq!(status, 410);
    assert_eq!(body["error"], "cursor_expired");
}

#[tokio::test]
async fn history_pages_with_until_and_offset() {
    let server = Server::start().await;
    let events: Vec<_> = (0..8)
        .map(|i| server.bus.publish(QueueStatus::new(i, 0)))
        .collect();
    let ids = |body: serde_json::Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let want = |range: std::ops::Range<usize>| -> Vec<String> {
        events[range].iter().map(|e| e.id().to_string()).collect()
    };
    let get = |query: String| {
        let url = server.url(&format!("/api/v1/events/history?{query}"));
        async move { get_json(&url, &[]).await }
    };
    // since (exclusive) .. until (inclusive), by sequence number and by id.
    let (status, body) = get(format!(
        "since={}&until={}",
        events[1].seq(),
        events[4].seq()
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids(body), want(2..5));
    let (_, body) = get(format!("until={}", events[2].id())).await;
    assert_eq!(ids(body), want(0..3));
    // Pages: offset then limit, after the filters.
    let (_, body) = get("offset=2&limit=3".to_owned()).await;
    assert_eq!(ids(body), want(2..5));
    let (_, body) = get("offset=7&limit=3".to_owned()).await;
    assert_eq!(ids(body), want(7..8));
    let (_, body) = get("offset=100".to_owned()).await;
    assert_eq!(ids(body), Vec::<String>::new());
    // Faults name the parameter.
    for (query, named) in [
        ("offset=-1".to_owned(), "offset"),
        ("until=soon".to_owned(), "until"),
        (format!("until={}", Uuid::now_v7()), "until"),
    ] {
        let (status, body) = get(query.clone()).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(named),
            "{query}: {body}"
        );
    }
}
