//! permessage-deflate (RFC 7692 §7.2) on the wire: compressed frames out,
//! bounded inflation in.
//!
//! # Model
//!
//! Every connection that negotiated the extension ([`crate::extensions`])
//! agreed that the server takes no context over from one message to the
//! next. A compressed message therefore depends on nothing but its own
//! payload, and an event's compressed frame is the same bytes for every
//! such connection: it is rendered once per event ([`Framing::event`]),
//! cached in the event next to the plain frame, and written to each socket
//! as shared bytes — fan-out still copies no payload per connection.
//!
//! Which messages go compressed is the connection's [`Framing`]: data
//! messages whose payload has at least `min_bytes` (`WS_COMPRESS_MIN_BYTES`,
//! 256) and at most `2^server_max_window_bits` bytes. Below the threshold
//! deflate saves little and costs a compressor pass; above the client's
//! window a message compressed with the full window could refer further
//! back than the client keeps, while a message no longer than the window
//! cannot (no context: nothing precedes it). Those go plain, with RSV1
//! clear, which the extension allows for any message. A payload that does
//! not shrink goes plain too. Control frames are never compressed.
//!
//! A client's compressed message (RSV1 on its first frame) is reassembled
//! compressed — bounded by the message limit like any message — and
//! inflated once complete, into at most the same limit: a message that
//! inflates beyond it is refused as too big (1009) as soon as the limit is
//! passed, so a small "zip bomb" costs the server at most one limit of
//! memory and the work of producing it. Data that is not valid DEFLATE
//! fails the connection with 1007 (the payload is not what the message's
//! framing says it is; the framing itself was valid).
//!
//! The compressor is large (about 300 KiB), so it lives once per thread
//! and is reset for each message: with no context taken over, no
//! connection needs one of its own. A client message is inflated into a
//! buffer of its own size, which is its only window.

use std::cell::RefCell;
use std::sync::LazyLock;

use bytes::Bytes;
use event_core::Event;
use event_core::event::RenderKey;
use flate2::{Compress, Compression, FlushCompress};

use crate::frame;

/// Where an [`Event`] caches its compressed WebSocket frame. An empty
/// rendering means the event does not shrink and goes plain.
static COMPRESSED_FRAME: LazyLock<RenderKey> = LazyLock::new(RenderKey::register);

/// Registers the compressed frame's render key (called when an endpoint
/// with compression is built, before events flow).
pub(crate) fn register_render_key() {
    LazyLock::force(&COMPRESSED_FRAME);
}

/// What every compressed message ends with before it is cut off (RFC 7692
/// §7.2.1): the empty stored block of a sync flush.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

thread_local! {
    /// This thread's compressor (raw DEFLATE, reset before each message).
    static COMPRESSOR: RefCell<Compress> =
        RefCell::new(Compress::new(Compression::default(), false));
}

/// How a connection frames the data messages it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Framing {
    /// The payload sizes sent compressed (`None`: the connection did not
    /// negotiate the extension).
    compressed: Option<(usize, usize)>,
}

impl Framing {
    /// Plain frames only.
    pub(crate) const PLAIN: Framing = Framing { compressed: None };

    /// Compressed frames for payloads from `min_bytes` up to
    /// `2^window_bits` bytes (the client's `server_max_window_bits`).
    pub(crate) fn compressed(min_bytes: usize, window_bits: u8) -> Framing {
        let max = if window_bits >= 15 {
            usize::MAX
        } else {
            1usize << window_bits
        };
        Framing {
            compressed: Some((min_bytes, max)),
        }
    }

    /// Whether a payload of `len` bytes goes compressed.
    fn compresses(self, len: usize) -> bool {
        self.compressed
            .is_some_and(|(min, max)| len >= min && len <= max)
    }

    /// An event's frame: the compressed one (rendered once per event and
    /// shared) when this connection compresses a payload of its size and
    /// it shrinks, else the plain one.
    pub(crate) fn event(self, event: &Event) -> Bytes {
        if self.compresses(event.json().len()) {
            let render =
                |ev: &Event| compressed_frame(frame::OPCODE_TEXT, ev.json()).unwrap_or_default();
            let compressed = match event.rendered(*COMPRESSED_FRAME, render) {
                Some(frame) => frame.clone(),
                None => render(event),
            };
            if !compressed.is_empty() {
                return compressed;
            }
        }
        frame::event_frame(event)
    }

