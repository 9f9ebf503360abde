//! Test support: a real server on 127.0.0.1:0 and clients (raw bytes,
//! reqwest + eventsource-stream).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use event_core::{
    AllowAnonymous, Authenticator, BusConfig, ConnectionRegistry, EventBus, ReplaySource, SeqStart,
    SinkRunner,
};
use event_sse::{SseConfig, SseEndpoint};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct Server {
    pub bus: EventBus,
    pub registry: ConnectionRegistry,
    pub endpoint: SseEndpoint,
    pub addr: SocketAddr,
    pub runner: Option<SinkRunner>,
    pub task: JoinHandle<std::io::Result<()>>,
    pub stop: CancellationToken,
}

pub struct Options {
    pub bus: BusConfig,
    pub config: SseConfig,
    pub auth: Arc<dyn Authenticator>,
    /// The socket write timeout the server runs with.
    pub write_timeout: Duration,
    /// Builds the endpoint's replay source from the server's bus.
    pub replay_source: Option<Box<dyn FnOnce(&EventBus) -> Arc<dyn ReplaySource> + Send>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bus: BusConfig {
                capacity: 16_384,
                replay_size: 4096,
                seq_start: SeqStart::At(1),
            },
            config: SseConfig::default(),
            auth: Arc::new(AllowAnonymous),
            write_timeout: Duration::from_secs(30),
            replay_source: None,
        }
    }
}

impl Server {
    pub async fn start() -> Server {
        Server::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Server {
        install_provider();
        let bus = EventBus::new(options.bus);
        let registry = ConnectionRegistry::new();
        let mut endpoint =
            SseEndpoint::new(bus.clone(), registry.clone(), options.auth, options.config);
        if let Some(source) = options.replay_source {
            endpoint = endpoint.with_replay_source(source(&bus));
        }
        let mut runner = SinkRunner::new(&bus);
        runner.register(endpoint.sink());
        let app: axum::Router = endpoint.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = event_sse::write_timeout(listener, options.write_timeout);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
        });
        Server {
            bus,
            registry,
            endpoint,
            addr,
            runner: Some(runner),
            task,
            stop,
        }
    }

    /// The host's shutdown sequence: axum stops accepting and waits for open
    /// responses; `registry.shutdown()` ends every stream.
    pub fn shutdown(&self) {
        self.stop.cancel();
        self.registry.shutdown();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Waits until `n` SSE connections are registered.
    pub async fn wait_connections(&self, n: usize) {
        let mut total = self.registry.watch_total();
        tokio::time::timeout(WAIT, total.wait_for(|t| *t == n))
            .await
            .unwrap_or_else(|_| panic!("expected {n} connections, have {}", self.registry.total()))
            .unwrap();
    }
}

/// One parsed SSE frame.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub raw: String,
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
    pub retry: Option<String>,
    pub comment: bool,
}

impl Frame {
    pub fn parse(raw: &str) -> Frame {
        let mut f = Frame {
            raw: raw.to_owned(),
            ..Frame::default()
        };
        let mut data = Vec::new();
        for line in raw.trim_end_matches('\n').split('\n') {
            if line.starts_with(':') {
                f.comment = true;
            } else if let Some(v) = line.strip_prefix("id: ") {
                f.id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("event: ") {
                f.event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v);
            } else if let Some(v) = line.strip_prefix("retry: ") {
                f.retry = Some(v.to_owned());
            }
        }
        f.data = data.join("\n");
        f
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("bad json {:?}: {e}", self.data))
    }

    pub fn seq(&self) -> u64 {
        self.id
            .as_deref()
            .expect("frame without id")
            .parse()
            .expect("numeric id")
    }
}

/// A raw HTTP/1.1 client that exposes the exact bytes of the body.
pub struct RawSse {
    stream: TcpStream,
    raw: Vec<u8>,
    body: Vec<u8>,
    pub status: u16,
    pub head: String,
    chunked: bool,
    ended: bool,
    /// Body chunks received (transfer-encoding chunks).
    pub chunks: usize,
}

