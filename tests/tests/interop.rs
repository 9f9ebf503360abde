//! Interop matrix: the host's SSE (`/api/v1/events`) and WebSocket
//! (`/api/v1/ws`) endpoints driven by clients no one here wrote.
//!
//! | client | SSE | WebSocket |
//! |---|---|---|
//! | Chromium's native `EventSource` / `WebSocket` (WebDriver) | yes | yes |
//! | npm `eventsource` / `ws` under Node | yes | yes |
//! | PyPI `httpx-sse` (over `httpx`) / `websockets` | yes | yes |
//!
//! SSE: event names, ids and data of a live event; the connection kicked
//! (`DELETE /api/v1/connections/{id}`) and an event published during the
//! gap, which the client must get on reconnecting with `Last-Event-ID`
//! (replayed: a client without it would only see later events) — not
//! before the server's `retry:` hint has passed; then a live event on the
//! new connection. WebSocket: the initial `QueueStatus`, a `refresh`
//! answered by another, close code 1008 on the operator's kick and, after
//! reconnecting, 1001 on shutdown.
//!
//! The clients are small scripts in `tests/interop/` that print JSON lines
//! (the browser's collects them in the page); this test parses and judges
//! them. Node packages are installed into `<target>/interop/node`, Python
//! packages into the virtualenv `<target>/interop/venv` (pinned versions,
//! once; later runs reuse them). Where Node, Python (with `venv`), the
//! package registries or Chromium are missing, a test prints why and passes
//! — unless `EVENT_TEST_REQUIRE_SERVICES=1` (CI), where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use event_server::testing::{Server, TempDir, client};
use fantoccini::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// Bound on each wait for a client's next line.
const WAIT: Duration = Duration::from_secs(30);
/// How long a client script may live.
const CLIENT_SECS: u64 = 90;
/// The server's `retry:` hint: not any client's default (3 s), so a client
/// that reconnects after it honoured the hint.
const RETRY_MS: u64 = 4000;
const NODE_PACKAGES: [(&str, &str); 2] = [("eventsource", "4.1.1"), ("ws", "8.23.1")];
const PYTHON_PACKAGES: [(&str, &str); 3] = [
    ("httpx", "0.28.1"),
    ("httpx-sse", "0.4.3"),
    ("websockets", "15.0.1"),
];
const INSTALL_LIMIT: Duration = Duration::from_secs(300);

fn required() -> bool {
    std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Prints why a test is skipped, or fails under
/// `EVENT_TEST_REQUIRE_SERVICES=1`.
fn skip(test: &str, why: &str) {
    if required() {
        panic!("{test}: {why}, but EVENT_TEST_REQUIRE_SERVICES=1");
    }
    eprintln!("{test} skipped: {why}");
}

/// `<target>/interop`, beside the test binary's profile directory.
fn interop_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/interop-<hash>
    exe.ancestors().nth(3).unwrap().join("interop")
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Runs `command` to its end within [`INSTALL_LIMIT`].
fn run_limited(command: &mut std::process::Command, what: &str) -> Result<(), String> {
    let mut child = command
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + INSTALL_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what} failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} took over {INSTALL_LIMIT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    }
}

