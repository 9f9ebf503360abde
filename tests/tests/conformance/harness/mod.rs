//! Real parts for the conformance tests: an in-process `event-server` on
//! 127.0.0.1:0, a WebSocket client, an SSE client that keeps every frame's
//! raw bytes, and a scriptable webhook receiver (a real axum server).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use event_core::{ConnectionRegistry, EventBus, Received};
use event_server::app::App;
use event_server::config::Config;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for anything that should happen "promptly".
pub const WAIT: Duration = Duration::from_secs(10);

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("conformance-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub bus: EventBus,
    pub registry: ConnectionRegistry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), event_server::error::ServerError>>>,
    _dir: TempDir,
}

impl Server {
    /// A server on a fresh SQLite database, loopback webhooks allowed, plus `extra` flags.
    pub async fn start(extra: &[&str]) -> Server {
        let dir = TempDir::new();
        let db = format!("sqlite://{}/events.db", dir.0.display());
        Server::start_on(&db, extra, dir).await
    }

    /// A server on `database_url`.
    pub async fn start_on(database_url: &str, extra: &[&str], dir: TempDir) -> Server {
        let mut args = vec![
            "event-server".to_owned(),
            "--event-server-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--database-url".to_owned(),
            database_url.to_owned(),
            "--webhook-allow-cidrs".to_owned(),
            "127.0.0.0/8".to_owned(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let config = Config::try_parse_from(args).unwrap();
        config.validate().unwrap();
        let app = App::build(&config).await.unwrap();
        let bus = app.bus().clone();
        let registry = app.registry().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            bus,
            registry,
            stop: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Signals shutdown and waits (bounded) for `serve` to return.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("serve did not return after shutdown")
                .unwrap()
                .unwrap();
        }
    }

    /// Publishes through `POST /api/v1/events` (the outside producers' path)
    /// and returns `(seq, event_id)` of each event.
    pub async fn publish(&self, body: &Value) -> Vec<(u64, String)> {
        let res = client()
            .post(self.url("/api/v1/events"))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 202, "publish of {body} refused");
        let answer: Value = res.json().await.unwrap();
        answer["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["event_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Waits until the registry holds `n` connections.
    pub async fn wait_connections(&self, n: usize) {
        let registry = self.registry.clone();
        eventually(WAIT, move || {
            let registry = registry.clone();
            async move { registry.total() == n }
        })
        .await;
    }
}

/// An HTTP client (rustls provider installed).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// An HTTP client without an overall timeout, for streams.
pub fn stream_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Polls `check` every 20 ms until it holds; panics after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let result = tokio::time::timeout(timeout, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    })
    .await;
    assert!(result.is_ok(), "condition not met within {timeout:?}");
}

/// The next bus event that `want` accepts (lag is tolerated and skipped).
pub async fn next_on_bus(
    sub: &mut event_core::Subscription,
    want: impl Fn(&event_core::Event) -> bool,
) -> Arc<event_core::Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("no matching bus event in time")
        {
            Received::Event(ev) if want(&ev) => return ev,
            Received::Event(_) | Received::Lagged(_) => {}
            Received::Closed => panic!("bus closed"),
        }
    }
}

mod metrics;
mod receiver;
mod sse;
mod ws;

pub use metrics::*;
pub use receiver::*;
pub use sse::*;
pub use ws::*;
