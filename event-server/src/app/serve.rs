//! The accept loop: every connection served by hyper's HTTP/1.1 server.
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
//! Otherwise this is what `axum::serve(..).with_graceful_shutdown(..)` does:
//! accept errors are handled by the [`Listener`], each request carries
//! `ConnectInfo<SocketAddr>`, WebSocket upgrades work, and on the signal the
//! listener closes, every connection is asked to finish (idle keep-alive
//! connections close at once; a response in progress completes) and the
//! call returns when the last one has.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Service;

/// Serves `router` on `listener` until `signal` completes, then waits for
/// every connection to finish.
pub(crate) async fn serve<L>(
    mut listener: L,
    router: Router,
    signal: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut signal = pin!(signal);
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let builder = http1::Builder::new();
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut signal => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(remote));
            // `Router` is always ready (its `poll_ready` returns `Ready`),
            // so calling it without `poll_ready` is allowed. Boxed because
            // hyper allocates room for this future once per connection and
            // keeps it for the connection's life (a streaming response's
            // too): a box pointer there, the router's future only while a
            // request is in flight.
            Box::pin(router.clone().call(request))
        });
        let connection = builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
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
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}
