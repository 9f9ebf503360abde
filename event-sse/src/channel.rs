//! [`SseChannel`]: an SSE endpoint over any event type.
//!
//! # Model
//!
//! A third-party service implements [`SseEvent`] for its own type, creates
//! one channel, publishes into it and mounts [`SseChannel::router`] where it
//! likes. The channel numbers what it publishes (1, 2, 3, …: the `id:` of
//! the `v1` frames), keeps the newest events in event-core's
//! [`ReplayRing`] for `Last-Event-ID` replay, and gives each connection an
//! event-core [`Outbox`] with the same budgets and drop-and-signal policy as
//! the matric endpoint (`events.lagged`). The same writer frames both, so
//! framing, keep-alive, coalescing and shutdown behave identically.
//!
//! Publishing and subscribing take the same short lock, so sequence order is
//! publish order, and a connection's replay and its live queue meet exactly:
//! nothing lost, nothing twice.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::{Bytes, BytesMut};
use event_core::{EventKind, Outbox, Outgoing, OverflowPolicy, ReplayRing, Sequenced};
use tokio_util::sync::CancellationToken;

use crate::config::SseConfig;
use crate::endpoint::sse_response;
use crate::error::SseError;
use crate::event::{Format, Packable, SseEvent, SseId};
use crate::frame;
use crate::params::Query;
use crate::stream::{Connection, Feed, Item, StreamSettings};

/// What a frame adds to an event's data (`id:`, `event:` and `data:`
/// lines), for the outbox's byte budget; the same allowance as the matric
/// endpoint's.
const FRAME_OVERHEAD: usize = 64;

/// An event as the channel keeps it: numbered by the channel, with its
/// wire size in each format measured once, at publish.
struct Entry<E> {
    seq: u64,
    /// The framed size in [`Format::V1`] and [`Format::Envelope`].
    sizes: [usize; 2],
    event: E,
    /// The compressed pieces of its frame in each format, made on first
    /// use and shared by every compressed connection.
    packs: [OnceLock<Bytes>; 2],
    /// The entry published before it (compressed streams' delta pieces).
    previous: Weak<Entry<E>>,
}

impl<E: SseEvent> Entry<E> {
    fn new(seq: u64, event: E, previous: Weak<Entry<E>>) -> Self {
        let size = |format| event.data(format).len() + FRAME_OVERHEAD;
        Entry {
            seq,
            sizes: [size(Format::V1), size(Format::Envelope)],
            event,
            packs: [OnceLock::new(), OnceLock::new()],
            previous,
        }
    }

    fn size(&self, format: Format) -> usize {
        match format {
            Format::V1 => self.sizes[0],
            Format::Envelope => self.sizes[1],
        }
    }
}

impl<E: SseEvent> Sequenced for Entry<E> {
    fn seq(&self) -> u64 {
        self.seq
    }

    /// Both formats' frames (a ready-made frame the event caches is at most
    /// that) plus the entry itself; what the event owns besides is not seen.
    fn weight_bytes(&self) -> usize {
        self.sizes[0] + self.sizes[1] + std::mem::size_of::<Self>()
    }
}

/// The event as the writer frames it, with the channel's number as its
/// sequence.
impl<E: SseEvent> SseEvent for Entry<E> {
    fn event_type(&self, format: Format) -> &str {
        self.event.event_type(format)
    }

    fn sequence(&self) -> u64 {
        self.seq
    }

    /// A numeric id is always the channel's number: it is what a resuming
    /// client's `Last-Event-ID` is looked up by.
    fn id(&self, format: Format) -> SseId<'_> {
        match self.event.id(format) {
            SseId::Seq(_) => SseId::Seq(self.seq),
            other => other,
        }
    }

    fn data(&self, format: Format) -> Bytes {
        self.event.data(format)
    }

    fn kind(&self) -> Option<EventKind> {
        self.event.kind()
    }

    fn published_at(&self) -> Option<std::time::Instant> {
        self.event.published_at()
    }

    /// The event's own ready-made frame only if it carries the channel's
    /// number (a frame with another `id:` would not resume).
    fn frame(&self, format: Format) -> Option<Bytes> {
        (self.event.sequence() == self.seq)
            .then(|| self.event.frame(format))
            .flatten()
    }
}

impl<E: SseEvent> Packable for Entry<E> {
    fn pack(&self, format: Format, render: impl FnOnce() -> Bytes) -> Option<Bytes> {
        let slot = match format {
            Format::V1 => &self.packs[0],
            Format::Envelope => &self.packs[1],
        };
        Some(slot.get_or_init(render).clone())
    }
}

/// One connection: its outbox and what it asked for.
struct Subscriber<E> {
    outbox: Outbox<Entry<E>>,
    format: Format,
    names: Option<Vec<String>>,
}

impl<E: SseEvent> Subscriber<E> {
    fn wants(&self, event: &E) -> bool {
        self.names.as_ref().is_none_or(|names| {
            names.iter().any(|n| {
                n == event.event_type(Format::V1) || n == event.event_type(Format::Envelope)
            })
        })
    }
}

