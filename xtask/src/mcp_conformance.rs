//! `cargo xtask mcp-conformance`: the official MCP conformance suite
//! (npm `@modelcontextprotocol/conformance`) against the host's `/mcp`
//! (issue 21).
//!
//! 1. The suite is installed with npm under `<target>/mcp-conformance`
//!    (pinned; 0.1.13 is the newest that runs on Node 20, later releases
//!    need Node 22).
//! 2. `event-server` is built (default features, `mcp` among them) and
//!    started on `127.0.0.1:0` in anonymous local mode with a temporary
//!    SQLite database; its address comes from its "listening" log line.
//! 3. Each scenario of [`SCENARIOS`] runs as
//!    `conformance server --url http://127.0.0.1:PORT/mcp --scenario NAME`;
//!    every check must pass. The scenarios left out, and why, are listed in
//!    `docs/mcp.md` (they call the suite's own test tools, prompts and
//!    `test://` resources, which a real server does not have).
//!
//! Without Node or npm the step prints why and is skipped — unless
//! `EVENT_TEST_REQUIRE_SERVICES=1`, as in CI, where that is a failure.
//! Every command runs under a time limit and the server is killed however
//! the step ends.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::conformance::{run_limited_status, target_dir};
use crate::node_step::{Server, Step, build_server};

/// The suite and its pinned version.
const PACKAGE: &str = "@modelcontextprotocol/conformance";
const VERSION: &str = "0.1.13";

/// The server scenarios that test the protocol itself, not the suite's own
/// fixtures.
pub const SCENARIOS: [&str; 7] = [
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "server-sse-multiple-streams",
    "server-sse-polling",
    "dns-rebinding-protection",
];

const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

/// Runs the suite.
pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(format!("mcp-conformance: unknown arguments {args:?}"));
    }
    let started = Instant::now();
    let step = Step("mcp-conformance");
    if let Some(reason) = step.missing_node() {
        return step.skip(reason);
    }
    let dir = target_dir()?.join("mcp-conformance");
    let bin = dir.join("node_modules/.bin/conformance");
    if let Err(e) = step.npm_install(&dir, &[(PACKAGE, VERSION)], true, || bin.exists()) {
        return step.skip(e);
    }
    let server_bin = build_server()?;
    let data = dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
    let result = run_scenarios(&server_bin, &data, &bin);
    let _ = std::fs::remove_dir_all(&data);
    result?;
    println!(
        "mcp-conformance: {} scenarios passed in {:.0}s",
        SCENARIOS.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run_scenarios(server_bin: &Path, data: &Path, bin: &Path) -> Result<(), String> {
    let (server, addr) = Server::start(server_bin, data)?;
    let url = format!("http://{addr}/mcp");
    println!("mcp-conformance: {PACKAGE}@{VERSION} against {url}");
    let mut failed = Vec::new();
    for scenario in SCENARIOS {
        let out = dir_output(bin, &url, scenario)?;
        let verdict = out
            .lines()
            .find(|l| l.trim_start().starts_with("Passed:"))
            .map(str::trim)
            .unwrap_or("no result")
            .to_owned();
        let ok = verdict.contains(" 0 failed") && passed_all(&verdict);
        println!(
            "  {scenario:<30} {}  ({verdict})",
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            println!("{out}");
            failed.push(scenario);
        }
    }
    drop(server);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("MCP conformance scenarios failed: {failed:?}"))
    }
}

/// `Passed: 2/2, 0 failed, 1 warnings` → whether every check passed.
fn passed_all(verdict: &str) -> bool {
    verdict
        .strip_prefix("Passed:")
        .and_then(|rest| rest.split(',').next())
        .and_then(|ratio| ratio.trim().split_once('/'))
        .is_some_and(|(a, b)| a == b && a != "0")
}

/// Runs one scenario (under a time limit) and returns its output without
/// terminal colours.
fn dir_output(bin: &Path, url: &str, scenario: &str) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!(
        "mcp-conformance-{}-{scenario}.log",
        std::process::id()
    ));
    let file = std::fs::File::create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let status = run_limited_status(
        Command::new(bin)
            .args(["server", "--url", url, "--scenario", scenario])
            .env("NO_COLOR", "1")
            .stdout(file)
            .stderr(err),
        SCENARIO_LIMIT,
        scenario,
    )?;
    let text = std::fs::read_to_string(&dir).unwrap_or_default();
    let _ = std::fs::remove_file(&dir);
    let text = strip_ansi(&text);
    if !status.success() && !text.contains("Passed:") {
        return Err(format!(
            "scenario {scenario} did not run ({status}):\n{text}"
        ));
    }
    Ok(text)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_lines() {
        assert!(passed_all("Passed: 2/2, 0 failed, 1 warnings"));
        assert!(!passed_all("Passed: 0/1, 1 failed, 0 warnings"));
        assert!(!passed_all("Passed: 0/0, 0 failed"));
        assert_eq!(strip_ansi("\u{1b}[32mSUCCESS\u{1b}[0m"), "SUCCESS");
    }
}
