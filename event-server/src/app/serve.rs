//! The accept loop: event streams answered directly, everything else by
//! hyper's HTTP/1.1 server.
//!
//! # Why not `axum::serve`
//!
//! `axum::serve` hands each socket to hyper-util's `auto` builder, which
//! first reads up to 24 bytes to tell HTTP/1.1 from an HTTP/2 preface and
//! replays them to hyper. hyper's read buffer starts at 8 KiB, and because
//! those bytes are already in it when it reserves the next 8 KiB, it grows to
//! 16 KiB; an SSE response keeps its connection's buffer for its whole life.
//! The host speaks HTTP/1.1 only (axum is built without `http2`), so the
//! sniffing buys nothing: serving with `hyper::server::conn::http1` directly
//! keeps the buffer at 8 KiB and drops a layer from every connection.
//!
//! The first request of each connection is read by [`direct`], which
//! answers event-stream requests itself (hyper keeps 16 KiB of buffers per
//! connection for as long as a response streams) and hands everything else
//! to hyper with the bytes it read.
//!
//! Otherwise this is what `axum::serve(..).with_graceful_shutdown(..)` does:
//! accept errors are handled by the [`Listener`], each request carries
//! `ConnectInfo<SocketAddr>`, WebSocket upgrades work, and on the signal the
//! listener closes, every connection is asked to finish (idle keep-alive
//! connections close at once; a response in progress completes) and the
//! call returns when the last one has.

mod direct;
pub mod listener;

pub use listener::{CappedListener, ConnectionCaps};

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

use direct::{First, HEAD_TIMEOUT};

/// Serves `router` on `listener` until `signal` completes, then waits for
/// every connection to finish. A plain `GET` of one of `stream_paths` as a
/// connection's first request is answered without hyper (see [`direct`]).
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    stream_paths: &'static [&'static str],
    signal: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut signal = pin!(signal);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    // The same limit for a request head as the direct path's, for every
    // request hyper reads (an idle keep-alive connection included).
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let router = router.clone();
        let stop = stop.clone();
        let builder = builder.clone();
        connections.spawn(async move {
            let first = direct::first_request(io, remote, &router, stream_paths, &stop);
            let First::Hyper(io) = first.await else {
                return;
            };
            // Boxed: a connection answered directly never holds hyper's
            // (much larger) connection state in its task.
            Box::pin(serve_hyper(io, remote, router, builder, stop)).await;
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
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
