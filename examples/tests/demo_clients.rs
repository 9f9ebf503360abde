//! Smoke tests of the demo clients: each binary (`ws-tail`, `sse-tail`,
//! `webhook-receiver`) runs as a real process against a real, in-process
//! `event-server` on a loopback port. Every wait is bounded.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use event_core::{JobQueued, NoteUpdated, ServerEvent, Transport, Uuid};
use event_server::testing::Server;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long any single wait may take (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(20);

/// The ids of the open connections of `transport`.
fn connections(server: &Server, transport: Transport) -> Vec<u64> {
    server
        .registry
        .list()
        .into_iter()
        .filter(|c| c.transport == transport)
        .map(|c| c.id)
        .collect()
}

/// Waits (bounded) until exactly one `transport` connection is open and it
/// is not `old`; returns its id. Every open and close changes the
/// registry's total, so each change is a moment to look again.
async fn one_connection_besides(server: &Server, transport: Transport, old: Option<u64>) -> u64 {
    let mut total = server.registry.watch_total();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let [id] = connections(server, transport)[..]
            && Some(id) != old
        {
            return id;
        }
        let changed = tokio::time::timeout_at(deadline, total.changed()).await;
        assert!(
            matches!(changed, Ok(Ok(()))),
            "no new {transport:?} connection within {WAIT:?}"
        );
    }
}

/// A demo client process, killed on drop, whose stdout is read line by line.
struct Client {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Every stdout line read so far.
    lines: Vec<String>,
}

impl Client {
    fn spawn(program: &str, args: &[&str]) -> Client {
        let mut child = Command::new(program)
            .args(args)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Client {
            child,
            stdout,
            lines: Vec::new(),
        }
    }

    /// The next stdout line `want` accepts (earlier ones are kept in `lines`).
    async fn line_where(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let line = tokio::time::timeout_at(deadline, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}; got {:#?}", self.lines))
                .unwrap()
                .unwrap_or_else(|| panic!("stdout ended before {what}; got {:#?}", self.lines));
            self.lines.push(line.clone());
            if want(&line) {
                return line;
            }
        }
    }

