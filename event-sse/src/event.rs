//! What the SSE writer needs to know about an event: [`SseEvent`].
//!
//! The endpoint for matric's own events ([`SseEndpoint`](crate::SseEndpoint))
//! streams [`event_core::Event`]s; a third-party service streams its own type
//! through [`SseChannel`](crate::SseChannel) by implementing this trait. The
//! writer only ever asks for a name, an id and ready-made JSON bytes, so an
//! implementation that caches its JSON (as `Event` does) is serialized once
//! however many clients receive it.

use std::time::Instant;

use bytes::Bytes;
use event_core::{Event, EventKind};
use uuid::Uuid;

/// The two frame formats of PROTOCOL §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `id: <seq>` / `event: <TypeName>` / `data: <flat json>`.
    #[default]
    V1,
    /// `event: <dot.name>` / `id: <uuid>` / `data: <envelope json>`.
    Envelope,
}

impl Format {
    /// Parses the `?format=` value (`v1` or `envelope`, case-insensitive).
    pub fn parse(text: &str) -> Option<Format> {
        if text.eq_ignore_ascii_case("v1") {
            Some(Format::V1)
        } else if text.eq_ignore_ascii_case("envelope") {
            Some(Format::Envelope)
        } else {
            None
        }
    }

    /// `v1` or `envelope`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::V1 => "v1",
            Format::Envelope => "envelope",
        }
    }
}

/// The `id:` of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseId<'a> {
    /// A decimal number (a sequence).
    Seq(u64),
    /// A UUID, written lowercase hyphenated.
    Uuid(Uuid),
    /// Free text; must not contain line breaks or NUL (they are dropped).
    Text(&'a str),
}

/// An event the SSE writer can frame.
///
/// Only [`event_type`](Self::event_type), [`sequence`](Self::sequence) and
/// [`data`](Self::data) are required. `sequence` must increase from one event
/// to the next: replay and the replay/live hand-over rely on it.
///
/// ```
/// use event_sse::{Format, SseEvent};
/// use event_sse::bytes::Bytes;
///
/// struct Tick { n: u64, json: Bytes }
///
/// impl SseEvent for Tick {
///     fn event_type(&self, _format: Format) -> &str { "tick" }
///     fn sequence(&self) -> u64 { self.n }
///     fn data(&self, _format: Format) -> Bytes { self.json.clone() }
/// }
/// ```
pub trait SseEvent: Send + Sync + 'static {
    /// The `event:` name in `format`.
    fn event_type(&self, format: Format) -> &str;

    /// The position of the event in its stream (strictly increasing).
    fn sequence(&self) -> u64;

    /// The `id:` in `format`; the sequence number unless overridden.
    fn id(&self, format: Format) -> SseId<'_> {
        let _ = format;
        SseId::Seq(self.sequence())
    }

    /// The JSON written as `data:` in `format`. Line breaks in it are
    /// written as several `data:` lines, which clients join back.
    fn data(&self, format: Format) -> Bytes;

    /// The matric event kind, for per-type metrics (`None` for other types).
    fn kind(&self) -> Option<EventKind> {
        None
    }

    /// When the event was published, for the latency histogram.
    fn published_at(&self) -> Option<Instant> {
        None
    }
}

impl SseEvent for Event {
    fn event_type(&self, format: Format) -> &str {
        match format {
            Format::V1 => self.kind().type_name(),
            Format::Envelope => self.kind().dot_name(),
        }
    }

    fn sequence(&self) -> u64 {
        self.seq()
    }

    fn id(&self, format: Format) -> SseId<'_> {
        match format {
            Format::V1 => SseId::Seq(self.seq()),
            Format::Envelope => SseId::Uuid(Event::id(self)),
        }
    }

    fn data(&self, format: Format) -> Bytes {
        match format {
            Format::V1 => self.json().clone(),
            Format::Envelope => self.envelope_json().clone(),
        }
    }

    fn kind(&self) -> Option<EventKind> {
        Some(Event::kind(self))
    }

    fn published_at(&self) -> Option<Instant> {
        Some(Event::published_at(self))
    }
}
