//! The tracing mirror, captured as JSON lines: fields and levels of each of
//! the 7 types, filtering, redaction, and spans.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NOTE_TITLE, SECRET_URL, TAG, TOKEN, USER_ID, USER_NAME, seven_events};
use event_core::{Actor, EventBus, EventMeta, JobFailed, QueueStatus, SinkRunner, Transport, Uuid};
use event_telemetry::spans::{
    connection_closed, connection_opened, connection_span, webhook_attempt_span,
};
use event_telemetry::{
    EVENTS_TARGET, LogCapture, LogFormat, PrometheusMetrics, TelemetryConfig, TelemetryError,
    TelemetrySink, subscriber,
};
use serde_json::{Value, json};

fn json_config(filter: &str) -> TelemetryConfig {
    TelemetryConfig {
        format: LogFormat::Json,
        filter: Some(filter.to_owned()),
        ..TelemetryConfig::default()
    }
}

fn sink() -> TelemetrySink {
    let metrics = PrometheusMetrics::new("log-test").expect("metrics");
    TelemetrySink::with_meter(&metrics.meter())
}

/// Publishes `events` with `meta` through a real bus and runner with the
/// telemetry sink, and returns when the sink has handled all of them.
async fn mirror(events: Vec<event_core::ServerEvent>, meta: EventMeta) -> Vec<u64> {
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(Arc::new(sink()));
    let seqs = events
        .into_iter()
        .map(|e| bus.publish_with(e, meta.clone()).seq())
        .collect();
    let report = runner.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.finished, vec!["telemetry".to_owned()]);
    seqs
}

fn event_lines(capture: &LogCapture) -> Vec<Value> {
    capture
        .json_lines()
        .into_iter()
        .filter(|l| l["target"] == EVENTS_TARGET)
        .collect()
}

fn personal_meta(correlation: Uuid) -> EventMeta {
    EventMeta::default()
        .actor(Actor {
            kind: "user".into(),
            id: Some(USER_ID.into()),
            name: Some(USER_NAME.into()),
        })
        .memory("memory-of-alice")
        .correlation(correlation)
}

