//! What the bus carries: a [`ServerEvent`] with its sequence number, id, time,
//! scope and actor, plus the two wire renderings cached on first use.
//!
//! Rendering is the expensive part of fan-out. An [`Event`] renders its flat
//! JSON (docs/protocol.md §1) and its envelope JSON (docs/protocol.md §3) at most once each,
//! lazily, and hands out the result as shared [`Bytes`]: a thousand
//! subscribers cost one serialization, not a thousand.
//!
//! Transports that frame the JSON in a wire format of their own (SSE's
//! `id:`/`event:`/`data:` frames) cache their rendering in the event too,
//! through [`Event::rendered`]: a few slots of opaque bytes, filled on first
//! use, that this crate knows nothing about. Each transport registers a
//! [`RenderKey`] per wire format it caches, so adding one needs no change
//! here.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::payload::{EntityType, EventKind, ServerEvent};
use crate::trace::TraceContext;

/// Who caused an event: the envelope's `actor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Actor {
    /// `system`, `user`, `service`, `agent`, …
    pub kind: String,
    /// The actor's id, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A display name, if known. Personal data: never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Actor {
    /// The server itself (the default).
    pub fn system() -> Self {
        Actor {
            kind: "system".to_owned(),
            id: None,
            name: None,
        }
    }

    /// A user, by id.
    pub fn user(id: impl Into<String>) -> Self {
        Actor {
            kind: "user".to_owned(),
            id: Some(id.into()),
            name: None,
        }
    }
}

impl Default for Actor {
    fn default() -> Self {
        Actor::system()
    }
}

/// Everything about an event except its payload and the values the bus
/// assigns (sequence, id, time). Producers fill what they know.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventMeta {
    /// Who caused the event.
    pub actor: Actor,
    /// The memory (archive) the event belongs to; `None` = visible to every principal.
    pub memory: Option<String>,
    /// The tenant the event belongs to; `None` = visible to every principal.
    pub tenant_id: Option<String>,
    /// Groups events of one user action or workflow.
    pub correlation_id: Option<Uuid>,
    /// The event (or request) that caused this one.
    pub causation_id: Option<Uuid>,
    /// The W3C trace context of what published it (see [`crate::trace`]).
    pub trace: Option<TraceContext>,
    /// The topic the producer filed the event under; `None`: its type
    /// family (`job`, `note`, `queue`). See [`Event::topic`].
    pub topic: Option<String>,
}

impl EventMeta {
    /// Sets the memory scope.
    pub fn memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = Some(memory.into());
        self
    }

    /// Sets the tenant scope.
    pub fn tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }

    /// Sets the correlation id.
    pub fn correlation(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Files the event under `topic` (see [`validate_topic`]).
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets the trace context (see [`crate::trace`]).
    pub fn trace(mut self, context: TraceContext) -> Self {
        self.trace = Some(context);
        self
    }

    /// Sets the causation id.
    pub fn causation(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }
}

/// An event as the bus carries it. Immutable once published; shared as `Arc<Event>`.
#[derive(Debug)]
pub struct Event {
    seq: u64,
    id: Uuid,
    occurred_at: OffsetDateTime,
    published_at: Instant,
    meta: EventMeta,
    payload: ServerEvent,
    json: OnceLock<Bytes>,
    envelope_json: OnceLock<Bytes>,
    rendered: [OnceLock<Bytes>; MAX_RENDER_KEYS],
    renders: AtomicU32,
}

/// How many [`RenderKey`]s a process can register: the slots of every
/// event's render cache ([`Event::rendered`]).
///
/// Every event carries this many (empty) slots, about 40 bytes each, so the
/// number stays small: matric's transports take three (SSE two, WebSocket
/// one).
pub const MAX_RENDER_KEYS: usize = 8;

/// Render keys handed out so far (may pass [`MAX_RENDER_KEYS`]: the ones
/// beyond it cache nothing).
static REGISTERED_KEYS: AtomicUsize = AtomicUsize::new(0);
/// The sum of the cached keys' weights ([`RenderKey::register_weighted`]).
static REGISTERED_WEIGHT: AtomicUsize = AtomicUsize::new(0);

