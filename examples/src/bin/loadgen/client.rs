//! Subscriber clients: WebSocket (tokio-tungstenite) and SSE (a raw
//! `TcpStream`, so that the load client stays cheaper than the server).
//!
//! Each probe event's `message` starts with `t=<unix nanos>;n=<counter>;`;
//! a client finds it with a byte scan (the first `=` of the frame), records
//! the latency and checks the counter for gaps. No JSON parse per event.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::hist::Histogram;
use crate::http::Target;
use crate::wsraw::{Msg, RawWs};

/// The most counters a client tracks (64 per word): 1 M words, 64 M events.
const MAX_SEEN_WORDS: usize = 1 << 20;

/// Close code of a WebSocket dropped as a slow consumer (docs/protocol.md §2).
const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// Which transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WebSocket `/api/v1/ws`.
    Ws,
    /// SSE `/api/v1/events`.
    Sse,
}

/// The WebSocket client the subscribers use (`--ws-client`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WsClient {
    /// tokio-tungstenite (no extension offered).
    #[default]
    Tungstenite,
    /// This crate's raw client, counting the bytes on the wire; no
    /// extension offered.
    Raw,
    /// The raw client offering permessage-deflate.
    Deflate,
}

/// Where and how clients connect.
#[derive(Debug, Clone)]
pub struct SubConfig {
    /// The server.
    pub target: Target,
    /// WebSocket path and query.
    pub ws_path: String,
    /// SSE path and query.
    pub sse_path: String,
    /// How long a connection may take to deliver its first frame.
    pub connect_timeout: Duration,
    /// The WebSocket client.
    pub ws_client: WsClient,
}

/// Counters all clients add to, read by the progress line and the end check.
#[derive(Debug, Default)]
pub struct Shared {
    /// Probe events received.
    pub received: AtomicU64,
    /// Probe events missing (counter gaps).
    pub lost: AtomicU64,
    /// Lag signals (SSE `events.lagged`, WebSocket close 4008).
    pub lag_signals: AtomicU64,
    /// Connections that delivered their first frame.
    pub established: AtomicU64,
    /// Connections that failed to establish.
    pub failed: AtomicU64,
    /// Sum over live clients of the next counter each expects.
    pub progress: AtomicU64,
    /// Clients still connected.
    pub live: AtomicU64,
    /// Unix nanoseconds of the latest probe event received by any client.
    pub last_receive: AtomicU64,
}

impl Shared {
    /// Waits until every live client has all of the first `per_client`
    /// probe events, for at most `limit`, giving up earlier when nothing
    /// arrives for 2 s; `true` when complete.
    pub async fn settle(&self, per_client: u64, limit: Duration, poll: Duration) -> bool {
        let complete = || {
            self.progress.load(Ordering::Relaxed) >= per_client * self.live.load(Ordering::Relaxed)
        };
        let started = std::time::Instant::now();
        let (mut seen, mut last_progress) = (u64::MAX, std::time::Instant::now());
        while !complete()
            && started.elapsed() < limit
            && last_progress.elapsed() < Duration::from_secs(2)
        {
            tokio::time::sleep(poll).await;
            let now = self.received.load(Ordering::Relaxed);
            if now != seen {
                (seen, last_progress) = (now, std::time::Instant::now());
            }
        }
        complete()
    }
}

/// What one client saw.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Cluster mode: the instance this client is connected to.
    pub home: Option<u64>,
    /// Cluster mode: probe events received more than once.
    pub duplicates: u64,
    /// Cluster mode: latency of events published on this client's instance.
    pub same_latency: Histogram,
    /// Cluster mode: latency of events published on another instance.
    pub cross_latency: Histogram,
    /// The client's transport (`None` when it never connected).
    pub kind: Option<Kind>,
    /// Probe events received.
    pub received: u64,
    /// Counter gaps.
    pub lost: u64,
    /// Lag signals.
    pub lag_signals: u64,
    /// Counters that went backwards (duplicates or reordering).
    pub out_of_order: u64,
    /// The next counter expected (= highest seen + 1).
    pub next: u64,
    /// The connection ended before it was told to stop.
    pub dropped: bool,
    /// Why it failed to connect, if it did.
    pub error: Option<String>,
    /// Publish → receive latency, nanoseconds.
    pub latency: Histogram,
    /// Raw WebSocket client: bytes read off the socket after the upgrade.
    pub wire_bytes: u64,
    /// Raw WebSocket client: messages that came compressed.
    pub compressed: u64,
    /// The probe counters received, one bit each (to count the deliveries
    /// of acknowledged events, whatever order they came in).
    pub seen: Vec<u64>,
}

