//! `cargo xtask bench --only log`: the event log's sustained append rate and
//! what waiting for its commit adds to a publish, on SQLite and PostgreSQL,
//! and the same in cluster mode, where a JetStream stream (on a
//! `nats-server` of the run's own) is the log and the publish waits for its
//! acknowledgement (`bench-log`, examples/src/bin/bench-log.rs). Prints a
//! table for BENCHMARKS.md's event log section.

use serde_json::Value;

use super::run::{self, Bins, postgres_db, run_json};
use super::{Plan, sh};

/// Target: sustained appends per second on each engine (issue 18).
pub const APPEND_TARGET: f64 = 50_000.0;

/// Runs both measurements on both engines and prints the table.
pub fn log_only(plan: &Plan) -> Result<(), String> {
    run::build_examples(&["bench-log"])?;
    let bin = Bins::dir()?.join("bench-log");
    let tmp = std::env::temp_dir().join(format!("matric-bench-log-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let events = if plan.quick { "50000" } else { "500000" };
    let per = if plan.quick { "100" } else { "500" };
    let mut rows: Vec<(Value, Value)> = Vec::new();
    let sqlite = |name: &str| format!("sqlite://{}", tmp.join(name).display());
    let one = |url: &str, what: &str| -> Result<Value, String> {
        let args: Vec<&str> = match what {
            "append" => vec!["append", "--url", url, "--events", events],
            _ => vec!["durable", "--url", url, "--per-producer", per],
        };
        run_json(&bin, &args, 600)?
            .pop()
            .ok_or_else(|| format!("bench-log {what} printed nothing"))
    };
    rows.push((
        one(&sqlite("append.db"), "append")?,
        one(&sqlite("durable.db"), "durable")?,
    ));
    match postgres_db() {
        Ok(db) => {
            let append = one(&db.url, "append");
            db.drop_db();
            let db = postgres_db()?;
            let durable = one(&db.url, "durable");
            db.drop_db();
            rows.push((append?, durable?));
        }
        Err(reason) => println!("bench: PostgreSQL skipped: {reason}"),
    }
    match super::cluster::Nats::start(&tmp, false) {
        Ok(nats) => {
            let cluster_events = if plan.quick { "20000" } else { "200000" };
            let args = [
                "cluster",
                "--nats",
                &nats.url(),
                "--events",
                cluster_events,
                "--per-producer",
                per,
            ];
            let measured = run_json(&bin, &args, 900)?
                .pop()
                .ok_or_else(|| "bench-log cluster printed nothing".to_owned())?;
            drop(nats);
            rows.push((measured.clone(), measured));
        }
        Err(reason) => println!("bench: cluster mode skipped: {reason}"),
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!("\n{}", table(&rows));
    println!(
        "load average before {load_before}, after {}; git {}",
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

fn table(rows: &[(Value, Value)]) -> String {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut out = String::from(
        "| engine | sustained append, events/s | target | mean commit, events | publish p50 / p99, plain | publish p50 / p99, durable (16 producers; cluster: acknowledged by JetStream) | added p99 |\n|---|---|---|---|---|---|---|\n",
    );
    for (append, durable) in rows {
        let rate = f(append, "events_per_s");
        out.push_str(&format!(
            "| {} | {:.0} | {} | {} | {:.0} / {:.0} µs | {:.0} / {:.0} µs | {:.2} ms |\n",
            append["engine"].as_str().unwrap_or("?"),
            rate,
            match append["engine"].as_str() {
                // The target is the databases'; the stream's rate is for
                // comparison.
                Some("jetstream") => "none".to_owned(),
                _ if rate >= APPEND_TARGET => format!("met ≥ {APPEND_TARGET:.0}"),
                _ => format!("MISSED ≥ {APPEND_TARGET:.0}"),
            },
            append["mean_batch"]
                .as_f64()
                .map_or_else(|| "–".to_owned(), |b| format!("{b:.0}")),
            f(&durable["plain"], "p50_us"),
            f(&durable["plain"], "p99_us"),
            f(&durable["durable"], "p50_us"),
            f(&durable["durable"], "p99_us"),
            f(durable, "added_p99_ms"),
        ));
    }
    out
}
