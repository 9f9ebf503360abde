//! An upgraded connection: frames out, messages in, polled by one task.
//!
//! Writing and reading are two poll methods on the same value rather than
//! two halves behind a lock: the connection's task polls both from one
//! `poll_fn`, so neither half needs to be shared.
//!
//! Frames to send wait in a queue of shared [`Bytes`] (an event's frame is
//! the same allocation on every connection) and go out with vectored
//! writes: everything pending, in as few syscalls as the socket allows,
//! without copying a payload into a per-connection buffer.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::deflate::Framing;
use crate::frame::{Incoming, MessageReader, ReadError};

/// Frames handed to one vectored write at most: Linux's `UIO_MAXIOV`
/// (`IOV_MAX`), the most one `writev` takes. Under saturation a
/// connection has hundreds of frames pending; at 64 per call it made
/// ~25 deliveries per syscall where the raw floor, writing all that is
/// pending at once, makes ~900, and the syscalls were the larger part of
/// the difference in CPU per delivery (issue 23). The slices live on the
/// stack of the poll, not in the connection.
const MAX_SLICES: usize = 1024;
/// A write queue that grew past this many frames is released once empty.
const KEEP_QUEUE: usize = 64;
/// Bytes read per call: client messages are small, and a read buffer on
/// the stack keeps an idle connection from holding one.
const READ_CHUNK: usize = 512;

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Bytes arrived (messages they completed are in the output).
    Data,
    /// The client closed the TCP connection.
    Eof,
}

/// Why reading failed.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// The socket failed.
    Io,
    /// The bytes were not acceptable WebSocket frames.
    Frames(ReadError),
}

/// One upgraded connection's socket and its framing state.
pub(crate) struct WsSocket<IO> {
    io: IO,
    reader: MessageReader,
    /// Frames not yet (completely) written, oldest first.
    out: VecDeque<Bytes>,
    /// Bytes of `out` not yet written.
    queued_bytes: usize,
    /// Whether part of the front frame has been written.
    front_started: bool,
    /// Plain or compressed data frames (permessage-deflate).
    framing: Framing,
}

/// One vectored write of the first `N` frames of `out` at most.
fn poll_write_frames<IO: AsyncWrite + Unpin, const N: usize>(
    io: &mut IO,
    out: &VecDeque<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    let mut slices = [IoSlice::new(&[]); N];
    let n = out.len().min(N);
    for (slice, frame) in slices.iter_mut().zip(out) {
        *slice = IoSlice::new(frame);
    }
    Pin::new(io).poll_write_vectored(cx, &slices[..n])
}

impl<IO: AsyncRead + AsyncWrite + Unpin> WsSocket<IO> {
    /// Wraps an upgraded connection; client messages over `max_message`
    /// bytes are refused.
    pub(crate) fn new(io: IO, max_message: usize) -> Self {
        WsSocket {
            io,
            reader: MessageReader::new(max_message),
            out: VecDeque::new(),
            queued_bytes: 0,
            front_started: false,
            framing: Framing::PLAIN,
        }
    }

    /// permessage-deflate was negotiated: compressed client messages are
    /// accepted, and data messages go out as `framing` says.
    pub(crate) fn compress(&mut self, framing: Framing) {
        self.reader.accept_compressed();
        self.framing = framing;
    }

    /// How data messages go out on this connection.
    pub(crate) fn framing(&self) -> Framing {
        self.framing
    }

    /// Queues a frame behind the ones already waiting.
    pub(crate) fn queue(&mut self, frame: Bytes) {
        self.queued_bytes += frame.len();
        self.out.push_back(frame);
    }

    /// Frames waiting to be written.
    pub(crate) fn pending(&self) -> usize {
        self.out.len()
    }

    /// Bytes waiting to be written.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Drops every queued frame that has not started going out (a frame
    /// cut in the middle would corrupt the stream), so that a close frame
    /// can follow at once.
    pub(crate) fn discard_unstarted(&mut self) {
        self.out.truncate(usize::from(self.front_started));
        self.queued_bytes = self.out.iter().map(Bytes::len).sum();
    }