    /// Waits (bounded) for the process to exit by itself, reading the rest
    /// of its stdout into `lines`.
    async fn exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + WAIT;
        while let Some(line) = tokio::time::timeout_at(deadline, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the client did not exit; got {:#?}", self.lines))
            .unwrap()
        {
            self.lines.push(line);
        }
        tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .expect("the client closed stdout but did not exit")
            .unwrap()
    }
}

fn note(title: &str) -> ServerEvent {
    ServerEvent::NoteUpdated(NoteUpdated {
        note_id: Uuid::now_v7(),
        title: Some(title.to_owned()),
        tags: vec!["smoke".to_owned()],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    })
}

fn job_queued() -> ServerEvent {
    ServerEvent::JobQueued(JobQueued {
        job_id: Uuid::now_v7(),
        job_type: "Embedding".to_owned(),
        note_id: None,
    })
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
}

#[tokio::test]
async fn ws_tail_prints_the_selected_events_and_exits_after_count() {
    let server = Server::start(&[]).await;
    let url = format!("ws://{}/api/v1/ws", server.addr);
    let mut tail = Client::spawn(
        env!("CARGO_BIN_EXE_ws-tail"),
        &[
            "--url",
            &url,
            "--refresh",
            "--events",
            "NoteUpdated",
            "--count",
            "1",
        ],
    );
    // The connection snapshot, then the answers to `subscribe` and `refresh`.
    let first = tail.line_where("a first line", |_| true).await;
    assert_eq!(json(&first)["type"], "QueueStatus", "{first}");
    let ack = tail
        .line_where("the subscription", |l| l.contains("subscribed"))
        .await;
    assert!(
        json(&ack)["events"]
            .as_array()
            .unwrap()
            .contains(&"NoteUpdated".into())
    );
    tail.line_where("the refresh answer", |l| json(l)["type"] == "QueueStatus")
        .await;

    // The filter applies from here on: the job event must not come through.
    server.bus.publish(job_queued());
    let published = server.bus.publish(note("ws smoke"));
    let line = tail
        .line_where("the NoteUpdated", |l| json(l)["type"] == "NoteUpdated")
        .await;
    assert_eq!(line.as_bytes(), &published.json()[..], "the flat wire JSON");
    assert!(tail.exit().await.success(), "--count 1 ends with success");
    assert!(
        !tail.lines.iter().any(|l| l.contains("JobQueued")),
        "unsubscribed event printed: {:#?}",
        tail.lines
    );
}

#[tokio::test]
async fn ws_tail_rejects_unknown_event_names() {
    let out = Command::new(env!("CARGO_BIN_EXE_ws-tail"))
        .args([
            "--url",
            "ws://127.0.0.1:9/api/v1/ws",
            "--events",
            "NoSuchEvent",
        ])
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NoSuchEvent"));
}

#[tokio::test]
async fn ws_tail_reconnects_when_the_server_drops_it() {
    let server = Server::start(&[]).await;
    let url = format!("ws://{}/api/v1/ws", server.addr);
    let mut tail = Client::spawn(
        env!("CARGO_BIN_EXE_ws-tail"),
        &["--url", &url, "--events", "note", "--count", "1"],
    );
    tail.line_where("the subscription", |l| l.contains("subscribed"))
        .await;
    let first = one_connection_besides(&server, Transport::WebSocket, None).await;
    // Kicked (1008): like the UI, the tail comes back by itself.
    assert!(server.registry.disconnect(first));
    one_connection_besides(&server, Transport::WebSocket, Some(first)).await;
    tail.line_where("the subscription again", |l| l.contains("subscribed"))
        .await;
    let published = server.bus.publish(note("after the kick"));
    let line = tail
        .line_where("the NoteUpdated", |l| json(l)["type"] == "NoteUpdated")
        .await;
    assert_eq!(line.as_bytes(), &published.json()[..]);
    assert!(tail.exit().await.success());
}

/// Runs `sse-tail` once with `--count 2`, publishing `before` notes once it
/// is connected; returns its stdout lines.
async fn sse_tail_run(server: &Server, state: &str, titles: &[&str]) -> Vec<String> {
    let mut tail = Client::spawn(
        env!("CARGO_BIN_EXE_sse-tail"),
        &[
            "--server",
            &server.url(""),
            "--events",
            "NoteUpdated",
            "--state-file",
            state,
            "--count",
            "2",
        ],
    );
    // The connection confirmation (no id) means the stream is live.
    let first = tail
        .line_where("the confirmation", |l| l.starts_with("- QueueStatus "))
        .await;
    assert!(first.starts_with("- QueueStatus {"), "{first}");
    for title in titles {
        server.bus.publish(note(title));
    }
    assert!(tail.exit().await.success(), "{:#?}", tail.lines);
    tail.lines
}

/// The titles of the printed `NoteUpdated` events, with their ids.
fn notes(lines: &[String]) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ' ');
            let id = parts.next()?.parse().ok()?;
            (parts.next()? == "NoteUpdated").then_some(())?;
            let title = json(parts.next()?)["title"].as_str()?.to_owned();
            Some((id, title))
        })
        .collect()
}

