//! What the SSE writer needs to know about an event: [`SseEvent`].
//!
//! The endpoint for matric's own events ([`SseEndpoint`](crate::SseEndpoint))
//! streams [`event_core::Event`]s; a third-party service streams its own type
//! through [`SseChannel`](crate::SseChannel) by implementing this trait. The
//! writer only ever asks for a name, an id and ready-made JSON bytes, so an
//! implementation that caches its JSON (as `Event` does) is serialized once
//! however many clients receive it. It may also hand over the whole frame
//! ([`SseEvent::frame`]): `Event` renders each of its two frames once, in its
//! [`rendered`](event_core::Event::rendered) slots, and every connection
//! writes those shared bytes instead of framing the event again.

use std::sync::LazyLock;
use std::time::Instant;

use bytes::Bytes;
use event_core::event::RenderKey;
use event_core::{Event, EventKind};
use uuid::Uuid;

/// Where an [`Event`] caches its `v1` frame.
static V1_FRAME: LazyLock<RenderKey> = LazyLock::new(RenderKey::register);
/// Where an [`Event`] caches its `envelope` frame.
static ENVELOPE_FRAME: LazyLock<RenderKey> = LazyLock::new(RenderKey::register);
/// How many times its frame a pack may hold: gzip's stand-alone and delta
/// segments, brotli's and zstd's pieces, each at most about the frame
/// (incompressible text), for the replay ring's bound.
pub(crate) const PACK_WEIGHT: usize = 4;
/// Where an [`Event`] caches the compressed pieces of its `v1` frame
/// ([`compress::pack`](crate::compress::pack)).
static V1_PACK: LazyLock<RenderKey> = LazyLock::new(|| RenderKey::register_weighted(PACK_WEIGHT));
/// Where an [`Event`] caches the compressed pieces of its `envelope` frame.
static ENVELOPE_PACK: LazyLock<RenderKey> =
    LazyLock::new(|| RenderKey::register_weighted(PACK_WEIGHT));

/// Registers this crate's render keys now rather than at the first frame,
/// so that every event the bus weighs for its replay ring counts them
/// (called when an endpoint is built).
pub(crate) fn register_render_keys() {
    LazyLock::force(&V1_FRAME);
    LazyLock::force(&ENVELOPE_FRAME);
}

/// Registers the keys of the compressed pieces (called when an endpoint
/// that offers compression is built); `false` if events cannot cache them
/// (the process registered more keys than events hold), in which case the
/// endpoint does not compress: each connection would compress every event.
pub(crate) fn register_pack_keys() -> bool {
    V1_PACK.is_cached() && ENVELOPE_PACK.is_cached()
}

/// The two frame formats of docs/protocol.md §3.
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

    /// The [`Event::rendered`] key this crate keeps the event's frame
    /// under.
    fn render_key(self) -> RenderKey {
        match self {
            Format::V1 => *V1_FRAME,
            Format::Envelope => *ENVELOPE_FRAME,
        }
    }

    /// The key of the event's compressed pieces in this format.
    fn pack_key(self) -> RenderKey {
        match self {
            Format::V1 => *V1_PACK,
            Format::Envelope => *ENVELOPE_PACK,
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
/// to the next: replay and the replay/live hand-over rely on it. An
/// [`SseChannel`](crate::SseChannel) assigns it: its
/// [`publish`](crate::SseChannel::publish) hands each event its number to
/// keep.
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

    /// The whole frame in `format`, if the event keeps it ready-made.
    ///
    /// The writer then writes these bytes as they are instead of framing
    /// [`event_type`](Self::event_type), [`id`](Self::id) and
    /// [`data`](Self::data) again for every connection. An override must
    /// return exactly what [`frame::render_frame`](crate::frame::render_frame)
    /// makes of the event: the simple way is to call it on first use and
    /// keep the result, so a thousand clients cost one rendering. `None`
    /// (the default) frames the event per connection.
    fn frame(&self, format: Format) -> Option<Bytes> {
        let _ = format;
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

    fn frame(&self, format: Format) -> Option<Bytes> {
        // `None` (no cached frame: framed per connection) only when the
        // process registered more render keys than events hold.
        self.rendered(format.render_key(), |ev| {
            crate::frame::render_frame(ev, format)
        })
        .cloned()
    }
}

/// An event whose compressed pieces can be cached with it (see
/// [`compress`](crate::compress)): the crate's own [`Event`] and the
/// entries of an [`SseChannel`](crate::SseChannel).
pub(crate) trait Packable: SseEvent {
    /// The pack of the event in `format`, made by `render` on the first
    /// call and shared after; `None` when the event cannot cache it.
    fn pack(&self, format: Format, render: impl FnOnce() -> Bytes) -> Option<Bytes>;
}

impl Packable for Event {
    fn pack(&self, format: Format, render: impl FnOnce() -> Bytes) -> Option<Bytes> {
        self.rendered(format.pack_key(), |_| render()).cloned()
    }
}
