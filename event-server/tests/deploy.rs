//! The operator files in `deploy/` hold up against the real thing: the
//! Prometheus alert rules pass `promtool check rules`, and every metric the
//! rules and the Grafana dashboard query is served by a live server's
//! `/metrics` (after one event, one WebSocket connection closed and one SSE
//! resume, the only series that appear with use).
//!
//! `promtool` comes with Debian's `prometheus` package (`EVENT_TEST_PROMTOOL`
//! names another); without it the rules check is skipped with a reason,
//! and fails under `EVENT_TEST_REQUIRE_SERVICES=1`. The `matric_nats_*`
//! names need a cluster: they are checked when this test is built with the
//! `nats` feature and `TEST_NATS_URL` is set (`cargo xtask ci` runs it so).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use event_server::testing::{Server, client};
use event_test_support::Scrape;
use futures_util::StreamExt;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

fn required() -> bool {
    std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Every `matric_…` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("matric_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    // Grafana's dashboard uid and tags are not metrics.
    names.remove("matric_");
    names
}

fn used_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for file in ["prometheus/alerts.yml", "grafana/matric-events.json"] {
        let text = std::fs::read_to_string(deploy(file)).unwrap();
        let found = metric_names(&text);
        assert!(!found.is_empty(), "{file} names no metric");
        names.extend(found);
    }
    names
}

#[test]
fn the_alert_rules_pass_promtool() {
    let promtool = std::env::var("EVENT_TEST_PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let rules = deploy("prometheus/alerts.yml");
    match std::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            let why = format!("{promtool} not runnable ({e}; Debian: prometheus)");
            assert!(!required(), "{why}, but EVENT_TEST_REQUIRE_SERVICES=1");
            eprintln!("alert rules check skipped: {why}");
        }
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_queries() {
    let text = std::fs::read_to_string(deploy("grafana/matric-events.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "{} panels", panels.len());
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| e.contains("matric_"))),
            "panel {} has a target without a matric query",
            panel["title"]
        );
    }
}

/// The server the names are checked against: in a cluster when this build
/// can be one and NATS is there.
struct Live {
    server: Server,
    cluster: bool,
    /// Deleted when the test ends.
    #[cfg(feature = "nats")]
    _stream: Option<event_nats::testing::TestStream>,
}

async fn live_server() -> Live {
    #[cfg(feature = "nats")]
    if let Ok(url) = std::env::var("TEST_NATS_URL") {
        let stream = event_nats::testing::TestStream::new(&url);
        let server = Server::start(&[
            "--nats-url",
            stream.url(),
            "--nats-stream",
            stream.stream(),
            "--nats-subject-prefix",
            stream.subject_prefix(),
        ])
        .await;
        return Live {
            server,
            cluster: true,
            _stream: Some(stream),
        };
    }
    Live {
        server: Server::start(&[]).await,
        cluster: false,
        #[cfg(feature = "nats")]
        _stream: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_rules_and_dashboard_use_is_served() {
    let live = live_server().await;
    let (server, cluster) = (&live.server, live.cluster);
    let job = uuid::Uuid::new_v4();
    server
        .publish(&json!({"type":"JobQueued","job_id":job,"job_type":"Embedding"}))
        .await;
    // One WebSocket connection opened and closed.
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws"))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    ws.close(None).await.unwrap();
    drop(ws);
    server.wait_connections(0).await;
    // One SSE resume from a cursor the ring holds.
    let mut resume = client()
        .get(server.url("/api/v1/events"))
        .header("last-event-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), 200);
    tokio::time::timeout(WAIT, resume.chunk())
        .await
        .unwrap()
        .unwrap();
    drop(resume);
    // One named consumer (its lag and redelivery series), without the
    // cluster: the log is off there.
    let consumer = if cluster {
        None
    } else {
        let res = client()
            .get(server.url("/api/v1/events?consumer=deploy-check"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        Some(res)
    };

    let text = server.get_text("/metrics").await;
    drop(consumer);
    let served: BTreeSet<String> = Scrape::parse(&text)
        .samples
        .into_iter()
        .map(|s| s.name)
        .collect();
    let mut missing = Vec::new();
    for name in used_names() {
        // In cluster mode the JetStream stream is the log: no event log.
        if (name.starts_with("matric_log_") || name.starts_with("matric_consumer_")) && cluster {
            eprintln!("{name}: the event log is off in cluster mode, not checked here");
            continue;
        }
        if name.starts_with("matric_nats_") && !cluster {
            eprintln!(
                "{name}: needs a cluster (feature `nats` and TEST_NATS_URL), not checked here"
            );
            continue;
        }
        if !served.contains(&name) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/ uses metrics /metrics does not serve: {missing:?}"
    );
}
