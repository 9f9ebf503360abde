//! UC-005 and the cross-crate telemetry checks (issue 7, "Tests"): scripted
//! WebSocket, SSE and webhook traffic against a real server, then exact
//! values on `/metrics` and the captured JSON logs, including a privacy
//! check (no title, tag, secret, token, URL or free text in the logs).
//!
//! Its own binary, with one test: the meter provider and the log subscriber
//! are process-global, so exact counts need a process of their own.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "conformance/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::time::Duration;

use event_telemetry::{LogCapture, LogFormat, TelemetryConfig};
use harness::*;
use serde_json::{Value, json};

const ADMIN: &str = "admin-SECRET-token-1";
const CLIENT: &str = "client-SECRET-token-2";
const HOOK_SECRET: &str = "hook-SECRET-value-3";
const HOOK_PATH: &str = "/private-path-SECRET-4";
const TITLE: &str = "Title-SECRET-5";
const TAG: &str = "tag-SECRET-6";
const MESSAGE: &str = "message-SECRET-7";
const USER: &str = "user-SECRET-8";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uc005_metrics_and_structured_logs_after_scripted_traffic() {
    let logs = LogCapture::new();
    let config = TelemetryConfig {
        format: LogFormat::Json,
        filter: Some("debug,matric::events=debug,sqlx=warn,hyper=info,reqwest=info,h2=info,tower=info,axum=info".into()),
        ..TelemetryConfig::default()
    };
    tracing::subscriber::set_global_default(
        event_telemetry::subscriber(&config, logs.clone()).unwrap(),
    )
    .unwrap();

    let server = Server::start(&[
        "--auth-admin-token",
        ADMIN,
        "--auth-client-tokens",
        CLIENT,
        "--webhook-retry-schedule",
        "100ms,200ms",
    ])
    .await;
    let http = client();
    let (_, before) = scrape(&server).await;
    // The gauges exist from the start, at 0.
    assert_eq!(before.sum("matric_ws_connections_active", &[]), Some(0.0));
    assert_eq!(before.sum("matric_sse_connections_active", &[]), Some(0.0));
    // So do the labelled counters whose label sets are known.
    for status in ["success", "retry", "failed"] {
        let series = before.find("matric_webhook_deliveries_total", &[("status", status)]);
        assert_eq!(series, Some(0.0), "webhook deliveries {{status={status}}}");
    }
    for consumer in ["ws", "sse", "webhook", "telemetry", "job_bridge"] {
        let series = before.find("matric_events_dropped_total", &[("consumer", consumer)]);
        assert_eq!(series, Some(0.0), "events dropped {{consumer={consumer}}}");
    }
    assert_eq!(before.find("matric_webhook_queue_depth", &[]), Some(0.0));

    // A webhook on JobCompleted whose endpoint fails once.
    let receiver = Receiver::start().await;
    receiver.script(&[500]);
    let res = http
        .post(server.url("/api/v1/webhooks"))
        .bearer_auth(ADMIN)
        .json(&json!({"url": receiver.url(HOOK_PATH), "events": ["JobCompleted"], "secret": HOOK_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);

    // One WebSocket and one SSE client (tokens in the query, where an access
    // log would most likely leak them).
    let mut ws = WsClient::connect(&server.ws_url(&format!("/api/v1/ws?token={CLIENT}"))).await;
    ws.next_text().await;
    let mut sse =
        SseClient::connect(&server.url(&format!("/api/v1/events?token={CLIENT}")), &[]).await;
    sse.next_where(Frame::is_event).await;
    let (_, during) = scrape(&server).await;
    assert_eq!(during.sum("matric_ws_connections_active", &[]), Some(1.0));
    assert_eq!(during.sum("matric_sse_connections_active", &[]), Some(1.0));

    // One note through the API, then one event of each job type and a second
    // note change through the publish API.
    let res = http
        .post(server.url("/api/v1/notes"))
        .bearer_auth(ADMIN)
        .json(&json!({"title": TITLE, "content": "x", "tags": [TAG]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let note_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let job = uuid::Uuid::now_v7().to_string();
    let res = http
        .post(server.url("/api/v1/events"))
        .bearer_auth(ADMIN)
        .json(&json!([
            {"type":"JobQueued","job_id":job,"job_type":"Embedding","note_id":note_id},
            {"type":"JobStarted","job_id":job,"job_type":"Embedding","note_id":note_id},
            {"type":"JobProgress","job_id":job,"note_id":note_id,"progress":40,"message":MESSAGE},
            {"type":"JobCompleted","job_id":job,"job_type":"Embedding","note_id":note_id,"duration_ms":1234},
            {"type":"JobFailed","job_id":uuid::Uuid::now_v7(),"job_type":"Linking","error":"timed_out"},
            {"type":"NoteUpdated","note_id":note_id,"title":TITLE,"tags":[TAG],"has_ai_content":true,"has_links":false,"operation":"updated","user_id":USER},
            {"type":"QueueStatus","total_jobs":3,"running":1,"pending":2}
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let last_seq = res.json::<Value>().await.unwrap()["events"][6]["seq"]
        .as_u64()
        .unwrap();

    // Both clients get everything.
    let want = [
        "NoteUpdated",
        "JobQueued",
        "JobStarted",
        "JobProgress",
        "JobCompleted",
        "JobFailed",
        "NoteUpdated",
    ];
    let mut got = Vec::new();
    within("the scripted events on the WebSocket", async {
        while got.len() < want.len() {
            let (text, _) = ws.next_text().await;
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] != "QueueStatus" {
                got.push(v["type"].as_str().unwrap().to_owned());
            }
        }
    })
    .await;
    assert_eq!(got, want);
    ws.next_text_where(|v| {
        v == &json!({"type":"QueueStatus","total_jobs":3,"running":1,"pending":2})
    })
    .await;
    sse.next_where(|f| f.id.as_deref() == Some(last_seq.to_string().as_str()))
        .await;
    // The webhook: one failure, then the retry succeeds.
    let hooks = receiver.wait_for(2).await;
    assert_eq!(hooks[0].status, 500);
    assert_eq!(hooks[1].status, 200);
    event_webhook::verify(HOOK_SECRET, &hooks[1].headers, &hooks[1].body).unwrap();

    // Exact counters (metrics are available as soon as scraped).
    let (text, m) = tokio::time::timeout(WAIT, async {
        loop {
            let (text, m) = scrape(&server).await;
            let ok = m.sum("matric_webhook_deliveries_total", &[("status", "success")])
                == Some(1.0)
                && m.sum(
                    "matric_events_published_total",
                    &[("event_type", "NoteUpdated")],
                ) == Some(2.0);
            if ok {
                return (text, m);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("metrics did not reach the expected values");
    for (t, n) in [
        ("JobQueued", 1.0),
        ("JobStarted", 1.0),
        ("JobProgress", 1.0),
        ("JobCompleted", 1.0),
        ("JobFailed", 1.0),
        ("NoteUpdated", 2.0),
    ] {
        for name in [
            "matric_events_published_total",
            "matric_ws_events_sent_total",
            "matric_sse_events_sent_total",
        ] {
            assert_eq!(
                m.sum(name, &[("event_type", t)]),
                Some(n),
                "{name}{{{t}}}\n{text}"
            );
        }
    }
    let published_qs = m
        .sum(
            "matric_events_published_total",
            &[("event_type", "QueueStatus")],
        )
        .unwrap();
    assert!(published_qs >= 1.0);
    assert_eq!(
        m.sum("matric_webhook_deliveries_total", &[("status", "retry")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m.sum("matric_webhook_deliveries_total", &[("status", "success")]),
        Some(1.0)
    );
    assert!(
        m.sum("matric_webhook_deliveries_total", &[("status", "failed")])
            .unwrap_or(0.0)
            == 0.0,
        "{text}"
    );
    // Latency: one observation per write to a client socket, for the oldest
    // event in it. How the events above were split into writes depends on
    // timing, so: at least one write, at most one per event sent (the exact
    // per-write count is tested in event-ws and event-sse, where batching is
    // deterministic).
    for (transport, sent_name) in [
        ("ws", "matric_ws_events_sent_total"),
        ("sse", "matric_sse_events_sent_total"),
    ] {
        let count = m
            .sum("matric_event_latency_ms_count", &[("transport", transport)])
            .unwrap_or_else(|| panic!("no latency histogram for {transport}\n{text}"));
        let sent = m.sum(sent_name, &[]).unwrap();
        assert!(
            count >= 1.0 && count <= sent,
            "{transport}: {count} observations, {sent} events sent\n{text}"
        );
    }
    let webhook_latency = m
        .sum("matric_event_latency_ms_count", &[("transport", "webhook")])
        .unwrap_or_else(|| panic!("no webhook latency\n{text}"));
    assert!(webhook_latency >= 1.0, "{text}");
    assert!(
        m.sum("matric_events_dropped_total", &[]).unwrap_or(0.0) == 0.0,
        "nothing was dropped\n{text}"
    );

    // Health: component status and connection counts.
    let health: Value = http
        .get(server.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let health_text = health.to_string();
    assert!(health_text.contains("database"), "{health}");
    assert_eq!(health["connections"]["ws"], 1, "{health}");
    assert_eq!(health["connections"]["sse"], 1, "{health}");
    assert_eq!(health["connections"]["total"], 2, "{health}");

    // Disconnect: the gauges return to 0.
    drop(ws);
    drop(sse);
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, m) = scrape(&server).await;
            if m.sum("matric_ws_connections_active", &[]) == Some(0.0)
                && m.sum("matric_sse_connections_active", &[]) == Some(0.0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("connection gauges did not return to 0 after disconnect");

    // Structured logs: one JSON line per event, target matric::events, with
    // the fields of its type.
    let lines = logs.json_lines();
    let event_line = |t: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|l| l["fields"]["event.type"] == t)
            .cloned()
            .collect()
    };
    let one = |t: &str| -> Value {
        let found: Vec<Value> = event_line(t)
            .into_iter()
            .filter(|l| {
                l["fields"]["event.job_id"]
                    .as_str()
                    .is_none_or(|j| j == job || t == "JobFailed")
            })
            .collect();
        assert!(!found.is_empty(), "no log line for {t}");
        found[0].clone()
    };
    for (t, level, fields) in [
        (
            "JobQueued",
            "INFO",
            &["event.job_id", "event.job_type", "event.note_id"][..],
        ),
        (
            "JobStarted",
            "INFO",
            &["event.job_id", "event.job_type", "event.note_id"],
        ),
        (
            "JobProgress",
            "DEBUG",
            &["event.job_id", "event.note_id", "event.progress"],
        ),
        (
            "JobCompleted",
            "INFO",
            &[
                "event.job_id",
                "event.job_type",
                "event.note_id",
                "event.duration_ms",
            ],
        ),
        (
            "JobFailed",
            "WARN",
            &["event.job_id", "event.job_type", "event.error"],
        ),
        ("NoteUpdated", "INFO", &["event.note_id", "event.operation"]),
        (
            "QueueStatus",
            "DEBUG",
            &["event.queue_pending", "event.queue_running"],
        ),
    ] {
        let line = one(t);
        assert_eq!(line["level"], level, "{line}");
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(
            line["fields"]["message"].is_string() || line["message"].is_string(),
            "{line}"
        );
        for f in fields.iter().chain(&["event.seq"]) {
            assert!(!line["fields"][*f].is_null(), "{t}: no {f} in {line}");
        }
    }
    assert_eq!(one("JobCompleted")["fields"]["event.duration_ms"], 1234);
    assert_eq!(one("JobFailed")["fields"]["event.error"], "timed_out");
    assert_eq!(one("JobProgress")["fields"]["event.progress"], 40);
    assert_eq!(event_line("NoteUpdated").len(), 2);

    // Privacy: nothing personal or secret anywhere in the logs.
    let all = logs.contents();
    let url = receiver.url(HOOK_PATH);
    for secret in [
        ADMIN,
        CLIENT,
        HOOK_SECRET,
        HOOK_PATH,
        TITLE,
        TAG,
        MESSAGE,
        USER,
        url.as_str(),
    ] {
        assert!(!all.contains(secret), "{secret:?} appears in the logs");
    }
}
