//! Exact bytes on the wire: every type in both formats, first frames,
//! headers, keep-alive.

use std::time::Duration;

use event_core::event::format_rfc3339_millis;
use event_core::{
    Actor, EventMeta, JobCompleted, JobFailed, JobProgress, JobQueued, JobStarted, NoteOperation,
    NoteUpdated, QueueStatus, ServerEvent, Uuid,
};
use event_sse::SseConfig;

use crate::common::{Options, RawSse, Server};

const JOB: &str = "0197c0de-5e1a-7a00-8000-000000000001";
const NOTE: &str = "0197c0de-5e1a-7a00-8000-0000000000aa";

fn uuid(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

/// The seven events with the flat JSON docs/protocol.md §1 prescribes for each,
/// written out by hand, and their entity for the envelope.
fn seven() -> Vec<(
    ServerEvent,
    &'static str,
    &'static str,
    String,
    Option<(&'static str, &'static str)>,
)> {
    vec![
        (
            QueueStatus::new(7, 2).into(),
            "QueueStatus",
            "queue.status",
            r#"{"type":"QueueStatus","total_jobs":9,"running":2,"pending":7}"#.to_owned(),
            None,
        ),
        (
            JobQueued {
                job_id: uuid(JOB),
                job_type: "Embedding".into(),
                note_id: Some(uuid(NOTE)),
            }
            .into(),
            "JobQueued",
            "job.queued",
            format!(
                r#"{{"type":"JobQueued","job_id":"{JOB}","job_type":"Embedding","note_id":"{NOTE}"}}"#
            ),
            Some(("job", JOB)),
        ),
        (
            JobStarted {
                job_id: uuid(JOB),
                job_type: "Embedding".into(),
                note_id: None,
            }
            .into(),
            "JobStarted",
            "job.started",
            format!(r#"{{"type":"JobStarted","job_id":"{JOB}","job_type":"Embedding"}}"#),
            Some(("job", JOB)),
        ),
        (
            JobProgress {
                job_id: uuid(JOB),
                note_id: None,
                progress: 50,
                message: Some("Embedding chunk 3/6".into()),
            }
            .into(),
            "JobProgress",
            "job.progress",
            format!(
                r#"{{"type":"JobProgress","job_id":"{JOB}","progress":50,"progress_percent":50,"message":"Embedding chunk 3/6"}}"#
            ),
            Some(("job", JOB)),
        ),
        (
            JobCompleted {
                job_id: uuid(JOB),
                job_type: "Embedding".into(),
                note_id: None,
                duration_ms: Some(1234),
            }
            .into(),
            "JobCompleted",
            "job.completed",
            format!(
                r#"{{"type":"JobCompleted","job_id":"{JOB}","job_type":"Embedding","duration_ms":1234}}"#
            ),
            Some(("job", JOB)),
        ),
        (
            JobFailed {
                job_id: uuid(JOB),
                job_type: "Embedding".into(),
                note_id: None,
                error: "timed_out".into(),
            }
            .into(),
            "JobFailed",
            "job.failed",
            format!(
                r#"{{"type":"JobFailed","job_id":"{JOB}","job_type":"Embedding","error":"timed_out"}}"#
            ),
            Some(("job", JOB)),
        ),
        (
            NoteUpdated {
                note_id: uuid(NOTE),
                title: Some("T".into()),
                tags: vec!["a".into()],
                has_ai_content: true,
                has_links: false,
                operation: Some(NoteOperation::Updated),
                user_id: None,
            }
            .into(),
            "NoteUpdated",
            "note.updated",
            format!(
                r#"{{"type":"NoteUpdated","note_id":"{NOTE}","title":"T","tags":["a"],"has_ai_content":true,"has_links":false,"operation":"updated"}}"#
            ),
            Some(("note", NOTE)),
        ),
    ]
}

#[tokio::test]
async fn v1_frames_are_byte_exact_for_all_seven_types() {
    let server = Server::start().await;
    let mut client = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    client.skip_preamble().await;
    for (payload, type_name, _, json, _) in seven() {
        let ev = server.bus.publish(payload);
        let frame = client.event_frame().await;
        let expected = format!("id: {}\nevent: {type_name}\ndata: {json}\n\n", ev.seq());
        assert_eq!(frame.raw, expected);
    }
}

#[tokio::test]
async fn envelope_frames_are_byte_exact_for_all_seven_types() {
    let server = Server::start().await;
    let mut client = RawSse::connect(server.addr, "/api/v1/events?format=envelope", &[]).await;
    client.skip_preamble().await;
    for (i, (payload, _, dot, json, entity)) in seven().into_iter().enumerate() {
        // Every other event carries full metadata, to cover the optional fields.
        let (meta, meta_json) = if i % 2 == 1 {
            let corr = Uuid::now_v7();
            (
                EventMeta::default()
                    .actor(Actor::user("u1"))
                    .memory("m1")
                    .tenant("t1")
                    .correlation(corr),
                (
                    r#"{"kind":"user","id":"u1"},"memory":"m1","tenant_id":"t1""#.to_owned(),
                    format!(r#","correlation_id":"{corr}""#),
                ),
            )
        } else {
            (
                EventMeta::default(),
                (r#"{"kind":"system"}"#.to_owned(), String::new()),
            )
        };
        let ev = server.bus.publish_with(payload, meta);
        let frame = client.event_frame().await;
        let entity_json = entity
            .map(|(t, id)| format!(r#","entity_type":"{t}","entity_id":"{id}""#))
            .unwrap_or_default();
        let expected_data = format!(
            r#"{{"event_id":"{id}","event_type":"{dot}","occurred_at":"{at}","actor":{actor}{entity_json}{corr},"payload_version":1,"payload":{json}}}"#,
            id = ev.id(),
            at = format_rfc3339_millis(ev.occurred_at()),
            actor = meta_json.0,
            corr = meta_json.1,
        );
        let expected = format!("event: {dot}\nid: {}\ndata: {expected_data}\n\n", ev.id());
        assert_eq!(frame.raw, expected);
    }
}

#[tokio::test]
async fn first_frames_are_retry_then_queue_status_with_sse_headers() {
    let server = Server::start().await;
    server.bus.publish(QueueStatus::new(3, 2));
    for path in ["/api/v1/events", "/api/v1/events/stream"] {
        let mut client = RawSse::connect(server.addr, path, &[]).await;
        assert_eq!(client.status, 200);
        assert_eq!(
            client.header("content-type").as_deref(),
            Some("text/event-stream")
        );
        assert_eq!(client.header("cache-control").as_deref(), Some("no-cache"));
        assert_eq!(client.header("x-accel-buffering").as_deref(), Some("no"));
        assert_eq!(client.frame().await.raw, "retry: 3000\n\n");
        assert_eq!(
            client.frame().await.raw,
            "event: QueueStatus\ndata: {\"type\":\"QueueStatus\",\"total_jobs\":5,\"running\":2,\"pending\":3}\n\n"
        );
    }
    // Envelope: the same confirmation as an envelope, still without `id:`.
    let mut client = RawSse::connect(server.addr, "/api/v1/events?format=envelope", &[]).await;
    assert_eq!(client.frame().await.raw, "retry: 3000\n\n");
    let status = client.frame().await;
    assert_eq!(status.event.as_deref(), Some("queue.status"));
    assert_eq!(status.id, None);
    let json = status.json();
    assert_eq!(json["event_type"], "queue.status");
    assert_eq!(json["payload_version"], 1);
    assert_eq!(
        json["payload"],
        serde_json::json!({"type":"QueueStatus","total_jobs":5,"running":2,"pending":3})
    );
}

#[tokio::test]
async fn confirmation_is_an_empty_queue_when_nothing_was_published() {
    let server = Server::start().await;
    let mut client = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    client.frame().await;
    assert_eq!(
        client.frame().await.data,
        r#"{"type":"QueueStatus","total_jobs":0,"running":0,"pending":0}"#
    );
}

#[tokio::test]
async fn idle_stream_gets_keepalive_comments() {
    let server = Server::with(Options {
        config: SseConfig {
            heartbeat: Duration::from_millis(200),
            ..SseConfig::default()
        },
        ..Options::default()
    })
    .await;
    let mut client = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    client.skip_preamble().await;
    assert_eq!(client.frame().await.raw, ": keepalive\n\n");
    assert_eq!(client.frame().await.raw, ": keepalive\n\n");
    // Events still flow between keep-alives.
    let ev = server.bus.publish(QueueStatus::new(1, 0));
    assert_eq!(client.event_frame().await.seq(), ev.seq());
}

/// In virtual time (the server runs on the test's runtime, its keep-alive is
/// a tokio timer): the keep-alive comes exactly `heartbeat` after the last
/// chunk, both bounds checked, without depending on this machine's load.
#[tokio::test(start_paused = true)]
async fn heartbeat_parameter_sets_the_keepalive_interval() {
    let server = Server::start().await;
    // The default is 15 s; the client asks for the minimum, 5 s.
    let mut client = RawSse::connect(server.addr, "/api/v1/events?heartbeat=5", &[]).await;
    client.skip_preamble().await;
    // The timer started with the preamble's last chunk, at or before now.
    let started = tokio::time::Instant::now();
    assert_eq!(client.frame().await.raw, ": keepalive\n\n");
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_secs(4) && waited <= Duration::from_secs(5),
        "keep-alive after {waited:?}, not 5 s"
    );
    // And every 5 s after that.
    let started = tokio::time::Instant::now();
    assert_eq!(client.frame().await.raw, ": keepalive\n\n");
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}

#[tokio::test]
async fn a_burst_is_coalesced_into_few_chunks() {
    let server = Server::start().await;
    let mut client = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    client.skip_preamble().await;
    let chunks_before = client.chunks;
    // Published in one batch while the connection sleeps on its outbox:
    // the hub pushes all 200 before the writer wakes, so the writer drains
    // them in far fewer writes than events.
    let events: Vec<_> = (0..200)
        .map(|i| server.bus.publish(QueueStatus::new(i, 0)))
        .collect();
    for ev in &events {
        assert_eq!(client.event_frame().await.seq(), ev.seq());
    }
    let chunks = client.chunks - chunks_before;
    assert!(chunks <= 10, "{chunks} chunks for 200 events");
}
