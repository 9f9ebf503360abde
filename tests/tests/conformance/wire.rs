//! docs/protocol.md §1: one publish of each of the 7 types reaches a WebSocket
//! client, an SSE `v1` client, an SSE `envelope` client and a webhook
//! receiver with the same flat JSON, byte for byte.

use serde_json::{Value, json};

use crate::harness::*;

const JOB: &str = "0197c0de-5e1a-7a00-8000-000000000001";
const NOTE: &str = "0197c0de-5e1a-7a00-8000-0000000000aa";

/// `(type, dot name, entity type, request body, the exact §1 JSON)`.
pub fn the_seven() -> Vec<(
    &'static str,
    &'static str,
    Option<&'static str>,
    Value,
    String,
)> {
    vec![
        (
            "QueueStatus",
            "queue.status",
            None,
            json!({"type":"QueueStatus","total_jobs":9,"running":2,"pending":7}),
            r#"{"type":"QueueStatus","total_jobs":9,"running":2,"pending":7}"#.to_owned(),
        ),
        (
            "JobQueued",
            "job.queued",
            Some("job"),
            json!({"type":"JobQueued","job_id":JOB,"job_type":"Embedding","note_id":NOTE}),
            format!(
                r#"{{"type":"JobQueued","job_id":"{JOB}","job_type":"Embedding","note_id":"{NOTE}"}}"#
            ),
        ),
        (
            "JobStarted",
            "job.started",
            Some("job"),
            // No note: the optional field is omitted, never null.
            json!({"type":"JobStarted","job_id":JOB,"job_type":"Embedding"}),
            format!(r#"{{"type":"JobStarted","job_id":"{JOB}","job_type":"Embedding"}}"#),
        ),
        (
            "JobProgress",
            "job.progress",
            Some("job"),
            // A producer sending only `progress` gets `progress_percent` added.
            json!({"type":"JobProgress","job_id":JOB,"progress":50,"message":"Embedding chunk 3/6"}),
            format!(
                r#"{{"type":"JobProgress","job_id":"{JOB}","progress":50,"progress_percent":50,"message":"Embedding chunk 3/6"}}"#
            ),
        ),
        (
            "JobCompleted",
            "job.completed",
            Some("job"),
            json!({"type":"JobCompleted","job_id":JOB,"job_type":"Embedding","note_id":NOTE,"duration_ms":1234}),
            format!(
                r#"{{"type":"JobCompleted","job_id":"{JOB}","job_type":"Embedding","note_id":"{NOTE}","duration_ms":1234}}"#
            ),
        ),
        (
            "JobFailed",
            "job.failed",
            Some("job"),
            json!({"type":"JobFailed","job_id":JOB,"job_type":"Embedding","error":"timed_out"}),
            format!(
                r#"{{"type":"JobFailed","job_id":"{JOB}","job_type":"Embedding","error":"timed_out"}}"#
            ),
        ),
        (
            "NoteUpdated",
            "note.updated",
            Some("note"),
            json!({"type":"NoteUpdated","note_id":NOTE,"title":"T","tags":["a"],"has_ai_content":true,"has_links":false,"operation":"updated"}),
            format!(
                r#"{{"type":"NoteUpdated","note_id":"{NOTE}","title":"T","tags":["a"],"has_ai_content":true,"has_links":false,"operation":"updated"}}"#
            ),
        ),
    ]
}

#[tokio::test]
async fn each_type_reaches_ws_sse_v1_sse_envelope_and_webhook_byte_exact() {
    let server = Server::start(&[]).await;
    let receiver = Receiver::start().await;
    let secret = "conformance-secret";
    register_webhook(
        &server,
        &json!({"url": receiver.url("/hook"), "events": [], "secret": secret}),
    )
    .await;

    let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    let mut v1 = SseClient::connect(&server.url("/api/v1/events?format=v1"), &[]).await;
    let mut env = SseClient::connect(&server.url("/api/v1/events?format=envelope"), &[]).await;
    // Every client is subscribed once it has its confirmation.
    ws.next_text_where(|v| v["type"] == "QueueStatus").await;
    v1.next_where(|f| f.event.as_deref() == Some("QueueStatus"))
        .await;
    env.next_where(|f| f.event.as_deref() == Some("queue.status"))
        .await;

    let seven = the_seven();
    let mut published = Vec::new();
    for (_, _, _, body, _) in &seven {
        published.push(server.publish(body).await.remove(0));
    }

    for ((type_name, dot, entity, _, expected), (seq, id)) in seven.iter().zip(&published) {
        // WebSocket: exactly the flat object in one text frame.
        let (text, _) = ws
            .next_text_where(|v| v["type"] != "QueueStatus" || *type_name == "QueueStatus")
            .await;
        assert_eq!(&text, expected, "WebSocket {type_name}");

        // SSE v1: id (bus seq), event (PascalCase), data (flat JSON).
        let frame = v1
            .next_where(|f| f.id.as_deref() == Some(seq.to_string().as_str()))
            .await;
        assert_eq!(
            frame.raw,
            format!("id: {seq}\nevent: {type_name}\ndata: {expected}\n\n"),
            "SSE v1 {type_name}"
        );

        // SSE envelope: event (dot name), id (event UUID), data (envelope).
        let frame = env.next_where(|f| f.id.as_deref() == Some(id)).await;
        let data = frame.data.clone().unwrap();
        assert_eq!(
            frame.raw,
            format!("event: {dot}\nid: {id}\ndata: {data}\n\n"),
            "SSE envelope {type_name}"
        );
        assert!(
            data.contains(&format!(r#""payload":{expected}"#)),
            "envelope payload of {type_name} is not the flat object: {data}"
        );
        let envelope: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(envelope["event_id"], *id);
        assert_eq!(envelope["event_type"], *dot);
        assert_eq!(envelope["payload_version"], 1);
        assert!(envelope["actor"]["kind"].is_string(), "{envelope}");
        let at = envelope["occurred_at"].as_str().unwrap();
        assert!(at.ends_with('Z'), "occurred_at {at} is not UTC");
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).unwrap();
        let uuid = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(uuid.get_version_num(), 7, "event ids are UUIDv7");
        assert_eq!(id.to_lowercase(), *id);
        match entity {
            Some(e) => {
                assert_eq!(envelope["entity_type"], *e);
                let want = if *e == "note" { NOTE } else { JOB };
                assert_eq!(envelope["entity_id"], want);
            }
            None => assert!(envelope.get("entity_type").is_none(), "{envelope}"),
        }
        for key in ["memory", "tenant_id", "correlation_id", "causation_id"] {
            assert!(
                envelope.get(key).is_none_or(|v| !v.is_null()),
                "{key} is null in {envelope}"
            );
        }
    }

    // Webhook: one signed POST per event, in publish order for this endpoint.
    let requests = receiver.wait_for(seven.len()).await;
    for ((type_name, _, _, _, expected), (_, id)) in seven.iter().zip(&published) {
        let req = requests
            .iter()
            .find(|r| {
                r.headers
                    .get("webhook-id")
                    .is_some_and(|v| v == id.as_str())
            })
            .unwrap_or_else(|| panic!("no delivery of {type_name}"));
        let body = std::str::from_utf8(&req.body).unwrap();
        assert!(
            body.contains(&format!(r#""data":{expected}"#)),
            "webhook body of {type_name} does not carry the flat object: {body}"
        );
        let v = req.json();
        assert_eq!(v["id"], *id);
        assert_eq!(v["event"], *type_name);
        time::OffsetDateTime::parse(
            v["timestamp"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(req.header("content-type").starts_with("application/json"));
        assert!(req.header("user-agent").starts_with("matric-events/"));
        assert_eq!(req.header("x-matric-event"), *type_name);
        uuid::Uuid::parse_str(req.header("x-matric-delivery")).unwrap();
        let sig = req.header("x-matric-signature");
        assert_eq!(
            sig,
            event_webhook::signing::matric_signature(secret, &req.body)
        );
        assert!(sig.starts_with("sha256=") && sig[7..].len() == 64);
        assert!(req.header("webhook-signature").starts_with("v1,"));
        req.header("webhook-timestamp").parse::<i64>().unwrap();
        event_webhook::verify(secret, &req.headers, &req.body).unwrap();
    }
    assert_eq!(requests.len(), seven.len(), "one delivery per event");
    assert!(
        requests.iter().all(|r| r.status == 200),
        "no retry was scripted"
    );
}

#[tokio::test]
async fn progress_percent_mirrors_progress_whichever_a_producer_sends() {
    let server = Server::start(&[]).await;
    let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
    ws.next_text().await;
    for body in [
        json!({"type":"JobProgress","job_id":JOB,"progress_percent":30}),
        json!({"type":"JobProgress","job_id":JOB,"progress":30,"progress_percent":30}),
    ] {
        server.publish(&body).await;
        let (text, _) = ws.next_text_where(|v| v["type"] == "JobProgress").await;
        assert_eq!(
            text,
            format!(
                r#"{{"type":"JobProgress","job_id":"{JOB}","progress":30,"progress_percent":30}}"#
            )
        );
    }
    // Disagreeing values are refused rather than guessed.
    let res = client()
        .post(server.url("/api/v1/events"))
        .json(&json!({"type":"JobProgress","job_id":JOB,"progress":30,"progress_percent":31}))
        .send()
        .await
        .unwrap();
    assert_json_error(res, 400).await;
}