    /// A text frame carrying `text`, compressed if this connection
    /// compresses a payload of its size and it shrinks.
    pub(crate) fn text(self, text: &[u8]) -> Bytes {
        self.data(frame::OPCODE_TEXT, text)
    }

    /// A binary frame carrying `payload` (only the echo server sends one).
    pub(crate) fn binary(self, payload: &[u8]) -> Bytes {
        self.data(frame::OPCODE_BINARY, payload)
    }

    fn data(self, opcode: u8, payload: &[u8]) -> Bytes {
        if self.compresses(payload.len())
            && let Some(frame) = compressed_frame(opcode, payload)
        {
            return frame;
        }
        frame::data(opcode, false, payload)
    }
}

/// A complete compressed data frame (RSV1 set) of `payload`, compressed on
/// its own; `None` when the compressed form is not smaller.
fn compressed_frame(opcode: u8, payload: &[u8]) -> Option<Bytes> {
    let compressed = compress(payload)?;
    (compressed.len() < payload.len()).then(|| frame::data(opcode, true, &compressed))
}

/// `payload` as one permessage-deflate message: raw DEFLATE with no
/// history, ending in a sync flush whose empty block is cut off (RFC 7692
/// §7.2.1). `None` only if the compressor fails, which it does not on
/// valid use.
pub(crate) fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|c| {
        c.reset();
        let mut out = Vec::with_capacity(payload.len() / 2 + 64);
        let mut input = payload;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = c.total_in();
            c.compress_vec(input, &mut out, FlushCompress::Sync).ok()?;
            input = &input[usize::try_from(c.total_in() - before).ok()?..];
            // Done once all input is taken and the flush fit in the room
            // that was left.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        let end = out.len().checked_sub(TAIL.len())?;
        (out[end..] == TAIL).then(|| {
            out.truncate(end);
            out
        })
    })
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// It inflates to more than the message limit (1009).
    TooBig,
    /// It is not valid DEFLATE data (1007).
    Invalid,
}

/// What follows a message's data for the inflater: the tail its sender
/// cut off (RFC 7692 §7.2.2), then an empty final block (BFINAL set,
/// fixed codes, end of block), so that the data ends as a complete stream.
const END: [u8; 6] = [0x00, 0x00, 0xff, 0xff, 0x03, 0x00];

