//! Byte-exact SSE frames (docs/protocol.md §3): LF line endings, fields in the
//! order the format prescribes, one blank line after each frame.
//!
//! Frames are appended to a connection's pending buffer, so everything a
//! connection has waiting goes out as one body chunk. An event that keeps its
//! frame ready-made ([`SseEvent::frame`]) is framed once, by
//! [`render_frame`], and only copied per connection.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{Format, SseEvent, SseId};

/// The comment written on idle streams.
pub const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Appends `retry: <ms>`.
pub fn write_retry(out: &mut BytesMut, retry_ms: u64) {
    let _ = write!(out, "retry: {retry_ms}\n\n");
}

/// Appends one event frame in `format`: the event's ready-made
/// [`frame`](SseEvent::frame) if it has one, else framed here.
pub fn write_event<E: SseEvent + ?Sized>(out: &mut BytesMut, event: &E, format: Format) {
    match event.frame(format) {
        Some(frame) => out.extend_from_slice(&frame),
        None => write_fields(out, event, format),
    }
}

/// The frame of `event` in `format`, framed from its
/// [`event_type`](SseEvent::event_type), [`id`](SseEvent::id) and
/// [`data`](SseEvent::data) (never from [`SseEvent::frame`]): what an
/// implementation of [`SseEvent::frame`] caches.
pub fn render_frame<E: SseEvent + ?Sized>(event: &E, format: Format) -> Bytes {
    let mut out = BytesMut::new();
    write_fields(&mut out, event, format);
    out.freeze()
}

fn write_fields<E: SseEvent + ?Sized>(out: &mut BytesMut, event: &E, format: Format) {
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

    fn queue_status(seq: u64) -> event_core::Event {
        event_core::Event::new(
            seq,
            uuid::Uuid::now_v7(),
            time::OffsetDateTime::now_utc(),
            event_core::EventMeta::default(),
            event_core::ServerEvent::QueueStatus(event_core::QueueStatus::new(3, 1)),
        )
    }

    #[test]
    fn event_frames_are_rendered_once_and_shared() {
        let ev = queue_status(42);
        for format in [Format::V1, Format::Envelope] {
            let first = ev.frame(format).unwrap();
            // Every later call (every other connection) gets the same bytes.
            let again = ev.frame(format).unwrap();
            assert_eq!(first.as_ptr(), again.as_ptr(), "{format:?}");
            // The cached frame is exactly what per-connection framing makes.
            let mut fields = BytesMut::new();
            write_fields(&mut fields, &ev, format);
            assert_eq!(&first[..], &fields[..], "{format:?}");
            // write_event appends it after what the buffer already holds.
            let prefix = b"retry: 1\n\n";
            let mut out = BytesMut::from(&prefix[..]);
            write_event(&mut out, &ev, format);
            assert_eq!(&out[..prefix.len()], prefix);
            assert_eq!(&out[prefix.len()..], &first[..], "{format:?}");
        }
        let json = std::str::from_utf8(ev.json()).unwrap();
        assert_eq!(
            &ev.frame(Format::V1).unwrap()[..],
            format!("id: 42\nevent: QueueStatus\ndata: {json}\n\n").as_bytes()
        );
        let envelope = std::str::from_utf8(ev.envelope_json()).unwrap();
        assert_eq!(
            &ev.frame(Format::Envelope).unwrap()[..],
            format!(
                "event: queue.status\nid: {}\ndata: {envelope}\n\n",
                event_core::Event::id(&ev)
            )
            .as_bytes()
        );
    }

    #[test]
    fn events_without_a_cached_frame_are_framed_on_each_write() {
        let plain = Plain("{\"a\":1}");
        assert!(plain.frame(Format::V1).is_none());
        let (mut one, mut two) = (BytesMut::new(), BytesMut::new());
        write_event(&mut one, &plain, Format::V1);
        write_event(&mut two, &plain, Format::V1);
        assert_eq!(&one[..], b"id: 7\nevent: plain\ndata: {\"a\":1}\n\n");
        assert_eq!(one, two);
        assert_eq!(render_frame(&plain, Format::V1), one.freeze());
    }

    /// A third-party type that caches its frame the documented way.
    struct Cached {
        plain: Plain,
        v1: std::sync::OnceLock<Bytes>,
    }

    impl SseEvent for Cached {
        fn event_type(&self, format: Format) -> &str {
            self.plain.event_type(format)
        }
        fn sequence(&self) -> u64 {
            self.plain.sequence()
        }
        fn data(&self, format: Format) -> Bytes {
            self.plain.data(format)
        }
        fn frame(&self, format: Format) -> Option<Bytes> {
            (format == Format::V1)
                .then(|| self.v1.get_or_init(|| render_frame(self, format)).clone())
        }
    }

    #[test]
    fn third_party_frame_cache_is_used() {
        let cached = Cached {
            plain: Plain("{\n}"),
            v1: std::sync::OnceLock::new(),
        };
        let mut out = BytesMut::new();
        write_event(&mut out, &cached, Format::V1);
        write_event(&mut out, &cached, Format::Envelope);
        assert_eq!(
            &out[..],
            b"id: 7\nevent: plain\ndata: {\ndata: }\n\nevent: plain\nid: 7\ndata: {\ndata: }\n\n"
        );
        let shared = cached.v1.get().unwrap();
        assert_eq!(cached.frame(Format::V1).unwrap().as_ptr(), shared.as_ptr());
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
