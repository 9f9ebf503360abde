//! `cargo xtask bench --only ws-compression`: what WebSocket
//! permessage-deflate costs and saves. For each payload size, two fan-out
//! runs of WebSocket clients only (`loadgen --ws-client deflate --sse 0`:
//! its own client, which offers the extension and counts the bytes it
//! reads), each on a fresh server: one with `WS_COMPRESSION=off` (the
//! offer is declined), one with the defaults (on, events of 256 bytes or
//! more compressed). The events are padded with words (`--pad words`), not
//! a repeated byte, so they compress like text. Prints a table of bytes on
//! the wire per event and server CPU per delivery; BENCHMARKS.md is left
//! alone.

use std::path::Path;

use serde_json::Value;

use super::run::{self, Bins, Server, ServerKind, cargo_build, loadgen};
use super::{Plan, sh};

/// Events per second published in each run.
const RATE: u64 = 1_000;

/// Runs the measurement and prints its table.
pub fn ws_compression_only(plan: &Plan) -> Result<(), String> {
    run::build_loadgen()?;
    cargo_build(&["build", "--profile", run::PROFILE, "-p", "event-server"])?;
    let bins = Bins::locate_server_and_loadgen()?;
    let tmp = std::env::temp_dir().join(format!("matric-bench-wsz-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let payloads: &[usize] = if plan.quick {
        &[1024]
    } else {
        &[256, 1024, 4096]
    };
    let mut rows = Vec::new();
    let result = (|| -> Result<(), String> {
        for &payload in payloads {
            for compression in ["off", "on"] {
                let r = run_once(plan, &bins, &tmp, payload, compression)?;
                rows.push((payload, compression, r));
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    println!(
        "\n{}\nload average before {load_before}, after {}; git {}",
        table(plan, &rows),
        sh("cut -d' ' -f1-3 /proc/loadavg"),
        sh("git rev-parse --short HEAD"),
    );
    Ok(())
}

/// One fan-out run on a fresh server with `WS_COMPRESSION=compression`.
fn run_once(
    plan: &Plan,
    bins: &Bins,
    tmp: &Path,
    payload: usize,
    compression: &str,
) -> Result<Value, String> {
    let server = Server::start_with(
        bins,
        ServerKind::Ours,
        tmp,
        None,
        &[("WS_COMPRESSION", compression.to_owned())],
    )?;
    let args: Vec<String> = [
        "--ws",
        &plan.fanout_clients.to_string(),
        "--sse",
        "0",
        "--ws-client",
        "deflate",
        "--pad",
        "words",
        "--payload",
        &payload.to_string(),
        "--rate",
        &RATE.to_string(),
        "--duration",
        &plan.duration.to_string(),
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

fn table(plan: &Plan, rows: &[(usize, &str, Value)]) -> String {
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let mut out = format!(
        "{} WebSocket clients (`loadgen --ws-client deflate`), {RATE} `JobProgress` events/s padded \
         with words, {} s each; a fresh server per row.\n\n\
         | payload | compression | bytes on the wire per event | compressed messages | server CPU per delivery | delivered | lost | p50 / p99 latency |\n\
         |---:|---|---:|---:|---:|---:|---:|---|\n",
        plan.fanout_clients, plan.duration
    );
    for (payload, compression, r) in rows {
        out.push_str(&format!(
            "| {payload} B | {compression} | {:.0} B | {} | {:.2} µs | {} | {} | {:.0} / {:.0} µs |\n",
            f(r, "ws_wire_bytes_per_event"),
            r["ws_compressed_messages"].as_u64().unwrap_or(0),
            f(r, "server_cpu_us_per_delivery"),
            r["delivered"].as_u64().unwrap_or(0),
            r["lost"].as_u64().unwrap_or(0),
            f(&r["latency_us_ws"], "p50"),
            f(&r["latency_us_ws"], "p99"),
        ));
    }
    out
}
