//! Byte-exact SSE frames (PROTOCOL §3): LF line endings, fields in the
//! order the format prescribes, one blank line after each frame.
//!
//! Frames are appended to a connection's pending buffer, so everything a
//! connection has waiting goes out as one body chunk.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

use crate::event::{Format, SseEvent, SseId};

/// The comment written on idle streams.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Appends `retry: <ms>`.
pub fn write_retry(out: &mut BytesMut, retry_ms: u64) {
    let _ = write!(out, "retry: {retry_ms}\n\n");
}

/// Appends one event frame in `format`.
pub fn write_event<E: SseEvent + ?Sized>(out: &mut BytesMut, event: &E, format: Format) {
    let data = event.data(format);
    out.reserve(data.len() + 96);
    match format {
        Format::V1 => {
            write_id(out, event.id(format));
            write_line(out, b"event: ", event.event_type(format).as_bytes());
        }
        Format::Envelope => {
            write_line(out, b"event: ", event.event_type(format).as_bytes());
            write_id(out, event.id(format));
        }
    }
    write_data(out, &data);
    out.put_u8(b'\n');
}

/// Appends a synthetic frame (no `id:` line): `event:` then `data:`.
pub fn write_synthetic(out: &mut BytesMut, event: &str, data: &[u8]) {
    write_line(out, b"event: ", event.as_bytes());
    write_data(out, data);
    out.put_u8(b'\n');
}

/// Appends `events.lagged` with the number of events the client missed.
pub fn write_lagged(out: &mut BytesMut, dropped: u64) {
    let data = format!(r#"{{"type":"events.lagged","dropped_count":{dropped}}}"#);
    write_synthetic(out, "events.lagged", data.as_bytes());
}

/// Appends `resync_required` naming the cursor that could not be served.
pub fn write_resync(out: &mut BytesMut, last_event_id: &str) {
    // Built by hand: `type` must come first, and serde_json's maps sort keys.
    let id = serde_json::to_string(last_event_id).unwrap_or_else(|_| "\"\"".to_owned());
    let data =
        format!(r#"{{"type":"resync_required","reason":"cursor_expired","last_event_id":{id}}}"#);
    write_synthetic(out, "resync_required", data.as_bytes());
}

fn write_id(out: &mut BytesMut, id: SseId<'_>) {
    out.put_slice(b"id: ");
    match id {
        SseId::Seq(n) => {
            let _ = write!(out, "{n}");
        }
        SseId::Uuid(u) => {
            let mut buf = uuid::Uuid::encode_buffer();
            out.put_slice(u.hyphenated().encode_lower(&mut buf).as_bytes());
        }
        SseId::Text(t) => {
            // A line break would end the field; a NUL makes clients ignore the id.
            for b in t.bytes().filter(|b| !matches!(b, b'\n' | b'\r' | 0)) {
                out.put_u8(b);
            }
        }
    }
    out.put_u8(b'\n');
}

fn write_line(out: &mut BytesMut, field: &[u8], value: &[u8]) {
    out.put_slice(field);
    for &b in value.iter().filter(|b| !matches!(b, b'\n' | b'\r')) {
        out.put_u8(b);
    }
    out.put_u8(b'\n');
}

/// Writes `data:` lines; CR, LF and CRLF in the payload start a new line.
fn write_data(out: &mut BytesMut, data: &[u8]) {
    if !data.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        out.put_slice(b"data: ");
        out.put_slice(data);
        out.put_u8(b'\n');
        return;
    }
    let mut rest = data;
    loop {
        let end = rest
            .iter()
            .position(|b| matches!(b, b'\n' | b'\r'))
            .unwrap_or(rest.len());
        out.put_slice(b"data: ");
        out.put_slice(&rest[..end]);
        out.put_u8(b'\n');
        if end == rest.len() {
            return;
        }
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    struct Plain(&'static str);

    impl SseEvent for Plain {
        fn event_type(&self, _: Format) -> &str {
            "plain"
        }
        fn sequence(&self) -> u64 {
            7
        }
        fn data(&self, _: Format) -> Bytes {
            Bytes::from_static(self.0.as_bytes())
        }
    }

    #[test]
    fn multi_line_data_is_split() {
        let mut out = BytesMut::new();
        write_event(&mut out, &Plain("{\n\"a\":1\r\n}"), Format::V1);
        assert_eq!(
            &out[..],
            b"id: 7\nevent: plain\ndata: {\ndata: \"a\":1\ndata: }\n\n"
        );
    }

    #[test]
    fn envelope_puts_event_first() {
        let mut out = BytesMut::new();
        write_event(&mut out, &Plain("{}"), Format::Envelope);
        assert_eq!(&out[..], b"event: plain\nid: 7\ndata: {}\n\n");
    }

    #[test]
    fn synthetic_frames() {
        let mut out = BytesMut::new();
        write_retry(&mut out, 3000);
        write_lagged(&mut out, 12);
        write_resync(&mut out, "a\"b");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "retry: 3000\n\nevent: events.lagged\ndata: {\"type\":\"events.lagged\",\"dropped_count\":12}\n\n\
             event: resync_required\ndata: {\"type\":\"resync_required\",\"reason\":\"cursor_expired\",\"last_event_id\":\"a\\\"b\"}\n\n"
        );
    }
}
