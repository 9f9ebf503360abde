//! Shared helpers: service gating, unique streams, waiting on events, and a
//! private nats-server process.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use event_core::{BusConfig, Event, JobProgress, Received, SeqStart, Subscription};
use event_nats::{ConnectionState, NatsCluster, NatsConfig, Retention};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(20);

/// The NATS URL for tests, or `None` (skip) when unset and not required.
pub fn nats_url(test: &str) -> Option<String> {
    match std::env::var("TEST_NATS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{test}: TEST_NATS_URL is required (EVENT_TEST_REQUIRE_SERVICES=1)");
            }
            eprintln!("skipping {test}: TEST_NATS_URL is not set");
            None
        }
    }
}

/// A configuration with a stream and subjects of its own, so concurrent test
/// runs never see each other's events. Test streams expire after 10 minutes
/// even if a failing test does not delete them.
pub fn unique_config(url: &str, instance: &str) -> NatsConfig {
    let tag = Uuid::new_v4().simple().to_string();
    NatsConfig {
        stream: format!("TEST_{tag}"),
        subject_prefix: format!("test.{tag}"),
        instance_id: instance.to_owned(),
        retention: Retention {
            max_age: Duration::from_secs(600),
            ..Retention::default()
        },
        max_reconnect_delay: Duration::from_millis(250),
        ..NatsConfig::new(url)
    }
}

/// The same cluster as `config`, as another instance.
pub fn instance(config: &NatsConfig, id: &str) -> NatsConfig {
    NatsConfig {
        instance_id: id.to_owned(),
        ..config.clone()
    }
}

pub fn bus_config(replay_size: usize) -> BusConfig {
    BusConfig {
        capacity: 4096,
        replay_size,
        seq_start: SeqStart::Clock,
    }
}

pub async fn connect(config: &NatsConfig, replay_size: usize) -> NatsCluster {
    NatsCluster::connect(config.clone(), bus_config(replay_size))
        .await
        .expect("connect to NATS")
}

pub fn progress(n: u8) -> JobProgress {
    JobProgress {
        job_id: Uuid::now_v7(),
        note_id: None,
        progress: n % 101,
        message: Some(format!("step {n}")),
    }
}

/// The next event on `sub`, failing the test on timeout, lag or close.
pub async fn next_event(sub: &mut Subscription, what: &str) -> Arc<Event> {
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Received::Event(ev)) => ev,
        Ok(other) => panic!("{what}: unexpected {other:?}"),
        Err(_) => panic!("{what}: no event within {WAIT:?}"),
    }
}

pub async fn collect(sub: &mut Subscription, n: usize, what: &str) -> Vec<Arc<Event>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(next_event(sub, &format!("{what} #{i}")).await);
    }
    out
}

pub fn identity(events: &[Arc<Event>]) -> Vec<(u64, Uuid)> {
    events.iter().map(|e| (e.seq(), e.id())).collect()
}

pub async fn wait_state(cluster: &NatsCluster, want: ConnectionState, what: &str) {
    let mut rx = cluster.state_changes();
    tokio::time::timeout(WAIT, rx.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("{what}: not {want:?} within {WAIT:?}"))
        .expect("state channel");
}

pub async fn cleanup(config: &NatsConfig) {
    event_nats::delete_stream(config)
        .await
        .expect("delete stream");
}

/// A nats-server process of this test's own, on a free port, with its
/// JetStream store in a fresh directory (so it survives a restart).
pub struct PrivateNats {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl PrivateNats {
    pub async fn start() -> PrivateNats {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            listener.local_addr().expect("addr").port()
        };
        let dir = std::env::temp_dir().join(format!("event-nats-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("store dir");
        let mut server = PrivateNats {
            port,
            dir,
            child: None,
        };
        server.run().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn run(&mut self) {
        let mut child = Command::new("/usr/sbin/nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        let stderr = child.stderr.take().expect("stderr");
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
        assert_eq!(ready, Ok(true), "nats-server did not become ready");
        // Keep draining its log so the pipe never fills up.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("stop nats-server");
        }
    }

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
