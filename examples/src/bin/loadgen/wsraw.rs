//! A WebSocket subscriber that speaks the framing by hand (`--ws-client
//! raw|deflate`): it counts the bytes it reads off the socket and, with
//! `deflate`, offers permessage-deflate (RFC 7692) and inflates compressed
//! messages — tokio-tungstenite does neither. What the benchmark of
//! compression compares: bytes on the wire per event with and without it.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::SubConfig;

/// A message the tracker cares about.
pub enum Msg {
    /// A text message's payload (inflated if it came compressed).
    Text(Vec<u8>),
    /// A close frame, with its code if any.
    Close(Option<u16>),
}

/// One connection.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server agreed to permessage-deflate.
    agreed: bool,
    inflater: Option<flate2::Decompress>,
    /// A message in progress (fragmented): its payload and RSV1.
    partial: Option<(Vec<u8>, bool)>,
    /// Bytes read off the socket since the upgrade's answer.
    pub wire_bytes: u64,
    /// Messages that came compressed.
    pub compressed: u64,
}

/// The mask of every frame this client sends (the server only checks that
/// one is there).
const MASK: [u8; 4] = [0x5a, 0xa5, 0x3c, 0xc3];

impl RawWs {
    /// Upgrades (offering permessage-deflate when `offer`) and reads up to
    /// the first text message (the `QueueStatus`).
    pub async fn connect(cfg: &SubConfig, offer: bool) -> Result<RawWs, String> {
        let mut stream = crate::source::connect(cfg.target.addr)
            .await
            .map_err(|e| format!("ws connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let extension = if offer {
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        } else {
            ""
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extension}\r\n",
            cfg.ws_path, cfg.target.authority
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("ws write: {e}"))?;
        let mut buf = Vec::with_capacity(4096);
        let end = loop {
            if let Some(end) = memchr::memmem::find(&buf, b"\r\n\r\n") {
                break end;
            }
            if buf.len() > 16 * 1024
                || stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| format!("ws read: {e}"))?
                    == 0
            {
                return Err("ws: no upgrade answer".to_owned());
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 101") {
            return Err(format!("ws: {}", head.lines().next().unwrap_or("")));
        }
        let agreed = head.lines().any(|l| {
            l.starts_with("sec-websocket-extensions:") && l.contains("permessage-deflate")
        });
        buf.drain(..end + 4);
        let mut ws = RawWs {
            stream,
            wire_bytes: buf.len() as u64,
            buf,
            agreed,
            inflater: agreed.then(|| flate2::Decompress::new(false)),
            partial: None,
            compressed: 0,
        };
        // `next` skips everything but text and close.
        match ws.next().await? {
            Some(Msg::Text(_)) => Ok(ws),
            Some(Msg::Close(code)) => Err(format!("ws closed before the first frame ({code:?})")),
            None => Err("ws ended before the first frame".to_owned()),
        }
    }

    /// The next text or close message (pings answered, the rest skipped);
    /// `None` at the end of the stream.
    pub async fn next(&mut self) -> Result<Option<Msg>, String> {
        loop {
            while let Some((b0, payload)) = self.frame()? {
                if let Some(msg) = self.handle(b0, payload).await? {
                    return Ok(Some(msg));
                }
            }
            self.buf.reserve(64 * 1024);
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("ws read: {e}"))?;
            if n == 0 {
                return Ok(None);
            }
            self.wire_bytes += n as u64;
        }
    }

    /// Takes one complete server frame (first header byte, payload) out of
    /// the buffer, if there is one.
    fn frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, String> {
        let [b0, b1, ..] = self.buf[..] else {
            return Ok(None);
        };
        if b1 & 0x80 != 0 {
            return Err("ws: a masked server frame".to_owned());
        }
        let (len, at) = match b1 & 0x7f {
            126 if self.buf.len() >= 4 => (
                usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
                4,
            ),
            127 if self.buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&self.buf[2..10]);
                (
                    usize::try_from(u64::from_be_bytes(n)).map_err(|e| e.to_string())?,
                    10,
                )
            }
            126 | 127 => return Ok(None),
            n => (usize::from(n), 2),
        };
        if self.buf.len() < at + len {
            return Ok(None);
        }
        let payload = self.buf[at..at + len].to_vec();
        self.buf.drain(..at + len);
        Ok(Some((b0, payload)))
    }

    async fn handle(&mut self, b0: u8, payload: Vec<u8>) -> Result<Option<Msg>, String> {
        let (fin, rsv1, opcode) = (b0 & 0x80 != 0, b0 & 0x40 != 0, b0 & 0x0f);
        match opcode {
            0x8 => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return Ok(Some(Msg::Close(code)));
            }
            0x9 => {
                self.send(0x8a, &payload).await?;
                return Ok(None);
            }
            0xa => return Ok(None),
            0x0 => {
                let Some((data, _)) = self.partial.as_mut() else {
                    return Err("ws: a continuation without a message".to_owned());
                };
                data.extend_from_slice(&payload);
            }
            _ => self.partial = Some((payload, rsv1)),
        }
        if !fin {
            return Ok(None);
        }
        let Some((data, compressed)) = self.partial.take() else {
            return Ok(None);
        };
        let data = if compressed {
            if !self.agreed {
                return Err("ws: RSV1 without permessage-deflate".to_owned());
            }
            self.compressed += 1;
            self.inflate(&data)?
        } else {
            data
        };
        Ok((opcode == 0x1 || opcode == 0x0).then_some(Msg::Text(data)))
    }

    /// Inflates one message on its own (the server takes no context over).
    fn inflate(&mut self, data: &[u8]) -> Result<Vec<u8>, String> {
        let d = self
            .inflater
            .get_or_insert_with(|| flate2::Decompress::new(false));
        d.reset(false);
        let mut input = Vec::with_capacity(data.len() + 4);
        input.extend_from_slice(data);
        input.extend_from_slice(&[0, 0, 0xff, 0xff]);
        let mut out = Vec::with_capacity(data.len() * 4 + 64);
        let mut rest = &input[..];
        loop {
            let before = d.total_in();
            d.decompress_vec(rest, &mut out, flate2::FlushDecompress::Sync)
                .map_err(|e| format!("ws: inflate: {e}"))?;
            rest = &rest[usize::try_from(d.total_in() - before).map_err(|e| e.to_string())?..];
            if rest.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(1024));
        }
    }

    /// Sends one masked frame.
    async fn send(&mut self, first: u8, payload: &[u8]) -> Result<(), String> {
        let payload = &payload[..payload.len().min(125)];
        let mut frame = vec![first, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("ws write: {e}"))
    }

    /// Starts the close handshake (code 1000).
    pub async fn close(&mut self) {
        let _ = self.send(0x88, &1000u16.to_be_bytes()).await;
    }
}
