//! Webhook mode: a local receiver, one webhook registered on the server,
//! N events published at `--rate` events/s, and the time until every one
//! was delivered.
//!
//! The events are published the way [`PublishMode`] says. `pipelined` (the
//! default) is the fan-out's publisher: a batch every `--batch-ms`, sent
//! without waiting for earlier answers, as an independent producer that
//! pipelines its batches does. `serial` waits for each answer before the
//! next request, so the batch size follows the server's answer time: with
//! the event log on PostgreSQL (a `202` after its group commit, 35–45 ms
//! under load) that is a burst of 80–300 events every 40 ms or so instead
//! of ~25 every 5 ms, and the webhook latency then measures the burst
//! draining through the endpoint's slots as much as the server.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{parse_probe, unix_nanos};
use crate::hist::Histogram;
use crate::http::{HttpClient, Target};
use crate::progress::Progress;
use crate::publisher::{self, Outcome, PublishPlan};
use crate::sys::CpuMeter;

/// How the webhook mode publishes (`--webhook-publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishMode {
    /// A batch every `--batch-ms` on `--publish-connections` keep-alive
    /// connections, not waiting for earlier answers.
    Pipelined,
    /// One request at a time, each waiting for its answer: every request
    /// carries what fell due meanwhile.
    Serial,
}

impl PublishMode {
    fn name(self) -> &'static str {
        match self {
            PublishMode::Pipelined => "pipelined",
            PublishMode::Serial => "serial",
        }
    }
}

/// What the publishing did.
struct Published {
    /// Events the server answered `2xx` for (in time or not: either way it
    /// published them).
    events: u64,
    /// The first refusal or connection error.
    error: Option<String>,
    /// Requests sent.
    requests: u64,
    /// Per request, from when it was due to its answer (ns).
    latency: Histogram,
}

/// What the receiver saw.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    unique: AtomicU64,
    /// Requests answered 503 (`fail_every`).
    failed: AtomicU64,
    /// Answer the first delivery of every measured probe whose counter is
    /// a multiple of this (0 never) with 503, so the server retries it.
    fail_every: u64,
    /// Measured probes (counters below this; the warm-up's is not).
    events: u64,
    seen: Mutex<(Vec<bool>, Histogram)>,
    /// Probes answered 503 once already.
    refused: Mutex<std::collections::HashSet<u64>>,
    last_unique_at: Mutex<Option<Instant>>,
}

