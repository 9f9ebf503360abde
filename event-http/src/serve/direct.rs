//! Event streams written straight to the socket, without hyper's buffers.
//!
//! # Why
//!
//! hyper's HTTP/1.1 connection keeps two buffers for its whole life: an
//! 8 KiB read buffer (to notice the client leaving and to parse a next
//! request) and an 8 KiB write buffer, both fixed-size constants in hyper.
//! For a request/response exchange that is nothing; for an SSE response,
//! which lives as long as the client stays, it is most of what an idle
//! subscriber costs (12.7 KiB per SSE connection served by hyper against
//! 4.8 KiB per WebSocket, whose connection leaves hyper at the upgrade).
//!
//! # What this does
//!
//! The accept loop reads each connection's first request head itself (into
//! a buffer that is freed before the response streams) and parses it with
//! `httparse`, the parser hyper uses. A plain `GET` without a body or an
//! upgrade, for one of the host's stream paths, is answered here: the
//! router is called as hyper would call it, the head is written, and the
//! body goes out frame by frame — each frame one vectored write of its
//! chunk header, the frame's shared bytes and the trailing CRLF, so a
//! frame the SSE crate rendered once for every subscriber is not copied
//! per connection. While waiting for the next frame the connection reads
//! into a 64-byte stack buffer only to notice the client going away.
//!
//! Everything else — another method or path, a body, an upgrade, a head
//! that does not parse or does not fit in 8 KiB — is handed to hyper
//! together with the bytes already read, so hyper sees the connection as if
//! nothing had touched it. A direct response with a known length (an error
//! from the stream endpoint) keeps the connection alive for hyper to serve
//! the next request; a streamed one is sent with `connection: close`, and
//! the connection closes when the stream ends.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderName, HeaderValue, Method, Request, Response, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tower::Service;

/// Where a first request head may grow to before it is left to hyper
/// (whose limits and error answers then apply).
const MAX_HEAD: usize = 8 * 1024;
/// The first read's size: a browser's `EventSource` request is ~500 bytes.
const FIRST_READ: usize = 1024;
/// Headers a direct request may carry (more: hyper's answer applies).
const MAX_HEADERS: usize = 64;

/// What became of a connection's first request.
pub(crate) enum First<I> {
    /// Answered here; the connection is closed.
    Done,
    /// For hyper: the connection and the bytes read from it so far.
    Hyper(Replay<I>),
    /// Answered here with a streamed body whose head is written: the rest
    /// of the stream, boxed at its own size (see [`stream`]).
    Stream(Pin<Box<dyn Future<Output = ()> + Send>>),
}

/// Reads the first request head of `io` and answers it when it is a plain
/// `GET` of one of `stream_paths`. Until the head is complete the
/// connection is idle: `stop` or `head_timeout` closes it; a response
/// once started runs to its end (shutdown ends event streams).
///
/// `head_timeout` counts from the connection's start for the whole first
/// head, here and in hyper alike: a head handed to hyper unfinished keeps
/// the same deadline (see [`Replay`]), so a slow client does not get the
/// direct path's time and then hyper's on top.
pub(crate) async fn first_request<I>(
    mut io: I,
    remote: SocketAddr,
    router: Router,
    stream_paths: &[&str],
    head_timeout: Duration,
    stop: CancellationToken,
) -> First<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut buf = Vec::with_capacity(FIRST_READ);
    let deadline = tokio::time::Instant::now() + head_timeout;
    let head = loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, read_more(&mut io, &mut buf)) => read,
            () = stop.cancelled() => return First::Done,
        };
        match read {
            Ok(Ok(0) | Err(_)) | Err(_) => return First::Done,
            Ok(Ok(_)) => {}
        }
        // Not a GET (or no stream paths at all): hyper's at once, without
        // waiting for the whole head.
        if stream_paths.is_empty() || !is_get_prefix(&buf) {
            return First::Hyper(Replay::unfinished(io, buf, deadline));
        }
        match parse(&buf, stream_paths) {
            Parsed::Partial if buf.len() < MAX_HEAD => continue,
            Parsed::Direct(head) => break head,
            Parsed::Partial | Parsed::Hyper => {
                return First::Hyper(Replay::unfinished(io, buf, deadline));
            }
        }
    };
    let Head {
        mut request,
        len,
        version,
        keep_alive,
    } = *head;
    let rest = buf.split_off(len);
    drop(buf);
    let http10 = version == Version::HTTP_10;
    request.extensions_mut().insert(ConnectInfo(remote));
    let Ok(response) = Box::pin(router.clone().call(request)).await;
    match respond(&mut io, response, keep_alive, http10).await {
        Ok(Outcome::Reusable) => First::Hyper(Replay::new(io, rest)),
        // Everything of this phase (this future, the request, the response
        // head) is freed when it returns; the stream keeps only its own.
        Ok(Outcome::Stream { body, chunked }) => First::Stream(Box::pin(stream(io, body, chunked))),
        Ok(Outcome::Closed) | Err(_) => {
            let _ = io.shutdown().await;
            First::Done
        }
    }
}

