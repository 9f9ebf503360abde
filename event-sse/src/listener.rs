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
//! [`write_timeout`] wraps the host's listener so that a write pending for
//! longer than the timeout fails. hyper then aborts that connection, the
//! response body is dropped, and with it the connection's registry entry,
//! hub subscription and gauge. Live clients never see it: their writes
//! complete in microseconds.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::{Listener, ListenerExt, TapIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

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
        (
            WriteTimeoutIo {
                io,
                timeout: self.timeout,
                pending_since: None,
            },
            addr,
        )
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection of a [`WriteTimeoutListener`].
#[derive(Debug)]
pub struct WriteTimeoutIo<T> {
    io: T,
    timeout: Duration,
    /// Armed while a write or flush is pending; disarmed by any progress.
    pending_since: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeoutIo<T> {
    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.pending_since = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self
            .pending_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            self.pending_since = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer did not accept data within the write timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeoutIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeoutIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, poll)
    }
}