struct ChannelState<E> {
    /// The number the next published event gets.
    next_seq: u64,
    ring: ReplayRing<Entry<E>>,
    subscribers: Vec<Arc<Subscriber<E>>>,
    /// The newest entry, the next one's `previous`.
    last: Weak<Entry<E>>,
}

struct ChannelInner<E> {
    state: Mutex<ChannelState<E>>,
    config: SseConfig,
    shutdown: CancellationToken,
}

/// An SSE endpoint over the host's own event type `E`. Cheap to clone.
///
/// ```
/// use axum::Router;
/// use event_sse::{Format, SseChannel, SseConfig, SseEvent};
/// use event_sse::bytes::Bytes;
///
/// /// The host's own event type.
/// enum Shop { Ordered { seq: u64, order: u32 }, Shipped { seq: u64, order: u32 } }
///
/// impl SseEvent for Shop {
///     fn event_type(&self, _: Format) -> &str {
///         match self { Shop::Ordered { .. } => "ordered", Shop::Shipped { .. } => "shipped" }
///     }
///     fn sequence(&self) -> u64 {
///         match self { Shop::Ordered { seq, .. } | Shop::Shipped { seq, .. } => *seq }
///     }
///     fn data(&self, _: Format) -> Bytes {
///         let order = match self { Shop::Ordered { order, .. } | Shop::Shipped { order, .. } => order };
///         Bytes::from(format!(r#"{{"order":{order}}}"#))
///     }
/// }
///
/// let channel = SseChannel::<Shop>::new(256, SseConfig::default());
/// let app: Router = Router::new().merge(channel.router("/shop/events"));
/// // The channel numbers the events; the shop's type keeps the number.
/// assert_eq!(channel.publish(|seq| Shop::Ordered { seq, order: 7 }), 1);
/// assert_eq!(channel.publish(|seq| Shop::Shipped { seq, order: 7 }), 2);
/// assert_eq!(channel.retained(), 2);
/// # let _ = app;
/// ```
pub struct SseChannel<E: SseEvent> {
    inner: Arc<ChannelInner<E>>,
}

impl<E: SseEvent> Clone for SseChannel<E> {
    fn clone(&self) -> Self {
        SseChannel {
            inner: self.inner.clone(),
        }
    }
}

impl<E: SseEvent> std::fmt::Debug for SseChannel<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseChannel")
            .field("connections", &self.connections())
            .field("retained", &self.retained())
            .finish()
    }
}

impl<E: SseEvent> SseChannel<E> {
    /// A channel keeping the last `replay_size` events for replay (and at
    /// most [`DEFAULT_REPLAY_MAX_BYTES`](event_core::DEFAULT_REPLAY_MAX_BYTES)
    /// of them; see [`set_replay_max_bytes`](Self::set_replay_max_bytes)).
    /// Of `config`, the outbox limits (messages and bytes), format, retry,
    /// heartbeat and stall timeout apply.
    pub fn new(replay_size: usize, config: SseConfig) -> Self {
        SseChannel {
            inner: Arc::new(ChannelInner {
                state: Mutex::new(ChannelState {
                    next_seq: 1,
                    ring: ReplayRing::new(replay_size),
                    subscribers: Vec::new(),
                    last: Weak::new(),
                }),
                config,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ChannelState<E>> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the event `make` builds from its sequence number: sends it
    /// to every connection that wants it and keeps it for replay. Never
    /// waits for a client. Returns the number.
    ///
    /// The channel numbers events 1, 2, 3, … in publish order; the number
    /// is the frame's `id:` wherever the event's [`id`](SseEvent::id) is
    /// numeric, and what `Last-Event-ID` is resumed by. The event should
    /// return it from [`sequence`](SseEvent::sequence) (its ready-made
    /// [`frame`](SseEvent::frame) is used only then).
    ///
    /// `make` runs under the channel's lock, which is what keeps numbers in
    /// publish order: keep it short, and do not touch the channel from it.
    pub fn publish(&self, make: impl FnOnce(u64) -> E) -> u64 {
        let mut st = self.lock();
        let seq = st.next_seq;
        let previous = std::mem::take(&mut st.last);
        let entry = Arc::new(Entry::new(seq, make(seq), previous));
        st.last = Arc::downgrade(&entry);
        st.next_seq += 1;
        st.ring.push(entry.clone());
        // Connections that went away are pruned here rather than on drop, so
        // a subscriber never needs the channel lock to leave.
        st.subscribers.retain(|s| Arc::strong_count(s) > 1);
        for sub in &st.subscribers {
            if sub.wants(&entry.event) {
                sub.outbox.push(&entry, entry.size(sub.format));
            }
        }
        seq
    }

    /// Sets the replay ring's byte bound: the kept events' frames in both
    /// formats add up to at most `max` bytes (0 keeps none), the oldest
    /// evicted first — at once if it holds more. A cursor older than what is
    /// kept gets `resync_required`.
    pub fn set_replay_max_bytes(&self, max: usize) {
        self.lock().ring.set_max_bytes(max);
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.lock()
            .subscribers
            .iter()
            .filter(|q| Arc::strong_count(q) > 1)
            .count()
    }

    /// Events kept for replay.
    pub fn retained(&self) -> usize {
        self.lock().ring.len()
    }

    /// The sequence number of the newest event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.lock().next_seq - 1
    }

    /// Ends every open stream and refuses new ones (graceful shutdown).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// `GET <path>`: the event stream, for any host state. Query: `format`,
    /// `heartbeat`, `events` (names in either format), `last_event_id`;
    /// header `Last-Event-ID`.
    pub fn router<S: Clone + Send + Sync + 'static>(&self, path: &str) -> Router<S> {
        let channel = self.clone();
        Router::new().route(
            path,
            get(move |req: Request| {
                let channel = channel.clone();
                async move {
                    match channel.open(&req) {
                        Ok(r) => r,
                        Err(e) => e.into_response(),
                    }
                }
            }),
        )
    }

    fn open(&self, req: &Request) -> Result<Response, SseError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(SseError::ShuttingDown);
        }
        let config = &self.inner.config;
        let query = Query::parse(req.uri())?;
        let format = query.format(config.format)?;
        let heartbeat = query.heartbeat(config.heartbeat)?;
        let encoding = query.encoding(req.headers(), config.compression)?;
        let names = match query.get("events") {
            None => None,
            Some(raw) => {
                let names: Vec<String> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if names.is_empty() {
                    return Err(SseError::InvalidFilter {
                        param: "events",
                        value: crate::error::truncate(raw),
                        reason: "the list is empty".to_owned(),
                    });
                }
                Some(names)
            }
        };
        let sub = Arc::new(Subscriber {
            outbox: Outbox::new(config.outbox, OverflowPolicy::DropAndCount),
            format,
            names,
        });

        let mut first = BytesMut::new();
        frame::write_retry(&mut first, config.retry_ms);
        {
            // Replay and subscription under one lock: the outbox starts
            // right after the last replayed event.
            let mut st = self.lock();
            if let Some(raw) = query.last_event_id(req.headers())
                && !write_replay(&mut first, &st.ring, raw.trim(), &sub)
            {
                frame::write_resync(&mut first, &crate::error::truncate(&raw));
            }
            st.subscribers.push(sub.clone());
        }
        let conn = Connection::new(
            QueueFeed {
                sub,
                scratch: Vec::new(),
            },
            StreamSettings {
                format,
                heartbeat,
                stall_timeout: config.stall_timeout,
                encoding,
            },
            first.freeze(),
            Box::pin(self.inner.shutdown.clone().cancelled_owned()),
            None,
            None,
        );
        Ok(sse_response(
            Body::from_stream(conn.into_stream()),
            encoding,
            !config.compression.is_off(),
        ))
    }
}

