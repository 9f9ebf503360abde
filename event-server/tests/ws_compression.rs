//! WebSocket permessage-deflate (RFC 7692) through the `event-server`
//! binary, with clients no one here wrote: PyPI `websockets` (a script in
//! `tests/clients/`) and Chromium's own `WebSocket`.
//!
//! Each test compares what a compressing client decodes with what a plain
//! client (tokio-tungstenite, which offers no extension) receives for the
//! same events: the texts must be byte-identical, events of at least
//! `WS_COMPRESS_MIN_BYTES` must have come compressed (RSV1, fewer bytes on
//! the wire) and smaller ones plain. Then: a compressed `subscribe` and
//! `refresh` are understood, a client's `server_max_window_bits=9` is
//! honoured (events over 512 bytes come plain, the rest compressed, all
//! decoded the same), a compressed message that inflates beyond the 64 KiB limit
//! closes with 1009, and `WS_COMPRESSION=off` / `WS_COMPRESS_MIN_BYTES`
//! change what is negotiated and compressed.
//!
//! Python's packages go into `<target>/interop/venv` (once); Chromium is
//! Debian's. Without them a test prints why and passes, unless
//! `EVENT_TEST_REQUIRE_SERVICES=1`, where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;
#[path = "common/page.rs"]
mod page;
#[path = "common/python.rs"]
mod python;

use event_server::testing::{TempDir, client};
use futures_util::StreamExt;
use host::{Host, WAIT};
use python::{Script, skip};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// What the server answers to any acceptable offer that names no window.
const NEGOTIATED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";
/// The default `WS_COMPRESS_MIN_BYTES`.
const MIN_BYTES: usize = 256;
/// How long a client script may live.
const SCRIPT_SECS: &str = "90";

/// A host on a temporary database, with `env` on top.
async fn start(dir: &TempDir, env: &[(&str, &str)]) -> Host {
    let mut all = vec![("DATABASE_URL", dir.sqlite_url())];
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Host::start(&all).await
}

fn ws_url(host: &Host) -> String {
    format!("ws://{}/api/v1/ws", host.addr)
}

/// A note whose flat JSON is `size` bytes (at least 133), with a title of
/// words (text compresses like text).
fn note(size: usize) -> Value {
    const WORDS: [&str; 8] = [
        "embedding",
        "chunk",
        "note",
        "linked",
        "summary",
        "tag",
        "memory",
        "job",
    ];
    // The JSON of a note with an empty title.
    const BASE: usize = 133;
    let mut title = String::new();
    let mut i = 0;
    while title.len() + BASE < size {
        title.push_str(WORDS[(i * 5 + i / 8) % WORDS.len()]);
        title.push(' ');
        i += 1;
    }
    title.truncate(size.saturating_sub(BASE));
    json!({
        "type": "NoteUpdated",
        "note_id": uuid::Uuid::now_v7(),
        "title": title,
        "tags": [],
        "has_ai_content": false,
        "has_links": false,
    })
}

async fn publish(host: &Host, event: &Value) {
    let res = client()
        .post(host.url("/api/v1/events"))
        .json(event)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "publish of {event}");
}

/// A client that offers no extension: the reference texts.
struct Plain(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Plain {
    /// Connects and reads the initial `QueueStatus`.
    async fn connect(host: &Host) -> Plain {
        let (ws, response) = tokio_tungstenite::connect_async(ws_url(host))
            .await
            .unwrap();
        assert!(
            response.headers().get("sec-websocket-extensions").is_none(),
            "nothing was offered, nothing may be agreed"
        );
        let mut plain = Plain(ws);
        assert!(plain.text().await.starts_with(r#"{"type":"QueueStatus""#));
        plain
    }

    async fn text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(WAIT, self.0.next())
                .await
                .expect("the plain client got nothing")
                .unwrap()
                .unwrap();
            match message {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("plain client: {other:?}"),
            }
        }
    }
}

/// The Python client, or why there is none.
fn python_client(who: &str) -> Option<&'static std::path::Path> {
    match python::python() {
        Ok(python) => Some(python),
        Err(why) => {
            skip(who, &why);
            None
        }
    }
}