/// A transport's slot in every [`Event`]'s render cache: one per wire
/// format the transport renders an event into (see [`Event::rendered`]).
///
/// A transport registers its keys once per process, typically in a static,
/// and before events flow (when its endpoint is built), so that the replay
/// ring's [weight](crate::ReplayRing::weight) of every event counts them:
///
/// ```
/// use std::sync::LazyLock;
/// use event_core::event::RenderKey;
///
/// /// This transport's frame of an event.
/// static FRAME: LazyLock<RenderKey> = LazyLock::new(RenderKey::register);
/// # let _ = *FRAME;
/// ```
///
/// Keys are never shared: two renderings cannot meet in one slot. At most
/// [`MAX_RENDER_KEYS`] keys cache; a key registered beyond that is valid
/// but caches nothing ([`is_cached`](Self::is_cached) is `false`):
/// [`Event::rendered`] returns `None` for it and the transport renders per
/// use, as without a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RenderKey {
    /// The slot; `MAX_RENDER_KEYS` or more for a key that caches nothing.
    index: usize,
}

impl RenderKey {
    /// A new key, distinct from every other. Beyond [`MAX_RENDER_KEYS`]
    /// keys it caches nothing (and a warning is logged).
    pub fn register() -> RenderKey {
        RenderKey::register_weighted(1)
    }

    /// A new key whose rendering may hold up to `weight` times the
    /// event's JSON (a bundle of several compressed forms, say), so the
    /// replay ring's bound reserves that much for it
    /// ([`ReplayRing::weight`](crate::ReplayRing::weight)). [`register`](Self::register)
    /// is weight 1; 0 counts as 1.
    pub fn register_weighted(weight: usize) -> RenderKey {
        let key = RenderKey::claim(&REGISTERED_KEYS);
        if key.is_cached() {
            REGISTERED_WEIGHT.fetch_add(weight.max(1), Ordering::Relaxed);
        } else {
            tracing::warn!(
                max = MAX_RENDER_KEYS,
                "render keys exhausted: this transport's frames are rendered per use, not cached"
            );
        }
        key
    }

    /// The next key of `counter`, saturating past the maximum (so the
    /// count never wraps however often registration is attempted).
    fn claim(counter: &AtomicUsize) -> RenderKey {
        let index = counter
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n <= MAX_RENDER_KEYS).then_some(n + 1)
            })
            .unwrap_or(MAX_RENDER_KEYS);
        RenderKey { index }
    }

    /// Whether events cache the rendering under this key.
    pub fn is_cached(self) -> bool {
        self.index < MAX_RENDER_KEYS
    }

    /// How many keys that cache were registered so far in this process
    /// (at most [`MAX_RENDER_KEYS`]).
    #[inline]
    pub fn registered() -> usize {
        REGISTERED_KEYS.load(Ordering::Relaxed).min(MAX_RENDER_KEYS)
    }

    /// The sum of the weights of the keys that cache: how many times its
    /// JSON an event may hold in renderings.
    #[inline]
    pub fn registered_weight() -> usize {
        REGISTERED_WEIGHT.load(Ordering::Relaxed)
    }
}

impl Event {
    /// Builds an event. The bus does this on publish; other code needs it only
    /// to re-inject events that already have an identity (e.g. from another
    /// instance).
    pub fn new(
        seq: u64,
        id: Uuid,
        occurred_at: OffsetDateTime,
        meta: EventMeta,
        payload: ServerEvent,
    ) -> Self {
        Event {
            seq,
            id,
            occurred_at,
            published_at: Instant::now(),
            meta,
            payload,
            json: OnceLock::new(),
            envelope_json: OnceLock::new(),
            rendered: [const { OnceLock::new() }; MAX_RENDER_KEYS],
            renders: AtomicU32::new(0),
        }
    }

