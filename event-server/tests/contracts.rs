//! Issue #20, contracts: the host serves `GET /api/v1/asyncapi.json`
//! (AsyncAPI 3.0) and `GET /api/v1/openapi.json` (OpenAPI 3.1), without
//! credentials, and what it really sends matches them.
//!
//! The drift check: events of every type (with and without their optional
//! fields) are published through `POST /api/v1/events` on a live host and
//! received over WebSocket, SSE in both formats and a webhook; every message
//! received (events, `subscribed`, `pong`, `resync_required`, the webhook
//! body and headers) is validated against the JSON Schema of its message in
//! the *served* AsyncAPI document, strictly (`unevaluatedProperties: false`
//! at the top: a field the document does not name fails). REST answers
//! (publish, connections, history, webhooks, deliveries, notes, the stats
//! and a stats stream's frame, errors) are
//! validated against the served OpenAPI document, and every operation it
//! lists is routed.
//!
//! The external validators (`@asyncapi/parser`, `@redocly/cli`) run in
//! `cargo xtask contracts`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use axum::http::HeaderMap;
use event_server::testing::{Server, WAIT, client};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// The served documents.
struct Docs {
    asyncapi: Value,
    openapi: Value,
}

async fn fetch_docs(server: &Server) -> Docs {
    let mut docs = Vec::new();
    for path in ["/api/v1/asyncapi.json", "/api/v1/openapi.json"] {
        let res = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        assert_eq!(
            res.headers()["content-type"],
            "application/json",
            "GET {path}"
        );
        let doc: Value = res.json().await.expect("a JSON document");
        docs.push(doc);
    }
    let openapi = docs.pop().unwrap();
    let asyncapi = docs.pop().unwrap();
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    let version = openapi["openapi"].as_str().expect("an `openapi` version");
    assert!(version.starts_with("3.1."), "openapi {version}");
    Docs { asyncapi, openapi }
}

/// Escapes one JSON pointer segment.
fn segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// A validator for the schema at `pointer` of `doc`, its `#/components/…`
/// references resolved within `doc`. `strict`: properties the schema does
/// not name fail (`unevaluatedProperties: false`, at the top level).
fn validator(doc: &Value, pointer: &str, strict: bool) -> jsonschema::Validator {
    assert!(
        doc.pointer(pointer).is_some(),
        "the document has no schema at {pointer}"
    );
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        // A URI fragment: the braces of path templates are escaped.
        "$ref": format!("#{}", pointer.replace('{', "%7B").replace('}', "%7D")),
        "components": doc["components"],
    });
    if let Some(paths) = doc.get("paths") {
        schema["paths"] = paths.clone();
    }
    if strict {
        schema["unevaluatedProperties"] = json!(false);
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("the schema at {pointer} does not compile: {e}"))
}

/// Validates `instance` against the payload of AsyncAPI message `message`.
fn check_message(docs: &Docs, message: &str, instance: &Value) {
    let pointer = format!("/components/messages/{}/payload", segment(message));
    let v = validator(&docs.asyncapi, &pointer, true);
    let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "message {message} does not match the AsyncAPI document: {errors:?}\n{instance}"
    );
}

/// Validates a REST answer against the OpenAPI response schema (an array's
/// items each strictly).
fn check_response(docs: &Docs, path: &str, method: &str, status: u16, body: &Value) {
    let pointer = format!(
        "/paths/{}/{method}/responses/{status}/content/application~1json/schema",
        segment(path)
    );
    let schema = docs
        .openapi
        .pointer(&pointer)
        .unwrap_or_else(|| panic!("no response schema at {pointer}"));
    let check = |pointer: &str, instance: &Value| {
        let v = validator(&docs.openapi, pointer, true);
        let errors: Vec<String> = v.iter_errors(instance).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{method} {path} {status} does not match the OpenAPI document: {errors:?}\n{instance}"
        );
    };
    if schema["type"] == "array" {
        check(&pointer, body);
        let items = format!("{pointer}/items");
        for item in body.as_array().unwrap() {
            check(&items, item);
        }
    } else {
        check(&pointer, body);
    }
}

const JOB: &str = "0197c0de-5e1a-7a00-8000-000000000001";
const NOTE: &str = "0197c0de-5e1a-7a00-8000-0000000000aa";

