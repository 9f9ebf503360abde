//! `cargo xtask demo`: the server and the demo clients, together.
//!
//! Builds `event-server` and the `ws-tail`, `sse-tail` and
//! `webhook-receiver` examples, then starts, each as its own process:
//!
//! * the server, on `--addr` (default `127.0.0.1:3000`), with a fresh SQLite
//!   database under `target/demo/` and webhooks to loopback allowed;
//! * `webhook-receiver` on a free port, registered as a webhook (job
//!   completions, failures and note changes) with a fresh secret;
//! * `ws-tail`, subscribed to the job events;
//! * `sse-tail`, for completions, failures and note changes, resuming from
//!   `target/demo/sse-tail-last-id`;
//! * a loop here that creates a note and submits a demo job every few
//!   seconds (`Embedding`, `Linking`, and `AiRevision` on the note).
//!
//! Every process's output is interleaved on this terminal, each line prefixed
//! with its name. Ctrl-C (or `--for <secs>`) stops everything: the clients,
//! then the server, each with SIGTERM and a grace period, then SIGKILL.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How long the server may take to answer `/health` after starting.
const STARTUP: Duration = Duration::from_secs(30);
/// How long each process gets to exit after SIGTERM.
const GRACE: Duration = Duration::from_secs(6);
/// Time between two demo job submissions.
const JOB_EVERY: Duration = Duration::from_secs(3);

/// `cargo xtask demo` options.
struct Options {
    release: bool,
    addr: SocketAddr,
    /// Stop by itself after this long (for scripted runs).
    run_for: Option<Duration>,
}

const USAGE: &str = "cargo xtask demo [--release] [--addr 127.0.0.1:3000] [--for <seconds>]";

/// The options; `None` when help was asked for.
fn parse(args: &[String]) -> Result<Option<Options>, String> {
    let mut options = Options {
        release: false,
        addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        run_for: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value (usage: {USAGE})"))
        };
        match arg.as_str() {
            "--release" => options.release = true,
            "--addr" => {
                let v = value("--addr")?;
                options.addr = v
                    .parse()
                    .map_err(|e| format!("--addr {v:?}: {e} (expected e.g. 127.0.0.1:3000)"))?;
            }
            "--for" => {
                let v = value("--for")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|e| format!("--for {v:?}: {e} (expected whole seconds)"))?;
                options.run_for = Some(Duration::from_secs(secs));
            }
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown option {other:?} (usage: {USAGE})")),
        }
    }
    Ok(Some(options))
}

