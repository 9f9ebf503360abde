//! Test support (feature `testing`, never on by default): what every test
//! against a real NATS needs, shared by this crate's tests and the host's
//! cluster tests.
//!
//! * [`nats_url`] gates a test on `TEST_NATS_URL` (skip with a printed
//!   reason, or fail when `EVENT_TEST_REQUIRE_SERVICES=1`);
//! * [`unique_config`] / [`TestStream`] give a test a stream and subject
//!   prefix of its own, so concurrent runs never see each other's events;
//!   a [`TestStream`] deletes its stream when dropped, also when the test
//!   fails;
//! * [`PrivateNats`] runs a `nats-server` process of the test's own, for
//!   tests that stop and restart NATS, and [`PrivateNatsCluster`] three of
//!   them as one JetStream cluster, for replicated streams and node
//!   failures.
//!
//! The helpers panic with a message instead of returning errors: a failed
//! set-up is a failed test.

// Test support: a set-up step that cannot be done fails the test, and
// `expect` says which one.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::{NatsConfig, Retention};

mod cluster;

/// Starts `command` (a `nats-server`), waits for its "Server is ready" line,
/// and keeps draining its log so the pipe never fills up.
async fn spawn_until_ready(command: &mut Command, name: &str) -> Child {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start nats-server");
    let stderr = child.stderr.take().expect("nats-server's stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let ready = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("Server is ready") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "{name} did not become ready");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

pub use cluster::{PrivateNatsCluster, wait_for_stream_leader_other_than};

/// How long a set-up step (a `nats-server` starting) may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// Where [`PrivateNats`] finds the server: Debian's `nats-server` package.
pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// The NATS URL for tests (`TEST_NATS_URL`), or `None` when it is unset:
/// the caller returns early (the test is skipped, with the reason printed).
///
/// # Panics
///
/// When it is unset and `EVENT_TEST_REQUIRE_SERVICES=1` (as in CI), so a
/// missing service fails the run instead of skipping silently.
pub fn nats_url(test: &str) -> Option<String> {
    match std::env::var("TEST_NATS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{test}: TEST_NATS_URL is required (EVENT_TEST_REQUIRE_SERVICES=1)"
            );
            eprintln!("skipping {test}: TEST_NATS_URL is not set");
            None
        }
    }
}

/// A configuration with a stream, subject prefix and consumer offset
/// bucket of its own (`TEST_<uuid>`, `test.<uuid>`, `TEST_<uuid>`), as
/// instance `instance`. The stream's events expire after 10 minutes, so a
/// stream a crashed test left behind does not grow.
pub fn unique_config(url: &str, instance: &str) -> NatsConfig {
    let tag = Uuid::new_v4().simple().to_string();
    NatsConfig {
        stream: format!("TEST_{tag}"),
        subject_prefix: format!("test.{tag}"),
        consumers_bucket: format!("TEST_{tag}"),
        instance_id: instance.to_owned(),
        retention: Retention {
            max_age: Duration::from_secs(600),
            ..Retention::default()
        },
        max_reconnect_delay: Duration::from_millis(250),
        ..NatsConfig::new(url)
    }
}

/// The same cluster (URL, stream, prefix) as `config`, as instance `id`.
pub fn instance(config: &NatsConfig, id: &str) -> NatsConfig {
    NatsConfig {
        instance_id: id.to_owned(),
        ..config.clone()
    }
}

/// Deletes the stream of `config`, its consumer offset bucket, its groups
/// bucket and its topics bucket.
///
/// # Panics
///
/// When NATS cannot be reached or refuses.
pub async fn cleanup(config: &NatsConfig) {
    crate::delete_stream(config)
        .await
        .expect("delete the test stream");
    crate::delete_stream(&bucket_stream(config))
        .await
        .expect("delete the test offset bucket");
    crate::delete_stream(&groups_stream(config))
        .await
        .expect("delete the test groups bucket");
    crate::delete_stream(&topics_stream(config))
        .await
        .expect("delete the test topics bucket");
}

/// The stream behind the offset bucket of `config` (`KV_<bucket>`).
fn bucket_stream(config: &NatsConfig) -> NatsConfig {
    NatsConfig {
        stream: format!("KV_{}", config.consumers_bucket),
        ..config.clone()
    }
}

