//! Filters, their combinations, 400s, authentication and memory scope.

use std::sync::Arc;

use event_core::{
    Access, EventMeta, JobCompleted, JobProgress, JobQueued, NoteUpdated, QueueStatus, ServerEvent,
    StaticTokens, Uuid,
};

use crate::common::{Options, RawSse, Server, get_json};

fn note(id: Uuid) -> ServerEvent {
    NoteUpdated {
        note_id: id,
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    }
    .into()
}

fn queued(job: Uuid) -> ServerEvent {
    JobQueued {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: None,
    }
    .into()
}

fn progress(job: Uuid) -> ServerEvent {
    JobProgress {
        job_id: job,
        note_id: None,
        progress: 10,
        message: None,
    }
    .into()
}

fn completed(job: Uuid) -> ServerEvent {
    JobCompleted {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: None,
        duration_ms: None,
    }
    .into()
}

/// Publishes a fixed mix; returns (label, seq) of each.
fn publish_mix(server: &Server, x: Uuid, y: Uuid) -> Vec<(&'static str, u64)> {
    let bus = &server.bus;
    let m = || EventMeta::default().memory("m");
    let n = || EventMeta::default().memory("n");
    vec![
        ("status", bus.publish(QueueStatus::new(1, 0)).seq()),
        ("queued_x", bus.publish(queued(x)).seq()),
        ("progress_x_m", bus.publish_with(progress(x), m()).seq()),
        ("progress_y_n", bus.publish_with(progress(y), n()).seq()),
        ("completed_x", bus.publish(completed(x)).seq()),
        ("note_x_m", bus.publish_with(note(x), m()).seq()),
        ("note_y", bus.publish(note(y)).seq()),
        ("completed_y_n", bus.publish_with(completed(y), n()).seq()),
    ]
}

/// Connects with `query`, publishes the mix and a last event that passes
/// (`marker`), and returns the labels received before the marker.
async fn received(
    server: &Server,
    query: &str,
    headers: &[(&str, &str)],
    marker: ServerEvent,
    marker_meta: EventMeta,
) -> Vec<&'static str> {
    let x = Uuid::parse_str("0197c0de-5e1a-7a00-8000-0000000000a1").unwrap();
    let y = Uuid::parse_str("0197c0de-5e1a-7a00-8000-0000000000b2").unwrap();
    let mut client =
        RawSse::connect(server.addr, &format!("/api/v1/events?{query}"), headers).await;
    assert_eq!(client.status, 200, "{query}");
    client.skip_preamble().await;
    let mix = publish_mix(server, x, y);
    let end = server.bus.publish_with(marker, marker_meta).seq();
    let mut got = Vec::new();
    loop {
        let seq = client.event_frame().await.seq();
        if seq == end {
            return got;
        }
        got.push(mix.iter().find(|(_, s)| *s == seq).expect("unknown seq").0);
    }
}

const X: &str = "0197c0de-5e1a-7a00-8000-0000000000a1";

fn x() -> Uuid {
    Uuid::parse_str(X).unwrap()
}

/// `filter=<json>`, percent-encoded for a query string.
fn filter_param(json: &str) -> String {
    let mut out = String::from("filter=");
    for b in json.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test]
