//! [`PrivateNatsCluster`]: three `nats-server` processes forming one
//! JetStream cluster, for replicated streams and for killing a node, with
//! what a drill needs to aim at a node and to explain a failure (the stream
//! leader, the node a client is on, each node's view of the stream).

// Test support: a set-up step that cannot be done fails the test, and
// `expect` says which one.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};
use uuid::Uuid;

use super::{NATS_SERVER, WAIT};

/// A free loopback port (bound and released: another process may take it
/// before it is used, which a test then reports as a failed start).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until a node other than `old` leads `stream`, asking the NATS
/// servers at `url` (comma-separated) every 100 ms; `false` after `limit`.
/// Each question has 500 ms for its answer (a stream without a leader may
/// leave it unanswered), so the leader is seen at most about 0.6 s late.
pub async fn wait_for_stream_leader_other_than(
    url: &str,
    stream: &str,
    old: &str,
    limit: Duration,
) -> bool {
    let question = async {
        let client = async_nats::connect(url.split(',').collect::<Vec<_>>())
            .await
            .ok()?;
        let js = async_nats::jetstream::new(client);
        loop {
            let info =
                tokio::time::timeout(Duration::from_millis(500), js.get_stream(stream)).await;
            if let Ok(Ok(stream)) = info
                && let Some(leader) = stream.cached_info().cluster.as_ref()
                && leader.leader.as_deref().is_some_and(|l| l != old)
            {
                return Some(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    matches!(tokio::time::timeout(limit, question).await, Ok(Some(())))
}

/// The answer (head and body) of `GET path` on a node's monitoring port.
async fn monitor_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    let read = tokio::time::timeout(WAIT, conn.read_to_string(&mut body)).await;
    matches!(read, Ok(Ok(_))).then_some(body)
}

/// One node of a [`PrivateNatsCluster`].
#[derive(Debug)]
struct Node {
    name: String,
    port: u16,
    /// The monitoring port (`/connz`).
    monitor: u16,
    config: PathBuf,
    child: Option<Child>,
}

/// Three `nats-server -js` processes of the test's own forming one
/// JetStream cluster on loopback (client ports, route ports and stores of
/// their own under a fresh directory), for replicated streams
/// (`replicas: 3`) and for killing and restarting one node. Nodes are named
/// `n0`, `n1`, `n2` (the names JetStream reports as stream leaders). All
/// killed, and the directory removed, when dropped.
#[derive(Debug)]
pub struct PrivateNatsCluster {
    dir: PathBuf,
    nodes: Vec<Node>,
}

impl PrivateNatsCluster {
    /// Starts three nodes and waits until JetStream can place a stream with
    /// three replicas.
    ///
    /// # Panics
    ///
    /// When [`NATS_SERVER`] cannot be started or the cluster is not ready
    /// within [`WAIT`] (twice that for JetStream's meta leader), twice: a
    /// cluster that did not form is stopped and formed once more on fresh
    /// ports (seen once in CI: "no suitable peers for placement" after
    /// 40 s, cause not known — a slow formation on a loaded machine, or a
    /// route port taken between choosing it and the node's bind).
    pub async fn start() -> PrivateNatsCluster {
        let first = match Self::form().await {
            Ok(cluster) => return cluster,
            Err(e) => e,
        };
        eprintln!("{first}; forming a new cluster on fresh ports");
        match Self::form().await {
            Ok(cluster) => cluster,
            Err(second) => panic!("{second} (and before: {first})"),
        }
    }

    /// Starts three nodes on fresh ports; the error says why they did not
    /// form a cluster (the nodes are stopped then).
    async fn form() -> Result<PrivateNatsCluster, String> {
        let dir =
            std::env::temp_dir().join(format!("event-nats-cluster-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("the cluster's directory");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let monitor = free_port();
            let name = format!("n{i}");
            let store = dir.join(&name);
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            let text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor}\n\
                 jetstream {{\n  store_dir: {store:?}\n}}\n\
                 cluster {{\n  name: matric_test\n  listen: 127.0.0.1:{route}\n  routes: [{}]\n}}\n",
                routes.join(", ")
            );
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, text).expect("write a node's configuration");
            nodes.push(Node {
                name,
                port: *port,
                monitor,
                config,
                child: None,
            });
        }
        let mut cluster = PrivateNatsCluster { dir, nodes };
        for i in 0..3 {
            cluster.run(i).await;
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    async fn run(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let name = format!("nats-server {}", node.name);
        let mut command = Command::new(NATS_SERVER);
        command.arg("-c").arg(&node.config);
        let child = super::spawn_until_ready(&mut command, &name).await;
        node.child = Some(child);
    }

    /// Waits until a stream with three replicas can be created (the meta
    /// leader is elected and every node has joined), then deletes the probe.
    async fn wait_ready(&self) -> Result<(), String> {
        let url = self.url();
        let probe = format!("PROBE_{}", Uuid::new_v4().simple());
        let mut last_error = String::new();
        let ready = tokio::time::timeout(WAIT * 2, async {
            loop {
                match async_nats::connect(url.split(',').collect::<Vec<_>>()).await {
                    Err(e) => last_error = e.to_string(),
                    Ok(client) => {
                        let js = async_nats::jetstream::new(client);
                        let created = js
                            .create_stream(async_nats::jetstream::stream::Config {
                                name: probe.clone(),
                                subjects: vec![format!("probe.{probe}")],
                                num_replicas: 3,
                                storage: async_nats::jetstream::stream::StorageType::File,
                                ..Default::default()
                            })
                            .await;
                        match created {
                            Ok(_) => {
                                let _ = js.delete_stream(&probe).await;
                                return;
                            }
                            Err(e) => last_error = e.to_string(),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        ready.map_err(|_| {
            format!(
                "the NATS cluster did not form within {:?}: {last_error}",
                WAIT * 2
            )
        })
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s name (`n<i>`).
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node leading `stream`'s replicas, if it has one now.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        let client = async_nats::connect(self.url().split(',').collect::<Vec<_>>())
            .await
            .ok()?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(stream).await.ok()?;
        let leader = stream.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
        self.nodes.iter().position(|n| n.name == leader)
    }

    /// How many messages `stream` holds on subjects matching `subject` (a
    /// filter such as `prefix.job.progress.>`), or `None` when it cannot be
    /// read right now (no leader, no answer within a second).
    pub async fn subject_messages(&self, stream: &str, subject: &str) -> Option<u64> {
        use futures_util::TryStreamExt;
        let client = async_nats::connect(self.url().split(',').collect::<Vec<_>>())
            .await
            .ok()?;
        // A short answer time: right after a failover a request can go
        // unanswered, and the caller asks again.
        let js = async_nats::jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(1))
            .build(client);
        let stream = js.get_stream(stream).await.ok()?;
        let subjects = stream.info_with_subjects(subject).await.ok()?;
        let counts: Vec<(String, usize)> = subjects.try_collect().await.ok()?;
        Some(counts.iter().map(|(_, n)| *n as u64).sum())
    }

    /// Moves the leadership of `stream`'s replicas off node `i` (JetStream's
    /// leader step-down, repeated until another node leads) and returns the
    /// new leader; `None` when that did not happen within [`WAIT`].
    pub async fn move_stream_leader_off(&self, stream: &str, i: usize) -> Option<usize> {
        let client = async_nats::connect(self.url().split(',').collect::<Vec<_>>())
            .await
            .ok()?;
        let js = async_nats::jetstream::new(client);
        let subject = format!("STREAM.LEADER.STEPDOWN.{stream}");
        tokio::time::timeout(WAIT, async {
            loop {
                match self.stream_leader(stream).await {
                    Some(leader) if leader != i => return leader,
                    Some(_) => {
                        // The answer only says the request was taken; the
                        // election follows. (An empty object: `null` is a
                        // bad request.)
                        let _: Result<serde_json::Value, _> =
                            js.request(subject.clone(), &serde_json::json!({})).await;
                    }
                    None => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .ok()
    }

    /// The index of the node the NATS client named `client` (an instance's
    /// `NATS_INSTANCE_ID`) is connected to, from the nodes' `/connz`.
    pub async fn node_of_client(&self, client: &str) -> Option<usize> {
        let want = format!("\"name\": \"{client}\"");
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(body) = monitor_get(node.monitor, "/connz?limit=1024").await
                && body.replace("\":\"", "\": \"").contains(&want)
            {
                return Some(i);
            }
        }
        None
    }

    /// What each running node holds of `stream`, from its own `/jsz` (not
    /// the leader's view): its replica's last sequence, whom it takes for the
    /// leader, and the consumers placed on it with how far they delivered,
    /// what they have pending and how many pulls wait. For failure messages:
    /// it shows a consumer stuck on a replica that is behind.
    pub async fn jetstream_report(&self, stream: &str) -> String {
        let mut out = Vec::new();
        for node in &self.nodes {
            if node.child.is_none() {
                out.push(format!("{}: down", node.name));
                continue;
            }
            let path = "/jsz?accounts=true&streams=true&consumers=true&config=true";
            let Some(body) = monitor_get(node.monitor, path).await else {
                out.push(format!("{}: no /jsz answer", node.name));
                continue;
            };
            let json: serde_json::Value = match body.split_once("\r\n\r\n") {
                Some((_, json)) => serde_json::from_str(json).unwrap_or_default(),
                None => serde_json::Value::Null,
            };
            let streams = json["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
                .filter(|s| s["name"] == stream);
            for s in streams {
                let consumers: Vec<String> = s["consumer_detail"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        format!(
                            "{} (leader {}, start {}, delivered {}, pending {}, waiting {})",
                            c["name"].as_str().unwrap_or("?"),
                            c["cluster"]["leader"].as_str().unwrap_or("-"),
                            c["config"]["opt_start_seq"],
                            c["delivered"]["stream_seq"],
                            c["num_pending"],
                            c["num_waiting"],
                        )
                    })
                    .collect();
                out.push(format!(
                    "{}: stream last_seq {} leader {} consumers [{}]",
                    node.name,
                    s["state"]["last_seq"],
                    s["cluster"]["leader"].as_str().unwrap_or("-"),
                    consumers.join("; ")
                ));
            }
        }
        out.join("\n")
    }

    /// `stream`'s state as JetStream reports it (messages, sequences,
    /// leader, replicas), or why it cannot be read: for failure messages.
    pub async fn stream_report(&self, stream: &str) -> String {
        let client = match async_nats::connect(self.url().split(',').collect::<Vec<_>>()).await {
            Ok(c) => c,
            Err(e) => return format!("cannot connect: {e}"),
        };
        let js = async_nats::jetstream::new(client);
        let mut stream = match js.get_stream(stream).await {
            Ok(s) => s,
            Err(e) => return format!("cannot get the stream: {e}"),
        };
        match stream.info().await {
            Ok(info) => format!("{:?} {:?}", info.state, info.cluster),
            Err(e) => format!("cannot read the stream's info: {e}"),
        }
    }

    /// Kills node `i` (SIGKILL; its store stays).
    ///
    /// # Panics
    ///
    /// When the process cannot be killed.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await.expect("kill a nats-server node");
        }
    }

    /// Starts node `i` again (same port, routes and store) after
    /// [`kill`](Self::kill).
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        self.run(i).await;
    }
}

impl Drop for PrivateNatsCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut() {
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
