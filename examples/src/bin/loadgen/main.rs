//! `loadgen`: a load generator for the event server (or the raw floor).
//!
//! Three modes:
//! * **fan-out** (default): `--ws N` WebSocket and `--sse M` SSE clients
//!   connect; once all are confirmed, a publisher posts `JobProgress` events
//!   to `POST /api/v1/events` at `--rate` events/s for `--duration` seconds,
//!   in arrays every `--batch-ms`. Each event's `message` is
//!   `t=<unix nanos>;n=<counter>;` padded so the flat JSON is `--payload`
//!   bytes. Every client measures publish → receive latency (log-bucket
//!   histogram, merged at the end) and counts counter gaps (lost events) and
//!   lag signals (SSE `events.lagged`, WebSocket close 4008).
//! * **idle** (`--idle K`): open K connections, half of each kind, hold them,
//!   report the server's RSS per connection (`--server-pid`).
//! * **churn** (`--churn C`): C connect → confirm → disconnect cycles; then
//!   the server's connection gauges (`/metrics`) must return to 0.
//! * **webhooks** (`--webhooks N`): a receiver in this process, one webhook
//!   registered through `/api/v1/webhooks`, N events published at `--rate`; reports
//!   deliveries/s until all N arrived.
//! * **subscribe** (`--subscribe K`): K measuring subscribers held until a
//!   `stop` line on stdin, while other processes publish; one client
//!   process of `cargo xtask bench --only scale`.
//!
//! `--source-addrs 127.0.0.2,127.0.0.3,…` binds the client sockets to those
//! loopback addresses in turn, so that more connections than one address's
//! ephemeral ports can be opened.
//!
//! **Cluster mode**: `--url` with several comma-separated servers (instances
//! of one cluster): the fan-out clients are spread over them in turn, the
//! publisher sends its requests to them in turn and tags each event with
//! the instance it went to (`o=<index>;`), and each client reports
//! duplicates and its latency split into same-instance and cross-instance
//! delivery; loss is what a client never received (events from several
//! instances arrive in the stream's order, not the counter's).
//!
//! A progress line goes to stderr; the result is one JSON object on the last
//! line of stdout (for `cargo xtask bench`). Everything is bounded in time.
//!
//! ```text
//! cargo run --release -p examples --bin loadgen -- \
//!     --url http://127.0.0.1:3000 --ws 100 --sse 100 --rate 1000 --duration 10
//! ```

// The fan-out's report is one `json!` object with many fields.
#![recursion_limit = "256"]

mod client;
mod hist;
mod http;
mod progress;
mod publisher;
mod scale;
mod source;
mod sys;
mod webhook;
mod wsraw;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};

use client::{ClientStats, Kind, Shared, SubConfig, WsClient, subscriber, unix_nanos};
use hist::Histogram;
use http::Target;
use progress::Progress;
use publisher::{Outcome, PublishPlan};
use sys::CpuMeter;

/// Most events per publish request (the server's limit).
const MAX_BATCH: u64 = 1000;
/// The server's default `PUBLISH_MAX_BODY_BYTES`.
const MAX_BODY_BYTES: u64 = 1 << 20;
/// `--publish-connections` of the fan-out.
const FANOUT_PUBLISH_CONNECTIONS: usize = 4;
/// `--publish-connections` of the webhook mode (see the argument).
const WEBHOOK_PUBLISH_CONNECTIONS: usize = 32;
/// The `job_id` of every probe event.
const PROBE_JOB: &str = "0197c0de-5e1a-7a00-8000-00000000b0b0";

