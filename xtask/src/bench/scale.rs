//! `cargo xtask bench --only scale [--connections N] [--rate R]` (issue 23,
//! "100,000 concurrent connections"): N connections (default 100,000; half
//! WebSocket, half SSE) held at once, the server's RSS per connection
//! against the raw floor's, a fan-out at R events/s (default 100) to all of
//! them, then every client disconnects: each instance's connection gauge
//! must return to 0 and its RSS near where it started.
//!
//! No process may hold more sockets than its file-descriptor hard limit
//! (`ulimit -Hn`; raising it needs `CAP_SYS_RESOURCE`). So the connections
//! are split over as many server processes as the limit requires, each with
//! its own `loadgen --subscribe` client process: `raw-floor` processes for
//! the floor, `event-server` instances on one JetStream stream of the local
//! NATS (`nats://127.0.0.1:4222`, a stream of this run's own, deleted at the
//! end) for ours — the product's horizontal deployment, where one publish
//! reaches every instance's clients. The clients connect from several
//! loopback source addresses (`--source-addrs`), so no address runs out of
//! ephemeral ports. Then the same on one process of each kind, at the
//! largest count that fits its limit.
//!
//! Every phase has a deadline; the processes are stopped and the stream
//! deleted whatever happens. The table is printed; BENCHMARKS.md is left
//! alone.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::report::{fmt, num};
use super::run::{self, Bins, Server, ServerKind, cargo_build, run_json};
use super::{Plan, sh};

/// Raises the open-file limit to the hard limit, then runs the program.
const WITH_NOFILE: &str = "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"";
/// The local NATS of the machine (its JetStream carries the cluster).
const NATS_ADDR: &str = "127.0.0.1:4222";
/// Descriptors a process keeps for other things than client sockets
/// (event-server reserves 128; the rest is margin).
const FD_MARGIN: u64 = 3_300;
/// Loopback source addresses per client process.
const SOURCES_PER_PHASE: u64 = 6;
/// Seconds of publishing in the fan-out.
const FANOUT_SECONDS: f64 = 5.0;
/// How long after the last connection RSS is read: past event-server's
/// first periodic `QueueStatus` (5 s) and first WebSocket ping (30 s), which
/// is what a connection allocates as it ages. A phase that connects in 3 s
/// and one that connects over 40 s then compare connections that have all
/// had both.
const AGE_BEFORE_READING: Duration = Duration::from_secs(35);
/// How long after the gauges reached 0 the RSS "after the close" is read:
/// past event-server's last follow-up trim (`memory::FOLLOW_UPS`: 5, 15, 30
/// and 60 s after the first, which runs a second after the count settles),
/// since what the closed connections held is not all freed when the count
/// falls. The table also shows the reading at 2 s.
const SETTLED_AFTER_CLOSE: Duration = Duration::from_secs(65);

/// Sizes of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizes {
    /// Connections in all.
    pub connections: u64,
    /// Server processes (and client processes) they are split over.
    pub processes: u64,
    /// The largest count one process holds (the single-process phase).
    pub single: u64,
    /// Fan-out rate, events/s.
    pub rate: u64,
}

/// How many processes `connections` need under a descriptor hard limit of
/// `hard`, and the largest count that fits one process.
pub fn sizes(connections: u64, hard: u64, rate: u64) -> Sizes {
    let per_process = hard.saturating_sub(FD_MARGIN).max(1);
    Sizes {
        connections,
        processes: connections.div_ceil(per_process).max(1),
        single: connections.min(hard.saturating_sub(1_000).max(1)),
        rate,
    }
}

/// The file-descriptor hard limit of processes started from here.
fn hard_limit() -> u64 {
    sh("ulimit -Hn").parse().unwrap_or(1_024)
}