/// Reads once into the spare capacity of `buf` (grown if full).
async fn read_more<I: AsyncRead + Unpin>(io: &mut I, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.len().max(FIRST_READ));
    }
    io.read_buf(buf).await
}

/// Whether what was read so far can still be a `GET` request line.
fn is_get_prefix(buf: &[u8]) -> bool {
    let n = buf.len().min(4);
    buf[..n] == b"GET "[..n]
}

/// A request head that this module answers.
struct Head {
    request: Request<Body>,
    len: usize,
    version: Version,
    keep_alive: bool,
}

enum Parsed {
    Partial,
    /// Boxed: it is short-lived, and the task's future keeps room for it.
    Direct(Box<Head>),
    Hyper,
}

fn parse(buf: &[u8], stream_paths: &[&str]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    if req.method != Some("GET") {
        return Parsed::Hyper;
    }
    let Some(target) = req.path else {
        return Parsed::Hyper;
    };
    let path = target.split('?').next().unwrap_or(target);
    if !stream_paths.contains(&path) {
        return Parsed::Hyper;
    }
    let version = match req.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Parsed::Hyper,
    };
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut builder = Request::builder()
        .method(Method::GET)
        .uri(target)
        .version(version);
    for h in req.headers.iter() {
        let name = h.name;
        // Bodies, upgrades and `Expect` are hyper's business.
        if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
            || (name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
        {
            return Parsed::Hyper;
        }
        if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Hyper;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(Body::empty()) else {
        return Parsed::Hyper;
    };
    let keep_alive = match version {
        Version::HTTP_11 => !connection_close,
        _ => connection_keep_alive && !connection_close,
    };
    Parsed::Direct(Box::new(Head {
        request,
        len,
        version,
        keep_alive,
    }))
}

enum Outcome {
    /// A complete response on a connection that stays open.
    Reusable,
    /// The connection is to be closed.
    Closed,
    /// The head (and the first frame, if it was ready) is written; the
    /// body's other frames follow ([`stream`]), then the connection closes.
    Stream {
        body: Body,
        /// Chunked transfer coding (HTTP/1.1), else until close (HTTP/1.0).
        chunked: bool,
    },
}

/// Writes `response`: with `content-length` when its body's size is known;
/// otherwise its head (with the first frame, if ready) and
/// [`Outcome::Stream`] for the rest (chunked, or until close for HTTP/1.0).
async fn respond<I>(
    io: &mut I,
    response: Response<Body>,
    keep_alive: bool,
    http10: bool,
) -> io::Result<Outcome>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let (parts, mut body) = response.into_parts();
    let exact = body.size_hint().exact();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or("Unknown")
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    // A handler that asks for the connection to close gets it closed.
    let keep_alive = keep_alive
        && !parts.headers.get_all(CONNECTION).iter().any(|v| {
            v.as_bytes()
                .split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        });
    for (name, value) in &parts.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        push_header(&mut head, name.as_str(), value.as_bytes());
    }
    if !parts.headers.contains_key(DATE) {
        push_header(
            &mut head,
            "date",
            httpdate::fmt_http_date(SystemTime::now()).as_bytes(),
        );
    }
    if let Some(len) = exact {
        push_header(&mut head, "content-length", len.to_string().as_bytes());
        match (keep_alive, http10) {
            (false, false) => push_header(&mut head, "connection", b"close"),
            (true, true) => push_header(&mut head, "connection", b"keep-alive"),
            _ => {}
        }
        head.extend_from_slice(b"\r\n");
        let data = body.collect().await.map_err(io::Error::other)?.to_bytes();
        head.extend_from_slice(&data);
        io.write_all(&head).await?;
        io.flush().await?;
        return Ok(if keep_alive {
            Outcome::Reusable
        } else {
            Outcome::Closed
        });
    }
    let chunked = !http10;
    if chunked {
        push_header(&mut head, "transfer-encoding", b"chunked");
    }
    push_header(&mut head, "connection", b"close");
    head.extend_from_slice(b"\r\n");
    // The stream's first frame (the SSE preamble or replay) usually exists
    // already: then the head goes out with it in one write. Otherwise (or if
    // that frame carries no data) the head goes out alone, at once.
    let head = Bytes::from(head);
    match body.frame().now_or_never() {
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if !data.is_empty() => write_data(io, Some(head), data, chunked).await?,
            // Trailers or an empty chunk (which would end a chunked body):
            // nothing to send but the head.
            _ => io.write_all(&head).await?,
        },
        Some(None) => {
            let end: &[u8] = if chunked { b"0\r\n\r\n" } else { b"" };
            write_after_head(io, Some(head), end).await?;
            io.flush().await?;
            return Ok(Outcome::Closed);
        }
        // A failing body aborts the response: the client sees a truncated
        // stream rather than a clean end (as with hyper).
        Some(Some(Err(_))) => {
            io.flush().await?;
            return Ok(Outcome::Closed);
        }
        None => io.write_all(&head).await?,
    }
    Ok(Outcome::Stream { body, chunked })
}

