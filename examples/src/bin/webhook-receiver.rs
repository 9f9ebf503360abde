//! `webhook-receiver`: a small HTTP server that receives a matric event
//! server's webhook deliveries, verifies their signatures and prints the
//! events.
//!
//! ```text
//! cargo run -p examples --bin webhook-receiver -- --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
//! curl -X POST localhost:3000/api/v1/webhooks -H 'content-type: application/json' \
//!      -d '{"url":"http://127.0.0.1:4000/","events":[],"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}'
//! ```
//! (a receiver on loopback needs the server started with
//! `WEBHOOK_ALLOW_CIDRS=127.0.0.0/8`).
//!
//! Every delivery carries two signatures made with the same secret (see
//! `event_webhook::signing`): the Standard Webhooks `webhook-signature` over
//! `webhook-id`, `webhook-timestamp` and the body, and the body-only
//! `X-Matric-Signature: sha256=<hex>` (the header name is configurable on
//! the server, hence `--signature-header`). This receiver **requires the
//! Standard Webhooks signature with a timestamp within five minutes**
//! (`event_webhook::signing::verify_with`), and checks the body-only HMAC
//! too when it is present. The body-only HMAC is never accepted on its own:
//! it covers no timestamp, so a captured delivery would verify forever with
//! a fresh `webhook-timestamp`. A delivery failing any check gets `401`
//! (the server will retry it). Deliveries are at-least-once, so it
//! remembers recent `webhook-id`s and acknowledges a repeat without
//! printing it again (which also drops replays inside the five minutes).
//!
//! Output: first `listening on <addr>`, then one line per verified event:
//! `<event type> (<schemes>) <body>`, the body being the delivery JSON
//! `{"id","event","timestamp","data"}` as received. Rejections go to stderr.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::routing::post;
use clap::Parser;
use tokio::sync::Notify;

/// The server's default name of the body-only HMAC header.
const DEFAULT_SIGNATURE_HEADER: &str = event_webhook::signing::DEFAULT_SIGNATURE_HEADER;
/// How many delivery ids are remembered to drop repeats.
const RECENT_IDS: usize = 4096;

/// Receive, verify and print webhook deliveries.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The webhook's secret (as registered, `whsec_…` prefix included).
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true)]
    secret: String,
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, default_value = "127.0.0.1:4000")]
    addr: SocketAddr,
    /// Exit after this many verified events.
    #[arg(long)]
    count: Option<u64>,
    /// Name of the body-only hex HMAC header (the server's
    /// `WEBHOOK_SIGNATURE_HEADER`); checked when present, never sufficient.
    #[arg(long, default_value = DEFAULT_SIGNATURE_HEADER)]
    signature_header: HeaderName,
}

struct Receiver {
    secret: String,
    signature_header: HeaderName,
    count: Option<u64>,
    seen: Mutex<Seen>,
    done: Notify,
}

#[derive(Default)]
struct Seen {
    printed: u64,
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl Seen {
    /// Records `id`; false when it was already seen.
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == RECENT_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("webhook-receiver: cannot listen on {}: {e}", args.addr);
            return ExitCode::from(2);
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("webhook-receiver: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on {addr}");
    let receiver = Arc::new(Receiver {
        secret: args.secret,
        signature_header: args.signature_header,
        count: args.count,
        seen: Mutex::new(Seen::default()),
        done: Notify::new(),
    });
    let app = Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .with_state(receiver.clone());
    let stop = async move {
        tokio::select! {
            () = receiver.done.notified() => {}
            () = stop_signal() => {}
        }
    };
    // Graceful: the response to the last counted delivery is still sent.
    match axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("webhook-receiver: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let delivery = header(&headers, "x-matric-delivery").unwrap_or("-");
    let schemes = match verify(&receiver, &headers, &body) {
        Ok(schemes) => schemes,
        Err(reason) => {
            // The reason, never the secret or the signature itself.
            eprintln!("webhook-receiver: rejected delivery {delivery}: {reason}");
            return (StatusCode::UNAUTHORIZED, "invalid signature\n");
        }
    };
    let parsed: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("webhook-receiver: delivery {delivery} is not JSON: {e}");
            return (StatusCode::BAD_REQUEST, "body is not JSON\n");
        }
    };
    let event_id = header(&headers, "webhook-id")
        .map(str::to_owned)
        .or_else(|| parsed["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let event_type = header(&headers, "x-matric-event")
        .or_else(|| parsed["event"].as_str())
        .unwrap_or("?");
    let mut seen = receiver.seen.lock().unwrap_or_else(PoisonError::into_inner);
    if !event_id.is_empty() && !seen.first_time(&event_id) {
        eprintln!(
            "webhook-receiver: duplicate of event {event_id} (delivery {delivery}) acknowledged"
        );
        return (StatusCode::OK, "duplicate\n");
    }
    println!(
        "{event_type} ({}) {}",
        schemes.join("+"),
        String::from_utf8_lossy(&body).trim_end()
    );
    seen.printed += 1;
    if receiver.count.is_some_and(|n| seen.printed >= n) {
        receiver.done.notify_one();
    }
    (StatusCode::OK, "ok\n")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Requires the Standard Webhooks signature within the tolerance (and a
/// matching body-only HMAC when that header is present); returns the names
/// of the schemes checked.
fn verify(
    receiver: &Receiver,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<&'static str>, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("clock before 1970: {e}"))?
        .as_secs();
    let now = i64::try_from(now).map_err(|e| format!("clock: {e}"))?;
    event_webhook::signing::verify_with(
        &receiver.secret,
        headers,
        body,
        receiver.signature_header.as_str(),
        event_webhook::signing::TOLERANCE,
        now,
    )
    .map_err(|e| e.to_string())?;
    let mut schemes = vec!["standard"];
    if headers.contains_key(&receiver.signature_header) {
        schemes.push("hmac");
    }
    Ok(schemes)
}
