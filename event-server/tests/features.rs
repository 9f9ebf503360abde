//! Issue #8: every host feature builds and runs alone. This test compiles
//! under any feature set (`cargo xtask ci` runs it once per single-feature
//! build, `--no-default-features --features <f> --test features`) and runs
//! the `event-server` binary built with that set, as an operator would: on
//! 127.0.0.1:0 with a temporary SQLite database, found through its
//! "listening" log line. It checks that
//!
//! * the routes always mounted answer (`/`, `/health`, publishing,
//!   `/api/v1/connections`);
//! * each enabled feature's routes speak their protocol (WebSocket upgrade,
//!   an SSE stream opening with `retry:`, `GET /api/v1/webhooks` → `[]`,
//!   `/metrics`, the demo's notes and job status, an MCP `initialize`
//!   answered with a session, the contracts describing this build), and each absent
//!   feature's routes are 404;
//! * with `postgres` it runs on PostgreSQL (a fresh schema of
//!   `TEST_POSTGRES_URL`): `/health` has the database up, the server lists
//!   a connection under the host's `application_name`, no SQLite file is
//!   made; with `nats` on NATS (a test stream of `TEST_NATS_URL`): another
//!   instance on the stream receives the event published to the host.
//!   Either is skipped with a printed reason when unset, unless
//!   `EVENT_TEST_REQUIRE_SERVICES=1`;
//! * SIGTERM stops it with exit status 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;

use event_server::testing::{TempDir, client};
use futures_util::StreamExt;
use host::{Host, WAIT};
use serde_json::{Value, json};