/// The stream behind the groups bucket of `config`.
fn groups_stream(config: &NatsConfig) -> NatsConfig {
    NatsConfig {
        stream: format!("KV_{}", config.groups_bucket()),
        ..config.clone()
    }
}

/// The stream behind the topics bucket of `config`.
fn topics_stream(config: &NatsConfig) -> NatsConfig {
    NatsConfig {
        stream: format!("KV_{}", config.topics_bucket()),
        ..config.clone()
    }
}

/// One test's stream on one NATS ([`unique_config`]); deleted (with its
/// offset, groups and topics buckets) when dropped, also when the test
/// panics.
#[derive(Debug)]
pub struct TestStream {
    config: NatsConfig,
}

impl TestStream {
    /// A fresh stream name and subject prefix on the NATS at `url` (the
    /// stream itself is created by the first instance that connects).
    pub fn new(url: &str) -> TestStream {
        TestStream {
            config: unique_config(url, "test"),
        }
    }

    /// The configuration of instance `id` on this stream.
    pub fn config(&self, id: &str) -> NatsConfig {
        instance(&self.config, id)
    }

    /// The NATS URL.
    pub fn url(&self) -> &str {
        &self.config.url
    }

    /// The stream's name (the host's `--nats-stream`).
    pub fn stream(&self) -> &str {
        &self.config.stream
    }

    /// The subject prefix (the host's `--nats-subject-prefix`).
    pub fn subject_prefix(&self) -> &str {
        &self.config.subject_prefix
    }

    /// The consumer offset bucket (the host's `NATS_CONSUMERS_BUCKET`).
    pub fn consumers_bucket(&self) -> &str {
        &self.config.consumers_bucket
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let config = self.config.clone();
        // Drop cannot await, and may run inside a runtime: delete on a
        // thread with a runtime of its own.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime to delete the test stream");
            runtime.block_on(async {
                crate::delete_stream(&bucket_stream(&config)).await?;
                crate::delete_stream(&groups_stream(&config)).await?;
                crate::delete_stream(&topics_stream(&config)).await?;
                crate::delete_stream(&config).await
            })
        })
        .join();
        if !matches!(deleted, Ok(Ok(_))) && !std::thread::panicking() {
            panic!(
                "could not delete test stream {}: {deleted:?}",
                self.config.stream
            );
        }
    }
}

/// A `nats-server` process of the test's own on a free loopback port, its
/// JetStream store in a fresh directory (so streams survive
/// [`restart`](PrivateNats::restart)). Killed, and its directory removed,
/// when dropped.
#[derive(Debug)]
pub struct PrivateNats {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    /// Starts the server and waits until it is ready.
    ///
    /// # Panics
    ///
    /// When [`NATS_SERVER`] cannot be started or is not ready within [`WAIT`].
    pub async fn start() -> PrivateNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("event-nats-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("the JetStream store directory");
        let mut server = PrivateNats {
            port,
            dir,
            child: None,
        };
        server.run().await;
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let mut command = Command::new(NATS_SERVER);
        command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir);
        let child = spawn_until_ready(&mut command, "nats-server").await;
        self.child = Some(child);
    }

    /// Kills the server (its store stays).
    ///
    /// # Panics
    ///
    /// When the process cannot be killed.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop nats-server");
        }
    }

    /// Stops the server if it runs and starts it again on the same port and
    /// store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether [`NATS_SERVER`] can be run, for tests that start their own NATS
/// processes; `false` means the caller returns early (skipped, with the
/// reason printed).
///
/// # Panics
///
/// When it is missing and `EVENT_TEST_REQUIRE_SERVICES=1` (as in CI).
pub fn nats_server_available(test: &str) -> bool {
    if std::path::Path::new(NATS_SERVER).is_file() {
        return true;
    }
    assert!(
        std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "{test}: {NATS_SERVER} is required (EVENT_TEST_REQUIRE_SERVICES=1)"
    );
    eprintln!("skipping {test}: {NATS_SERVER} is not installed");
    false
}
