//! `ws-tail`: prints the events of a matric event server's WebSocket, one
//! JSON object per line, exactly as the HotM UI receives them (on a
//! terminal: each object indented under its coloured type name,
//! `examples::pretty`).
//!
//! ```text
//! cargo run -p examples --bin ws-tail -- --refresh
//! cargo run -p examples --bin ws-tail -- --events JobProgress,note --token "$TOKEN"
//! cargo run -p examples --bin ws-tail -- --events JobCompleted --count 1
//! ```
//!
//! The model is the UI's: connect, receive a `QueueStatus` snapshot, then one
//! flat event per text frame. `--events` narrows the stream on the server
//! (a `subscribe` message; names in either scheme or type prefixes such as
//! `note`), `--refresh` asks for a fresh `QueueStatus`. Control replies
//! (`subscribed`, `pong`) are printed too, but `--count` only counts the
//! events `--events` selects (all seven kinds without it), so
//! `--events JobCompleted --count 1` means "wait for the next completion".
//!
//! Like the UI it reconnects with backoff whenever the server closes with a
//! code other than 1000 (e.g. 1001 on a server restart, 4008 when dropped as
//! a slow consumer). Diagnostics go to stderr, events to stdout; on stderr
//! also a status line (events, rate, reconnections, kept across
//! reconnections) when it is a terminal, a plain line every 10 s otherwise.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use event_core::{EventKind, KindSet};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Tail the WebSocket event stream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:3000/api/v1/ws")]
    url: String,
    /// Bearer token (sent as `Authorization: Bearer`).
    #[arg(long, env = "EVENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Send `refresh` after connecting (the server answers with a fresh QueueStatus).
    #[arg(long)]
    refresh: bool,
    /// Narrow the stream: comma-separated event names or type prefixes
    /// (`JobProgress,note`).
    #[arg(long, value_delimiter = ',')]
    events: Vec<String>,
    /// Exit after this many events of the selected kinds.
    #[arg(long)]
    count: Option<u64>,
}

/// How one connection ended.
enum End {
    /// `--count` events were printed.
    Done,
    /// The server closed the connection with this code (1005: no code,
    /// 1006: no close frame).
    Closed(u16),
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let selected = match selection(&args.events) {
        Ok(kinds) => kinds,
        Err(unknown) => {
            eprintln!(
                "ws-tail: unknown event names or types: {}",
                unknown.join(", ")
            );
            return ExitCode::from(2);
        }
    };
    let mut seen = 0u64;
    let mut backoff = Duration::from_millis(250);
    // Kept across reconnections: the count and the reconnections so far.
    let mut tally = examples::pretty::Tally::new("ws-tail");
    loop {
        match tail(&args, selected, &mut seen, &mut tally).await {
            Ok(End::Done) => return ExitCode::SUCCESS,
            // 1000 means "do not come back", as the UI understands it.
            Ok(End::Closed(1000)) => return ExitCode::SUCCESS,
            Ok(End::Closed(code)) => {
                // A connection that worked resets the backoff.
                backoff = Duration::from_millis(250);
                tally.before_print();
                eprintln!("ws-tail: closed with {code}; reconnecting in {backoff:?}");
            }
            Err(e) => {
                tally.before_print();
                eprintln!("ws-tail: {e}; reconnecting in {backoff:?}");
            }
        }
        tally.reconnecting();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// The kinds `--events` selects, checked here so that a typo is an error
/// rather than a silently empty stream. Empty list: every kind.
fn selection(names: &[String]) -> Result<KindSet, Vec<String>> {
    if names.is_empty() {
        return Ok(KindSet::ALL);
    }
    let mut kinds = KindSet::EMPTY;
    let mut unknown = Vec::new();
    for name in names {
        match KindSet::from_name_or_pattern(name) {
            Some(k) => kinds = kinds.union(k),
            None => unknown.push(name.clone()),
        }
    }
    if unknown.is_empty() {
        Ok(kinds)
    } else {
        Err(unknown)
    }
}

/// The kind of a received text frame, if it is one of the seven events
/// (control replies such as `subscribed` are not).
fn kind_of(text: &str) -> Option<EventKind> {
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    EventKind::from_name(value.get("type")?.as_str()?)
}

/// Runs one connection.
async fn tail(
    args: &Args,
    selected: KindSet,
    seen: &mut u64,
    tally: &mut examples::pretty::Tally,
) -> Result<End, String> {
    let mut request = args
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("invalid URL: {e}"))?;
    if let Some(token) = &args.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_owned())?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.url))?;
    tally.before_print();
    eprintln!("ws-tail: connected to {}", args.url);
    if !args.events.is_empty() {
        let msg = serde_json::json!({"type": "subscribe", "events": args.events});
        socket
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| e.to_string())?;
    }
    if args.refresh {
        socket
            .send(Message::text("refresh"))
            .await
            .map_err(|e| e.to_string())?;
    }
    let pretty = examples::pretty::stdout_is_terminal();
    while let Some(msg) = socket.next().await {
        match msg.map_err(|e| e.to_string())? {
            Message::Text(text) => {
                tally.before_print();
                if pretty {
                    let value: Option<serde_json::Value> = serde_json::from_str(&text).ok();
                    let name = value
                        .as_ref()
                        .and_then(|v| v.get("type")?.as_str())
                        .unwrap_or("message");
                    println!("{}", examples::pretty::format_event("", name, &text, true));
                } else {
                    println!("{text}");
                }
                tally.printed();
                if kind_of(&text).is_some_and(|k| selected.contains(k)) {
                    *seen += 1;
                    if args.count.is_some_and(|n| *seen >= n) {
                        // Best effort: the server may already be gone.
                        let _ = socket.close(None).await;
                        return Ok(End::Done);
                    }
                }
            }
            Message::Close(frame) => {
                return Ok(End::Closed(frame.map_or(1005, |f| f.code.into())));
            }
            // Pings are answered by tungstenite; binary frames are not part
            // of the protocol.
            _ => {}
        }
    }
    Ok(End::Closed(1006))
}
