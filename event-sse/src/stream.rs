//! The body of one SSE response: a stream of `Bytes` chunks.
//!
//! # Model
//!
//! A connection owns a *feed* (its queue of events, already filtered, with
//! lag markers) and turns it into chunks. Each time the body is polled it
//! drains everything pending and frames it into one buffer, so a burst of
//! events costs one write, not one per event. When nothing is pending it
//! waits for the first of: new items, the keep-alive deadline, or the
//! connection's `closed` signal (kick or server shutdown), which ends the
//! stream so that the server's graceful shutdown is not held up.
//!
//! The stream owns the connection's registry guard and metrics gauge: when
//! hyper drops the body (client gone, however it went) both are released.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use event_core::{ConnectionGuard, TransportMetrics};
use futures_util::Stream;
use tokio::time::Instant;

use crate::event::{Format, SseEvent};
use crate::frame;

/// One item of a connection's queue.
pub(crate) enum Item<E> {
    /// An event to write.
    Event(Arc<E>),
    /// This many events were lost here.
    Lagged(u64),
}

/// Where a connection's events come from.
pub(crate) trait Feed: Send + 'static {
    /// The event type.
    type Event: SseEvent;
    /// Resolves when items may be pending (cancel-safe; no wake-up is lost).
    fn ready(&self) -> impl Future<Output = ()> + Send + '_;
    /// Moves every pending item into `out`.
    fn drain(&mut self, out: &mut Vec<Item<Self::Event>>);
    /// How long the queue has been full without being drained, if it is.
    fn stalled_for(&self) -> Option<Duration>;
}

type Closed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The settings of one connection's stream.
pub(crate) struct StreamSettings {
    pub format: Format,
    pub heartbeat: Duration,
    pub stall_timeout: Duration,
    /// Events with a sequence at or below this were already written (replay).
    pub skip_through: u64,
}

pub(crate) struct Connection<F: Feed> {
    feed: F,
    settings: StreamSettings,
    first: Option<Bytes>,
    closed: Closed,
    next_keepalive: Instant,
    items: Vec<Item<F::Event>>,
    metrics: Option<TransportMetrics>,
    guard: Option<Arc<ConnectionGuard>>,
    finished: bool,
    reason: &'static str,
}

impl<F: Feed> Connection<F> {
    /// A connection that first writes `first`, then its feed.
    pub(crate) fn new(
        feed: F,
        settings: StreamSettings,
        first: Bytes,
        closed: Closed,
        metrics: Option<TransportMetrics>,
        guard: Option<Arc<ConnectionGuard>>,
    ) -> Self {
        if let Some(m) = &metrics {
            m.connection_opened();
        }
        Connection {
            feed,
            next_keepalive: Instant::now() + settings.heartbeat,
            settings,
            first: Some(first),
            closed,
            items: Vec::new(),
            metrics,
            guard,
            finished: false,
            reason: "client_close",
        }
    }

    /// The body stream.
    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
        futures_util::stream::unfold(self, |mut conn| async move {
            conn.next_chunk().await.map(|chunk| (chunk, conn))
        })
    }

    fn touch(&mut self) {
        self.next_keepalive = Instant::now() + self.settings.heartbeat;
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, io::Error>> {
        if let Some(first) = self.first.take() {
            self.touch();
            return Some(Ok(first));
        }
        loop {
            if self.finished {
                return None;
            }
            // Checked before draining: a drain resets the stall clock.
            if self
                .feed
                .stalled_for()
                .is_some_and(|d| d >= self.settings.stall_timeout)
            {
                self.finished = true;
                self.reason = "slow_consumer";
                // An error aborts the HTTP connection instead of ending the
                // response cleanly: the client lost events and must reconnect.
                return Some(Err(io::Error::other("slow consumer dropped")));
            }
            if let Some(chunk) = self.drain_chunk() {
                self.touch();
                return Some(Ok(chunk));
            }
            tokio::select! {
                biased;
                () = &mut self.closed => {
                    self.finished = true;
                    self.reason = "shutdown";
                    return None;
                }
                () = self.feed.ready() => {}
                () = tokio::time::sleep_until(self.next_keepalive) => {
                    self.touch();
                    return Some(Ok(Bytes::from_static(frame::KEEPALIVE)));
                }
            }
        }
    }

    /// Frames everything pending into one chunk; `None` when nothing is.
    fn drain_chunk(&mut self) -> Option<Bytes> {
        self.feed.drain(&mut self.items);
        if self.items.is_empty() {
            return None;
        }
        let mut buf = BytesMut::new();
        let (mut sent, mut dropped) = (0u64, 0u64);
        for item in self.items.drain(..) {
            match item {
                Item::Event(ev) => {
                    if ev.sequence() <= self.settings.skip_through {
                        continue;
                    }
                    frame::write_event(&mut buf, &*ev, self.settings.format);
                    sent += 1;
                    if let Some(m) = &self.metrics {
                        if let Some(kind) = ev.kind() {
                            m.events_sent(kind, 1);
                        }
                        if let Some(at) = ev.published_at() {
                            m.observe_latency(at);
                        }
                    }
                }
                Item::Lagged(n) => {
                    frame::write_lagged(&mut buf, n);
                    dropped += n;
                    if let Some(m) = &self.metrics {
                        m.dropped(n);
                    }
                }
            }
        }
        if let Some(g) = &self.guard {
            g.record_sent(sent);
            g.record_dropped(dropped);
        }
        (!buf.is_empty()).then(|| buf.freeze())
    }
}

impl<F: Feed> Drop for Connection<F> {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.connection_closed(self.reason);
        }
    }
}