async fn every_filter_and_combination_selects_exactly_its_events() {
    let server = Server::start().await;
    let none = EventMeta::default;
    let cases: Vec<(String, Vec<(&str, &str)>, ServerEvent, EventMeta, Vec<&str>)> = vec![
        (
            "events=NoteUpdated,job.completed".into(),
            vec![],
            completed(x()),
            none(),
            vec!["completed_x", "note_x_m", "note_y", "completed_y_n"],
        ),
        (
            "types=job".into(),
            vec![],
            queued(x()),
            none(),
            vec![
                "queued_x",
                "progress_x_m",
                "progress_y_n",
                "completed_x",
                "completed_y_n",
            ],
        ),
        (
            "types=JOB.Progress,note".into(),
            vec![],
            note(x()),
            none(),
            vec!["progress_x_m", "progress_y_n", "note_x_m", "note_y"],
        ),
        (
            format!("entity_id={X}"),
            vec![],
            queued(x()),
            none(),
            vec!["queued_x", "progress_x_m", "completed_x", "note_x_m"],
        ),
        (
            "memory=m".into(),
            vec![],
            QueueStatus::new(0, 0).into(),
            none(),
            vec![
                "status",
                "queued_x",
                "progress_x_m",
                "completed_x",
                "note_x_m",
                "note_y",
            ],
        ),
        (
            String::new(),
            vec![("X-Fortemi-Memory", "n")],
            QueueStatus::new(0, 0).into(),
            none(),
            vec![
                "status",
                "queued_x",
                "progress_y_n",
                "completed_x",
                "note_y",
                "completed_y_n",
            ],
        ),
        (
            format!("types=job&entity_id={X}"),
            vec![],
            queued(x()),
            none(),
            vec!["queued_x", "progress_x_m", "completed_x"],
        ),
        (
            "events=JobProgress,NoteUpdated&types=job&memory=m".into(),
            vec![],
            progress(x()),
            EventMeta::default().memory("m"),
            vec!["progress_x_m"],
        ),
        // The JSON filter selects like the separate parameters, and ANDs
        // with them.
        (
            filter_param(&format!(r#"{{"types":["job"],"entity_id":"{X}"}}"#)),
            vec![],
            queued(x()),
            none(),
            vec!["queued_x", "progress_x_m", "completed_x"],
        ),
        (
            format!(
                "events=JobProgress,NoteUpdated&{}",
                filter_param(r#"{"types":"job","memory":"m"}"#)
            ),
            vec![],
            progress(x()),
            EventMeta::default().memory("m"),
            vec!["progress_x_m"],
        ),
    ];
    for (query, headers, marker, meta, expected) in cases {
        let got = received(&server, &query, &headers, marker, meta).await;
        assert_eq!(got, expected, "filter {query:?} {headers:?}");
    }
}

#[tokio::test]
async fn invalid_parameters_are_400_naming_the_value() {
    let server = Server::start().await;
    let unknown_field = filter_param(r#"{"colour":"red"}"#);
    let not_an_object = filter_param("[1]");
    let two_entities = format!(
        "entity_id={X}&{}",
        filter_param(r#"{"entity_id":"0197c0de-5e1a-7a00-8000-000000000009"}"#)
    );
    let cases = [
        (unknown_field.as_str(), "colour"),
        (not_an_object.as_str(), "filter"),
        (two_entities.as_str(), "entity_id"),
        ("events=", "events"),
        ("types=", "types"),
        ("events=NoteUpdated,Bogus", "Bogus"),
        ("types=jobs", "jobs"),
        ("entity_id=not-a-uuid", "not-a-uuid"),
        ("memory=", "memory"),
        ("format=xml", "xml"),
        ("heartbeat=4", "heartbeat"),
        ("heartbeat=301", "301"),
        ("heartbeat=soon", "soon"),
    ];
    for path in ["/api/v1/events", "/api/v1/events/history"] {
        for (query, named) in cases {
            if path.ends_with("history")
                && (query.starts_with("format") || query.starts_with("heartbeat"))
            {
                continue;
            }
            let (status, body) = get_json(&server.url(&format!("{path}?{query}")), &[]).await;
            assert_eq!(status, 400, "{path}?{query}");
            let error = body["error"].as_str().unwrap();
            assert!(!error.is_empty());
            let message = body["message"].as_str().unwrap();
            assert!(message.contains(named), "{query}: {message}");
        }
    }
    let (status, body) = get_json(&server.url("/api/v1/events"), &[("X-Fortemi-Memory", "")]).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_filter");
    // No stream was registered for any refused request.
    assert_eq!(server.registry.total(), 0);
}

fn tokens() -> Arc<StaticTokens> {
    Arc::new(
        StaticTokens::new()
            .admin("admin-secret")
            .client_with_memories("m-only", Access::Only(["m".to_owned()].into())),
    )
}

#[tokio::test]
async fn authentication_by_header_or_query_and_scoped_visibility() {
    let server = Server::with(Options {
        auth: tokens(),
        ..Options::default()
    })
    .await;
    let (status, body) = get_json(&server.url("/api/v1/events"), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = get_json(&server.url("/api/v1/events?token=wrong"), &[]).await;
    assert_eq!(status, 401);
    let (status, body) = get_json(&server.url("/api/v1/events?token=m-only&memory=n"), &[]).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));

    let mut admin = RawSse::connect(
        server.addr,
        "/api/v1/events",
        &[("Authorization", "Bearer admin-secret")],
    )
    .await;
    assert_eq!(admin.status, 200);
    admin.skip_preamble().await;
    let mut scoped = RawSse::connect(server.addr, "/api/v1/events?token=m-only", &[]).await;
    assert_eq!(scoped.status, 200);
    scoped.skip_preamble().await;

    let in_n = server
        .bus
        .publish_with(QueueStatus::new(1, 0), EventMeta::default().memory("n"));
    let in_m = server
        .bus
        .publish_with(QueueStatus::new(2, 0), EventMeta::default().memory("m"));
    let open = server.bus.publish(QueueStatus::new(3, 0));
    for ev in [&in_n, &in_m, &open] {
        assert_eq!(admin.event_frame().await.seq(), ev.seq());
    }
    assert_eq!(scoped.event_frame().await.seq(), in_m.seq());
    assert_eq!(scoped.event_frame().await.seq(), open.seq());
    // History applies the same scope.
    let (status, body) = get_json(&server.url("/api/v1/events/history?token=m-only"), &[]).await;
    assert_eq!(status, 200);
    let ids: Vec<_> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, [in_m.id().to_string(), open.id().to_string()]);
}
