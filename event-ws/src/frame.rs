//! WebSocket framing (RFC 6455 §5), both directions.
//!
//! # Why not tungstenite
//!
//! A server-to-client frame is a 2–10 byte header and the payload, unmasked.
//! Every subscriber of an event is sent the same frame, so it is rendered
//! once per event ([`event_frame`], cached in the event) and written to each
//! socket as the shared bytes. A general WebSocket library copies every
//! payload into the connection's write buffer instead — per connection, per
//! event — which was the largest userland cost of fan-out.
//!
//! Client-to-server frames are few and small (`refresh`, `subscribe`,
//! pongs); [`MessageReader`] parses them incrementally from whatever the
//! socket returned, unmasks them, reassembles fragmented messages and
//! enforces the size limit before buffering a payload. It keeps no buffer
//! while no partial frame is pending, so an idle connection holds none.
//!
//! The one extension is permessage-deflate ([`crate::deflate`]): on a
//! connection that negotiated it, RSV1 on a message's first frame marks
//! it compressed; the reader reassembles it as it came and inflates it
//! once complete, within the same message limit.

use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use event_core::Event;
use event_core::event::RenderKey;

/// Where an [`Event`] caches its WebSocket text frame
/// ([`Event::rendered`]).
static EVENT_FRAME: LazyLock<RenderKey> = LazyLock::new(RenderKey::register);

/// Registers this crate's render key now rather than at the first frame,
/// so that every event the bus weighs for its replay ring counts it
/// (called when the endpoint is built).
pub(crate) fn register_render_key() {
    LazyLock::force(&EVENT_FRAME);
}

/// Frame opcodes.
mod opcode {
    pub(super) const CONTINUATION: u8 = 0x0;
    pub(super) const TEXT: u8 = 0x1;
    pub(super) const BINARY: u8 = 0x2;
    pub(super) const CLOSE: u8 = 0x8;
    pub(super) const PING: u8 = 0x9;
    pub(super) const PONG: u8 = 0xA;
}

const FIN: u8 = 0x80;
/// RSV1: on a message's first frame, "compressed" (RFC 7692 §6).
const RSV1: u8 = 0x40;
/// The text opcode, for frames built elsewhere in the crate.
pub(crate) const OPCODE_TEXT: u8 = opcode::TEXT;
/// The binary opcode, for frames built elsewhere in the crate.
pub(crate) const OPCODE_BINARY: u8 = opcode::BINARY;
/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A complete frame sent by the server: header, then `payload`.
fn server_frame(opcode: u8, payload: &[u8]) -> Bytes {
    data(opcode, false, payload)
}

/// A complete, unfragmented frame of `opcode` carrying `payload`, with
/// RSV1 set when `compressed` (a permessage-deflate message).
pub(crate) fn data(opcode: u8, compressed: bool, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(FIN | if compressed { RSV1 } else { 0 } | opcode);
    match payload.len() {
        n @ 0..=125 => out.put_u8(n as u8),
        n @ 126..=0xFFFF => {
            out.put_u8(126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(127);
            out.put_u64(n as u64);
        }
    }
    out.put_slice(payload);
    out.freeze()
}

/// A text frame carrying `text`.
pub(crate) fn text(text: &[u8]) -> Bytes {
    server_frame(opcode::TEXT, text)
}

/// The text frame of an event's flat JSON, rendered once per event and
/// shared by every connection that writes it.
pub(crate) fn event_frame(event: &Event) -> Bytes {
    // Not cached only when the process registered more render keys than
    // events hold.
    match event.rendered(*EVENT_FRAME, |ev| text(ev.json())) {
        Some(frame) => frame.clone(),
        None => text(event.json()),
    }
}

/// An empty ping.
pub(crate) fn ping() -> Bytes {
    Bytes::from_static(&[FIN | opcode::PING, 0])
}

/// A pong echoing `payload` (at most 125 bytes, as the ping's was).
pub(crate) fn pong(payload: &[u8]) -> Bytes {
    server_frame(
        opcode::PONG,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    )
}

/// A close frame: `code` and `reason`, or an empty one when `code` is
/// `None`. The reason is cut (at a character boundary) to fit in a control
/// frame.
pub(crate) fn close(code: Option<u16>, reason: &str) -> Bytes {
    let Some(code) = code else {
        return server_frame(opcode::CLOSE, &[]);
    };
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    server_frame(opcode::CLOSE, &payload)
}

/// A complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message (not part of the HotM protocol, which ignores it;
    /// the echo server sends it back).
    Binary(Vec<u8>),
    /// A ping, to be answered with a pong carrying this payload.
    Ping(Vec<u8>),
    /// A pong (it only proves the client is alive).
    Pong,
    /// A close frame, with the client's code if it gave one (always a code
    /// a client may send, RFC 6455 §7.4).
    Close(Option<u16>),
}

/// Why the client's bytes could not be read as WebSocket frames; each
/// closes the connection with its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// A frame or message over the size limit (1009).
    TooBig,
    /// Not valid framing: unmasked, reserved bits, unknown opcode,
    /// a misplaced continuation, an invalid close code (1002). The text
    /// says which.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8 (1007).
    NotUtf8,
    /// A compressed message that is not valid DEFLATE data (1007).
    BadCompression,
}

