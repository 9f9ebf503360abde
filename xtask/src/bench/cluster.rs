//! `cargo xtask bench --only cluster` (issue 22): three `event-server`
//! instances on one JetStream stream, WebSocket and SSE clients spread over
//! them, events published to them in turn (`loadgen` in cluster mode);
//! deliveries/s, loss, duplicates and publish → client latency split into
//! same-instance and cross-instance delivery, at 100 and 1,000 events/s.
//! Once on one `nats-server -js`, once on three forming a JetStream cluster
//! with the stream replicated three times. Everything on loopback, each
//! NATS and server process of its own, bounded in time.
//!
//! The table goes into BENCHMARKS.md between `<!-- cluster -->` and
//! `<!-- /cluster -->` (appended after the analysis marker the first time,
//! so the full run, which rewrites what is above that marker, keeps it).

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::report::{fmt, num};
use super::run::{self, Bins, Server, ServerKind, cargo_build, run_json};
use super::{Plan, sh};

/// Start of the section in BENCHMARKS.md.
const BEGIN: &str = "<!-- cluster -->";
/// End of the section.
const END: &str = "<!-- /cluster -->";
/// The goal: cross-instance p99 at most this much above same-instance, at
/// 100 events/s.
const CROSS_P99_BUDGET_MS: f64 = 10.0;
/// Instances in the cluster.
const INSTANCES: usize = 3;

/// One topology's runs: `(label, [(events/s, loadgen result)])` or why it
/// could not run.
type Runs<'a> = [(&'a str, Result<Vec<(u64, Value)>, String>)];

