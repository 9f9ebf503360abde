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
//!
//! A compressed stream ([`compress`](crate::compress)) writes the same
//! chunks through its [`WireEncoder`]: events as the shared compressed
//! pieces cached on them, everything else in the encoding's framing. Every
//! chunk is complete on its own (nothing held back for later), and a stream
//! that ends cleanly (kick, shutdown) ends with the encoding's trailer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use event_core::metrics::WrittenBatch;
use event_core::{ConnectionGuard, TransportMetrics};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::compress::{self, Encoding, Sink, WireEncoder};
use crate::event::{Format, Packable, SseEvent};
use crate::frame;

/// One item of a connection's queue.
pub(crate) enum Item<E> {
    /// An event to write.
    Event(Arc<E>),
    /// An event replayed for a resuming client: written and counted like
    /// [`Item::Event`], but with no latency sample (which would measure the
    /// client's absence, not the server).
    Replayed(Arc<E>),
    /// This many events were lost here.
    Lagged(u64),
    /// This many events were not sent here because of the client's own
    /// rate limit (`max_rate`): written as `events.lagged` too, counted
    /// apart from losses.
    Paced(u64),
    /// The replay cannot go on after this cursor (the client fell behind the
    /// replay ring): `resync_required` naming it.
    Resync(String),
}

/// Where a connection's events come from.
pub(crate) trait Feed: Send + 'static {
    /// The event type.
    type Event: Packable;
    /// Resolves when items may be pending (cancel-safe; no wake-up is lost).
    fn ready(&self) -> impl Future<Output = ()> + Send + '_;
    /// Moves every pending item into `out`.
    fn drain(&mut self, out: &mut Vec<Item<Self::Event>>);
    /// The list a drain fills, lent for one drain and given back empty to
    /// [`give_back_items`](Self::give_back_items). By default the
    /// connection's own, `kept`, which keeps its room between drains; a
    /// feed of the bus's events lends its thread's
    /// ([`scratch`](crate::scratch)), so that an idle connection keeps
    /// none.
    fn lend_items(kept: &mut Vec<Item<Self::Event>>) -> Vec<Item<Self::Event>> {
        std::mem::take(kept)
    }
    /// Takes back the list [`lend_items`](Self::lend_items) lent, emptied.
    fn give_back_items(kept: &mut Vec<Item<Self::Event>>, items: Vec<Item<Self::Event>>) {
        *kept = items;
    }
    /// How long the queue has been full without being drained, if it is.
    fn stalled_for(&self) -> Option<Duration>;
    /// Takes the chunk framed from a drain that held replayed items, before
    /// it goes to the server: a feed that bounds its replay by the bytes in
    /// flight wraps it to learn when the server is done with it.
    fn seal(&mut self, chunk: Bytes) -> Bytes {
        chunk
    }
    /// The event right before `event` in the stream every connection of
    /// this feed's kind is fed from, if it is at hand: a compressed piece of
    /// `event` may then refer back into its frame (gzip's delta pieces).
    fn previous(&self, event: &Self::Event) -> Option<Arc<Self::Event>> {
        let _ = event;
        None
    }
    /// Wire bytes waiting in the feed's queue now (the connection's
    /// `queued_bytes` in the registry).
    fn queued_bytes(&self) -> usize {
        0
    }
}

type Closed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The settings of one connection's stream.
pub(crate) struct StreamSettings {
    pub format: Format,
    pub heartbeat: Duration,
    pub stall_timeout: Duration,
    /// The `Content-Encoding`, `None` for plain.
    pub encoding: Option<Encoding>,
}

