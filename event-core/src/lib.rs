//! # event-core
//!
//! The heart of matric's real-time event system: the seven HotM event types,
//! the in-process [`EventBus`], the [`EventSink`] trait every transport
//! implements, filters, the replay ring, authentication hooks and the
//! connection registry. It does no I/O beyond Tokio channels.
//!
//! ## How the pieces fit
//!
//! ```text
//!  job worker ─┐                       ┌─► WsSink ──► FanoutHub ──► WebSocket clients
//!  note API  ──┼─► EventBus::publish ──┼─► SseSink ─► FanoutHub ──► SSE clients
//!  POST /events┘   (seq, UUIDv7, ring) ├─► WebhookSink ─► durable queue ─► HTTP POST
//!                                      └─► TelemetrySink ─► tracing / metrics
//! ```
//!
//! * [`ServerEvent`] is the wire contract of docs/protocol.md §1 (flat JSON, tagged by
//!   `type`); [`Event`] wraps it with sequence number, id, time, scope and
//!   actor, and caches its two renderings ([`Event::json`],
//!   [`Event::envelope_json`]) so each is serialized once, however many
//!   clients receive it.
//! * [`EventBus::publish`] is synchronous and never waits for a consumer. One
//!   short critical section orders sequence, id, ring and delivery.
//! * A host registers sinks on a [`SinkRunner`]; each runs in its own task
//!   with its own subscription, isolated from the others' errors, panics and
//!   stalls.
//! * Transports with many clients register a [`FanoutHub`] and give each
//!   connection an [`Outbox`].
//!
//! ## Limits
//!
//! | limit | set with (host setting) | default | what happens at it |
//! |---|---|---|---|
//! | size of one event (its rendered §1 JSON) | [`EventBus::set_max_event_bytes`] (`EVENT_MAX_BYTES`) | 256 KiB ([`DEFAULT_MAX_EVENT_BYTES`]) | [`EventBus::try_publish`] / [`try_publish_with`](EventBus::try_publish_with) return [`Error::EventTooLarge`] naming the size and the limit (the publish API answers `413` with it); [`EventBus::publish`] / [`publish_with`](EventBus::publish_with) log a warning and return the event unsequenced (`seq() == 0`); [`EventBus::publish_event`] returns the error. The event reaches no sink. |
//! | the replay ring | [`BusConfig::replay_size`] (`EVENT_REPLAY_SIZE`) and [`EventBus::set_replay_max_bytes`] (`EVENT_REPLAY_MAX_BYTES`) | 1,024 events and 64 MiB ([`DEFAULT_REPLAY_MAX_BYTES`]) | the oldest events are evicted while the ring is over either bound; an event counts its [weight](ReplayRing::weight), an upper estimate of what it holds with every rendering cached (three times its JSON plus each registered [`RenderKey`]'s weight: a frame once, a bundle of compressed forms up to four times; fifteen times with both transports, compression included). A client resuming from an evicted cursor gets [`ReplayMiss::Expired`] (SSE: `resync_required`). |
//! | a connection's queue | [`OutboxLimits`] per transport | 1,024 messages or 1 MiB | the transport's [`OverflowPolicy`]: WebSocket and SSE coalesce ([`OverflowPolicy::Coalesce`]: `events.lagged`, then the latest state per job and of the queue, kept within a second budget of the same size), or close (4008) with `WsConfig::close_on_overflow`. The byte budget is at least [`OutboxLimits::min_bytes_for`] the event limit (two events plus [`EVENT_SLACK_BYTES`] each) once [`OutboxLimits::fit_event`] is applied, and an outbox holding no event takes any event: one event never drops a client that reads. |
//!
//! Checking the size costs the publisher a few additions and one
//! comparison: an upper bound of the JSON's length from the lengths of the
//! event's strings. Only an event whose bound is over the limit is rendered
//! to be measured exactly (before the ordering lock; the event keeps that
//! rendering, so it is still rendered once).
//!
//! ## Feature `schema`
//!
//! Off by default. Derives `schemars::JsonSchema` for the payload types
//! ([`ServerEvent`] and its seven structs), [`Envelope`], [`Actor`] and
//! [`ConnectionInfo`]: the JSON Schema of the wire contract comes from the
//! types that render it. Generate with the serialize contract
//! (`SchemaSettings::for_serialize`), which describes what the server sends
//! (a `JobProgress` always carries both `progress` and `progress_percent`).
//! The host serves the schemas in `/api/v1/asyncapi.json` and
//! `/api/v1/openapi.json`.
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use event_core::{async_trait, EventBus, EventSink, Event, JobQueued, SinkError, SinkRunner};
//!
//! struct Counter(AtomicUsize);
//!
//! #[async_trait]
//! impl EventSink for Counter {
//!     fn name(&self) -> &str { "counter" }
//!     async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
//!         println!("{} {}", event.seq(), std::str::from_utf8(event.json()).unwrap());
//!         self.0.fetch_add(1, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bus = EventBus::default();
//! let counter = Arc::new(Counter(AtomicUsize::new(0)));
//! let mut runner = SinkRunner::new(&bus);
//! runner.register(counter.clone());
//!
//! bus.publish(JobQueued {
//!     job_id: uuid::Uuid::now_v7(),
//!     job_type: "Embedding".into(),
//!     note_id: None,
//! });
//!
//! runner.shutdown(std::time::Duration::from_secs(1)).await; // drains first
//! assert_eq!(counter.0.load(Ordering::Relaxed), 1);
//! # }
//! ```

