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

use bytes::{BufMut, Bytes, BytesMut};
use event_core::Event;

/// The [`Event::rendered`] slot holding an event's WebSocket text frame.
/// (The SSE crate uses slots 0 and 1.)
pub(crate) const EVENT_FRAME_SLOT: usize = 2;

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
/// Control frames carry at most this much (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A complete frame sent by the server: header, then `payload`.
fn server_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.put_u8(FIN | opcode);
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
    match event.rendered(EVENT_FRAME_SLOT, |ev| text(ev.json())) {
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
    /// A binary message (not part of the protocol; its content is dropped).
    Binary,
    /// A ping, to be answered with a pong carrying this payload.
    Ping(Vec<u8>),
    /// A pong (it only proves the client is alive).
    Pong,
    /// A close frame, with the client's code if it gave one.
    Close(Option<u16>),
}

/// Why the client's bytes could not be read as WebSocket frames; each
/// closes the connection with its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// A frame or message over the size limit (1009).
    TooBig,
    /// Not valid framing: unmasked, reserved bits, unknown opcode,
    /// a misplaced continuation (1002). The text says which.
    Protocol(&'static str),
    /// A text message or close reason that is not UTF-8 (1007).
    NotUtf8,
}

/// A parsed frame header.
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Header bytes, mask included.
    len: usize,
    payload: usize,
}

/// Parses the header at the start of `buf`: `Ok(None)` if more bytes are
/// needed.
fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<Head>, ReadError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(ReadError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        return Err(ReadError::Protocol("client frame not masked"));
    }
    let fin = b0 & FIN != 0;
    let opcode = b0 & 0x0F;
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
    if opcode >= opcode::CLOSE {
        if opcode > opcode::PONG {
            return Err(ReadError::Protocol("unknown opcode"));
        }
        if !fin || payload > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ReadError::Protocol("control frame fragmented or too long"));
        }
    } else if opcode > opcode::BINARY {
        return Err(ReadError::Protocol("unknown opcode"));
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
        opcode,
        mask,
        len,
        payload: payload as usize,
    }))
}

fn unmask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Reads client messages out of the bytes the socket returns.
#[derive(Debug)]
pub(crate) struct MessageReader {
    max_message: usize,
    /// The start of a frame that has not fully arrived.
    partial: Vec<u8>,
    /// A fragmented message in progress: its opcode and payload so far.
    fragments: Option<(u8, Vec<u8>)>,
}

impl MessageReader {
    /// A reader refusing frames and messages over `max_message` bytes.
    pub(crate) fn new(max_message: usize) -> Self {
        MessageReader {
            max_message,
            partial: Vec::new(),
            fragments: None,
        }
    }

    /// Parses `data` (what the socket just returned) and appends every
    /// message it completes to `out`. A partial frame is kept for the next
    /// call. After an error the connection must close.
    pub(crate) fn feed(&mut self, data: &[u8], out: &mut Vec<Incoming>) -> Result<(), ReadError> {
        if self.partial.is_empty() {
            let used = self.parse(data, out)?;
            self.partial.extend_from_slice(&data[used..]);
        } else {
            let mut buf = std::mem::take(&mut self.partial);
            buf.extend_from_slice(data);
            let used = self.parse(&buf, out)?;
            buf.drain(..used);
            // A large message's buffer is not kept once it is done.
            if buf.is_empty() && buf.capacity() > 1024 {
                buf = Vec::new();
            }
            self.partial = buf;
        }
        Ok(())
    }

    /// Parses every complete frame at the start of `buf`; returns the bytes
    /// used.
    fn parse(&mut self, buf: &[u8], out: &mut Vec<Incoming>) -> Result<usize, ReadError> {
        let mut used = 0;
        loop {
            let rest = &buf[used..];
            let Some(head) = parse_head(rest, self.max_message)? else {
                return Ok(used);
            };
            let Some(payload) = rest.get(head.len..head.len + head.payload) else {
                return Ok(used);
            };
            used += head.len + head.payload;
            let mut payload = payload.to_vec();
            unmask(&mut payload, head.mask);
            if let Some(message) = self.frame(head.fin, head.opcode, payload)? {
                out.push(message);
            }
        }
    }

    /// One unmasked frame: a message if it completes one.
    fn frame(
        &mut self,
        fin: bool,
        op: u8,
        payload: Vec<u8>,
    ) -> Result<Option<Incoming>, ReadError> {
        match op {
            opcode::PING => return Ok(Some(Incoming::Ping(payload))),
            opcode::PONG => return Ok(Some(Incoming::Pong)),
            opcode::CLOSE => return close_payload(&payload).map(|c| Some(Incoming::Close(c))),
            _ => {}
        }
        let (op, payload) = match (op, self.fragments.take()) {
            (opcode::CONTINUATION, None) => {
                return Err(ReadError::Protocol("continuation without a message"));
            }
            (opcode::CONTINUATION, Some((first, mut so_far))) => {
                if so_far.len() + payload.len() > self.max_message {
                    return Err(ReadError::TooBig);
                }
                so_far.extend_from_slice(&payload);
                (first, so_far)
            }
            (_, Some(_)) => return Err(ReadError::Protocol("new message inside a fragmented one")),
            (op, None) => (op, payload),
        };
        if !fin {
            self.fragments = Some((op, payload));
            return Ok(None);
        }
        match op {
            opcode::TEXT => String::from_utf8(payload)
                .map(|t| Some(Incoming::Text(t)))
                .map_err(|_| ReadError::NotUtf8),
            _ => Ok(Some(Incoming::Binary)),
        }
    }
}

/// The code of a close frame's payload (none, or two bytes and a UTF-8
/// reason).
fn close_payload(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol("close frame of one byte")),
        [a, b, reason @ ..] => {
            std::str::from_utf8(reason).map_err(|_| ReadError::NotUtf8)?;
            Ok(Some(u16::from_be_bytes([*a, *b])))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as a browser sends it.
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
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
            Incoming::Binary,
            Incoming::Close(Some(1000)),
        ];
        for split in 0..bytes.len() {
            let mut reader = MessageReader::new(1024);
            let mut got = read_all(&mut reader, &bytes[..split]).unwrap();
            got.extend(read_all(&mut reader, &bytes[split..]).unwrap());
            assert_eq!(got, want, "split at {split}");
            assert!(reader.partial.is_empty());
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
        assert_eq!(reader.partial.capacity(), 0);
    }
}