/// The payload of a compressed message whose frames carried `data`,
/// refused as soon as it passes `max` bytes.
///
/// The message is inflated in one pass into a buffer that holds the whole
/// payload and is its own window: a back-reference before the start of
/// the message — what a client sends that kept its context despite
/// `client_no_context_takeover` — is invalid data, where a streaming
/// inflater would read its (zeroed) window and hand back corrupt text.
/// The buffer grows by doubling to at most `max + 1` bytes.
pub(crate) fn inflate(mut data: Vec<u8>, max: usize) -> Result<Vec<u8>, InflateError> {
    use miniz_oxide::inflate::{TINFLStatus, decompress_to_vec_with_limit};
    if data.is_empty() {
        // Not DEFLATE (the tail alone is an unfinished block), but what a
        // sender that skips the compressor sends for an empty message.
        return Ok(data);
    }
    data.extend_from_slice(&END);
    // A final block in the message ends the stream before the appended
    // one; nothing after a final block is read.
    match decompress_to_vec_with_limit(&data, max.saturating_add(1)) {
        Ok(payload) if payload.len() <= max => Ok(payload),
        Ok(_) => Err(InflateError::TooBig),
        Err(e) if e.status == TINFLStatus::HasMoreOutput => Err(InflateError::TooBig),
        Err(_) => Err(InflateError::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a client's deflater (or zlib's) makes of `payload`: a sync
    /// flush with the tail cut, as RFC 7692 §7.2.1 says.
    fn client_deflate(payload: &[u8], level: u32) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(level), false);
        let mut out = Vec::with_capacity(payload.len() * 2 + 64);
        c.compress_vec(payload, &mut out, FlushCompress::Sync)
            .unwrap();
        assert_eq!(out[out.len() - 4..], TAIL);
        out.truncate(out.len() - 4);
        out
    }

    #[test]
    fn the_rfc_example_inflates() {
        // The examples of RFC 7692 §7.2.3: "Hello" compressed,
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate(hello.to_vec(), 1024).unwrap(), b"Hello");
        // with BFINAL set (the tail then follows a final block),
        let fin = [0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00];
        assert_eq!(inflate(fin.to_vec(), 1024).unwrap(), b"Hello");
        // in a stored (uncompressed) block,
        let stored = [
            0x00, 0x05, 0x00, 0xfa, 0xff, 0x48, 0x65, 0x6c, 0x6c, 0x6f, 0x00,
        ];
        assert_eq!(inflate(stored.to_vec(), 1024).unwrap(), b"Hello");
        // and in two blocks.
        let two = [
            0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff, 0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00,
        ];
        assert_eq!(inflate(two.to_vec(), 1024).unwrap(), b"Hello");
        // An empty message: an empty stored block, or nothing at all (the
        // tail alone is an unfinished block, read as empty).
        assert_eq!(inflate(vec![0x00], 1024).unwrap(), b"");
        assert_eq!(inflate(Vec::new(), 1024).unwrap(), b"");
        assert_eq!(compress(b"").map(|c| inflate(c, 0)), Some(Ok(Vec::new())));
    }

    #[test]
    fn compress_then_inflate_is_the_identity_and_each_message_stands_alone() {
        let event = br#"{"type":"NoteUpdated","note_id":"0197c0de-5e1a-7a00-8000-0000000000aa","title":"T","tags":["a","b"],"has_ai_content":true,"has_links":false}"#;
        let first = compress(event).unwrap();
        // No history: compressing the same payload again gives the same
        // bytes, which is what lets every connection share them.
        let again = compress(event).unwrap();
        assert_eq!(first, again);
        assert!(first.len() < event.len());
        assert_eq!(inflate(first, event.len()).unwrap(), event);
        for size in [0, 1, 100, 40_000, 70_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let c = compress(&payload).unwrap();
            assert_eq!(inflate(c, size).unwrap(), payload, "{size}");
        }
    }

    #[test]
    fn inflation_is_bounded_by_the_message_limit() {
        // A zip bomb: 1 MiB of zeros compresses to about a kilobyte.
        let bomb = client_deflate(&vec![0u8; 1 << 20], 9);
        assert!(bomb.len() < 2048, "{}", bomb.len());
        assert_eq!(inflate(bomb, 64 * 1024), Err(InflateError::TooBig));
        // Exactly the limit is fine, one byte over is not.
        let exact = client_deflate(&vec![b'a'; 5000], 6);
        assert_eq!(inflate(exact.to_vec(), 5000).unwrap().len(), 5000);
        assert_eq!(inflate(exact.to_vec(), 4999), Err(InflateError::TooBig));
        assert_eq!(inflate(exact.to_vec(), 0), Err(InflateError::TooBig));
        // The inflater is usable after a refusal.
        assert_eq!(inflate(exact.to_vec(), 5000).unwrap().len(), 5000);
    }

    #[test]
    fn a_bomb_is_refused_whatever_the_limit() {
        let bomb = client_deflate(&vec![7u8; 1 << 20], 9);
        for max in [0, 1, 63, 64, 65, 1000, 4096, 100_000, (1 << 20) - 1] {
            assert_eq!(
                inflate(bomb.clone(), max),
                Err(InflateError::TooBig),
                "{max}"
            );
        }
        assert_eq!(inflate(bomb, 1 << 20).unwrap().len(), 1 << 20);
    }

    #[test]
    fn invalid_data_is_refused() {
        // Block type 3 is reserved.
        assert_eq!(inflate(vec![0xff, 0xff], 1024), Err(InflateError::Invalid));
        // A stored block whose length and its complement disagree.
        assert_eq!(
            inflate(vec![0x00, 0x05, 0x00, 0x00, 0x00, b'x'], 1024),
            Err(InflateError::Invalid)
        );
        // A distance before the start of the message: what a client that
        // kept its context (against `client_no_context_takeover`) sends.
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(4096);
        let text = b"a fairly long sentence, said twice over; ";
        c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        let first = out.len();
        c.compress_vec(text, &mut out, FlushCompress::Sync).unwrap();
        let second = &out[first..out.len() - 4];
        assert_eq!(inflate(second.to_vec(), 1024), Err(InflateError::Invalid));
    }

    #[test]
    fn framing_picks_compressed_frames_by_size_and_window() {
        let framing = Framing::compressed(256, 15);
        let small = "x".repeat(255);
        assert_eq!(
            framing.text(small.as_bytes())[0],
            0x81,
            "under the threshold: plain"
        );
        let big = "y".repeat(256);
        let frame = framing.text(big.as_bytes());
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        let payload = &frame[2..];
        assert_eq!(inflate(payload.to_vec(), 1024).unwrap(), big.as_bytes());
        assert_eq!(Framing::compressed(256, 15).binary(big.as_bytes())[0], 0xC2);
        // A 9-bit window: up to 512 bytes compressed, longer plain.
        let nine = Framing::compressed(0, 9);
        assert_eq!(nine.text("z".repeat(512).as_bytes())[0], 0xC1);
        assert_eq!(nine.text("z".repeat(513).as_bytes())[0], 0x81);
        // Not negotiated: never compressed.
        assert_eq!(Framing::PLAIN.text(big.as_bytes())[0], 0x81);
        // A payload that does not shrink goes plain.
        let noise: Vec<u8> = (0..300u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(Framing::compressed(0, 15).binary(&noise)[0], 0x82);
    }

    #[test]
    fn an_event_is_compressed_once_and_shared() {
        register_render_key();
        let bus = event_core::EventBus::default();
        let event = bus.publish(event_core::NoteUpdated {
            note_id: uuid::Uuid::from_u128(0x0197c0de_5e1a_7a00_8000_0000000000aa),
            title: Some("t".repeat(400)),
            tags: vec!["a".into()],
            has_ai_content: false,
            has_links: false,
            operation: None,
            user_id: None,
        });
        let framing = Framing::compressed(256, 15);
        let a = framing.event(&event);
        let b = framing.event(&event);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second connection got a copy");
        assert_eq!(a[0], 0xC1);
        let (len, at) = match a[1] {
            126 => (usize::from(u16::from_be_bytes([a[2], a[3]])), 4),
            n => (usize::from(n), 2),
        };
        assert_eq!(a.len(), at + len);
        assert_eq!(
            inflate(a[at..].to_vec(), 1 << 16).unwrap(),
            &event.json()[..]
        );
        // A connection with a small window gets the plain frame.
        let plain = Framing::compressed(256, 8).event(&event);
        assert_eq!(plain, frame::event_frame(&event));
    }
}

