//! Project automation, run as `cargo xtask <command>`.
//!
//! * `ci` — everything CI checks: formatting, clippy with warnings as errors,
//!   each workspace member's tests on their own (so a crate that only compiles
//!   inside the workspace is caught), the host's single-feature builds, then
//!   the doc tests.
//! * `bench` — the benchmark harness; writes `BENCHMARKS.md` (`--quick` for
//!   a smoke run). See `bench.rs`.
//! * `demo` — the server and the demo clients together (see `demo.rs`).

mod bench;
mod demo;

use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("bench") => bench::bench(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("help" | "--help" | "-h") | None => {
            print_help();
            Ok(())
        }
        Some(other) => Err(format!(
            "unknown command `{other}` (try `cargo xtask help`)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn print_help() {
    println!("cargo xtask <command>\n");
    println!(
        "  ci      fmt check, clippy -D warnings, each member's tests, feature builds, doc tests"
    );
    println!(
        "  bench   benchmarks against release builds, writes BENCHMARKS.md (--quick: smoke run)"
    );
    println!("  demo    run the server with ws-tail, sse-tail, webhook-receiver and demo jobs");
}

/// The host's Cargo features, each of which must build on its own.
const HOST_FEATURES: [&str; 8] = [
    "ws",
    "sse",
    "webhook",
    "telemetry",
    "jobs",
    "postgres",
    "nats",
    "demo",
];

/// Runs `cargo <args>`, echoing the command and its duration.
fn cargo(args: &[&str]) -> Result<(), String> {
    let started = Instant::now();
    println!("\n==> cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(args)
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    println!("<== {:.1}s", started.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The workspace members, from `cargo metadata`.
fn members() -> Result<Vec<String>, String> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| format!("could not run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad cargo metadata: {e}"))?;
    let names = meta["packages"]
        .as_array()
        .ok_or("cargo metadata has no packages")?
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    Ok(names)
}

fn ci() -> Result<(), String> {
    let started = Instant::now();
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    for member in members()? {
        cargo(&["test", "--locked", "-p", &member, "--all-targets"])?;
    }
    // Two server instances on one NATS (needs TEST_NATS_URL).
    cargo(&[
        "test",
        "--locked",
        "-p",
        "event-server",
        "--features",
        "nats,postgres",
        "--test",
        "cluster",
    ])?;
    // Each transport must build and run alone in the host.
    for feature in HOST_FEATURES {
        cargo(&[
            "check",
            "--locked",
            "-p",
            "event-server",
            "--no-default-features",
            "--features",
            feature,
        ])?;
    }
    cargo(&["test", "--locked", "--workspace", "--doc"])?;
    println!(
        "\nci: all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