/// The longest frame header: 2 bytes, a 64-bit length, the mask.
const MAX_HEAD: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy)]
struct Head {
    fin: bool,
    /// RSV1: the message this frame starts is compressed.
    compressed: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` if more bytes are
/// needed. A header is refused as soon as the bytes that make it
/// unacceptable have arrived. RSV1 is allowed when `deflate` (the
/// connection negotiated permessage-deflate), on a message's first frame.
fn parse_head(buf: &[u8], max_payload: usize, deflate: bool) -> Result<Option<Head>, ReadError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let reserved = if deflate { 0x30 } else { 0x70 };
    if b0 & reserved != 0 {
        return Err(ReadError::Protocol("reserved bits set"));
    }
    let compressed = b0 & RSV1 != 0;
    let fin = b0 & FIN != 0;
    let opcode = b0 & 0x0F;
    if opcode >= opcode::CLOSE {
        if opcode > opcode::PONG {
            return Err(ReadError::Protocol("unknown opcode"));
        }
        if !fin || b1 & 0x7F > MAX_CONTROL_PAYLOAD as u8 {
            return Err(ReadError::Protocol("control frame fragmented or too long"));
        }
    } else if opcode > opcode::BINARY {
        return Err(ReadError::Protocol("unknown opcode"));
    }
    if compressed && (opcode >= opcode::CLOSE || opcode == opcode::CONTINUATION) {
        // RFC 7692 §6.1: only a data message's first frame says it.
        return Err(ReadError::Protocol(
            "RSV1 set on a control frame or a continuation",
        ));
    }
    if b1 & 0x80 == 0 {
        return Err(ReadError::Protocol("client frame not masked"));
    }
    let (payload, mut len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b);
                (u64::from_be_bytes(n), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if payload >> 63 != 0 {
        // RFC 6455 §5.2: the most significant bit MUST be 0.
        return Err(ReadError::Protocol("payload length with the top bit set"));
    }
    if payload > max_payload as u64 {
        return Err(ReadError::TooBig);
    }
    let Some(mask) = buf.get(len..len + 4) else {
        return Ok(None);
    };
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    len += 4;
    Ok(Some(Head {
        fin,
        compressed,
        opcode,
        mask,
        len,
        payload: payload as usize,
    }))
}

#[cfg(test)]
fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Whether a client may send `code` in a close frame (RFC 6455 §7.4.1,
/// §7.4.2): the defined codes an endpoint may send — 1012–1014 included,
/// registered since — and the ranges for libraries and applications.
/// 1004–1006 and 1015 are reserved, and so is everything below 3000 not
/// listed, or from 5000.
pub(crate) fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The frame whose payload is arriving.
#[derive(Debug)]
struct FrameState {
    head: Head,
    /// Payload bytes received so far (the mask's position).
    received: usize,
}

/// A data message in progress (possibly fragmented).
#[derive(Debug)]
struct Message {
    opcode: u8,
    /// Compressed (permessage-deflate): `data` is inflated at the end.
    compressed: bool,
    data: Vec<u8>,
    /// How much of `data` is known to be UTF-8 (text): a sequence cut at
    /// the end may continue in the next piece.
    checked: usize,
}

/// At most this much is reserved for a payload before it arrives: a
/// client announcing a large frame and sending it slowly makes the server
/// hold what it sent, not what it announced.
const MAX_RESERVE: usize = 4096;

/// Reads client messages out of the bytes the socket returns.
///
/// A frame's payload is unmasked and checked as it arrives, so text that
/// is not UTF-8 fails the connection as soon as the bytes that make it
/// invalid are read — in a later fragment or in the middle of a frame.
/// While no frame is in progress the reader holds no allocation and is a
/// few words (it lives in every idle connection).
#[derive(Debug)]
pub(crate) struct MessageReader {
    max_message: usize,
    /// The connection negotiated permessage-deflate.
    deflate: bool,
    /// The frame and message in progress, if any.
    state: Option<Box<InProgress>>,
    /// After an error, the reader refuses everything with it.
    failed: Option<ReadError>,
}

/// What a reader keeps between two reads of a frame or message.
#[derive(Debug, Default)]
struct InProgress {
    /// The start of a header that has not fully arrived.
    head: [u8; MAX_HEAD],
    head_len: u8,
    /// The frame whose payload is arriving.
    frame: Option<FrameState>,
    /// A control frame's payload so far.
    control: Vec<u8>,
    /// The data message in progress.
    message: Option<Message>,
}

impl MessageReader {
    /// A reader refusing frames and messages over `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Self {
        MessageReader {
            max_message,
            deflate: false,
            state: None,
            failed: None,
        }
    }

    /// Accepts compressed messages (RSV1 on a message's first frame): the
    /// connection negotiated permessage-deflate. Their inflated payload is
    /// held to the same limit.
    pub(crate) fn accept_compressed(&mut self) {
        self.deflate = true;
    }

