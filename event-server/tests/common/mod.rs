//! A real server on 127.0.0.1:0 for the host's tests.

#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use event_core::{ConnectionRegistry, EventBus};
use event_server::app::App;
use event_server::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Server {
    pub addr: SocketAddr,
    pub bus: EventBus,
    pub registry: ConnectionRegistry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), event_server::error::ServerError>>>,
    _dir: TempDir,
}

/// A directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("event-server-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn config(extra: &[&str]) -> (Config, TempDir) {
    let dir = TempDir::new();
    let db = format!("sqlite://{}/events.db", dir.0.display());
    let mut args = vec![
        "event-server".to_owned(),
        "--event-server-addr".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--database-url".to_owned(),
        db,
        "--webhook-allow-cidrs".to_owned(),
        "127.0.0.0/8".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let config = Config::try_parse_from(args).unwrap();
    config.validate().unwrap();
    (config, dir)
}

impl Server {
    pub async fn start(extra: &[&str]) -> Server {
        let (config, dir) = config(extra);
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

    /// Signals shutdown and waits (bounded) for `serve` to return.
    pub async fn shutdown(&mut self) -> Duration {
        let started = std::time::Instant::now();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("serve did not return after shutdown")
                .unwrap()
                .unwrap();
        }
        started.elapsed()
    }
}

pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The next event on `sub` that `want` accepts (others, such as the job
/// bridge's periodic `QueueStatus`, are skipped); panics after 5 s.
pub async fn next_where(
    sub: &mut event_core::Subscription,
    want: impl Fn(&event_core::Event) -> bool,
) -> std::sync::Arc<event_core::Event> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("no matching event within 5 s")
        {
            event_core::Received::Event(ev) if want(&ev) => return ev,
            event_core::Received::Event(_) => {}
            event_core::Received::Lagged(n) => panic!("lagged by {n}"),
            event_core::Received::Closed => panic!("bus closed"),
        }
    }
}
