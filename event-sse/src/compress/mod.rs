//! Compressed event streams: `Content-Encoding` gzip, br or zstd, chosen by
//! the request's `Accept-Encoding` (docs/protocol.md §3, "Compression").
//!
//! # Model
//!
//! A compressor keeps state per stream, so compressing each connection's
//! stream would cost every connection the compression of every event it
//! receives, and its compressor's memory for as long as it is open. Here the
//! work is done once per event instead. All three formats can be written as
//! a sequence of independent pieces that any decoder reads as one stream:
//! deflate blocks that end on a byte boundary ([`gzip`]), brotli meta-blocks
//! that refer to nothing before them ([`brotli`]), whole zstd frames
//! ([`zstd`]). So each event's frame is compressed once per format into such
//! a piece, cached on the event beside its plain frame (a *pack*, rendered
//! for the encodings in use), and every connection writes those same bytes,
//! as it writes the plain frame without compression.
//!
//! What a connection writes of its own — the confirmation, `events.lagged`,
//! `resync_required`, keep-alives, and the stream's start and end — goes in
//! pieces that need no compressor (stored deflate blocks, uncompressed
//! meta-blocks, raw zstd blocks); only a large one (over
//! [`TEXT_COMPRESS_MIN`]) is compressed for that connection. The state of a
//! compressed connection is a few integers ([`WireEncoder`]): gzip's running
//! CRC and length (for its trailer) and the last event it wrote.
//!
//! Pieces that refer to nothing compress an event on its own, which gains
//! little on small events (most of what repeats is in the events before).
//! gzip therefore has a second piece per event, a *delta* compressed after
//! the frame of the event before it on the bus: a connection whose previous
//! write was that very frame (one that receives every event, the common
//! case) writes the delta, about a third of the size.
//!
//! Each written chunk ends on a piece boundary, so a client decodes every
//! event as soon as its chunk arrives: the compressor holds nothing back.

pub(crate) mod brotli;
pub(crate) mod gzip;
pub(crate) mod zstd;

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::http::HeaderMap;
use axum::http::header::ACCEPT_ENCODING;
use bytes::{BufMut, Bytes, BytesMut};

/// Text a connection writes of its own (not a shared event frame) is
/// compressed for it from this size on; below, it goes uncompressed in the
/// encoding's framing (a few bytes more than plain).
pub const TEXT_COMPRESS_MIN: usize = 512;

/// Event frames below this size are not worth a compressor's time.
const FRAME_COMPRESS_MIN: usize = 64;

/// A content coding an event stream can be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `gzip` (RFC 1952).
    Gzip,
    /// `br`, brotli (RFC 7932).
    Br,
    /// `zstd`, Zstandard (RFC 8878).
    Zstd,
}

impl Encoding {
    /// Every encoding, in the server's order of preference: when a client
    /// accepts several equally, the first of these wins. gzip first: its
    /// delta pieces make it the smallest on the wire for a client that
    /// receives every event.
    pub const ALL: [Encoding; 3] = [Encoding::Gzip, Encoding::Br, Encoding::Zstd];

