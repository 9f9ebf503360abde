//! Real parts for the conformance tests: an in-process `event-server` on
//! 127.0.0.1:0, a WebSocket client, an SSE client that keeps every frame's
//! raw bytes, and a scriptable webhook receiver (a real axum server).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::Parser;
use event_core::{ConnectionRegistry, EventBus, EventKind, Received};
use event_server::app::App;
use event_server::config::Config;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

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

// ---------------------------------------------------------------- WebSocket

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a WebSocket read produced.
#[derive(Debug)]
pub enum WsRead {
    /// A text frame and when it arrived.
    Text(String, Instant),
    /// A binary frame (the server must never send one).
    Binary(Vec<u8>),
    /// The server closed (with its frame, if any).
    Closed(Option<CloseFrame>),
}

/// A WebSocket client.
pub struct WsClient {
    pub stream: WsStream,
    /// Ping control frames seen.
    pub pings: usize,
}

impl WsClient {
    pub async fn connect(url: &str) -> WsClient {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("websocket connect");
        WsClient { stream, pings: 0 }
    }

    /// Connects with a prepared request (headers).
    pub async fn connect_request(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect timed out")?;
        Ok(WsClient { stream, pings: 0 })
    }

    /// The next data frame or the close, within `timeout` (`None` on timeout).
    pub async fn read_within(&mut self, timeout: Duration) -> Option<WsRead> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match next {
                None => return Some(WsRead::Closed(None)),
                Some(Err(_)) => return Some(WsRead::Closed(None)),
                Some(Ok(Message::Text(t))) => {
                    return Some(WsRead::Text(t.as_str().to_owned(), Instant::now()));
                }
                Some(Ok(Message::Binary(b))) => return Some(WsRead::Binary(b.to_vec())),
                Some(Ok(Message::Close(frame))) => return Some(WsRead::Closed(frame)),
                Some(Ok(Message::Ping(_))) => self.pings += 1,
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next text frame; panics on close, binary or timeout.
    pub async fn next_text(&mut self) -> (String, Instant) {
        match self.read_within(WAIT).await {
            Some(WsRead::Text(t, at)) => (t, at),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next text frame `want` accepts (others are skipped).
    pub async fn next_text_where(&mut self, want: impl Fn(&Value) -> bool) -> (String, Instant) {
        loop {
            let (text, at) = self.next_text().await;
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if want(&value) {
                return (text, at);
            }
        }
    }

    /// Frames up to the reply to a `{"type":"ping"}` sent now (exclusive):
    /// everything the server queued for this client before the pong.
    pub async fn drain_until_pong(&mut self) -> Vec<Value> {
        self.send(r#"{"type":"ping"}"#).await;
        let mut seen = Vec::new();
        loop {
            let (text, _) = self.next_text().await;
            let v: Value = serde_json::from_str(&text).expect("server sent non-JSON text");
            if v["type"] == "pong" {
                return seen;
            }
            seen.push(v);
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    /// Waits for the server's close and returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.read_within(WAIT).await {
                Some(WsRead::Closed(frame)) => return frame.map(|f| u16::from(f.code)),
                Some(WsRead::Text(..)) | Some(WsRead::Binary(_)) => {}
                None => panic!("the server did not close the connection in time"),
            }
        }
    }
}

/// The event types PROTOCOL §1 allows on the wire (plus the control replies).
pub fn known_type(t: &str) -> bool {
    EventKind::from_name(t).is_some_and(|k| k.type_name() == t)
}

// ---------------------------------------------------------------------- SSE

/// One SSE frame, with its exact bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    pub raw: String,
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: bool,
    pub at: Instant,
}

impl Frame {
    fn parse(raw: String) -> Frame {
        let mut f = Frame {
            raw: raw.clone(),
            id: None,
            event: None,
            data: None,
            retry: None,
            comment: false,
            at: Instant::now(),
        };
        for line in raw.trim_end_matches('\n').split('\n') {
            if line.starts_with(':') {
                f.comment = true;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "id" => f.id = Some(value),
                "event" => f.event = Some(value),
                "data" => {
                    f.data = Some(match f.data.take() {
                        Some(d) => format!("{d}\n{value}"),
                        None => value,
                    })
                }
                "retry" => f.retry = Some(value),
                _ => {}
            }
        }
        f
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("frame without data")).unwrap()
    }

    /// Whether this frame carries an event (not a comment or `retry`).
    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }
}

