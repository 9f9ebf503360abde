//! Connection-count modes: idle scale (hold many connections), churn
//! (connect, confirm, disconnect, many times) and subscribe (one client
//! process of several in `cargo xtask bench --only scale`: hold measuring
//! subscribers while another process publishes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::client::{ClientStats, Kind, Shared, SubConfig, sse_connect, subscriber, ws_connect};
use crate::hist::Histogram;
use crate::http::connection_gauge;
use crate::progress::Progress;
use crate::sys::{CpuMeter, rss_kib};

/// Counters of a scale run.
#[derive(Debug, Default)]
struct Counts {
    done: AtomicU64,
    failed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Counts {
    fn fail(&self, error: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(error);
    }

    fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Which transports a scale run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// Alternating WebSocket and SSE.
    Both,
    /// WebSocket only.
    Ws,
    /// SSE only.
    Sse,
}

fn kind_of(i: u64, mix: Mix) -> Kind {
    if mix == Mix::Ws || (mix == Mix::Both && i.is_multiple_of(2)) {
        Kind::Ws
    } else {
        Kind::Sse
    }
}

/// Opens a connection and keeps it (never read while held).
async fn open(cfg: &SubConfig, kind: Kind) -> Result<Box<dyn Send>, String> {
    Ok(match kind {
        Kind::Ws => Box::new(ws_connect(cfg).await?),
        Kind::Sse => Box::new(sse_connect(cfg).await?),
    })
}

async fn gauge_value(cfg: &SubConfig) -> Value {
    match connection_gauge(&cfg.target).await {
        Ok(Some(v)) => json!(v),
        _ => Value::Null,
    }
}

/// Opens `count` connections (`mix`: half WebSocket, half SSE by default), `concurrency` at a
/// time, holds them all for `hold`, and reports the server's RSS growth per
/// connection.
pub async fn idle(
    cfg: Arc<SubConfig>,
    mix: Mix,
    count: u64,
    concurrency: usize,
    server_pid: Option<&str>,
    hold: Duration,
    quiet: bool,
) -> Value {
    let rss_before = server_pid.and_then(rss_kib);
    let counts = Arc::new(Counts::default());
    let held = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(count as usize)));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = Progress::start(quiet, "idle", {
        let counts = counts.clone();
        move || {
            format!(
                "established {}/{count}, failed {}",
                counts.done.load(Ordering::Relaxed),
                counts.failed.load(Ordering::Relaxed)
            )
        }
    });
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (cfg, counts, held, next) =
                (cfg.clone(), counts.clone(), held.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return;
                    }
                    match open(&cfg, kind_of(i, mix)).await {
                        Ok(conn) => {
                            held.lock().await.push(conn);
                            counts.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => counts.fail(e),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    progress.finish();
    // Let the server finish per-connection setup before reading its RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server_pid.and_then(rss_kib);
    let gauge_open = gauge_value(&cfg).await;
    let established = counts.done.load(Ordering::Relaxed);
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if established > 0 => {
            json!((a.saturating_sub(b) as f64 * 1024.0 / established as f64).round())
        }
        _ => Value::Null,
    };
    tokio::time::sleep(hold).await;
    drop(held);
    json!({
        "mode": "idle",
        "mix": format!("{mix:?}").to_lowercase(),
        "connections": count,
        "established": established,
        "failed": counts.failed.load(Ordering::Relaxed),
        "first_error": counts.first_error(),
        "connect_s": connect_s,
        "gauge_while_open": gauge_open,
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "rss_per_conn_bytes": per_conn,
    })
}