/// The rest of a streamed response whose head is written: each frame as it
/// comes, until the body ends, fails or the client goes away; then the
/// connection closes.
///
/// This future is what an idle event stream holds for as long as it is
/// open, so it keeps only the socket and the body (see the size test).
async fn stream<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, mut body: Body, chunked: bool) {
    if pump(&mut io, &mut body, chunked).await.is_ok() {
        let _ = io.flush().await;
    }
    let _ = io.shutdown().await;
}

/// Writes `body`'s frames to `io` until it ends (with the chunked body's
/// end when `chunked`), fails, or the client goes away.
async fn pump<I: AsyncRead + AsyncWrite + Unpin>(
    io: &mut I,
    body: &mut Body,
    chunked: bool,
) -> io::Result<()> {
    loop {
        let frame = match next_frame(io, body).await {
            Next::Frame(Some(Ok(frame))) => frame,
            Next::Frame(None) => {
                if chunked {
                    io.write_all(b"0\r\n\r\n").await?;
                }
                return Ok(());
            }
            // A failing body aborts the response: the client sees a
            // truncated stream rather than a clean end (as with hyper).
            Next::Frame(Some(Err(_))) | Next::Gone => return Ok(()),
        };
        // Trailers are not sent; an empty chunk would end a chunked body.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        // Written here rather than through `write_data`: this future is
        // what every open stream holds, and that one's state (with the
        // response head it may carry) would make it larger.
        if chunked {
            let mut size = [0u8; 18];
            let size = chunk_size_line(data.len(), &mut size);
            io.write_all_buf(&mut Buf::chain(size, data).chain(&b"\r\n"[..]))
                .await?;
        } else {
            io.write_all_buf(&mut { data }).await?;
        }
    }
}

/// One frame's data (after the response head, if it has not gone out
/// yet): a chunk when `chunked`, else the bytes as they are.
async fn write_data<I: AsyncWrite + Unpin>(
    io: &mut I,
    head: Option<Bytes>,
    data: Bytes,
    chunked: bool,
) -> io::Result<()> {
    if chunked {
        let mut size = [0u8; 18];
        let size = chunk_size_line(data.len(), &mut size);
        write_chunk(io, head, size, data).await
    } else {
        write_after_head(io, head, &data).await
    }
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &[u8]) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n");
}

/// One chunk in one vectored write: the response head (before the first
/// chunk), the size line, the shared frame bytes, the CRLF.
async fn write_chunk<I: AsyncWrite + Unpin>(
    io: &mut I,
    head: Option<Bytes>,
    size: &[u8],
    data: Bytes,
) -> io::Result<()> {
    let head = head.unwrap_or_default();
    let mut buf = head.chain(size).chain(data).chain(&b"\r\n"[..]);
    io.write_all_buf(&mut buf).await
}