pub(crate) struct Connection<F: Feed> {
    feed: F,
    settings: StreamSettings,
    first: Option<Bytes>,
    closed: Closed,
    /// The heartbeat timer, pushed back on every chunk. One timer for the
    /// connection's life: a fresh `sleep_until` per wait registered and
    /// cleared a timer-wheel entry for every event.
    keepalive: Pin<Box<Sleep>>,
    /// The list drains fill, for a feed that keeps its own
    /// ([`Feed::lend_items`]).
    items: Vec<Item<F::Event>>,
    metrics: Option<TransportMetrics>,
    guard: Option<Arc<ConnectionGuard>>,
    /// The compressed stream's state, `None` for plain.
    encoder: Option<WireEncoder>,
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
        let mut encoder = settings.encoding.map(WireEncoder::new);
        let first = match &mut encoder {
            None => first,
            Some(encoder) => {
                compress::note_use(encoder.encoding());
                let mut out = BytesMut::with_capacity(first.len() + 32);
                encoder.header(&mut out);
                encoder.text(&first, &mut out);
                out.freeze()
            }
        };
        Connection {
            feed,
            keepalive: Box::pin(tokio::time::sleep(settings.heartbeat)),
            settings,
            first: Some(first),
            closed,
            items: Vec::new(),
            metrics,
            guard,
            encoder,
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
        // A later deadline only moves the entry's expiry (no re-insertion).
        let next = Instant::now() + self.settings.heartbeat;
        self.keepalive.as_mut().reset(next);
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
                    // A clean end: the encoding's trailer, then the end.
                    let encoder = self.encoder.as_ref()?;
                    let mut out = BytesMut::with_capacity(16);
                    encoder.trailer(&mut out);
                    return (!out.is_empty()).then(|| Ok(out.freeze()));
                }
                () = self.feed.ready() => {}
                () = self.keepalive.as_mut() => {
                    self.touch();
                    let Some(encoder) = &mut self.encoder else {
                        return Some(Ok(Bytes::from_static(frame::KEEPALIVE)));
                    };
                    let mut out = BytesMut::with_capacity(32);
                    encoder.text(frame::KEEPALIVE, &mut out);
                    return Some(Ok(out.freeze()));
                }
            }
        }
    }

    /// Frames everything pending into one chunk; `None` when nothing is.
    ///
    /// The metrics are recorded once per chunk (events sent per kind, one
    /// latency sample for the oldest event), not once per event: with a
    /// thousand clients that is the difference between a thousand and a
    /// million histogram updates per thousand events.
    pub(crate) fn drain_chunk(&mut self) -> Option<Bytes> {
        let mut items = F::lend_items(&mut self.items);
        self.feed.drain(&mut items);
        let chunk = self.frame_items(&mut items);
        F::give_back_items(&mut self.items, items);
        chunk
    }

    /// The room of the connection's own item list (for the tests that a
    /// feed lending its thread's list leaves none).
    #[cfg(test)]
    pub(crate) fn kept_items(&self) -> usize {
        self.items.capacity()
    }

    /// A V1 connection on `feed` with the default heartbeat and stall
    /// timeout, nothing written first, never closed, no metrics (tests).
    #[cfg(test)]
    pub(crate) fn for_test(feed: F) -> Self {
        Connection::new(
            feed,
            StreamSettings {
                format: crate::event::Format::V1,
                heartbeat: Duration::from_secs(15),
                stall_timeout: Duration::from_secs(30),
                encoding: None,
            },
            Bytes::new(),
            Box::pin(std::future::pending()),
            None,
            None,
        )
    }

    /// Frames (and drains) `items` into one chunk.
    fn frame_items(&mut self, items: &mut Vec<Item<F::Event>>) -> Option<Bytes> {
        if items.is_empty() {
            return None;
        }
        let format = self.settings.format;
        let mut chunk = Chunk::default();
        let encoder = &mut self.encoder;
        let feed = &self.feed;
        let mut written = WrittenBatch::new();
        let (mut sent, mut dropped) = (0u64, 0u64);
        let mut replayed = false;
        for item in items.drain(..) {
            match item {
                Item::Replayed(ev) => {
                    write_event(&mut chunk, encoder, feed, &*ev, format);
                    sent += 1;
                    replayed = true;
                    if let Some(kind) = ev.kind() {
                        written.count(kind);
                    }
                }
                Item::Event(ev) => {
                    write_event(&mut chunk, encoder, feed, &*ev, format);
                    sent += 1;
                    if let Some(kind) = ev.kind() {
                        written.count(kind);
                    }
                    if let Some(at) = ev.published_at() {
                        written.published(at);
                    }
                }
                Item::Lagged(n) => {
                    frame::write_lagged(chunk.text(encoder), n);
                    dropped += n;
                    if let Some(m) = &self.metrics {
                        m.dropped(n);
                    }
                }
                Item::Paced(n) => {
                    frame::write_lagged(chunk.text(encoder), n);
                    dropped += n;
                    if let Some(m) = &self.metrics {
                        m.paced(n);
                    }
                }
                Item::Resync(cursor) => frame::write_resync(chunk.text(encoder), &cursor),
            }
        }
        if let Some(m) = &self.metrics {
            m.record_write(&written);
        }
        if let Some(g) = &self.guard {
            g.record_sent(sent);
            g.record_dropped(dropped);
            g.record_queued(self.feed.queued_bytes() as u64);
        }
        let chunk = chunk.finish(encoder)?;
        Some(if replayed {
            self.feed.seal(chunk)
        } else {
            chunk
        })
    }
}

/// Writes one event's frame: the shared plain frame, or for a compressed
/// stream its shared compressed piece (rendering the event's pack on first
/// use).
fn write_event<F: Feed>(
    chunk: &mut Chunk,
    encoder: &mut Option<WireEncoder>,
    feed: &F,
    ev: &F::Event,
    format: Format,
) {
    let Some(encoder) = encoder else {
        match ev.frame(format) {
            Some(shared) => chunk.push_shared(shared),
            None => frame::write_event(chunk.buf(), ev, format),
        }
        return;
    };
    chunk.flush_text(encoder);
    let plain = |ev: &F::Event| {
        ev.frame(format)
            .unwrap_or_else(|| frame::render_frame(ev, format))
    };
    let frame = plain(ev);
    let seq = ev.sequence();
    let pack = ev.pack(format, || {
        compress::pack(&frame, || {
            let before = feed.previous(ev)?;
            Some((before.sequence(), plain(&before)))
        })
    });
    encoder.event(seq, &frame, pack.as_ref(), chunk);
}