/// `cycles` connect → first frame → disconnect cycles (alternating
/// WebSocket with a close handshake and SSE with a plain TCP close),
/// `concurrency` at a time; then waits for the server's connection gauge to
/// return to 0 and compares its RSS with before.
pub async fn churn(
    cfg: Arc<SubConfig>,
    cycles: u64,
    concurrency: usize,
    server_pid: Option<&str>,
    quiet: bool,
) -> Value {
    let rss_before = server_pid.and_then(rss_kib);
    let gauge_before = gauge_value(&cfg).await;
    let server_cpu = server_pid.map(CpuMeter::start);
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = Progress::start(quiet, "churn", {
        let counts = counts.clone();
        move || {
            format!(
                "cycles {}/{cycles}, failed {}",
                counts.done.load(Ordering::Relaxed),
                counts.failed.load(Ordering::Relaxed)
            )
        }
    });
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (cfg, counts, next) = (cfg.clone(), counts.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= cycles {
                        return;
                    }
                    let result = match kind_of(i, Mix::Both) {
                        Kind::Ws => match ws_connect(&cfg).await {
                            Ok(mut ws) => {
                                // Close handshake: send ours, read until the server's arrives.
                                let _ = ws.close(None).await;
                                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                                    while let Some(Ok(_)) = ws.next().await {}
                                })
                                .await;
                                Ok(())
                            }
                            Err(e) => Err(e),
                        },
                        Kind::Sse => sse_connect(&cfg).await.map(drop),
                    };
                    match result {
                        Ok(()) => {
                            counts.done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => counts.fail(e),
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    progress.finish();
    let server_cpu_pct = server_cpu.and_then(|m| m.percent());
    // The gauge should drop to 0 once the server has noticed every close.
    let wait = Instant::now();
    let mut gauge = gauge_value(&cfg).await;
    while gauge.as_f64().is_some_and(|g| g > 0.0) && wait.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gauge = gauge_value(&cfg).await;
    }
    let gauge_zero_ms = gauge
        .as_f64()
        .is_some_and(|g| g == 0.0)
        .then(|| wait.elapsed().as_millis() as u64);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = server_pid.and_then(rss_kib);
    let change = match (rss_before, rss_after) {
        (Some(b), Some(a)) if b > 0 => json!((a as f64 / b as f64 - 1.0) * 100.0),
        _ => Value::Null,
    };
    let done = counts.done.load(Ordering::Relaxed);
    json!({
        "mode": "churn",
        "cycles": cycles,
        "completed": done,
        "failed": counts.failed.load(Ordering::Relaxed),
        "first_error": counts.first_error(),
        "elapsed_s": elapsed,
        "cycles_per_s": done as f64 / elapsed.max(1e-9),
        "server_cpu_pct": server_cpu_pct,
        "gauge_before": gauge_before,
        "gauge_after": gauge,
        "gauge_zero_ms": gauge_zero_ms,
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "rss_change_pct": change,
    })
}

/// What the driver of a subscribe run says on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    /// Probe events published (counters `0..published`).
    pub published: u64,
    /// Unix nanoseconds of the first publish (start of the delivery window).
    pub started_unix: u64,
}

/// Parses `stop <published> <first publish, unix ns>` (both optional:
/// `stop` alone, or end of input, means nothing was published).
pub fn parse_stop(line: &str) -> Option<Stop> {
    let mut words = line.split_whitespace();
    if words.next()? != "stop" {
        return None;
    }
    let mut num = || {
        words
            .next()
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(Stop {
        published: num(),
        started_unix: num(),
    })
}

/// Waits for the stop line on stdin (its own thread: stdin blocks), at most
/// `timeout`.
async fn wait_for_stop(timeout: Duration) -> (Stop, &'static str) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let stop = loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => break None,
                Ok(_) => {
                    if let Some(stop) = parse_stop(&line) {
                        break Some(stop);
                    }
                }
            }
        };
        let _ = tx.send(stop);
    });
    let nothing = Stop {
        published: 0,
        started_unix: 0,
    };
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(Some(stop))) => (stop, "stop"),
        Ok(_) => (nothing, "end of input"),
        Err(_) => (nothing, "timeout"),
    }
}