/// `bytes`, after the response head if it has not gone out yet, in one
/// vectored write.
async fn write_after_head<I: AsyncWrite + Unpin>(
    io: &mut I,
    head: Option<Bytes>,
    bytes: &[u8],
) -> io::Result<()> {
    let mut buf = head.unwrap_or_default().chain(bytes);
    io.write_all_buf(&mut buf).await
}

/// `<len in hex>\r\n` in `out` (on the stack: no allocation per chunk).
fn chunk_size_line(len: usize, out: &mut [u8; 18]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1) as usize;
    for i in 0..digits {
        out[digits - 1 - i] = HEX[(len >> (4 * i)) & 0xf];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    &out[..digits + 2]
}

type FrameResult = Option<Result<http_body::Frame<Bytes>, axum::Error>>;

enum Next {
    Frame(FrameResult),
    /// The client closed its side or the socket failed.
    Gone,
}

/// The body's next frame, or [`Next::Gone`] if the client goes away first.
async fn next_frame<I: AsyncRead + Unpin>(io: &mut I, body: &mut Body) -> Next {
    poll_fn(|cx| {
        if let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) {
            return Poll::Ready(Next::Frame(frame));
        }
        watch_client(io, cx)
    })
    .await
}

/// Reads (and discards) what the client sends while its stream is open,
/// to learn when it closes. Bounded per poll so a client that keeps
/// sending cannot monopolise the task.
fn watch_client<I: AsyncRead + Unpin>(io: &mut I, cx: &mut Context<'_>) -> Poll<Next> {
    let mut scratch = [0u8; 64];
    for _ in 0..16 {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Next::Gone),
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return Poll::Ready(Next::Gone),
            Poll::Pending => return Poll::Pending,
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// A connection that yields `prefix` before reading from `io` again: hyper
/// gets the request bytes this module already read.
///
/// When the first request head is handed over unfinished, the connection
/// also keeps that head's deadline until the head's end (its empty line)
/// has been read: a read still waiting for it then fails with `TimedOut`,
/// and hyper closes the connection as its own header timeout would.
pub(crate) struct Replay<I> {
    io: I,
    prefix: Option<Bytes>,
    /// Dropped once the head is complete: most connections never carry one.
    head: Option<HeadDeadline>,
}

/// The first head's deadline, and how far its end has been seen.
struct HeadDeadline {
    sleep: Pin<Box<tokio::time::Sleep>>,
    end: HeadEnd,
}

/// Finds the empty line that ends a request head (`\r\n\r\n`, or with bare
/// LFs as `httparse` also accepts them), one byte at a time.
#[derive(Debug, Clone, Copy, Default)]
struct HeadEnd {
    /// The last byte was the LF ending a line (possibly followed by a CR).
    line_start: bool,
    cr: bool,
}

impl HeadEnd {
    /// Feeds `bytes`; whether the head's end is among them.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            match b {
                b'\n' if self.line_start => return true,
                b'\n' => {
                    self.line_start = true;
                    self.cr = false;
                }
                b'\r' if self.line_start && !self.cr => self.cr = true,
                _ => {
                    self.line_start = false;
                    self.cr = false;
                }
            }
        }
        false
    }
}

impl<I> Replay<I> {
    /// Whether the connection's first request is a `GET` (as far as read:
    /// an empty prefix, a connection kept after a direct answer, counts as
    /// one).
    pub(crate) fn is_get(&self) -> bool {
        self.prefix.as_ref().is_none_or(|p| is_get_prefix(p))
    }

    fn new(io: I, prefix: Vec<u8>) -> Replay<I> {
        let prefix = (!prefix.is_empty()).then(|| Bytes::from(prefix));
        Replay {
            io,
            prefix,
            head: None,
        }
    }

    /// `prefix` starts a request head that may not be complete: until it
    /// is, reads fail with `TimedOut` after `deadline`.
    fn unfinished(io: I, prefix: Vec<u8>, deadline: tokio::time::Instant) -> Replay<I> {
        let mut end = HeadEnd::default();
        let complete = end.feed(&prefix);
        let mut replay = Replay::new(io, prefix);
        if !complete {
            replay.head = Some(HeadDeadline {
                sleep: Box::pin(tokio::time::sleep_until(deadline)),
                end,
            });
        }
        replay
    }
}

