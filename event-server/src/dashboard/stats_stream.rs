//! `GET /api/v1/stats/stream`: the counters of [`stats`](super::stats)
//! pushed as Server-Sent Events, which feed the dashboard's charts.
//!
//! ## Model
//!
//! ```text
//!  collector task ──(every STATS_STREAM_INTERVAL_MS)──► watch channel ──► stream 1
//!  (runs only while                 one frame, rendered once,        ├─► stream 2
//!   a stream is open)               the latest only                  └─► …
//! ```
//!
//! - **One collection per interval, whatever the number of readers.** The
//!   first stream opened starts one collector task; it collects the counters
//!   (the same object as `GET /api/v1/stats`), renders the SSE frame once
//!   and puts it in a [`watch`] channel, every interval. When the last stream
//!   goes, the task stops at once, so an unwatched server collects nothing.
//! - **A slow reader costs nothing.** The channel holds one value, the
//!   latest frame: a stream that is not read skips intervals instead of
//!   queueing them, and a client that stops reading altogether is cut by the
//!   host's write-stall timeout.
//! - **Bounded.** At most `STATS_STREAM_MAX` streams are open at once; one
//!   more answers `503 too_many_connections` with `Retry-After`.
//! - **Shutdown.** Every stream watches the app's cancellation token and
//!   ends when the server shuts down (after that a request answers
//!   `503 shutting_down`). These streams carry no events, so they are not in
//!   the connection registry (nor in the connections chart).
//!
//! Each frame is `id: <collection number>`, `event: stats`, and one `data:`
//! line with the JSON object. A newly opened stream gets the latest frame at
//! once (or the first collection's, which starts at once); there is no
//! separate heartbeat, since a frame goes out every interval (60 s at most).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::stats::{StatsState, collect};

/// Where the stream is served.
pub const PATH: &str = "/api/v1/stats/stream";
/// The shortest interval `STATS_STREAM_INTERVAL_MS` may set, in ms.
pub const MIN_INTERVAL_MS: u64 = 250;
/// The longest interval `STATS_STREAM_INTERVAL_MS` may set, in ms.
pub const MAX_INTERVAL_MS: u64 = 60_000;
/// The `Retry-After` of a `503`, in seconds (as SSE's).
const RETRY_AFTER_SECS: u32 = 5;

/// The stream's settings.
#[derive(Debug, Clone, Copy)]
pub struct StatsStreamLimits {
    /// Time between two frames (`STATS_STREAM_INTERVAL_MS`).
    pub interval: Duration,
    /// Streams open at once (`STATS_STREAM_MAX`).
    pub max_streams: usize,
}

/// The shared collector and its subscribers; cheap to clone (one per app).
#[derive(Clone, Debug)]
pub struct StatsHub {
    inner: Arc<Hub>,
}

#[derive(Debug)]
struct Hub {
    stats: StatsState,
    limits: StatsStreamLimits,
    /// The latest rendered frame (`None` before the first collection of a
    /// run).
    latest: watch::Sender<Option<Bytes>>,
    /// Whether the collector task runs; decided under this lock together
    /// with the subscriptions, so a stream opened while the task stops
    /// starts a new one.
    running: Mutex<bool>,
    /// One permit per open stream.
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// Collections made since start (the frames' `id`).
    collections: AtomicU64,
}

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `STATS_STREAM_MAX` streams are open.
    TooMany(usize),
    /// The server is shutting down.
    ShuttingDown,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (code, message) = match self {
            Refusal::TooMany(max) => (
                "too_many_connections",
                format!("too many stats streams (limit {max}, STATS_STREAM_MAX)"),
            ),
            Refusal::ShuttingDown => ("shutting_down", "the server is shutting down".to_owned()),
        };
        let mut response: Response =
            event_core::http_error::json_error(StatusCode::SERVICE_UNAVAILABLE, code, message);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        response
    }
}

