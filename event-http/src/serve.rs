//! The accept loop: event streams answered directly, everything else by
//! hyper's HTTP/1.1 server.
//!
//! The first request of each connection is read by [`direct`], which
//! answers event-stream requests itself (hyper keeps 16 KiB of buffers per
//! connection for as long as a response streams) and hands everything else
//! to hyper with the bytes it read.
//!
//! Otherwise this is what `axum::serve(..).with_graceful_shutdown(..)` does:
//! accept errors are handled by the [`Listener`], each request carries
//! `ConnectInfo<SocketAddr>`, WebSocket upgrades work, and on the signal the
//! listener closes, the registry (if any) ends its long-lived connections,
//! every connection is asked to finish (idle keep-alive connections close at
//! once; a response in progress completes) and the call returns when the
//! last one has.

mod direct;
pub mod listener;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use event_core::{ConnectionRegistry, WriteTimeoutIo};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use std::time::Duration;

use direct::{First, Replay};

/// A connection that can move to the runtime it is served on.
///
/// A tokio socket is registered with the I/O driver of the runtime that
/// accepted it, and only that runtime's workers turn the kernel's readiness
/// into wake-ups. A connection moved to the intake runtime but left
/// registered with the main one would have every read wait until a main
/// worker, busy with the fan-out, next polls its driver (milliseconds per
/// request under saturation, BENCHMARKS.md). Called on the new runtime,
/// before any I/O there.
pub(crate) trait Rehome {
    /// Registers the connection with the current runtime's driver (and
    /// timer); a connection that is not a socket has nothing to move. On
    /// an error the connection is unchanged and still usable.
    fn rehome(&mut self) -> std::io::Result<()>;
}

impl<T: Rehome> Rehome for WriteTimeoutIo<T> {
    fn rehome(&mut self) -> std::io::Result<()> {
        self.get_mut().rehome()
    }
}

/// How the accept loop serves its connections.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Paths whose plain `GET` as a connection's first request is answered
    /// without hyper (see [`direct`]).
    pub(crate) stream_paths: &'static [&'static str],
    /// A request head must arrive within this: the first one counted from
    /// the connection's start (by [`direct`], also when hyper finishes
    /// reading it), a later one by hyper's header timeout.
    pub(crate) head_timeout: Duration,
    /// A write pending this long aborts its connection.
    pub(crate) write_stall_timeout: Duration,
    /// Shut down (WebSockets closed with 1001, SSE streams ended) on the
    /// signal.
    pub(crate) registry: Option<ConnectionRegistry>,
    /// Where connections whose first request is not a `GET` are served.
    pub(crate) intake: Option<tokio::runtime::Handle>,
}

/// Serves `router` on `listener` until `signal` completes, then waits for
/// every connection to finish.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    settings: Settings,
    signal: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener<Addr = SocketAddr>,
    L::Io: Rehome,
{
    let Settings {
        stream_paths,
        head_timeout,
        write_stall_timeout,
        registry,
        intake,
    } = settings;
    let mut signal = pin!(signal);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    // The same limit for a request head as the direct path's, for every
    // request hyper reads (an idle keep-alive connection included).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout);
    let shared = Arc::new(Shared {
        router,
        stream_paths,
        head_timeout,
        builder,
        intake,
    });
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        // A client that stops reading leaves its response body unpolled, so
        // nothing inside an event stream can end it; its connection aborts a
        // write stalled this long instead (and so cannot block shutdown).
        let io = WriteTimeoutIo::new(io, write_stall_timeout);
        connections.spawn(serve_connection(io, remote, shared.clone(), stop.clone()));
    }
    drop(listener);
    tracing::debug!("stopped accepting; waiting for open connections");
    // Ends WebSockets (1001) and SSE streams; without this the wait below
    // would last as long as the longest-lived client.
    if let Some(registry) = registry {
        registry.shutdown();
    }
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// What every connection of one accept loop shares (one allocation for
/// all of them, rather than a copy of each setting in every connection's
/// task).
struct Shared {
    router: Router,
    stream_paths: &'static [&'static str],
    head_timeout: Duration,
    builder: http1::Builder,
    intake: Option<tokio::runtime::Handle>,
}