impl ClientStats {
    /// How many of the events in `acked` (a bitmap of counters) this
    /// client received.
    pub fn received_of(&self, acked: &[u64]) -> u64 {
        self.seen
            .iter()
            .zip(acked)
            .map(|(s, a)| u64::from((s & a).count_ones()))
            .sum()
    }
}

/// Current Unix time in nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn digits(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let end = bytes
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(bytes.len());
    if end == 0 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &bytes[..end] {
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some((v, &bytes[end..]))
}

/// The probe `(t, n)` of a frame: `t=<digits>;n=<digits>;` at its first `=`.
pub fn parse_probe(frame: &[u8]) -> Option<(u64, u64)> {
    parse_probe_origin(frame).map(|(t, n, _)| (t, n))
}

/// The probe `(t, n, origin)` of a frame: `t=<digits>;n=<digits>;` and,
/// in cluster mode, `o=<digits>;` (the instance it was published on).
pub fn parse_probe_origin(frame: &[u8]) -> Option<(u64, u64, Option<u64>)> {
    let eq = memchr::memchr(b'=', frame)?;
    if eq == 0 || frame[eq - 1] != b't' {
        return None;
    }
    let (t, rest) = digits(&frame[eq + 1..])?;
    let rest = rest.strip_prefix(b";n=")?;
    let (n, rest) = digits(rest)?;
    let origin = rest.strip_prefix(b";o=").and_then(digits).map(|(o, _)| o);
    Some((t, n, origin))
}

/// Applies probes to one client's stats and mirrors them into `Shared`.
struct Tracker {
    stats: ClientStats,
    shared: Arc<Shared>,
    flushed: (u64, u64, u64),
    flushed_next: u64,
    last_probe_at: u64,
}

impl Tracker {
    fn new(shared: Arc<Shared>, home: Option<u64>) -> Self {
        Tracker {
            stats: ClientStats {
                home,
                ..ClientStats::default()
            },
            shared,
            flushed: (0, 0, 0),
            flushed_next: 0,
            last_probe_at: 0,
        }
    }

    fn probe(&mut self, t: u64, n: u64, origin: Option<u64>, now: u64) {
        let s = &mut self.stats;
        // Every counter once: in cluster mode events from several instances
        // arrive in the stream's order, not the counter's, so gaps say
        // nothing; in both modes what counts at the end is which
        // acknowledged events arrived.
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if word >= MAX_SEEN_WORDS {
            // Not a counter this tool published.
            return;
        }
        if word >= s.seen.len() {
            s.seen.resize(word + 1, 0);
        }
        let repeat = s.seen[word] & bit != 0;
        s.seen[word] |= bit;
        if let Some(home) = s.home {
            if repeat {
                s.duplicates += 1;
                return;
            }
            s.received += 1;
            // Distinct events so far: what the end check compares.
            s.next = s.received;
            let latency = now.saturating_sub(t);
            s.latency.record(latency);
            if origin == Some(home) {
                s.same_latency.record(latency);
            } else {
                s.cross_latency.record(latency);
            }
            self.last_probe_at = now;
            return;
        }
        if n < s.next {
            s.out_of_order += 1;
            return;
        }
        s.lost += n - s.next;
        s.next = n + 1;
        s.received += 1;
        s.latency.record(now.saturating_sub(t));
        self.last_probe_at = now;
    }

    fn flush(&mut self) {
        let s = &self.stats;
        let (r, l, g) = self.flushed;
        if s.received != r {
            self.shared
                .received
                .fetch_add(s.received - r, Ordering::Relaxed);
            self.shared
                .last_receive
                .fetch_max(self.last_probe_at, Ordering::Relaxed);
        }
        if s.lost != l {
            self.shared.lost.fetch_add(s.lost - l, Ordering::Relaxed);
        }
        if s.lag_signals != g {
            self.shared
                .lag_signals
                .fetch_add(s.lag_signals - g, Ordering::Relaxed);
        }
        if s.next != self.flushed_next {
            self.shared
                .progress
                .fetch_add(s.next - self.flushed_next, Ordering::Relaxed);
            self.flushed_next = s.next;
        }
        self.flushed = (s.received, s.lost, s.lag_signals);
    }