impl<I: super::Rehome> super::Rehome for Replay<I> {
    fn rehome(&mut self) -> io::Result<()> {
        // The head's deadline was set on the old runtime's timer.
        if let Some(head) = self.head.as_mut() {
            let deadline = head.sleep.deadline();
            head.sleep = Box::pin(tokio::time::sleep_until(deadline));
        }
        self.io.rehome()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Replay<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(prefix) = self.prefix.as_mut() {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if prefix.is_empty() {
                self.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        let this = &mut *self;
        let Some(head) = this.head.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if head.end.feed(&buf.filled()[before..]) {
                    this.head = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match head.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request head took too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Replay<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const PATHS: &[&str] = &["/api/v1/events"];

    fn returned_size<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What an open event stream holds while it waits for its next frame:
    /// the socket, the body, the wait and the write in progress. (The whole
    /// first request's state, ~1,600 bytes, stayed in it before.)
    #[test]
    fn an_open_stream_keeps_only_its_own_state() {
        type Served = event_core::WriteTimeoutIo<crate::serve::listener::CappedStream>;
        let size = returned_size(stream::<Served>);
        println!("stream: {size} bytes");
        assert!(size <= 512, "the stream's future grew to {size} bytes");
    }

    fn direct(raw: &[u8]) -> Box<Head> {
        match parse(raw, PATHS) {
            Parsed::Direct(head) => head,
            Parsed::Partial => panic!("partial: {}", String::from_utf8_lossy(raw)),
            Parsed::Hyper => panic!("left to hyper: {}", String::from_utf8_lossy(raw)),
        }
    }

    fn to_hyper(raw: &[u8]) -> bool {
        matches!(parse(raw, PATHS), Parsed::Hyper)
    }

    #[test]
    fn a_plain_get_of_a_stream_path_is_answered_here() {
        let raw = b"GET /api/v1/events?events=JobFailed HTTP/1.1\r\nHost: x\r\n\
                    Last-Event-ID: 12\r\n\r\nGET /next";
        let head = direct(raw);
        assert_eq!(head.len, raw.len() - b"GET /next".len());
        assert_eq!(head.version, Version::HTTP_11);
        assert!(head.keep_alive);
        assert_eq!(head.request.uri(), "/api/v1/events?events=JobFailed");
        assert_eq!(head.request.headers()["last-event-id"], "12");
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        assert!(matches!(
            parse(b"GET /api/v1/events HTTP/1.1\r\nHo", PATHS),
            Parsed::Partial
        ));
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for raw in [
            &b"POST /api/v1/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"[..],
            b"HEAD /api/v1/events HTTP/1.1\r\n\r\n",
            b"GET /api/v1/events/history HTTP/1.1\r\n\r\n",
            b"GET /api/v1/ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /api/v1/events HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET /api/v1/events HTTP/1.1\r\nBad Header: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(to_hyper(raw), "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn chunk_size_lines_are_lowercase_hex() {
        for len in [1usize, 9, 10, 255, 256, 4096, 0x1_2345, usize::MAX] {
            let mut out = [0u8; 18];
            assert_eq!(
                chunk_size_line(len, &mut out),
                format!("{len:x}\r\n").as_bytes(),
                "{len}"
            );
        }
    }

    #[test]
    fn only_a_get_prefix_waits_for_the_whole_head() {
        assert!(is_get_prefix(b"GE"));
        assert!(is_get_prefix(b"GET /api"));
        assert!(!is_get_prefix(b"POST /api"));
        assert!(!is_get_prefix(b"GETX"));
        assert!(!is_get_prefix(b"\x16\x03"));
    }

    #[test]
    fn a_zero_content_length_is_no_body() {
        direct(b"GET /api/v1/events HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        let cases: [(&[u8], bool); 5] = [
            (b"GET /api/v1/events HTTP/1.1\r\n\r\n", true),
            (
                b"GET /api/v1/events HTTP/1.1\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                b"GET /api/v1/events HTTP/1.1\r\nConnection: TE, Close\r\n\r\n",
                false,
            ),
            (b"GET /api/v1/events HTTP/1.0\r\n\r\n", false),
            (
                b"GET /api/v1/events HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
        ];
        for (raw, keep_alive) in cases {
            assert_eq!(
                direct(raw).keep_alive,
                keep_alive,
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