    /// The `Content-Encoding` token.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Br => "br",
            Encoding::Zstd => "zstd",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Encoding::Gzip => 1,
            Encoding::Br => 2,
            Encoding::Zstd => 4,
        }
    }

    fn parse(token: &str) -> Option<Encoding> {
        if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Some(Encoding::Gzip)
        } else if token.eq_ignore_ascii_case("br") {
            Some(Encoding::Br)
        } else if token.eq_ignore_ascii_case("zstd") {
            Some(Encoding::Zstd)
        } else {
            None
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The encodings an endpoint offers (the host's `SSE_COMPRESSION`).
///
/// `Default` offers all three; [`Compression::OFF`] none, so every stream
/// is plain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    bits: u8,
}

impl Compression {
    /// No compression: every stream is plain.
    pub const OFF: Compression = Compression { bits: 0 };
    /// gzip, br and zstd.
    pub const ALL: Compression = Compression { bits: 7 };

    /// Parses `on` (all), `off` (none) or a comma list of `gzip`, `br`,
    /// `zstd`; the error names what is wrong.
    pub fn parse(text: &str) -> Result<Compression, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("on") || text.eq_ignore_ascii_case("true") {
            return Ok(Compression::ALL);
        }
        if text.eq_ignore_ascii_case("off") || text.eq_ignore_ascii_case("false") {
            return Ok(Compression::OFF);
        }
        let mut bits = 0;
        for token in text.split(',').map(str::trim) {
            match Encoding::parse(token) {
                Some(e) => bits |= e.bit(),
                None => {
                    return Err(format!(
                        "unknown encoding {token:?}: expected `on`, `off` or a list of `gzip`, `br`, `zstd`"
                    ));
                }
            }
        }
        Ok(Compression { bits })
    }

    /// Whether `encoding` is offered.
    pub fn offers(self, encoding: Encoding) -> bool {
        self.bits & encoding.bit() != 0
    }

    /// Whether nothing is offered.
    pub fn is_off(self) -> bool {
        self.bits == 0
    }

    /// The encoding to send a request with `headers` (its
    /// `Accept-Encoding`) in, `None` for plain.
    ///
    /// The client's preference (q-values) decides; among equals the
    /// server's order ([`Encoding::ALL`]). A request without
    /// `Accept-Encoding` gets plain, as does one that accepts no offered
    /// encoding, or prefers `identity` (`identity;q=1, gzip;q=0.5`). A
    /// client that refuses `identity` too (`identity;q=0` or `*;q=0`) and
    /// accepts nothing offered still gets plain: an event stream has no
    /// better answer.
    pub fn negotiate(self, headers: &HeaderMap) -> Option<Encoding> {
        if self.is_off() {
            return None;
        }
        let accept = AcceptEncoding::parse(headers)?;
        let mut best: Option<(u16, Encoding)> = None;
        for encoding in Encoding::ALL {
            if !self.offers(encoding) {
                continue;
            }
            let q = accept.q(encoding);
            if q > 0 && best.is_none_or(|(b, _)| q > b) {
                best = Some((q, encoding));
            }
        }
        let (q, encoding) = best?;
        // Plain only when the client named it and prefers it.
        match accept.identity {
            Some(identity) if identity > q => None,
            _ => Some(encoding),
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Compression::ALL
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        let names: Vec<&str> = Encoding::ALL
            .iter()
            .filter(|e| self.offers(**e))
            .map(|e| e.as_str())
            .collect();
        f.write_str(&names.join(","))
    }
}

impl fmt::Debug for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Compression({self})")
    }
}

/// What `Accept-Encoding` says, in thousandths (q=0.5 is 500).
#[derive(Debug, Default)]
struct AcceptEncoding {
    named: [Option<u16>; 3],
    star: Option<u16>,
    identity: Option<u16>,
}

impl AcceptEncoding {
    /// `None` without the header (or with one that is not text).
    fn parse(headers: &HeaderMap) -> Option<AcceptEncoding> {
        let mut seen = false;
        let mut accept = AcceptEncoding::default();
        for value in headers.get_all(ACCEPT_ENCODING) {
            let Ok(text) = value.to_str() else {
                continue;
            };
            seen = true;
            for item in text.split(',') {
                let mut parts = item.split(';');
                let token = parts.next().unwrap_or_default().trim();
                if token.is_empty() {
                    continue;
                }
                let mut q = Some(1000);
                for param in parts {
                    let Some((name, value)) = param.split_once('=') else {
                        continue;
                    };
                    if name.trim().eq_ignore_ascii_case("q") {
                        q = parse_q(value.trim());
                    }
                }
                // A malformed q-value: the entry is ignored.
                let Some(q) = q else {
                    continue;
                };
                if token == "*" {
                    accept.star = Some(q);
                } else if token.eq_ignore_ascii_case("identity") {
                    accept.identity = Some(q);
                } else if let Some(e) = Encoding::parse(token) {
                    let slot = &mut accept.named[Encoding::ALL.iter().position(|x| *x == e)?];
                    // `gzip` and `x-gzip` both named: the higher counts.
                    *slot = Some(slot.map_or(q, |old| old.max(q)));
                }
            }
        }
        seen.then_some(accept)
    }

    fn q(&self, encoding: Encoding) -> u16 {
        let i = Encoding::ALL
            .iter()
            .position(|x| *x == encoding)
            .unwrap_or_default();
        self.named[i].or(self.star).unwrap_or(0)
    }
}

/// A q-value (RFC 9110 §12.4.2): `0`, `1`, `0.x` or `1.0` with at most
/// three decimals, in thousandths.
fn parse_q(text: &str) -> Option<u16> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = frac
        .bytes()
        .chain(std::iter::repeat(b'0'))
        .take(3)
        .fold(0u16, |n, b| n * 10 + u16::from(b - b'0'));
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Encodings some connection of this process has been sent in: the ones
/// an event's pack is rendered for. Never cleared, so that a pack rendered
/// while no such connection was open is the only kind that lacks one.
static SEEN: AtomicU8 = AtomicU8::new(0);

/// Notes that a connection will be sent in `encoding`, before it reads its
/// first event.
pub(crate) fn note_use(encoding: Encoding) {
    SEEN.fetch_or(encoding.bit(), Ordering::AcqRel);
}

/// Section flags of a pack.
const PACK_GZIP: u8 = 1;
const PACK_GZIP_DELTA: u8 = 2;
const PACK_BR: u8 = 4;
const PACK_ZSTD: u8 = 8;

