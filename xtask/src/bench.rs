//! `cargo xtask bench [--quick] [--no-profile] [--out FILE] [--only webhooks|idle|latency|saturation|embed|log|cluster|ws-compression|compression|fanout-cost|scale]`:
//! the benchmark harness. Builds release binaries, runs each measurement
//! against real processes on loopback, and writes `BENCHMARKS.md`.
//! `--only webhooks` runs measurement 4 alone and prints its table instead
//! (BENCHMARKS.md is not touched); `--only idle` does the same for
//! measurement 2, adding a run per transport; `--only latency` runs the
//! fan-out pairs at the lowest rate (where the p99 ratio is judged), with
//! the server's profile unless `--no-profile`; `--only saturation` runs three
//! floor/event-server pairs at 10,000 events/s (judged by their median, as
//! in a full run) and prints the fan-out
//! table with the publisher-starvation targets (publish acceptance and
//! p99, deliveries vs the floor); `--only embed` runs the
//! fan-out (one pair per rate) and idle measurements with their embed-axum
//! rows and prints those tables; `--only log` measures the event log
//! (`bench/log.rs`) and prints its table; `--only cluster` measures three
//! instances on one JetStream stream, on one NATS and on a three-node NATS
//! cluster (`bench/cluster.rs`), and writes its own section of BENCHMARKS.md
//! (after the analysis marker, so full runs keep it); `--only
//! ws-compression` measures WebSocket permessage-deflate off and on (bytes
//! on the wire per event, server CPU per delivery;
//! `bench/ws_compression.rs`) and prints its table; `--only compression`
//! measures SSE compression, bytes on the wire and server CPU per delivery
//! with each encoding against plain (`bench/compress.rs`), and prints its
//! table. `--only fanout-cost` measures `FanoutHub::fan_out` in-process,
//! ns per delivery and per push into full outboxes (`bench/fanout_cost.rs`),
//! and prints its table. `--only scale [--connections N] [--rate R] [--processes P]`
//! holds 100,000 connections split over as many processes as the
//! file-descriptor limit needs, with a fan-out to all of them
//! (`bench/scale.rs`), and prints its table.
//!
//! Measurements (issue 9, "Benchmarks"):
//! 1. fan-out: `loadgen` with 1,000 WS + 1,000 SSE clients at 100, 1,000 and
//!    10,000 events/s against `event-server` and against `raw-floor` (the
//!    same frames written to the same sockets and nothing else), each on a
//!    fresh process, alternating, so the ratio compares like with like;
//! 2. idle scale: 10,000 connections, server RSS per connection;
//! 3. publish cost: `bench-core publish` (ns per `EventBus::publish`);
//! 4. webhooks: `loadgen --webhooks` with SQLite and PostgreSQL;
//! 5. telemetry overhead: `bench-core telemetry`;
//! 6. churn: 20,000 connect/disconnect cycles, gauge back to 0, RSS.
//!
//! Fan-out (at each rate) and idle also run once against `embed-axum`
//! (`examples/src/bin/embed-axum.rs`: the transports mounted in an axum
//! app served by `event_http::serve`), a row labelled embed-axum in their
//! tables: what an embedding application gets must match the host.
//!
//! `--quick` shrinks every count for a smoke run (about a minute). Whatever
//! follows the `<!-- analysis -->` marker in an existing BENCHMARKS.md is
//! kept, so hand-written profiling notes survive a re-run.

mod cluster;
mod compress;
mod fanout_cost;
mod log;
mod report;
mod run;
mod scale;
mod targets;
mod ws_compression;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use run::{Server, ServerKind, cargo_build, loadgen, postgres_db, run_json};

/// The webhook target, deliveries/s; also the offered rate of the sustained run.
pub const WEBHOOK_TARGET: u64 = 5_000;

/// Sizes of one run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// `--quick`.
    pub quick: bool,
    /// WebSocket and SSE clients each, in the fan-out runs.
    pub fanout_clients: u64,
    /// Publish rates, events/s.
    pub rates: Vec<u64>,
    /// Seconds of publishing per fan-out run.
    pub duration: f64,
    /// Floor/ours pairs run at the lowest rate, where the p99 ratio is
    /// judged, and at the saturation rate, where the deliveries and
    /// publish ratios are (one pair moves with the machine; the median of
    /// interleaved pairs does much less).
    pub latency_rounds: u32,
    /// Idle connections.
    pub idle: u64,
    /// Churn cycles (after a warm-up of `churn_warmup`).
    pub churn: u64,
    /// Churn warm-up cycles.
    pub churn_warmup: u64,
    /// Events timed per publish-cost point and round (5 rounds).
    pub publish_events: u64,
    /// Events per telemetry run.
    pub telemetry_events: u64,
    /// Telemetry runs per variant.
    pub telemetry_runs: u32,
    /// Webhook events.
    pub webhook_events: u64,
    /// Profile the server during the heaviest fan-out run.
    pub profile: bool,
}