#[tokio::test]
async fn sse_tail_resumes_with_last_event_id_across_runs() {
    let server = Server::start(&[]).await;
    let state = server.dir().join("sse-tail-last-id");
    let state_arg = state.to_str().unwrap();

    // Run 1: a fresh start, two live events.
    let run1 = notes(&sse_tail_run(&server, state_arg, &["a", "b"]).await);
    assert_eq!(
        run1.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert_eq!(
        saved.trim(),
        run1[1].0.to_string(),
        "the state file holds b's id"
    );

    // While no client runs, two more events (and an unrelated one).
    let missed: Vec<u64> = ["c", "d"]
        .iter()
        .map(|t| server.bus.publish(note(t)).seq())
        .collect();
    server.bus.publish(job_queued());

    // Run 2 resumes after b: replays c and d, nothing already seen.
    let mut tail = Client::spawn(
        env!("CARGO_BIN_EXE_sse-tail"),
        &[
            "--server",
            &server.url(""),
            "--events",
            "NoteUpdated",
            "--state-file",
            state_arg,
            "--count",
            "2",
        ],
    );
    assert!(tail.exit().await.success(), "{:#?}", tail.lines);
    let run2 = notes(&tail.lines);
    assert_eq!(
        run2,
        [(missed[0], "c".to_owned()), (missed[1], "d".to_owned())],
        "{:#?}",
        tail.lines
    );
    assert!(
        !tail.lines.iter().any(|l| l.contains("resync_required")),
        "{:#?}",
        tail.lines
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap().trim(),
        missed[1].to_string()
    );
}

#[tokio::test]
async fn sse_tail_stops_on_a_refused_filter() {
    let server = Server::start(&[]).await;
    let state = server.dir().join("unused-id");
    let out = Command::new(env!("CARGO_BIN_EXE_sse-tail"))
        .args(["--server", &server.url(""), "--events", "NoSuchEvent"])
        .args(["--state-file", state.to_str().unwrap()])
        .output();
    let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("NoSuchEvent"),
        "{stderr}"
    );
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// A delivery body and headers signed with `secret` at `ts` (HMAC scheme
/// only, or both schemes).
fn signed_at(secret: &str, body: &str, standard: bool, ts: i64) -> reqwest::header::HeaderMap {
    use event_webhook::signing::{matric_signature, standard_signature};
    let mut h = reqwest::header::HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("x-matric-event", "NoteUpdated".parse().unwrap());
    h.insert("webhook-id", "evt-by-hand".parse().unwrap());
    h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
    h.insert(
        "x-matric-signature",
        matric_signature(secret, body.as_bytes()).parse().unwrap(),
    );
    if standard {
        h.insert(
            "webhook-signature",
            standard_signature(secret, "evt-by-hand", ts, body.as_bytes())
                .parse()
                .unwrap(),
        );
    }
    h
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// [`signed_at`] now.
fn signed(secret: &str, body: &str, standard: bool) -> reqwest::header::HeaderMap {
    signed_at(secret, body, standard, unix_now())
}

#[tokio::test]
async fn webhook_receiver_verifies_deliveries_and_rejects_bad_signatures() {
    let mut receiver = Client::spawn(
        env!("CARGO_BIN_EXE_webhook-receiver"),
        &["--addr", "127.0.0.1:0", "--secret", SECRET, "--count", "2"],
    );
    let first = receiver.line_where("the address", |_| true).await;
    let addr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    let hook_url = format!("http://{addr}/hooks/matric");
    let http = http();

    // Forged, missing, replayed or stale signatures: 401, nothing printed
    // or counted.
    let body = r#"{"id":"evt-by-hand","event":"NoteUpdated","timestamp":"2026-01-01T00:00:00Z","data":{"type":"NoteUpdated"}}"#;
    for headers in [
        signed("whsec_b3RoZXI=", body, true),
        signed("whsec_b3RoZXI=", body, false),
        {
            // A valid HMAC but a forged Standard signature: both must hold.
            let mut h = signed(SECRET, body, true);
            h.insert("webhook-signature", "v1,AAAA".parse().unwrap());
            h
        },
        // A captured delivery replayed with a fresh timestamp and only the
        // body-only HMAC (which covers no timestamp): refused.
        signed(SECRET, body, false),
        // A genuine Standard signature, but ten minutes old.
        signed_at(SECRET, body, true, unix_now() - 600),
        reqwest::header::HeaderMap::new(),
    ] {
        let res = http
            .post(&hook_url)
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
    }

    // The Standard signature alone (what Standard Webhooks senders send):
    // accepted.
    let mut standard_only = signed(SECRET, body, true);
    standard_only.remove("x-matric-signature");
    let res = http
        .post(&hook_url)
        .headers(standard_only)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let line = receiver
        .line_where("the hand-signed event", |l| l.contains("evt-by-hand"))
        .await;
    assert!(line.starts_with("NoteUpdated (standard) {"), "{line}");

    // A real delivery from the server, both schemes.
    let server = Server::start(&[]).await;
    let res = http
        .post(server.url("/api/v1/webhooks"))
        .json(&serde_json::json!({
            "url": hook_url,
            "events": ["NoteUpdated"],
            "secret": SECRET,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let published = server.bus.publish(note("webhook smoke"));
    let line = receiver
        .line_where("the delivered event", |l| l.contains("webhook smoke"))
        .await;
    let (head, body) = line.split_once(" {").unwrap();
    assert_eq!(head, "NoteUpdated (standard+hmac)");
    let delivered = json(&format!("{{{body}"));
    assert_eq!(delivered["id"], published.id().to_string());
    assert_eq!(delivered["event"], "NoteUpdated");
    assert_eq!(
        delivered["data"],
        serde_json::from_slice::<serde_json::Value>(published.json()).unwrap()
    );
    // --count 2 reached: the receiver exits by itself.
    assert!(receiver.exit().await.success(), "{:#?}", receiver.lines);
}

#[tokio::test]
async fn sse_tail_resumes_after_a_dropped_connection_without_gap_or_duplicate() {
    let server = Server::start(&[]).await;
    let state = server.dir().join("sse-tail-last-id");
    let mut tail = Client::spawn(
        env!("CARGO_BIN_EXE_sse-tail"),
        &[
            "--server",
            &server.url(""),
            "--events",
            "NoteUpdated",
            "--state-file",
            state.to_str().unwrap(),
            "--count",
            "3",
        ],
    );
    tail.line_where("the confirmation", |l| l.starts_with("- QueueStatus "))
        .await;
    server.bus.publish(note("a"));
    tail.line_where("a", |l| l.contains(r#""title":"a""#)).await;
    let first = one_connection_besides(&server, Transport::Sse, None).await;
    assert!(server.registry.disconnect(first));
    // Published while the tail is (most likely) away: replayed on return.
    server.bus.publish(note("b"));
    one_connection_besides(&server, Transport::Sse, Some(first)).await;
    server.bus.publish(note("c"));
    assert!(tail.exit().await.success(), "{:#?}", tail.lines);
    let titles: Vec<String> = notes(&tail.lines).into_iter().map(|(_, t)| t).collect();
    assert_eq!(titles, ["a", "b", "c"], "{:#?}", tail.lines);
}

#[tokio::test]
async fn sse_tail_reports_resync_required_for_an_unknown_saved_id() {
    let server = Server::start(&[]).await;
    let state = server.dir().join("sse-tail-last-id");
    std::fs::write(&state, "12345").unwrap();
    let mut tail = Client::spawn(
        env!("CARGO_BIN_EXE_sse-tail"),
        &[
            "--server",
            &server.url(""),
            "--events",
            "NoteUpdated",
            "--state-file",
            state.to_str().unwrap(),
            "--count",
            "1",
        ],
    );
    let first = tail.line_where("a first line", |_| true).await;
    assert!(first.starts_with("- resync_required {"), "{first}");
    assert_eq!(
        json(first.splitn(3, ' ').nth(2).unwrap())["last_event_id"],
        "12345"
    );
    tail.line_where("the confirmation", |l| l.starts_with("- QueueStatus "))
        .await;
    let published = server.bus.publish(note("fresh"));
    assert!(tail.exit().await.success(), "{:#?}", tail.lines);
    assert_eq!(notes(&tail.lines), [(published.seq(), "fresh".to_owned())]);
    // The stale id is replaced by the new one.
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        published.seq().to_string()
    );
}
