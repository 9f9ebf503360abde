//! Webhook mode: a local receiver, one webhook registered on the server,
//! N events published at `--rate` events/s, and the time until every one
//! was delivered.

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
use crate::sys::CpuMeter;

/// What the receiver saw.
#[derive(Default)]
struct Received {
    requests: AtomicU64,
    unique: AtomicU64,
    seen: Mutex<(Vec<bool>, Histogram)>,
    last_unique_at: Mutex<Option<Instant>>,
}

impl Received {
    fn record(&self, body: &[u8]) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Some((t, n)) = parse_probe(body) else {
            return;
        };
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (flags, latency) = &mut *seen;
        let Some(flag) = flags.get_mut(n as usize) else {
            return;
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
        received.record(&buf[..len]);
        buf.drain(..len);
        if stream
            .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

fn json_body(resp: &crate::http::Response) -> Value {
    serde_json::from_slice(&resp.body).unwrap_or(Value::Null)
}

/// Runs the webhook benchmark: `events` probe events, all delivered to one
/// webhook pointing at a receiver in this process.
pub async fn webhooks(
    target: Target,
    events: u64,
    rate: f64,
    admin_token: Option<&str>,
    server_pid: Option<&str>,
    timeout: Duration,
    quiet: bool,
) -> Value {
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

    let auth = admin_token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let mut client = HttpClient::new(target);
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
    let mut published = 0;
    let mut error = None;
    let mut body = Vec::new();
    // Paced like the fan-out publisher: a burst larger than the bus capacity
    // would measure lag, not delivery throughput.
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    'publish: while published < events && started.elapsed() < timeout {
        ticker.tick().await;
        let due = ((rate * started.elapsed().as_secs_f64()).ceil() as u64).min(events);
        while published < due {
            let n = (due - published).min(1000);
            body.clear();
            body.push(b'[');
            let t = unix_nanos();
            for i in 0..n {
                if i > 0 {
                    body.push(b',');
                }
                crate::probe_event(&mut body, t, published + i, None, 256);
            }
            body.push(b']');
            match client
                .request("POST", "/api/v1/events", &headers, &body)
                .await
            {
                Ok(resp) if (200..300).contains(&resp.status) => published += n,
                Ok(resp) => {
                    error = Some(format!("publish answered {}", resp.status));
                    break 'publish;
                }
                Err(e) => {
                    error = Some(format!("publish: {e}"));
                    break 'publish;
                }
            }
        }
    }
    let publish_s = started.elapsed().as_secs_f64();
    // Wait for the rest; give up after 5 s without progress. The server's
    // CPU is read at the last progress, so idle waiting does not dilute it.
    let (mut seen, mut last_progress) = (0, Instant::now());
    let mut server_cpu_pct = server_cpu.as_ref().and_then(|m| m.percent());
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
        "published": published,
        "publish_s": publish_s,
        "publish_error": error,
        "delivered": unique,
        "requests": requests,
        "duplicates": requests.saturating_sub(unique),
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