impl Received {
    /// Records a delivery; whether to answer it with success.
    fn record(&self, body: &[u8]) -> bool {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Some((t, n)) = parse_probe(body) else {
            return true;
        };
        if self.fail_every > 0
            && n < self.events
            && n % self.fail_every == 0
            && self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n)
        {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (flags, latency) = &mut *seen;
        let Some(flag) = flags.get_mut(n as usize) else {
            return true;
        };
        if !*flag {
            *flag = true;
            latency.record(unix_nanos().saturating_sub(t));
            self.unique.fetch_add(1, Ordering::Relaxed);
            *self
                .last_unique_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        true
    }
}

/// Serves one keep-alive connection: every request is a delivery, answered 204.
async fn serve(mut stream: TcpStream, received: Arc<Received>) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    loop {
        let head_end = loop {
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break end;
            }
            buf.reserve(8192);
            if !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        buf.drain(..head_end + 4);
        while buf.len() < len {
            buf.reserve(len - buf.len());
            if !matches!(stream.read_buf(&mut buf).await, Ok(n) if n > 0) {
                return;
            }
        }
        let answer: &[u8] = if received.record(&buf[..len]) {
            b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"
        } else {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
        };
        buf.drain(..len);
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

fn json_body(resp: &crate::http::Response) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or(Value::Null)
}

/// What the webhook mode does, besides publishing `plan`.
pub struct WebhookRun {
    /// Probe events published (and expected at the receiver).
    pub events: u64,
    /// How they are published.
    pub mode: PublishMode,
    /// The receiver answers 503 to the first delivery of every event whose
    /// counter is a multiple of this (0: never).
    pub fail_every: u64,
    /// How long the whole run may take.
    pub timeout: Duration,
}

/// Runs the webhook benchmark: `run.events` probe events, all delivered to
/// one webhook pointing at a receiver in this process.
pub async fn webhooks(
    target: Target,
    run: WebhookRun,
    plan: PublishPlan,
    server_pid: Option<&str>,
    quiet: bool,
) -> Value {
    let WebhookRun {
        events,
        mode,
        fail_every,
        timeout,
    } = run;
    let fail = |reason: String| json!({"mode": "webhooks", "error": reason});
    let listener = match TcpListener::bind("127.0.0.1:0").await {
        Ok(l) => l,
        Err(e) => return fail(format!("receiver bind: {e}")),
    };
    let receiver_addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return fail(format!("receiver address: {e}")),
    };
    let received = Arc::new(Received {
        seen: Mutex::new((vec![false; events as usize], Histogram::default())),
        fail_every,
        events,
        ..Received::default()
    });
    let accept = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, received.clone()));
            }
        })
    };

    let rate = plan.rate;
    let auth = plan.auth.clone();
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let mut client = HttpClient::new(target.clone());
    let create = json!({
        "url": format!("http://{receiver_addr}/hook"),
        "events": ["JobProgress"],
        "secret": "bench-secret-0123456789abcdef",
    });
    let webhook_id = match client
        .request(
            "POST",
            "/api/v1/webhooks",
            &headers,
            create.to_string().as_bytes(),
        )
        .await
    {
        Ok(resp) if (200..300).contains(&resp.status) => {
            match json_body(&resp)["id"].as_str().map(str::to_owned) {
                Some(id) => id,
                None => return fail("webhook create answered without an id".to_owned()),
            }
        }
        Ok(resp) => {
            return fail(format!(
                "webhook create answered {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            ));
        }
        Err(e) => return fail(format!("webhook create: {e}")),
    };

    // One warm-up event (a counter past the measured ones, so the receiver
    // does not count it) must arrive before the clock starts: the measured
    // run begins with the webhook in the server's index and its worker past
    // its start-up (until its first claim has looked at the store, fresh
    // rows wait for it, as rows from before the start may be older).
    let warm_up = match warm_up(&mut client, &headers, events, &plan, &received).await {
        Ok(took) => took,
        Err(reason) => return fail(reason),
    };

    let server_cpu = server_pid.map(CpuMeter::start);
    let started = Instant::now();
    let progress = Progress::start(quiet, "webhooks", {
        let received = received.clone();
        move || {
            format!(
                "delivered {}/{events} ({} requests)",
                received.unique.load(Ordering::Relaxed),
                received.requests.load(Ordering::Relaxed)
            )
        }
    });
    let publishing = match mode {
        PublishMode::Serial => {
            publish_serial(&mut client, &headers, events, &plan, started, timeout).await
        }
        PublishMode::Pipelined => publish_pipelined(target, plan).await,
    };
    let publish_s = started.elapsed().as_secs_f64();
    // Wait for the rest; give up after 5 s without progress. The server's
    // CPU is read at the last progress, so idle waiting does not dilute it.
    let (mut seen, mut last_progress) = (0, Instant::now());
    let mut server_cpu_pct = server_cpu.as_ref().and_then(|m| m.percent());
    let published = publishing.events;
    while seen < published
        && started.elapsed() < timeout
        && last_progress.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = received.unique.load(Ordering::Relaxed);
        if now != seen {
            seen = now;
            last_progress = Instant::now();
            server_cpu_pct = server_cpu.as_ref().and_then(|m| m.percent());
        }
    }
    progress.finish();
    let unique = received.unique.load(Ordering::Relaxed);
    let requests = received.requests.load(Ordering::Relaxed);
    let failed = received.failed.load(Ordering::Relaxed);
    let last = *received
        .last_unique_at
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let elapsed = last.map_or(0.0, |at| at.duration_since(started).as_secs_f64());
    let _ = client
        .request(
            "DELETE",
            &format!("/api/v1/webhooks/{webhook_id}"),
            &headers,
            b"",
        )
        .await;
    accept.abort();
    let (_, latency) = &*received.seen.lock().unwrap_or_else(|p| p.into_inner());
    json!({
        "mode": "webhooks",
        "events": events,
        "rate": rate,
        "publish_mode": mode.name(),
        "warm_up_ms": warm_up.as_secs_f64() * 1000.0,
        "published": published,
        "publish_s": publish_s,
        "publish_error": publishing.error,
        "publish_requests": publishing.requests,
        "publish_ms": {
            "p50": publishing.latency.quantile(0.5) as f64 / 1e6,
            "p99": publishing.latency.quantile(0.99) as f64 / 1e6,
        },
        "delivered": unique,
        "requests": requests,
        "answered_503": failed,
        // The warm-up event's delivery is one of the requests.
        "duplicates": requests.saturating_sub(unique + failed + 1),
        "lost": published.saturating_sub(unique),
        "elapsed_s": elapsed,
        // How long deliveries went on after the last publish: near 0 when
        // delivery keeps up with the offered rate.
        "drain_s": (elapsed - publish_s).max(0.0),
        "deliveries_per_s": if elapsed > 0.0 { unique as f64 / elapsed } else { 0.0 },
        "complete": unique == events,
        "latency_ms": {
            "p50": latency.quantile(0.5) as f64 / 1e6,
            "p99": latency.quantile(0.99) as f64 / 1e6,
            "max": latency.max() as f64 / 1e6,
        },
        "server_cpu_pct": server_cpu_pct,
    })
}