/// Load generator for the event server.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", about)]
struct Args {
    /// Server root URL; several, comma-separated, for cluster mode
    /// (fan-out only).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// WebSocket clients (fan-out mode).
    #[arg(long, default_value_t = 100)]
    ws: u64,
    /// SSE clients (fan-out mode).
    #[arg(long, default_value_t = 100)]
    sse: u64,
    /// Events published per second.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Size of each event's flat JSON, in bytes.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// What pads each event to `--payload`: `x` repeated, or words (text
    /// that compresses like text, for `--ws-client deflate`).
    #[arg(long, value_enum, default_value = "x")]
    pad: Pad,
    /// The WebSocket client: `tungstenite`, or this tool's own (`raw`,
    /// counting the bytes on the wire; `deflate`, the same offering
    /// permessage-deflate).
    #[arg(long, value_enum, default_value = "tungstenite")]
    ws_client: WsClient,
    /// Milliseconds between publish requests.
    #[arg(long, default_value_t = 5)]
    batch_ms: u64,
    /// Keep-alive connections the publisher pipelines its requests on
    /// (per server); default 4, and 32 in webhook mode, whose benchmark
    /// runs on PostgreSQL too: there a `202` waits tens of milliseconds for
    /// the event log's commit, and HTTP/1.1 answers a connection's requests
    /// in order, so a request every 5 ms needs that many to not queue.
    #[arg(long)]
    publish_connections: Option<usize>,
    /// Requests a publisher connection may have waiting for an answer;
    /// a batch due when every connection is full is not sent (backlogged).
    #[arg(long, default_value_t = 256)]
    publish_window: usize,
    /// Seconds a publish answer may take to acknowledge its events.
    #[arg(long, default_value_t = 2.0)]
    publish_timeout: f64,
    /// Seconds to wait after publishing for events still in flight.
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
    /// Seconds a connection may take to deliver its first frame.
    #[arg(long, default_value_t = 30.0)]
    connect_timeout: f64,
    /// Connections opened at a time.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Server process id, for its CPU time and RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Bearer token for publishing (admin).
    #[arg(long, env = "LOADGEN_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Token for subscribing (sent as `?token=`).
    #[arg(long, env = "LOADGEN_CLIENT_TOKEN", hide_env_values = true)]
    client_token: Option<String>,
    /// SSE frame format to ask for (`v1` or `envelope`); the server's default when unset.
    #[arg(long)]
    sse_format: Option<String>,
    /// Idle mode: open this many connections (half WS, half SSE) and hold them.
    #[arg(long, conflicts_with = "churn")]
    idle: Option<u64>,
    /// Transports of the idle connections.
    #[arg(long, value_enum, default_value = "both")]
    idle_mix: scale::Mix,
    /// Seconds to hold idle connections after reporting.
    #[arg(long, default_value_t = 1.0)]
    hold: f64,
    /// Churn mode: this many connect/disconnect cycles.
    #[arg(long, conflicts_with = "webhooks")]
    churn: Option<u64>,
    /// Webhook mode: register a webhook to a receiver in this process,
    /// publish this many events, time their delivery.
    #[arg(long, conflicts_with = "idle")]
    webhooks: Option<u64>,
    /// Seconds the webhook mode waits for deliveries.
    #[arg(long, default_value_t = 120.0)]
    webhook_timeout: f64,
    /// How the webhook mode publishes: `pipelined`, as the fan-out's
    /// publisher and an independent client do (a batch every `--batch-ms`
    /// on `--publish-connections`, not waiting for earlier answers), or
    /// `serial` (one request at a time, each waiting for its answer, so a
    /// slow `202` makes fewer, larger batches: this tool's shape before).
    #[arg(long, value_enum, default_value = "pipelined")]
    webhook_publish: webhook::PublishMode,
    /// Webhook mode: the receiver answers the first delivery of every
    /// event whose counter is a multiple of this with 503 (0: never), so
    /// the server retries those while the rest keep coming. Their latency
    /// includes the retry delay.
    #[arg(long, default_value_t = 0)]
    webhook_fail_every: u64,
    /// Subscribe mode (`cargo xtask bench --only scale`): hold this many
    /// measuring subscribers (`--idle-mix`) until `stop <published> <first
    /// publish ns>` on stdin, then report what they received.
    #[arg(long, conflicts_with_all = ["idle", "churn", "webhooks"])]
    subscribe: Option<u64>,
    /// Seconds the subscribe mode may take to connect, and then to get its
    /// stop line.
    #[arg(long, default_value_t = 600.0)]
    subscribe_timeout: f64,
    /// Local addresses client sockets are bound to in turn before they
    /// connect (comma-separated, e.g. `127.0.0.2,127.0.0.3`): each adds a
    /// range of ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    source_addrs: Vec<std::net::IpAddr>,
    /// No progress line.
    #[arg(long, short)]
    quiet: bool,
}