fn assert_no_personal_data(text: &str) {
    for secret in [
        NOTE_TITLE,
        TAG,
        USER_ID,
        USER_NAME,
        TOKEN,
        SECRET_URL,
        "memory-of-alice",
    ] {
        assert!(
            !text.contains(secret),
            "{secret:?} leaked into logs:\n{text}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_of_the_seven_types_becomes_one_json_line_with_its_fields_and_level() {
    let capture = LogCapture::new();
    let _logging = tracing::subscriber::set_default(
        subscriber(&json_config("debug"), capture.clone()).expect("subscriber"),
    );
    let (job, note, corr) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let seqs = mirror(seven_events(job, note), personal_meta(corr)).await;

    let lines = event_lines(&capture);
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let (job, note, corr) = (job.to_string(), note.to_string(), corr.to_string());
    let expected = [
        (
            "DEBUG",
            "Queue status",
            json!({"event.type": "QueueStatus", "event.queue_pending": 7, "event.queue_running": 2,
                   "event.queue_total": 9, "event.queue_depth": 7}),
        ),
        (
            "INFO",
            "Job queued",
            json!({"event.type": "JobQueued", "event.job_id": job, "event.job_type": "Embedding",
                   "event.note_id": note}),
        ),
        (
            "INFO",
            "Job started",
            json!({"event.type": "JobStarted", "event.job_id": job, "event.job_type": "Embedding",
                   "event.note_id": note}),
        ),
        (
            "DEBUG",
            "Job progress",
            json!({"event.type": "JobProgress", "event.job_id": job, "event.note_id": note,
                   "event.progress": 50}),
        ),
        (
            "INFO",
            "Job completed successfully",
            json!({"event.type": "JobCompleted", "event.job_id": job, "event.job_type": "Embedding",
                   "event.note_id": note, "event.duration_ms": 1234}),
        ),
        (
            "WARN",
            "Job failed",
            json!({"event.type": "JobFailed", "event.job_id": job, "event.job_type": "Embedding",
                   "event.error": "timed_out"}),
        ),
        (
            "INFO",
            "Note updated",
            json!({"event.type": "NoteUpdated", "event.note_id": note, "event.operation": "updated",
                   "event.tag_count": 2, "event.has_ai_content": true, "event.has_links": false}),
        ),
    ];
    for ((line, (level, message, fields)), seq) in lines.iter().zip(expected).zip(seqs) {
        assert_eq!(line["level"], level, "{line}");
        assert_eq!(line["message"], message, "{line}");
        let mut want = fields.as_object().expect("object").clone();
        want.insert("event.seq".into(), json!(seq));
        want.insert("event.correlation_id".into(), json!(corr));
        let mut got = line["fields"].as_object().expect("fields").clone();
        let id = got.remove("event.id").expect("event.id");
        assert!(Uuid::parse_str(id.as_str().expect("id string")).is_ok());
        assert_eq!(got, want, "{line}");
        assert!(
            time::OffsetDateTime::parse(
                line["timestamp"].as_str().expect("timestamp"),
                &time::format_description::well_known::Rfc3339
            )
            .is_ok(),
            "{line}"
        );
    }
    assert_no_personal_data(&capture.contents());
}

#[tokio::test(flavor = "current_thread")]
async fn info_filter_drops_progress_and_queue_status() {
    let capture = LogCapture::new();
    let _logging = tracing::subscriber::set_default(
        subscriber(&json_config("info"), capture.clone()).expect("subscriber"),
    );
    mirror(
        seven_events(Uuid::now_v7(), Uuid::now_v7()),
        EventMeta::default(),
    )
    .await;
    let types: Vec<String> = event_lines(&capture)
        .iter()
        .map(|l| l["fields"]["event.type"].as_str().expect("type").to_owned())
        .collect();
    assert_eq!(
        types,
        [
            "JobQueued",
            "JobStarted",
            "JobCompleted",
            "JobFailed",
            "NoteUpdated"
        ]
    );
    // Without a correlation id the field is left out, not null.
    for line in event_lines(&capture) {
        assert!(
            line["fields"].get("event.correlation_id").is_none(),
            "{line}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn raw_failure_text_is_redacted() {
    let capture = LogCapture::new();
    let _logging = tracing::subscriber::set_default(
        subscriber(&json_config("info"), capture.clone()).expect("subscriber"),
    );
    let failed = JobFailed {
        job_id: Uuid::now_v7(),
        job_type: "Webhook".into(),
        note_id: None,
        error: format!("POST {SECRET_URL}?token={TOKEN} failed: 401"),
    };
    mirror(vec![failed.into()], EventMeta::default()).await;
    let lines = event_lines(&capture);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["level"], "WARN");
    assert_eq!(lines[0]["fields"]["event.error"], "redacted");
    assert_no_personal_data(&capture.contents());
}

#[tokio::test(flavor = "current_thread")]
async fn text_format_carries_the_same_fields() {
    let capture = LogCapture::new();
    let config = TelemetryConfig {
        format: LogFormat::Text,
        filter: Some("debug".into()),
        ..TelemetryConfig::default()
    };
    let _logging =
        tracing::subscriber::set_default(subscriber(&config, capture.clone()).expect("subscriber"));
    mirror(
        seven_events(Uuid::now_v7(), Uuid::now_v7()),
        personal_meta(Uuid::now_v7()),
    )
    .await;
    let text = capture.contents();
    let completed = text
        .lines()
        .find(|l| l.contains("Job completed successfully"))
        .expect("JobCompleted line");
    assert!(completed.contains(" INFO "), "{completed}");
    assert!(completed.contains("matric::events"), "{completed}");
    assert!(completed.contains("event.duration_ms=1234"), "{completed}");
    assert!(
        text.lines()
            .any(|l| l.contains(" WARN ") && l.contains("Job failed"))
    );
    assert_no_personal_data(&text);
}

#[test]
fn an_invalid_filter_is_a_clear_error() {
    let err = subscriber(&json_config("info,=[bad"), LogCapture::new())
        .err()
        .expect("error");
    assert!(
        matches!(err, TelemetryError::InvalidFilter { ref directive, .. } if directive == "info,=[bad"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn webhook_attempt_and_connection_spans_carry_seq_and_correlation() {
    let capture = LogCapture::new();
    let _logging = tracing::subscriber::set_default(
        subscriber(&json_config("info"), capture.clone()).expect("subscriber"),
    );
    let corr = Uuid::now_v7();
    let bus = EventBus::default();
    let event = bus.publish_with(
        QueueStatus::new(1, 0),
        EventMeta::default().correlation(corr),
    );

    {
        let span = webhook_attempt_span(&event, "ep_42", 2);
        let _entered = span.enter();
        span.record("webhook.status", 503);
        span.record("webhook.outcome", "retry");
        tracing::info!(target: "matric::webhooks", "attempt finished");
    }
    {
        let span = connection_span(Transport::WebSocket, 77);
        let _entered = span.enter();
        connection_opened(Transport::WebSocket, 77);
        connection_closed(Transport::WebSocket, 77, "client_close", 5);
    }

    let lines = capture.json_lines();
    let attempt = lines
        .iter()
        .find(|l| l["message"] == "attempt finished")
        .expect("attempt line");
    let span = &attempt["spans"][0];
    assert_eq!(span["name"], "webhook.attempt");
    assert_eq!(span["event.seq"], json!(event.seq()));
    assert_eq!(span["event.correlation_id"], json!(corr.to_string()));
    assert_eq!(span["event.type"], "QueueStatus");
    assert_eq!(span["webhook.endpoint_id"], "ep_42");
    assert_eq!(span["webhook.attempt"], 2);

    let opened = lines
        .iter()
        .find(|l| l["fields"]["event.type"] == "ConnectionOpened")
        .expect("opened");
    assert_eq!(opened["fields"]["connection.id"], 77);
    assert_eq!(opened["spans"][0]["connection.transport"], "ws");
    let closed = lines
        .iter()
        .find(|l| l["fields"]["event.type"] == "ConnectionClosed")
        .expect("closed");
    assert_eq!(closed["fields"]["connection.reason"], "client_close");
    assert_eq!(closed["fields"]["connection.events_sent"], 5);
}

#[test]
fn json_lines_stay_valid_with_quotes_newlines_and_non_ascii() {
    let capture = LogCapture::new();
    let _logging = tracing::subscriber::set_default(
        subscriber(&json_config("info"), capture.clone()).expect("subscriber"),
    );
    let odd = "quote\" back\\ nl\n tab\t bell\u{7} é 🦀";
    tracing::info!(target: "matric::test", odd, n = -3, f = 1.5, ok = true, "message {odd:?} \"x\"\n2");
    let lines = capture.json_lines();
    assert_eq!(lines.len(), 1, "{}", capture.contents());
    let line = &lines[0];
    assert_eq!(line["fields"]["odd"], odd);
    assert_eq!(line["fields"]["n"], -3);
    assert_eq!(line["fields"]["f"], 1.5);
    assert_eq!(line["fields"]["ok"], true);
    assert_eq!(line["message"], format!("message {odd:?} \"x\"\n2"));
    assert_eq!(capture.contents().lines().count(), 1, "one physical line");
}