/// Every type, with its optional fields and without; the last one is
/// recognised by its `note_id`.
fn events(last: &str) -> Value {
    json!([
        {"type":"QueueStatus","total_jobs":3,"running":1,"pending":2},
        {"type":"JobQueued","job_id":JOB,"job_type":"Embedding","note_id":NOTE},
        {"type":"JobQueued","job_id":JOB,"job_type":"Embedding"},
        {"type":"JobStarted","job_id":JOB,"job_type":"Embedding"},
        {"type":"JobProgress","job_id":JOB,"note_id":NOTE,"progress":50,"progress_percent":50,"message":"chunk 3/6"},
        {"type":"JobProgress","job_id":JOB,"progress_percent":60},
        {"type":"JobCompleted","job_id":JOB,"job_type":"Embedding","note_id":NOTE,"duration_ms":1200},
        {"type":"JobCompleted","job_id":JOB,"job_type":"Embedding"},
        {"type":"JobFailed","job_id":JOB,"job_type":"AiRevision","error":"timed_out"},
        {"type":"NoteUpdated","note_id":NOTE,"title":"T","tags":["a","b"],"has_ai_content":true,
         "has_links":false,"operation":"updated","user_id":"u-1"},
        {"type":"NoteUpdated","note_id":last,"tags":[],"has_ai_content":false,"has_links":true},
    ])
}

const KINDS: [&str; 7] = [
    "QueueStatus",
    "JobQueued",
    "JobStarted",
    "JobProgress",
    "JobCompleted",
    "JobFailed",
    "NoteUpdated",
];

/// One SSE frame: its `event:`, `id:` and `data:`.
#[derive(Debug)]
struct Frame {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

/// Reads frames until `done` says so (or [`WAIT`] passes).
async fn read_sse(res: reqwest::Response, mut done: impl FnMut(&Frame) -> bool) -> Vec<Frame> {
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        while let Some(at) = buf.find("\n\n") {
            let raw: String = buf.drain(..at + 2).collect();
            let mut frame = Frame {
                event: None,
                id: None,
                data: String::new(),
            };
            for line in raw.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    frame.event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("id: ") {
                    frame.id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    frame.data.push_str(v);
                }
            }
            if frame.data.is_empty() {
                continue; // `retry:`, keepalive comments
            }
            let stop = done(&frame);
            frames.push(frame);
            if stop {
                return frames;
            }
        }
        let chunk = tokio::time::timeout_at(deadline, body.next())
            .await
            .expect("the SSE stream went quiet")
            .expect("the SSE stream ended")
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

async fn open_sse(server: &Server, query: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut req = client().get(server.url(&format!("/api/v1/events?{query}")));
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame, as JSON.
async fn next_text(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a WebSocket frame in time")
            .expect("the WebSocket is open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("a JSON text frame");
        }
    }
}

/// A webhook target on loopback: each request's headers and body.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(HeaderMap, Value)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let body: Value = serde_json::from_slice(&body).expect("a JSON webhook body");
                let _ = tx.send((headers, body));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test]
