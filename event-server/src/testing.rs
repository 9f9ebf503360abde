//! Test support (feature `testing`, never on by default): the real host,
//! in-process, for tests in this crate and the others.
//!
//! [`Server::start`] builds the [`App`] the enabled features select, from
//! the same flags the binary takes, on `127.0.0.1:0` with a fresh SQLite
//! database in a temporary directory (removed on drop) and loopback webhook
//! targets allowed; the test reaches it over real sockets at
//! [`Server::url`] and in-process through [`Server::bus`] and
//! [`Server::registry`].
//!
//! ```
//! use event_server::testing::{Server, client};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut server = Server::start(&["--event-replay-size", "8"]).await;
//! let health = client().get(server.url("/health")).send().await.expect("GET /health");
//! assert_eq!(health.status(), 200);
//! server.shutdown().await;
//! # }
//! ```
//!
//! The helpers panic with a message instead of returning errors: a failed
//! set-up is a failed test.

// Test support: a set-up step that cannot be done fails the test, and
// `expect` says which one.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use event_core::{ConnectionRegistry, Event, EventBus, Received, Subscription};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::error::ServerError;

/// How long a helper waits for something that should happen promptly
/// (generous: tests share a small machine).
pub const WAIT: Duration = Duration::from_secs(10);

/// A directory under the system temp directory, removed (with its
/// contents) on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh, uniquely named directory.
    ///
    /// # Panics
    ///
    /// When it cannot be created.
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("event-server-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `sqlite://<dir>/events.db`: a database in this directory.
    pub fn sqlite_url(&self) -> String {
        format!("sqlite://{}/events.db", self.0.display())
    }
}

impl Default for TempDir {
    fn default() -> Self {
        TempDir::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to start a [`Server`] beyond the defaults of [`Server::start`].
#[derive(Debug, Clone)]
pub struct Builder {
    database_url: Option<String>,
    loopback_webhooks: bool,
    args: Vec<String>,
}

impl Builder {
    /// Uses `url` (e.g. a PostgreSQL schema, or a SQLite file that outlives
    /// one server) instead of a fresh SQLite database.
    pub fn database_url(mut self, url: impl Into<String>) -> Builder {
        self.database_url = Some(url.into());
        self
    }

    /// Whether `--webhook-allow-cidrs 127.0.0.0/8` is passed (default yes,
    /// so tests can run webhook receivers on loopback).
    pub fn loopback_webhooks(mut self, allow: bool) -> Builder {
        self.loopback_webhooks = allow;
        self
    }

    /// More flags, as the binary takes them (`["--event-replay-size", "8"]`).
    pub fn args(mut self, extra: &[&str]) -> Builder {
        self.args.extend(extra.iter().map(|s| (*s).to_owned()));
        self
    }

    /// The configuration these settings give, and the server's directory.
    ///
    /// # Panics
    ///
    /// When the flags do not parse or validate.
    pub fn config(self) -> (Config, TempDir) {
        let dir = TempDir::new();
        let database_url = self.database_url.unwrap_or_else(|| dir.sqlite_url());
        let mut args = vec![
            "event-server".to_owned(),
            "--event-server-addr".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--database-url".to_owned(),
            database_url,
        ];
        if self.loopback_webhooks {
            args.extend(["--webhook-allow-cidrs".to_owned(), "127.0.0.0/8".to_owned()]);
        }
        args.extend(self.args);
        let config = Config::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("invalid test server flags {args:?}: {e}"));
        if let Err(e) = config.validate() {
            panic!("invalid test server configuration {args:?}: {e}");
        }
        (config, dir)
    }

    /// Builds the app and serves it on a fresh loopback port.
    ///
    /// # Panics
    ///
    /// When the configuration is invalid or the app cannot be built (e.g.
    /// the database is unreachable).
    pub async fn start(self) -> Server {
        let (config, dir) = self.config();
        let app = App::build(&config)
            .await
            .unwrap_or_else(|e| panic!("the test server did not build: {e}"));
        let bus = app.bus().clone();
        let registry = app.registry().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("the listener's address");
        let (stop, stopped) = oneshot::channel::<()>();
        // Dropping the sender also stops the server.
        let task = tokio::spawn(app.serve(listener, async move {
            let _ = stopped.await;
        }));
        Server {
            addr,
            bus,
            registry,
            stop: Some(stop),
            task: Some(task),
            dir,
        }
    }
}

/// The host, serving in this process on `127.0.0.1:<port>`. Dropping it
/// starts a graceful shutdown in the background and removes its directory;
/// [`shutdown`](Server::shutdown) waits for the shutdown to finish.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its bus (publish in-process, subscribe to what it publishes).
    pub bus: EventBus,
    /// Its connection registry.
    pub registry: ConnectionRegistry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
    dir: TempDir,
}

impl Server {
    /// A server with a fresh SQLite database, loopback webhook targets
    /// allowed, and the flags `extra`.
    ///
    /// # Panics
    ///
    /// As [`Builder::start`].
    pub async fn start(extra: &[&str]) -> Server {
        Server::builder().args(extra).start().await
    }