impl StatsHub {
    /// A hub collecting `stats` every `limits.interval` while a stream is
    /// open; its streams end when `shutdown` is cancelled.
    pub fn new(stats: StatsState, limits: StatsStreamLimits, shutdown: CancellationToken) -> Self {
        let permits = limits.max_streams.min(Semaphore::MAX_PERMITS);
        StatsHub {
            inner: Arc::new(Hub {
                stats,
                limits,
                latest: watch::Sender::new(None),
                running: Mutex::new(false),
                slots: Arc::new(Semaphore::new(permits)),
                shutdown,
                collections: AtomicU64::new(0),
            }),
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.inner
            .limits
            .max_streams
            .min(Semaphore::MAX_PERMITS)
            .saturating_sub(self.inner.slots.available_permits())
    }

    /// Collections made since start.
    pub fn collections(&self) -> u64 {
        self.inner.collections.load(Ordering::Relaxed)
    }

    /// Whether the collector task runs (only while a stream is open).
    pub fn is_collecting(&self) -> bool {
        *self.inner.running()
    }

    /// A new subscriber, starting the collector if it is not running.
    fn subscribe(&self) -> Result<Subscription, Refusal> {
        let hub = &self.inner;
        if hub.shutdown.is_cancelled() {
            return Err(Refusal::ShuttingDown);
        }
        let permit = hub
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooMany(hub.limits.max_streams))?;
        let mut running = hub.running();
        let mut latest = hub.latest.subscribe();
        // The latest frame goes out at once (a new reader need not wait an
        // interval for its first point).
        if latest.borrow().is_some() {
            latest.mark_changed();
        }
        if !*running {
            *running = true;
            tokio::spawn(collect_while_watched(hub.clone()));
        }
        drop(running);
        Ok(Subscription {
            latest,
            shutdown: hub.shutdown.clone(),
            _slot: permit,
        })
    }
}

impl Hub {
    fn running(&self) -> MutexGuard<'_, bool> {
        // The flag is a plain bool: a panic elsewhere cannot leave it torn.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the collector stopped if no stream is open (decided under the
    /// lock subscriptions take); whether it stopped.
    fn stop_if_unwatched(&self) -> bool {
        let mut running = self.running();
        if self.latest.receiver_count() > 0 && !self.shutdown.is_cancelled() {
            return false;
        }
        *running = false;
        // A later run starts afresh, not with this run's last frame.
        self.latest.send_replace(None);
        true
    }

    /// One collection, rendered as the SSE frame every stream sends.
    async fn frame(&self) -> Option<Bytes> {
        match collect(&self.stats).await {
            Ok(stats) => {
                let id = self.collections.fetch_add(1, Ordering::Relaxed) + 1;
                Some(Bytes::from(format!(
                    "id: {id}\nevent: stats\ndata: {stats}\n\n"
                )))
            }
            Err(error) => {
                tracing::error!(%error, "collecting the stats failed; the interval is skipped");
                None
            }
        }
    }
}

/// The collector: every interval one frame into the channel, until no
/// stream is open or the server shuts down.
async fn collect_while_watched(hub: Arc<Hub>) {
    let mut ticks = tokio::time::interval(hub.limits.interval);
    // After a slow collection, the next one an interval later (no burst).
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = hub.shutdown.cancelled() => {}
            () = hub.latest.closed() => {}
            _ = ticks.tick() => {
                if let Some(frame) = hub.frame().await {
                    hub.latest.send_replace(Some(frame));
                }
                continue;
            }
        }
        // Every stream went (or the server stops); one may have been opened
        // meanwhile, which keeps this run going.
        if hub.stop_if_unwatched() {
            return;
        }
    }
}

/// One open stream: the channel's receiver and the stream's slot.
#[derive(Debug)]
struct Subscription {
    latest: watch::Receiver<Option<Bytes>>,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl Subscription {
    /// The next frame; `None` when the server shuts down.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                changed = self.latest.changed() => {
                    changed.ok()?;
                    if let Some(frame) = self.latest.borrow_and_update().clone() {
                        return Some(frame);
                    }
                }
            }
        }
    }
}