/// `count` connections split over `n` parts as evenly as possible.
fn split(count: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| count / n + u64::from(i < count % n))
        .collect()
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A `kB` field of process `pid`'s `/proc/PID/status`: `VmRSS` (its
/// resident set) or `RssAnon` (the anonymous part of it: the heaps, without
/// the binary's code pages, which are file-backed and shared by every
/// instance of the same binary).
fn process_kib(pid: u32, field: &str) -> Option<u64> {
    status_kib(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// A `kB` field of a `/proc/PID/status` text.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The sum of the WebSocket and SSE connection gauges in a `/metrics` text.
pub fn gauge_of(metrics: &str) -> Option<f64> {
    sum_of(
        metrics,
        &[
            "matric_ws_connections_active",
            "matric_sse_connections_active",
        ],
    )
}

/// The events a server's replay ring holds, from a `/metrics` text
/// (`matric_replay_ring_events`).
pub fn ring_events_of(metrics: &str) -> Option<f64> {
    sum_of(metrics, &["matric_replay_ring_events"])
}

/// The sum of the samples of the metrics `names` (any labels) in a
/// `/metrics` text; `None` when there is none.
fn sum_of(metrics: &str, names: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in metrics.lines() {
        let Some(rest) = names.iter().find_map(|name| line.strip_prefix(name)) else {
            continue;
        };
        // `name value` or `name{labels} value`.
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// A server's connection gauge (`GET /metrics`).
fn gauge(server: &Server) -> Option<f64> {
    gauge_of(&metrics(server)?)
}

/// A server's `GET /metrics` text.
fn metrics(server: &Server) -> Option<String> {
    let addr: SocketAddr = server.url.strip_prefix("http://")?.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// A `loadgen --subscribe` process: its stdin (the stop line) and its JSON
/// lines as they come.
struct Subscriber {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<Value>,
}

impl Subscriber {
    fn start(
        bins: &Bins,
        server: &Server,
        count: u64,
        sources: &str,
        timeout: Duration,
    ) -> Result<Subscriber, String> {
        let mut child = Command::new("sh")
            .args(["-c", WITH_NOFILE])
            .arg(&bins.loadgen)
            .args(["--url", &server.url, "--subscribe", &count.to_string()])
            .args(["--idle-mix", "both", "--ws-client", "raw"])
            .args(["--concurrency", "64", "--connect-timeout", "60"])
            .args(["--settle", "15", "--quiet"])
            .args(["--subscribe-timeout", &timeout.as_secs().to_string()])
            .args(["--source-addrs", sources])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("start loadgen: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("loadgen has no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v.is_object()
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        Ok(Subscriber {
            child,
            stdin,
            lines,
        })
    }

    /// The next JSON line, waiting until `deadline`.
    fn next(&self, deadline: Instant) -> Result<Value, String> {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| "loadgen gave no result in time".to_owned())
    }

    fn stop(&mut self, line: &str) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "{line}");
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One NATS request over the plain protocol; the reply's payload.
fn nats_request(subject: &str, payload: &str) -> Result<String, String> {
    let addr: SocketAddr = NATS_ADDR.parse().map_err(|e| format!("{e}"))?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("nats {NATS_ADDR}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.scale 1\r\nPUB {subject} _INBOX.scale {}\r\n{payload}\r\nPING\r\n",
        payload.len()
    )
    .map_err(|e| format!("nats: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if reader
            .read_line(&mut line)
            .map_err(|e| format!("nats: {e}"))?
            == 0
        {
            return Err("nats closed the connection".to_owned());
        }
        if line.starts_with("-ERR") {
            return Err(format!("nats: {}", line.trim()));
        }
        if line.starts_with("MSG ") {
            let mut body = String::new();
            reader
                .read_line(&mut body)
                .map_err(|e| format!("nats: {e}"))?;
            return Ok(body.trim().to_owned());
        }
    }
}

/// Deletes a JetStream stream of the local NATS.
pub fn delete_stream(name: &str) -> Result<(), String> {
    let reply = nats_request(&format!("$JS.API.STREAM.DELETE.{name}"), "")?;
    if reply.contains("\"success\":true") {
        Ok(())
    } else {
        Err(format!("deleting stream {name}: {reply}"))
    }
}

/// What one phase measured.
#[derive(Debug, Default)]
struct Phase {
    label: String,
    processes: u64,
    connections: u64,
    established: u64,
    failed: u64,
    connect_s: f64,
    rss_start_kib: u64,
    rss_open_kib: u64,
    /// 2 s after the gauges reached 0 (about the first trim's time).
    rss_early_kib: Option<u64>,
    /// [`SETTLED_AFTER_CLOSE`] after the gauges reached 0.
    rss_end_kib: Option<u64>,
    /// `RssAnon` summed over the servers at the start and after the close.
    anon_start_kib: u64,
    anon_end_kib: Option<u64>,
    gauge_open: Option<f64>,
    gauges_end: Vec<Option<f64>>,
    gauge_zero_s: Option<f64>,
    /// Per instance after the close, the events its replay ring holds
    /// (event-server only).
    ring_events: Vec<f64>,
    fanout: Option<Value>,
    error: Option<String>,
}

impl Phase {
    fn per_conn_bytes(&self) -> Option<f64> {
        (self.established > 0).then(|| {
            self.rss_open_kib.saturating_sub(self.rss_start_kib) as f64 * 1024.0
                / self.established as f64
        })
    }
}

/// Loopback source addresses of phase `n`: `127.0.<n+1>.2` onwards, a block
/// of its own so the ports a previous phase left in TIME_WAIT do not count.
fn sources(n: u64) -> String {
    (0..SOURCES_PER_PHASE)
        .map(|i| format!("127.0.{}.{}", n + 1, i + 2))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts the servers of a phase.
fn servers(
    bins: &Bins,
    tmp: &Path,
    kind: ServerKind,
    n: u64,
    stream: Option<&str>,
) -> Result<Vec<Server>, String> {
    (0..n)
        .map(|i| {
            let env: Vec<(&str, String)> = match stream {
                Some(stream) => vec![
                    ("NATS_URL", format!("nats://{NATS_ADDR}")),
                    ("NATS_STREAM", stream.to_owned()),
                    (
                        "NATS_SUBJECT_PREFIX",
                        stream.to_lowercase().replace('_', "."),
                    ),
                    ("NATS_INSTANCE_ID", format!("scale-{i}")),
                    ("MAX_CONNECTIONS", "20000".to_owned()),
                ],
                None => vec![("MAX_CONNECTIONS", "20000".to_owned())],
            };
            Server::start_with(bins, kind, tmp, None, &env)
        })
        .collect()
}

/// One phase: `connections` over `n` servers of `kind`, one subscriber
/// process each; with `stream` (event-server on NATS) a fan-out at `rate`
/// between opening and closing.
#[allow(clippy::too_many_arguments)]
fn phase(
    bins: &Bins,
    tmp: &Path,
    label: &str,
    kind: ServerKind,
    connections: u64,
    n: u64,
    stream: Option<&str>,
    rate: u64,
    block: u64,
) -> Phase {
    let mut p = Phase {
        label: label.to_owned(),
        processes: n,
        connections,
        ..Phase::default()
    };
    if let Err(e) = phase_inner(bins, tmp, kind, n, stream, rate, block, &mut p) {
        p.error = Some(e);
    }
    p
}

#[allow(clippy::too_many_arguments)]
fn phase_inner(
    bins: &Bins,
    tmp: &Path,
    kind: ServerKind,
    n: u64,
    stream: Option<&str>,
    rate: u64,
    block: u64,
    p: &mut Phase,
) -> Result<(), String> {
    println!(
        "==> {}: {} connections over {n} processes",
        p.label, p.connections
    );
    let servers = servers(bins, tmp, kind, n, stream)?;
    // Let each server settle (NATS consumers, allocator arenas) first.
    std::thread::sleep(Duration::from_secs(2));
    let sum = |servers: &[Server], field: &str| -> u64 {
        servers
            .iter()
            .filter_map(|s| process_kib(s.pid(), field))
            .sum()
    };
    let rss = |servers: &[Server]| sum(servers, "VmRSS");
    p.rss_start_kib = rss(&servers);
    p.anon_start_kib = sum(&servers, "RssAnon");
    let connect_limit = Duration::from_secs(300);
    let started = Instant::now();
    let mut subs = servers
        .iter()
        .zip(split(p.connections, n))
        .map(|(s, count)| Subscriber::start(bins, s, count, &sources(block), connect_limit))
        .collect::<Result<Vec<_>, String>>()?;
    let deadline = started + connect_limit + Duration::from_secs(30);
    for sub in &subs {
        let connected = sub.next(deadline)?;
        p.established += num(&connected, &["established"]).unwrap_or(0.0) as u64;
        p.failed += num(&connected, &["failed"]).unwrap_or(0.0) as u64;
    }
    p.connect_s = started.elapsed().as_secs_f64();
    println!(
        "    established {} of {}, failed {}, in {:.1} s",
        p.established, p.connections, p.failed, p.connect_s
    );
    std::thread::sleep(AGE_BEFORE_READING);
    p.rss_open_kib = rss(&servers);
    p.gauge_open = servers.iter().map(gauge).sum();

    let mut stop = "stop".to_owned();
    if kind == ServerKind::Ours && rate > 0 {
        let at = unix_nanos();
        let url = &servers[0].url;
        let args = [
            "--url",
            url,
            "--ws",
            "0",
            "--sse",
            "0",
            "--rate",
            &rate.to_string(),
            "--duration",
            &FANOUT_SECONDS.to_string(),
            "--settle",
            "0",
            "--quiet",
        ];
        let published = run_json(&bins.loadgen, &args, 60)?
            .pop()
            .unwrap_or(Value::Null);
        let count = num(&published, &["published"]).unwrap_or(0.0) as u64;
        stop = format!("stop {count} {at}");
        p.fanout = Some(json!({"publisher": published, "clients": []}));
    }
    for sub in &mut subs {
        sub.stop(&stop);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reports = Vec::new();
    for sub in &subs {
        reports.push(sub.next(deadline).unwrap_or_else(|e| json!({"error": e})));
    }
    if let Some(fanout) = p.fanout.as_mut() {
        fanout["clients"] = Value::Array(reports);
    }
    drop(subs);

    // Every close noticed: the gauges back to 0.
    let closed = Instant::now();
    let limit = Duration::from_secs(60);
    loop {
        p.gauges_end = servers.iter().map(gauge).collect();
        if p.gauges_end.iter().all(|g| *g == Some(0.0)) {
            p.gauge_zero_s = Some(closed.elapsed().as_secs_f64());
            break;
        }
        if closed.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    p.rss_early_kib = Some(rss(&servers));
    std::thread::sleep(SETTLED_AFTER_CLOSE - Duration::from_secs(2));
    p.rss_end_kib = Some(rss(&servers));
    p.anon_end_kib = Some(sum(&servers, "RssAnon"));
    if kind == ServerKind::Ours {
        // The replay ring's events stay after the close (copied by the
        // trim, without their renderings: BENCHMARKS.md, branch
        // `close-fanout` and "the retained events' renderings"):
        // legitimate retained data that "RSS after close" includes.
        p.ring_events = servers
            .iter()
            .filter_map(|s| ring_events_of(&metrics(s)?))
            .collect();
    }
    for s in servers {
        s.stop();
    }
    Ok(())
}

/// Merged figures of a fan-out: `(published, expected, delivered,
/// delivered/s, lost, lag signals, clients dropped, p50 ms (median of the
/// client processes), p99 ms (worst client process))`.
fn fanout_figures(v: &Value) -> Value {
    let clients = v["clients"].as_array().cloned().unwrap_or_default();
    let sum = |k: &str| -> f64 { clients.iter().filter_map(|c| num(c, &[k])).sum() };
    let mut p50: Vec<f64> = clients
        .iter()
        .filter_map(|c| num(c, &["latency_us", "p50"]))
        .collect();
    p50.sort_by(f64::total_cmp);
    let p99 = clients
        .iter()
        .filter_map(|c| num(c, &["latency_us", "p99"]))
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let window = clients
        .iter()
        .filter_map(|c| num(c, &["window_s"]))
        .fold(0.0, f64::max);
    json!({
        "published": num(v, &["publisher", "published"]),
        "publish_rate": num(v, &["publisher", "publish_rate"]),
        "expected": sum("expected"),
        "delivered": sum("delivered"),
        "delivered_per_s": (window > 0.0).then(|| sum("delivered") / window),
        "lost": sum("lost"),
        "lag_signals": sum("lag_signals"),
        "clients_dropped": sum("clients_dropped"),
        "p50_ms": p50.get(p50.len() / 2).map(|us| us / 1000.0),
        "p99_ms": p99.map(|us| us / 1000.0),
        "errors": clients.iter().filter_map(|c| c.get("error").or(c.get("first_error")).filter(|e| !e.is_null())).cloned().collect::<Vec<_>>(),
    })
}

fn table(phases: &[Phase], floor_of: impl Fn(&str) -> Option<f64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| run | processes | connections | established | failed | connect s | RSS start MiB | RSS growth per connection, bytes | × floor | gauge open | gauges after close | gauge 0 after s | RSS 2 s after close vs start | RSS 65 s after close vs start | anonymous RSS 65 s after close vs start | replay ring events per instance after close |"
    );
    let _ = writeln!(
        s,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for p in phases {
        if let Some(e) = &p.error {
            let _ = writeln!(
                s,
                "| {} | {} | {} | failed: {e} ||||||||||||",
                p.label, p.processes, p.connections
            );
            continue;
        }
        let per = p.per_conn_bytes();
        let ratio = per.zip(floor_of(&p.label)).map(|(a, b)| a / b);
        let change = |end: Option<u64>, start: u64| {
            end.map(|e| format!("{:+.1} %", (e as f64 / start.max(1) as f64 - 1.0) * 100.0))
                .unwrap_or_else(|| "–".to_owned())
        };
        let gauges: Vec<String> = p.gauges_end.iter().map(|g| fmt(*g, 0)).collect();
        let ring = ring_range(&p.ring_events);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            p.label,
            p.processes,
            fmt(Some(p.connections as f64), 0),
            fmt(Some(p.established as f64), 0),
            fmt(Some(p.failed as f64), 0),
            p.connect_s,
            fmt(Some(p.rss_start_kib as f64 / 1024.0), 1),
            fmt(per, 0),
            fmt(ratio, 2),
            fmt(p.gauge_open, 0),
            gauges.join(" "),
            fmt(p.gauge_zero_s, 1),
            change(p.rss_early_kib, p.rss_start_kib),
            change(p.rss_end_kib, p.rss_start_kib),
            change(p.anon_end_kib, p.anon_start_kib),
            ring,
        );
    }
    for p in phases {
        let Some(f) = &p.fanout else { continue };
        let f = fanout_figures(f);
        let _ = writeln!(
            s,
            "\nFan-out, {}: published {} ({} events/s), expected {} deliveries, delivered {} ({} /s), lost {}, lag signals {}, clients dropped {}, p50 {} ms (median of the client processes), p99 {} ms (worst client process){}",
            p.label,
            fmt(num(&f, &["published"]), 0),
            fmt(num(&f, &["publish_rate"]), 1),
            fmt(num(&f, &["expected"]), 0),
            fmt(num(&f, &["delivered"]), 0),
            fmt(num(&f, &["delivered_per_s"]), 0),
            fmt(num(&f, &["lost"]), 0),
            fmt(num(&f, &["lag_signals"]), 0),
            fmt(num(&f, &["clients_dropped"]), 0),
            fmt(num(&f, &["p50_ms"]), 1),
            fmt(num(&f, &["p99_ms"]), 1),
            f["errors"]
                .as_array()
                .filter(|e| !e.is_empty())
                .map(|e| format!("; errors: {}", Value::Array(e.clone())))
                .unwrap_or_default(),
        );
    }
    s
}

/// `min–max` of the instances' ring counts (`n` when all are equal, `–`
/// when none was read).
fn ring_range(counts: &[f64]) -> String {
    let range = counts.iter().fold(None, |r: Option<(f64, f64)>, &x| {
        Some(r.map_or((x, x), |(lo, hi)| (lo.min(x), hi.max(x))))
    });
    match range {
        Some((a, b)) if a == b => fmt(Some(a), 0),
        Some((a, b)) => format!("{}–{}", fmt(Some(a), 0), fmt(Some(b), 0)),
        None => "–".to_owned(),
    }
}

/// The value after `flag` in `args`.
fn arg(args: &[String], flag: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.replace(['_', ','], "").parse().ok())
}

/// `--only scale`.
pub fn scale_only(plan: &Plan, args: &[String]) -> Result<(), String> {
    let default = if plan.quick { 2_000 } else { 100_000 };
    let hard = hard_limit();
    let mut size = sizes(
        arg(args, "--connections").unwrap_or(default),
        hard,
        arg(args, "--rate").unwrap_or(100),
    );
    // More processes than the limit needs (e.g. `--quick` with 2): the
    // cluster path exercised at any size.
    if let Some(n) = arg(args, "--processes") {
        size.processes = size.processes.max(n);
    } else if plan.quick {
        size.processes = size.processes.max(2);
    }
    run::build_loadgen()?;
    run::build_examples(&["raw-floor"])?;
    cargo_build(&[
        "build",
        "--profile",
        run::PROFILE,
        "-p",
        "event-server",
        "--features",
        "nats",
    ])?;
    let bins = Bins::locate_without_bench_core().or_else(|_| {
        // embed-axum is not needed here.
        let b = Bins::locate_server_and_loadgen()?;
        if b.floor.exists() {
            Ok(b)
        } else {
            Err(format!("{} was not built", b.floor.display()))
        }
    })?;
    let tmp = std::env::temp_dir().join(format!("matric-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    println!(
        "scale: {} connections, file-descriptor hard limit {hard}: {} server processes and {} client processes of at most {} each; single process: {}",
        size.connections,
        size.processes,
        size.processes,
        size.connections.div_ceil(size.processes),
        size.single
    );
    let stream = format!(
        "SCALE_{}_{}",
        std::process::id(),
        unix_nanos() / 1_000_000_000
    );
    let mut phases = Vec::new();
    phases.push(phase(
        &bins,
        &tmp,
        "raw-floor",
        ServerKind::Floor,
        size.connections,
        size.processes,
        None,
        0,
        0,
    ));
    phases.push(phase(
        &bins,
        &tmp,
        "event-server on NATS",
        ServerKind::Ours,
        size.connections,
        size.processes,
        Some(&stream),
        size.rate,
        1,
    ));
    let deleted = delete_stream(&stream);
    phases.push(phase(
        &bins,
        &tmp,
        "raw-floor, one process",
        ServerKind::Floor,
        size.single,
        1,
        None,
        0,
        2,
    ));
    phases.push(phase(
        &bins,
        &tmp,
        "event-server, one process",
        ServerKind::Ours,
        size.single,
        1,
        None,
        0,
        3,
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let floor = |label: &str| {
        let name = if label.contains("one process") {
            "raw-floor, one process"
        } else {
            "raw-floor"
        };
        phases
            .iter()
            .find(|p| p.label == name && p.error.is_none())
            .and_then(Phase::per_conn_bytes)
    };
    println!(
        "\n{}\nNATS stream {stream}: {}; load average before {load_before}, after {}; {:.0} s; git {}",
        table(&phases, floor),
        match deleted {
            Ok(()) => "deleted".to_owned(),
            Err(e) => format!("not deleted: {e}"),
        },
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_split_connections_under_the_descriptor_limit() {
        let s = sizes(100_000, 20_000, 100);
        assert_eq!(s.processes, 6);
        assert!(split(100_000, 6).iter().all(|&c| c <= 16_700));
        assert_eq!(split(100_000, 6).iter().sum::<u64>(), 100_000);
        assert_eq!(s.single, 19_000);
        // A generous limit: one process does.
        assert_eq!(sizes(100_000, 1_048_576, 100).processes, 1);
        assert_eq!(split(7, 3), vec![3, 2, 2]);
    }

    #[test]
    fn the_gauge_is_the_sum_of_both_transports() {
        let text = "# TYPE matric_ws_connections_active gauge\n\
                    matric_ws_connections_active 3\n\
                    matric_sse_connections_active{instance=\"a\"} 4\n\
                    matric_ws_connections_active_total 99\n";
        assert_eq!(gauge_of(text), Some(7.0));
        assert_eq!(gauge_of("other 1\n"), None);
    }

    /// Against the machine's NATS (skipped when it does not answer, unless
    /// `EVENT_TEST_REQUIRE_SERVICES` is set).
    #[test]
    fn the_run_s_stream_is_deleted_from_the_local_nats() {
        if TcpStream::connect(NATS_ADDR).is_err() {
            assert!(
                std::env::var_os("EVENT_TEST_REQUIRE_SERVICES").is_none(),
                "no NATS at {NATS_ADDR}"
            );
            return;
        }
        let name = format!("XTASK_SCALE_TEST_{}", std::process::id());
        let config = format!(
            r#"{{"name":"{name}","subjects":["xtask.scale.test.{}.>"],"storage":"memory"}}"#,
            std::process::id()
        );
        let created = nats_request(&format!("$JS.API.STREAM.CREATE.{name}"), &config).unwrap();
        assert!(created.contains(&name), "{created}");
        delete_stream(&name).unwrap();
        let info = nats_request(&format!("$JS.API.STREAM.INFO.{name}"), "").unwrap();
        assert!(info.contains("stream not found"), "{info}");
        assert!(delete_stream(&name).is_err());
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tevent-server\nVmRSS:\t   81234 kB\nRssAnon:\t   60000 kB\nRssFile:\t   21234 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(81_234));
        assert_eq!(status_kib(status, "RssAnon"), Some(60_000));
        assert_eq!(status_kib(status, "RssShmem"), None);
        // A field whose name starts another's is not taken for it.
        assert_eq!(status_kib("RssAnonX:\t5 kB\n", "RssAnon"), None);
    }

    #[test]
    fn the_ring_events_are_read_from_their_gauge() {
        let text = "# TYPE matric_replay_ring_events gauge\n\
                    matric_replay_ring_events 109\n\
                    matric_replay_ring_events_other 5\n\
                    matric_replay_ring_bytes 279040\n";
        assert_eq!(ring_events_of(text), Some(109.0));
        assert_eq!(ring_events_of("other 1\n"), None);
        assert_eq!(ring_range(&[109.0, 111.0, 109.0]), "109–111");
        assert_eq!(ring_range(&[5.0, 5.0]), "5");
        assert_eq!(ring_range(&[]), "–");
    }

    #[test]
    fn source_blocks_are_distinct_loopback_addresses() {
        assert_eq!(sources(0).split(',').count(), SOURCES_PER_PHASE as usize);
        assert!(sources(1).starts_with("127.0.2.2,"));
        assert_ne!(sources(1), sources(2));
    }
}