    /// Settings beyond [`start`](Server::start)'s defaults.
    pub fn builder() -> Builder {
        Builder {
            database_url: None,
            loopback_webhooks: true,
            args: Vec::new(),
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://<addr><path>`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The server's temporary directory (its SQLite database unless another
    /// was given; tests may keep files of their own there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Publishes a sentinel event in-process and asserts it is the next
    /// event other than `QueueStatus` on `sub`: nothing (a refused request,
    /// a repeated one) was published since `sub` last read.
    ///
    /// # Panics
    ///
    /// When another event comes first, or none within [`WAIT`].
    pub async fn assert_nothing_published(&self, sub: &mut Subscription) {
        let sentinel = self.bus.publish(event_core::JobQueued {
            job_id: uuid::Uuid::now_v7(),
            job_type: "Sentinel".to_owned(),
            note_id: None,
        });
        let next = next_where(sub, |ev| ev.kind() != event_core::EventKind::QueueStatus).await;
        assert_eq!(next.id(), sentinel.id(), "published meanwhile: {next:?}");
    }

    /// `GET path`'s body as text (`/metrics`, say).
    ///
    /// # Panics
    ///
    /// When the request fails or is not answered 200.
    pub async fn get_text(&self, path: &str) -> String {
        let res = client()
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(res.status(), 200, "GET {path}");
        res.text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Publishes `body` (one event or an array) through
    /// `POST /api/v1/events`, the path outside producers take, and returns
    /// `(seq, event_id)` of each event (in a NATS cluster too: the `202`
    /// waits for JetStream's acknowledgement and carries its sequence).
    ///
    /// # Panics
    ///
    /// When the request fails or is not answered 202.
    pub async fn publish(&self, body: &Value) -> Vec<(u64, String)> {
        let res = client()
            .post(self.url("/api/v1/events"))
            .json(body)
            .send()
            .await
            .expect("POST /api/v1/events");
        let status = res.status();
        let answer: Value = res.json().await.expect("a JSON answer to the publish");
        assert_eq!(status, 202, "publish of {body} refused: {answer}");
        let published = answer["events"].as_array().expect("`events` in the answer");
        published
            .iter()
            .map(|e| {
                let seq = e["seq"].as_u64().unwrap_or(0);
                let id = e["event_id"].as_str().expect("`event_id` in the answer");
                (seq, id.to_owned())
            })
            .collect()
    }

    /// Waits until the registry holds exactly `n` connections.
    ///
    /// # Panics
    ///
    /// When it does not within [`WAIT`].
    pub async fn wait_connections(&self, n: usize) {
        let mut total = self.registry.watch_total();
        let reached = tokio::time::timeout(WAIT, total.wait_for(|&t| t == n)).await;
        assert!(
            matches!(reached, Ok(Ok(_))),
            "the server never had {n} connections (has {})",
            self.registry.total()
        );
    }

    /// Signals shutdown and waits for `serve` to return; how long it took.
    ///
    /// # Panics
    ///
    /// When `serve` does not return within [`WAIT`] or returns an error.
    pub async fn shutdown(&mut self) -> Duration {
        let started = Instant::now();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("serve did not return after shutdown")
                .expect("the server task panicked")
                .expect("serve returned an error");
        }
        started.elapsed()
    }
}

/// An HTTP client with a 20 s timeout (and the TLS provider reqwest needs
/// installed).
///
/// # Panics
///
/// When the client cannot be built.
pub fn client() -> reqwest::Client {
    // Already installed by an earlier call: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("an HTTP client")
}

/// The next event on `sub` that `want` accepts; others (such as the job
/// bridge's periodic `QueueStatus`) and lag are skipped.
///
/// # Panics
///
/// When none arrives within [`WAIT`] or the bus closes.
pub async fn next_where(sub: &mut Subscription, want: impl Fn(&Event) -> bool) -> Arc<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("no matching event in time")
        {
            Received::Event(ev) if want(&ev) => return ev,
            Received::Event(_) | Received::Lagged(_) => {}
            Received::Closed => panic!("bus closed"),
        }
    }
}

/// The PostgreSQL URL for tests (`TEST_POSTGRES_URL`), or `None` when it is
/// unset: the caller returns early (the test is skipped, with the reason
/// printed).
///
/// # Panics
///
/// When it is unset and `EVENT_TEST_REQUIRE_SERVICES=1` (as in CI).
#[cfg(feature = "postgres")]
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{test}: TEST_POSTGRES_URL is required (EVENT_TEST_REQUIRE_SERVICES=1)"
            );
            eprintln!("skipping {test}: TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A fresh PostgreSQL schema, so tests sharing one database never see each
/// other's tables; a host given [`scoped_url`](PgSchema::scoped_url) works
/// in it through `search_path`. Dropped (with everything in it) by
/// [`drop_schema`](PgSchema::drop_schema).
#[cfg(feature = "postgres")]
#[derive(Debug)]
pub struct PgSchema {
    url: String,
    name: String,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    /// Creates `test_<uuid>` on the database at `url`.
    ///
    /// # Panics
    ///
    /// When the database cannot be reached or refuses.
    pub async fn create(url: &str) -> PgSchema {
        let name = format!("test_{}", uuid::Uuid::now_v7().simple());
        PgSchema::execute(url, &format!("CREATE SCHEMA {name}")).await;
        PgSchema {
            url: url.to_owned(),
            name,
        }
    }

    /// The database URL with this schema as the connections' `search_path`.
    pub fn scoped_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.url, self.name)
    }

    /// Drops the schema and everything in it.
    ///
    /// # Panics
    ///
    /// When the database cannot be reached or refuses.
    pub async fn drop_schema(self) {
        PgSchema::execute(&self.url, &format!("DROP SCHEMA {} CASCADE", self.name)).await;
    }

    async fn execute(url: &str, statement: &str) {
        let pool = sqlx::PgPool::connect(url)
            .await
            .unwrap_or_else(|e| panic!("connect to the test database: {e}"));
        // The only names in `statement` are generated here (a UUID), never
        // outside input.
        sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        pool.close().await;
    }
}