    /// The client is gone: its progress no longer counts towards completion.
    fn leave(mut self, dropped: bool) -> ClientStats {
        self.flush();
        self.shared
            .progress
            .fetch_sub(self.flushed_next, Ordering::Relaxed);
        self.shared.live.fetch_sub(1, Ordering::Relaxed);
        self.stats.dropped = dropped;
        self.stats
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket and waits for its first text frame (the `QueueStatus`).
pub async fn ws_connect(cfg: &SubConfig) -> Result<Ws, String> {
    let connect = async {
        let stream = crate::source::connect(cfg.target.addr)
            .await
            .map_err(|e| format!("ws connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let url = format!("ws://{}{}", cfg.target.authority, cfg.ws_path);
        let (mut ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .map_err(|e| format!("ws handshake: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(_))) => return Ok(ws),
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("ws closed before the first frame: {frame:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("ws read: {e}")),
                None => return Err("ws ended before the first frame".to_owned()),
            }
        }
    };
    tokio::time::timeout(cfg.connect_timeout, connect)
        .await
        .map_err(|_| "ws: no first frame in time".to_owned())?
}

/// An SSE stream read by hand.
pub struct Sse {
    stream: TcpStream,
    /// Bytes as read (still chunk-encoded when `chunked`).
    raw: Vec<u8>,
    chunked: bool,
    chunk_left: usize,
    need_crlf: bool,
    ended: bool,
    /// Decoded event-stream text not yet split into frames.
    text: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
}

impl Sse {
    async fn read_more(&mut self) -> Result<bool, String> {
        let target = if self.chunked {
            &mut self.raw
        } else {
            &mut self.text
        };
        target.reserve(64 * 1024);
        let n = self
            .stream
            .read_buf(target)
            .await
            .map_err(|e| format!("sse read: {e}"))?;
        if n == 0 {
            return Ok(false);
        }
        if self.chunked {
            self.dechunk()?;
        }
        Ok(!self.ended)
    }

    /// Moves chunk data from `raw` to `text`.
    fn dechunk(&mut self) -> Result<(), String> {
        let mut pos = 0;
        loop {
            let avail = self.raw.len() - pos;
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(avail);
                if take == 0 {
                    break;
                }
                self.text.extend_from_slice(&self.raw[pos..pos + take]);
                pos += take;
                self.chunk_left -= take;
                self.need_crlf = self.chunk_left == 0;
                continue;
            }
            if self.need_crlf {
                if avail < 2 {
                    break;
                }
                pos += 2;
                self.need_crlf = false;
                continue;
            }
            let Some(end) = memchr::memmem::find(&self.raw[pos..], b"\r\n") else {
                break;
            };
            let line = String::from_utf8_lossy(&self.raw[pos..pos + end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("sse: bad chunk size {line:?}"))?;
            pos += end + 2;
            if size == 0 {
                self.ended = true;
                break;
            }
            self.chunk_left = size;
        }
        self.raw.drain(..pos);
        Ok(())
    }

    /// Calls `f` for every complete frame in the buffer, then drops them.
    fn frames(&mut self, mut f: impl FnMut(&[u8])) {
        let mut pos = 0;
        while let Some(end) = self.finder.find(&self.text[pos..]) {
            f(&self.text[pos..pos + end]);
            pos += end + 2;
        }
        self.text.drain(..pos);
    }
}

/// Opens an SSE stream and waits for its `QueueStatus` frame.
pub async fn sse_connect(cfg: &SubConfig) -> Result<Sse, String> {
    let connect = async {
        let mut stream = crate::source::connect(cfg.target.addr)
            .await
            .map_err(|e| format!("sse connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let req = format!(
            "GET {} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n",
            cfg.sse_path, cfg.target.authority
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("sse write: {e}"))?;
        let mut raw = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(end) = memchr::memmem::find(&raw, b"\r\n\r\n") {
                break end;
            }
            if raw.len() > 64 * 1024
                || stream
                    .read_buf(&mut raw)
                    .await
                    .map_err(|e| format!("sse read: {e}"))?
                    == 0
            {
                return Err("sse: no response head".to_owned());
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            let first = head.lines().next().unwrap_or("").to_owned();
            return Err(format!("sse: {first}"));
        }
        let chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        raw.drain(..head_end + 4);
        let mut sse = Sse {
            stream,
            raw: Vec::new(),
            chunked,
            chunk_left: 0,
            need_crlf: false,
            ended: false,
            text: Vec::with_capacity(4096),
            finder: memchr::memmem::Finder::new(b"\n\n").into_owned(),
        };
        if chunked {
            sse.raw = raw;
            sse.dechunk()?;
        } else {
            sse.text = raw;
        }
        loop {
            let mut confirmed = false;
            let mut rest = 0;
            let mut pos = 0;
            while let Some(end) = sse.finder.find(&sse.text[pos..]) {
                let frame = &sse.text[pos..pos + end];
                pos += end + 2;
                if memchr::memmem::find(frame, b"QueueStatus").is_some() {
                    confirmed = true;
                    rest = pos;
                    break;
                }
            }
            if confirmed {
                sse.text.drain(..rest);
                return Ok(sse);
            }
            if !sse.read_more().await? {
                return Err("sse ended before the QueueStatus frame".to_owned());
            }
        }
    };
    tokio::time::timeout(cfg.connect_timeout, connect)
        .await
        .map_err(|_| "sse: no QueueStatus frame in time".to_owned())?
}

fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// One measuring subscriber: connects (at most `permits` at a time), then
/// tracks probe events until `stop` turns true or the server closes.
pub async fn subscriber(
    kind: Kind,
    cfg: Arc<SubConfig>,
    shared: Arc<Shared>,
    permits: Arc<tokio::sync::Semaphore>,
    mut stop: watch::Receiver<bool>,
    home: Option<u64>,
) -> ClientStats {
    let permit = permits.acquire_owned().await;
    let connection = match (kind, cfg.ws_client) {
        (Kind::Ws, WsClient::Tungstenite) => ws_connect(&cfg).await.map(Either::Ws),
        (Kind::Ws, client) => RawWs::connect(&cfg, client == WsClient::Deflate)
            .await
            .map(|ws| Either::Raw(Box::new(ws))),
        (Kind::Sse, _) => sse_connect(&cfg).await.map(Either::Sse),
    };
    drop(permit);
    let connection = match connection {
        Ok(c) => c,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return ClientStats {
                error: Some(e),
                ..ClientStats::default()
            };
        }
    };
    shared.live.fetch_add(1, Ordering::Relaxed);
    shared.established.fetch_add(1, Ordering::Relaxed);
    let mut tracker = Tracker::new(shared, home);
    tracker.stats.kind = Some(kind);
    let dropped = match connection {
        Either::Ws(ws) => track_ws(ws, &mut tracker, &mut stop).await,
        Either::Raw(ws) => track_raw_ws(*ws, &mut tracker, &mut stop).await,
        Either::Sse(sse) => track_sse(sse, &mut tracker, &mut stop).await,
    };
    tracker.leave(dropped)
}

enum Either {
    Ws(Ws),
    Raw(Box<RawWs>),
    Sse(Sse),
}

/// [`track_ws`] for the raw client; its byte and compression counts go to
/// the client's stats.
async fn track_raw_ws(
    mut ws: RawWs,
    tracker: &mut Tracker,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let dropped = loop {
        if stopped(stop) {
            ws.close().await;
            break false;
        }
        tokio::select! {
            _ = stop.changed() => {}
            msg = ws.next() => match msg {
                Ok(Some(Msg::Text(text))) => {
                    if let Some((t, n, o)) = parse_probe_origin(&text) {
                        tracker.probe(t, n, o, unix_nanos());
                        tracker.flush();
                    } else if is_lag_signal(&text) {
                        tracker.stats.lag_signals += 1;
                    }
                }
                Ok(Some(Msg::Close(code))) => {
                    if code == Some(CLOSE_SLOW_CONSUMER) {
                        tracker.stats.lag_signals += 1;
                    }
                    break true;
                }
                Ok(None) | Err(_) => break true,
            },
        }
    };
    tracker.stats.wire_bytes = ws.wire_bytes;
    tracker.stats.compressed = ws.compressed;
    dropped
}

/// Returns whether the connection ended on its own.
async fn track_ws(mut ws: Ws, tracker: &mut Tracker, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        if stopped(stop) {
            let _ = ws.close(None).await;
            return false;
        }
        tokio::select! {
            _ = stop.changed() => {}
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    if let Some((t, n, o)) = parse_probe_origin(text.as_bytes()) {
                        tracker.probe(t, n, o, unix_nanos());
                        tracker.flush();
                    } else if is_lag_signal(text.as_bytes()) {
                        tracker.stats.lag_signals += 1;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if frame.is_some_and(|f| u16::from(f.code) == CLOSE_SLOW_CONSUMER) {
                        tracker.stats.lag_signals += 1;
                    }
                    return true;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return true,
            },
        }
    }
}

/// Whether a message that is not a probe is the server's `events.lagged`
/// (WebSocket and SSE alike; a WebSocket may also be closed with 4008).
fn is_lag_signal(message: &[u8]) -> bool {
    memchr::memmem::find(message, b"events.lagged").is_some()
}

async fn track_sse(mut sse: Sse, tracker: &mut Tracker, stop: &mut watch::Receiver<bool>) -> bool {
    loop {
        // Frames that arrived with the connection confirmation, then each read.
        let now = unix_nanos();
        sse.frames(|frame| {
            if let Some((t, n, o)) = parse_probe_origin(frame) {
                tracker.probe(t, n, o, now);
            } else if is_lag_signal(frame) {
                tracker.stats.lag_signals += 1;
            }
        });
        tracker.flush();
        if stopped(stop) {
            return false;
        }
        tokio::select! {
            _ = stop.changed() => {}
            more = sse.read_more() => if !matches!(more, Ok(true)) {
                return true;
            },
        }
    }
}
