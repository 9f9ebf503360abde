//! `cargo xtask bench --only compression [--quick]`: what SSE compression
//! costs and saves (docs/protocol.md §3, "Compression").
//!
//! For each format (`v1`, `envelope`) and each encoding (plain, gzip, br,
//! zstd), a fresh `event-server` gets `subscribers` SSE connections (raw
//! sockets in this process sending `Accept-Encoding: <encoding>`), then
//! `rate` events/s for `duration` seconds published over HTTP. Measured:
//!
//! * bytes on the wire per event and subscriber: everything the sockets
//!   read during the run (chunked framing included) over events ×
//!   subscribers;
//! * server CPU per delivery: the server's user + system time during the
//!   run (`/proc/<pid>/stat`) over events × subscribers.
//!
//! One connection per run keeps its bytes and is decoded at the end (with
//! flate2, brotli, ruzstd): it must hold every event, or the run fails (a
//! subscriber that fell behind and lost events would also be counted
//! short on bytes).
//! The events are `JobProgress` like a busy queue's (a fresh job id, a
//! message), the common case; a table is printed, BENCHMARKS.md is left
//! alone.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::run::{self, Server, ServerKind};
use super::{Plan, sh};

/// Encodings measured; `None` is plain.
const ENCODINGS: [Option<&str>; 4] = [None, Some("gzip"), Some("br"), Some("zstd")];

/// Events per publish request.
const BATCH: u64 = 50;

/// The sizes of one compression run.
struct Sizes {
    subscribers: u64,
    rate: u64,
    duration: f64,
}

