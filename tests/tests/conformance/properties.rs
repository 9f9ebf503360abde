//! Property tests for every parser that takes outside input: SSE filters
//! (query strings), `Last-Event-ID`, WebSocket client messages, webhook
//! registration bodies and publish bodies. For any input: no panic, no 5xx,
//! no hang, and every refusal is the documented 4xx JSON
//! `{"error","message"}`. And for the filters: an SSE query filter or a
//! WebSocket `subscribe` selects exactly the events it names, compared
//! with a reference predicate over a generated event set.
//!
//! Each property drives one shared server (started once) with a modest
//! number of cases, so the suite stays quick on a 2-core machine.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

use crate::harness::*;

const NAMES: [&str; 16] = [
    "QueueStatus",
    "JobQueued",
    "JobStarted",
    "JobProgress",
    "JobCompleted",
    "JobFailed",
    "NoteUpdated",
    "queue.status",
    "job.progress",
    "note.updated",
    "job",
    "note",
    "JOB",
    "jobs",
    "noteupdated",
    "",
];

/// A runner with `cases` cases (`PROPTEST_CASES` overrides, for a longer
/// local run), no persistence files.
fn runner(cases: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // Each case talks to a live server and a failing one can wait out a
        // timeout: bound shrinking so a failure is reported, not ground on.
        max_shrink_iters: 64,
        max_shrink_time: 30_000,
        ..Config::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Text that stresses parsers: names, separators, escapes, unicode.
fn nasty_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(NAMES.to_vec()).prop_map(str::to_owned),
        proptest::collection::vec(proptest::sample::select(NAMES.to_vec()), 0..4)
            .prop_map(|v| v.join(",")),
        "[A-Za-z0-9._,%+-]{0,24}",
        "\\PC{0,16}",
        Just(uuid::Uuid::now_v7().to_string()),
        "[0-9]{1,24}",
        Just("%zz%0A%00".to_owned()),
    ]
}