/// Compressed client messages through the frame reader: negotiated or
/// not, whole or fragmented, valid or not.
#[cfg(test)]
mod reading {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use crate::frame::{Incoming, MessageReader, ReadError};

    use super::*;

    fn frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        crate::frame::tests::masked_frame(first, payload, mask)
    }

    fn deflating(max: usize) -> MessageReader {
        let mut reader = MessageReader::new(max);
        reader.accept_compressed();
        reader
    }

    fn read(reader: &mut MessageReader, bytes: &[u8]) -> Result<Vec<Incoming>, ReadError> {
        let mut out = Vec::new();
        reader.feed(bytes, &mut out)?;
        Ok(out)
    }

    const MASK: [u8; 4] = [9, 8, 7, 6];

    #[test]
    fn a_compressed_message_is_read_only_where_negotiated() {
        let text = r#"{"type":"subscribe","events":["JobProgress","note"]}"#;
        let bytes = frame(0xC1, &compress(text.as_bytes()).unwrap(), MASK);
        assert_eq!(
            read(&mut deflating(1024), &bytes),
            Ok(vec![Incoming::Text(text.into())])
        );
        assert_eq!(
            read(&mut MessageReader::new(1024), &bytes),
            Err(ReadError::Protocol("reserved bits set"))
        );
        // RSV2 and RSV3 stay reserved.
        for first in [0xA1, 0x91, 0xE1] {
            assert_eq!(
                read(&mut deflating(1024), &frame(first, b"x", MASK)),
                Err(ReadError::Protocol("reserved bits set")),
                "{first:#x}"
            );
        }
        // Plain messages still work on a compressing connection.
        assert_eq!(
            read(&mut deflating(1024), &frame(0x81, b"refresh", MASK)),
            Ok(vec![Incoming::Text("refresh".into())])
        );
    }

    #[test]
    fn rsv1_belongs_on_a_first_frame_only() {
        let cases = [
            frame(0xC9, b"", MASK),
            frame(0xCA, b"", MASK),
            frame(0xC8, &1000u16.to_be_bytes(), MASK),
            [frame(0x41, b"\xf2", MASK), frame(0xC0, b"\x00", MASK)].concat(),
        ];
        for bytes in cases {
            assert_eq!(
                read(&mut deflating(1024), &bytes),
                Err(ReadError::Protocol(
                    "RSV1 set on a control frame or a continuation"
                )),
                "{bytes:x?}"
            );
        }
    }

    #[test]
    fn a_fragmented_compressed_message_is_inflated_whole() {
        let text = "é".repeat(300);
        let compressed = compress(text.as_bytes()).unwrap();
        let (a, b) = compressed.split_at(compressed.len() / 2);
        let mut bytes = frame(0x41, a, MASK);
        bytes.extend(frame(0x89, b"ping", MASK));
        bytes.extend(frame(0x80, b, MASK));
        assert_eq!(
            read(&mut deflating(1024), &bytes),
            Ok(vec![Incoming::Ping(b"ping".to_vec()), Incoming::Text(text)])
        );
        let binary = vec![3u8; 2000];
        let bytes = frame(0xC2, &compress(&binary).unwrap(), MASK);
        assert_eq!(
            read(&mut deflating(2000), &bytes),
            Ok(vec![Incoming::Binary(binary)])
        );
    }

    #[test]
    fn bad_compressed_messages_get_their_errors() {
        // A bomb: tiny on the wire, far over the limit inflated.
        let bomb = compress(&vec![b'a'; 1 << 20]).unwrap();
        assert!(bomb.len() < 4096);
        let mut reader = deflating(64 * 1024);
        assert_eq!(
            read(&mut reader, &frame(0xC1, &bomb, MASK)),
            Err(ReadError::TooBig)
        );
        assert_eq!(reader.buffered(), 0);
        // Over the limit already compressed: refused from the header.
        let big = frame(0xC2, &[0; 3000], MASK);
        assert_eq!(
            read(&mut deflating(2048), &big[..8]),
            Err(ReadError::TooBig)
        );
        // Not DEFLATE.
        assert_eq!(
            read(
                &mut deflating(1024),
                &frame(0xC1, &[0xff, 0xff, 0xff], MASK)
            ),
            Err(ReadError::BadCompression)
        );
        // Valid DEFLATE of text that is not UTF-8.
        assert_eq!(
            read(
                &mut deflating(1024),
                &frame(0xC1, &compress(b"\xff\xfe").unwrap(), MASK)
            ),
            Err(ReadError::NotUtf8)
        );
        // An empty compressed message is an empty one.
        assert_eq!(
            read(&mut deflating(1024), &frame(0xC1, b"", MASK)),
            Ok(vec![Incoming::Text(String::new())])
        );
    }

    /// A message as a client could send it on a compressing connection.
    #[derive(Debug, Clone)]
    struct Msg {
        text: bool,
        compressed: Option<u32>,
        payload: Vec<u8>,
        cuts: Vec<Index>,
        ping_after_first: bool,
    }

    fn msg() -> impl Strategy<Value = Msg> {
        let text = prop_oneof![
            4 => ".{0,200}".prop_map(String::into_bytes),
            1 => "[a-z{}\":,é€😀]{0,40}".prop_map(|s| s.repeat(200).into_bytes()),
        ];
        let binary = prop_oneof![
            3 => prop::collection::vec(any::<u8>(), 0..300),
            1 => (any::<u8>(), 1000usize..40_000).prop_map(|(b, n)| vec![b; n]),
        ];
        (
            prop_oneof![
                text.prop_map(|t| (true, t)),
                binary.prop_map(|b| (false, b))
            ],
            prop_oneof![1 => Just(None), 3 => (0u32..=9).prop_map(Some)],
            prop::collection::vec(any::<Index>(), 0..4),
            any::<bool>(),
        )
            .prop_map(
                |((text, payload), compressed, cuts, ping_after_first)| Msg {
                    text,
                    compressed,
                    payload,
                    cuts,
                    ping_after_first,
                },
            )
    }

    /// What a client's deflater sends: any level, sync flush, tail cut.
    fn client_compress(payload: &[u8], level: u32) -> Vec<u8> {
        let mut c = Compress::new(Compression::new(level), false);
        let mut out = Vec::with_capacity(payload.len() + 1024);
        c.compress_vec(payload, &mut out, FlushCompress::Sync)
            .unwrap();
        out.truncate(out.len() - 4);
        out
    }

    /// The frames of `msgs` (each fragmented at its cuts) and what the
    /// reader must return.
    fn conversation(msgs: &[Msg], mask: [u8; 4]) -> (Vec<u8>, Vec<Incoming>) {
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for m in msgs {
            let wire = match m.compressed {
                Some(level) => client_compress(&m.payload, level),
                None => m.payload.clone(),
            };
            let mut points: Vec<usize> = m.cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.retain(|p| *p != 0 && *p != wire.len());
            points.sort_unstable();
            points.dedup();
            points.insert(0, 0);
            points.push(wire.len());
            let pieces = points.len() - 1;
            for (i, pair) in points.windows(2).enumerate() {
                let mut first = if i + 1 == pieces { 0x80 } else { 0 };
                if i == 0 {
                    first |= if m.text { 0x01 } else { 0x02 };
                    if m.compressed.is_some() {
                        first |= 0x40;
                    }
                }
                bytes.extend(frame(first, &wire[pair[0]..pair[1]], mask));
                if i == 0 && pieces > 1 && m.ping_after_first {
                    bytes.extend(frame(0x89, b"p", mask));
                    want.push(Incoming::Ping(b"p".to_vec()));
                }
            }
            want.push(match std::str::from_utf8(&m.payload) {
                Ok(t) if m.text => Incoming::Text(t.to_owned()),
                _ => Incoming::Binary(m.payload.clone()),
            });
        }
        (bytes, want)
    }

    fn feed_cut(
        mut reader: MessageReader,
        bytes: &[u8],
        cuts: &[Index],
    ) -> (Vec<Incoming>, Option<ReadError>, usize) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut out = Vec::new();
        for pair in points.windows(2) {
            if let Err(e) = reader.feed(&bytes[pair[0]..pair[1]], &mut out) {
                return (out, Some(e), reader.buffered());
            }
        }
        (out, None, reader.buffered())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Compressed and plain messages, fragmented anywhere, with pings
        /// between the fragments and cut anywhere by the socket, come out
        /// as they went in, and nothing is held after them.
        #[test]
        fn compressed_messages_round_trip(
            msgs in prop::collection::vec(msg(), 0..6),
            mask in any::<[u8; 4]>(),
            cuts in prop::collection::vec(any::<Index>(), 0..12),
        ) {
            let (bytes, want) = conversation(&msgs, mask);
            let (got, error, held) = feed_cut(deflating(1 << 20), &bytes, &cuts);
            prop_assert_eq!(error, None);
            prop_assert_eq!(got, want);
            prop_assert_eq!(held, 0);
        }

        /// Whatever the limit, a compressed message is refused (1009)
        /// exactly when its inflated payload exceeds it.
        #[test]
        fn the_limit_holds_for_the_inflated_size(
            m in msg(),
            max in prop_oneof![0usize..400, 1000usize..50_000],
            mask in any::<[u8; 4]>(),
        ) {
            let m = Msg { compressed: Some(m.compressed.unwrap_or(6)), ..m };
            let (bytes, want) = conversation(std::slice::from_ref(&m), mask);
            let (got, error, _) = feed_cut(deflating(max), &bytes, &[]);
            let wire = client_compress(&m.payload, m.compressed.unwrap_or(6)).len();
            if m.payload.len() > max || wire > max {
                prop_assert_eq!(error, Some(ReadError::TooBig));
                prop_assert!(got.iter().all(|g| matches!(g, Incoming::Ping(_))));
            } else {
                prop_assert_eq!(error, None);
                prop_assert_eq!(got, want);
            }
        }

        /// Arbitrary bytes on a compressing connection: no panic, and the
        /// same result however the socket cuts them.
        #[test]
        fn arbitrary_input_is_refused_the_same_way_in_any_split(
            frames in prop::collection::vec(
                (prop::sample::select(vec![0xC1u8, 0xC2, 0x41, 0x80, 0xC0, 0x81, 0x89, 0xC9, 0xE1]),
                 prop::collection::vec(any::<u8>(), 0..60)),
                0..6),
            max in prop_oneof![Just(1024usize), 0usize..100],
            cuts in prop::collection::vec(any::<Index>(), 0..8),
        ) {
            let bytes: Vec<u8> = frames.iter().flat_map(|(first, p)| frame(*first, p, MASK)).collect();
            let (whole, whole_error, _) = feed_cut(deflating(max), &bytes, &[]);
            let (cut, cut_error, _) = feed_cut(deflating(max), &bytes, &cuts);
            prop_assert_eq!(whole_error, cut_error);
            prop_assert_eq!(whole, cut);
        }
    }
}