/// An SSE client reading frames off a real HTTP response.
pub struct SseClient {
    pub response: reqwest::Response,
    buf: Vec<u8>,
    /// Every byte received so far (for the LF-only check).
    pub all: Vec<u8>,
    ended: bool,
}

impl SseClient {
    /// Connects; panics unless the answer is 200.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> SseClient {
        let res = SseClient::request(url, headers).await;
        assert_eq!(res.status(), 200, "GET {url}");
        SseClient::from_response(res)
    }

    pub async fn request(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = stream_client().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE request timed out")
            .unwrap()
    }

    pub fn from_response(response: reqwest::Response) -> SseClient {
        SseClient {
            response,
            buf: Vec::new(),
            all: Vec::new(),
            ended: false,
        }
    }

    /// The next frame within `timeout`; `None` on timeout or end of stream.
    pub async fn frame_within(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Some(Frame::parse(String::from_utf8(raw).expect("SSE is UTF-8")));
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => {
                    self.buf.extend_from_slice(&chunk);
                    self.all.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The next frame; panics on timeout or end.
    pub async fn next_frame(&mut self) -> Frame {
        self.frame_within(WAIT)
            .await
            .expect("no SSE frame in time (or the stream ended)")
    }

    /// The next frame `want` accepts, skipping others.
    pub async fn next_where(&mut self, want: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            let f = self.next_frame().await;
            if want(&f) {
                return f;
            }
        }
    }

    /// The next event frame that is not a `QueueStatus` (the bridge sends
    /// those on its own schedule).
    pub async fn next_non_queue(&mut self) -> Frame {
        self.next_where(|f| {
            f.is_event()
                && f.event.as_deref() != Some("QueueStatus")
                && f.event.as_deref() != Some("queue.status")
        })
        .await
    }

    /// Whether the stream ends within `timeout`.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            if self.frame_within(left).await.is_none() {
                return self.ended;
            }
        }
    }
}

// ----------------------------------------------------------------- Webhooks

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<u16>,
    requests: Vec<Recorded>,
}

/// A webhook receiver on 127.0.0.1:0: answers scripted statuses (then 200)
/// and records every request.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    count: watch::Receiver<usize>,
}

type RecvState = (Arc<Mutex<ReceiverState>>, Arc<watch::Sender<usize>>);

async fn receive(
    State((state, tx)): State<RecvState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = {
        let mut s = state.lock().unwrap();
        let status = s.script.pop_front().unwrap_or(200);
        s.requests.push(Recorded {
            headers,
            body,
            at: Instant::now(),
            status,
        });
        (s.requests.len(), status)
    };
    tx.send_replace(n.0);
    StatusCode::from_u16(n.1).unwrap()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let (tx, count) = watch::channel(0);
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state((state.clone(), Arc::new(tx)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state, count }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next requests are answered with `statuses`, in order.
    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    /// Waits until `n` requests arrived and returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let mut count = self.count.clone();
        tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("the receiver did not get {n} requests in time"))
            .unwrap();
        self.requests()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// Registers a webhook and returns its JSON.
pub async fn register_webhook(server: &Server, body: &Value) -> Value {
    let res = client()
        .post(server.url("/api/v1/webhooks"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "webhook registration refused: {answer}");
    answer
}

/// Asserts that `res` is a documented JSON error with `status`.
pub async fn assert_json_error(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status);
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"].as_str().is_some_and(|c| !c.is_empty()),
        "{err}"
    );
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{err}"
    );
    err
}

// ------------------------------------------------------------------ Metrics

/// One Prometheus sample.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        // Label values here never contain `,` or `"` (bounded sets).
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap();
            map.insert(k.to_owned(), v.trim_matches('"').to_owned());
        }
        out.push(Sample {
            name: name.to_owned(),
            labels: map,
            value: value.parse().unwrap(),
        });
    }
    out
}

/// The sum of the samples named `name` whose labels include `labels`;
/// `None` when there is no such series.
pub fn metric(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().map(|s| s.value).sum())
    }
}

/// `GET /metrics`, raw and parsed.
pub async fn scrape(server: &Server) -> (String, Vec<Sample>) {
    let res = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let text = res.text().await.unwrap();
    let samples = parse_metrics(&text);
    (text, samples)
}