/// Runs the demo until Ctrl-C, SIGTERM, `--for`, or a process dying.
pub fn run(args: &[String]) -> Result<(), String> {
    let Some(options) = parse(args)? else {
        println!("usage: {USAGE}");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(demo(options))
}

async fn demo(options: Options) -> Result<(), String> {
    let profile = if options.release { "release" } else { "debug" };
    let mut build = vec![
        "build",
        "-p",
        "event-server",
        "-p",
        "examples",
        "--bin",
        "event-server",
        "--bin",
        "ws-tail",
        "--bin",
        "sse-tail",
        "--bin",
        "webhook-receiver",
    ];
    if options.release {
        build.push("--release");
    }
    crate::cargo(&build)?;
    let bins = target_dir()?.join(profile);
    let work = target_dir()?.join("demo");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    // A fresh database each run: webhooks registered by an earlier demo
    // would point at receivers that are gone.
    for name in ["events.db", "events.db-wal", "events.db-shm"] {
        let _ = std::fs::remove_file(work.join(name));
    }

    let mut procs = Procs::default();
    let result = run_all(&options, &bins, &work, &mut procs).await;
    procs.stop_all().await;
    result
}

async fn run_all(
    options: &Options,
    bins: &Path,
    work: &Path,
    procs: &mut Procs,
) -> Result<(), String> {
    let addr = options.addr;
    let mut server = Command::new(bins.join("event-server"));
    server
        .env("EVENT_SERVER_ADDR", addr.to_string())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", work.join("events.db").display()),
        )
        .env("WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8")
        .env(
            "RUST_LOG",
            // The server's per-event log lines would repeat what the
            // clients print; `RUST_LOG=info` shows them.
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,event_server=info".to_owned()),
        );
    procs.spawn("server", &mut server)?;
    wait_healthy(addr, procs).await?;

    let secret = fresh_secret();
    let mut receiver = Command::new(bins.join("webhook-receiver"));
    receiver.args(["--addr", "127.0.0.1:0", "--secret", &secret]);
    let receiver_addr = procs
        .spawn_until_line("webhook", &mut receiver, "listening on ")
        .await?;
    let (status, body) = request(
        addr,
        "POST",
        "/api/v1/webhooks",
        Some(serde_json::json!({
            "url": format!("http://{receiver_addr}/matric"),
            "events": ["JobCompleted", "JobFailed", "NoteUpdated"],
            "secret": secret,
        })),
    )
    .await?;
    if status != 201 {
        return Err(format!("registering the webhook failed: {status} {body}"));
    }

    let mut ws = Command::new(bins.join("ws-tail"));
    ws.args([
        "--url",
        &format!("ws://{addr}/api/v1/ws"),
        "--events",
        "job",
    ]);
    procs.spawn("ws-tail", &mut ws)?;
    let mut sse = Command::new(bins.join("sse-tail"));
    sse.args([
        "--server",
        &format!("http://{addr}"),
        "--types",
        "job.completed,job.failed,note",
        "--state-file",
        &work.join("sse-tail-last-id").display().to_string(),
    ]);
    procs.spawn("sse-tail", &mut sse)?;

    println!(
        "\n\
         ==> demo running\n\
         \x20   dashboard:      http://{addr}/   (open it in a browser)\n\
         \x20   SSE by hand:    curl -N 'http://{addr}/api/v1/events?types=job'\n\
         \x20   metrics:        http://{addr}/metrics\n\
         \x20   [ws-tail]  job events over the WebSocket\n\
         \x20   [sse-tail] completions, failures, notes over SSE (resumes across runs)\n\
         \x20   [webhook]  the same, as signed webhook deliveries, verified\n\
         \x20   [jobs]     a note and a job every {}s from this loop\n\
         \x20   Ctrl-C stops everything.\n",
        JOB_EVERY.as_secs()
    );

    let jobs = tokio::spawn(submit_jobs(addr));
    let outcome = tokio::select! {
        () = stop_signal() => Ok(()),
        () = sleep_for(options.run_for) => Ok(()),
        (name, status) = procs.first_exit() => Err(format!("{name} exited on its own ({status})")),
    };
    jobs.abort();
    println!("\n==> stopping");
    outcome
}

/// A secret in the `whsec_<base64>` form, unpredictable enough for a demo.
fn fresh_secret() -> String {
    let mut hex = String::new();
    for i in 0..2u64 {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        hex.push_str(&format!("{:016x}", h.finish()));
    }
    // 32 hex digits are valid base64 (24 bytes of key).
    format!("whsec_{hex}")
}

