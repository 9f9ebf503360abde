//! Issue 21: the MCP endpoint `/mcp` of the real host, driven by the
//! official Rust SDK's client over Streamable HTTP — initialize, tools and
//! resources, subscriptions while the demo's simulated worker runs a job,
//! `wait_for_job` with progress notifications, token scopes, the session
//! cap and kicks. Every wait has a deadline.

// `resources/subscribe` is what the 2025 revisions served here have.
#![allow(clippy::unwrap_used, clippy::expect_used, deprecated)]

use std::time::Duration;

use event_core::Transport;
use event_server::testing::{Server, WAIT, client};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ProgressNotificationParam, ReadResourceRequestParams,
    ResourceContents, ResourceUpdatedNotificationParam, SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Records what the server notifies.
#[derive(Clone)]
struct Recorder {
    updates: mpsc::UnboundedSender<String>,
    progress: mpsc::UnboundedSender<ProgressNotificationParam>,
}

impl ClientHandler for Recorder {
    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.updates.send(params.uri);
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.progress.send(params);
    }
}

struct Agent {
    client: RunningService<RoleClient, Recorder>,
    updates: mpsc::UnboundedReceiver<String>,
    progress: mpsc::UnboundedReceiver<ProgressNotificationParam>,
}

async fn connect(server: &Server, token: Option<&str>) -> Agent {
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let (progress_tx, progress) = mpsc::unbounded_channel();
    let mut config = StreamableHttpClientTransportConfig::with_uri(server.url("/mcp"));
    if let Some(token) = token {
        config = config.auth_header(token);
    }
    let transport = StreamableHttpClientTransport::with_client(client(), config);
    let client = tokio::time::timeout(
        WAIT,
        Recorder {
            updates: updates_tx,
            progress: progress_tx,
        }
        .serve(transport),
    )
    .await
    .expect("initialize in time")
    .expect("initialize");
    Agent {
        client,
        updates,
        progress,
    }
}

impl Agent {
    async fn call(&self, tool: &str, args: Value) -> CallToolResult {
        let mut params = CallToolRequestParams::new(tool.to_owned());
        if let Value::Object(map) = args {
            params = params.with_arguments(map);
        }
        tokio::time::timeout(WAIT * 3, self.client.call_tool(params))
            .await
            .unwrap_or_else(|_| panic!("{tool} answered in time"))
            .unwrap_or_else(|e| panic!("{tool}: {e}"))
    }

    /// A tool's structured answer; panics on an error result.
    async fn call_ok(&self, tool: &str, args: Value) -> Value {
        let result = self.call(tool, args).await;
        assert_ne!(result.is_error, Some(true), "{tool}: {result:?}");
        result.structured_content.expect("a structured answer")
    }

    async fn read(&self, uri: &str) -> Value {
        let result = tokio::time::timeout(
            WAIT,
            self.client
                .read_resource(ReadResourceRequestParams::new(uri.to_owned())),
        )
        .await
        .expect("read in time")
        .unwrap_or_else(|e| panic!("read {uri}: {e}"));
        match &result.contents[0] {
            ResourceContents::TextResourceContents { text, .. } => {
                serde_json::from_str(text).unwrap()
            }
            other => panic!("not text: {other:?}"),
        }
    }

    async fn close(self) {
        let _ = tokio::time::timeout(WAIT, self.client.cancel()).await;
    }
}