fn encode(s: &str) -> String {
    // Mostly percent-encoded, but raw `%` junk is kept to hit the decoder.
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b',' | b'%' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A server with 12 events published into an 8-event replay ring, so
/// cursors can be replayable, expired or unknown.
async fn overflowed_ring_server() -> Server {
    let server = Server::start(&["--event-replay-size", "8"]).await;
    for i in 0..12u64 {
        server
            .publish(&json!({"type":"QueueStatus","total_jobs":i,"running":0,"pending":i}))
            .await;
    }
    server
}

/// Accepts a 2xx with `ok`, or the documented JSON error; refuses anything else.
async fn check_answer(res: reqwest::Response, ok: u16) -> Result<Option<Value>, TestCaseError> {
    let status = res.status().as_u16();
    if status == ok {
        return Ok(None);
    }
    prop_assert!(
        (400..500).contains(&status),
        "status {status} (only {ok} or a 4xx is acceptable)"
    );
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    prop_assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let body: Value = res
        .json()
        .await
        .map_err(|e| TestCaseError::fail(format!("error body is not JSON: {e}")))?;
    prop_assert!(
        body["error"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    prop_assert!(
        body["message"].as_str().is_some_and(|s| !s.is_empty()),
        "{body}"
    );
    Ok(Some(body))
}

#[test]
fn sse_query_strings_never_fail_badly() {
    let rt = runtime();
    let server = rt.block_on(Server::start(&[]));
    let key = prop_oneof![
        proptest::sample::select(vec![
            "events",
            "types",
            "entity_id",
            "format",
            "heartbeat",
            "memory",
            "last_event_id",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ];
    let query = proptest::collection::vec((key, nasty_text()), 0..5);
    let outcomes = Outcomes::default();
    runner(40)
        .run(&query, |pairs| {
            rt.block_on(async {
                let q: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect();
                let url = server.url(&format!("/api/v1/events?{}", q.join("&")));
                let res = tokio::time::timeout(WAIT, stream_client().get(&url).send())
                    .await
                    .map_err(|_| TestCaseError::fail(format!("{url}: no answer")))?
                    .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
                if res.status() == 200 {
                    let mut sse = SseClient::from_response(res);
                    let first = sse.frame_within(WAIT).await;
                    prop_assert!(
                        first.is_some_and(|f| f.retry.is_some()),
                        "{url}: no retry frame"
                    );
                    outcomes.accepted();
                } else {
                    outcomes.refused(res, 200).await?;
                }
                Ok(())
            })
        })
        .unwrap();
    outcomes.assert_both("SSE query");
}

#[test]
fn history_queries_never_fail_badly() {
    let rt = runtime();
    let server = rt.block_on(overflowed_ring_server());
    let key = proptest::sample::select(vec![
        "since",
        "limit",
        "events",
        "types",
        "entity_id",
        "memory",
        "zz",
    ]);
    let value = prop_oneof![nasty_text(), (0u64..40).prop_map(|n| n.to_string())];
    let query = proptest::collection::vec((key, value), 0..4);
    let outcomes = Outcomes::default();
    runner(40)
        .run(&query, |pairs| {
            rt.block_on(async {
                let q: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{k}={}", encode(v)))
                    .collect();
                let url = server.url(&format!("/api/v1/events/history?{}", q.join("&")));
                let res = client()
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
                if res.status() == 200 {
                    let list: Value = res
                        .json()
                        .await
                        .map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
                    prop_assert!(list.is_array(), "{url}: {list}");
                    outcomes.accepted();
                } else {
                    outcomes.refused(res, 200).await?;
                }
                Ok(())
            })
        })
        .unwrap();
    outcomes.assert_both("history query");
}

#[test]
fn last_event_ids_never_fail_badly() {
    let rt = runtime();
    let server = rt.block_on(overflowed_ring_server());
    let last = rt.block_on(async { server.bus.last_seq() });
    let cursor = prop_oneof![
        (0..last + 5).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        Just(uuid::Uuid::now_v7().to_string()),
        "[ -~]{0,64}",
        "\\PC{0,20}",
        Just("-1".to_owned()),
        Just("00000000000000000000000000000000000001".to_owned()),
    ];
    runner(40)
        .run(&(cursor, any::<bool>()), |(cursor, in_header)| {
            rt.block_on(async {
                let base = server.url("/api/v1/events");
                let req = if in_header {
                    match reqwest::header::HeaderValue::from_str(&cursor) {
                        Ok(v) => stream_client().get(&base).header("last-event-id", v),
                        // Not sendable as a header: use the query instead.
                        Err(_) => {
                            stream_client().get(format!("{base}?last_event_id={}", encode(&cursor)))
                        }
                    }
                } else {
                    stream_client().get(format!("{base}?last_event_id={}", encode(&cursor)))
                };
                let res = tokio::time::timeout(WAIT, req.send())
                    .await
                    .map_err(|_| TestCaseError::fail("no answer"))?
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(res.status().as_u16(), 200, "cursor {:?}", cursor);
                let mut sse = SseClient::from_response(res);
                let first = sse.frame_within(WAIT).await;
                prop_assert!(first.is_some_and(|f| f.retry.is_some()));
                let second = sse
                    .frame_within(WAIT)
                    .await
                    .ok_or_else(|| TestCaseError::fail("stream stalled after retry"))?;
                let data: Value = serde_json::from_str(second.data.as_deref().unwrap_or(""))
                    .map_err(|e| TestCaseError::fail(format!("{:?}: {e}", second.raw)))?;
                match second.event.as_deref() {
                    Some("resync_required") => {
                        prop_assert!(second.id.is_none());
                        prop_assert_eq!(data["reason"].as_str(), Some("cursor_expired"));
                    }
                    Some("QueueStatus") => {}
                    other => prop_assert!(false, "unexpected second frame {:?}", other),
                }
                Ok(())
            })
        })
        .unwrap();
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (0u64..=120).prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        nasty_text().prop_map(Value::String),
        Just(json!(uuid::Uuid::now_v7())),
        Just(json!("http://127.0.0.1:9/hook")),
        Just(json!("http://169.254.169.254/latest")),
        Just(json!("ftp://example.org/")),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec(("[a-z_]{1,10}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// An object made mostly of the fields a parser knows, with random values.
fn near_object(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    proptest::collection::vec(
        (proptest::sample::select(keys.to_vec()), json_value()),
        0..7,
    )
    .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// `base` with one field replaced by a random value, or removed.
fn mutated(base: Vec<Value>) -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(base),
        "[a-z_]{1,16}",
        proptest::option::of(json_value()),
        any::<bool>(),
    )
        .prop_map(|(mut obj, key, value, pick_existing)| {
            let map = obj.as_object_mut().expect("an object");
            let key = if pick_existing {
                let keys: Vec<String> = map.keys().cloned().collect();
                keys[key.len() % keys.len()].clone()
            } else {
                key
            };
            match value {
                Some(v) => {
                    map.insert(key, v);
                }
                None => {
                    map.remove(&key);
                }
            }
            obj
        })
}

/// Counts accepted and refused cases, so a property cannot pass by only
/// ever taking one branch.
#[derive(Default)]
struct Outcomes {
    accepted: std::cell::Cell<u32>,
    refused: std::cell::Cell<u32>,
}

impl Outcomes {
    fn accepted(&self) {
        self.accepted.set(self.accepted.get() + 1);
    }
    /// Checks a refusal with [`check_answer`] (an answer other than `ok` must
    /// be the documented 4xx JSON error), then counts it.
    async fn refused(&self, res: reqwest::Response, ok: u16) -> Result<(), TestCaseError> {
        check_answer(res, ok).await?;
        self.refused.set(self.refused.get() + 1);
        Ok(())
    }
    fn assert_both(&self, what: &str) {
        assert!(
            self.accepted.get() > 0 && self.refused.get() > 0,
            "{what}: {} accepted, {} refused: the generator misses a branch",
            self.accepted.get(),
            self.refused.get()
        );
    }
}

#[test]
fn webhook_registration_bodies_never_fail_badly() {
    let rt = runtime();
    // Dozens of registrations a second: the default rate limit is off here.
    let server = rt.block_on(Server::start(&["--webhook-create-max-rate", "0"]));
    const KEYS: &[&str] = &[
        "url",
        "url",
        "events",
        "events",
        "secret",
        "max_retries",
        "active",
        "is_active",
        "extra",
    ];
    let body = prop_oneof![
        8 => near_object(KEYS).prop_map(|v| v.to_string().into_bytes()),
        2 => near_object(KEYS).prop_map(|mut v| {
            v["url"] = json!("http://127.0.0.1:9/hook");
            v.to_string().into_bytes()
        }),
        3 => mutated(valid_registrations()).prop_map(|v| v.to_string().into_bytes()),
        // Valid bodies as they are, so the accepted branch is taken in
        // every run, not only when a mutation happens to be harmless.
        3 => proptest::sample::select(valid_registrations()).prop_map(|v| v.to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    let outcomes = Outcomes::default();
    runner(48)
        .run(&body, |body| {
            rt.block_on(async {
                let http = client();
                let res = http
                    .post(server.url("/api/v1/webhooks"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if res.status() == 201 {
                    let w: Value = res
                        .json()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert!(w["id"].is_string() && w["secret"].is_string(), "{w}");
                    let del = http
                        .delete(server.url(&format!(
                            "/api/v1/webhooks/{}",
                            w["id"].as_str().unwrap_or("")
                        )))
                        .send()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(del.status().as_u16(), 204);
                    outcomes.accepted();
                } else {
                    outcomes.refused(res, 201).await?;
                }
                Ok(())
            })
        })
        .unwrap();
    outcomes.assert_both("webhook registration");
}

/// Registration bodies the API accepts.
fn valid_registrations() -> Vec<Value> {
    vec![
        json!({"url":"http://127.0.0.1:9/hook","events":[]}),
        json!({"url":"http://127.0.0.1:9/a","events":["JobCompleted","note.updated"],"secret":"s3cret-s3cret-s3cret","max_retries":3,"active":true}),
    ]
}

/// A body near one of the 7 events: mostly the right field names.
fn publish_event() -> impl Strategy<Value = Value> {
    const KEYS: &[&str] = &[
        "type",
        "type",
        "type",
        "job_id",
        "job_type",
        "note_id",
        "progress",
        "progress_percent",
        "message",
        "duration_ms",
        "error",
        "title",
        "tags",
        "has_ai_content",
        "has_links",
        "operation",
        "user_id",
        "total_jobs",
        "running",
        "pending",
    ];
    near_object(KEYS)
        .prop_flat_map(|obj| {
            (
                Just(obj),
                proptest::sample::select(NAMES[..7].to_vec()),
                any::<bool>(),
            )
        })
        .prop_map(|(mut obj, name, typed)| {
            if typed {
                obj["type"] = json!(name);
            }
            obj
        })
}

#[test]
fn publish_bodies_never_fail_badly_and_refusals_publish_nothing() {
    let rt = runtime();
    let server = rt.block_on(Server::start(&[]));
    let body = prop_oneof![
        6 => publish_event().prop_map(|v| v.to_string().into_bytes()),
        2 => proptest::collection::vec(publish_event(), 0..4).prop_map(|v| Value::Array(v).to_string().into_bytes()),
        3 => mutated(crate::wire::the_seven().into_iter().map(|t| t.3).collect())
            .prop_map(|v| v.to_string().into_bytes()),
        2 => proptest::sample::select(crate::wire::the_seven().into_iter().map(|t| t.3).collect::<Vec<_>>())
            .prop_map(|v| v.to_string().into_bytes()),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ];
    let outcomes = Outcomes::default();
    runner(48)
        .run(&body, |body| {
            rt.block_on(async {
                let before = server.bus.last_seq();
                let mut sub = server.bus.subscribe();
                let res = client()
                    .post(server.url("/api/v1/events"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                if res.status() == 202 {
                    let answer: Value = res
                        .json()
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let n = answer["events"].as_array().map_or(0, Vec::len);
                    prop_assert!(n >= 1);
                    prop_assert_eq!(server.bus.last_seq(), before + n as u64);
                    // What was accepted is a valid §1 event on the wire.
                    for e in answer["events"].as_array().into_iter().flatten() {
                        let seq = e["seq"].as_u64().unwrap_or(0);
                        let ev = next_where(&mut sub, |ev| ev.seq() == seq).await;
                        let v: Value = serde_json::from_slice(ev.json()).unwrap_or(Value::Null);
                        prop_assert!(v["type"].as_str().is_some_and(known_type), "{}", v);
                        prop_assert!(ev.payload().validate().is_ok());
                    }
                    outcomes.accepted();
                } else {
                    outcomes.refused(res, 202).await?;
                    prop_assert_eq!(
                        server.bus.last_seq(),
                        before,
                        "a refused body published events"
                    );
                }
                Ok(())
            })
        })
        .unwrap();
    outcomes.assert_both("publish");
}

#[test]
fn websocket_client_messages_never_break_the_connection() {
    let rt = runtime();
    let server = rt.block_on(Server::start(&[]));
    // `TestRunner::run` takes an `Fn`: the one connection lives in a cell.
    let ws = std::cell::RefCell::new(rt.block_on(async {
        let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
        ws.next_text().await;
        ws
    }));
    let names = proptest::collection::vec(nasty_text().prop_map(Value::String), 0..5);
    let message = prop_oneof![
        3 => proptest::string::string_regex("\\PC{0,64}").unwrap(),
        1 => Just("refresh".to_owned()),
        1 => Just(" refresh\\n".to_owned()),
        3 => (proptest::sample::select(vec!["subscribe", "unsubscribe", "ping", "refresh", "pong", "Subscribe", ""]), names)
            .prop_map(|(t, events)| json!({"type": t, "events": events}).to_string()),
        2 => (proptest::sample::select(vec!["subscribe", "unsubscribe"]), json_value())
            .prop_map(|(t, events)| json!({"type": t, "events": events}).to_string()),
        2 => json_value().prop_map(|v| v.to_string()),
    ];
    runner(64)
        .run(&message, |msg| {
            let mut ws = ws.borrow_mut();
            rt.block_on(async {
                ws.send(&msg).await;
                // The connection still answers afterwards (a barrier, not a
                // ping: the message itself may have been a ping, and a
                // stale pong would let the next case race ahead of the
                // server); everything before the answer is a well-formed
                // server message.
                for v in ws.barrier().await {
                    let t = v["type"].as_str().unwrap_or("");
                    prop_assert!(
                        known_type(t) || t == "subscribed" || t == "pong",
                        "after {:?}: {}",
                        msg,
                        v
                    );
                }
                Ok(())
            })
        })
        .unwrap();
    // Still usable for events: subscribe to everything again and receive one.
    let mut ws = ws.into_inner();
    rt.block_on(async {
        ws.send(r#"{"type":"subscribe","events":["job","note","queue"]}"#)
            .await;
        ws.barrier().await;
        server
            .publish(&json!({"type":"JobQueued","job_id":uuid::Uuid::now_v7(),"job_type":"P"}))
            .await;
        ws.next_text_where(|v| v["type"] == "JobQueued").await;
    });
}

/// The seven kinds by their two names (docs/protocol.md §1), for the references.
const KINDS: [(&str, &str); 7] = [
    ("QueueStatus", "queue.status"),
    ("JobQueued", "job.queued"),
    ("JobStarted", "job.started"),
    ("JobProgress", "job.progress"),
    ("JobCompleted", "job.completed"),
    ("JobFailed", "job.failed"),
    ("NoteUpdated", "note.updated"),
];

/// Entities and memories the generated events and filters share, so that
/// filters often select some events and not others.
const ENTITIES: [u128; 3] = [
    0x0197c0de_5e1a_7a00_8000_00000000e001,
    0x0197c0de_5e1a_7a00_8000_00000000e002,
    0x0197c0de_5e1a_7a00_8000_00000000e003,
];
const MEMORIES: [&str; 2] = ["work", "home"];

/// One generated event: kind, entity (index into [`ENTITIES`]), memory.
type GenEvent = (usize, usize, Option<usize>);

/// The reference for one `events=` item (docs/protocol.md §3): an exact name in
/// either scheme.
fn exact_name(item: &str) -> Vec<usize> {
    (0..7)
        .filter(|&k| KINDS[k].0 == item || KINDS[k].1 == item)
        .collect()
}

/// The reference for one `types=` item or `subscribe` name (docs/protocol.md §2,
/// §3): case-insensitively a type name, a dot name, or a dot-name prefix up
/// to a dot (`job` matches `job.progress`, not `jobs.x`).
fn pattern(item: &str) -> Vec<usize> {
    let p = item.to_ascii_lowercase();
    (0..7)
        .filter(|&k| {
            let dot = KINDS[k].1;
            KINDS[k].0.eq_ignore_ascii_case(&p) || dot == p || dot.starts_with(&format!("{p}."))
        })
        .collect()
}

/// A name list item: names of either scheme, prefixes, any case.
fn kind_item() -> impl Strategy<Value = String> {
    let mut pool: Vec<String> = KINDS
        .iter()
        .flat_map(|(t, d)| [(*t).to_owned(), (*d).to_owned()])
        .collect();
    pool.extend(["job", "queue", "note", "JOB", "Note", "Job.Failed"].map(str::to_owned));
    proptest::sample::select(pool)
}

/// The payload of generated event `i` (unique per case through `tag`: its
/// job or note id, or its queue counts, so a client's frames can be told
/// apart from the job bridge's periodic `QueueStatus`).
fn gen_payload(i: usize, (kind, entity, _): GenEvent, unique: bool) -> event_core::ServerEvent {
    let id = if unique {
        uuid::Uuid::now_v7()
    } else {
        uuid::Uuid::from_u128(ENTITIES[entity])
    };
    let n = 1000 + i as u64;
    match kind {
        0 => event_core::QueueStatus::new(n, 0).into(),
        1 => event_core::JobQueued {
            job_id: id,
            job_type: "P".into(),
            note_id: None,
        }
        .into(),
        2 => event_core::JobStarted {
            job_id: id,
            job_type: "P".into(),
            note_id: None,
        }
        .into(),
        3 => event_core::JobProgress {
            job_id: id,
            note_id: None,
            progress: 40,
            message: None,
        }
        .into(),
        4 => event_core::JobCompleted {
            job_id: id,
            job_type: "P".into(),
            note_id: None,
            duration_ms: Some(n),
        }
        .into(),
        5 => event_core::JobFailed {
            job_id: id,
            job_type: "P".into(),
            note_id: None,
            error: "timed_out".into(),
        }
        .into(),
        _ => event_core::NoteUpdated {
            note_id: id,
            title: Some(format!("n{n}")),
            tags: Vec::new(),
            has_ai_content: false,
            has_links: false,
            operation: None,
            user_id: None,
        }
        .into(),
    }
}

/// Whether a frame is the job bridge's periodic status, not a generated one
/// (generated statuses count 1000 and up).
fn is_tick(v: &Value) -> bool {
    v["type"] == "QueueStatus" && v["total_jobs"].as_u64().is_some_and(|n| n < 1000)
}

/// An SSE filter (`events=`, `types=`, `entity_id=`, `memory=`) against a
/// generated event set: the stream carries exactly the events a reference
/// predicate selects, in order — none missing, none extra.
#[test]
fn sse_filters_select_exactly_the_events_they_name() {
    let rt = runtime();
    let server = rt.block_on(Server::start(&[]));
    let lists = || proptest::collection::vec(kind_item(), 1..4);
    let case = (
        proptest::option::of(lists()),
        proptest::option::of(lists()),
        proptest::option::of(0..ENTITIES.len()),
        proptest::option::of(0..MEMORIES.len()),
        proptest::collection::vec(
            (
                0..7usize,
                0..ENTITIES.len(),
                proptest::option::of(0..MEMORIES.len()),
            ),
            0..10,
        ),
    );
    let selected_some = std::cell::Cell::new(0usize);
    runner(48)
        .run(&case, |(events, types, entity, memory, set)| {
            // The reference: kinds in every list given (AND), the entity's
            // events only (a QueueStatus has none), the memory's events and
            // unscoped ones.
            let mut kinds: Vec<usize> = (0..7).collect();
            if let Some(items) = &events {
                let named: Vec<usize> = items.iter().flat_map(|i| exact_name(i)).collect();
                kinds.retain(|k| named.contains(k));
            }
            if let Some(items) = &types {
                let named: Vec<usize> = items.iter().flat_map(|i| pattern(i)).collect();
                kinds.retain(|k| named.contains(k));
            }
            // An item that names nothing is refused (docs/protocol.md §3: `400`).
            let refused = events.iter().flatten().any(|i| exact_name(i).is_empty())
                || types.iter().flatten().any(|i| pattern(i).is_empty());
            let selects = |(kind, e, m): GenEvent| {
                kinds.contains(&kind)
                    && entity.is_none_or(|want| kind != 0 && e == want)
                    && (m.is_none() || memory.is_none() || m == memory)
            };
            let mut query = Vec::new();
            if let Some(items) = &events {
                query.push(format!("events={}", items.join(",")));
            }
            if let Some(items) = &types {
                query.push(format!("types={}", items.join(",")));
            }
            if let Some(e) = entity {
                query.push(format!("entity_id={}", uuid::Uuid::from_u128(ENTITIES[e])));
            }
            if let Some(m) = memory {
                query.push(format!("memory={}", MEMORIES[m]));
            }
            let url = server.url(&format!("/api/v1/events?{}", query.join("&")));
            // The closing event must pass the filter: a selected kind with
            // an entity when one is asked for.
            let closing = kinds
                .iter()
                .find(|&&k| entity.is_none() || k != 0)
                .map(|&k| (k, entity.unwrap_or(0), None));
            rt.block_on(async {
                let res = SseClient::request(&url, &[]).await;
                if refused {
                    prop_assert_eq!(res.status(), 400, "{}", url);
                    return Ok(());
                }
                prop_assert_eq!(res.status(), 200, "{}", url);
                let Some(closing) = closing else {
                    // Accepted, but it selects nothing that can close the case.
                    return Ok(());
                };
                prop_assert!(selects(closing));
                let mut sse = SseClient::from_response(res);
                // `retry:` then the confirmation (a QueueStatus without `id:`):
                // the subscription is live after it.
                sse.next_where(Frame::is_event).await;
                let mut want = Vec::new();
                for (i, ev) in set.iter().chain([&closing]).enumerate() {
                    let meta = event_core::EventMeta {
                        memory: ev.2.map(|m| MEMORIES[m].to_owned()),
                        ..event_core::EventMeta::default()
                    };
                    let published = server.bus.publish_with(gen_payload(i, *ev, false), meta);
                    if selects(*ev) {
                        want.push(published.seq().to_string());
                    }
                }
                if want.len() > 1 {
                    selected_some.set(selected_some.get() + 1);
                }
                let closing_id = want.last().cloned();
                let mut got = Vec::new();
                while got.last() != closing_id.as_ref() {
                    let frame = sse.next_where(Frame::is_event).await;
                    if frame.id.is_some() && !is_tick(&frame.json()) {
                        got.push(frame.id.unwrap_or_default());
                    }
                }
                prop_assert_eq!(got, want, "{} over {:?}", url, set);
                Ok(())
            })
        })
        .unwrap();
    assert!(
        selected_some.get() > 0,
        "no case selected any generated event besides the closing one"
    );
}

/// A WebSocket `subscribe` against a generated event set: the client gets
/// exactly the events of the kinds its names select (a reference predicate),
/// in order.
#[test]
fn websocket_subscriptions_select_exactly_the_events_they_name() {
    let rt = runtime();
    let server = rt.block_on(Server::start(&[]));
    let case = (
        proptest::collection::vec(kind_item(), 1..4),
        proptest::collection::vec(0..7usize, 0..10),
    );
    runner(48)
        .run(&case, |(names, kinds)| {
            let selected: Vec<usize> = names.iter().flat_map(|n| pattern(n)).collect();
            let Some(&last_kind) = selected.first() else {
                return Ok(());
            };
            rt.block_on(async {
                let mut ws = WsClient::connect(&server.ws_url("/api/v1/ws")).await;
                ws.next_text().await;
                ws.send(&json!({"type": "subscribe", "events": names}).to_string())
                    .await;
                ws.barrier().await;
                let mut want = Vec::new();
                for (i, &kind) in kinds.iter().chain([&last_kind]).enumerate() {
                    let ev = server.bus.publish(gen_payload(i, (kind, 0, None), true));
                    if selected.contains(&kind) {
                        want.push(String::from_utf8(ev.json().to_vec()).unwrap());
                    }
                }
                let closing = want.last().cloned();
                let mut got = Vec::new();
                while got.last() != closing.as_ref() {
                    let (text, _) = ws.next_text().await;
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if !is_tick(&v) {
                        got.push(text);
                    }
                }
                prop_assert_eq!(got, want, "subscribe {:?} over {:?}", names, kinds);
                Ok(())
            })
        })
        .unwrap();
}