/// `nats-server` processes of the run; killed on drop.
pub(super) struct Nats {
    children: Vec<Child>,
    urls: Vec<String>,
    dir: PathBuf,
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

fn nats_server() -> Result<PathBuf, String> {
    let found = sh("command -v nats-server");
    if !found.is_empty() {
        return Ok(PathBuf::from(found));
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.is_file() {
        return Ok(debian);
    }
    Err("nats-server is not installed (the cluster measurement runs its own)".to_owned())
}

impl Nats {
    /// One node (`replicated == false`) or three with routes between them.
    pub(super) fn start(tmp: &Path, replicated: bool) -> Result<Nats, String> {
        let bin = nats_server()?;
        let nodes = if replicated { 3 } else { 1 };
        let dir = tmp.join(if replicated { "nats-cluster" } else { "nats" });
        let ports: Vec<(u16, u16)> = (0..nodes)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<Result<_, String>>()?;
        let mut nats = Nats {
            children: Vec::new(),
            urls: Vec::new(),
            dir,
        };
        for (i, (port, route)) in ports.iter().enumerate() {
            let store = nats.dir.join(format!("n{i}"));
            std::fs::create_dir_all(&store).map_err(|e| format!("{}: {e}", store.display()))?;
            let mut config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}\n}}\n"
            );
            if replicated {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}"))
                    .collect();
                let _ = write!(
                    config,
                    "cluster {{\n  name: matric_bench\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                );
            }
            let file = nats.dir.join(format!("n{i}.conf"));
            std::fs::write(&file, config).map_err(|e| format!("{}: {e}", file.display()))?;
            let log = std::fs::File::create(nats.dir.join(format!("n{i}.log")))
                .map_err(|e| format!("nats log: {e}"))?;
            let child = Command::new(&bin)
                .arg("-c")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("start nats-server: {e}"))?;
            nats.children.push(child);
            nats.urls.push(format!("nats://127.0.0.1:{port}"));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (port, _) in &ports {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
            while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
                if Instant::now() > deadline {
                    return Err(format!("nats-server did not listen on {addr} within 20 s"));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(nats)
    }

    pub(super) fn url(&self) -> String {
        self.urls.join(",")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts the instances on `nats`, each with the stream `stream`. The first
/// creates the stream; while a fresh NATS cluster has no JetStream leader
/// yet it exits at start, and is started again (up to 30 s).
fn instances(
    bins: &Bins,
    tmp: &Path,
    nats: &Nats,
    stream: &str,
    replicas: usize,
) -> Result<Vec<Server>, String> {
    let env = |i: usize| -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", nats.url()),
            ("NATS_STREAM", stream.to_owned()),
            (
                "NATS_SUBJECT_PREFIX",
                format!("bench.{}", stream.to_lowercase()),
            ),
            ("NATS_INSTANCE_ID", format!("bench-{i}")),
            ("NATS_REPLICAS", replicas.to_string()),
        ]
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        match Server::start_with(bins, ServerKind::Ours, tmp, None, &env(0)) {
            Ok(server) => break server,
            Err(e) if Instant::now() < deadline => {
                println!("    (instance 0 not up yet: {e}; again in 1 s)");
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    };
    let mut servers = vec![first];
    for i in 1..INSTANCES {
        servers.push(Server::start_with(
            bins,
            ServerKind::Ours,
            tmp,
            None,
            &env(i),
        )?);
    }
    Ok(servers)
}

/// One topology: the instances, then a loadgen run per rate.
fn topology(
    plan: &Plan,
    bins: &Bins,
    tmp: &Path,
    replicated: bool,
) -> Result<Vec<(u64, Value)>, String> {
    let nats = Nats::start(tmp, replicated)?;
    let mut rows = Vec::new();
    for rate in [100u64, 1_000] {
        // Fresh instances and stream per rate: what a run leaves in flight
        // (its counters start at 0 again) must not reach the next run.
        let stream = format!(
            "BENCH_{}_{}_{rate}",
            std::process::id(),
            if replicated { "R3" } else { "R1" }
        );
        let servers = instances(bins, tmp, &nats, &stream, if replicated { 3 } else { 1 })?;
        let urls: Vec<&str> = servers.iter().map(|s| s.url.as_str()).collect();
        let urls = urls.join(",");
        let args = [
            "--url".to_owned(),
            urls.clone(),
            "--ws".to_owned(),
            plan.fanout_clients.to_string(),
            "--sse".to_owned(),
            plan.fanout_clients.to_string(),
            "--rate".to_owned(),
            rate.to_string(),
            "--duration".to_owned(),
            plan.duration.to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let result = run_json(&bins.loadgen, &args, 300)
            .map(|mut v| v.pop().unwrap_or(Value::Null))
            .unwrap_or_else(|e| json!({"error": e}));
        rows.push((rate, result));
        for server in servers {
            server.stop();
        }
    }
    drop(nats);
    Ok(rows)
}

fn ms(v: &Value, key: &str, q: &str) -> Option<f64> {
    num(v, &[key, q]).map(|us| us / 1000.0)
}

/// The section's table.
fn table(plan: &Plan, runs: &Runs<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{INSTANCES} `event-server` instances (release builds, `--features nats`, SQLite in memory) on \
         one JetStream stream (file storage), {} WebSocket + {} SSE clients spread evenly over them, \
         256-byte `JobProgress` events published to the instances in turn for {} s each rate; \
         latency is publish (timestamp taken when the batch is built) → parsed by the client, \
         same-instance when the client is on the instance the event was posted to. Loss is what a \
         client never received; duplicates, what it received twice.\n",
        plan.fanout_clients, plan.fanout_clients, plan.duration
    );
    let _ = writeln!(
        s,
        "| NATS | events/s | published/s | delivered/s | lost | duplicates | same p50 ms | same p99 ms | cross p50 ms | cross p99 ms | cross − same p99 ms |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for (label, result) in runs {
        match result {
            Err(e) => {
                let _ = writeln!(s, "| {label} | – | not measured: {e} | | | | | | | | |");
            }
            Ok(rows) => {
                for (rate, v) in rows {
                    if let Some(e) = v.get("error").and_then(Value::as_str) {
                        let _ = writeln!(s, "| {label} | {rate} | failed: {e} | | | | | | | | |");
                        continue;
                    }
                    let same = ms(v, "latency_us_same", "p99");
                    let cross = ms(v, "latency_us_cross", "p99");
                    let _ = writeln!(
                        s,
                        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        fmt(Some(*rate as f64), 0),
                        fmt(num(v, &["publish_rate"]), 0),
                        fmt(num(v, &["delivered_per_s"]), 0),
                        fmt(num(v, &["lost"]), 0),
                        fmt(num(v, &["duplicates"]), 0),
                        fmt(ms(v, "latency_us_same", "p50"), 2),
                        fmt(same, 2),
                        fmt(ms(v, "latency_us_cross", "p50"), 2),
                        fmt(cross, 2),
                        fmt(cross.zip(same).map(|(c, s)| c - s), 2),
                    );
                }
            }
        }
    }
    s
}

/// Whether the goal holds in `runs`: at 100 events/s, nothing lost and the
/// cross-instance p99 within the budget above the same-instance one.
fn verdict(runs: &Runs<'_>) -> String {
    let mut parts = Vec::new();
    for (label, result) in runs {
        let Ok(rows) = result else { continue };
        for (rate, v) in rows.iter().filter(|(r, _)| *r == 100) {
            let lost = num(v, &["lost"]).unwrap_or(f64::NAN);
            let gap = ms(v, "latency_us_cross", "p99")
                .zip(ms(v, "latency_us_same", "p99"))
                .map(|(c, s)| c - s);
            let met = lost == 0.0 && gap.is_some_and(|g| g <= CROSS_P99_BUDGET_MS);
            parts.push(format!(
                "{label}, {rate} events/s: {} lost, cross − same p99 {} ms: {}",
                fmt(Some(lost), 0),
                fmt(gap, 2),
                if met { "met" } else { "**missed**" }
            ));
        }
    }
    format!(
        "Goal (issue 22): at 100 events/s nothing lost and the cross-instance p99 at most \
         {CROSS_P99_BUDGET_MS} ms above the same-instance p99. {}.",
        parts.join("; ")
    )
}

/// Replaces (or appends) the section in `out`.
fn write_section(out: &Path, section: &str) -> Result<(), String> {
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let block = format!("{BEGIN}\n{section}{END}\n");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!(
                "{}{block}{}",
                &old[..b],
                old[e + END.len()..].trim_start_matches('\n')
            )
        }
        _ => format!("{}\n{block}", old.trim_end_matches('\n').to_owned() + "\n"),
    };
    std::fs::write(out, new).map_err(|e| format!("{}: {e}", out.display()))
}