async fn sleep_for(duration: Option<Duration>) {
    match duration {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The workspace's target directory, from `cargo metadata`.
fn target_dir() -> Result<PathBuf, String> {
    let out =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .output()
            .map_err(|e| format!("could not run cargo metadata: {e}"))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad cargo metadata: {e}"))?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata has no target_directory".to_owned())
}

async fn wait_healthy(addr: SocketAddr, procs: &mut Procs) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + STARTUP;
    loop {
        if let Ok((200, _)) = request(addr, "GET", "/health", None).await {
            return Ok(());
        }
        if let Some((name, status)) = procs.exited() {
            return Err(format!(
                "{name} exited while starting ({status}); is {addr} already in use?"
            ));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the server did not answer /health within {STARTUP:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a note now and then and submits a job every [`JOB_EVERY`].
async fn submit_jobs(addr: SocketAddr) {
    let mut note_id: Option<String> = None;
    for round in 0u64.. {
        if round % 6 == 0 {
            let body = serde_json::json!({
                "title": format!("Demo note {}", round / 6 + 1),
                "content": "Written by cargo xtask demo.",
                "tags": ["demo"],
            });
            match request(addr, "POST", "/api/v1/notes", Some(body)).await {
                Ok((201, body)) => {
                    note_id = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_owned));
                    println!("[jobs] created note {}", note_id.as_deref().unwrap_or("?"));
                }
                Ok((status, body)) => println!("[jobs] creating a note: {status} {body}"),
                Err(e) => println!("[jobs] creating a note: {e}"),
            }
        }
        let job_type = ["Embedding", "Linking", "AiRevision"][(round % 3) as usize];
        let mut body = serde_json::json!({ "job_type": job_type });
        if job_type == "AiRevision"
            && let Some(id) = &note_id
        {
            body["note_id"] = id.as_str().into();
        }
        match request(addr, "POST", "/api/v1/jobs", Some(body)).await {
            Ok((status, body)) if (200..300).contains(&status) => {
                let id = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["job_id"].as_str().map(str::to_owned));
                println!(
                    "[jobs] submitted {job_type} {}",
                    id.as_deref().unwrap_or("?")
                );
            }
            Ok((status, body)) => println!("[jobs] submitting {job_type}: {status} {body}"),
            Err(e) => println!("[jobs] submitting {job_type}: {e}"),
        }
        tokio::time::sleep(JOB_EVERY).await;
    }
}

/// A minimal HTTP/1.1 request (no client library needed for a few local
/// calls): returns the status and the body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json: Option<serde_json::Value>,
) -> Result<(u16, String), String> {
    let body = json.map(|j| j.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(req.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("{method} {path}: no answer within 10 s"))?
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{method} {path}: not an HTTP response"))?;
    Ok((status, body.to_owned()))
}

/// The processes started, stopped in reverse order.
#[derive(Default)]
struct Procs {
    running: Vec<(&'static str, Child)>,
}

impl Procs {
    fn start(name: &'static str, command: &mut Command) -> Result<Child, String> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))
    }

    /// Starts a process whose output is printed line by line, prefixed.
    fn spawn(&mut self, name: &'static str, command: &mut Command) -> Result<(), String> {
        let mut child = Self::start(name, command)?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(prefix_lines(name, BufReader::new(out)));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(prefix_lines(name, BufReader::new(err)));
        }
        self.running.push((name, child));
        Ok(())
    }

    /// Starts a process and waits for its first stdout line starting with
    /// `prefix`; returns the rest of that line.
    async fn spawn_until_line(
        &mut self,
        name: &'static str,
        command: &mut Command,
        prefix: &str,
    ) -> Result<String, String> {
        let mut child = Self::start(name, command)?;
        if let Some(err) = child.stderr.take() {
            tokio::spawn(prefix_lines(name, BufReader::new(err)));
        }
        let mut out = child
            .stdout
            .take()
            .map(BufReader::new)
            .ok_or_else(|| format!("{name} has no stdout"))?;
        self.running.push((name, child));
        let mut line = String::new();
        tokio::time::timeout(STARTUP, out.read_line(&mut line))
            .await
            .map_err(|_| format!("{name} said nothing within {STARTUP:?}"))?
            .map_err(|e| format!("reading {name}: {e}"))?;
        println!("[{name}] {}", line.trim_end());
        tokio::spawn(prefix_lines(name, out));
        line.trim()
            .strip_prefix(prefix)
            .map(str::to_owned)
            .ok_or_else(|| format!("{name}: expected {prefix:?}, got {line:?}"))
    }

    /// The first process found to have exited, if any.
    fn exited(&mut self) -> Option<(&'static str, ExitStatus)> {
        self.running
            .iter_mut()
            .find_map(|(name, child)| child.try_wait().ok().flatten().map(|s| (*name, s)))
    }

    /// Resolves when any process exits.
    async fn first_exit(&mut self) -> (&'static str, ExitStatus) {
        loop {
            if let Some(exit) = self.exited() {
                return exit;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM (then SIGKILL after [`GRACE`]) to each process, newest first,
    /// so the clients go before the server they watch.
    async fn stop_all(&mut self) {
        while let Some((name, mut child)) = self.running.pop() {
            if let Ok(Some(_)) = child.try_wait() {
                continue;
            }
            terminate(&child);
            match tokio::time::timeout(GRACE, child.wait()).await {
                Ok(Ok(status)) => println!("==> {name} stopped ({status})"),
                _ => {
                    let _ = child.kill().await;
                    println!("==> {name} killed after {GRACE:?}");
                }
            }
        }
    }
}

/// Asks a process to stop gracefully.
fn terminate(child: &Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    #[cfg(not(unix))]
    let _ = child;
}

async fn prefix_lines(name: &'static str, mut reader: impl AsyncBufRead + Unpin) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => println!("[{name}] {}", line.trim_end()),
        }
    }
}