/// The pack of an event's `frame`: its pieces in every encoding in use,
/// and, with `before` (the sequence number and frame, in the same format,
/// of the event right before it on the bus), gzip's delta piece.
///
/// Layout: a flags byte, then per section present, in flag order:
/// gzip `crc32, x^(8·len) mod P, len, piece length, piece`; gzip delta
/// `sequence before (u64), crc32 of the frame before, piece length, piece`;
/// br and zstd `piece length, piece`; integers little-endian, lengths u32.
pub(crate) fn pack(frame: &[u8], before: impl FnOnce() -> Option<(u64, Bytes)>) -> Bytes {
    let seen = SEEN.load(Ordering::Acquire);
    let mut out = BytesMut::with_capacity(frame.len() + 32);
    out.put_u8(0);
    let mut flags = 0;
    let small = frame.len() < FRAME_COMPRESS_MIN;
    if seen & Encoding::Gzip.bit() != 0 {
        flags |= PACK_GZIP;
        let len = frame.len() as u64;
        out.put_u32_le(crc32fast::hash(frame));
        out.put_u32_le(gzip::shift(len));
        out.put_u32_le(len as u32);
        let alone = if small {
            None
        } else {
            gzip::deflate(None, frame)
        };
        let alone_len = alone
            .as_ref()
            .map_or_else(|| gzip::stored_len(frame), Vec::len);
        put_piece(&mut out, |out| match &alone {
            Some(piece) => out.extend_from_slice(piece),
            None => gzip::stored(frame, out),
        });
        if !small
            && let Some((seq, prev)) = before()
            && let Some(delta) = gzip::deflate(Some(&prev), frame)
            && delta.len() < alone_len
        {
            flags |= PACK_GZIP_DELTA;
            out.put_u64_le(seq);
            out.put_u32_le(crc32fast::hash(&prev));
            put_piece(&mut out, |out| out.extend_from_slice(&delta));
        }
    }
    if seen & Encoding::Br.bit() != 0 {
        flags |= PACK_BR;
        let piece = if small { None } else { brotli::compress(frame) };
        put_piece(&mut out, |out| match &piece {
            Some(piece) => out.extend_from_slice(piece),
            None => brotli::uncompressed(frame, out),
        });
    }
    if seen & Encoding::Zstd.bit() != 0 {
        flags |= PACK_ZSTD;
        let piece = if small { None } else { zstd::compress(frame) };
        put_piece(&mut out, |out| match &piece {
            Some(piece) => out.extend_from_slice(piece),
            None => zstd::raw(frame, out),
        });
    }
    out[0] = flags;
    out.freeze()
}