    /// Parses `data` (what the socket just returned) and appends every
    /// message it completes to `out`. A partial frame is kept for the next
    /// call. On an error, the messages completed before the offending bytes
    /// are in `out`; the connection must then close, and every later call
    /// returns the same error.
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<Incoming>) -> Result<(), ReadError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if data.is_empty() {
            return Ok(());
        }
        let state = self.state.get_or_insert_with(Box::default);
        let result = state.parse(data, self.max_message, self.deflate, out);
        if result.is_err() || state.is_idle() {
            self.state = None;
        }
        if let Err(error) = result {
            self.failed = Some(error);
        }
        result
    }

    /// Bytes of payload buffer this reader holds (its buffers' capacity).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.state.as_ref().map_or(0, |s| {
            s.control.capacity() + s.message.as_ref().map_or(0, |m| m.data.capacity())
        })
    }
}

impl InProgress {
    /// Whether nothing is in progress (the state can be dropped).
    fn is_idle(&self) -> bool {
        self.head_len == 0 && self.frame.is_none() && self.message.is_none()
    }

    fn parse(
        &mut self,
        mut data: &[u8],
        max_message: usize,
        deflate: bool,
        out: &mut Vec<Incoming>,
    ) -> Result<(), ReadError> {
        loop {
            if self.frame.is_none() {
                if data.is_empty() {
                    return Ok(());
                }
                let old = usize::from(self.head_len);
                let n = (MAX_HEAD - old).min(data.len());
                self.head[old..old + n].copy_from_slice(&data[..n]);
                let Some(head) = parse_head(&self.head[..old + n], max_message, deflate)? else {
                    // Fewer than MAX_HEAD bytes: all of `data` was taken.
                    self.head_len = (old + n) as u8;
                    return Ok(());
                };
                data = &data[head.len - old..];
                self.head_len = 0;
                self.start(head, max_message)?;
                self.frame = Some(FrameState { head, received: 0 });
            }
            let Some(frame) = self.frame.as_mut() else {
                return Ok(());
            };
            let head = frame.head;
            let n = (head.payload - frame.received).min(data.len());
            let start = frame.received;
            frame.received += n;
            let complete = frame.received == head.payload;
            let (chunk, rest) = data.split_at(n);
            data = rest;
            let unmasked = chunk
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ head.mask[(start + i) & 3]);
            if head.opcode >= opcode::CLOSE {
                self.control.extend(unmasked);
            } else if let Some(message) = self.message.as_mut() {
                message.data.extend(unmasked);
                // Compressed text is checked once inflated.
                if message.opcode == opcode::TEXT && !message.compressed {
                    check_utf8(&message.data, &mut message.checked)?;
                }
            }
            if !complete {
                return Ok(());
            }
            self.frame = None;
            if let Some(message) = self.finish(head, max_message)? {
                out.push(message);
            }
        }
    }

    /// Checks a new frame's header against the message in progress and
    /// prepares the buffer for its payload.
    fn start(&mut self, head: Head, max_message: usize) -> Result<(), ReadError> {
        let reserve = head.payload.min(MAX_RESERVE);
        match (head.opcode, self.message.as_mut()) {
            (op, _) if op >= opcode::CLOSE => self.control = Vec::with_capacity(head.payload),
            (opcode::CONTINUATION, None) => {
                return Err(ReadError::Protocol("continuation without a message"));
            }
            (opcode::CONTINUATION, Some(message)) => {
                if message.data.len() + head.payload > max_message {
                    return Err(ReadError::TooBig);
                }
                message.data.reserve(reserve);
            }
            (_, Some(_)) => return Err(ReadError::Protocol("new message inside a fragmented one")),
            (op, None) => {
                self.message = Some(Message {
                    opcode: op,
                    compressed: head.compressed,
                    data: Vec::with_capacity(reserve),
                    checked: 0,
                });
            }
        }
        Ok(())
    }

    /// A frame has fully arrived: the message it completes, if any.
    fn finish(&mut self, head: Head, max_message: usize) -> Result<Option<Incoming>, ReadError> {
        match head.opcode {
            opcode::PING => return Ok(Some(Incoming::Ping(std::mem::take(&mut self.control)))),
            opcode::PONG => {
                self.control = Vec::new();
                return Ok(Some(Incoming::Pong));
            }
            opcode::CLOSE => {
                let payload = std::mem::take(&mut self.control);
                return close_payload(&payload).map(|c| Some(Incoming::Close(c)));
            }
            _ => {}
        }
        if !head.fin {
            return Ok(None);
        }
        let Some(message) = self.message.take() else {
            return Ok(None);
        };
        if message.compressed {
            use crate::deflate::{InflateError, inflate};
            let data = inflate(message.data, max_message).map_err(|e| match e {
                InflateError::TooBig => ReadError::TooBig,
                InflateError::Invalid => ReadError::BadCompression,
            })?;
            return Ok(Some(if message.opcode == opcode::TEXT {
                Incoming::Text(String::from_utf8(data).map_err(|_| ReadError::NotUtf8)?)
            } else {
                Incoming::Binary(data)
            }));
        }
        if message.opcode == opcode::TEXT {
            if message.checked != message.data.len() {
                // The message ends inside a UTF-8 sequence.
                return Err(ReadError::NotUtf8);
            }
            return String::from_utf8(message.data)
                .map(|t| Some(Incoming::Text(t)))
                .map_err(|_| ReadError::NotUtf8);
        }
        Ok(Some(Incoming::Binary(message.data)))
    }
}