/// The body chunk of one drain.
///
/// A lone ready-made frame — the usual case in fan-out, where a connection
/// wakes up for each event — goes out as the event's own shared bytes, with
/// no copy; as soon as anything else joins it, everything is concatenated
/// into one buffer, so a burst is still one chunk.
///
/// In a compressed stream the connection's own text (lag and resync
/// frames) is collected in `text` and encoded when an event or the end of
/// the chunk follows.
#[derive(Default)]
struct Chunk {
    lone: Option<Bytes>,
    buf: BytesMut,
    text: BytesMut,
}

impl Sink for Chunk {
    fn shared(&mut self, bytes: Bytes) {
        self.push_shared(bytes);
    }

    fn buf(&mut self) -> &mut BytesMut {
        Chunk::buf(self)
    }
}

impl Chunk {
    /// Adds a frame shared with other connections.
    fn push_shared(&mut self, frame: Bytes) {
        if self.lone.is_none() && self.buf.is_empty() {
            self.lone = Some(frame);
        } else {
            self.buf().extend_from_slice(&frame);
        }
    }

    /// The buffer to append to, holding everything added so far.
    fn buf(&mut self) -> &mut BytesMut {
        if let Some(lone) = self.lone.take() {
            // Room for a few more frames of the same size before it grows.
            self.buf.reserve(lone.len() * 4);
            self.buf.extend_from_slice(&lone);
        }
        &mut self.buf
    }

    /// Where to write the connection's own text: the chunk itself when
    /// plain, to be encoded later when compressed.
    fn text(&mut self, encoder: &Option<WireEncoder>) -> &mut BytesMut {
        match encoder {
            None => self.buf(),
            Some(_) => &mut self.text,
        }
    }

    /// Encodes the text collected so far.
    fn flush_text(&mut self, encoder: &mut WireEncoder) {
        if !self.text.is_empty() {
            let text = std::mem::take(&mut self.text);
            encoder.text(&text, self.buf());
        }
    }

    /// The chunk, `None` if nothing was written.
    fn finish(mut self, encoder: &mut Option<WireEncoder>) -> Option<Bytes> {
        if let Some(encoder) = encoder {
            self.flush_text(encoder);
        }
        match self.lone {
            Some(lone) => (!lone.is_empty()).then_some(lone),
            None => (!self.buf.is_empty()).then(|| self.buf.freeze()),
        }
    }
}

impl<F: Feed> Drop for Connection<F> {
    fn drop(&mut self) {
        if let Some(m) = &self.metrics {
            m.connection_closed(self.reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_core::{Event, EventMeta, QueueStatus, ServerEvent, Uuid};

    struct VecFeed(Vec<Item<Event>>);

    impl Feed for VecFeed {
        type Event = Event;
        async fn ready(&self) {
            std::future::pending().await
        }
        fn drain(&mut self, out: &mut Vec<Item<Event>>) {
            out.append(&mut self.0);
        }
        fn stalled_for(&self) -> Option<Duration> {
            None
        }
    }

    fn event(seq: u64) -> Arc<Event> {
        Arc::new(Event::new(
            seq,
            Uuid::now_v7(),
            time::OffsetDateTime::now_utc(),
            EventMeta::default(),
            ServerEvent::QueueStatus(QueueStatus::new(seq, 0)),
        ))
    }

    fn connection(items: Vec<Item<Event>>) -> Connection<VecFeed> {
        Connection::for_test(VecFeed(items))
    }

    #[tokio::test]
    async fn a_lone_event_goes_out_as_its_shared_frame() {
        let ev = event(1);
        let mut conn = connection(vec![Item::Event(ev.clone())]);
        let chunk = conn.drain_chunk().unwrap();
        let frame = ev.frame(Format::V1).unwrap();
        assert_eq!(chunk, frame);
        // Not a copy: the very bytes every other connection writes.
        assert_eq!(chunk.as_ptr(), frame.as_ptr());
        assert!(conn.drain_chunk().is_none());
    }

    #[tokio::test]
    async fn a_burst_is_one_chunk_in_order() {
        let (r, a, b) = (event(2), event(3), event(8));
        let mut conn = connection(vec![
            Item::Replayed(r.clone()),
            Item::Event(a.clone()),
            Item::Lagged(4),
            Item::Event(b.clone()),
            Item::Paced(2),
            Item::Resync("8".to_owned()),
        ]);
        let chunk = conn.drain_chunk().unwrap();
        let mut want = BytesMut::new();
        want.extend_from_slice(&r.frame(Format::V1).unwrap());
        want.extend_from_slice(&a.frame(Format::V1).unwrap());
        frame::write_lagged(&mut want, 4);
        want.extend_from_slice(&b.frame(Format::V1).unwrap());
        // A rate limit's drops are said as any lag.
        frame::write_lagged(&mut want, 2);
        frame::write_resync(&mut want, "8");
        assert_eq!(chunk, want.freeze());
    }

    #[tokio::test]
    async fn nothing_written_is_no_chunk() {
        assert!(connection(Vec::new()).drain_chunk().is_none());
    }
}