impl Plan {
    fn new(quick: bool, profile: bool) -> Plan {
        if quick {
            Plan {
                quick,
                fanout_clients: 100,
                rates: vec![100, 1_000],
                duration: 2.0,
                latency_rounds: 1,
                idle: 1_000,
                churn: 1_000,
                churn_warmup: 200,
                publish_events: 4_000,
                telemetry_events: 20_000,
                telemetry_runs: 1,
                webhook_events: 1_000,
                profile: false,
            }
        } else {
            Plan {
                quick,
                fanout_clients: 1_000,
                rates: vec![100, 1_000, 10_000],
                duration: 10.0,
                latency_rounds: 3,
                idle: 10_000,
                churn: 20_000,
                churn_warmup: 1_000,
                publish_events: 40_000,
                telemetry_events: 200_000,
                telemetry_runs: 9,
                webhook_events: 20_000,
                profile,
            }
        }
    }
}

/// Everything measured, as JSON for the report.
#[derive(Debug, Default)]
pub struct Results {
    /// Machine, command, date.
    pub meta: Value,
    /// `(rate, floor, ours)` fan-out results, in the order run (the lowest
    /// rate [`Plan::latency_rounds`] times).
    pub fanout: Vec<(u64, Value, Value)>,
    /// Idle: `(floor, ours)`.
    pub idle: Option<(Value, Value)>,
    /// `(rate, result)` fan-out runs against embed-axum, one per rate.
    pub embed_fanout: Vec<(u64, Value)>,
    /// The idle run against embed-axum.
    pub embed_idle: Option<Value>,
    /// Churn result (ours).
    pub churn: Option<Value>,
    /// Publish-cost lines.
    pub publish: Vec<Value>,
    /// Telemetry result (`JobProgress`, DEBUG) or the reason it was not measured.
    pub telemetry: Value,
    /// The same with `JobCompleted` (INFO: every event logged).
    pub telemetry_info: Value,
    /// Webhooks, one entry per database engine.
    pub webhooks: Vec<WebhookRuns>,
    /// Telemetry's share of the server's profile during the 1,000 events/s
    /// fan-out run: `{pct, symbols: [{pct, symbol}], rate}`.
    pub telemetry_share: Option<Value>,
    /// Top of the server's profile during the heaviest fan-out run.
    pub profile: Option<String>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

/// The webhook runs on one database engine.
#[derive(Debug)]
pub struct WebhookRuns {
    /// `SQLite` or `PostgreSQL`.
    pub engine: String,
    /// At the target rate, publisher pipelined.
    pub sustained: Value,
    /// At 4× the target rate, publisher pipelined.
    pub peak: Value,
    /// At the target rate, publisher serial (each request waits for the
    /// one before): the shape `loadgen` offered before, kept for comparison.
    pub serial: Value,
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine(command: &str) -> Value {
    let cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2");
    let mem = sh("grep MemTotal /proc/meminfo | awk '{printf \"%.1f GiB\", $2/1048576}'");
    json!({
        "nproc": sh("nproc"),
        "cpu": cpu.trim(),
        "memory": mem,
        "kernel": sh("uname -sr"),
        "rustc": sh("rustc -V"),
        "date": sh("date -u '+%Y-%m-%d %H:%M UTC'"),
        "load_before": sh("cut -d' ' -f1-3 /proc/loadavg"),
        "command": command,
        "git": sh("git rev-parse --short HEAD"),
    })
}

/// Entry point of `cargo xtask bench`.
pub fn bench(args: &[String]) -> Result<(), String> {
    let quick = args.iter().any(|a| a == "--quick");
    let profile = !args.iter().any(|a| a == "--no-profile");
    // Asked of cargo, not compiled in: an xtask binary built in another
    // checkout sharing this target directory would write to that one.
    let root = crate::conformance::workspace_root()?;
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("BENCHMARKS.md"));
    let plan = Plan::new(quick, profile);
    match args
        .iter()
        .position(|a| a == "--only")
        .map(|i| args.get(i + 1).map(String::as_str))
    {
        None => {}
        Some(Some("webhooks")) => return webhooks_only(&plan),
        Some(Some("idle")) => return idle_only(&plan),
        Some(Some("latency")) => return latency_only(&plan),
        Some(Some("saturation")) => return saturation_only(&plan),
        Some(Some("embed")) => return embed_only(&plan),
        Some(Some("log")) => return log::log_only(&plan),
        Some(Some("cluster")) => return cluster::cluster_only(&plan, &out),
        Some(Some("ws-compression")) => return ws_compression::ws_compression_only(&plan),
        Some(Some("compression")) => return compress::compression_only(&plan),
        Some(Some("fanout-cost")) => return fanout_cost::fanout_cost_only(&plan),
        Some(Some("scale")) => return scale::scale_only(&plan, args),
        Some(other) => {
            return Err(format!(
                "--only {}: the parts that run alone are `webhooks`, `idle`, `latency`, `saturation`, `embed`, `log`, `cluster`, `ws-compression`, `compression`, `fanout-cost` and `scale`",
                other.unwrap_or("")
            ));
        }
    }
    let started = Instant::now();
    let command = format!("cargo xtask bench{}", if quick { " --quick" } else { "" });

