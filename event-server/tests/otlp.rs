//! Traces over OTLP from the real binary (feature `otlp`), configured only
//! by the standard `OTEL_*` variables: a receiver on 127.0.0.1 decodes what
//! arrives (`opentelemetry-proto`) and finds the server's spans under the
//! `service.name` it was given. A bad `OTEL_*` value stops the server at
//! start with one line naming the variable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use futures_util::StreamExt;
use host::{Host, WAIT};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use tokio::sync::mpsc;

/// An OTLP/HTTP receiver: every `POST /v1/traces` body, decoded.
async fn receiver() -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let _ = tx.send(request);
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}"), rx)
}

/// `(service.name, span name)` of every span in `request`.
fn spans(request: &ExportTraceServiceRequest) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for scope in &resource_spans.scope_spans {
            for span in &scope.spans {
                out.push((service.clone(), span.name.clone()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_named_by_otel_variables() {
    let (collector, mut received) = receiver().await;
    let host = Host::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        ("OTEL_SERVICE_NAME", "events-otlp-test".to_owned()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
        // Export often, so the span arrives while the server runs: waiting
        // for it does not race the connection task against the shutdown.
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ])
    .await;
    // One WebSocket connection, opened and closed: its span ends.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", host.addr))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    ws.close(None).await.unwrap();
    drop(ws);
    let mut found = Vec::new();
    let arrived = tokio::time::timeout(WAIT, async {
        while let Some(request) = received.recv().await {
            found.extend(spans(&request));
            if found
                .iter()
                .any(|(service, name)| service == "events-otlp-test" && name == "ws_connection")
            {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(arrived, Ok(true)),
        "no ws_connection span of events-otlp-test among {found:?}"
    );
    let (status, _) = host.terminate().await;
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn an_unusable_otel_variable_stops_the_server_at_start() {
    for (variable, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
    ] {
        let out = tokio::time::timeout(
            host::START,
            tokio::process::Command::new(env!("CARGO_BIN_EXE_event-server"))
                .env("EVENT_SERVER_ADDR", "127.0.0.1:0")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
                .env(variable, value)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("the server did not stop")
        .unwrap();
        assert_eq!(out.status.code(), Some(2), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(variable), "{variable}: {stderr}");
    }
}

/// `(trace id, span id, parent span id, name)` of every span, in hex.
fn span_ids(request: &ExportTraceServiceRequest) -> Vec<(String, String, String, String)> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .map(|s| {
            (
                hex::encode(&s.trace_id),
                hex::encode(&s.span_id),
                hex::encode(&s.parent_span_id),
                s.name.clone(),
            )
        })
        .collect()
}

/// A webhook receiver: the `traceparent` of each delivery.
async fn webhook_receiver() -> (String, mpsc::UnboundedReceiver<Option<String>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/",
        post(move |headers: axum::http::HeaderMap| {
            let tx = tx.clone();
            async move {
                let parent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = tx.send(parent);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{addr}/"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_publish_request_through_the_fan_out_to_the_webhook_delivery() {
    let (collector, mut received) = receiver().await;
    let (hook, mut deliveries) = webhook_receiver().await;
    let dir = event_server::testing::TempDir::new();
    let host = Host::start(&[
        ("DATABASE_URL", dir.sqlite_url()),
        ("WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8".to_owned()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
        ("OTEL_SERVICE_NAME", "events-trace-test".to_owned()),
        ("OTEL_TRACES_SAMPLER", "parentbased_always_on".to_owned()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
    ])
    .await;
    let http = event_server::testing::client();
    let res = http
        .post(host.url("/api/v1/webhooks"))
        .json(&serde_json::json!({"url": hook, "events": ["JobQueued"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let (trace_id, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let res = http
        .post(host.url("/api/v1/events"))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .header("tracestate", "vendor=abc")
        .json(&serde_json::json!({"type":"JobQueued","job_id":uuid::Uuid::now_v7(),"job_type":"Embedding"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);

    // The delivery carries the trace on, from a span of its own.
    let sent = tokio::time::timeout(WAIT, deliveries.recv())
        .await
        .expect("the webhook was delivered")
        .unwrap()
        .expect("the delivery carries a traceparent");
    assert_eq!(&sent[3..35], trace_id, "{sent}");
    let attempt_span = sent[36..52].to_owned();
    assert_ne!(attempt_span, caller);
    // The envelope shows the trace id.
    let history = host.json("/api/v1/events/history?events=JobQueued").await;
    assert_eq!(history[0]["trace_id"], trace_id, "{history}");
    assert_eq!(history[0]["tracestate"], "vendor=abc", "{history}");

    // Each span is exported once it ends; wait for all three while the
    // server runs, so no span races the shutdown.
    let mut spans = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        while let Some(request) = received.recv().await {
            spans.extend(span_ids(&request));
            let ended = |name: &str| spans.iter().any(|s| s.0 == trace_id && s.3 == name);
            if ended("publish") && ended("fanout") && ended("webhook.attempt") {
                break;
            }
        }
    })
    .await;
    let (status, _) = host.terminate().await;
    assert!(status.success(), "{status}");
    let in_trace: Vec<_> = spans.iter().filter(|s| s.0 == trace_id).collect();
    let publish = in_trace
        .iter()
        .find(|s| s.3 == "publish")
        .unwrap_or_else(|| panic!("no publish span in the trace: {in_trace:?}"));
    assert_eq!(publish.2, caller, "publish is a child of the caller's span");
    let attempt = in_trace
        .iter()
        .find(|s| s.3 == "webhook.attempt")
        .unwrap_or_else(|| panic!("no webhook.attempt span in the trace: {in_trace:?}"));
    assert_eq!(attempt.2, publish.1, "the attempt is a child of publish");
    // The fan-out to the SSE and WebSocket hubs too.
    assert!(
        in_trace.iter().any(|s| s.3 == "fanout" && s.2 == publish.1),
        "no fanout span under publish: {in_trace:?}"
    );
    assert_eq!(
        attempt.1, attempt_span,
        "the delivery names the attempt span"
    );
}
