//! Dropping clients that stop reading: a write timeout at the socket.
//!
//! # Why at the socket
//!
//! hyper polls a streaming body only while it can buffer more output. A
//! client that stops reading fills the socket and hyper's buffer, and from
//! then on the body is never polled again: nothing inside the response can
//! notice the stall, end the stream, or let graceful shutdown finish. The
//! one place that still sees it is the socket, where a write stays pending.
//!
//! [`write_timeout`] wraps a listener served by `axum::serve` so that a
//! write pending for longer than the timeout fails (each connection in an
//! [`event_core::WriteTimeoutIo`]; `event-http` serves every connection so
//! without this wrapper). hyper then aborts that connection, the
//! response body is dropped, and with it the connection's registry entry,
//! hub subscription and gauge. Live clients never see it: their writes
//! complete in microseconds.

use std::io;
use std::time::Duration;

use axum::serve::{Listener, ListenerExt, TapIo};
/// A connection of a [`WriteTimeoutListener`] (the I/O wrapper lives in
/// `event-core`, shared with `event-http`).
pub use event_core::WriteTimeoutIo;

/// A listener whose connections fail a write that stays pending too long.
#[derive(Debug)]
pub struct WriteTimeoutListener<L> {
    inner: L,
    timeout: Duration,
}

/// What [`write_timeout`] returns: the wrapping listener inside a no-op
/// [`TapIo`], for which axum provides `ConnectInfo`.
pub type WriteTimeout<L> =
    TapIo<WriteTimeoutListener<L>, fn(&mut WriteTimeoutIo<<L as Listener>::Io>)>;

/// Wraps `listener` so that a connection whose peer does not accept data for
/// `timeout` is aborted (use [`SseConfig::stall_timeout`](crate::SseConfig)).
/// The result works with `into_make_service_with_connect_info::<SocketAddr>()`
/// like the listener it wraps.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::net::SocketAddr;
/// use std::time::Duration;
/// let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
/// let listener = event_sse::write_timeout(tcp, Duration::from_secs(30));
/// let app = axum::Router::new();
/// let server = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>());
/// # drop(server);
/// # }
/// ```
pub fn write_timeout<L>(listener: L, timeout: Duration) -> WriteTimeout<L>
where
    L: Listener,
{
    // Wrapped in `TapIo` (a no-op tap) because axum provides
    // `ConnectInfo` for the address of any `TapIo` listener.
    WriteTimeoutListener {
        inner: listener,
        timeout,
    }
    .tap_io(|_| {})
}

impl<L: Listener> Listener for WriteTimeoutListener<L> {
    type Io = WriteTimeoutIo<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        (WriteTimeoutIo::new(io, self.timeout), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}