/// Appends a u32 length and what `write` appends.
fn put_piece(out: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u32_le(0);
    write(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The parts of a pack, as ranges into it.
#[derive(Debug, Default)]
struct PackView {
    gzip: Option<(u32, u32, u32, Range<usize>)>,
    delta: Option<(u64, u32, Range<usize>)>,
    br: Option<Range<usize>>,
    zstd: Option<Range<usize>>,
}

impl PackView {
    /// `None` for bytes that are not a pack (never the case for what
    /// [`pack`] made).
    fn parse(pack: &[u8]) -> Option<PackView> {
        let mut at = 1;
        let u32_at = |at: &mut usize| -> Option<u32> {
            let b = pack.get(*at..*at + 4)?;
            *at += 4;
            Some(u32::from_le_bytes(b.try_into().ok()?))
        };
        let piece = |at: &mut usize| -> Option<Range<usize>> {
            let len = u32_at(at)? as usize;
            let range = *at..*at + len;
            pack.get(range.clone())?;
            *at += len;
            Some(range)
        };
        let flags = *pack.first()?;
        let mut view = PackView::default();
        if flags & PACK_GZIP != 0 {
            let (crc, shift, len) = (u32_at(&mut at)?, u32_at(&mut at)?, u32_at(&mut at)?);
            view.gzip = Some((crc, shift, len, piece(&mut at)?));
        }
        if flags & PACK_GZIP_DELTA != 0 {
            let seq = u64::from_le_bytes(pack.get(at..at + 8)?.try_into().ok()?);
            at += 8;
            let crc = u32_at(&mut at)?;
            view.delta = Some((seq, crc, piece(&mut at)?));
        }
        if flags & PACK_BR != 0 {
            view.br = Some(piece(&mut at)?);
        }
        if flags & PACK_ZSTD != 0 {
            view.zstd = Some(piece(&mut at)?);
        }
        Some(view)
    }
}

/// Where a connection's compressed bytes go: shared pieces are passed on
/// without a copy where possible.
pub(crate) trait Sink {
    /// Appends bytes shared with other connections.
    fn shared(&mut self, bytes: Bytes);
    /// The buffer to append this connection's own bytes to.
    fn buf(&mut self) -> &mut BytesMut;
}

/// One connection's encoder: what it needs to keep between writes.
#[derive(Debug)]
pub(crate) struct WireEncoder {
    encoding: Encoding,
    /// gzip: the CRC-32 and length (mod 2^32) of everything written.
    crc: u32,
    size: u32,
    /// The sequence number and CRC-32 of the event frame that was the
    /// last thing written (0: something else was, or nothing yet). A delta
    /// piece is written only right after the very bytes it was compressed
    /// after: same event, same CRC (an event read back from the log is
    /// another instance, whose frame must be the same bytes to qualify).
    last: (u64, u32),
}

impl WireEncoder {
    pub(crate) fn new(encoding: Encoding) -> Self {
        WireEncoder {
            encoding,
            crc: 0,
            size: 0,
            last: (0, 0),
        }
    }

    /// The encoding.
    pub(crate) fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// The bytes the stream starts with.
    pub(crate) fn header(&self, out: &mut BytesMut) {
        match self.encoding {
            Encoding::Gzip => out.extend_from_slice(&gzip::HEADER),
            Encoding::Br => out.extend_from_slice(&brotli::HEADER),
            Encoding::Zstd => {}
        }
    }

    /// The bytes the stream ends with.
    pub(crate) fn trailer(&self, out: &mut BytesMut) {
        match self.encoding {
            Encoding::Gzip => gzip::trailer(self.crc, self.size, out),
            Encoding::Br => out.extend_from_slice(&brotli::END),
            Encoding::Zstd => {}
        }
    }

    /// Writes this connection's own `text`.
    pub(crate) fn text(&mut self, text: &[u8], out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        self.last = (0, 0);
        self.fresh(text, text.len() >= TEXT_COMPRESS_MIN, out);
    }

    /// Writes `text` compressed for this connection alone if `compress`,
    /// else in the encoding's uncompressed framing.
    fn fresh(&mut self, text: &[u8], compress: bool, out: &mut BytesMut) {
        match self.encoding {
            Encoding::Gzip => {
                let mut hasher =
                    crc32fast::Hasher::new_with_initial_len(self.crc, self.size.into());
                hasher.update(text);
                self.crc = hasher.finalize();
                self.size = self.size.wrapping_add(text.len() as u32);
                match compress.then(|| gzip::deflate(None, text)).flatten() {
                    Some(piece) => out.extend_from_slice(&piece),
                    None => gzip::stored(text, out),
                }
            }
            Encoding::Br => match compress.then(|| brotli::compress(text)).flatten() {
                Some(piece) => out.extend_from_slice(&piece),
                None => brotli::uncompressed(text, out),
            },
            Encoding::Zstd => match compress.then(|| zstd::compress(text)).flatten() {
                Some(piece) => out.extend_from_slice(&piece),
                None => zstd::raw(text, out),
            },
        }
    }

    /// Writes the frame of the event `seq` from its `pack`, the bytes
    /// every connection shares; without a pack (or one lacking this
    /// encoding), compresses `frame` for this connection.
    pub(crate) fn event(
        &mut self,
        seq: u64,
        frame: &[u8],
        pack: Option<&Bytes>,
        sink: &mut impl Sink,
    ) {
        let view = pack.and_then(|p| PackView::parse(p));
        let after = std::mem::replace(&mut self.last, (seq, 0));
        let shared = match (self.encoding, &view, pack) {
            (Encoding::Gzip, Some(view), Some(pack)) => {
                view.gzip.as_ref().map(|(crc, shift, len, alone)| {
                    self.crc = gzip::combine(self.crc, *crc, *shift);
                    self.size = self.size.wrapping_add(*len);
                    self.last.1 = *crc;
                    match &view.delta {
                        Some((before, before_crc, delta))
                            if after.0 != 0 && (*before, *before_crc) == after =>
                        {
                            pack.slice(delta.clone())
                        }
                        _ => pack.slice(alone.clone()),
                    }
                })
            }
            (Encoding::Br, Some(view), Some(pack)) => view.br.clone().map(|r| pack.slice(r)),
            (Encoding::Zstd, Some(view), Some(pack)) => view.zstd.clone().map(|r| pack.slice(r)),
            _ => None,
        };
        match shared {
            Some(bytes) => sink.shared(bytes),
            None => {
                if self.encoding == Encoding::Gzip {
                    self.last.1 = crc32fast::hash(frame);
                }
                self.fresh(frame, frame.len() >= FRAME_COMPRESS_MIN, sink.buf());
            }
        }
    }
}

#[cfg(test)]
mod tests;