/// What pads a probe event (`--pad`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Pad {
    /// `x` repeated.
    X,
    /// Words, varying with the event's counter.
    Words,
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.clamp(0.0, 86_400.0))
}

fn sub_config(args: &Args, target: Target) -> SubConfig {
    let mut ws_query = Vec::new();
    let mut sse_query = Vec::new();
    if let Some(token) = &args.client_token {
        ws_query.push(format!("token={token}"));
        sse_query.push(format!("token={token}"));
    }
    if let Some(format) = &args.sse_format {
        sse_query.push(format!("format={format}"));
    }
    let with = |path: &str, q: &[String]| {
        if q.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", q.join("&"))
        }
    };
    SubConfig {
        target,
        ws_path: with("/api/v1/ws", &ws_query),
        sse_path: with("/api/v1/events", &sse_query),
        connect_timeout: secs(args.connect_timeout),
        ws_client: args.ws_client,
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    source::set(args.source_addrs.clone());
    let mut targets = Vec::new();
    for url in args.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match Target::parse(url).await {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("loadgen: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let Some(target) = targets.first().cloned() else {
        eprintln!("loadgen: --url names no server");
        return std::process::ExitCode::from(2);
    };
    if targets.len() > 1 && (args.idle.is_some() || args.churn.is_some() || args.webhooks.is_some())
    {
        eprintln!("loadgen: several servers (cluster mode) only for the fan-out");
        return std::process::ExitCode::from(2);
    }
    let cfg = Arc::new(sub_config(&args, target.clone()));
    let pid = args.server_pid.map(|p| p.to_string());
    let report = if let Some(count) = args.idle {
        scale::idle(
            cfg,
            args.idle_mix,
            count,
            args.concurrency,
            pid.as_deref(),
            secs(args.hold),
            args.quiet,
        )
        .await
    } else if let Some(events) = args.webhooks {
        let plan = PublishPlan {
            rate: args.rate,
            duration: events as f64 / args.rate.max(1e-9),
            batch_ms: args.batch_ms,
            payload: args.payload,
            pad: args.pad,
            connections: args
                .publish_connections
                .unwrap_or(WEBHOOK_PUBLISH_CONNECTIONS),
            window: args.publish_window,
            timeout: secs(args.publish_timeout),
            auth: args.admin_token.as_ref().map(|t| format!("Bearer {t}")),
        };
        let run = webhook::WebhookRun {
            events,
            mode: args.webhook_publish,
            fail_every: args.webhook_fail_every,
            timeout: secs(args.webhook_timeout),
        };
        webhook::webhooks(target, run, plan, pid.as_deref(), args.quiet).await
    } else if let Some(count) = args.subscribe {
        let (settle, timeout) = (secs(args.settle), secs(args.subscribe_timeout));
        let (mix, concurrency) = (args.idle_mix, args.concurrency);
        scale::subscribe(cfg, mix, count, concurrency, settle, timeout, args.quiet).await
    } else if let Some(cycles) = args.churn {
        scale::churn(cfg, cycles, args.concurrency, pid.as_deref(), args.quiet).await
    } else {
        fanout(&args, targets, pid.as_deref()).await
    };
    println!("{report}");
    std::process::ExitCode::SUCCESS
}

/// Appends one probe event of `size` bytes (or the minimum size); in
/// cluster mode tagged with the instance it is published on.
fn probe_event(out: &mut Vec<u8>, t: u64, n: u64, origin: Option<usize>, size: usize) {
    probe_event_padded(out, t, n, origin, size, Pad::X);
}

/// `out` set to a JSON array of `n` probe events numbered from `first`,
/// all stamped `t` (one `POST /api/v1/events` body).
fn probe_batch(
    out: &mut Vec<u8>,
    t: u64,
    first: u64,
    n: u64,
    origin: Option<usize>,
    size: usize,
    pad: Pad,
) {
    out.clear();
    out.push(b'[');
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        probe_event_padded(out, t, first + i, origin, size, pad);
    }
    out.push(b']');
}

