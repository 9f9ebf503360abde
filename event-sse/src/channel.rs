//! [`SseChannel`]: an SSE endpoint over any event type.
//!
//! # Model
//!
//! A third-party service implements [`SseEvent`] for its own type, creates
//! one channel, publishes into it and mounts [`SseChannel::router`] where it
//! likes. The channel keeps the last `replay_size` events for `Last-Event-ID`
//! replay and gives each connection a bounded queue with the same
//! drop-and-signal policy as the matric endpoint (`events.lagged`). The same
//! writer frames both, so framing, keep-alive, coalescing and shutdown behave
//! identically.
//!
//! Publishing and subscribing take the same short lock, so a connection's
//! replay and its live queue meet exactly: nothing lost, nothing twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::BytesMut;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::SseConfig;
use crate::endpoint::sse_response;
use crate::error::SseError;
use crate::event::{Format, SseEvent, SseId};
use crate::frame;
use crate::params::Query;
use crate::stream::{Connection, Feed, Item, StreamSettings};

struct QueueState<E> {
    items: VecDeque<Item<E>>,
    events: usize,
    full_since: Option<Instant>,
}

/// One connection's bounded queue.
struct ConnQueue<E> {
    state: Mutex<QueueState<E>>,
    notify: Notify,
    max: usize,
    names: Option<Vec<String>>,
}

impl<E: SseEvent> ConnQueue<E> {
    fn lock(&self) -> MutexGuard<'_, QueueState<E>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wants(&self, event: &E) -> bool {
        self.names.as_ref().is_none_or(|names| {
            names.iter().any(|n| {
                n == event.event_type(Format::V1) || n == event.event_type(Format::Envelope)
            })
        })
    }

    fn push(&self, event: &Arc<E>) {
        {
            let mut st = self.lock();
            if st.events < self.max {
                st.items.push_back(Item::Event(event.clone()));
                st.events += 1;
            } else {
                st.full_since.get_or_insert_with(Instant::now);
                match st.items.back_mut() {
                    Some(Item::Lagged(n)) => *n += 1,
                    _ => st.items.push_back(Item::Lagged(1)),
                }
            }
        }
        self.notify.notify_one();
    }
}

struct ChannelState<E> {
    ring: VecDeque<Arc<E>>,
    /// The newest sequence evicted from the ring (cursors below it expired).
    evicted: Option<u64>,
    subscribers: Vec<Arc<ConnQueue<E>>>,
}

struct ChannelInner<E> {
    state: Mutex<ChannelState<E>>,
    replay_size: usize,
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
/// channel.publish(Shop::Ordered { seq: 1, order: 7 });
/// assert_eq!(channel.retained(), 1);
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
    /// A channel keeping the last `replay_size` events for replay. Of
    /// `config`, the outbox message limit, format, retry, heartbeat and
    /// stall timeout apply.
    pub fn new(replay_size: usize, config: SseConfig) -> Self {
        SseChannel {
            inner: Arc::new(ChannelInner {
                state: Mutex::new(ChannelState {
                    ring: VecDeque::with_capacity(replay_size.min(4096)),
                    evicted: None,
                    subscribers: Vec::new(),
                }),
                replay_size,
                config,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ChannelState<E>> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `event` to every connection that wants it and keeps it for
    /// replay. Never waits for a client. Its sequence must be higher than
    /// the previous event's.
    pub fn publish(&self, event: E) -> Arc<E> {
        let event = Arc::new(event);
        let mut st = self.lock();
        if self.inner.replay_size > 0 {
            if st.ring.len() == self.inner.replay_size
                && let Some(old) = st.ring.pop_front()
            {
                st.evicted = Some(old.sequence());
            }
            st.ring.push_back(event.clone());
        } else {
            st.evicted = Some(event.sequence());
        }
        // Connections that went away are pruned here rather than on drop, so
        // a subscriber never needs the channel lock to leave.
        st.subscribers.retain(|q| Arc::strong_count(q) > 1);
        for q in &st.subscribers {
            if q.wants(&event) {
                q.push(&event);
            }
        }
        event
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
        let queue = Arc::new(ConnQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                events: 0,
                full_since: None,
            }),
            notify: Notify::new(),
            max: config.outbox.max_messages.max(1),
            names,
        });

        let mut first = BytesMut::new();
        frame::write_retry(&mut first, config.retry_ms);
        {
            // Replay and subscription under one lock: the queue starts right
            // after the last replayed event.
            let mut st = self.lock();
            if let Some(raw) = query.last_event_id(req.headers()) {
                match replay(&st, raw.trim(), format) {
                    Some(events) => {
                        for ev in events.iter().filter(|e| queue.wants(&***e)) {
                            frame::write_event(&mut first, &**ev, format);
                        }
                    }
                    None => frame::write_resync(&mut first, &crate::error::truncate(&raw)),
                }
            }
            st.subscribers.push(queue.clone());
        }
        let conn = Connection::new(
            QueueFeed {
                queue,
                scratch: VecDeque::new(),
            },
            StreamSettings {
                format,
                heartbeat,
                stall_timeout: config.stall_timeout,
            },
            first.freeze(),
            Box::pin(self.inner.shutdown.clone().cancelled_owned()),
            None,
            None,
        );
        Ok(sse_response(Body::from_stream(conn.into_stream())))
    }
}

/// The retained events after the cursor `raw`, or `None` when it cannot be
/// served (unknown or expired).
fn replay<E: SseEvent>(st: &ChannelState<E>, raw: &str, format: Format) -> Option<Vec<Arc<E>>> {
    let after = |idx: usize| Some(st.ring.iter().skip(idx).cloned().collect());
    if let Ok(seq) = raw.parse::<u64>() {
        let newest = st.ring.back().map(|e| e.sequence()).or(st.evicted)?;
        if seq > newest || st.evicted.is_some_and(|ev| ev > seq) {
            return None;
        }
        return after(st.ring.partition_point(|e| e.sequence() <= seq));
    }
    let pos = st.ring.iter().position(|e| match e.id(format) {
        SseId::Seq(_) => false,
        SseId::Uuid(u) => uuid::Uuid::try_parse(raw).is_ok_and(|r| r == u),
        SseId::Text(t) => t == raw,
    })?;
    after(pos + 1)
}

struct QueueFeed<E> {
    queue: Arc<ConnQueue<E>>,
    scratch: VecDeque<Item<E>>,
}

impl<E: SseEvent> Feed for QueueFeed<E> {
    type Event = E;

    fn ready(&self) -> impl Future<Output = ()> + Send + '_ {
        self.queue.notify.notified()
    }

    fn drain(&mut self, out: &mut Vec<Item<E>>) {
        {
            let mut st = self.queue.lock();
            std::mem::swap(&mut st.items, &mut self.scratch);
            st.events = 0;
            st.full_since = None;
        }
        out.extend(self.scratch.drain(..));
    }

    fn stalled_for(&self) -> Option<Duration> {
        self.queue.lock().full_since.map(|t| t.elapsed())
    }
}