    /// The bus sequence number: strictly increasing per bus, the SSE `v1` `id:`.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The event's UUIDv7, the envelope's `event_id` (ordered like `seq`).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// When the event happened (UTC).
    pub fn occurred_at(&self) -> OffsetDateTime {
        self.occurred_at
    }

    /// When this process published it (monotonic clock), for latency metrics.
    pub fn published_at(&self) -> Instant {
        self.published_at
    }

    /// Actor, scope and correlation.
    pub fn meta(&self) -> &EventMeta {
        &self.meta
    }

    /// The HotM event itself.
    pub fn payload(&self) -> &ServerEvent {
        &self.payload
    }

    /// The kind of the payload.
    pub fn kind(&self) -> EventKind {
        self.payload.kind()
    }

    /// The memory scope, if any.
    pub fn memory(&self) -> Option<&str> {
        self.meta.memory.as_deref()
    }

    /// The tenant scope, if any.
    pub fn tenant_id(&self) -> Option<&str> {
        self.meta.tenant_id.as_deref()
    }

    /// The flat JSON of docs/protocol.md §1 (the WebSocket message, the SSE `v1` data,
    /// the webhook `data`). Rendered on first call, then shared.
    pub fn json(&self) -> &Bytes {
        self.json.get_or_init(|| {
            self.renders.fetch_add(1, Ordering::Relaxed);
            render_json(&self.payload)
        })
    }

    /// Stores the flat JSON if it was rendered before the event was built
    /// (the bus renders a large event ahead of its critical section to
    /// check the size limit), so [`json`](Self::json) does not render it
    /// again.
    pub(crate) fn with_json(self, json: Option<Bytes>) -> Self {
        if let Some(json) = json
            && self.json.set(json).is_ok()
        {
            self.renders.fetch_add(1, Ordering::Relaxed);
        }
        self
    }

    /// The flat JSON if it has been rendered already.
    pub(crate) fn rendered_json(&self) -> Option<&Bytes> {
        self.json.get()
    }

    /// The envelope JSON of docs/protocol.md §3 (the SSE `envelope` data, history).
    /// Rendered on first call, then shared.
    pub fn envelope_json(&self) -> &Bytes {
        self.envelope_json.get_or_init(|| {
            self.renders.fetch_add(1, Ordering::Relaxed);
            Bytes::from(render(&Envelope::from_event(self)))
        })
    }

    /// A rendering of this event in a transport's own wire format, cached
    /// under `key` (see [`RenderKey`]): `render` runs on the first call for
    /// that key, and every later call — from any connection, any thread —
    /// gets the same shared bytes. Concurrent first calls wait for one
    /// render.
    ///
    /// `None` only when `key` caches nothing (registered beyond
    /// [`MAX_RENDER_KEYS`]): the caller then renders without a cache.
    /// `render` must always produce the same bytes for the same key:
    /// whichever call comes first decides what all callers see.
    #[inline]
    pub fn rendered(&self, key: RenderKey, render: impl FnOnce(&Event) -> Bytes) -> Option<&Bytes> {
        let cell = self.rendered.get(key.index)?;
        Some(cell.get_or_init(|| render(self)))
    }

    /// A copy of this event in allocations of its own: its metadata and
    /// payload (copied, not shared), with the same sequence number, id,
    /// times and render count, but none of its cached renderings: those are
    /// made again, once per wire format, if the copy is ever delivered.
    ///
    /// For [`EventBus::relocate_retained`](crate::bus::EventBus::relocate_retained):
    /// the renderings of a retained event are made by whichever worker
    /// thread delivered it first, among the per-connection buffers of that
    /// moment, and after those connections close each one keeps its
    /// page of freed memory resident. A copy made on another thread lands
    /// in memory of its own, and the original's pages can be returned.
    /// The renderings are left behind because they are most of a retained
    /// event's memory (three or four of them, each about the payload's
    /// size) and are needed only if a client replays it: after the mass
    /// close that calls for a relocation, a retained event is more likely
    /// never read again than read, and one read renders it once more.
    pub fn relocated(&self) -> Event {
        Event {
            seq: self.seq,
            id: self.id,
            occurred_at: self.occurred_at,
            published_at: self.published_at,
            meta: self.meta.clone(),
            payload: self.payload.clone(),
            json: OnceLock::new(),
            envelope_json: OnceLock::new(),
            rendered: std::array::from_fn(|_| OnceLock::new()),
            renders: AtomicU32::new(self.renders.load(Ordering::Relaxed)),
        }
    }

