//! `cargo xtask ci`: everything CI checks, in order — formatting, clippy
//! with warnings as errors, each workspace member's tests on their own (so a
//! crate that only compiles inside the workspace is caught), event-telemetry
//! with its `otlp` feature (clippy and tests), event-webhook without its
//! `postgres` feature (clippy) and a host without it (no PostgreSQL driver
//! in its dependency tree), the host's
//! cluster tests and cluster failure drills (`tests/cluster_drills.rs`), each
//! host feature built and run alone, the WebSocket
//! conformance suite (`conformance.rs`), the MCP conformance suite
//! (`mcp_conformance.rs`), the API documents through external validators
//! (`contracts.rs`), then the doc tests and the API docs (`cargo doc`, links
//! checked). The HTTP
//! differential test (`event-server/tests/differential.rs`) and the SSE and
//! WebSocket interop matrix (`tests/tests/interop.rs`) run with their
//! members' tests (see `docs/conformance.md`).
//! `cargo xtask ci --only features` runs just the single-feature hosts,
//! `--only conformance` just the conformance suite, `--only no-postgres`
//! just the check that a host without `postgres` has no PostgreSQL driver.

use std::process::Command;
use std::time::Instant;

use crate::cargo;

/// The host's Cargo features, each of which must build and run on its own
/// (issue #8).
const HOST_FEATURES: [&str; 12] = [
    "ws",
    "sse",
    "webhook",
    "telemetry",
    "otlp",
    "jobs",
    "postgres",
    "nats",
    "demo",
    "mcp",
    "log",
    "contracts",
];

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

/// Runs every check; the first failure stops the run. `--only features`
/// runs just the single-feature hosts.
pub fn run(args: &[String]) -> Result<(), String> {
    match args {
        [] => {}
        [flag, what] if flag == "--only" && what == "features" => return single_feature_hosts(),
        [flag, what] if flag == "--only" && what == "loom" => return crate::loom::run(),
        [flag, what] if flag == "--only" && what == "no-postgres" => return no_postgres_driver(),
        [flag, what] if flag == "--only" && what == "conformance" => {
            return crate::conformance::run(&[]);
        }
        [flag, what] if flag == "--only" && what == "mcp-conformance" => {
            return crate::mcp_conformance::run(&[]);
        }
        [flag, what] if flag == "--only" && what == "contracts" => {
            return crate::contracts::run(&[]);
        }
        _ => {
            return Err(format!(
                "ci: unknown arguments {args:?} (try `--only features` or `--only conformance`)"
            ));
        }
    }
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
    // event-telemetry's OTLP export (src/otlp.rs, tests/otlp.rs) compiles only with its feature;
    // event-log's PostgreSQL log only with `postgres` (its tests need TEST_POSTGRES_URL).
    for line in [
        "clippy --locked -p event-log --features postgres --all-targets -- -D warnings",
        "test --locked -p event-log --features postgres --all-targets",
        "clippy --locked -p event-telemetry --features otlp --all-targets -- -D warnings",
        "test --locked -p event-telemetry --features otlp --all-targets",
    ] {
        cargo(&line.split(' ').collect::<Vec<_>>())?;
    }
    // PostgreSQL is optional (issue 17): event-webhook builds and lints
    // without it, and a host without `postgres` compiles no driver for it.
    cargo(&[
        "clippy",
        "--locked",
        "-p",
        "event-webhook",
        "--no-default-features",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    no_postgres_driver()?;
    // Loom models of event-core's concurrency, in <target>/loom (issue 24).
    crate::loom::run()?;
    // Two server instances on one NATS (needs TEST_NATS_URL; with the
    // stream as the log, groups spanning them, deduplication across them,
    // sinks catching up from the stream and webhooks derived from it);
    // the deploy/
    // check again with a cluster, for the `matric_nats_*` names; the
    // cluster failure drills (issue 22: instance killed, webhooks across a
    // kill, a NATS node killed, NATS down 10 s; they also need the
    // nats-server binary and TEST_POSTGRES_URL). The drills run one at a
    // time: each starts several servers and NATS processes of its own.
    cargo(&[
        "test",
        "--locked",
        "-p",
        "event-server",
        "--features",
        "nats,postgres",
        "--test",
        "cluster",
        "--test",
        "cluster_log",
        "--test",
        "cluster_dedup",
        "--test",
        "deploy",
        "--test",
        "durable",
        "--test",
        "cluster_catchup",
        "--test",
        "cluster_topics",
    ])?;
    cargo(&[
        "test",
        "--locked",
        "-p",
        "event-server",
        "--features",
        "nats,postgres",
        "--test",
        "cluster_drills",
        "--",
        "--test-threads",
        "1",
    ])?;
    single_feature_hosts()?;
    // The Autobahn|Testsuite against the WebSocket framing (issue 16).
    crate::conformance::run(&[])?;
    // The MCP conformance suite against /mcp (issue 21).
    crate::mcp_conformance::run(&[])?;
    // AsyncAPI and OpenAPI documents through external validators (issue 20).
    crate::contracts::run(&[])?;
    cargo(&["test", "--locked", "--workspace", "--doc"])?;
    // The API docs build without a broken link or a public item linking
    // to a private one.
    crate::cargo_with_env(
        &[
            "doc",
            "--locked",
            "--workspace",
            "--no-deps",
            "--all-features",
        ],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    println!(
        "\nci: all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fails when the host built with every feature but `postgres` (and
/// `testing`, which the tests add) still has `sqlx-postgres` in its
/// dependency tree: a dependency, or the workspace's `sqlx` entry, turned
/// PostgreSQL on for everyone again.
fn no_postgres_driver() -> Result<(), String> {
    let features: Vec<&str> = HOST_FEATURES
        .into_iter()
        .filter(|f| *f != "postgres")
        .chain(["testing"])
        .collect();
    let features = features.join(",");
    let args = [
        "tree",
        "--locked",
        "-p",
        "event-server",
        "--no-default-features",
        "--features",
        &features,
        "-e",
        "features",
    ];
    println!("\n==> cargo {}", args.join(" "));
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(args)
        .output()
        .map_err(|e| format!("could not run cargo tree: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let hits: Vec<&str> = tree
        .lines()
        .filter(|l| l.contains("sqlx-postgres"))
        .collect();
    if !hits.is_empty() {
        return Err(format!(
            "event-server without `postgres` still depends on sqlx-postgres:\n{}",
            hits.join("\n")
        ));
    }
    println!("<== no sqlx-postgres without the `postgres` feature");
    Ok(())
}

/// Each transport builds and runs alone in the host: the binary built with
/// one feature is started by `event-server/tests/features.rs`, which checks
/// that the feature's routes speak their protocol, absent features' routes
/// are 404, and SIGTERM stops it cleanly. The builds share the workspace's
/// target directory, so only the host and what its features change are
/// compiled again.
fn single_feature_hosts() -> Result<(), String> {
    let started = Instant::now();
    for feature in HOST_FEATURES {
        cargo(&[
            "test",
            "--locked",
            "-p",
            "event-server",
            "--no-default-features",
            "--features",
            feature,
            "--test",
            "features",
        ])?;
    }
    println!(
        "ci: {} single-feature hosts built and run in {:.0}s",
        HOST_FEATURES.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