/// Starts the Python client on `host` with `args` after the URL; returns
/// it with its `open` line read.
async fn python_on(python: &std::path::Path, host: &Host, args: &[&str]) -> (Script, Value) {
    let mut all = vec![ws_url(host), SCRIPT_SECS.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let mut script = Script::spawn(python, "ws_deflate.py", &all);
    let open = script.next_of("open").await;
    let first = script.next_of("message").await;
    assert!(
        first["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(r#"{"type":"QueueStatus""#)),
        "{first}"
    );
    (script, open)
}

/// Publishes notes of `sizes` and returns, for each, the plain text and
/// the Python client's message line.
async fn deliver(
    host: &Host,
    plain: &mut Plain,
    script: &mut Script,
    sizes: &[usize],
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for &size in sizes {
        publish(host, &note(size)).await;
        let text = plain.text().await;
        assert_eq!(text.len(), size.max(133), "{text}");
        let line = script.next_of("message").await;
        assert_eq!(
            line["text"].as_str(),
            Some(text.as_str()),
            "the compressed stream decoded differently"
        );
        out.push((text, line));
    }
    out
}

/// Sizes either side of the threshold, and large ones.
fn sizes() -> Vec<usize> {
    let mut sizes: Vec<usize> = (240..=272).step_by(4).collect();
    sizes.extend([120, 600, 2_000, 9_000, 40_000]);
    sizes
}

#[tokio::test]
async fn python_websockets_decodes_byte_identical_events_and_is_understood() {
    let who = "ws-compression/python-websockets";
    let Some(python) = python_client(who) else {
        return;
    };
    let dir = TempDir::new();
    let host = start(&dir, &[]).await;
    let mut plain = Plain::connect(&host).await;
    let (mut py, open) = python_on(python, &host, &[]).await;
    assert_eq!(open["extensions"], NEGOTIATED);

    let delivered = deliver(&host, &mut plain, &mut py, &sizes()).await;
    let mut compressed = 0;
    for (text, line) in &delivered {
        let want = text.len() >= MIN_BYTES;
        assert_eq!(line["compressed"], want, "{} bytes: {line}", text.len());
        if want {
            compressed += 1;
            let wire = line["wire"].as_u64().unwrap() as usize;
            assert!(
                wire < text.len(),
                "{wire} bytes on the wire for {}",
                text.len()
            );
        }
    }
    assert!(
        compressed >= 8,
        "{compressed} of {} compressed",
        delivered.len()
    );

    // A compressed `subscribe` is understood: only JobProgress from now on.
    py.command(&json!({"send": r#"{"type":"subscribe","events":["JobProgress"]}"#}))
        .await;
    assert_eq!(py.next_of("sent").await["compressed"], true);
    let reply: Value =
        serde_json::from_str(py.next_of("message").await["text"].as_str().unwrap()).unwrap();
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["events"], json!(["JobProgress"]), "{reply}");
    // So is a compressed `refresh`.
    py.command(&json!({"send": "refresh"})).await;
    assert_eq!(py.next_of("sent").await["compressed"], true);
    let status = py.next_of("message").await;
    assert!(
        status["text"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"type":"QueueStatus""#),
        "{status}"
    );
    publish(&host, &note(3_000)).await;
    let job = uuid::Uuid::now_v7();
    publish(
        &host,
        &json!({"type":"JobProgress","job_id":job,"progress":40,"message":"embedding ".repeat(40)}),
    )
    .await;
    let line = py.next_of("message").await;
    let event: Value = serde_json::from_str(line["text"].as_str().unwrap()).unwrap();
    assert_eq!(
        event["type"], "JobProgress",
        "the note should have been filtered: {event}"
    );
    assert_eq!(event["job_id"], job.to_string());
    assert_eq!(line["compressed"], true);
    py.command(&json!({"close": true})).await;
    assert_eq!(py.next_of("closed").await["code"], 1000);
}

#[tokio::test]
async fn a_small_server_window_gets_large_events_plain_and_decodes_everything() {
    let who = "ws-compression/server_max_window_bits";
    let Some(python) = python_client(who) else {
        return;
    };
    let dir = TempDir::new();
    let host = start(&dir, &[]).await;
    let mut plain = Plain::connect(&host).await;
    let (mut py, open) = python_on(python, &host, &["--server-max-window-bits", "9"]).await;
    assert_eq!(
        open["extensions"],
        format!("{NEGOTIATED}; server_max_window_bits=9")
    );
    // Compressed alone, a message of at most 512 bytes refers at most 511
    // bytes back, within the client's window; longer ones must come plain.
    // (zlib inflates a whole frame in one call and resolves longer
    // distances from its output, so the flags are what shows the rule
    // kept, not a decoding error.)
    let delivered = deliver(
        &host,
        &mut plain,
        &mut py,
        &[300, 400, 500, 512, 520, 2_000, 40_000],
    )
    .await;
    for (text, line) in &delivered {
        let want = (MIN_BYTES..=512).contains(&text.len());
        assert_eq!(line["compressed"], want, "{} bytes: {line}", text.len());
    }
    assert!(delivered.iter().any(|(_, l)| l["compressed"] == true));
    assert!(delivered.iter().any(|(_, l)| l["compressed"] == false));
}

#[tokio::test]
async fn a_zip_bomb_closes_with_1009() {
    let who = "ws-compression/zip-bomb";
    let Some(python) = python_client(who) else {
        return;
    };
    let dir = TempDir::new();
    let host = start(&dir, &[]).await;
    let (mut py, _) = python_on(python, &host, &[]).await;
    // Within the limit once inflated: answered.
    py.command(&json!({"send": format!(r#"{{"type":"ping","pad":"{}"}}"#, "a".repeat(60_000))}))
        .await;
    let sent = py.next_of("sent").await;
    assert!(sent["wire"].as_u64().unwrap() < 1_000, "{sent}");
    assert_eq!(py.next_of("message").await["text"], r#"{"type":"pong"}"#);
    // A megabyte of text in about a kilobyte: past 64 KiB inflated.
    py.command(&json!({"send": "a".repeat(1 << 20)})).await;
    let sent = py.next_of("sent").await;
    assert!(sent["wire"].as_u64().unwrap() < 4_096, "{sent}");
    let closed = py.next_of("closed").await;
    assert_eq!(closed["code"], 1009, "{closed}");
}

#[tokio::test]
async fn compression_can_be_switched_off_and_its_threshold_set() {
    let who = "ws-compression/settings";
    let Some(python) = python_client(who) else {
        return;
    };
    let dir = TempDir::new();
    let off = start(&dir, &[("WS_COMPRESSION", "off")]).await;
    let mut plain = Plain::connect(&off).await;
    let (mut py, open) = python_on(python, &off, &[]).await;
    assert_eq!(
        open["extensions"],
        Value::Null,
        "declined: nothing in the 101"
    );
    for (text, line) in deliver(&off, &mut plain, &mut py, &[2_000]).await {
        assert_eq!(line["compressed"], false, "{} bytes", text.len());
    }
    drop((py, plain, off));

    let dir = TempDir::new();
    let high = start(&dir, &[("WS_COMPRESS_MIN_BYTES", "1000")]).await;
    let mut plain = Plain::connect(&high).await;
    let (mut py, open) = python_on(python, &high, &[]).await;
    assert_eq!(open["extensions"], NEGOTIATED);
    for (text, line) in deliver(&high, &mut plain, &mut py, &[600, 990, 1_010, 3_000]).await {
        assert_eq!(
            line["compressed"],
            text.len() >= 1000,
            "{} bytes",
            text.len()
        );
    }
}

/// The lines a page's script pushes to `window.__lines`.
struct Page {
    browser: fantoccini::Client,
    lines: std::collections::VecDeque<Value>,
}

impl Page {
    /// The next line of `kind`, skipping others, within [`page::WAIT`].
    async fn next(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + page::WAIT;
        loop {
            while let Some(line) = self.lines.pop_front() {
                if line["kind"] == kind {
                    return line;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {kind} line from the page within {:?}",
                page::WAIT
            );
            let got = self
                .browser
                .execute("return window.__lines.splice(0);", vec![])
                .await
                .unwrap();
            for line in got.as_array().cloned().unwrap_or_default() {
                self.lines
                    .push_back(serde_json::from_str(line.as_str().unwrap()).unwrap());
            }
            if self.lines.is_empty() {
                tokio::time::sleep(page::POLL).await;
            }
        }
    }
}

/// Chromium's WebSocket, in a page of the host's origin: what it agreed
/// (`WebSocket.extensions`) and what it decoded.
#[tokio::test]
async fn chromium_negotiates_and_decodes_byte_identical_events() {
    if !page::browser_available() {
        return;
    }
    let _one = page::one_browser_at_a_time().await;
    let dir = TempDir::new();
    let host = start(&dir, &[]).await;
    let mut plain = Plain::connect(&host).await;
    let driver = event_test_support::browser::Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;
    browser.goto(&host.url("/health")).await.unwrap();
    browser
        .execute(
            r#"const [url] = arguments;
               window.__lines = [];
               const ws = new WebSocket(url);
               window.__ws = ws;
               const out = (o) => window.__lines.push(JSON.stringify(o));
               ws.onopen = () => out({kind: 'open', extensions: ws.extensions});
               ws.onmessage = (e) => out({kind: 'message', text: e.data});
               ws.onclose = (e) => out({kind: 'closed', code: e.code});"#,
            vec![json!(ws_url(&host))],
        )
        .await
        .unwrap();
    let mut page = Page {
        browser: browser.clone(),
        lines: Default::default(),
    };
    let open = page.next("open").await;
    assert_eq!(open["extensions"], NEGOTIATED, "{open}");
    let first = page.next("message").await;
    assert!(
        first["text"]
            .as_str()
            .unwrap()
            .starts_with(r#"{"type":"QueueStatus""#)
    );
    for size in sizes() {
        publish(&host, &note(size)).await;
        let text = plain.text().await;
        let line = page.next("message").await;
        assert_eq!(line["text"].as_str(), Some(text.as_str()), "{size}");
    }
    // What Chromium sends on the compressing connection is understood.
    browser
        .execute(r#"window.__ws.send('{"type":"ping"}');"#, vec![])
        .await
        .unwrap();
    assert_eq!(page.next("message").await["text"], r#"{"type":"pong"}"#);
    browser.close().await.unwrap();
}