/// Subscribe mode (`--subscribe N`): opens `count` measuring subscribers
/// (`mix`), `concurrency` at a time, and prints one JSON line
/// (`"phase":"connected"`) once each is confirmed or failed. Then waits
/// (at most `timeout`) for `stop <published> <first publish ns>` on stdin,
/// lets the subscribers receive up to `settle` (ending early once all have
/// every event or nothing arrived for 2 s), disconnects them all and
/// returns the report: deliveries, loss (counter gaps and events never
/// received), lag signals, latency.
pub async fn subscribe(
    cfg: Arc<SubConfig>,
    mix: Mix,
    count: u64,
    concurrency: usize,
    settle: Duration,
    timeout: Duration,
    quiet: bool,
) -> Value {
    let shared = Arc::new(Shared::default());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let started = Instant::now();
    let handles: Vec<_> = (0..count)
        .map(|i| {
            tokio::spawn(subscriber(
                kind_of(i, mix),
                cfg.clone(),
                shared.clone(),
                permits.clone(),
                stop_rx.clone(),
                None,
            ))
        })
        .collect();
    let progress = Progress::start(quiet, "subscribe", {
        let shared = shared.clone();
        move || {
            format!(
                "established {}/{count}, failed {}",
                shared.established.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed)
            )
        }
    });
    let settled_count =
        || shared.established.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed);
    // Each connection has its own connect timeout; `timeout` bounds the whole.
    while settled_count() < count && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    progress.finish();
    let connect_s = started.elapsed().as_secs_f64();
    let established = shared.established.load(Ordering::Relaxed);
    println!(
        "{}",
        json!({
            "mode": "subscribe",
            "phase": "connected",
            "connections": count,
            "established": established,
            "failed": shared.failed.load(Ordering::Relaxed),
            "connect_s": connect_s,
        })
    );

    let (stop, why) = wait_for_stop(timeout).await;
    let total = stop.published;
    let settled = total == 0 || shared.settle(total, settle, Duration::from_millis(5)).await;
    let last_receive = shared.last_receive.load(Ordering::Relaxed);
    let window_s = (stop.started_unix > 0 && last_receive > stop.started_unix)
        .then(|| (last_receive - stop.started_unix) as f64 / 1e9);
    let _ = stop_tx.send(true);

    let mut all = ClientStats::default();
    let (mut ws_latency, mut sse_latency) = (Histogram::default(), Histogram::default());
    let (mut dropped, mut failed, mut first_error) = (0u64, 0u64, None);
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
        all.received += s.received;
        all.lost += s.lost + total.saturating_sub(s.next);
        all.lag_signals += s.lag_signals;
        all.out_of_order += s.out_of_order;
        dropped += u64::from(s.dropped);
        all.latency.merge(&s.latency);
        match s.kind {
            Some(Kind::Ws) => ws_latency.merge(&s.latency),
            Some(Kind::Sse) => sse_latency.merge(&s.latency),
            None => {}
        }
    }
    json!({
        "mode": "subscribe",
        "phase": "done",
        "mix": format!("{mix:?}").to_lowercase(),
        "connections": count,
        "established": count - failed,
        "failed": failed,
        "first_error": first_error,
        "connect_s": connect_s,
        "stopped_by": why,
        "published": total,
        "expected": total * (count - failed),
        "delivered": all.received,
        "window_s": window_s,
        "delivered_per_s": window_s.map(|w| all.received as f64 / w.max(1e-9)),
        "settled": settled,
        "lost": all.lost,
        "lag_signals": all.lag_signals,
        "out_of_order": all.out_of_order,
        "clients_dropped": dropped,
        "latency_us": crate::percentiles(&all.latency),
        "latency_us_ws": crate::percentiles(&ws_latency),
        "latency_us_sse": crate::percentiles(&sse_latency),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_line_carries_the_published_count_and_start() {
        assert_eq!(
            parse_stop("stop 500 1764000000000000000\n"),
            Some(Stop {
                published: 500,
                started_unix: 1_764_000_000_000_000_000
            })
        );
        assert_eq!(
            parse_stop("stop"),
            Some(Stop {
                published: 0,
                started_unix: 0
            })
        );
        assert_eq!(parse_stop("go 5"), None);
        assert_eq!(parse_stop(""), None);
    }
}