/// `--only cluster`: builds the server with `nats` and `loadgen`, measures
/// both topologies, prints the section and writes it into `out`.
pub fn cluster_only(plan: &Plan, out: &Path) -> Result<(), String> {
    run::build_loadgen()?;
    cargo_build(&[
        "build",
        "--profile",
        run::PROFILE,
        "-p",
        "event-server",
        "--features",
        "nats",
    ])?;
    let bins = Bins::locate_server_and_loadgen()?;
    let tmp = std::env::temp_dir().join(format!("matric-bench-cluster-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    let runs = vec![
        ("1 node", topology(plan, &bins, &tmp, false)),
        ("3 nodes, replicas 3", topology(plan, &bins, &tmp, true)),
    ];
    let _ = std::fs::remove_dir_all(&tmp);
    let mut section = String::new();
    let _ = writeln!(
        section,
        "## Cluster: three instances on NATS JetStream\n\nWritten by `cargo xtask bench --only cluster{}` \
         ({}, commit {}, {} CPUs, load average before {load_before}, after {}; {:.0} s). The load \
         client, the NATS servers and the three instances share the machine's cores over loopback.\n",
        if plan.quick { " --quick" } else { "" },
        sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        sh("git rev-parse --short HEAD"),
        sh("nproc"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
    );
    section.push_str(&table(plan, &runs));
    let _ = writeln!(section, "\n{}\n", verdict(&runs));
    println!("\n{section}");
    write_section(out, &section)?;
    println!("bench: wrote the cluster section of {}", out.display());
    Ok(())
}