    cargo_build(&[
        "build",
        "--profile",
        run::PROFILE,
        "-p",
        "examples",
        "--bins",
    ])?;
    let pg_build = build_server()?;
    let bins = run::Bins::locate()?;
    let tmp = std::env::temp_dir().join(format!("matric-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;

    let mut results = Results {
        meta: machine(&command),
        ..Results::default()
    };
    let sqlite = |name: &str| format!("sqlite://{}", tmp.join(name).display());

    // 1. Fan-out, floor and ours alternating at each rate; the lowest rate
    // in several interleaved pairs.
    fanout_runs(&plan, &bins, &tmp, &plan.rates, &mut results)?;

    // 2. Idle scale, floor and ours.
    results.idle = Some((
        idle_run(&plan, &bins, &tmp, ServerKind::Floor, "both")?,
        idle_run(&plan, &bins, &tmp, ServerKind::Ours, "both")?,
    ));

    // 1 and 2 once more, against embed-axum.
    embed_runs(&plan, &bins, &tmp, &mut results)?;

    // 6. Churn on a fresh server, after a warm-up.
    {
        let server = Server::start(&bins, ServerKind::Ours, &tmp, Some(&sqlite("churn.db")))?;
        let churn_args = |cycles: u64| -> Vec<String> {
            vec![
                "--churn".into(),
                cycles.to_string(),
                "--concurrency".into(),
                "32".into(),
                "--server-pid".into(),
                server.pid().to_string(),
            ]
        };
        let warmup = loadgen(&bins, &server, &churn_args(plan.churn_warmup), 120)?;
        let mut churn = loadgen(&bins, &server, &churn_args(plan.churn), 300)?;
        churn["warmup"] = warmup;
        server.stop();
        results.churn = Some(churn);
    }

    // 3. Publish cost.
    let events = plan.publish_events.to_string();
    for via in ["hub", "bus"] {
        let out = run_json(
            &bins.bench_core,
            &["publish", "--via", via, "--events", &events],
            300,
        )?;
        results.publish.extend(out);
    }

    // 5. Telemetry overhead: DEBUG-level events (filtered out by `info`),
    // then INFO-level ones (every event becomes a JSON log line).
    let telemetry = |info: bool| {
        let events = plan.telemetry_events.to_string();
        let runs = plan.telemetry_runs.to_string();
        let mut args = vec!["telemetry", "--events", &events, "--runs", &runs];
        if info {
            args.push("--info");
        }
        run_json(&bins.bench_core, &args, 300)
            .map(|mut lines| lines.pop().unwrap_or(Value::Null))
            .unwrap_or_else(|e| json!({"error": e}))
    };
    results.telemetry = telemetry(false);
    results.telemetry_info = telemetry(true);

    // 4. Webhooks, SQLite then PostgreSQL.
    results.webhooks = webhooks(&plan, &bins, &tmp, pg_build);

    results.elapsed = started.elapsed();
    results.meta["load_after"] = json!(sh("cut -d' ' -f1-3 /proc/loadavg"));
    let previous = std::fs::read_to_string(&out).unwrap_or_default();
    let text = report::render(&plan, &results, &previous);
    std::fs::write(&out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "\nbench: wrote {} in {:.0}s",
        out.display(),
        results.elapsed.as_secs_f64()
    );
    Ok(())
}

/// Measurement 4: webhooks, SQLite then PostgreSQL (when `pg_build`
/// succeeded and the local server answers): sustained at the target rate,
/// then offered at 4× the target rate to find the peak, both with the
/// publisher pipelining its requests as an independent producer does; then
/// the target rate again with a serial publisher (the earlier shape).
fn webhooks(
    plan: &Plan,
    bins: &run::Bins,
    tmp: &Path,
    pg_build: Result<(), String>,
) -> Vec<WebhookRuns> {
    let webhook_args = |rate: u64, publish: &str| -> Vec<String> {
        [
            "--webhooks",
            &plan.webhook_events.to_string(),
            "--rate",
            &rate.to_string(),
            "--webhook-timeout",
            "120",
            "--webhook-publish",
            publish,
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let runs = |engine: &str, db: &str| WebhookRuns {
        engine: engine.to_owned(),
        sustained: run::webhook_run(bins, tmp, db, &webhook_args(WEBHOOK_TARGET, "pipelined")),
        peak: run::webhook_run(
            bins,
            tmp,
            db,
            &webhook_args(4 * WEBHOOK_TARGET, "pipelined"),
        ),
        serial: run::webhook_run(bins, tmp, db, &webhook_args(WEBHOOK_TARGET, "serial")),
    };
    let mut out = Vec::new();
    let sqlite_db = format!("sqlite://{}", tmp.join("webhooks.db").display());
    out.push(runs("SQLite", &sqlite_db));
    match pg_build.and_then(|()| postgres_db()) {
        Ok(db) => {
            out.push(runs("PostgreSQL", &db.url));
            db.drop_db();
        }
        Err(reason) => {
            let e = json!({"error": format!("not measured: {reason}")});
            out.push(WebhookRuns {
                engine: "PostgreSQL".into(),
                sustained: e.clone(),
                peak: e.clone(),
                serial: e,
            });
        }
    }
    out
}

/// Measurement 2 on a fresh server: `plan.idle` connections of `mix`
/// (`both`: half WebSocket, half SSE; `ws`; `sse`) opened 128 at a time.
fn idle_run(
    plan: &Plan,
    bins: &run::Bins,
    tmp: &Path,
    kind: ServerKind,
    mix: &str,
) -> Result<Value, String> {
    let db = format!("sqlite://{}", tmp.join(format!("idle-{mix}.db")).display());
    let server = match kind {
        ServerKind::Floor | ServerKind::Embed => Server::start(bins, kind, tmp, None)?,
        ServerKind::Ours => Server::start(bins, kind, tmp, Some(&db))?,
    };
    let args: Vec<String> = [
        "--idle",
        &plan.idle.to_string(),
        "--idle-mix",
        mix,
        "--concurrency",
        "128",
        "--server-pid",
        &server.pid().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let result = loadgen(bins, &server, &args, 180);
    server.stop();
    result
}

/// `--only idle`: builds the server, `raw-floor` and `loadgen`, runs
/// measurement 2 (floor and ours, both transports) and then ours with each
/// transport alone, and prints the table; BENCHMARKS.md is left alone.
fn idle_only(plan: &Plan) -> Result<(), String> {
    let (bins, tmp) = connection_bins()?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    let runs = (|| -> Result<_, String> {
        let results = Results {
            idle: Some((
                idle_run(plan, &bins, &tmp, ServerKind::Floor, "both")?,
                idle_run(plan, &bins, &tmp, ServerKind::Ours, "both")?,
            )),
            ..Results::default()
        };
        let ws = idle_run(plan, &bins, &tmp, ServerKind::Ours, "ws")?;
        let sse = idle_run(plan, &bins, &tmp, ServerKind::Ours, "sse")?;
        Ok((results, ws, sse))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    let (results, ws, sse) = runs?;
    println!(
        "\n{}load average before {load_before}, after {}; {:.0} s; git {}",
        report::idle_table(
            &results,
            &[
                ("event-server, WS only", &ws),
                ("event-server, SSE only", &sse)
            ]
        ),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

/// Measurement 1: at each of `rates`, a floor run then an event-server run,
/// each on a fresh process; the lowest rate as [`Plan::latency_rounds`]
/// interleaved pairs. Appends to `results.fanout` (and the profiles when
/// `plan.profile`).
fn fanout_runs(
    plan: &Plan,
    bins: &run::Bins,
    tmp: &Path,
    rates: &[u64],
    results: &mut Results,
) -> Result<(), String> {
    let lowest = rates.iter().copied().min().unwrap_or(0);
    let runs = rates.iter().flat_map(|&rate| {
        // The lowest rate judges the p99 ratio, the saturation rate the
        // deliveries and publish ratios: each the median of several pairs.
        let rounds = if rate == lowest || rate >= targets::SATURATION_RATE {
            plan.latency_rounds.max(1)
        } else {
            1
        };
        std::iter::repeat_n(rate, rounds as usize)
    });
    for (n, rate) in runs.enumerate() {
        let fanout_args = |pid: u32| fanout_args(plan, rate, pid);
        let floor = {
            let server = Server::start(bins, ServerKind::Floor, tmp, None)?;
            let result = loadgen(bins, &server, &fanout_args(server.pid()), 120)?;
            server.stop();
            result
        };
        let ours = {
            let db = format!(
                "sqlite://{}",
                tmp.join(format!("fanout-{rate}-{n}.db")).display()
            );
            let server = Server::start(bins, ServerKind::Ours, tmp, Some(&db))?;
            let heaviest = rate == *rates.iter().max().unwrap_or(&rate);
            // The first pair at the heaviest rate only.
            let perf = (plan.profile && heaviest && results.profile.is_none())
                .then(|| run::Perf::start(server.pid(), tmp));
            // Telemetry's share of the server's CPU at the reference rate.
            let share = (plan.profile && rate == 1_000 && results.telemetry_share.is_none())
                .then(|| run::Perf::start_dense(server.pid(), tmp));
            let result = loadgen(bins, &server, &fanout_args(server.pid()), 120)?;
            if let Some(Some(perf)) = perf {
                results.profile = perf.finish();
            }
            if let Some(Some(perf)) = share {
                results.telemetry_share = perf.finish_report().map(|report| {
                    let (pct, symbols) = run::telemetry_share(&report);
                    let top: Vec<Value> = symbols
                        .into_iter()
                        .take(12)
                        .map(|(p, name)| json!({"pct": p, "symbol": name}))
                        .collect();
                    json!({"pct": pct, "symbols": top, "rate": rate})
                });
            }
            server.stop();
            result
        };
        results.fanout.push((rate, floor, ours));
    }

    Ok(())
}

/// `loadgen`'s arguments for one fan-out run at `rate` against `pid`.
fn fanout_args(plan: &Plan, rate: u64, pid: u32) -> Vec<String> {
    let clients = plan.fanout_clients.to_string();
    [
        "--ws".to_owned(),
        clients.clone(),
        "--sse".to_owned(),
        clients,
        "--rate".to_owned(),
        rate.to_string(),
        "--duration".to_owned(),
        plan.duration.to_string(),
        "--server-pid".to_owned(),
        pid.to_string(),
    ]
    .into()
}

/// Measurements 1 (once per rate) and 2 against embed-axum, each on a
/// fresh process.
fn embed_runs(
    plan: &Plan,
    bins: &run::Bins,
    tmp: &Path,
    results: &mut Results,
) -> Result<(), String> {
    for &rate in &plan.rates {
        let server = Server::start(bins, ServerKind::Embed, tmp, None)?;
        let result = loadgen(bins, &server, &fanout_args(plan, rate, server.pid()), 120);
        server.stop();
        results.embed_fanout.push((rate, result?));
    }
    results.embed_idle = Some(idle_run(plan, bins, tmp, ServerKind::Embed, "both")?);
    Ok(())
}

/// `--only embed`: one floor/event-server pair per rate, idle for both,
/// then the same against embed-axum; prints the fan-out and idle tables
/// (BENCHMARKS.md is left alone).
fn embed_only(plan: &Plan) -> Result<(), String> {
    let (bins, tmp) = connection_bins()?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    let plan = Plan {
        latency_rounds: 1,
        profile: false,
        ..plan.clone()
    };
    let mut results = Results::default();
    let run = (|| -> Result<(), String> {
        fanout_runs(&plan, &bins, &tmp, &plan.rates, &mut results)?;
        results.idle = Some((
            idle_run(&plan, &bins, &tmp, ServerKind::Floor, "both")?,
            idle_run(&plan, &bins, &tmp, ServerKind::Ours, "both")?,
        ));
        embed_runs(&plan, &bins, &tmp, &mut results)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    run?;
    println!(
        "\n{}{}load average before {load_before}, after {}; {:.0} s; git {}",
        report::fanout_table(&plan, &results),
        report::idle_table(&results, &[]),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

/// Builds what the connection measurements run (the server, `raw-floor`,
/// `loadgen`, `embed-axum`) and makes the run's temporary directory.
fn connection_bins() -> Result<(run::Bins, PathBuf), String> {
    run::build_examples(&["loadgen", "raw-floor", "embed-axum"])?;
    // The full run's server build (these measurements do not use PostgreSQL).
    let _postgres_built = build_server()?;
    let bins = run::Bins::locate_without_bench_core()?;
    let tmp = std::env::temp_dir().join(format!("matric-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    Ok((bins, tmp))
}

/// `--only latency`: the floor/event-server pairs at the lowest fan-out
/// rate, printed as the fan-out tables (BENCHMARKS.md is left alone).
fn latency_only(plan: &Plan) -> Result<(), String> {
    let (bins, tmp) = connection_bins()?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    let lowest = plan.rates.iter().copied().min().unwrap_or(100);
    let mut results = Results::default();
    let run = fanout_runs(plan, &bins, &tmp, &[lowest], &mut results);
    let _ = std::fs::remove_dir_all(&tmp);
    run?;
    println!(
        "\n{}{}load average before {load_before}, after {}; {:.0} s; git {}",
        report::fanout_table(plan, &results),
        results
            .profile
            .map(|p| format!("Profile of event-server:\n\n```text\n{p}\n```\n\n"))
            .unwrap_or_default(),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

/// `--only saturation`: floor/event-server pairs at the saturation rate
/// (10,000 events/s; `--quick`: 100 + 100 clients), twice, printed as the
/// fan-out tables with the publisher-starvation targets (publish
/// acceptance, publish p99) and deliveries vs the floor; BENCHMARKS.md is
/// left alone.
fn saturation_only(plan: &Plan) -> Result<(), String> {
    let (bins, tmp) = connection_bins()?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    let plan = Plan {
        latency_rounds: 3,
        profile: false,
        ..plan.clone()
    };
    let mut results = Results::default();
    let rate = targets::SATURATION_RATE;
    let run = fanout_runs(&plan, &bins, &tmp, &[rate], &mut results);
    let _ = std::fs::remove_dir_all(&tmp);
    run?;
    let deliveries = targets::targets(&plan, &results)
        .into_iter()
        .filter(|t| t.what.starts_with("deliveries/s") || t.what.starts_with("publish "));
    let lines: Vec<String> = deliveries
        .map(|t| {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "missed",
                None => "not measured",
            };
            format!(
                "- {}: target {}, measured {} ({verdict}; {})",
                t.what, t.target, t.measured, t.note
            )
        })
        .collect();
    println!(
        "\n{}{}\n\nload average before {load_before}, after {}; {:.0} s; git {}",
        report::fanout_table(&plan, &results),
        lines.join("\n"),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

/// Builds the release server, with the `postgres` feature when it builds:
/// without it, only the PostgreSQL measurement is lost. The inner result
/// says whether the `postgres` build succeeded.
fn build_server() -> Result<Result<(), String>, String> {
    let pg_build = cargo_build(&[
        "build",
        "--profile",
        run::PROFILE,
        "-p",
        "event-server",
        "--features",
        "postgres",
    ]);
    if pg_build.is_err() {
        cargo_build(&["build", "--profile", run::PROFILE, "-p", "event-server"])?;
    }
    Ok(pg_build)
}

/// `--only webhooks`: builds only the server and `loadgen`, runs
/// measurement 4 and prints its table with the machine load; BENCHMARKS.md
/// is left alone.
fn webhooks_only(plan: &Plan) -> Result<(), String> {
    run::build_loadgen()?;
    let pg_build = build_server()?;
    let bins = run::Bins::locate_server_and_loadgen()?;
    let tmp = std::env::temp_dir().join(format!("matric-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let started = Instant::now();
    let results = Results {
        webhooks: webhooks(plan, &bins, &tmp, pg_build),
        ..Results::default()
    };
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "\n{}load average before {load_before}, after {}; {:.0} s; git {}",
        report::webhook_table(&results),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        started.elapsed().as_secs_f64(),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}