    /// Rebuilds an event from its envelope JSON (docs/protocol.md §3, what
    /// [`envelope_json`](Self::envelope_json) renders) with sequence number
    /// `seq`: for events read back from a log or another instance. The
    /// bytes become the event's cached envelope rendering, so an event read
    /// back is not rendered again in that form. `occurred_at` has the
    /// envelope's millisecond precision.
    pub fn from_envelope_json(seq: u64, bytes: &[u8]) -> Result<Event, serde_json::Error> {
        let envelope: Envelope = serde_json::from_slice(bytes)?;
        let meta = envelope.meta();
        let event = Event::new(
            seq,
            envelope.event_id,
            envelope.occurred_at,
            meta,
            envelope.payload,
        );
        let _ = event.envelope_json.set(Bytes::copy_from_slice(bytes));
        Ok(event)
    }

    /// The topic the event belongs to: the one its producer named, else its
    /// type family (`job`, `note`, `queue`).
    pub fn topic(&self) -> &str {
        self.meta
            .topic
            .as_deref()
            .unwrap_or_else(|| self.payload.kind().family())
    }

    /// The envelope as a value.
    pub fn to_envelope(&self) -> Envelope {
        Envelope::from_event(self)
    }

    /// How many times this event has been serialized to JSON (at most one
    /// per form, [`json`](Self::json) and [`envelope_json`](Self::envelope_json);
    /// [`rendered`](Self::rendered) slots are not counted). Exposed so tests
    /// and benchmarks can prove fan-out does not re-serialize.
    pub fn render_count(&self) -> u32 {
        self.renders.load(Ordering::Relaxed)
    }
}

/// The flat JSON of docs/protocol.md §1 of a payload, as [`Event::json`] renders it.
pub(crate) fn render_json(payload: &ServerEvent) -> Bytes {
    Bytes::from(render(payload))
}

/// Serializes a value that cannot fail to serialize (no maps with non-string
/// keys, no custom serializers that error).
fn render<T: Serialize>(value: &T) -> Vec<u8> {
    // The types rendered here are plain structs of strings, numbers, UUIDs and
    // vectors; serde_json only fails on non-string map keys or I/O errors, and
    // neither can occur. An empty object is still a valid fallback.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

/// The G2 envelope (docs/protocol.md §3): the payload plus identity, time, actor,
/// scope and entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Envelope {
    /// The event's UUIDv7.
    pub event_id: Uuid,
    /// The dot name (`job.progress`).
    #[cfg_attr(
        feature = "schema",
        schemars(extend("enum" = [
            "queue.status", "job.queued", "job.started", "job.progress",
            "job.completed", "job.failed", "note.updated"
        ]))
    )]
    pub event_type: String,
    /// RFC 3339 UTC, rendered with milliseconds.
    #[serde(with = "rfc3339_millis")]
    #[cfg_attr(
        feature = "schema",
        schemars(with = "String", extend("format" = "date-time"))
    )]
    pub occurred_at: OffsetDateTime,
    /// Who caused it.
    pub actor: Actor,
    /// Memory scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Tenant scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// `job` or `note`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_type: Option<EntityType>,
    /// The job or note id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_id: Option<Uuid>,
    /// Correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// Causation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The topic, when the producer named one (absent: the type family,
    /// the part of `event_type` before the dot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The W3C trace id (32 hex digits) of the request that published the
    /// event, when it carried a `traceparent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("pattern" = "^[0-9a-f]{32}$")))]
    pub trace_id: Option<String>,
    /// The W3C `traceparent` the event carries (its trace and parent span).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The W3C `tracestate` the event carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Always 1 for this contract.
    #[cfg_attr(feature = "schema", schemars(extend("const" = 1)))]
    pub payload_version: u32,
    /// The flat §1 object.
    pub payload: ServerEvent,
}