pub mod auth;
pub mod bus;
pub mod consumer;
mod error;
pub mod event;
pub mod fanout;
pub mod filter;
pub mod http_error;
pub mod io;
pub mod log;
pub mod metrics;
pub mod pace;
pub mod payload;
pub mod registry;
pub mod replay_source;
pub mod ring;
pub mod sink;
pub mod snapshot;
mod sync;
pub mod trace;
pub mod upstream;

pub use async_trait::async_trait;
pub use auth::{
    Access, AllowAnonymous, Authenticator, Credentials, ONE_TIME_PREFIX, OneTimeTokens, Principal,
    Role, StaticTokens, WithOneTimeTokens, principal_id,
};
pub use bus::{
    BusConfig, DEFAULT_MAX_EVENT_BYTES, DEFAULT_REPLAY_MAX_BYTES, EventBus, MIN_MAX_EVENT_BYTES,
    Received, SeqStart, Subscription, Upstream,
};
pub use consumer::{
    AckHandle, AckMode, AckRelay, AttachRequest, ConsumerConfig, ConsumerError, ConsumerInfo,
    ConsumerRecord, Consumers, Delivery, GroupBackend, GroupFeed, GroupMessage, GroupPull,
    GroupSpec, GroupState, LogMark, Member, MemoryOffsets, OffsetStore, Settle, StartAt,
};
pub use error::Error;
pub use event::{
    Actor, Envelope, Event, EventMeta, MAX_RENDER_KEYS, MAX_TOPIC_BYTES, RenderKey, validate_topic,
};
pub use fanout::{
    EVENT_SLACK_BYTES, FanoutHub, HubSubscription, Outbox, OutboxLimits, Outgoing, OverflowPolicy,
    SubscribeOptions, WireForm,
};
pub use filter::{EventFilter, FilterParams, KindSet, TopicPattern};
pub use io::WriteTimeoutIo;
pub use log::{
    EventLog, LogBounds, LogConfig, LogError, LogReplay, LogWriter, MAX_TOPIC_RETENTIONS,
    Retention, TopicRetention, TopicStats,
};
pub use metrics::TransportMetrics;
pub use pace::{MAX_STREAM_RATE, Paced, Pacer};
pub use payload::{
    EntityType, EventKind, JobCompleted, JobFailed, JobProgress, JobQueued, JobStarted,
    NoteOperation, NoteUpdated, QueueStatus, ServerEvent,
};
pub use registry::{
    CloseSignal, Closed, ConnectionGuard, ConnectionInfo, ConnectionObserver, ConnectionRegistry,
    Transport,
};
pub use replay_source::{ReplayPermit, ReplaySource, Replayed};
pub use ring::{Cursor, ReplayMiss, ReplayRing, Sequenced};
pub use sink::{
    EventSink, RunnerConfig, ShutdownReport, SinkError, SinkRunner, SinkStats, SinkStatsSnapshot,
};
pub use snapshot::{QueueSnapshot, current_queue_status};
pub use trace::{CONNECTION_SPAN_TARGET, TraceContext};
pub use upstream::{AckedEvent, DedupKey, PendingAck, Stored};

/// Re-exported so sinks and hosts use the same versions.
pub use bytes::Bytes;
pub use uuid::Uuid;
