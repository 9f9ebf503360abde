//! Shared test helpers: a real server on 127.0.0.1:0 and a tokio-tungstenite
//! client with timeouts on every wait.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod raw;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use event_core::{
    AllowAnonymous, Authenticator, ConnectionRegistry, EventBus, QueueSnapshot, SinkRunner,
};
use event_ws::{WsConfig, WsEndpoint};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// A client connection.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `QueueStatus` of an empty queue, sent on connect when nothing else is
/// known.
pub const EMPTY_QUEUE: &str = r#"{"type":"QueueStatus","total_jobs":0,"running":0,"pending":0}"#;

/// How to start a [`TestServer`].
pub struct Setup {
    pub auth: Arc<dyn Authenticator>,
    pub config: WsConfig,
    pub snapshot: Option<Arc<dyn QueueSnapshot>>,
    pub shutdown: Option<CancellationToken>,
    /// `SO_SNDBUF` of the listening socket, inherited by accepted
    /// connections (fixing it also stops the kernel from growing it to
    /// megabytes, which lets a test fill a connection's buffers quickly).
    pub send_buffer: Option<u32>,
    /// The bus's broadcast capacity (default: the bus default).
    pub bus_capacity: Option<usize>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            auth: Arc::new(AllowAnonymous),
            config: WsConfig::default(),
            snapshot: None,
            shutdown: None,
            send_buffer: None,
            bus_capacity: None,
        }
    }
}

/// A running endpoint: bus → runner → endpoint sink, axum on an ephemeral port.
pub struct TestServer {
    pub addr: SocketAddr,
    pub bus: EventBus,
    pub registry: ConnectionRegistry,
    pub endpoint: WsEndpoint,
    pub runner: SinkRunner,
    server: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestServer {
    /// Anonymous access, the given config.
    pub async fn start(config: WsConfig) -> TestServer {
        TestServer::start_with(Setup {
            config,
            ..Setup::default()
        })
        .await
    }

    /// Everything configurable.
    pub async fn start_with(setup: Setup) -> TestServer {
        let bus = match setup.bus_capacity {
            Some(capacity) => EventBus::new(event_core::BusConfig {
                capacity,
                ..event_core::BusConfig::default()
            }),
            None => EventBus::default(),
        };
        let registry = ConnectionRegistry::new();
        let mut endpoint = WsEndpoint::new(bus.clone(), registry.clone(), setup.auth, setup.config);
        if let Some(p) = setup.snapshot {
            endpoint = endpoint.with_queue_snapshot(p);
        }
        if let Some(t) = setup.shutdown {
            endpoint = endpoint.with_shutdown(t);
        }
        let mut runner = SinkRunner::new(&bus);
        runner.register(endpoint.sink());
        let app: axum::Router = axum::Router::new().merge(endpoint.router());
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = setup.send_buffer {
            socket.set_send_buffer_size(size).unwrap();
        }
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        TestServer {
            addr,
            bus,
            registry,
            endpoint,
            runner,
            server,
        }
    }

    /// `ws://127.0.0.1:port/api/v1/ws`
    pub fn url(&self) -> String {
        format!("ws://{}/api/v1/ws", self.addr)
    }

    /// Connects and returns the client without reading anything.
    pub async fn connect_raw(&self) -> Client {
        let (client, response) =
            tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(self.url()))
                .await
                .expect("connect timed out")
                .expect("connect failed");
        assert_eq!(response.status(), 101);
        client
    }

    /// Connects and consumes the initial `QueueStatus`, returning it too.
    pub async fn connect_with_status(&self) -> (Client, String) {
        let mut client = self.connect_raw().await;
        let first = next_text(&mut client).await;
        assert!(
            first.starts_with(r#"{"type":"QueueStatus""#),
            "first message must be a QueueStatus: {first}"
        );
        (client, first)
    }

    /// Connects and consumes the initial `QueueStatus`. The connection is
    /// subscribed to the hub by then, so it sees everything published next.
    pub async fn connect(&self) -> Client {
        self.connect_with_status().await.0
    }

    /// Waits until the registry holds exactly `n` connections.
    pub async fn wait_registered(&self, n: usize) {
        let mut total = self.registry.watch_total();
        tokio::time::timeout(WAIT, total.wait_for(|t| *t == n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "registry never reached {n} connections (has {})",
                    self.registry.total()
                )
            })
            .unwrap();
    }

    /// Waits until the endpoint counts exactly `n` open connections.
    pub async fn wait_endpoint_connections(&self, n: usize) {
        let mut count = self.endpoint.watch_connections();
        tokio::time::timeout(WAIT, count.wait_for(|c| *c == n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "endpoint never reached {n} connections (has {})",
                    self.endpoint.connections()
                )
            })
            .unwrap();
    }
}

/// Builds a request to `url` with extra headers, for handshake tests.
pub fn request_with(
    url: &str,
    headers: &[(&'static str, &str)],
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    request
}

/// The next text frame (pings and pongs are skipped); panics on close or
/// timeout.
pub async fn next_text(client: &mut Client) -> String {
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("timed out waiting for a text frame")
            .expect("connection ended")
            .expect("read failed");
        match message {
            Message::Text(text) => return text.as_str().to_owned(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the server's close frame and returns its code (text and
/// control frames before it are skipped), then completes the close
/// handshake. Panics if the connection ends without one.
pub async fn expect_close<S>(client: &mut WebSocketStream<S>) -> u16
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(WAIT, client.next())
            .await
            .expect("timed out waiting for a close frame")
            .expect("connection ended without a close frame")
            .expect("read failed before the close frame");
        if let Message::Close(frame) = message {
            let frame = frame.expect("close frame without a code");
            // Polling on sends the close reply and sees the end.
            let _ =
                tokio::time::timeout(WAIT, async { while client.next().await.is_some() {} }).await;
            return u16::from(frame.code);
        }
    }
}

/// Sends a text frame.
pub async fn send_text(client: &mut Client, text: &str) {
    client.send(Message::text(text)).await.unwrap();
}

/// The close code as a number (for readable assertions).
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}