impl Envelope {
    fn from_event(event: &Event) -> Self {
        let entity = event.payload.entity();
        Envelope {
            event_id: event.id,
            event_type: event.payload.dot_name().to_owned(),
            occurred_at: event.occurred_at,
            actor: event.meta.actor.clone(),
            memory: event.meta.memory.clone(),
            tenant_id: event.meta.tenant_id.clone(),
            entity_type: entity.map(|(t, _)| t),
            entity_id: entity.map(|(_, id)| id),
            correlation_id: event.meta.correlation_id,
            causation_id: event.meta.causation_id,
            topic: event.meta.topic.clone(),
            trace_id: event.meta.trace.as_ref().map(|t| t.trace_id().to_owned()),
            traceparent: event
                .meta
                .trace
                .as_ref()
                .map(|t| t.traceparent().to_owned()),
            tracestate: event
                .meta
                .trace
                .as_ref()
                .and_then(|t| t.tracestate().map(str::to_owned)),
            payload_version: 1,
            payload: event.payload.clone(),
        }
    }

    /// The metadata part of the envelope.
    pub fn meta(&self) -> EventMeta {
        EventMeta {
            actor: self.actor.clone(),
            memory: self.memory.clone(),
            tenant_id: self.tenant_id.clone(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            trace: self
                .traceparent
                .as_deref()
                .and_then(|tp| TraceContext::parse(tp, self.tracestate.as_deref())),
            topic: self.topic.clone(),
        }
    }
}

/// Formats a time as RFC 3339 UTC with millisecond precision
/// (`2026-02-05T10:30:45.123Z`), the form of the envelope's `occurred_at`.
pub fn format_rfc3339_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Formats a time as RFC 3339 UTC with whole seconds (`2026-02-05T10:30:45Z`).
pub fn format_rfc3339_seconds(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

mod rfc3339_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub(super) fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rfc3339_millis(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

/// Longest topic name, in bytes.
pub const MAX_TOPIC_BYTES: usize = 128;

/// Checks a topic name: 1 to [`MAX_TOPIC_BYTES`] bytes of lowercase ASCII
/// letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn validate_topic(topic: &str) -> Result<(), crate::Error> {
    let bad = |reason: &str| crate::Error::InvalidTopic {
        topic: topic.chars().take(MAX_TOPIC_BYTES + 8).collect(),
        reason: reason.to_owned(),
    };
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES {
        return Err(bad("must be 1 to 128 bytes"));
    }
    if !topic.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(bad("must start with a letter or digit"));
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(bad("may hold only a-z, 0-9, `.`, `_` and `-`"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::payload::QueueStatus;

    #[test]
    fn millis_format_pads_and_truncates() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_770_287_445_123_999_999).unwrap();
        assert_eq!(format_rfc3339_millis(t), "2026-02-05T10:30:45.123Z");
        assert_eq!(format_rfc3339_seconds(t), "2026-02-05T10:30:45Z");
    }

    #[test]
    fn renders_once_per_form() {
        let ev = Event::new(
            1,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            ServerEvent::QueueStatus(QueueStatus::new(1, 1)),
        );
        for _ in 0..3 {
            let _ = ev.json();
            let _ = ev.envelope_json();
        }
        assert_eq!(ev.render_count(), 2);
    }

    /// The keys of this crate's tests, registered once per test process
    /// (so that the number of registered keys is the same in every test
    /// that forced them: see the ring's weight test).
    pub(crate) fn test_keys() -> [RenderKey; 2] {
        use std::sync::LazyLock;
        static KEYS: LazyLock<[RenderKey; 2]> =
            LazyLock::new(|| [RenderKey::register(), RenderKey::register()]);
        *KEYS
    }

    #[test]
    fn registration_hands_out_distinct_keys_up_to_the_max() {
        let counter = AtomicUsize::new(0);
        let keys: Vec<RenderKey> = (0..MAX_RENDER_KEYS + 3)
            .map(|_| RenderKey::claim(&counter))
            .collect();
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(key.is_cached(), i < MAX_RENDER_KEYS, "{i}");
        }
        let cached: std::collections::HashSet<_> =
            keys[..MAX_RENDER_KEYS].iter().map(|k| k.index).collect();
        assert_eq!(cached.len(), MAX_RENDER_KEYS);
        // Saturated, not counting on.
        assert_eq!(counter.load(Ordering::Relaxed), MAX_RENDER_KEYS + 1);
        let [a, b] = test_keys();
        assert_ne!(a, b);
        assert!(RenderKey::registered() >= 2);
    }

    #[test]
    fn rendered_slots_render_once_and_share() {
        let ev = Event::new(
            1,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            ServerEvent::QueueStatus(QueueStatus::new(1, 1)),
        );
        let calls = AtomicU32::new(0);
        let render = |tag: &'static [u8]| {
            let calls = &calls;
            move |_: &Event| {
                calls.fetch_add(1, Ordering::Relaxed);
                Bytes::from(tag.to_vec())
            }
        };
        let [zero, one] = test_keys();
        let first = ev.rendered(zero, render(b"zero")).unwrap().clone();
        let again = ev.rendered(zero, render(b"other")).unwrap();
        assert_eq!(&first[..], b"zero");
        // The same allocation, not an equal copy.
        assert_eq!(first.as_ptr(), again.as_ptr());
        assert_eq!(&ev.rendered(one, render(b"one")).unwrap()[..], b"one");
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        // A key beyond the maximum caches nothing.
        let uncached = RenderKey {
            index: MAX_RENDER_KEYS,
        };
        assert!(ev.rendered(uncached, render(b"out")).is_none());
        assert_eq!(calls.load(Ordering::Relaxed), 2);
        assert_eq!(ev.render_count(), 0);
    }

