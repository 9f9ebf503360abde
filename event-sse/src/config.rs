//! Endpoint configuration.

use std::num::NonZeroU32;
use std::time::Duration;

use event_core::OutboxLimits;

use crate::compress::Compression;
use crate::event::Format;

/// Smallest `?heartbeat=` a client may ask for, in seconds.
pub const MIN_HEARTBEAT_SECS: u64 = 5;
/// Largest `?heartbeat=` a client may ask for, in seconds.
pub const MAX_HEARTBEAT_SECS: u64 = 300;
/// Largest `limit` of `GET /api/v1/events/history`.
pub const MAX_HISTORY_LIMIT: usize = 1000;
/// Most events one `GET /api/v1/events/history` examines from a replay
/// source (the event log, JetStream) after `since`: its filter, `offset`
/// and `until` apply within them. Page on with `since` = the last event
/// returned.
pub const MAX_HISTORY_SCAN: usize = 10_000;

/// Configuration of an SSE endpoint. `Default` is docs/protocol.md §3.
#[derive(Debug, Clone)]
pub struct SseConfig {
    /// The frame format when the client sends no `?format=` (`v1`).
    pub format: Format,
    /// The `retry:` written first, in milliseconds (3000).
    pub retry_ms: u64,
    /// The keep-alive interval when the client sends no `?heartbeat=` (15 s).
    pub heartbeat: Duration,
    /// How much a connection may have queued before it starts losing events
    /// (and receives `events.lagged`, then the latest state per job and of
    /// the queue, kept within a second budget of this size); the byte
    /// budget also bounds a replay
    /// in flight. Each connection raises it, if needed, to hold two of the
    /// bus's largest events ([`OutboxLimits::fit_event`]).
    pub outbox: OutboxLimits,
    /// A connection whose queue stays full this long without being written
    /// is dropped (30 s).
    pub stall_timeout: Duration,
    /// The `limit` of a history request that names none (100).
    pub history_default_limit: usize,
    /// Most simultaneous event streams of an [`SseEndpoint`](crate::SseEndpoint)
    /// (10,000; the host's `MAX_CONNECTIONS`, the same limit as the
    /// WebSocket endpoint's). Beyond it a new stream is refused with `503`,
    /// `Retry-After: 5` and `{"error":"too_many_connections",…}`, as the WebSocket
    /// upgrade is. Not applied by [`SseChannel`](crate::SseChannel).
    pub max_connections: usize,
    /// The rate limit of a stream whose client sends no `?max_rate=`, in
    /// events per second (`None`: unlimited; the host's `STREAM_MAX_RATE`).
    /// Over the rate, `JobProgress` per job and `QueueStatus` are coalesced
    /// to the latest and the rest is counted in `events.lagged`; the stream
    /// is never ended for it ([`event_core::pace`]). Replays are not paced.
    /// Not applied by [`SseChannel`](crate::SseChannel).
    pub max_rate: Option<NonZeroU32>,
    /// The `Content-Encoding`s offered to clients that accept them (all
    /// three: gzip, br, zstd; the host's `SSE_COMPRESSION`). A client
    /// chooses with `Accept-Encoding` and opts out with
    /// `?compression=false`; [`Compression::OFF`] sends every stream plain.
    /// Each event is compressed once per format and encoding in use and
    /// shared by every connection (see docs/protocol.md §3).
    pub compression: Compression,
}

impl Default for SseConfig {
    fn default() -> Self {
        SseConfig {
            format: Format::V1,
            retry_ms: 3000,
            heartbeat: Duration::from_secs(15),
            outbox: OutboxLimits::default(),
            stall_timeout: Duration::from_secs(30),
            history_default_limit: 100,
            max_connections: 10_000,
            max_rate: None,
            compression: Compression::ALL,
        }
    }
}