/// Extends the UTF-8-checked prefix `checked` of `data` to its end, except
/// for a sequence cut at the end, which the next bytes may complete. Fails
/// as soon as the bytes cannot start valid UTF-8.
fn check_utf8(data: &[u8], checked: &mut usize) -> Result<(), ReadError> {
    match std::str::from_utf8(&data[*checked..]) {
        Ok(_) => *checked = data.len(),
        // `error_len() == None`: the input ended inside a sequence that is
        // valid so far.
        Err(e) if e.error_len().is_none() => *checked += e.valid_up_to(),
        Err(_) => return Err(ReadError::NotUtf8),
    }
    Ok(())
}

/// The code of a close frame's payload (none, or two bytes and a UTF-8
/// reason).
fn close_payload(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol("close frame of one byte")),
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            if !is_valid_close_code(code) {
                return Err(ReadError::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| ReadError::NotUtf8)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A client frame: masked, as a browser sends it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        masked_frame(first, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    /// One client frame: the first header byte, `payload` masked with
    /// `mask` (shared with the compression tests).
    pub(crate) fn masked_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first];
        match payload.len() {
            n @ 0..=125 => out.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        let mut body = payload.to_vec();
        unmask(&mut body, mask);
        out.extend_from_slice(&body);
        out
    }

    fn read_all(reader: &mut MessageReader, bytes: &[u8]) -> Result<Vec<Incoming>, ReadError> {
        let mut out = Vec::new();
        reader.feed(bytes, &mut out)?;
        Ok(out)
    }

    #[test]
    fn server_frames_have_the_shortest_length_form() {
        assert_eq!(&text(b"hi")[..], b"\x81\x02hi");
        let medium = text(&[b'a'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2c]);
        assert_eq!(medium.len(), 304);
        let large = text(&vec![b'a'; 70_000]);
        assert_eq!(&large[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(large[2..10].try_into().unwrap()), 70_000);
        assert_eq!(&ping()[..], &[0x89, 0]);
        assert_eq!(&pong(b"abc")[..], b"\x8a\x03abc");
    }

    #[test]
    fn an_event_frame_is_rendered_once_and_shared() {
        let bus = event_core::EventBus::default();
        let event = bus.publish(event_core::QueueStatus::new(2, 1));
        let a = event_frame(&event);
        let b = event_frame(&event);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second connection got a copy");
        assert_eq!(&a[2..], &event.json()[..]);
        assert_eq!(a[..2], [0x81, event.json().len() as u8]);
    }

    #[test]
    fn close_frames_carry_code_and_a_bounded_reason() {
        assert_eq!(&close(Some(4008), "slow")[..], b"\x88\x06\x0f\xa8slow");
        assert_eq!(&close(None, "ignored")[..], &[0x88, 0]);
        let long = close(Some(1001), &"é".repeat(100));
        assert!(long.len() - 2 <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&long[4..]).is_ok());
    }

    #[test]
    fn masked_messages_parse_in_any_split() {
        let mut bytes = client_frame(0x81, b"refresh");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x8a, b""));
        bytes.extend(client_frame(0x82, &[1, 2, 3]));
        bytes.extend(client_frame(0x88, b"\x03\xe8bye"));
        let want = vec![
            Incoming::Text("refresh".into()),
            Incoming::Ping(b"p".to_vec()),
            Incoming::Pong,
            Incoming::Binary(vec![1, 2, 3]),
            Incoming::Close(Some(1000)),
        ];
        for split in 0..bytes.len() {
            let mut reader = MessageReader::new(1024);
            let mut got = read_all(&mut reader, &bytes[..split]).unwrap();
            got.extend(read_all(&mut reader, &bytes[split..]).unwrap());
            assert_eq!(got, want, "split at {split}");
            assert_eq!(reader.buffered(), 0);
        }
        // One byte at a time.
        let mut reader = MessageReader::new(1024);
        let mut got = Vec::new();
        for b in &bytes {
            reader.feed(std::slice::from_ref(b), &mut got).unwrap();
        }
        assert_eq!(got, want);
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut bytes = client_frame(0x01, b"{\"type\":");
        bytes.extend(client_frame(0x89, b""));
        bytes.extend(client_frame(0x00, b"\"ping\""));
        bytes.extend(client_frame(0x80, b"}"));
        let mut reader = MessageReader::new(1024);
        assert_eq!(
            read_all(&mut reader, &bytes).unwrap(),
            vec![
                Incoming::Ping(Vec::new()),
                Incoming::Text(r#"{"type":"ping"}"#.into())
            ]
        );
    }

    #[test]
    fn the_size_limit_applies_to_frames_and_messages() {
        let mut reader = MessageReader::new(16);
        assert_eq!(
            read_all(&mut reader, &client_frame(0x81, &[b'a'; 16])).unwrap(),
            vec![Incoming::Text("a".repeat(16))]
        );
        // Refused from the header alone, before the payload arrives.
        let big = client_frame(0x81, &[b'a'; 17]);
        assert_eq!(
            read_all(&mut MessageReader::new(16), &big[..8]),
            Err(ReadError::TooBig)
        );
        let mut fragmented = client_frame(0x01, &[b'a'; 10]);
        fragmented.extend(client_frame(0x80, &[b'a'; 7]));
        assert_eq!(
            read_all(&mut MessageReader::new(16), &fragmented),
            Err(ReadError::TooBig)
        );
    }

    #[test]
    fn bad_framing_is_a_protocol_error() {
        let unmasked = b"\x81\x02hi";
        let reserved = {
            let mut f = client_frame(0x81, b"x");
            f[0] |= 0x40;
            f
        };
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            (
                unmasked.to_vec(),
                ReadError::Protocol("client frame not masked"),
            ),
            (reserved, ReadError::Protocol("reserved bits set")),
            (
                client_frame(0x83, b""),
                ReadError::Protocol("unknown opcode"),
            ),
            (
                client_frame(0x8b, b""),
                ReadError::Protocol("unknown opcode"),
            ),
            (
                client_frame(0x09, b""),
                ReadError::Protocol("control frame fragmented or too long"),
            ),
            (
                client_frame(0x89, &[0; 126]),
                ReadError::Protocol("control frame fragmented or too long"),
            ),
            (
                client_frame(0x80, b"x"),
                ReadError::Protocol("continuation without a message"),
            ),
            (
                [client_frame(0x01, b"a"), client_frame(0x81, b"b")].concat(),
                ReadError::Protocol("new message inside a fragmented one"),
            ),
            (
                client_frame(0x88, b"\x03"),
                ReadError::Protocol("close frame of one byte"),
            ),
            (client_frame(0x81, &[0xff, 0xfe]), ReadError::NotUtf8),
            (client_frame(0x88, b"\x03\xe8\xff"), ReadError::NotUtf8),
        ];
        for (bytes, want) in cases {
            let got = read_all(&mut MessageReader::new(1024), &bytes);
            assert_eq!(got, Err(want), "{bytes:x?}");
        }
    }

    #[test]
    fn a_large_payload_uses_the_long_length_forms() {
        let body = vec![b'z'; 70_000];
        let frame = client_frame(0x81, &body);
        let mut reader = MessageReader::new(100_000);
        let mut got = Vec::new();
        for chunk in frame.chunks(512) {
            reader.feed(chunk, &mut got).unwrap();
        }
        assert_eq!(got, vec![Incoming::Text("z".repeat(70_000))]);
        // The buffer of the finished message was released.
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn a_close_code_a_client_may_not_send_is_a_protocol_error() {
        for code in [
            0u16, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(b"why");
            assert_eq!(
                read_all(&mut MessageReader::new(1024), &client_frame(0x88, &payload)),
                Err(ReadError::Protocol("invalid close code")),
                "{code}"
            );
        }
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1014, 3000, 4999,
        ] {
            assert_eq!(
                read_all(
                    &mut MessageReader::new(1024),
                    &client_frame(0x88, &code.to_be_bytes())
                ),
                Ok(vec![Incoming::Close(Some(code))]),
                "{code}"
            );
        }
    }

    #[test]
    fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() {
        let mut frame = vec![0x81, 0x80 | 127];
        frame.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            read_all(&mut MessageReader::new(1024), &frame),
            Err(ReadError::Protocol("payload length with the top bit set"))
        );
        // Refused as soon as the length has arrived.
        assert_eq!(
            read_all(&mut MessageReader::new(1024), &frame[..10]),
            Err(ReadError::Protocol("payload length with the top bit set"))
        );
    }

    #[test]
    fn invalid_utf8_fails_as_soon_as_it_arrives() {
        // A fragment that cannot continue valid UTF-8, before the message
        // ends.
        let mut reader = MessageReader::new(1024);
        assert_eq!(
            read_all(&mut reader, &client_frame(0x01, "κόσμε".as_bytes())),
            Ok(vec![])
        );
        assert_eq!(
            read_all(&mut reader, &client_frame(0x00, b"\xce\xbc\xed\xa0\x80")),
            Err(ReadError::NotUtf8)
        );
        // Later bytes get the same answer.
        assert_eq!(read_all(&mut reader, b"\x80"), Err(ReadError::NotUtf8));
        // The invalid bytes arrive in the middle of one frame.
        let frame = client_frame(0x81, b"hello\xf4\x90\x80\x80world");
        let mut reader = MessageReader::new(1024);
        assert_eq!(
            read_all(&mut reader, &frame[..6 + 7]),
            Err(ReadError::NotUtf8),
            "the first invalid byte is enough"
        );
        // A sequence split between fragments (and reads) is valid.
        let euro = "€".as_bytes();
        let mut bytes = client_frame(0x01, &euro[..1]);
        bytes.extend(client_frame(0x00, &euro[1..2]));
        bytes.extend(client_frame(0x80, &euro[2..]));
        for split in 0..bytes.len() {
            let mut reader = MessageReader::new(1024);
            let mut got = read_all(&mut reader, &bytes[..split]).unwrap();
            got.extend(read_all(&mut reader, &bytes[split..]).unwrap());
            assert_eq!(got, vec![Incoming::Text("€".into())]);
        }
        // A message that ends inside a sequence is not.
        let mut cut = client_frame(0x01, b"a");
        cut.extend(client_frame(0x80, &euro[..2]));
        assert_eq!(
            read_all(&mut MessageReader::new(1024), &cut),
            Err(ReadError::NotUtf8)
        );
    }

    #[test]
    fn messages_before_a_bad_frame_are_delivered_with_the_error() {
        let mut bytes = client_frame(0x81, b"first");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0xc1, b"reserved bit"));
        let mut reader = MessageReader::new(1024);
        let mut out = Vec::new();
        assert_eq!(
            reader.feed(&bytes, &mut out),
            Err(ReadError::Protocol("reserved bits set"))
        );
        assert_eq!(
            out,
            vec![
                Incoming::Text("first".into()),
                Incoming::Ping(b"p".to_vec())
            ]
        );
    }

    #[test]
    fn an_idle_reader_is_small_and_holds_nothing() {
        // It is part of every idle connection's memory.
        assert!(std::mem::size_of::<MessageReader>() <= 48);
        let mut reader = MessageReader::new(1024);
        read_all(&mut reader, &client_frame(0x81, b"refresh")).unwrap();
        assert!(reader.state.is_none());
        read_all(&mut reader, &client_frame(0x81, b"refresh")[..3]).unwrap();
        assert!(reader.state.is_some(), "a partial header is kept");
    }

    #[test]
    fn a_slowly_sent_large_frame_holds_what_arrived_not_what_was_announced() {
        let frame = client_frame(0x82, &vec![7; 60_000]);
        let mut reader = MessageReader::new(64 * 1024);
        read_all(&mut reader, &frame[..20]).unwrap();
        assert!(reader.buffered() <= MAX_RESERVE, "{}", reader.buffered());
        assert_eq!(
            read_all(&mut reader, &frame[20..]).unwrap(),
            vec![Incoming::Binary(vec![7; 60_000])]
        );
        assert_eq!(reader.buffered(), 0);
    }
}