impl RawSse {
    pub async fn connect(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> RawSse {
        let stream = TcpStream::connect(addr).await.unwrap();
        RawSse::over(stream, addr, path, headers).await
    }

    /// Sends the request on `stream` and reads the response head.
    pub async fn over(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> RawSse {
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        RawSse::resume(stream).await
    }

    /// Reads the response to a request already sent on `stream`.
    pub async fn resume(stream: TcpStream) -> RawSse {
        let mut c = RawSse {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            status: 0,
            head: String::new(),
            chunked: false,
            ended: false,
            chunks: 0,
        };
        tokio::time::timeout(WAIT, c.read_head())
            .await
            .expect("response head timed out");
        c
    }

    /// Sends the request without waiting for anything.
    pub async fn send_only(addr: SocketAddr, stream: &mut TcpStream, path: &str) {
        let req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
    }

    async fn read_more(&mut self) -> bool {
        self.raw.reserve(65536);
        matches!(self.stream.read_buf(&mut self.raw).await, Ok(n) if n > 0)
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(pos) = find(&self.raw, b"\r\n\r\n") {
                self.head = String::from_utf8_lossy(&self.raw[..pos]).into_owned();
                self.raw.drain(..pos + 4);
                break;
            }
            assert!(
                self.read_more().await,
                "connection closed before the response head"
            );
        }
        self.status = self.head[9..12].parse().unwrap();
        self.chunked = self
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// Reads one transfer chunk into `body`; false at the end of the body.
    async fn read_chunk(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if !self.chunked {
            let len: usize = self
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while self.raw.len() < len {
                if !self.read_more().await {
                    break;
                }
            }
            self.body.append(&mut self.raw);
            self.ended = true;
            return true;
        }
        let line_end = loop {
            if let Some(p) = find(&self.raw, b"\r\n") {
                break p;
            }
            if !self.read_more().await {
                self.ended = true;
                return false;
            }
        };
        let size = usize::from_str_radix(
            std::str::from_utf8(&self.raw[..line_end]).unwrap().trim(),
            16,
        )
        .unwrap();
        while self.raw.len() < line_end + 2 + size + 2 {
            if !self.read_more().await {
                self.ended = true;
                return false;
            }
        }
        let data: Vec<u8> = self.raw[line_end + 2..line_end + 2 + size].to_vec();
        self.raw.drain(..line_end + 2 + size + 2);
        if size == 0 {
            self.ended = true;
            return false;
        }
        self.chunks += 1;
        self.body.extend_from_slice(&data);
        true
    }

    /// The next raw frame (up to and including the blank line), `None` at
    /// the end of the stream.
    pub async fn next_raw(&mut self) -> Option<String> {
        loop {
            if let Some(p) = find(&self.body, b"\n\n") {
                let frame: Vec<u8> = self.body.drain(..p + 2).collect();
                return Some(String::from_utf8(frame).unwrap());
            }
            if !self.read_chunk().await {
                return None;
            }
        }
    }

    /// The next frame, failing the test after [`WAIT`].
    pub async fn frame(&mut self) -> Frame {
        let raw = tokio::time::timeout(WAIT, self.next_raw())
            .await
            .expect("timed out waiting for a frame")
            .expect("stream ended");
        Frame::parse(&raw)
    }

    /// The next frame that is not a keep-alive comment.
    pub async fn event_frame(&mut self) -> Frame {
        loop {
            let f = self.frame().await;
            if !f.comment {
                return f;
            }
        }
    }

    /// Skips `retry:` and the `QueueStatus` confirmation.
    pub async fn skip_preamble(&mut self) {
        let retry = self.frame().await;
        assert_eq!(retry.raw, "retry: 3000\n\n");
        let status = self.frame().await;
        assert!(
            matches!(
                status.event.as_deref(),
                Some("QueueStatus" | "queue.status")
            ),
            "{status:?}"
        );
    }

    /// The whole (non-streaming) body as text.
    pub async fn body_text(&mut self) -> String {
        while tokio::time::timeout(WAIT, self.read_chunk())
            .await
            .expect("body timed out")
        {}
        String::from_utf8(std::mem::take(&mut self.body)).unwrap()
    }

    /// Waits for the end of the stream (the server ended the response or
    /// closed the connection).
    pub async fn wait_end(&mut self) {
        while self.read_chunk().await {}
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An SSE client on reqwest + eventsource-stream.
pub struct EsClient {
    stream: std::pin::Pin<
        Box<
            dyn futures_util::Stream<
                    Item = Result<
                        eventsource_stream::Event,
                        eventsource_stream::EventStreamError<reqwest::Error>,
                    >,
                > + Send,
        >,
    >,
}

impl EsClient {
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> EsClient {
        use eventsource_stream::Eventsource;
        install_provider();
        let client = reqwest::Client::new();
        let mut req = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        EsClient {
            stream: Box::pin(resp.bytes_stream().eventsource()),
        }
    }

    /// The next event (eventsource-stream skips comments and `retry`-only frames).
    pub async fn next(&mut self) -> eventsource_stream::Event {
        tokio::time::timeout(WAIT, self.stream.next())
            .await
            .expect("timed out waiting for an event")
            .expect("stream ended")
            .expect("stream error")
    }

    /// Whether the stream ends within `WAIT`.
    pub async fn ends(&mut self) -> bool {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => {}
            }
        }
    }
}

/// GET returning (status, JSON body).
pub async fn get_json(url: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    install_provider();
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(WAIT, req.send())
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, json)
}