async fn the_documents_are_served_without_credentials_and_describe_this_build() {
    // With tokens configured, the contracts still need none.
    let mut server = Server::start(&["--auth-admin-token", "admin-secret-token-123"]).await;
    let docs = fetch_docs(&server).await;
    let res = client()
        .get(server.url("/api/v1/connections"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "other routes still need a token");

    let channels = docs.asyncapi["channels"].as_object().unwrap();
    assert_eq!(channels["websocket"]["address"], "/api/v1/ws");
    assert_eq!(channels["sse"]["address"], "/api/v1/events");
    assert!(channels["webhook"]["address"].is_null());
    for op in [
        "sendWebSocketMessages",
        "receiveWebSocketCommands",
        "sendSseV1",
        "sendSseEnvelope",
        "sendWebhook",
    ] {
        assert!(
            docs.asyncapi["operations"].get(op).is_some(),
            "operation {op}"
        );
    }
    let paths = docs.openapi["paths"].as_object().unwrap();
    for path in [
        "/api/v1/events",
        "/api/v1/events/history",
        "/api/v1/webhooks",
        "/api/v1/webhooks/{id}",
        "/api/v1/webhooks/{id}/deliveries",
        "/api/v1/connections",
        "/health",
        "/metrics",
        "/api/v1/asyncapi.json",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains_key(path), "OpenAPI path {path}");
    }
    // Every error is the same JSON object.
    let error = &docs.openapi["components"]["schemas"]["Error"];
    assert_eq!(error["required"], json!(["error", "message"]));
    server.shutdown().await;
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let mut server = Server::start(&[]).await;
    let docs = fetch_docs(&server).await;
    let http = client();
    let mut checked = 0;
    for (path, item) in docs.openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("/connections/{id}", "/connections/0")
                .replace("{id}", "0197c0de-5e1a-7a00-8000-00000000dead")
                .replace("{delivery_id}", "0197c0de-5e1a-7a00-8000-00000000beef")
                .replace("{name}", "no-such-consumer");
            if concrete == "/api/v1/events" && method == "get"
                || concrete == "/api/v1/events/stream"
                || concrete == "/api/v1/ws"
                || concrete == "/api/v1/jobs" && method == "post"
            {
                // Streams and upgrades are exercised below; a job would run.
                continue;
            }
            if concrete == "/api/v1/stats/stream" {
                // A stream: its head and first frame (more in tests/stats_stream.rs).
                let mut res = http.get(server.url(&concrete)).send().await.unwrap();
                assert_eq!(res.status(), 200, "{method} {path}");
                assert_eq!(res.headers()["content-type"], "text/event-stream");
                assert!(
                    item[method]["responses"]["200"]["content"]["text/event-stream"].is_object()
                );
                let mut text = String::new();
                while !text.contains("\n\n") {
                    let chunk = tokio::time::timeout(WAIT, res.chunk()).await.unwrap();
                    text.push_str(std::str::from_utf8(&chunk.unwrap().unwrap()).unwrap());
                }
                let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
                let stats: Value = serde_json::from_str(data).unwrap();
                let v = validator(&docs.openapi, "/components/schemas/Stats", true);
                let errors: Vec<String> = v.iter_errors(&stats).map(|e| e.to_string()).collect();
                assert!(errors.is_empty(), "a stats frame: {errors:?}\n{stats}");
                checked += 1;
                continue;
            }
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = http.request(m, server.url(&concrete));
            if method == "post" || method == "patch" {
                req = req.header("content-type", "application/json").body("{}");
            }
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let text = res.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}: not routed ({text})");
            assert!(
                !text.contains("no route for"),
                "{method} {path}: not routed ({status} {text})"
            );
            let documented = item[method]["responses"]
                .as_object()
                .unwrap()
                .contains_key(&status.to_string());
            assert!(
                documented,
                "{method} {path} answered an undocumented {status}: {text}"
            );
            if status >= 400 || concrete == "/api/v1/stats" {
                let body: Value = serde_json::from_str(&text).unwrap();
                check_response(&docs, path, method, status, &body);
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} operations checked");
    server.shutdown().await;
}

