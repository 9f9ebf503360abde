//! The `event-server` binary as an operator runs it: on 127.0.0.1:0 with a
//! temporary SQLite database (unless the caller says otherwise), found
//! through its "listening" log line, stopped with SIGTERM. Shared by the
//! tests that need the real process (features, OTLP export).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use event_server::testing::client;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Start-up of a debug build on a busy machine may be slow.
pub const START: Duration = Duration::from_secs(60);
/// Any other single wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// A WebSocket and an SSE client of [`Host::sink_clients`].
pub type SinkClients = (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    reqwest::Response,
);

/// The binary, killed on drop if it has not exited.
pub struct Host {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its stdout (JSON log lines) after the "listening" line.
    lines: mpsc::UnboundedReceiver<String>,
}

impl Host {
    pub async fn start(env: &[(&str, String)]) -> Host {
        let mut command = Command::new(env!("CARGO_BIN_EXE_event-server"));
        // Settings from the environment running the tests must not leak in.
        for var in [
            "NATS_URL",
            "AUTH_ADMIN_TOKEN",
            "AUTH_CLIENT_TOKENS",
            "ALLOWED_ORIGINS",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "MEMORY_TRIM_CLOSED",
            "GLIBC_TUNABLES",
            event_server::memory::REEXEC_MARKER,
        ] {
            command.env_remove(var);
        }
        command
            .env("EVENT_SERVER_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("start the event-server binary");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, mut lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let addr = tokio::time::timeout(START, async {
            while let Some(line) = lines.recv().await {
                if let Ok(json) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = json["fields"]["addr"].as_str()
                {
                    return addr.parse().expect("the logged address");
                }
            }
            panic!("the server exited before it was listening");
        })
        .await
        .expect("the server never logged that it was listening");
        Host { child, addr, lines }
    }

    /// The process id (also the re-executed binary's: `execve` keeps it).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn status(&self, path: &str) -> u16 {
        client()
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .status()
            .as_u16()
    }

    pub async fn json(&self, path: &str) -> Value {
        let res = client().get(self.url(path)).send().await.unwrap();
        assert_eq!(res.status(), 200, "GET {path}");
        res.json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// A WebSocket and an SSE client on every event, connected until the
    /// value is dropped: each sink has a client to deliver to (and so can
    /// fall behind).
    pub async fn sink_clients(&self) -> SinkClients {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/api/v1/ws", self.addr))
            .await
            .unwrap();
        let sse = client()
            .get(self.url("/api/v1/events"))
            .send()
            .await
            .unwrap();
        (ws, sse)
    }

    /// `/metrics`, as scraped now.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// A counter or gauge of `/metrics`: the sum over its series whose line
    /// contains `labels` (`""` for all).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| l.starts_with(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The log lines written since the last call (or since it was
    /// listening), without waiting.
    pub fn drain_log(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            out.push(line);
        }
        out
    }

    /// SIGKILL, as a crash: no shutdown runs. Waits for the exit.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the server");
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not exit within {WAIT:?} of SIGKILL"))
            .unwrap();
    }

    /// SIGTERM; the exit status and the rest of the log (bounded waits).
    pub async fn terminate(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let pid = self.child.id().expect("the server is running");
        let killed = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(killed.success(), "kill -TERM failed");
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("the server did not exit within {WAIT:?} of SIGTERM"))
            .unwrap();
        // Its stdout has ended: the forwarding task closes the channel.
        let rest = tokio::time::timeout(WAIT, async {
            let mut rest = Vec::new();
            while let Some(line) = self.lines.recv().await {
                rest.push(line);
            }
            rest
        })
        .await
        .expect("the log did not end with the process");
        (status, rest)
    }
}
