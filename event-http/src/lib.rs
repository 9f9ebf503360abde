//! # event-http
//!
//! The serving edge: listener, connection caps, direct event-stream path,
//! timeouts, graceful shutdown. What `event-server` measures in
//! BENCHMARKS.md is this crate serving its router, so an application that
//! mounts the event routers into its own `axum::Router` and serves it with
//! [`serve`] gets the same edge.
//!
//! ## Model
//!
//! ```text
//!  TcpListener ─► CappedListener ─► WriteTimeoutIo ─► first request head
//!   accept,        TCP_NODELAY,      a write stalled    │ plain GET of a stream path?
//!   EMFILE         caps: total,      this long fails    ├─ yes: direct path ─► router ─► socket
//!   back-off       per IP (503)                         └─ no:  hyper http1 ─► router
//!                                                               (keep-alive, upgrades)
//! ```
//!
//! * **Caps.** Every accepted connection takes a place under two caps
//!   before anything of it is read: open connections in all (kept below the
//!   process's file limit, which is raised to the hard limit) and those
//!   from one IP address. Over a cap, the connection gets `503` with
//!   `Retry-After` and a JSON body `{"error":"too_many_connections",…}` and
//!   is closed. When `accept` fails for want of descriptors or memory, the
//!   loop backs off (10 ms doubling to 1 s) and logs once.
//! * **`TCP_NODELAY`.** Events are small writes that must leave at once:
//!   without it, Nagle's algorithm and the client's delayed ACK hold one
//!   back for up to ~40 ms.
//! * **Write-stall timeout.** hyper polls a streaming body only while it can
//!   buffer more output, so a client that stops reading is visible only at
//!   the socket: a write pending for [`Serve::write_stall_timeout`] aborts
//!   the connection (see [`event_core::WriteTimeoutIo`]), which also keeps
//!   it from holding up shutdown.
//! * **Head timeout.** A request head must arrive within
//!   [`Serve::head_timeout`], counted once from the connection's start for
//!   its first request and from the end of the previous response for a later
//!   one.
//! * **The direct event-stream path.** hyper's HTTP/1.1 connection keeps an
//!   8 KiB read and an 8 KiB write buffer for its whole life; for an SSE
//!   response, which lives as long as its client, that is most of what an
//!   idle subscriber costs (12.7 KiB per connection against 4.5 KiB answered
//!   directly). A connection's first request head is therefore read here and
//!   parsed with `httparse` (hyper's parser); a plain `GET` of one of
//!   [`Serve::stream_paths`] is answered by calling the router and writing
//!   the body frame by frame, each frame in one vectored write without a
//!   copy. Anything else — another method or path, a body, an upgrade, a
//!   head that does not parse — goes to hyper with the bytes already read,
//!   as if nothing had touched the connection.
//! * **Intake runtime.** With [`Serve::intake`], a connection whose first
//!   request is not a `GET` (publishing, the REST API) is served on a
//!   runtime of its own. Under a saturated fan-out the server's runtime
//!   holds a writer task per client in its queue, and a publish request
//!   waiting behind all of them for each read and write would be starved
//!   (event-server took a fifth of the events offered at 10,000 events/s ×
//!   2,000 subscribers, BENCHMARKS.md); on its own threads the intake gets
//!   the operating system's share of the CPU instead. The socket moves
//!   with it: it is registered with the intake's own I/O driver, or every
//!   read would still wait until a busy main worker polled the main
//!   runtime's driver (the publish p50 at saturation was 12 ms that way,
//!   2 ms moved).
//! * **Graceful shutdown.** When the [`Serve::with_graceful_shutdown`] signal
//!   completes, the listener closes, the [`Serve::registry`] (if given) is
//!   shut down — WebSockets close with 1001, SSE streams end — idle
//!   keep-alive connections close, requests in flight finish, and the future
//!   completes when the last connection is gone.
//!
//! ## Why not `axum::serve`
//!
//! `axum::serve` hands each socket to hyper-util's `auto` builder, which
//! first reads up to 24 bytes to tell HTTP/1.1 from an HTTP/2 preface and
//! replays them to hyper. hyper's read buffer starts at 8 KiB, and because
//! those bytes are already in it when it reserves the next 8 KiB, it grows to
//! 16 KiB; an SSE response keeps its connection's buffer for its whole life.
//! This edge speaks HTTP/1.1 only, so the sniffing buys nothing: serving
//! with `hyper::server::conn::http1` directly keeps the buffer at 8 KiB and
//! drops a layer from every connection. And `axum::serve` has none of the
//! above: caps, `TCP_NODELAY`, the stall and head timeouts, or a shutdown
//! that ends long-lived streams.
//!
//! ## Use
//!
//! [`serve`] is a drop-in for `axum::serve(listener, router)`: it takes a
//! bound [`TcpListener`] and an [`axum::Router`] (every request carries
//! `ConnectInfo<SocketAddr>`, WebSocket upgrades work), returns a [`Serve`]
//! builder, and runs when awaited.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use event_core::ConnectionRegistry;
//! use event_http::ConnectionCaps;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let registry = ConnectionRegistry::new();
//! let app = Router::new().route("/hello", get(|| async { "hello" }));
//! // … `.merge(ws.router())`, `.merge(sse.router())` with the same registry …
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let server = tokio::spawn(
//!     event_http::serve(listener, app)
//!         .caps(ConnectionCaps { total: 10_000, per_ip: 256 })
//!         // With event-sse: `.stream_paths(&event_sse::SseEndpoint::STREAM_PATHS)`.
//!         .stream_paths(&["/api/v1/events"])
//!         .head_timeout(Duration::from_secs(30))
//!         .write_stall_timeout(Duration::from_secs(30))
//!         .registry(registry)
//!         .with_graceful_shutdown(async move {
//!             let _ = stopped.await;
//!         })
//!         .into_future(),
//! );
//! // A request over plain TCP.
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! let mut tcp = tokio::net::TcpStream::connect(addr).await?;
//! tcp.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
//! let mut answer = String::new();
//! tcp.read_to_string(&mut answer).await?;
//! assert!(answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("hello"));
//!
//! let _ = stop.send(());
//! server.await?; // returns once the last connection is gone
//! # Ok(()) }
//! # use std::future::IntoFuture;
//! ```

use std::fmt;
use std::future::{Future, IntoFuture, Pending};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use event_core::ConnectionRegistry;
use tokio::net::TcpListener;

mod serve;

pub use serve::listener::{
    CappedListener, CappedStream, ConnectionCaps, MAX_REFUSING, RESERVED_FDS,
};

/// The default of [`Serve::head_timeout`].
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// The default of [`Serve::write_stall_timeout`].
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener`: a drop-in for `axum::serve` (see the
/// [crate documentation](crate)). Configure the returned [`Serve`], then
/// await it.
pub fn serve(listener: TcpListener, router: Router) -> Serve {
    Serve {
        listener,
        router,
        signal: std::future::pending(),
        caps: None,
        stream_paths: &[],
        head_timeout: DEFAULT_HEAD_TIMEOUT,
        write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
        registry: None,
        intake: None,
    }
}

/// A server being configured; await it (it is [`IntoFuture`]) to run it.
///
/// Without [`with_graceful_shutdown`](Serve::with_graceful_shutdown) it runs
/// forever. The future's output is `()`: accept errors are retried with
/// back-off and a failing connection ends only itself, so there is no error
/// to return.
#[must_use = "a Serve does nothing until awaited"]
pub struct Serve<S = Pending<()>> {
    listener: TcpListener,
    router: Router,
    signal: S,
    caps: Option<ConnectionCaps>,
    stream_paths: &'static [&'static str],
    head_timeout: Duration,
    write_stall_timeout: Duration,
    registry: Option<ConnectionRegistry>,
    intake: Option<tokio::runtime::Handle>,
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("caps", &self.caps)
            .field("stream_paths", &self.stream_paths)
            .field("head_timeout", &self.head_timeout)
            .field("write_stall_timeout", &self.write_stall_timeout)
            .field("registry", &self.registry.is_some())
            .field("intake", &self.intake.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> Serve<S> {
    /// Stops when `signal` completes: the listener closes, the
    /// [`registry`](Serve::registry) is shut down, requests in flight
    /// finish, and the server's future completes when the last connection
    /// is gone.
    pub fn with_graceful_shutdown<F>(self, signal: F) -> Serve<F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        Serve {
            listener: self.listener,
            router: self.router,
            signal,
            caps: self.caps,
            stream_paths: self.stream_paths,
            head_timeout: self.head_timeout,
            write_stall_timeout: self.write_stall_timeout,
            registry: self.registry,
            intake: self.intake,
        }
    }

    /// The connection caps. Default: [`ConnectionCaps::from_file_limit`]
    /// with no configured total and no per-IP limit (which raises the soft
    /// open-file limit to the hard one when the server starts).
    pub fn caps(mut self, caps: ConnectionCaps) -> Self {
        self.caps = Some(caps);
        self
    }

    /// Paths whose plain `GET`, as a connection's first request, is answered
    /// by the direct event-stream path instead of hyper (for event-sse,
    /// `&event_sse::SseEndpoint::STREAM_PATHS`). Default: none. A path
    /// listed here must be a route of the router; its answer is the same
    /// either way, only cheaper to hold while it streams.
    pub fn stream_paths(mut self, paths: &'static [&'static str]) -> Self {
        self.stream_paths = paths;
        self
    }

    /// How long a client has to send a whole request head (past it, the
    /// connection is closed unanswered). Default: [`DEFAULT_HEAD_TIMEOUT`].
    pub fn head_timeout(mut self, timeout: Duration) -> Self {
        self.head_timeout = timeout;
        self
    }

    /// How long a write may stay pending before its connection is aborted
    /// (a client that stopped reading). Default:
    /// [`DEFAULT_WRITE_STALL_TIMEOUT`].
    pub fn write_stall_timeout(mut self, timeout: Duration) -> Self {
        self.write_stall_timeout = timeout;
        self
    }

    /// The registry of the transports' connections: at shutdown
    /// [`ConnectionRegistry::shutdown`] closes its WebSockets with 1001 and
    /// ends its SSE streams, which would otherwise keep the server waiting
    /// for as long as their clients stay.
    pub fn registry(mut self, registry: ConnectionRegistry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// A runtime for the connections whose first request is not a `GET`
    /// (publishing, the REST API): they are served there, with their own
    /// threads, so that a saturated fan-out — a writer task per client on
    /// the main runtime — does not starve them. Event streams, WebSocket
    /// upgrades and other `GET`s stay on the runtime the server runs on.
    /// Default: none (everything on that runtime).
    ///
    /// The runtime must have time and I/O enabled and outlive the server.
    pub fn intake(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.intake = Some(runtime);
        self
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl<S> IntoFuture for Serve<S>
where
    S: Future<Output = ()> + Send + 'static,
{
    type Output = ();
    type IntoFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let caps = self
                .caps
                .unwrap_or_else(|| ConnectionCaps::from_file_limit(None, 0));
            let listener = CappedListener::new(self.listener, caps);
            let settings = serve::Settings {
                stream_paths: self.stream_paths,
                head_timeout: self.head_timeout,
                write_stall_timeout: self.write_stall_timeout,
                registry: self.registry,
                intake: self.intake,
            };
            serve::serve(listener, self.router, settings, self.signal).await;
        })
    }
}