/// `GET /api/v1/stats/stream`: `text/event-stream` of `stats` frames, or
/// `503` (over `STATS_STREAM_MAX`, or shutting down).
pub async fn stream(State(hub): State<StatsHub>) -> Response {
    let subscription = match hub.subscribe() {
        Ok(subscription) => subscription,
        Err(refusal) => return refusal.into_response(),
    };
    let frames = futures_util::stream::unfold(subscription, |mut subscription| async move {
        let frame = subscription.next().await?;
        Some((Ok::<_, Infallible>(frame), subscription))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use event_core::ConnectionRegistry;

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    fn hub(max_streams: usize, shutdown: &CancellationToken) -> StatsHub {
        let stats = StatsState {
            registry: ConnectionRegistry::new(),
            #[cfg(feature = "telemetry")]
            metrics: crate::telemetry::metrics().unwrap(),
        };
        let limits = StatsStreamLimits {
            interval: Duration::from_millis(MIN_INTERVAL_MS),
            max_streams,
        };
        StatsHub::new(stats, limits, shutdown.clone())
    }

    async fn next(subscription: &mut Subscription) -> Bytes {
        tokio::time::timeout(WAIT, subscription.next())
            .await
            .expect("no frame in time")
            .expect("the stream ended")
    }

    fn id(frame: &Bytes) -> u64 {
        let text = std::str::from_utf8(frame).unwrap();
        let line = text.lines().next().unwrap();
        line.strip_prefix("id: ").unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn many_streams_share_one_collection_per_interval() {
        let shutdown = CancellationToken::new();
        let hub = hub(16, &shutdown);
        assert!(!hub.is_collecting());
        let mut subscriptions: Vec<_> = (0..10).map(|_| hub.subscribe().unwrap()).collect();
        assert_eq!(hub.open_streams(), 10);
        assert!(hub.is_collecting());
        // Three frames on every stream, read side by side: the same frames
        // (rendered once: equal bytes, equal collection ids), and a few
        // collections in all, where one per stream would be 30.
        let seen = futures_util::future::join_all(subscriptions.iter_mut().map(|s| async move {
            let mut frames = Vec::new();
            for _ in 0..3 {
                frames.push(next(s).await);
            }
            frames
        }))
        .await;
        let collections = hub.collections();
        let ids: Vec<Vec<u64>> = seen.iter().map(|f| f.iter().map(id).collect()).collect();
        assert!(
            collections < 30,
            "{collections} collections for 10 streams of 3 frames: {ids:?}"
        );
        for frames in &seen {
            assert_eq!(frames[0], seen[0][0], "{ids:?}");
            let ids: Vec<u64> = frames.iter().map(id).collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
            assert!(ids.iter().all(|&id| id <= collections), "{ids:?}");
        }

        // The last stream gone, the collector stops (and restarts with a new
        // stream).
        subscriptions.clear();
        assert_eq!(hub.open_streams(), 0);
        let deadline = tokio::time::Instant::now() + WAIT;
        while hub.is_collecting() {
            assert!(tokio::time::Instant::now() < deadline, "still collecting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stopped_at = hub.collections();
        let mut again = hub.subscribe().unwrap();
        assert!(hub.is_collecting());
        assert!(id(&next(&mut again).await) > stopped_at);
    }

    #[tokio::test]
    async fn a_slow_reader_gets_the_latest_frame_not_a_backlog() {
        let shutdown = CancellationToken::new();
        let hub = hub(4, &shutdown);
        let mut slow = hub.subscribe().unwrap();
        let mut paced = hub.subscribe().unwrap();
        let first = id(&next(&mut slow).await);
        // Three more collections while `slow` reads nothing…
        let mut last = 0;
        while last < first + 3 {
            last = id(&next(&mut paced).await);
        }
        // …and it gets the latest (or a later one), not the three it missed.
        let got = id(&next(&mut slow).await);
        assert!(got >= last, "{got} after {first}; the latest was {last}");
    }

    #[tokio::test]
    async fn the_limit_refuses_and_a_closed_stream_frees_its_slot() {
        let shutdown = CancellationToken::new();
        let hub = hub(2, &shutdown);
        let first = hub.subscribe().unwrap();
        let _second = hub.subscribe().unwrap();
        assert_eq!(hub.subscribe().unwrap_err(), Refusal::TooMany(2));
        let response = Refusal::TooMany(2).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        drop(first);
        assert!(hub.subscribe().is_ok());
    }

    #[tokio::test]
    async fn shutdown_ends_the_streams_and_refuses_new_ones() {
        let shutdown = CancellationToken::new();
        let hub = hub(4, &shutdown);
        let mut subscription = hub.subscribe().unwrap();
        next(&mut subscription).await;
        shutdown.cancel();
        let end = tokio::time::timeout(WAIT, subscription.next()).await;
        assert_eq!(end.expect("the stream did not end"), None);
        assert_eq!(hub.subscribe().unwrap_err(), Refusal::ShuttingDown);
        let deadline = tokio::time::Instant::now() + WAIT;
        while hub.is_collecting() {
            assert!(tokio::time::Instant::now() < deadline, "still collecting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