    /// Writes queued frames until none is left (`Ready(Ok)`), the socket is
    /// full (`Pending`, woken when it has room) or the write fails.
    pub(crate) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let written = if self.out.len() == 1 || !self.io.is_write_vectored() {
                let front = &self.out[0];
                ready!(Pin::new(&mut self.io).poll_write(cx, front))?
            } else if self.out.len() <= KEEP_QUEUE {
                // The usual few frames: no 16 KiB of slices to fill.
                ready!(poll_write_frames::<_, KEEP_QUEUE>(
                    &mut self.io,
                    &self.out,
                    cx
                ))?
            } else {
                ready!(poll_write_frames::<_, MAX_SLICES>(
                    &mut self.io,
                    &self.out,
                    cx
                ))?
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Drops `n` written bytes from the front of the queue.
    fn advance(&mut self, mut n: usize) {
        self.queued_bytes = self.queued_bytes.saturating_sub(n);
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                self.front_started = true;
                return;
            }
            n -= front.len();
            self.out.pop_front();
            self.front_started = false;
        }
        if self.out.is_empty() && self.out.capacity() > KEEP_QUEUE {
            // A burst's queue is not kept by an idle connection.
            self.out = VecDeque::new();
        }
    }

    /// Reads once from the socket and appends the messages that completed
    /// to `messages`.
    pub(crate) fn poll_read_messages(
        &mut self,
        cx: &mut Context<'_>,
        messages: &mut Vec<Incoming>,
    ) -> Poll<Result<Read, ReadFailure>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        if ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)).is_err() {
            return Poll::Ready(Err(ReadFailure::Io));
        }
        let data = buf.filled();
        if data.is_empty() {
            return Poll::Ready(Ok(Read::Eof));
        }
        Poll::Ready(
            self.reader
                .feed(data, messages)
                .map(|()| Read::Data)
                .map_err(ReadFailure::Frames),
        )
    }

    /// Reads once and throws the bytes away: `Ready(Ok(true))` at the end
    /// of the stream. For the end of a connection, whose remaining input no
    /// longer matters but must be read: a socket closed with unread input
    /// is reset, and a reset can destroy the close frame still in flight.
    pub(crate) fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().is_empty()))
    }

    /// Ends the write side (TCP FIN), so the client sees the stream end.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn queued_frames_go_out_in_order_whatever_the_socket_takes() {
        // A pipe with room for 7 bytes at a time forces partial writes.
        let (server, mut client) = tokio::io::duplex(7);
        let mut socket = WsSocket::new(server, 1024);
        let frames: Vec<Bytes> = (0..20)
            .map(|i| Bytes::from(format!("frame-{i};")))
            .collect();
        for f in &frames {
            socket.queue(f.clone());
        }
        let want: Vec<u8> = frames.concat();
        let want_len = want.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0; want.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, want);
        });
        assert_eq!(socket.queued_bytes(), want_len);
        poll_fn(|cx| socket.poll_write_out(cx)).await.unwrap();
        assert_eq!(socket.pending(), 0);
        assert_eq!(socket.queued_bytes(), 0);
        reader.await.unwrap();
    }

    /// A socket that takes everything and counts vectored writes.
    #[derive(Default)]
    struct Counting {
        written: Vec<u8>,
        writes: usize,
    }

    impl AsyncRead for Counting {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(buf)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes += 1;
            let n = bufs.iter().map(|b| b.len()).sum();
            for b in bufs {
                self.written.extend_from_slice(b);
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_backlog_goes_out_in_writes_of_up_to_max_slices_frames() {
        let mut socket = WsSocket::new(Counting::default(), 1024);
        let frames: Vec<Bytes> = (0..MAX_SLICES + 10)
            .map(|i| Bytes::from(format!("f{i};")))
            .collect();
        for f in &frames {
            socket.queue(f.clone());
        }
        poll_fn(|cx| socket.poll_write_out(cx)).await.unwrap();
        // One write of MAX_SLICES frames, one of the rest.
        assert_eq!(socket.io.writes, 2);
        assert_eq!(socket.io.written, frames.concat());
    }

    #[tokio::test]
    async fn a_started_frame_survives_a_discard() {
        let (server, _client) = tokio::io::duplex(4);
        let mut socket = WsSocket::new(server, 1024);
        socket.queue(Bytes::from_static(b"0123456789"));
        socket.queue(Bytes::from_static(b"next"));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(socket.poll_write_out(&mut cx).is_pending());
        assert_eq!(socket.queued_bytes(), 10);
        socket.discard_unstarted();
        assert_eq!(socket.pending(), 1);
        assert_eq!(socket.queued_bytes(), 6);
        assert_eq!(&socket.out[0][..], b"456789");
        // Nothing of a fresh queue has gone out: all of it is dropped.
        let (server, _client) = tokio::io::duplex(4);
        let mut fresh = WsSocket::new(server, 1024);
        fresh.queue(Bytes::from_static(b"a"));
        fresh.discard_unstarted();
        assert_eq!(fresh.pending(), 0);
    }
}