/// [`probe_event`] padded with `pad`.
fn probe_event_padded(
    out: &mut Vec<u8>,
    t: u64,
    n: u64,
    origin: Option<usize>,
    size: usize,
    pad: Pad,
) {
    const WORDS: [&str; 16] = [
        "embedding",
        "chunk",
        "note",
        "linked",
        "summary",
        "tag",
        "memory",
        "job",
        "queued",
        "vector",
        "index",
        "search",
        "title",
        "content",
        "model",
        "token",
    ];
    let start = out.len();
    let origin = origin.map(|o| format!("o={o};")).unwrap_or_default();
    out.extend_from_slice(
        format!(
            r#"{{"type":"JobProgress","job_id":"{PROBE_JOB}","progress":50,"progress_percent":50,"message":"t={t};n={n};{origin}"#
        )
        .as_bytes(),
    );
    let len = size.saturating_sub(out.len() - start + 2);
    match pad {
        Pad::X => out.resize(out.len() + len, b'x'),
        Pad::Words => {
            let end = out.len() + len;
            let mut i = n as usize;
            while out.len() < end {
                out.extend_from_slice(WORDS[(i * 7 + i / 16) % WORDS.len()].as_bytes());
                out.push(b' ');
                i += 1;
            }
            out.truncate(end);
        }
    }
    out.extend_from_slice(b"\"}");
}