/// The `node_modules` holding the pinned Node packages, installed once.
fn node_modules() -> Result<&'static Path, String> {
    static NODE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    NODE.get_or_init(|| {
        let prefix = interop_dir().join("node");
        let modules = prefix.join("node_modules");
        let installed = || {
            NODE_PACKAGES.iter().all(|(name, version)| {
                std::fs::read_to_string(modules.join(name).join("package.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok())
                    .is_some_and(|p| p["version"] == *version)
            })
        };
        let node = std::process::Command::new("node").arg("--version").output();
        if !node.is_ok_and(|o| o.status.success()) {
            return Err("`node` is not on PATH (Debian: nodejs, npm)".to_owned());
        }
        if installed() {
            return Ok(modules.clone());
        }
        std::fs::create_dir_all(&prefix).map_err(|e| e.to_string())?;
        let specs: Vec<String> = NODE_PACKAGES
            .iter()
            .map(|(n, v)| format!("{n}@{v}"))
            .collect();
        eprintln!(
            "interop: npm install --prefix {} {}",
            prefix.display(),
            specs.join(" ")
        );
        run_limited(
            std::process::Command::new("npm")
                .args([
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--prefix",
                ])
                .arg(&prefix)
                .args(&specs),
            "npm install",
        )?;
        if installed() {
            Ok(modules.clone())
        } else {
            Err(format!("npm did not install {specs:?}"))
        }
    })
    .as_deref()
    .map_err(Clone::clone)
}

/// The virtualenv's python with the pinned Python packages, installed once.
fn python() -> Result<&'static Path, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = interop_dir().join("venv");
            let python = venv.join("bin/python");
            let check = format!(
                "import importlib.metadata as m; print(all(m.version(n) == v for n, v in {:?}))",
                PYTHON_PACKAGES
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect::<Vec<_>>()
            )
            .replace("\"", "'");
            let installed = || {
                std::process::Command::new(&python)
                    .args(["-c", &check])
                    .stderr(Stdio::null())
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
            };
            if installed() {
                return Ok(python.clone());
            }
            if !python.exists() {
                let ok = std::process::Command::new("python3")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !ok {
                    return Err("`python3` is not on PATH".to_owned());
                }
                run_limited(
                    std::process::Command::new("python3")
                        .args(["-m", "venv"])
                        .arg(&venv),
                    "python3 -m venv (Debian: python3-venv)",
                )?;
            }
            let specs: Vec<String> = PYTHON_PACKAGES
                .iter()
                .map(|(n, v)| format!("{n}=={v}"))
                .collect();
            eprintln!(
                "interop: pip install {} into {}",
                specs.join(" "),
                venv.display()
            );
            run_limited(
                std::process::Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        "--quiet",
                    ])
                    .args(&specs),
                "pip install",
            )?;
            if installed() {
                Ok(python.clone())
            } else {
                Err(format!("pip did not install {specs:?}"))
            }
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// Where a client's JSON lines come from.
enum Feed {
    /// A script's stdout (the process is killed on drop).
    Process {
        _child: Box<Child>,
        lines: Lines<BufReader<ChildStdout>>,
    },
    /// The page's `window.__interop`.
    Browser {
        browser: Client,
        queue: VecDeque<Value>,
    },
}

impl Feed {
    fn spawn(program: &Path, script: &str, url: &str, node_path: Option<&Path>) -> Feed {
        let mut command = Command::new(program);
        command
            .arg(scripts().join(script))
            .arg(url)
            .arg(CLIENT_SECS.to_string())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(path) = node_path {
            command.env("NODE_PATH", path);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Feed::Process {
            _child: Box::new(child),
            lines,
        }
    }

    /// The client's next line, within [`WAIT`].
    async fn next(&mut self, who: &str) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        match self {
            Feed::Process { lines, .. } => {
                let line = tokio::time::timeout_at(deadline, lines.next_line())
                    .await
                    .unwrap_or_else(|_| panic!("{who}: no line within {WAIT:?}"))
                    .unwrap()
                    .unwrap_or_else(|| panic!("{who}: the client exited"));
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("{who}: not JSON ({e}): {line}"));
                eprintln!("{who}: {line}");
                value
            }
            Feed::Browser { browser, queue } => loop {
                if let Some(value) = queue.pop_front() {
                    eprintln!("{who}: {value}");
                    return value;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{who}: nothing from the page within {WAIT:?}"
                );
                let got = browser
                    .execute(
                        "const a = window.__interop || []; window.__interop = []; return a;",
                        vec![],
                    )
                    .await
                    .unwrap();
                for line in got.as_array().cloned().unwrap_or_default() {
                    queue.push_back(serde_json::from_str(line.as_str().unwrap()).unwrap());
                }
                if queue.is_empty() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }

    /// Skips lines until one satisfies `want`; returns it and the lines
    /// skipped.
    async fn until(&mut self, who: &str, want: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let line = self.next(who).await;
            if want(&line) {
                return (line, skipped);
            }
            skipped.push(line);
        }
    }
}

fn note(id: uuid::Uuid) -> Value {
    json!({"type":"NoteUpdated","note_id":id,"tags":[],"has_ai_content":false,"has_links":false})
}

fn is_event(line: &Value, name: &str) -> bool {
    line["kind"] == "event" && line["event"] == name
}