/// Frames the retained events after the cursor `raw` that `sub` wants;
/// `false` when the cursor cannot be served (unknown or expired).
///
/// A number is a sequence; anything else is looked up among the events' ids
/// in the connection's format (the oldest match).
fn write_replay<E: SseEvent>(
    out: &mut BytesMut,
    ring: &ReplayRing<Entry<E>>,
    raw: &str,
    sub: &Subscriber<E>,
) -> bool {
    let format = sub.format;
    if let Ok(seq) = raw.parse::<u64>() {
        return match ring.after_seq(seq) {
            Ok(events) => {
                write_events(out, events, sub);
                true
            }
            Err(_) => false,
        };
    }
    let named = |e: &Entry<E>| match e.id(format) {
        SseId::Seq(_) => false,
        SseId::Uuid(u) => uuid::Uuid::try_parse(raw).is_ok_and(|r| r == u),
        SseId::Text(t) => t == raw,
    };
    match ring.after_first(named) {
        Some(events) => {
            write_events(out, events, sub);
            true
        }
        None => false,
    }
}

fn write_events<'a, E: SseEvent>(
    out: &mut BytesMut,
    events: impl Iterator<Item = &'a Arc<Entry<E>>>,
    sub: &Subscriber<E>,
) {
    for entry in events.filter(|e| sub.wants(&e.event)) {
        frame::write_event(out, &**entry, sub.format);
    }
}

struct QueueFeed<E> {
    sub: Arc<Subscriber<E>>,
    scratch: Vec<Outgoing<Entry<E>>>,
}

impl<E: SseEvent> Feed for QueueFeed<E> {
    type Event = Entry<E>;

    fn ready(&self) -> impl Future<Output = ()> + Send + '_ {
        self.sub.outbox.ready()
    }

    fn drain(&mut self, out: &mut Vec<Item<Entry<E>>>) {
        // Under DropAndCount the outbox never reports an overflow.
        self.sub.outbox.drain_into(&mut self.scratch);
        out.extend(self.scratch.drain(..).map(|o| match o {
            Outgoing::Event(e) => Item::Event(e),
            Outgoing::Lagged(n) => Item::Lagged(n),
        }));
    }

    fn stalled_for(&self) -> Option<Duration> {
        self.sub.outbox.full_for()
    }

    fn previous(&self, event: &Entry<E>) -> Option<Arc<Entry<E>>> {
        event.previous.upgrade()
    }
}