/// Property tests of the parser: whatever the bytes and however the socket
/// cuts them, the same result; masked frames round-trip; no panic; nothing
/// held beyond the limits.
#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use proptest::sample::Index;

    use super::*;

    /// A frame as a client could send it, valid or not.
    #[derive(Debug, Clone)]
    struct RawFrame {
        fin: bool,
        rsv: u8,
        opcode: u8,
        masked: bool,
        mask: [u8; 4],
        /// 0: shortest length form, 1: 16-bit form, 2: 64-bit form (if
        /// the payload fits them).
        length_form: u8,
        payload: Vec<u8>,
    }

    fn encode(f: &RawFrame) -> Vec<u8> {
        let mut out = vec![u8::from(f.fin) << 7 | (f.rsv & 7) << 4 | (f.opcode & 0x0F)];
        let bit = if f.masked { 0x80 } else { 0 };
        let n = f.payload.len();
        match (f.length_form, n) {
            (0, 0..=125) => out.push(bit | n as u8),
            (0 | 1, 0..=0xFFFF) => {
                out.push(bit | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(bit | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if f.masked {
            out.extend_from_slice(&f.mask);
            out.extend(f.payload.iter().enumerate().map(|(i, b)| b ^ f.mask[i & 3]));
        } else {
            out.extend_from_slice(&f.payload);
        }
        out
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            6 => prop::collection::vec(any::<u8>(), 0..40),
            3 => ".{0,30}".prop_map(String::into_bytes),
            2 => (prop::sample::select(vec![1000u16, 1001, 3000, 0, 1005, 5000]), ".{0,20}")
                .prop_map(|(code, reason)| [&code.to_be_bytes()[..], reason.as_bytes()].concat()),
            1 => prop::collection::vec(any::<u8>(), 100..400),
        ]
    }

    /// Mostly plausible frames, sometimes broken in one way or another.
    fn raw_frame() -> impl Strategy<Value = RawFrame> {
        (
            prop_oneof![4 => Just(true), 1 => Just(false)],
            prop_oneof![19 => Just(0u8), 1 => 1u8..8],
            prop_oneof![
                3 => Just(opcode::TEXT),
                2 => Just(opcode::CONTINUATION),
                1 => Just(opcode::BINARY),
                1 => Just(opcode::PING),
                1 => Just(opcode::PONG),
                1 => Just(opcode::CLOSE),
                1 => 0u8..16,
            ],
            prop_oneof![19 => Just(true), 1 => Just(false)],
            any::<[u8; 4]>(),
            0u8..3,
            payload(),
        )
            .prop_map(
                |(fin, rsv, opcode, masked, mask, length_form, payload)| RawFrame {
                    fin,
                    rsv,
                    opcode,
                    masked,
                    mask,
                    length_form,
                    payload,
                },
            )
    }

    /// Feeds `bytes` cut at `cuts`: the messages and the error, if any.
    fn feed_cut(
        max: usize,
        bytes: &[u8],
        cuts: &[Index],
    ) -> (Vec<Incoming>, Option<ReadError>, MessageReader) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut reader = MessageReader::new(max);
        let mut out = Vec::new();
        let mut error = None;
        for pair in points.windows(2) {
            if let Err(e) = reader.feed(&bytes[pair[0]..pair[1]], &mut out) {
                error = Some(e);
                break;
            }
        }
        (out, error, reader)
    }

    /// A well-formed client conversation and what the parser must make of
    /// it.
    #[derive(Debug, Clone)]
    enum Item {
        /// A data message cut into fragments at `cuts`, with a ping after
        /// some of the fragments.
        Message {
            text: bool,
            payload: Vec<u8>,
            cuts: Vec<Index>,
            pings: Vec<(Index, Vec<u8>)>,
        },
        Pong(Vec<u8>),
    }

    fn item() -> impl Strategy<Value = Item> {
        let body = prop_oneof![
            9 => prop::collection::vec(any::<u8>(), 0..300),
            1 => prop::collection::vec(any::<u8>(), 65_530..66_000),
        ];
        let text = prop_oneof![
            9 => ".{0,100}".prop_map(String::into_bytes),
            1 => "[a-zé€😀]{0,20}".prop_map(|s| s.repeat(3000).into_bytes()),
        ];
        let control = prop::collection::vec(any::<u8>(), 0..=125);
        prop_oneof![
            4 => (
                prop_oneof![body.prop_map(|b| (false, b)), text.prop_map(|t| (true, t))],
                prop::collection::vec(any::<Index>(), 0..5),
                prop::collection::vec((any::<Index>(), control.clone()), 0..3),
            )
                .prop_map(|((text, payload), cuts, pings)| Item::Message {
                    text,
                    payload,
                    cuts,
                    pings,
                }),
            1 => control.prop_map(Item::Pong),
        ]
    }

    /// The frames of `items` (masked with `mask`), then a close, and the
    /// messages the parser must return.
    fn conversation(items: &[Item], mask: [u8; 4], close: u16) -> (Vec<u8>, Vec<Incoming>) {
        let frame = |fin: bool, opcode: u8, payload: &[u8]| {
            encode(&RawFrame {
                fin,
                rsv: 0,
                opcode,
                masked: true,
                mask,
                length_form: 0,
                payload: payload.to_vec(),
            })
        };
        let mut bytes = Vec::new();
        let mut want = Vec::new();
        for item in items {
            match item {
                Item::Pong(p) => {
                    bytes.extend(frame(true, opcode::PONG, p));
                    want.push(Incoming::Pong);
                }
                Item::Message {
                    text,
                    payload,
                    cuts,
                    pings,
                } => {
                    let mut points: Vec<usize> =
                        cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
                    points.sort_unstable();
                    points.dedup();
                    points.retain(|p| *p != 0 && *p != payload.len());
                    points.insert(0, 0);
                    points.push(payload.len());
                    let pieces = points.len() - 1;
                    for (i, pair) in points.windows(2).enumerate() {
                        let first = if i == 0 {
                            if *text { opcode::TEXT } else { opcode::BINARY }
                        } else {
                            opcode::CONTINUATION
                        };
                        bytes.extend(frame(i + 1 == pieces, first, &payload[pair[0]..pair[1]]));
                        for (at, ping) in pings {
                            if at.index(pieces) == i && i + 1 < pieces {
                                bytes.extend(frame(true, opcode::PING, ping));
                                want.push(Incoming::Ping(ping.clone()));
                            }
                        }
                    }
                    want.push(match std::str::from_utf8(payload) {
                        Ok(t) if *text => Incoming::Text(t.to_owned()),
                        _ => Incoming::Binary(payload.clone()),
                    });
                }
            }
        }
        bytes.extend(frame(true, opcode::CLOSE, &close.to_be_bytes()));
        want.push(Incoming::Close(Some(close)));
        (bytes, want)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any byte stream gives the same messages and the same error
        /// however the socket cuts it.
        #[test]
        fn any_split_gives_the_same_result(
            frames in prop::collection::vec(raw_frame(), 0..8),
            garbage in prop::collection::vec(any::<u8>(), 0..8),
            max in prop_oneof![Just(64 * 1024), 0usize..300],
            cuts in prop::collection::vec(any::<Index>(), 0..12),
        ) {
            let mut bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
            bytes.extend(garbage);
            let (whole, whole_error, _) = feed_cut(max, &bytes, &[]);
            let (cut, cut_error, _) = feed_cut(max, &bytes, &cuts);
            prop_assert_eq!(whole_error, cut_error);
            prop_assert_eq!(whole, cut);
        }

        /// Well-formed messages — fragmented, with pings between the
        /// fragments, masked with any key, cut anywhere — come out as they
        /// went in.
        #[test]
        fn masked_messages_round_trip(
            items in prop::collection::vec(item(), 0..6),
            mask in any::<[u8; 4]>(),
            close in prop::sample::select(vec![1000u16, 1001, 1011, 3000, 4999]),
            cuts in prop::collection::vec(any::<Index>(), 0..12),
        ) {
            let (bytes, want) = conversation(&items, mask, close);
            let (got, error, reader) = feed_cut(1 << 20, &bytes, &cuts);
            prop_assert_eq!(error, None);
            prop_assert_eq!(got, want);
            prop_assert_eq!(reader.buffered(), 0, "nothing is held between messages");
        }

        /// A bad frame after well-formed messages: every message before it
        /// is returned, with the error.
        #[test]
        fn messages_before_a_bad_frame_are_kept(
            items in prop::collection::vec(item(), 0..4),
            mask in any::<[u8; 4]>(),
            bad in prop::sample::select(vec![
                (b"\xc1\x80abcd".to_vec(), ReadError::Protocol("reserved bits set")),
                (b"\x81\x00".to_vec(), ReadError::Protocol("client frame not masked")),
                (b"\x83\x80abcd".to_vec(), ReadError::Protocol("unknown opcode")),
                (b"\x80\x80abcd".to_vec(), ReadError::Protocol("continuation without a message")),
                (b"\x88\x82\0\0\0\0\x03\xed".to_vec(), ReadError::Protocol("invalid close code")),
                (b"\x81\x81\0\0\0\0\xff".to_vec(), ReadError::NotUtf8),
            ]),
            cuts in prop::collection::vec(any::<Index>(), 0..12),
        ) {
            let (mut bytes, mut want) = conversation(&items, mask, 1000);
            let close = encode(&RawFrame {
                fin: true, rsv: 0, opcode: opcode::CLOSE, masked: true, mask,
                length_form: 0, payload: 1000u16.to_be_bytes().to_vec(),
            });
            bytes.truncate(bytes.len() - close.len());
            want.pop();
            bytes.extend(&bad.0);
            let (got, error, _) = feed_cut(1 << 20, &bytes, &cuts);
            prop_assert_eq!(error, Some(bad.1));
            prop_assert_eq!(got, want);
        }

        /// Arbitrary bytes never panic, and the reader never holds much
        /// more than the message limit.
        #[test]
        fn arbitrary_bytes_never_panic_nor_exceed_the_limit(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16),
            max in 0usize..2000,
        ) {
            let mut reader = MessageReader::new(max);
            let mut out = Vec::new();
            for chunk in &chunks {
                let _ = reader.feed(chunk, &mut out);
                prop_assert!(
                    reader.buffered() <= 2 * max.max(MAX_RESERVE) + MAX_CONTROL_PAYLOAD,
                    "{} bytes held with a limit of {}", reader.buffered(), max
                );
            }
        }

        /// A length beyond the limit is refused from the header, before
        /// any payload arrives and without a buffer for it — in a first
        /// frame or in a continuation that would take the message over.
        #[test]
        fn lengths_beyond_the_limit_are_refused_from_the_header(
            max in 0usize..100_000,
            over in 1u64..(1 << 62),
            first in 0usize..100,
            mask in any::<[u8; 4]>(),
        ) {
            // Within the limit, the buffer reserved before the payload
            // arrives is bounded by MAX_RESERVE, not by the announcement.
            let mut head = vec![0x82, 0x80 | 127];
            head.extend_from_slice(&(max as u64).to_be_bytes());
            head.extend_from_slice(&mask);
            let mut reader = MessageReader::new(max);
            prop_assert_eq!(read(&mut reader, &head), Ok(vec![]));
            prop_assert!(reader.buffered() <= max.min(MAX_RESERVE));

            let announced = max as u64 + over;
            let mut head = vec![0x82, 0x80 | 127];
            head.extend_from_slice(&announced.to_be_bytes());
            head.extend_from_slice(&mask);
            let mut reader = MessageReader::new(max);
            prop_assert_eq!(read(&mut reader, &head), Err(ReadError::TooBig));
            prop_assert_eq!(reader.buffered(), 0);

            // A fragmented message whose continuation would exceed it.
            let first = first.min(max);
            let mut reader = MessageReader::new(max);
            let start = encode(&RawFrame {
                fin: false, rsv: 0, opcode: opcode::BINARY, masked: true, mask,
                length_form: 0, payload: vec![7; first],
            });
            prop_assert_eq!(read(&mut reader, &start), Ok(vec![]));
            let held = reader.buffered();
            let mut more = vec![0x80, 0x80 | 127];
            more.extend_from_slice(&((max - first) as u64 + over).to_be_bytes());
            more.extend_from_slice(&mask);
            prop_assert_eq!(read(&mut reader, &more), Err(ReadError::TooBig));
            prop_assert!(reader.buffered() <= held);
        }
    }

    fn read(reader: &mut MessageReader, bytes: &[u8]) -> Result<Vec<Incoming>, ReadError> {
        let mut out = Vec::new();
        reader.feed(bytes, &mut out)?;
        Ok(out)
    }
}
