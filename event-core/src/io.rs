//! Connection I/O shared by the serving edge and the transports.
//!
//! # A write-stall timeout at the socket
//!
//! hyper polls a streaming body only while it can buffer more output. A
//! client that stops reading fills the socket and hyper's buffer, and from
//! then on the body is never polled again: nothing inside the response can
//! notice the stall, end the stream, or let graceful shutdown finish. The
//! one place that still sees it is the socket, where a write stays pending.
//!
//! [`WriteTimeoutIo`] wraps a connection so that a write (or flush, or
//! shutdown) pending for longer than its timeout fails with
//! [`TimedOut`](std::io::ErrorKind::TimedOut). The server then aborts that
//! connection, the response body is dropped, and with it the connection's
//! registry entry, hub subscription and gauge. Live clients never see it:
//! their writes complete in microseconds. `event-http` wraps every
//! connection it serves in one; `event_sse::write_timeout` does the same
//! for a listener served by `axum::serve`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A connection whose writes fail once one stays pending for `timeout`.
#[derive(Debug)]
pub struct WriteTimeoutIo<T> {
    io: T,
    timeout: Duration,
    /// Armed while a write or flush is pending; disarmed by any progress.
    pending_since: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeoutIo<T> {
    /// Wraps `io`: a write pending for `timeout` fails with `TimedOut`.
    pub fn new(io: T, timeout: Duration) -> WriteTimeoutIo<T> {
        WriteTimeoutIo {
            io,
            timeout,
            pending_since: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// The wrapped connection, to change in place (say, to register its
    /// socket with another runtime). A write stall being timed is forgotten:
    /// the next pending write starts a new timer on the current runtime.
    pub fn get_mut(&mut self) -> &mut T {
        self.pending_since = None;
        &mut self.io
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that reads nothing: the write that cannot complete fails
    /// after the timeout (virtual time), an earlier one succeeds.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_timeout() {
        let (_peer, io) = tokio::io::duplex(16);
        let mut io = WriteTimeoutIo::new(io, Duration::from_secs(30));
        io.write_all(&[0; 16]).await.unwrap();
        let started = tokio::time::Instant::now();
        let err = io.write_all(&[0; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(30));
    }
}