/// The part of a connection that outlives its first request: an event
/// stream, or hyper serving what follows.
type Rest = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One accepted connection: its first request through [`direct`], the rest
/// (if any) through hyper — on the `intake` runtime when there is one and
/// the first request is not a `GET`.
///
/// The returned future is the connection's task, which lives as long as the
/// connection: it holds only what every phase needs. The first request's
/// phase (head buffer, parser, the router's call, the response head) is
/// boxed and freed before what follows, which is boxed at its own size: an
/// idle event stream keeps its socket, its body and the wait for the next
/// frame, nothing of the request that opened it.
fn serve_connection<I>(
    io: I,
    remote: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    I: AsyncRead + AsyncWrite + Unpin + Send + Rehome + 'static,
{
    let first = Box::pin(direct::first_request(
        io,
        remote,
        shared.router.clone(),
        shared.stream_paths,
        shared.head_timeout,
        stop.clone(),
    ));
    async move {
        // Matched into `rest` before awaiting it, so the (larger) outcome
        // is not kept beside it.
        let rest: Rest = match first.await {
            First::Done => return,
            First::Stream(stream) => stream,
            First::Hyper(io) => hyper_rest(io, remote, &shared, stop),
        };
        rest.await;
    }
}

/// The rest of a connection whose first request was left to hyper (or
/// answered directly with the connection kept open).
fn hyper_rest<I>(
    io: Replay<I>,
    remote: SocketAddr,
    shared: &Shared,
    stop: CancellationToken,
) -> Rest
where
    I: AsyncRead + AsyncWrite + Unpin + Send + Rehome + 'static,
{
    let on_intake = shared.intake.clone().filter(|_| !io.is_get());
    let (router, builder) = (shared.router.clone(), shared.builder.clone());
    match on_intake {
        // Publishing and the REST API on their own threads: under a
        // saturated fan-out the runtime's queue holds a writer task per
        // client, and a request waiting behind all of them for each read
        // and write would take seconds. This task stays (the accept loop's
        // tracker waits for it) and only waits for the intake's.
        Some(intake) => {
            let served = intake.spawn(async move {
                let mut io = io;
                // On failure (no descriptor left for the copy) the socket is
                // as it was: served, only woken through the main runtime.
                if let Err(error) = io.rehome() {
                    tracing::debug!(%error, "connection left on the accepting runtime's driver");
                }
                serve_hyper(io, remote, router, builder, stop).await;
            });
            Box::pin(async move {
                let _ = served.await;
            })
        }
        None => Box::pin(serve_hyper(io, remote, router, builder, stop)),
    }
}

/// One connection through hyper's HTTP/1.1 server, WebSocket upgrades
/// included, until it ends or `stop` asks it to finish.
async fn serve_hyper<I>(
    io: I,
    remote: SocketAddr,
    router: Router,
    builder: http1::Builder,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(remote));
        // `Router` is always ready (its `poll_ready` returns `Ready`), so
        // calling it without `poll_ready` is allowed. Boxed because hyper
        // allocates room for this future once per connection and keeps it
        // for the connection's life: a box pointer there, the router's
        // future only while a request is in flight.
        Box::pin(router.clone().call(request))
    });
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut connection = pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::trace!(%error, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    const TIMEOUT: Duration = Duration::from_secs(30);
    const PATHS: &[&str] = &["/api/v1/events"];

    /// An in-memory pipe belongs to no runtime's driver.
    impl Rehome for tokio::io::DuplexStream {
        fn rehome(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The connection type the accept loop serves.
    type Served = WriteTimeoutIo<listener::CappedStream>;

    fn returned_size<A, B, C, D, R>(_: fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A connection's task lives as long as the connection, so it keeps
    /// only what every phase needs; the first request's phase is boxed and
    /// freed. It was 2,216 bytes when the first request's state (the
    /// request, the response head, the reading buffers' futures) lived in
    /// the task for an event stream's whole life.
    #[test]
    fn a_connection_task_keeps_little() {
        let size = returned_size(serve_connection::<Served>);
        println!("connection task: {size} bytes");
        assert!(size <= 128, "the connection task grew to {size} bytes");
    }

    /// One connection served as the accept loop serves it, over an
    /// in-memory pipe; returns the client's end.
    fn connect() -> tokio::io::DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let router = Router::new().route("/ok", axum::routing::get(|| async { "ok" }));
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(TIMEOUT);
        let shared = Arc::new(Shared {
            router,
            stream_paths: PATHS,
            head_timeout: TIMEOUT,
            builder,
            intake: None,
        });
        tokio::spawn(serve_connection(
            server,
            SocketAddr::from(([127, 0, 0, 1], 1)),
            shared,
            CancellationToken::new(),
        ));
        client
    }

    /// Reads to the end; what was read and when (on the paused clock) the
    /// connection closed.
    async fn read_to_close(client: &mut tokio::io::DuplexStream) -> (Vec<u8>, Instant) {
        let mut out = Vec::new();
        // A bound far beyond any timeout under test (virtual time).
        tokio::time::timeout(10 * TIMEOUT, client.read_to_end(&mut out))
            .await
            .expect("the connection was not closed")
            .unwrap();
        (out, Instant::now())
    }

    /// A first head that reaches hyper unfinished after most of its time
    /// has passed on the direct path gets only the rest from hyper.
    #[tokio::test(start_paused = true)]
    async fn a_slow_first_head_gets_one_timeout_across_both_paths() {
        let cases: [&[u8]; 3] = [
            // A GET whose head grows past the direct path's 8 KiB.
            b"GET /api/v1/events HTTP/1.1\r\n",
            // Not a GET: hyper's as soon as the first bytes arrive.
            b"",
            // A GET whose first line arrives late.
            b"G",
        ];
        for first in cases {
            let started = Instant::now();
            let mut client = connect();
            if !first.is_empty() {
                client.write_all(first).await.unwrap();
            }
            tokio::time::sleep(TIMEOUT * 4 / 5).await;
            let late: Vec<u8> = match first {
                b"" => b"POST /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec(),
                b"G" => b"ET /ok HTTP/1.1\r\nX: y\r\n".to_vec(),
                _ => format!("X-Pad: {}\r\n", "a".repeat(9000)).into_bytes(),
            };
            client.write_all(&late).await.unwrap();
            let (answer, closed) = read_to_close(&mut client).await;
            let took = closed - started;
            assert!(
                took <= TIMEOUT + Duration::from_secs(1),
                "{:?}: closed after {took:?} (timeout {TIMEOUT:?})",
                String::from_utf8_lossy(first)
            );
            assert!(took >= TIMEOUT, "closed early, after {took:?}");
            assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
        }
    }

    /// A head completed in time is served, and the next request on the
    /// connection has hyper's full timeout again.
    #[tokio::test(start_paused = true)]
    async fn a_complete_head_is_served_and_the_next_gets_a_fresh_timeout() {
        let mut client = connect();
        client.write_all(b"POST /ok HTTP/1.1\r\n").await.unwrap();
        tokio::time::sleep(TIMEOUT * 4 / 5).await;
        client
            .write_all(b"Host: 127.0.0.1\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(TIMEOUT, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 405"), "{:?}", &buf[..n]);
        // Idle now for longer than what was left of the first deadline.
        let idle = Instant::now();
        tokio::time::sleep(TIMEOUT / 2).await;
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(TIMEOUT, client.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        let (_, closed) = read_to_close(&mut client).await;
        assert!(closed - idle >= TIMEOUT, "{:?}", closed - idle);
    }
}