/// Publishes one request at a time, each carrying the events that fell due
/// while the one before waited for its answer.
async fn publish_serial(
    client: &mut HttpClient,
    headers: &[(&str, &str)],
    events: u64,
    plan: &PublishPlan,
    started: Instant,
    timeout: Duration,
) -> Published {
    let mut out = Published {
        events: 0,
        error: None,
        requests: 0,
        latency: Histogram::default(),
    };
    let mut body = Vec::new();
    // Paced like the fan-out publisher: a burst larger than the bus capacity
    // would measure lag, not delivery throughput.
    let mut ticker = tokio::time::interval(Duration::from_millis(plan.batch_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while out.events < events && started.elapsed() < timeout {
        ticker.tick().await;
        let due = ((plan.rate * started.elapsed().as_secs_f64()).ceil() as u64).min(events);
        while out.events < due {
            let n = (due - out.events).min(crate::MAX_BATCH);
            let t = unix_nanos();
            crate::probe_batch(
                &mut body,
                t,
                out.events,
                n,
                None,
                plan.payload,
                crate::Pad::X,
            );
            let sent = Instant::now();
            out.requests += 1;
            match client
                .request("POST", "/api/v1/events", headers, &body)
                .await
            {
                Ok(resp) if (200..300).contains(&resp.status) => {
                    out.latency.record(sent.elapsed().as_nanos() as u64);
                    out.events += n;
                }
                Ok(resp) => {
                    out.error = Some(format!("publish answered {}", resp.status));
                    return out;
                }
                Err(e) => {
                    out.error = Some(format!("publish: {e}"));
                    return out;
                }
            }
        }
    }
    out
}

/// Publishes with the fan-out's pipelining publisher, on a thread and
/// runtime of its own (as the fan-out does), so the receiver's work does
/// not delay its ticks.
async fn publish_pipelined(target: Target, plan: PublishPlan) -> Published {
    let accepted = Arc::new(AtomicU64::new(0));
    let publisher = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(publisher::publish(plan, vec![target], accepted)))
            .unwrap_or_else(|e| Outcome {
                error: Some(format!("publisher runtime: {e}")),
                ..Outcome::default()
            })
    });
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let outcome = publisher.join().unwrap_or_else(|_| Outcome {
        error: Some("publisher panicked".to_owned()),
        ..Outcome::default()
    });
    let unanswered = outcome.refused + outcome.timed_out + outcome.failed + outcome.backlogged;
    Published {
        events: outcome.accepted + outcome.late,
        error: outcome
            .error
            .or_else(|| (unanswered > 0).then(|| format!("{unanswered} events not acknowledged"))),
        requests: outcome.requests,
        latency: outcome.latency,
    }
}

/// Publishes one probe past the measured counters and waits (up to 30 s)
/// until the receiver got a request; how long that took.
async fn warm_up(
    client: &mut HttpClient,
    headers: &[(&str, &str)],
    events: u64,
    plan: &PublishPlan,
    received: &Received,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut body = vec![b'['];
    crate::probe_event(&mut body, unix_nanos(), events, None, plan.payload);
    body.push(b']');
    match client
        .request("POST", "/api/v1/events", headers, &body)
        .await
    {
        Ok(resp) if (200..300).contains(&resp.status) => {}
        Ok(resp) => return Err(format!("warm-up publish answered {}", resp.status)),
        Err(e) => return Err(format!("warm-up publish: {e}")),
    }
    while received.requests.load(Ordering::Relaxed) == 0 {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the warm-up event was not delivered within 30 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}