/// `--only compression`.
pub fn compression_only(plan: &Plan) -> Result<(), String> {
    let sizes = if plan.quick {
        Sizes {
            subscribers: 50,
            rate: 100,
            duration: 2.0,
        }
    } else {
        Sizes {
            subscribers: 2_000,
            rate: 1_000,
            duration: 10.0,
        }
    };
    let _postgres_built = super::build_server()?;
    let bins = run::Bins::locate_server()?;
    let tmp = std::env::temp_dir().join(format!("matric-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut rows = Vec::new();
    let result = (|| -> Result<(), String> {
        for format in ["v1", "envelope"] {
            for encoding in ENCODINGS {
                let server = Server::start_with(
                    &bins,
                    ServerKind::Ours,
                    &tmp,
                    None,
                    &[("SSE_COMPRESSION", "on".to_owned())],
                )?;
                let row = rt.block_on(one_run(&server, &sizes, format, encoding));
                server.stop();
                rows.push(row?);
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    println!(
        "\n{}\nload average before {load_before}, after {}; {:.0} s; git {}",
        table(&sizes, &rows),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

/// The table: one row per format and encoding.
fn table(sizes: &Sizes, rows: &[Value]) -> String {
    let mut out = format!(
        "SSE compression: {} subscribers, {} events/s for {} s (`cargo xtask bench --only compression`)\n\n\
         | format | encoding | bytes on the wire per event | vs plain | server CPU per delivery | vs plain |\n\
         |---|---|---|---|---|---|\n",
        sizes.subscribers, sizes.rate, sizes.duration
    );
    // A share of the plain run's figure; none when that is too small to
    // divide by (a quick run's CPU is a few clock ticks).
    let share = |v: f64, plain: f64| {
        if plain >= 1.0 {
            format!("{:.0} %", v / plain * 100.0)
        } else {
            "—".to_owned()
        }
    };
    let mut plain = (0.0, 0.0);
    for row in rows {
        let bytes = row["bytes_per_event"].as_f64().unwrap_or(0.0);
        let cpu = row["cpu_ns_per_delivery"].as_f64().unwrap_or(0.0);
        if row["encoding"] == "plain" {
            plain = (bytes, cpu);
        }
        out.push_str(&format!(
            "| {} | {} | {bytes:.1} | {} | {cpu:.0} ns | {} |\n",
            row["format"].as_str().unwrap_or(""),
            row["encoding"].as_str().unwrap_or(""),
            share(bytes, plain.0),
            share(cpu, plain.1),
        ));
    }
    out.push_str(
        "\nCPU is the server's user + system time (clock ticks of /proc/<pid>/stat) over events × subscribers.\n",
    );
    out
}

/// The server's user + system CPU time so far.
fn cpu_time(pid: u32) -> Result<Duration, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // After the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let hz: u64 = sh("getconf CLK_TCK").trim().parse().unwrap_or(100);
    Ok(Duration::from_nanos(
        (ticks(11) + ticks(12)) * 1_000_000_000 / hz.max(1),
    ))
}

async fn one_run(
    server: &Server,
    sizes: &Sizes,
    format: &str,
    encoding: Option<&str>,
) -> Result<Value, String> {
    let addr = server.url.trim_start_matches("http://").to_owned();
    let path = format!("/api/v1/events?format={format}&heartbeat=300");
    let wire = Arc::new(AtomicU64::new(0));
    // The first subscriber's bytes, decoded at the end.
    let kept = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..sizes.subscribers {
        let mut tcp = subscribe(&addr, &path, encoding).await?;
        let wire = wire.clone();
        let kept = (i == 0).then(|| kept.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            while let Ok(n) = tcp.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                wire.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(kept) = &kept {
                    kept.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend_from_slice(&buf[..n]);
                }
            }
        }));
    }
    // The confirmations are in; count only what the events bring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.pid();
    let (wire_before, cpu_before) = (wire.load(Ordering::Relaxed), cpu_time(pid)?);
    let total = (sizes.rate as f64 * sizes.duration) as u64;
    publish(&addr, sizes.rate, total).await?;
    // Settled: the counters stop moving for half a second.
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(60);
    while wire.load(Ordering::Relaxed) != last && Instant::now() < deadline {
        last = wire.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (wire_after, cpu_after) = (wire.load(Ordering::Relaxed), cpu_time(pid)?);
    let deliveries = (total * sizes.subscribers) as f64;
    let bytes = (wire_after - wire_before) as f64 / deliveries;
    let cpu = (cpu_after - cpu_before).as_nanos() as f64 / deliveries;
    for t in &tasks {
        t.abort();
    }
    let body = dechunk(&kept.lock().unwrap_or_else(|p| p.into_inner()));
    let events = count_events(&decode(encoding, &body));
    if events < total {
        return Err(format!(
            "{format} {}: a subscriber decoded {events} of {total} events",
            encoding.unwrap_or("plain")
        ));
    }
    println!(
        "bench: {format} {}: {bytes:.1} B/event, {cpu:.0} ns CPU/delivery",
        encoding.unwrap_or("plain")
    );
    Ok(json!({
        "format": format,
        "encoding": encoding.unwrap_or("plain"),
        "bytes_per_event": bytes,
        "cpu_ns_per_delivery": cpu,
    }))
}

/// Sends the request, reads the response head; the socket is then at the
/// body.
async fn subscribe(addr: &str, path: &str, encoding: Option<&str>) -> Result<TcpStream, String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let accept = encoding.map_or(String::new(), |e| format!("Accept-Encoding: {e}\r\n"));
    let compression = if encoding.is_none() {
        "&compression=false"
    } else {
        ""
    };
    tcp.write_all(
        format!("GET {path}{compression} HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n").as_bytes(),
    )
    .await
    .map_err(|e| format!("request: {e}"))?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return Err("the server closed the stream before its head".to_owned()),
        }
        if head.len() > 8192 {
            return Err("an oversized response head".to_owned());
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("the stream was refused: {head}"));
    }
    if let Some(e) = encoding
        && !head.contains(&format!("content-encoding: {e}"))
    {
        return Err(format!("asked for {e}, got: {head}"));
    }
    Ok(tcp)
}

/// Publishes `total` `JobProgress` events at `rate` per second, in batches.
async fn publish(addr: &str, rate: u64, total: u64) -> Result<(), String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    let mut job = 0u64;
    while sent < total {
        let n = BATCH.min(total - sent);
        let events: Vec<Value> = (0..n)
            .map(|i| {
                job += 1;
                json!({
                    "type": "JobProgress",
                    "job_id": format!("0197c0de-5e1a-7a00-8000-{:012x}", job / 10),
                    "progress": (sent + i) % 101,
                    "message": format!("Embedding chunk {} of 24", (sent + i) % 24),
                })
            })
            .collect();
        let body = Value::Array(events).to_string();
        let request = format!(
            "POST /api/v1/events HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("publish: {e}"))?;
        read_response(&mut tcp).await?;
        sent += n;
        // On schedule: the next batch when it is due.
        let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
    Ok(())
}

/// Reads one response with a `Content-Length` body; an error unless 2xx.
async fn read_response(tcp: &mut TcpStream) -> Result<(), String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tcp.read(&mut byte).await {
            Ok(1) => buf.push(byte[0]),
            _ => return Err("the publish connection closed".to_owned()),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body)
        .await
        .map_err(|e| format!("publish answer: {e}"))?;
    if !head.starts_with("http/1.1 2") {
        return Err(format!(
            "publish refused: {head}{}",
            String::from_utf8_lossy(&body)
        ));
    }
    Ok(())
}

/// The data of a chunked body (a partial last chunk is left out).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let Ok(size) = usize::from_str_radix(String::from_utf8_lossy(&body[..end]).trim(), 16)
        else {
            break;
        };
        let rest = &body[end + 2..];
        if size == 0 || rest.len() < size + 2 {
            break;
        }
        out.extend_from_slice(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// What a streaming decoder makes of `data` so far.
fn decode(encoding: Option<&str>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut read_all = |mut r: Box<dyn Read + '_>| {
        let mut buf = [0u8; 8192];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    };
    match encoding {
        None => return data.to_vec(),
        Some("gzip") => read_all(Box::new(flate2::read::GzDecoder::new(data))),
        Some("br") => read_all(Box::new(brotli::Decompressor::new(data, 4096))),
        Some(_) => {
            let mut rest = data;
            while !rest.is_empty() {
                match ruzstd::decoding::StreamingDecoder::new(&mut rest) {
                    Ok(dec) => read_all(Box::new(dec)),
                    Err(_) => break,
                }
            }
        }
    }
    out
}

/// The `JobProgress` frames in a decoded stream.
fn count_events(decoded: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(decoded);
    text.matches("\"type\":\"JobProgress\"").count() as u64
}
