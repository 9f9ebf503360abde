//! A session sees only what its principal may see: the endpoint alone (no
//! host), served by axum on loopback, driven by the SDK's client with
//! tokens of different scopes.

#![allow(clippy::unwrap_used, clippy::expect_used, deprecated)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use event_core::{
    Access, EventBus, EventMeta, JobProgress, JobQueued, SinkRunner, StaticTokens, Uuid,
};
use event_mcp::{McpConfig, McpEndpoint};
use rmcp::model::{
    CallToolRequestParams, ResourceUpdatedNotificationParam, SubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, ServiceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Updates(mpsc::UnboundedSender<String>);

impl ClientHandler for Updates {
    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let _ = self.0.send(params.uri);
    }
}

struct Host {
    bus: EventBus,
    addr: SocketAddr,
    _runner: SinkRunner,
}

async fn host() -> Host {
    let bus = EventBus::default();
    let auth = StaticTokens::new().admin("adm").client_with_memories(
        "alpha-only",
        Access::Only(BTreeSet::from(["alpha".to_owned()])),
    );
    let config = McpConfig {
        update_interval: Duration::from_millis(50),
        ..McpConfig::default()
    };
    let mcp = McpEndpoint::new(
        bus.clone(),
        event_core::ConnectionRegistry::new(),
        Arc::new(auth),
        config,
    );
    let mut runner = SinkRunner::new(&bus);
    runner.register(mcp.sink());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app: axum::Router = mcp.router();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Host {
        bus,
        addr,
        _runner: runner,
    }
}

async fn connect(
    host: &Host,
    token: &str,
) -> (
    RunningService<RoleClient, Updates>,
    mpsc::UnboundedReceiver<String>,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = StreamableHttpClientTransportConfig::with_uri(format!("http://{}/mcp", host.addr))
        .auth_header(token);
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    let (tx, rx) = mpsc::unbounded_channel();
    let client = tokio::time::timeout(WAIT, Updates(tx).serve(transport))
        .await
        .expect("initialize in time")
        .expect("initialize");
    (client, rx)
}

async fn recent(client: &RunningService<RoleClient, Updates>) -> Vec<Value> {
    let result = client
        .call_tool(CallToolRequestParams::new("events_recent"))
        .await
        .unwrap();
    result.structured_content.unwrap()["events"]
        .as_array()
        .unwrap()
        .clone()
}

fn queued(job: Uuid) -> JobQueued {
    JobQueued {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: None,
    }
}

fn progress(job: Uuid) -> JobProgress {
    JobProgress {
        job_id: job,
        note_id: None,
        progress: 50,
        message: None,
    }
}

#[tokio::test]
async fn a_scoped_client_sees_and_hears_only_its_memories() {
    let host = host().await;
    let (alpha, beta, open) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    host.bus
        .publish_with(queued(alpha), EventMeta::default().memory("alpha"));
    host.bus
        .publish_with(queued(beta), EventMeta::default().memory("beta"));
    host.bus.publish(queued(open));

    let (client, mut updates) = connect(&host, "alpha-only").await;
    let seen: Vec<String> = recent(&client)
        .await
        .iter()
        .map(|e| e["entity_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, [alpha.to_string(), open.to_string()]);
    let (admin, _) = connect(&host, "adm").await;
    assert_eq!(recent(&admin).await.len(), 3);

    // Subscribed to both jobs, the scoped client hears only about its own.
    for job in [alpha, beta, open] {
        client
            .subscribe(SubscribeRequestParams::new(format!("events://jobs/{job}")))
            .await
            .unwrap();
    }
    host.bus
        .publish_with(progress(beta), EventMeta::default().memory("beta"));
    host.bus
        .publish_with(progress(alpha), EventMeta::default().memory("alpha"));
    let first = tokio::time::timeout(WAIT, updates.recv())
        .await
        .expect("an update in time")
        .unwrap();
    assert_eq!(first, format!("events://jobs/{alpha}"));
    // Anything about `beta` would have been sent before this one.
    host.bus.publish(progress(open));
    let next = tokio::time::timeout(WAIT, updates.recv())
        .await
        .expect("an update in time")
        .unwrap();
    assert_eq!(next, format!("events://jobs/{open}"));
    assert!(updates.try_recv().is_err());

    // The scoped client may not read another memory's job.
    let result = client
        .call_tool(
            CallToolRequestParams::new("job_status")
                .with_arguments(json!({"job_id": beta}).as_object().unwrap().clone()),
        )
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let _ = client.cancel().await;
    let _ = admin.cancel().await;
}

#[tokio::test]
async fn without_a_valid_token_nothing_opens() {
    let host = host().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let res = reqwest::Client::new()
        .post(format!("http://{}/mcp", host.addr))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("authorization", "Bearer nope")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
}