/// The features this build has, for the messages.
fn features() -> Vec<&'static str> {
    [
        ("ws", cfg!(feature = "ws")),
        ("sse", cfg!(feature = "sse")),
        ("webhook", cfg!(feature = "webhook")),
        ("telemetry", cfg!(feature = "telemetry")),
        ("otlp", cfg!(feature = "otlp")),
        ("jobs", cfg!(feature = "jobs")),
        ("demo", cfg!(feature = "demo")),
        ("postgres", cfg!(feature = "postgres")),
        ("nats", cfg!(feature = "nats")),
        ("mcp", cfg!(feature = "mcp")),
        ("log", cfg!(feature = "log")),
        ("contracts", cfg!(feature = "contracts")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect()
}

#[tokio::test]
async fn the_binary_serves_exactly_the_routes_of_its_features_and_stops_on_sigterm() {
    let features = features();
    eprintln!("event-server built with features {features:?}");
    let dir = TempDir::new();
    // The `postgres` and `nats` blocks below change it.
    #[allow(unused_mut)]
    let mut env = vec![("DATABASE_URL", dir.sqlite_url())];

    // The host's connections carry a unique `application_name`, so the test
    // can see in `pg_stat_activity` that the host really talks to PostgreSQL.
    #[cfg(feature = "postgres")]
    let application = format!("features_{}", uuid::Uuid::now_v7().simple());
    #[cfg(feature = "postgres")]
    let schema = match event_server::testing::postgres_url("features (postgres)") {
        Some(url) => {
            let schema = event_server::testing::PgSchema::create(&url).await;
            env[0].1 = format!("{}&application_name={application}", schema.scoped_url());
            Some((url, schema))
        }
        None => None,
    };
    #[cfg(feature = "nats")]
    let stream = event_nats::testing::nats_url("features (nats)").map(|url| {
        let stream = event_nats::testing::TestStream::new(&url);
        env.push(("NATS_URL", url));
        env.push(("NATS_STREAM", stream.stream().to_owned()));
        env.push(("NATS_SUBJECT_PREFIX", stream.subject_prefix().to_owned()));
        stream
    });

    let host = Host::start(&env).await;
    let job = check_routes(&host, &features).await;
    // The event log beside a SQLite database: there exactly with `log`
    // (on by default).
    let log_file = dir.path().join("events-log.db");
    if env[0].1.starts_with("sqlite:") && !env.iter().any(|(k, _)| *k == "NATS_URL") {
        assert_eq!(
            log_file.exists(),
            cfg!(feature = "log"),
            "{features:?}: event log file {}",
            log_file.display()
        );
    }

    #[cfg(feature = "postgres")]
    if let Some((url, _)) = &schema {
        check_postgres(&host, url, &application, &dir).await;
    }
    #[cfg(feature = "nats")]
    if let Some(stream) = &stream {
        check_nats(stream, job).await;
    }
    let _ = job;

    let (status, log) = host.terminate().await;
    assert!(status.success(), "{features:?}: exit status {status}");
    assert!(
        log.iter().any(|line| line.contains("shutting down")),
        "{features:?}: no graceful shutdown in the log: {log:#?}"
    );

    #[cfg(feature = "postgres")]
    if let Some((_, schema)) = schema {
        schema.drop_schema().await;
    }
    #[cfg(feature = "nats")]
    drop(stream);
}

/// The host runs on PostgreSQL: its database is up, a connection under its
/// `application_name` is open on the server, and no SQLite file was made.
#[cfg(feature = "postgres")]
async fn check_postgres(host: &Host, url: &str, application: &str, dir: &TempDir) {
    let health = host.json("/health").await;
    assert_eq!(health["components"]["database"]["status"], "up", "{health}");
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(application)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert!(open >= 1, "the host holds no PostgreSQL connection");
    assert!(
        !dir.path().join("events.db").exists(),
        "the host made a SQLite database"
    );
}

/// The host publishes through NATS: another instance on the same stream
/// gets the `JobQueued` the host was sent.
#[cfg(feature = "nats")]
async fn check_nats(stream: &event_nats::testing::TestStream, job: uuid::Uuid) {
    let reader =
        event_nats::NatsCluster::connect(stream.config("reader"), event_core::BusConfig::default())
            .await
            .unwrap();
    let bus = reader.bus().clone();
    // Subscribed before looking at the warm-up, so nothing falls between.
    let mut sub = bus.subscribe();
    let is_job = |ev: &event_core::Event| matches!(ev.payload(), event_core::ServerEvent::JobQueued(q) if q.job_id == job);
    if !bus
        .latest(event_core::EventKind::JobQueued)
        .is_some_and(|ev| is_job(&ev))
    {
        tokio::time::timeout(WAIT, async {
            loop {
                if let event_core::Received::Event(ev) = sub.recv().await
                    && is_job(&ev)
                {
                    return;
                }
            }
        })
        .await
        .expect("the host's JobQueued did not come through the NATS stream");
    }
    reader.shutdown(WAIT).await;
}

/// Checks the routes; returns the job id of the `JobQueued` it published.
async fn check_routes(host: &Host, features: &[&str]) -> uuid::Uuid {
    // Always mounted.
    assert_eq!(host.status("/").await, 200, "{features:?}: dashboard");
    let health = host.json("/health").await;
    assert!(
        health["connections"].is_object(),
        "{features:?}: /health {health}"
    );
    assert_eq!(host.status("/api/v1/connections").await, 200);
    let job = uuid::Uuid::now_v7();
    let res = client()
        .post(host.url("/api/v1/events"))
        .json(&json!({"type": "JobQueued", "job_id": job, "job_type": "Embedding"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{features:?}: publish");

    check_ws(host, features).await;
    check_sse(host, features).await;
    check_mcp(host, features).await;

    if cfg!(feature = "webhook") {
        assert_eq!(host.json("/api/v1/webhooks").await, json!([]));
    } else {
        assert_eq!(host.status("/api/v1/webhooks").await, 404, "{features:?}");
    }

    if cfg!(feature = "telemetry") {
        let res = client().get(host.url("/metrics")).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        assert!(
            text.contains("matric_events_published_total"),
            "{features:?}: /metrics without the published counter:\n{text}"
        );
    } else {
        assert_eq!(host.status("/metrics").await, 404, "{features:?}");
    }

    if cfg!(feature = "contracts") {
        // The documents describe what this build mounts.
        let asyncapi = host.json("/api/v1/asyncapi.json").await;
        assert_eq!(asyncapi["asyncapi"], "3.0.0", "{features:?}");
        let channels = &asyncapi["channels"];
        assert_eq!(channels.get("websocket").is_some(), cfg!(feature = "ws"));
        assert_eq!(channels.get("sse").is_some(), cfg!(feature = "sse"));
        assert_eq!(channels.get("webhook").is_some(), cfg!(feature = "webhook"));
        let openapi = host.json("/api/v1/openapi.json").await;
        let paths = &openapi["paths"];
        assert!(paths.get("/api/v1/events").is_some(), "{features:?}");
        assert_eq!(
            paths.get("/api/v1/webhooks").is_some(),
            cfg!(feature = "webhook")
        );
        assert_eq!(paths.get("/metrics").is_some(), cfg!(feature = "telemetry"));
    } else {
        assert_eq!(host.status("/api/v1/asyncapi.json").await, 404);
        assert_eq!(host.status("/api/v1/openapi.json").await, 404);
    }

    if cfg!(feature = "demo") {
        assert!(host.json("/api/v1/notes").await.is_array());
        assert!(host.json("/api/v1/jobs/status").await.is_object());
    } else {
        assert_eq!(host.status("/api/v1/notes").await, 404, "{features:?}");
        assert_eq!(
            host.status("/api/v1/jobs/status").await,
            404,
            "{features:?}"
        );
    }
    job
}

async fn check_ws(host: &Host, features: &[&str]) {
    let url = format!("ws://{}/api/v1/ws", host.addr);
    if !cfg!(feature = "ws") {
        assert_eq!(host.status("/api/v1/ws").await, 404, "{features:?}");
        let refused = tokio_tungstenite::connect_async(&url).await;
        assert!(refused.is_err(), "{features:?}: WebSocket upgrade accepted");
        return;
    }
    let (mut ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&url))
        .await
        .expect("WebSocket upgrade in time")
        .expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    if cfg!(feature = "jobs") {
        // The job bridge's queue snapshot greets every client.
        let first = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a first WebSocket message in time")
            .expect("the WebSocket stayed open")
            .unwrap();
        let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert_eq!(first["type"], "QueueStatus", "{first}");
    }
    ws.close(None).await.unwrap();
}

async fn check_sse(host: &Host, features: &[&str]) {
    if !cfg!(feature = "sse") {
        // The path stays mounted for publishing (POST) only.
        assert_eq!(host.status("/api/v1/events").await, 405, "{features:?}");
        for path in ["/api/v1/events/stream", "/api/v1/events/history"] {
            assert_eq!(host.status(path).await, 404, "{features:?}: {path}");
        }
        return;
    }
    let res = client()
        .get(host.url("/api/v1/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut body = res.bytes_stream();
    let first = tokio::time::timeout(WAIT, body.next())
        .await
        .expect("a first SSE chunk in time")
        .expect("the SSE stream stayed open")
        .unwrap();
    assert!(first.starts_with(b"retry:"), "{first:?}");
    assert_eq!(host.status("/api/v1/events/history").await, 200);
}

async fn check_mcp(host: &Host, features: &[&str]) {
    let res = client()
        .post(host.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "features", "version": "0"}
            }
        }))
        .send()
        .await
        .unwrap();
    if !cfg!(feature = "mcp") {
        assert_eq!(res.status(), 404, "{features:?}: /mcp");
        return;
    }
    assert_eq!(res.status(), 200, "{features:?}: MCP initialize");
    assert!(
        res.headers().contains_key("mcp-session-id"),
        "{features:?}: no MCP session: {:?}",
        res.headers()
    );
    let body = tokio::time::timeout(WAIT, res.text())
        .await
        .expect("the initialize answer in time")
        .unwrap();
    assert!(body.contains("\"protocolVersion\""), "{features:?}: {body}");
}