fn micros(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

fn percentiles(h: &Histogram) -> Value {
    json!({
        "p50": micros(h.quantile(0.50)),
        "p95": micros(h.quantile(0.95)),
        "p99": micros(h.quantile(0.99)),
        "max": micros(h.max()),
        "samples": h.count(),
    })
}

async fn fanout(args: &Args, targets: Vec<Target>, pid: Option<&str>) -> Value {
    let clients = args.ws + args.sse;
    let cluster = targets.len() > 1;
    let cfgs: Vec<Arc<SubConfig>> = targets
        .iter()
        .map(|t| Arc::new(sub_config(args, t.clone())))
        .collect();
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let connect_started = Instant::now();
    // Interleaved, so both kinds connect at the same pace.
    let kinds = (0..args.ws.max(args.sse)).flat_map(|i| {
        let ws = (i < args.ws).then_some(Kind::Ws);
        let sse = (i < args.sse).then_some(Kind::Sse);
        ws.into_iter().chain(sse)
    });
    // In cluster mode each kind is spread over the instances in turn.
    let (mut next_ws, mut next_sse) = (0usize, 0usize);
    let handles: Vec<_> = kinds
        .map(|kind| {
            let turn = match kind {
                Kind::Ws => &mut next_ws,
                Kind::Sse => &mut next_sse,
            };
            let at = *turn % cfgs.len();
            *turn += 1;
            tokio::spawn(subscriber(
                kind,
                cfgs[at].clone(),
                shared.clone(),
                permits.clone(),
                stop_rx.clone(),
                cluster.then_some(at as u64),
            ))
        })
        .collect();
    let connecting = Progress::start(args.quiet, "connect", {
        let shared = shared.clone();
        move || {
            format!(
                "established {}/{clients}, failed {}",
                shared.established.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed)
            )
        }
    });
    let connect_deadline = secs(args.connect_timeout * 2.0 + 10.0);
    while shared.established.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < clients
        && connect_started.elapsed() < connect_deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    connecting.finish();
    let connect_s = connect_started.elapsed().as_secs_f64();

    let server_cpu = pid.map(CpuMeter::start);
    let client_cpu = CpuMeter::start("self");
    let accepted = Arc::new(AtomicU64::new(0));
    let publish_started = Instant::now();
    let publish_started_unix = unix_nanos();
    let publisher = {
        let plan = PublishPlan {
            rate: args.rate,
            duration: args.duration,
            batch_ms: args.batch_ms,
            payload: args.payload,
            pad: args.pad,
            connections: args
                .publish_connections
                .unwrap_or(FANOUT_PUBLISH_CONNECTIONS),
            window: args.publish_window,
            timeout: secs(args.publish_timeout),
            auth: args.admin_token.as_ref().map(|t| format!("Bearer {t}")),
        };
        let (targets, accepted) = (targets.clone(), accepted.clone());
        // Its own thread and runtime, so a busy client runtime does not
        // delay publish ticks.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(publisher::publish(plan, targets, accepted)))
                .unwrap_or_else(|e| Outcome {
                    error: Some(format!("publisher runtime: {e}")),
                    ..Outcome::default()
                })
        })
    };
    let running = Progress::start(args.quiet, "fan-out", {
        let (shared, accepted) = (shared.clone(), accepted.clone());
        move || {
            let secs = publish_started.elapsed().as_secs_f64().max(1e-9);
            let delivered = shared.received.load(Ordering::Relaxed);
            format!(
                "accepted {}, delivered {delivered} ({:.0}/s), gaps {}, lag signals {}",
                accepted.load(Ordering::Relaxed),
                delivered as f64 / secs,
                shared.lost.load(Ordering::Relaxed),
                shared.lag_signals.load(Ordering::Relaxed),
            )
        }
    });
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let publish_report = publisher.join().unwrap_or_else(|_| Outcome {
        error: Some("publisher panicked".to_owned()),
        ..Outcome::default()
    });
    // Wait until every live client has seen the last acknowledged event,
    // or nothing arrived for 2 s (the rest was lost), or the settle time
    // is up. A client's progress is its highest counter + 1 (cluster mode:
    // the distinct events it received).
    let accepted = publish_report.accepted;
    let per_client = if cluster {
        accepted
    } else {
        publish_report.last_acked.map_or(0, |l| l + 1)
    };
    let settled = shared
        .settle(per_client, secs(args.settle), Duration::from_millis(2))
        .await;
    // From the first publish to the last event received.
    let last_receive = shared.last_receive.load(Ordering::Relaxed);
    let window = if last_receive > publish_started_unix {
        (last_receive - publish_started_unix) as f64 / 1e9
    } else {
        publish_started.elapsed().as_secs_f64()
    };
    let server_cpu_pct = server_cpu.as_ref().and_then(CpuMeter::percent);
    let server_cpu_s = server_cpu.as_ref().and_then(CpuMeter::seconds);
    let client_cpu_pct = client_cpu.percent();
    running.finish();
    let _ = stop_tx.send(true);

    let mut latency = Histogram::default();
    let (mut ws_latency, mut sse_latency) = (Histogram::default(), Histogram::default());
    let mut stats = ClientStats::default();
    let (mut same_latency, mut cross_latency) = (Histogram::default(), Histogram::default());
    let (mut dropped, mut failed, mut first_error) = (0u64, 0u64, None);
    // Which transport's connections ended before the run did.
    let (mut ws_dropped, mut sse_dropped) = (0u64, 0u64);
    let mut delivered = 0u64;
    // The raw WebSocket client's counts (`--ws-client raw|deflate`).
    let (mut ws_received, mut ws_wire_bytes, mut ws_compressed) = (0u64, 0u64, 0u64);
    for handle in handles {
        let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(10), handle).await else {
            failed += 1;
            continue;
        };
        if let Some(e) = s.error {
            failed += 1;
            first_error.get_or_insert(e);
            continue;
        }
        // What counts: the acknowledged events this client received.
        delivered += s.received_of(&publish_report.acked);
        stats.received += s.received;
        stats.lost += s.lost;
        stats.lag_signals += s.lag_signals;
        stats.out_of_order += s.out_of_order;
        stats.duplicates += s.duplicates;
        same_latency.merge(&s.same_latency);
        cross_latency.merge(&s.cross_latency);
        dropped += u64::from(s.dropped);
        latency.merge(&s.latency);
        ws_wire_bytes += s.wire_bytes;
        ws_compressed += s.compressed;
        match s.kind {
            Some(Kind::Ws) => {
                ws_received += s.received;
                ws_latency.merge(&s.latency);
                ws_dropped += u64::from(s.dropped);
            }
            Some(Kind::Sse) => {
                sse_latency.merge(&s.latency);
                sse_dropped += u64::from(s.dropped);
            }
            None => {}
        }
    }
    let established = clients - failed;
    let p = &publish_report;
    let expected = accepted * established;
    let pct = |part: u64, whole: u64| (whole > 0).then(|| part as f64 * 100.0 / whole as f64);
    json!({
        "mode": "fanout",
        "url": args.url,
        "ws": args.ws,
        "sse": args.sse,
        "established": established,
        "connect_failed": failed,
        "first_error": first_error,
        "connect_s": connect_s,
        "rate": args.rate,
        "duration_s": args.duration,
        "payload_bytes": args.payload,
        "offered": p.offered,
        "accepted": accepted,
        "accepted_pct": pct(accepted, p.offered),
        "publish_late": p.late,
        "publish_refused": p.refused,
        "publish_timed_out": p.timed_out,
        "publish_failed": p.failed,
        "publish_backlogged": p.backlogged,
        "publish_requests": p.requests,
        "publish_connections": args.publish_connections.unwrap_or(FANOUT_PUBLISH_CONNECTIONS) * targets.len(),
        "publish_timeout_s": args.publish_timeout,
        "publish_latency_us": percentiles(&p.latency),
        "publish_s": p.elapsed,
        "offered_rate": p.offered as f64 / p.elapsed.max(1e-9),
        "publish_rate": accepted as f64 / p.elapsed.max(1e-9),
        "publish_error": p.error,
        "published": accepted,
        "expected": expected,
        "delivered": delivered,
        "delivered_pct": pct(delivered, expected),
        "lost": expected.saturating_sub(delivered),
        "received": stats.received,
        "unacknowledged_received": stats.received.saturating_sub(delivered),
        "gaps": stats.lost,
        "window_s": window,
        "delivered_per_s": delivered as f64 / window.max(1e-9),
        "settled": settled,
        "lag_signals": stats.lag_signals,
        "out_of_order": stats.out_of_order,
        "clients_dropped": dropped,
        "clients_dropped_ws": ws_dropped,
        "clients_dropped_sse": sse_dropped,
        "latency_us": percentiles(&latency),
        "latency_us_ws": percentiles(&ws_latency),
        "latency_us_sse": percentiles(&sse_latency),
        "instances": targets.len(),
        "duplicates": stats.duplicates,
        "latency_us_same": cluster.then(|| percentiles(&same_latency)),
        "latency_us_cross": cluster.then(|| percentiles(&cross_latency)),
        "server_cpu_pct": server_cpu_pct,
        "server_cpu_s": server_cpu_s,
        "server_cpu_us_per_delivery": server_cpu_s
            .filter(|_| stats.received > 0)
            .map(|s| s * 1e6 / stats.received as f64),
        "client_cpu_pct": client_cpu_pct,
        "ws_client": format!("{:?}", args.ws_client).to_lowercase(),
        "ws_wire_bytes": ws_wire_bytes,
        "ws_wire_bytes_per_event": (args.ws_client != WsClient::Tungstenite && ws_received > 0)
            .then(|| ws_wire_bytes as f64 / ws_received as f64),
        "ws_compressed_messages": ws_compressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_events_have_the_requested_size_and_parse_back() {
        let mut out = Vec::new();
        probe_event(&mut out, 1_764_000_000_123_456_789, 42, None, 256);
        assert_eq!(out.len(), 256);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "JobProgress");
        assert_eq!(
            client::parse_probe(&out),
            Some((1_764_000_000_123_456_789, 42))
        );
        // As the SSE frame the server writes.
        let frame = format!(
            "id: 17\nevent: JobProgress\ndata: {}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(
            client::parse_probe(frame.as_bytes()),
            Some((1_764_000_000_123_456_789, 42))
        );
        assert_eq!(
            client::parse_probe(br#"{"type":"QueueStatus","total_jobs":0}"#),
            None
        );
        // Cluster mode: tagged with the instance it was published on.
        let mut out = Vec::new();
        probe_event(&mut out, 7, 8, Some(2), 256);
        assert_eq!(out.len(), 256);
        assert_eq!(client::parse_probe_origin(&out), Some((7, 8, Some(2))));
        assert_eq!(client::parse_probe(&out), Some((7, 8)));
        // Padded with words: the same size, still JSON, still a probe.
        for size in [256, 1024, 4096] {
            let mut out = Vec::new();
            probe_event_padded(&mut out, 7, 9, None, size, Pad::Words);
            assert_eq!(out.len(), size);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert!(v["message"].as_str().unwrap().contains("embedding"));
            assert_eq!(client::parse_probe(&out), Some((7, 9)));
        }
    }
}