#[tokio::test]
async fn every_message_sent_matches_the_served_asyncapi_document() {
    let mut server = Server::start(&[]).await;
    let docs = fetch_docs(&server).await;
    let last = uuid::Uuid::now_v7().to_string();
    let is_last = |v: &Value| v["type"] == "NoteUpdated" && v["note_id"] == last.as_str();

    // A webhook for every kind, answered 204.
    let (hook_url, mut hooks) = receiver().await;
    let res = client()
        .post(server.url("/api/v1/webhooks"))
        .json(&json!({"url": hook_url, "events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let webhook: Value = res.json().await.unwrap();
    check_response(&docs, "/api/v1/webhooks", "post", 201, &webhook);

    // The WebSocket: snapshot, ping → pong, subscribe → subscribed.
    let (mut ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws")),
    )
    .await
    .unwrap()
    .unwrap();
    let first = next_text(&mut ws).await;
    assert_eq!(first["type"], "QueueStatus");
    check_message(&docs, "QueueStatus", &first);

    // The commands themselves are in the document too.
    let ping = json!({"type":"ping"});
    let subscribe = json!({"type":"subscribe","events":["job","note","QueueStatus","bogus"]});
    let unsubscribe = json!({"type":"unsubscribe","events":["QueueStatus"]});
    check_message(&docs, "ping", &ping);
    check_message(&docs, "subscribe", &subscribe);
    check_message(&docs, "unsubscribe", &unsubscribe);
    check_message(&docs, "refresh", &json!("refresh"));

    let mut ws_answers = Vec::new();
    for command in [
        &ping,
        &subscribe,
        &unsubscribe,
        &json!({"type":"subscribe","events":["QueueStatus"]}),
    ] {
        ws.send(Message::text(command.to_string())).await.unwrap();
        let answer = loop {
            let v = next_text(&mut ws).await;
            if v["type"] == "pong" || v["type"] == "subscribed" {
                break v;
            }
            check_message(&docs, v["type"].as_str().unwrap(), &v);
        };
        let message = answer["type"].as_str().unwrap().to_owned();
        check_message(&docs, &message, &answer);
        ws_answers.push(answer);
    }
    assert_eq!(ws_answers[0]["type"], "pong");
    assert_eq!(ws_answers[1]["unknown"], json!(["bogus"]));

    // `subscribe`'s topics, filter and max_rate, and the error answer
    // (the selection stays every kind, the limit is lifted again).
    for (command, want) in [
        (
            json!({"type":"subscribe","topics":["*"],"filter":{"types":["job","note","queue"]},"max_rate":10000}),
            "subscribed",
        ),
        (json!({"type":"subscribe","topics":["UPPER"]}), "error"),
        (json!({"type":"subscribe","max_rate":0}), "subscribed"),
    ] {
        check_message(&docs, "subscribe", &command);
        ws.send(Message::text(command.to_string())).await.unwrap();
        let answer = loop {
            let v = next_text(&mut ws).await;
            if v["type"] == want {
                break v;
            }
            check_message(&docs, v["type"].as_str().unwrap(), &v);
        };
        check_message(&docs, want, &answer);
    }

    // SSE in both formats, opened before the events are published.
    let sse_v1 = open_sse(&server, "format=v1", None).await;
    let sse_envelope = open_sse(&server, "format=envelope", None).await;
    server.wait_connections(3).await;

    let published = server.publish(&events(&last)).await;
    assert_eq!(published.len(), 11);

    // WebSocket: every event, flat.
    let mut seen = BTreeSet::new();
    loop {
        let v = next_text(&mut ws).await;
        let kind = v["type"].as_str().unwrap().to_owned();
        check_message(&docs, &kind, &v);
        seen.insert(kind);
        if is_last(&v) {
            break;
        }
    }
    assert_eq!(
        seen,
        KINDS.iter().map(|k| (*k).to_owned()).collect(),
        "WebSocket kinds"
    );

    // SSE v1: `event:` names the message, `id:` is the sequence number.
    let frames = read_sse(sse_v1, |f| {
        serde_json::from_str::<Value>(&f.data).is_ok_and(|v| is_last(&v))
    })
    .await;
    let mut seen = BTreeSet::new();
    for f in &frames {
        let name = f.event.as_deref().expect("an `event:` line");
        let v: Value = serde_json::from_str(&f.data).unwrap();
        check_message(&docs, name, &v);
        assert_eq!(v["type"], name);
        if let Some(id) = &f.id {
            assert!(id.parse::<u64>().is_ok(), "v1 id {id}");
        }
        seen.insert(name.to_owned());
    }
    assert_eq!(
        seen,
        KINDS.iter().map(|k| (*k).to_owned()).collect(),
        "SSE v1 kinds"
    );

    // SSE envelope: `event:` is the dot name, `id:` the event UUID; the
    // payload inside matches the flat message strictly too.
    let frames = read_sse(sse_envelope, |f| {
        serde_json::from_str::<Value>(&f.data).is_ok_and(|v| is_last(&v["payload"]))
    })
    .await;
    let mut seen = BTreeSet::new();
    for f in &frames {
        let name = f.event.as_deref().expect("an `event:` line");
        let v: Value = serde_json::from_str(&f.data).unwrap();
        if v.get("payload").is_none() {
            // The connection confirmation is a flat QueueStatus, no `id:`.
            assert!(f.id.is_none(), "{f:?}");
            check_message(&docs, "QueueStatus", &v);
            continue;
        }
        check_message(&docs, name, &v);
        let kind = v["payload"]["type"].as_str().unwrap();
        check_message(&docs, kind, &v["payload"]);
        if let Some(id) = &f.id {
            assert_eq!(Some(id.as_str()), v["event_id"].as_str());
        }
        seen.insert(kind.to_owned());
    }
    assert_eq!(
        seen,
        KINDS.iter().map(|k| (*k).to_owned()).collect(),
        "SSE envelope kinds"
    );

    // A cursor the server cannot serve: `resync_required`, in both formats.
    for format in ["v1", "envelope"] {
        let res = open_sse(&server, &format!("format={format}"), Some("999999999999")).await;
        let frames = read_sse(res, |f| f.event.as_deref() == Some("resync_required")).await;
        let f = frames.last().unwrap();
        assert!(f.id.is_none());
        check_message(
            &docs,
            "resync_required",
            &serde_json::from_str(&f.data).unwrap(),
        );
    }

    // The webhook: every event delivered, body and headers as documented.
    let headers_schema = validator(
        &docs.asyncapi,
        "/components/messages/webhook/headers",
        false,
    );
    let mut seen = BTreeSet::new();
    loop {
        let (headers, body) = tokio::time::timeout(WAIT, hooks.recv())
            .await
            .expect("a webhook delivery")
            .unwrap();
        check_message(&docs, "webhook", &body);
        let kind = body["event"].as_str().unwrap().to_owned();
        check_message(&docs, &kind, &body["data"]);
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap())))
            .collect();
        let headers = Value::Object(headers);
        let errors: Vec<String> = headers_schema
            .iter_errors(&headers)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "webhook headers: {errors:?}\n{headers}");
        seen.insert(kind);
        if is_last(&body["data"]) {
            break;
        }
    }
    assert_eq!(
        seen,
        KINDS.iter().map(|k| (*k).to_owned()).collect(),
        "webhook kinds"
    );

    // REST answers of the same run.
    let id = webhook["id"].as_str().unwrap();
    for (path, template) in [
        ("/api/v1/webhooks".to_owned(), "/api/v1/webhooks"),
        (format!("/api/v1/webhooks/{id}"), "/api/v1/webhooks/{id}"),
        (
            format!("/api/v1/webhooks/{id}/deliveries"),
            "/api/v1/webhooks/{id}/deliveries",
        ),
        ("/api/v1/connections".to_owned(), "/api/v1/connections"),
        (
            "/api/v1/events/history".to_owned(),
            "/api/v1/events/history",
        ),
        ("/health".to_owned(), "/health"),
        ("/api/v1/jobs/status".to_owned(), "/api/v1/jobs/status"),
        ("/api/v1/notes".to_owned(), "/api/v1/notes"),
    ] {
        let res = client().get(server.url(&path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        let body: Value = res.json().await.unwrap();
        check_response(&docs, template, "get", 200, &body);
    }
    let res = client()
        .post(server.url(&format!("/api/v1/webhooks/{id}/test")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    check_response(
        &docs,
        "/api/v1/webhooks/{id}/test",
        "post",
        200,
        &res.json().await.unwrap(),
    );
    let res = client()
        .post(server.url("/api/v1/notes"))
        .json(&json!({"title": "Contract", "tags": ["x"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    check_response(
        &docs,
        "/api/v1/notes",
        "post",
        201,
        &res.json().await.unwrap(),
    );
    let res = client()
        .post(server.url("/api/v1/events"))
        .json(&json!({"type":"QueueStatus","total_jobs":1,"running":1,"pending":0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    check_response(
        &docs,
        "/api/v1/events",
        "post",
        202,
        &res.json().await.unwrap(),
    );
    let res = client()
        .post(server.url("/api/v1/events"))
        .json(&json!({"type":"JobProgress","job_id":JOB,"progress":101}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    check_response(
        &docs,
        "/api/v1/events",
        "post",
        400,
        &res.json().await.unwrap(),
    );

    tokio::time::sleep(Duration::from_millis(10)).await;
    server.shutdown().await;
}

/// The check itself: what a drifted server would send fails it.
#[tokio::test]
async fn the_schemas_reject_what_the_protocol_rules_out() {
    let mut server = Server::start(&[]).await;
    let docs = fetch_docs(&server).await;
    let fails = |message: &str, instance: Value| {
        let pointer = format!("/components/messages/{}/payload", segment(message));
        let v = validator(&docs.asyncapi, &pointer, true);
        assert!(!v.is_valid(&instance), "{message} accepted {instance}");
    };
    // A field the contract does not name.
    fails(
        "QueueStatus",
        json!({"type":"QueueStatus","total_jobs":1,"running":1,"pending":0,"extra":1}),
    );
    // Only one of the two progress fields.
    fails(
        "JobProgress",
        json!({"type":"JobProgress","job_id":JOB,"progress":5}),
    );
    // `null` instead of an omitted field.
    fails(
        "JobQueued",
        json!({"type":"JobQueued","job_id":JOB,"job_type":"E","note_id":null}),
    );
    // Another type under this message, a bad UUID, a bad envelope time.
    fails(
        "JobStarted",
        json!({"type":"JobQueued","job_id":JOB,"job_type":"E"}),
    );
    fails(
        "JobStarted",
        json!({"type":"JobStarted","job_id":"not-a-uuid","job_type":"E"}),
    );
    fails(
        "job.started",
        json!({"event_id":JOB,"event_type":"job.started","occurred_at":"yesterday",
               "actor":{"kind":"system"},"payload_version":1,
               "payload":{"type":"JobStarted","job_id":JOB,"job_type":"E"}}),
    );
    fails(
        "webhook",
        json!({"id":JOB,"event":"JobStarted","timestamp":"2026-02-05T10:30:45.123Z"}),
    );
    server.shutdown().await;
}