fn is_kind(line: &Value, kind: &str) -> bool {
    line["kind"] == kind
}

/// Publishes one note; its `seq` (the v1 frames' id) and note id.
async fn publish_note(server: &Server) -> (String, String) {
    let note_id = uuid::Uuid::now_v7();
    let (seq, _) = server.publish(&note(note_id)).await.remove(0);
    (seq.to_string(), note_id.to_string())
}

/// Asks the server to close its only connection, as an operator would.
async fn kick_the_connection(server: &Server, who: &str) {
    let open = server.registry.list();
    assert_eq!(open.len(), 1, "{who}: connections {open:?}");
    let res = client()
        .delete(server.url(&format!("/api/v1/connections/{}", open[0].id)))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204, "{who}: the kick was refused");
}

/// Checks one `NoteUpdated` event line against what was published.
fn assert_note(who: &str, line: &Value, seq: &str, note_id: &str) {
    assert!(is_event(line, "NoteUpdated"), "{who}: {line}");
    assert_eq!(line["id"], seq, "{who}: the event id is its seq: {line}");
    let data: Value = serde_json::from_str(line["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["type"], "NoteUpdated", "{who}: {data}");
    assert_eq!(data["note_id"], note_id, "{who}: {data}");
}

/// The SSE scenario, whatever the client; returns the lines it skipped
/// over.
async fn sse_scenario(server: &Server, feed: &mut Feed, who: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    let (queue, before) = feed.until(who, |l| is_event(l, "QueueStatus")).await;
    assert!(
        before.iter().any(|l| is_kind(l, "open")),
        "{who}: {before:?}"
    );
    let status: Value = serde_json::from_str(queue["data"].as_str().unwrap()).unwrap();
    assert_eq!(status["type"], "QueueStatus", "{who}: {status}");
    server.wait_connections(1).await;

    // A live event: name, id and data.
    let (seq, note_id) = publish_note(server).await;
    let (line, _) = feed.until(who, |l| is_event(l, "NoteUpdated")).await;
    assert_note(who, &line, &seq, &note_id);

    // Kicked; an event published while it is away.
    kick_the_connection(server, who).await;
    let kicked = Instant::now();
    feed.until(who, |l| is_kind(l, "error")).await;
    server.wait_connections(0).await;
    let (gap_seq, gap_note) = publish_note(server).await;
    assert_eq!(
        server.registry.total(),
        0,
        "{who}: reconnected before the gap's event was published"
    );

    // Reconnected with Last-Event-ID: the gap's event comes first (the
    // first one is not sent again), and not before the retry hint passed.
    let (line, skipped) = feed.until(who, |l| is_event(l, "NoteUpdated")).await;
    let waited = kicked.elapsed();
    seen.extend(skipped);
    assert_note(who, &line, &gap_seq, &gap_note);
    assert!(
        waited >= Duration::from_millis(RETRY_MS - 100),
        "{who}: reconnected after {waited:?}, before the retry hint of {RETRY_MS} ms"
    );

    // Live again on the new connection.
    server.wait_connections(1).await;
    let (seq, note_id) = publish_note(server).await;
    let (line, skipped) = feed.until(who, |l| is_event(l, "NoteUpdated")).await;
    seen.extend(skipped);
    assert_note(who, &line, &seq, &note_id);
    seen
}

/// The WebSocket scenario, whatever the client: `server` is shut down.
async fn ws_scenario(server: &mut Server, feed: &mut Feed, who: &str) {
    for (round, code) in [(1, 1008), (2, 1001)] {
        let (first, before) = feed.until(who, |l| is_kind(l, "message")).await;
        assert!(
            before.iter().any(|l| is_kind(l, "open")),
            "{who}: {before:?}"
        );
        let status: Value = serde_json::from_str(first["data"].as_str().unwrap()).unwrap();
        assert_eq!(
            status["type"], "QueueStatus",
            "{who}: first message {status}"
        );
        // The client sent `refresh`: another snapshot.
        let (again, _) = feed
            .until(who, |l| {
                is_kind(l, "message")
                    && l["data"]
                        .as_str()
                        .and_then(|d| serde_json::from_str::<Value>(d).ok())
                        .is_some_and(|v| v["type"] == "QueueStatus")
            })
            .await;
        assert!(again["data"].is_string(), "{who}: {again}");
        // The client reconnects at once: the kicked connection may still be
        // leaving when round 2 starts.
        server.wait_connections(1).await;
        if round == 1 {
            kick_the_connection(server, who).await;
        } else {
            server.shutdown().await;
        }
        let (close, _) = feed.until(who, |l| is_kind(l, "close")).await;
        assert_eq!(close["code"], code, "{who}: round {round}: {close}");
    }
}

async fn start_server() -> Server {
    Server::start(&["--sse-retry-ms", &RETRY_MS.to_string()]).await
}

#[tokio::test]
async fn sse_npm_eventsource() {
    let who = "sse/node-eventsource";
    let modules = match node_modules() {
        Ok(m) => m,
        Err(why) => return skip(who, &why),
    };
    let server = start_server().await;
    let mut feed = Feed::spawn(
        Path::new("node"),
        "sse-eventsource.cjs",
        &server.url("/api/v1/events"),
        Some(modules),
    );
    let _ = sse_scenario(&server, &mut feed, who).await;
}

#[tokio::test]
async fn sse_python_httpx_sse() {
    let who = "sse/python-httpx-sse";
    let python = match python() {
        Ok(p) => p,
        Err(why) => return skip(who, &why),
    };
    let server = start_server().await;
    let mut feed = Feed::spawn(python, "sse_httpx.py", &server.url("/api/v1/events"), None);
    sse_scenario(&server, &mut feed, who).await;
}

#[tokio::test]
async fn ws_npm_ws() {
    let who = "ws/node-ws";
    let modules = match node_modules() {
        Ok(m) => m,
        Err(why) => return skip(who, &why),
    };
    let mut server = start_server().await;
    let mut feed = Feed::spawn(
        Path::new("node"),
        "ws-ws.cjs",
        &server.ws_url("/api/v1/ws"),
        Some(modules),
    );
    ws_scenario(&mut server, &mut feed, who).await;
}

#[tokio::test]
async fn ws_python_websockets() {
    let who = "ws/python-websockets";
    let python = match python() {
        Ok(p) => p,
        Err(why) => return skip(who, &why),
    };
    let mut server = start_server().await;
    let mut feed = Feed::spawn(
        python,
        "ws_websockets.py",
        &server.ws_url("/api/v1/ws"),
        None,
    );
    ws_scenario(&mut server, &mut feed, who).await;
}

// --- the browser ---------------------------------------------------------

/// Starts the page's client (`tests/interop/browser.js`) for `transport`.
async fn browser_feed(browser: Client, server: &Server, transport: &str) -> Feed {
    // A page of the server's own origin: same-origin EventSource, and an
    // `Origin` the WebSocket endpoint accepts.
    browser.goto(&server.url("/health")).await.unwrap();
    let url = match transport {
        "sse" => server.url("/api/v1/events"),
        _ => server.ws_url("/api/v1/ws"),
    };
    let script = std::fs::read_to_string(scripts().join("browser.js")).unwrap();
    browser
        .execute(&script, vec![json!(transport), json!(url)])
        .await
        .unwrap();
    Feed::Browser {
        browser,
        queue: VecDeque::new(),
    }
}

/// One browser session for both transports (one Chromium at a time on a
/// small machine).
#[tokio::test]
async fn browser_native_eventsource_and_websocket() {
    let who = "browser";
    let missing = event_test_support::browser::missing();
    if !missing.is_empty() {
        return skip(
            who,
            &format!(
                "{} not found (Debian: chromium, chromium-driver)",
                missing.join(" and ")
            ),
        );
    }
    let driver = event_test_support::browser::Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;

    let server = start_server().await;
    let mut feed = browser_feed(browser.clone(), &server, "sse").await;
    let _ = sse_scenario(&server, &mut feed, "sse/chromium-EventSource").await;
    browser
        .execute("window.__es.close();", vec![])
        .await
        .unwrap();
    drop(server);

    let mut server = start_server().await;
    let mut feed = browser_feed(browser.clone(), &server, "ws").await;
    ws_scenario(&mut server, &mut feed, "ws/chromium-WebSocket").await;
    browser.close().await.unwrap();
}
