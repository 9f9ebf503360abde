//! `sse-tail`: prints the events of a matric event server's SSE stream and
//! resumes where it left off, across restarts, with `Last-Event-ID`.
//!
//! ```text
//! cargo run -p examples --bin sse-tail -- --events JobCompleted,NoteUpdated
//! cargo run -p examples --bin sse-tail -- --types job --format envelope --state-file .sse-tail-id
//! ```
//!
//! The model is Mercure's: every bus event carries an `id:`; the client keeps
//! the last one and sends it back when it reconnects, and the server replays
//! what was missed, in order, with no gap and no duplicate (or says
//! `resync_required` when it no longer has that id). Here the last id is kept
//! in `--state-file` (written after every event, atomically), so the resume
//! works across runs of the program, not just across reconnects.
//!
//! Each frame is printed on one line: `<id> <event> <data>`, with `-` as the
//! id of synthetic frames (the `QueueStatus` connection confirmation,
//! `resync_required`, `events.lagged`), which have none. `--count` counts
//! only frames with an id, i.e. real events that passed the filters. On a
//! terminal the event name is coloured by family and the data indented
//! (`examples::pretty`); piped or redirected, the one-line form is kept.
//! On stderr, a status line (events, rate, reconnections, kept across
//! reconnections) when it is a terminal, a plain line every 10 s otherwise.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use eventsource_stream::Eventsource;
use futures_util::StreamExt;

/// Tail the SSE event stream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Server base URL.
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    server: String,
    /// Bearer token.
    #[arg(long, env = "EVENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Exact event names, comma-separated (`NoteUpdated,job.completed`).
    #[arg(long)]
    events: Option<String>,
    /// Type prefixes, comma-separated (`job,note.updated`).
    #[arg(long)]
    types: Option<String>,
    /// Only events about this job or note.
    #[arg(long)]
    entity_id: Option<String>,
    /// Frame format: `v1` or `envelope` (default: the server's).
    #[arg(long)]
    format: Option<String>,
    /// Where the last seen event id is kept between runs.
    #[arg(long, default_value = ".sse-tail-last-id")]
    state_file: PathBuf,
    /// Exit after this many events (synthetic frames are not counted).
    #[arg(long)]
    count: Option<u64>,
}

/// Why a connection ended without reaching `--count`.
enum Failure {
    /// Worth reconnecting (network error, server restart).
    Transient(String),
    /// Will not get better by retrying (bad filter, bad token, state file).
    Fatal(String),
}

#[tokio::main]
async fn main() -> ExitCode {
    // reqwest is built without a default TLS provider; `https://` servers
    // need one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sse-tail: cannot build the HTTP client: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut seen = 0u64;
    let mut backoff = Duration::from_millis(250);
    // Kept across reconnections: the count and the reconnections so far.
    let mut tally = examples::pretty::Tally::new("sse-tail");
    loop {
        let mut connected = false;
        match tail(&client, &args, &mut seen, &mut connected, &mut tally).await {
            Ok(()) => return ExitCode::SUCCESS,
            Err(Failure::Fatal(e)) => {
                tally.before_print();
                eprintln!("sse-tail: {e}");
                return ExitCode::FAILURE;
            }
            Err(Failure::Transient(e)) => {
                if connected {
                    // A stream that worked: come back quickly.
                    backoff = Duration::from_millis(250);
                }
                tally.before_print();
                eprintln!("sse-tail: {e}; reconnecting in {backoff:?}");
                tally.reconnecting();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn read_state(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Writes the id through a temporary file and a rename, so that a crash
/// mid-write never leaves a truncated id behind.
fn write_state(path: &Path, id: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, id)?;
    std::fs::rename(&tmp, path)
}

/// Runs one connection; `Ok` once `--count` events were printed.
/// `connected` tells whether the server accepted the stream.
async fn tail(
    client: &reqwest::Client,
    args: &Args,
    seen: &mut u64,
    connected: &mut bool,
    tally: &mut examples::pretty::Tally,
) -> Result<(), Failure> {
    let base = format!("{}/api/v1/events", args.server.trim_end_matches('/'));
    let mut url = reqwest::Url::parse(&base)
        .map_err(|e| Failure::Fatal(format!("invalid server URL {base:?}: {e}")))?;
    for (key, value) in [
        ("events", &args.events),
        ("types", &args.types),
        ("entity_id", &args.entity_id),
        ("format", &args.format),
    ] {
        if let Some(v) = value {
            url.query_pairs_mut().append_pair(key, v);
        }
    }
    let mut request = client.get(url).header("accept", "text/event-stream");
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }
    if let Some(id) = read_state(&args.state_file) {
        tally.before_print();
        eprintln!("sse-tail: resuming after {id}");
        request = request.header("Last-Event-ID", id);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Failure::Transient(format!("cannot connect: {e}")))?;
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        let message = format!("the server refused the stream: {status} {}", body.trim());
        // 4xx (bad filter, bad token) will not get better by retrying; 5xx
        // (over capacity, restarting) may.
        return Err(if status.is_client_error() {
            Failure::Fatal(message)
        } else {
            Failure::Transient(message)
        });
    }
    tally.before_print();
    eprintln!("sse-tail: connected");
    *connected = true;
    let pretty = examples::pretty::stdout_is_terminal();
    let mut stream = response.bytes_stream().eventsource();
    while let Some(event) = stream.next().await {
        let event = event.map_err(|e| Failure::Transient(e.to_string()))?;
        let id = if event.id.is_empty() { "-" } else { &event.id };
        tally.before_print();
        println!(
            "{}",
            examples::pretty::format_event(id, &event.event, &event.data, pretty)
        );
        tally.printed();
        if event.event == "resync_required" {
            tally.before_print();
            eprintln!("sse-tail: the server no longer has the saved id; some events were missed");
        }
        if !event.id.is_empty() {
            write_state(&args.state_file, &event.id).map_err(|e| {
                Failure::Fatal(format!("cannot write {}: {e}", args.state_file.display()))
            })?;
            *seen += 1;
            if args.count.is_some_and(|n| *seen >= n) {
                return Ok(());
            }
        }
    }
    Err(Failure::Transient("the stream ended".to_owned()))
}
