//! Project automation, run as `cargo xtask <command>`.
//!
//! * `ci` — everything CI checks: formatting, clippy with warnings as errors,
//!   each workspace member's tests on their own (so a crate that only compiles
//!   inside the workspace is caught), each host feature built and run alone,
//!   then the doc tests (`--only features`: just the single-feature hosts).
//!   See `ci.rs`.
//! * `bench` — the benchmark harness; writes `BENCHMARKS.md` (`--quick` for
//!   a smoke run). See `bench.rs`.
//! * `demo` — the server and the demo clients together (see `demo.rs`).
//! * `conformance` — the Autobahn|Testsuite (cases 1–10) against the
//!   WebSocket framing, through `event-ws`'s echo example (also a step of
//!   `ci`). See `conformance.rs`.
//! * `mcp-conformance` — the official MCP conformance suite (npm
//!   `@modelcontextprotocol/conformance`) against the host's `/mcp` (also a
//!   step of `ci`). See `mcp_conformance.rs`.
//! * `contracts` — the host's AsyncAPI and OpenAPI documents through
//!   `@asyncapi/parser` and `redocly lint` (npm; also a step of `ci`). See
//!   `contracts.rs`.

mod bench;
mod ci;
mod conformance;
mod contracts;
mod demo;
mod loom;
mod mcp_conformance;
mod node_step;

use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci::run(&args[1..]),
        Some("bench") => bench::bench(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("conformance") => conformance::run(&args[1..]),
        Some("mcp-conformance") => mcp_conformance::run(&args[1..]),
        Some("contracts") => contracts::run(&args[1..]),
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
        "  ci      fmt check, clippy -D warnings, each member's tests, single-feature hosts, doc tests"
    );
    println!(
        "  bench   benchmarks against release builds, writes BENCHMARKS.md (--quick: smoke run)"
    );
    println!("  demo    run the server with ws-tail, sse-tail, webhook-receiver and demo jobs");
    println!(
        "  conformance  Autobahn|Testsuite cases 1-10 (kosoku) against the WebSocket echo example (--release)"
    );
    println!("  mcp-conformance  the MCP conformance suite (npm) against the host's /mcp");
    println!(
        "  contracts  the host's /api/v1/asyncapi.json and /api/v1/openapi.json through external validators (npm)"
    );
}

/// Runs `cargo <args>`, echoing the command and its duration.
fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_with_env(args, &[])
}

/// [`cargo`] with `env` set for that run only.
fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let started = Instant::now();
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?} ")).collect();
    println!("\n==> {}cargo {}", shown.concat(), args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(args)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    println!("<== {:.1}s", started.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}
