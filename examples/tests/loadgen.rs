//! Smoke test of the benchmark tools: `loadgen` against `raw-floor`, both
//! real processes on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A `raw-floor` on a free loopback port, killed on drop.
struct Floor {
    child: Child,
    url: String,
}

impl Floor {
    fn start() -> Floor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raw-floor"))
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start raw-floor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read raw-floor's address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        Floor {
            child,
            url: format!("http://{addr}"),
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs loadgen to completion and parses its final stdout line.
fn loadgen(floor: &Floor, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--quiet", "--url", &floor.url, "--connect-timeout", "10"])
        .args(["--server-pid", &floor.child.id().to_string()])
        .args(args)
        .output()
        .expect("run loadgen");
    assert!(out.status.success(), "loadgen failed: {out:?}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let last = stdout.lines().last().expect("a result line");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("bad JSON {last:?}: {e}"))
}

#[test]
fn fanout_delivers_every_event_to_every_client_without_loss() {
    let floor = Floor::start();
    let r = loadgen(
        &floor,
        &[
            "--ws",
            "4",
            "--sse",
            "4",
            "--rate",
            "500",
            "--duration",
            "1",
            // One publishing connection: the requests (pipelined) are
            // answered in order, so each client's counters must ascend.
            "--publish-connections",
            "1",
        ],
    );
    assert_eq!(r["established"], 8, "{r}");
    let published = r["published"].as_u64().expect("published");
    assert_eq!(published, 500, "{r}");
    assert_eq!(r["publish_error"], Value::Null, "{r}");
    assert_eq!(r["accepted"].as_u64(), Some(published), "{r}");
    assert_eq!(r["expected"].as_u64(), Some(published * 8), "{r}");
    assert_eq!(r["delivered"].as_u64(), Some(published * 8), "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["lag_signals"], 0, "{r}");
    assert_eq!(r["out_of_order"], 0, "{r}");
    assert_eq!(r["latency_us"]["samples"].as_u64(), Some(published * 8));
    let p50 = r["latency_us"]["p50"].as_f64().expect("p50");
    let max = r["latency_us"]["max"].as_f64().expect("max");
    assert!(p50 > 0.0 && p50 <= max, "{r}");
    assert!(r["server_cpu_pct"].as_f64().is_some(), "{r}");
}

#[test]
fn idle_and_churn_modes_track_connections() {
    let floor = Floor::start();
    let idle = loadgen(&floor, &["--idle", "40", "--hold", "0"]);
    assert_eq!(idle["established"], 40, "{idle}");
    assert_eq!(idle["gauge_while_open"], 40.0, "{idle}");
    assert!(idle["server_rss_after_kib"].as_u64().is_some(), "{idle}");

    let churn = loadgen(&floor, &["--churn", "60", "--concurrency", "8"]);
    assert_eq!(churn["completed"], 60, "{churn}");
    assert_eq!(churn["failed"], 0, "{churn}");
    assert_eq!(churn["gauge_after"], 0.0, "{churn}");
}