    #[test]
    fn a_relocated_event_is_equal_without_its_renderings() {
        let ev = Event::new(
            7,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default().memory("m1").topic("jobs.a"),
            ServerEvent::QueueStatus(QueueStatus::new(3, 1)),
        );
        let [zero, _] = test_keys();
        let json = ev.json().clone();
        let envelope = ev.envelope_json().clone();
        let frame = ev
            .rendered(zero, |_| Bytes::from_static(b"frame"))
            .unwrap()
            .clone();
        let copy = ev.relocated();
        assert_eq!((copy.seq(), copy.id()), (ev.seq(), ev.id()));
        assert_eq!(copy.occurred_at(), ev.occurred_at());
        assert_eq!(copy.published_at(), ev.published_at());
        assert_eq!(copy.meta(), ev.meta());
        assert_eq!(copy.payload(), ev.payload());
        assert_eq!(copy.render_count(), 2);
        // No cached rendering came along: each is made again on demand,
        // equal to the original's, in an allocation of the copy's own.
        assert!(copy.rendered_json().is_none());
        assert!(copy.envelope_json.get().is_none());
        assert_eq!(copy.json(), &json);
        assert_ne!(copy.json().as_ptr(), json.as_ptr());
        assert_eq!(copy.envelope_json(), &envelope);
        assert_eq!(copy.render_count(), 4);
        let mut again = 0;
        let copied_frame = copy
            .rendered(zero, |_| {
                again += 1;
                Bytes::from_static(b"frame")
            })
            .unwrap()
            .clone();
        assert_eq!((again, &copied_frame), (1, &frame));
        // Once made, the copy's rendering is cached like any other.
        let cached = copy.rendered(zero, |_| panic!("rendered twice")).unwrap();
        assert_eq!(cached, &frame);
    }
}