async fn submit_job(server: &Server, token: Option<&str>) -> String {
    let mut req = client()
        .post(server.url("/api/v1/jobs"))
        .json(&json!({"job_type": "Embedding"}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    body["job_id"].as_str().unwrap().to_owned()
}

fn tool_names(tools: &[rmcp::model::Tool]) -> Vec<String> {
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_agent_initializes_lists_and_calls_every_tool() {
    let mut server = Server::start(&[]).await;
    let agent = connect(&server, None).await;
    let info = agent.client.peer_info().expect("server info");
    assert_eq!(info.protocol_version.as_str(), "2025-11-25");
    assert!(info.capabilities.resources.as_ref().unwrap().subscribe == Some(true));

    // The session is listed like the other transports' connections.
    server.wait_connections(1).await;
    assert_eq!(server.registry.list()[0].transport, Transport::Mcp);

    let tools = agent.client.list_all_tools().await.unwrap();
    assert_eq!(
        tool_names(&tools),
        [
            "events_recent",
            "job_status",
            "list_connections",
            "publish_event",
            "queue_status",
            "wait_for_job"
        ]
    );
    let recent = tools.iter().find(|t| t.name == "events_recent").unwrap();
    let props = &recent.input_schema["properties"];
    for p in ["types", "events", "entity_id", "since", "limit"] {
        assert!(
            props.get(p).is_some(),
            "events_recent schema lacks {p}: {props}"
        );
    }
    let resources = agent.client.list_all_resources().await.unwrap();
    let mut uris: Vec<&str> = resources.iter().map(|r| r.uri.as_str()).collect();
    uris.sort();
    assert_eq!(uris, ["events://queue", "events://recent"]);
    let templates = agent.client.list_all_resource_templates().await.unwrap();
    let mut templates: Vec<&str> = templates.iter().map(|t| t.uri_template.as_str()).collect();
    templates.sort();
    assert_eq!(
        templates,
        ["events://jobs/{job_id}", "events://notes/{note_id}"]
    );

    // publish_event (anonymous local mode administers), then the read tools.
    let job = uuid::Uuid::now_v7();
    let published = agent
        .call_ok(
            "publish_event",
            json!({"event": {"type": "JobQueued", "job_id": job, "job_type": "Embedding"}}),
        )
        .await;
    let seq = published["seq"].as_u64().expect("a sequence number");
    let page = agent
        .call_ok(
            "events_recent",
            json!({"types": ["job.queued"], "entity_id": job.to_string()}),
        )
        .await;
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{page}");
    assert_eq!(events[0]["seq"], seq);
    assert_eq!(events[0]["event_type"], "job.queued");
    // `since` continues after a page.
    let after = agent
        .call_ok(
            "events_recent",
            json!({"since": page["next_since"], "entity_id": job.to_string()}),
        )
        .await;
    assert_eq!(after["events"].as_array().unwrap().len(), 0, "{after}");
    let bad = agent
        .call("events_recent", json!({"types": ["nope"]}))
        .await;
    assert_eq!(bad.is_error, Some(true));

    let status = agent
        .call_ok("job_status", json!({"job_id": job.to_string()}))
        .await;
    assert_eq!(status["state"], "queued");
    assert_eq!(status["job_type"], "Embedding");
    let unknown = agent
        .call(
            "job_status",
            json!({"job_id": uuid::Uuid::now_v7().to_string()}),
        )
        .await;
    assert_eq!(unknown.is_error, Some(true));

    let queue = agent.call_ok("queue_status", json!({})).await;
    assert!(queue["total_jobs"].is_u64(), "{queue}");
    assert_eq!(agent.read("events://queue").await, queue);

    let connections = agent.call_ok("list_connections", json!({})).await;
    let list = connections["connections"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["transport"], "mcp");

    // A wait that times out says so.
    let waited = agent
        .call_ok(
            "wait_for_job",
            json!({"job_id": uuid::Uuid::now_v7().to_string(), "timeout_secs": 1}),
        )
        .await;
    assert_eq!(waited["outcome"], "timeout");

    let recent = agent.read("events://recent").await;
    assert!(!recent["events"].as_array().unwrap().is_empty());
    let job_view = agent.read(&format!("events://jobs/{job}")).await;
    assert_eq!(job_view["state"], "queued");
    let missing = agent
        .client
        .read_resource(ReadResourceRequestParams::new("events://nope"))
        .await;
    assert!(missing.is_err());

    agent.close().await;
    server.wait_connections(0).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_subscribed_job_is_updated_while_the_simulator_runs_it() {
    let mut server = Server::start(&["--mcp-update-interval-ms", "1000"]).await;
    let mut agent = connect(&server, None).await;
    let started = tokio::time::Instant::now();
    let job = submit_job(&server, None).await;
    let uri = format!("events://jobs/{job}");
    agent
        .client
        .subscribe(SubscribeRequestParams::new(uri.clone()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    let mut updates = 0u32;
    let state = loop {
        let got = tokio::time::timeout_at(deadline, agent.updates.recv())
            .await
            .expect("resource updates until the job ends")
            .expect("the client is running");
        assert_eq!(got, uri, "only the subscribed resource is updated");
        updates += 1;
        let view = agent.read(&uri).await;
        if view["done"] == true {
            break view;
        }
    };
    assert_eq!(state["state"], "completed");
    assert_eq!(state["progress"], 100);
    // The job published at least seven events (queued, started, five
    // progress steps, completed); updates were coalesced to one per second.
    let allowed = started.elapsed().as_secs() as u32 + 2;
    assert!(updates <= allowed, "{updates} updates in {allowed} s");
    agent.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn wait_for_job_streams_progress_and_returns_on_completion() {
    let mut server = Server::start(&[]).await;
    let mut agent = connect(&server, None).await;
    let job = submit_job(&server, None).await;
    let result = agent
        .call_ok("wait_for_job", json!({"job_id": job, "timeout_secs": 30}))
        .await;
    assert_eq!(result["outcome"], "completed", "{result}");
    assert_eq!(result["done"], true);
    let mut seen = Vec::new();
    while let Ok(p) = agent.progress.try_recv() {
        seen.push(p.progress);
    }
    assert!(!seen.is_empty(), "no progress notifications");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert!(seen.iter().all(|p| (0.0..=100.0).contains(p)), "{seen:?}");
    // Waiting for a job that is already done answers at once.
    let again = agent
        .call_ok("wait_for_job", json!({"job_id": job, "timeout_secs": 30}))
        .await;
    assert_eq!(again["outcome"], "completed");
    agent.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn tokens_decide_who_connects_and_which_tools_it_has() {
    let mut server = Server::start(&[
        "--auth-admin-token",
        "adm-secret",
        "--auth-client-tokens",
        "cli-secret",
    ])
    .await;
    // No token, a wrong token: 401 before the body matters.
    for auth in [None, Some("Bearer wrong")] {
        let mut req = client()
            .post(server.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body("{}");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
    }

    let agent = connect(&server, Some("cli-secret")).await;
    let tools = agent.client.list_all_tools().await.unwrap();
    assert_eq!(
        tool_names(&tools),
        [
            "events_recent",
            "job_status",
            "queue_status",
            "wait_for_job"
        ]
    );
    let refused = agent
        .call(
            "publish_event",
            json!({"event": {"type": "QueueStatus", "total_jobs": 0, "running": 0, "pending": 0}}),
        )
        .await;
    assert_eq!(refused.is_error, Some(true));
    let refused = agent.call("list_connections", json!({})).await;
    assert_eq!(refused.is_error, Some(true));
    assert!(agent.call_ok("queue_status", json!({})).await.is_object());

    let admin = connect(&server, Some("adm-secret")).await;
    assert_eq!(admin.client.list_all_tools().await.unwrap().len(), 6);
    let connections = admin.call_ok("list_connections", json!({})).await;
    let list = connections["connections"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert!(list.iter().all(|c| c["transport"] == "mcp"));
    assert!(
        list.iter()
            .all(|c| !c["principal"].as_str().unwrap().contains("secret"))
    );
    agent.close().await;
    admin.close().await;
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_beyond_the_cap_get_503_and_a_kick_ends_a_session() {
    let mut server = Server::start(&["--mcp-max-sessions", "1"]).await;
    let agent = connect(&server, None).await;
    server.wait_connections(1).await;
    let res = client()
        .post(server.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "second", "version": "0"}}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "too_many_sessions", "{body}");

    // An operator kicks the session: it leaves the list and frees its slot.
    let id = server.registry.list()[0].id;
    let kicked = client()
        .delete(server.url(&format!("/api/v1/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert!(kicked.status().is_success(), "{}", kicked.status());
    server.wait_connections(0).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // The slot is free once the SDK has dropped the session.
        let again = tokio::time::timeout_at(deadline, async {
            let (tx, _) = mpsc::unbounded_channel();
            let (ptx, _) = mpsc::unbounded_channel();
            let transport = StreamableHttpClientTransport::with_client(
                client(),
                StreamableHttpClientTransportConfig::with_uri(server.url("/mcp")),
            );
            Recorder {
                updates: tx,
                progress: ptx,
            }
            .serve(transport)
            .await
        })
        .await
        .expect("a new session after the kick");
        if let Ok(c) = again {
            let _ = c.cancel().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.close().await;
    server.shutdown().await;
}
