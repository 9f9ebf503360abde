//! Server configuration: flags and environment variables.
//!
//! Every setting has an environment variable and a matching `--kebab-case`
//! flag (`EVENT_BUS_CAPACITY` ↔ `--event-bus-capacity`). The names are part of
//! the interface: operators and scripts depend on them. Invalid values stop
//! the server with a one-line error and exit code 2.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ipnet::IpNet;

/// The SSE frame format used when a client does not ask for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum SseFormat {
    /// `id: <seq>` / `event: <PascalCase>` / flat JSON (the seed format).
    #[default]
    V1,
    /// `event: <dot.name>` / `id: <uuid>` / envelope JSON (HotM G2).
    Envelope,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, fields, message).
    Json,
}

/// A comma-separated list of durations such as `1s,5s,25s,125s` (units `ms`,
/// `s`, `m`, `h`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|d| format!("{}ms", d.as_millis()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Parses one duration: `250ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{t:?} is not a duration (expected e.g. 500ms, 5s, 2m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{t:?} has no valid unit (use ms, s, m or h)")),
    };
    Ok(d)
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let steps = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        if steps.is_empty() {
            return Err("the retry schedule is empty".to_owned());
        }
        Ok(Schedule(steps))
    }
}

/// The log's place beside the database: the same PostgreSQL database; for
/// a SQLite file, a file of its own next to it (`events.db` →
/// `events-log.db`), so the log's writer and the webhook store's never
/// wait for each other's lock; an in-memory database, an in-memory log.
fn beside(database_url: &str) -> String {
    let Some(rest) = database_url.strip_prefix("sqlite:") else {
        return database_url.to_owned();
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let bare = path.trim_start_matches('/');
    if bare.is_empty()
        || path.contains(":memory:")
        || query.is_some_and(|q| q.contains("mode=memory"))
    {
        return "sqlite::memory:".to_owned();
    }
    let path = match path.strip_suffix(".db") {
        Some(stem) => format!("{stem}-log.db"),
        None => format!("{path}-log"),
    };
    match query {
        Some(q) => format!("sqlite:{path}?{q}"),
        None => format!("sqlite:{path}"),
    }
}

/// Longest `NATS_PUBLISH_TIMEOUT_MS`: a publish request never waits longer
/// for JetStream.
pub const MAX_NATS_PUBLISH_TIMEOUT_MS: usize = 60_000;

fn non_zero(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

/// Most intake threads (`INTAKE_THREADS`).
pub const MAX_INTAKE_THREADS: usize = 64;

/// `INTAKE_THREADS`: 0 to [`MAX_INTAKE_THREADS`].
fn intake_threads(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) if n <= MAX_INTAKE_THREADS => Ok(n),
        Ok(n) => Err(format!("{n}: at most {MAX_INTAKE_THREADS} threads")),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

/// A stream rate limit (`STREAM_MAX_RATE`): `0` (none) or 1 to
/// [`event_core::MAX_STREAM_RATE`] events per second.
fn stream_rate(text: &str) -> Result<u32, String> {
    event_core::pace::parse_max_rate(text).map(|rate| rate.map_or(0, |n| n.get()))
}

/// `SSE_COMPRESSION`: `on`, `off`, or a list of `gzip`, `br`, `zstd`.
fn compression(text: &str) -> Result<String, String> {
    #[cfg(feature = "sse")]
    event_sse::Compression::parse(text)?;
    Ok(text.trim().to_owned())
}

fn seconds(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{text:?}: {e}")),
    }
}

fn header_name(text: &str) -> Result<String, String> {
    http::HeaderName::from_str(text.trim())
        .map(|_| text.trim().to_owned())
        .map_err(|_| format!("{text:?} is not a valid HTTP header name"))
}

/// The matric real-time event server.
///
/// Serves the HotM WebSocket (`/api/v1/ws`), SSE (`/api/v1/events`),
/// webhooks (`/api/v1/webhooks`), metrics (`/metrics`), health (`/health`) and
/// a live dashboard (`/`). With no auth token configured it runs in
/// anonymous local mode: bind it to loopback only.
#[derive(Debug, Clone, Parser)]
#[command(name = "event-server", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long = "event-server-addr",
        env = "EVENT_SERVER_ADDR",
        default_value = "127.0.0.1:3000"
    )]
    pub addr: SocketAddr,

    /// Database for webhooks and the demo domain: `sqlite://path` (created on
    /// first run) or `postgres://…` (needs the `postgres` feature).
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://data/matric-events.db"
    )]
    pub database_url: String,

    /// How far (in events) a sink may fall behind the bus before it loses events.
    #[arg(long = "event-bus-capacity", env = "EVENT_BUS_CAPACITY", default_value = "1024", value_parser = non_zero)]
    pub bus_capacity: usize,

    /// How many recent events are kept for SSE replay (`Last-Event-ID`) and history.
    #[arg(
        long = "event-replay-size",
        env = "EVENT_REPLAY_SIZE",
        default_value = "1024"
    )]
    pub replay_size: usize,

    /// The durable event log (feature `log`): `on` (the default) keeps it
    /// beside `DATABASE_URL` (the same PostgreSQL database, or for SQLite a
    /// file of its own next to the database, `…-log.db`), `off` keeps no
    /// log, or a `sqlite://` / `postgres://` URL of its own. In cluster
    /// mode the JetStream stream is the log: `off` still turns the log API
    /// and named consumers off, any other value is ignored.
    #[arg(long = "event-log", env = "EVENT_LOG", default_value = "on")]
    pub event_log: String,

    /// Log retention by age, in seconds (default 7 days).
    #[arg(long = "event-log-max-age-secs", env = "EVENT_LOG_MAX_AGE_SECS", default_value = "604800", value_parser = seconds)]
    pub event_log_max_age_secs: u64,

    /// Log retention by count: most events kept.
    #[arg(long = "event-log-max-events", env = "EVENT_LOG_MAX_EVENTS", default_value = "10000000", value_parser = non_zero)]
    pub event_log_max_events: usize,

    /// Log retention by size: most bytes of event JSON kept (default 1 GiB).
    #[arg(long = "event-log-max-bytes", env = "EVENT_LOG_MAX_BYTES", default_value = "1073741824", value_parser = non_zero)]
    pub event_log_max_bytes: usize,

    /// Events queued for the log and not yet committed before publish
    /// requests wait for room (they answer `503 log_unavailable` after
    /// `EVENT_LOG_COMMIT_TIMEOUT_MS`).
    #[arg(long = "event-log-max-pending", env = "EVENT_LOG_MAX_PENDING", default_value = "100000", value_parser = non_zero)]
    pub event_log_max_pending: usize,

    /// How long a publish request waits for the log to commit its events
    /// before answering `503 log_unavailable`, in milliseconds.
    #[arg(long = "event-log-commit-timeout-ms", env = "EVENT_LOG_COMMIT_TIMEOUT_MS", default_value = "5000", value_parser = non_zero)]
    pub event_log_commit_timeout_ms: usize,

    /// Most bytes one replay from the log holds (each event counted twice:
    /// payload and envelope); a cursor further behind gets
    /// `resync_required`.
    #[arg(long = "event-log-max-replay-bytes", env = "EVENT_LOG_MAX_REPLAY_BYTES", default_value = "8388608", value_parser = non_zero)]
    pub event_log_max_replay_bytes: usize,

    /// The memory all replays from the log share until their events are
    /// written; a replay that finds no room within 2 s gets
    /// `resync_required`.
    #[arg(long = "event-log-replay-memory-bytes", env = "EVENT_LOG_REPLAY_MEMORY_BYTES", default_value = "67108864", value_parser = non_zero)]
    pub event_log_replay_memory_bytes: usize,

    /// Most events one replay or history request reads from the log; a
    /// cursor further behind gets `resync_required`.
    #[arg(long = "event-log-max-replay", env = "EVENT_LOG_MAX_REPLAY", default_value = "100000", value_parser = non_zero)]
    pub event_log_max_replay: usize,

    /// How often the event log's retention (the log's and each topic's) is
    /// applied, in seconds.
    #[arg(long = "event-log-prune-interval-secs", env = "EVENT_LOG_PRUNE_INTERVAL_SECS", default_value = "60", value_parser = non_zero)]
    pub event_log_prune_interval_secs: usize,

    /// Most named consumers and groups that may exist (stored in the event
    /// log's database); creating one more answers `409 consumer_limit`.
    #[arg(long = "consumer-max", env = "CONSUMER_MAX", default_value = "1000", value_parser = non_zero)]
    pub consumer_max: usize,

    /// Most members of one consumer group; one more answers `409
    /// group_full`.
    #[arg(long = "consumer-max-members", env = "CONSUMER_MAX_MEMBERS", default_value = "64", value_parser = non_zero)]
    pub consumer_max_members: usize,

    /// Most events a named consumer has delivered and not had acknowledged;
    /// at the limit it waits for acks (its lag grows, nothing is lost).
    #[arg(long = "consumer-max-ack-pending", env = "CONSUMER_MAX_ACK_PENDING", default_value = "1000", value_parser = non_zero)]
    pub consumer_max_ack_pending: usize,

    /// How long an `ack=explicit` delivery waits for its ack before it is
    /// delivered again, when the client does not say (`ack_wait`), in
    /// seconds.
    #[arg(long = "consumer-ack-wait-secs", env = "CONSUMER_ACK_WAIT_SECS", default_value = "30", value_parser = non_zero)]
    pub consumer_ack_wait_secs: usize,

    /// Most connection slots (`POST /api/v1/connections`) that may exist at
    /// once, waiting, connected or ended and still readable; one more
    /// answers `409 slot_limit`.
    #[arg(long = "connection-slots-max", env = "CONNECTION_SLOTS_MAX", default_value = "10000", value_parser = non_zero)]
    pub connection_slots_max: usize,

    /// Most connection slots one principal may hold at once; one more
    /// answers `409 slot_limit`.
    #[arg(long = "connection-slots-per-principal", env = "CONNECTION_SLOTS_PER_PRINCIPAL", default_value = "100", value_parser = non_zero)]
    pub connection_slots_per_principal: usize,

    /// How long a connection slot's single-use stream URL stays valid, in
    /// seconds (1–3,600).
    #[arg(long = "connection-ticket-ttl-secs", env = "CONNECTION_TICKET_TTL_SECS", default_value = "60", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connection_ticket_ttl_secs: u64,

    /// How long an ended connection slot's status stays readable, in
    /// seconds (0–86,400).
    #[arg(long = "connection-slot-retain-secs", env = "CONNECTION_SLOT_RETAIN_SECS", default_value = "300", value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub connection_slot_retain_secs: u64,

    /// Most bytes the replay ring may hold (each event weighed with every
    /// rendering it may cache); the oldest events go first beyond it.
    #[arg(long = "event-replay-max-bytes", env = "EVENT_REPLAY_MAX_BYTES", default_value = "67108864", value_parser = non_zero)]
    pub replay_max_bytes: usize,

    /// SSE frame format when the client does not ask (`?format=`).
    #[arg(
        long = "sse-default-format",
        env = "SSE_DEFAULT_FORMAT",
        value_enum,
        default_value = "v1"
    )]
    pub sse_default_format: SseFormat,

    /// The `retry:` hint every SSE stream starts with: how long a client
    /// waits before reconnecting, in milliseconds.
    #[arg(long = "sse-retry-ms", env = "SSE_RETRY_MS", default_value = "3000", value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub sse_retry_ms: u64,

    /// The `Content-Encoding`s SSE streams are offered in, for clients that
    /// accept them (`Accept-Encoding`; a client opts out with
    /// `?compression=false`): `on` (gzip, br and zstd), `off` (every stream
    /// plain), or a comma list of `gzip`, `br`, `zstd`. Each event is
    /// compressed once per format and encoding in use and shared by every
    /// connection (docs/protocol.md §3).
    #[arg(long = "sse-compression", env = "SSE_COMPRESSION", default_value = "on", value_parser = compression)]
    pub sse_compression: String,

    /// Seconds between WebSocket pings.
    #[arg(long = "ws-ping-interval-secs", env = "WS_PING_INTERVAL_SECS", default_value = "30", value_parser = seconds)]
    pub ws_ping_interval_secs: u64,

    /// Seconds of client silence (no pong, no frame) before a WebSocket is closed.
    #[arg(long = "ws-idle-timeout-secs", env = "WS_IDLE_TIMEOUT_SECS", default_value = "90", value_parser = seconds)]
    pub ws_idle_timeout_secs: u64,

    /// Whether a WebSocket client that offers permessage-deflate (RFC 7692;
    /// browsers do) gets it (`on`/`off`).
    #[arg(
        long = "ws-compression",
        env = "WS_COMPRESSION",
        default_value = "on",
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub ws_compression: bool,

    /// The smallest WebSocket message sent compressed, in bytes of payload
    /// (to a client that negotiated compression); `0` compresses every
    /// message that shrinks.
    #[arg(
        long = "ws-compress-min-bytes",
        env = "WS_COMPRESS_MIN_BYTES",
        default_value = "256"
    )]
    pub ws_compress_min_bytes: usize,

    /// How long a WebSocket client's socket may take no byte of what the
    /// server writes before the client is closed with `4008` (a client that
    /// reads, however slowly, is never closed by it: under overload it gets
    /// coalesced state and `events.lagged` instead), in seconds.
    #[arg(long = "ws-write-timeout-secs", env = "WS_WRITE_TIMEOUT_SECS", default_value = "30", value_parser = seconds)]
    pub ws_write_timeout_secs: u64,

    /// Maximum open client connections per transport (WebSocket, SSE).
    #[arg(long = "max-connections", env = "MAX_CONNECTIONS", default_value = "10000", value_parser = non_zero)]
    pub max_connections: usize,

    /// Open TCP connections from one client IP address, all routes and
    /// transports together (`0`: no limit, e.g. behind a reverse proxy whose
    /// address every client shares). Beyond it a connection gets `503`.
    #[arg(
        long = "max-connections-per-ip",
        env = "MAX_CONNECTIONS_PER_IP",
        default_value = "256"
    )]
    pub max_connections_per_ip: usize,

    /// Open TCP connections in all. Default: the process's file limit (raised
    /// to its hard limit at start) less a reserve for the database, logs and
    /// outgoing webhook requests. Beyond it a connection gets `503`.
    #[arg(long = "max-open-connections", env = "MAX_OPEN_CONNECTIONS", value_parser = non_zero)]
    pub max_open_connections: Option<usize>,

    /// Seconds a client has to send a whole request head, counted once from
    /// the connection's start for its first request (whichever of the direct
    /// event-stream path and hyper reads it) and from the end of the previous
    /// response for a later one; past it the connection is closed.
    #[arg(long = "http-head-timeout-secs", env = "HTTP_HEAD_TIMEOUT_SECS", default_value = "30", value_parser = seconds)]
    pub http_head_timeout_secs: u64,

    /// Threads of the intake runtime, which serves the connections whose
    /// first request is not a `GET` (publishing, the REST API) apart from
    /// the fan-out's writers, so that a saturated fan-out cannot starve the
    /// publishers (default 1, measured in BENCHMARKS.md; `0`: everything
    /// on the main runtime; at most 64).
    #[arg(long = "intake-threads", env = "INTAKE_THREADS", default_value = "1", value_parser = intake_threads)]
    pub intake_threads: usize,

    /// Connections that must have closed (and at least half of those open
    /// at the peak) before the server returns malloc's free pages to the
    /// system, once the count has not changed for a second (at most ten
    /// seconds after the fall; glibc `malloc_trim`), and again 5, 15, 30 and
    /// 60 seconds later; default 1,000; `0`: never.
    #[arg(
        long = "memory-trim-closed",
        env = "MEMORY_TRIM_CLOSED",
        default_value = "1000"
    )]
    pub memory_trim_closed: usize,

    /// Seconds a client has to send a whole request body (else `408` and the
    /// connection is closed).
    #[arg(long = "http-body-timeout-secs", env = "HTTP_BODY_TIMEOUT_SECS", default_value = "10", value_parser = seconds)]
    pub http_body_timeout_secs: u64,

    /// Largest body of `POST /api/v1/events`, in bytes (`413` beyond).
    #[arg(long = "publish-max-body-bytes", env = "PUBLISH_MAX_BODY_BYTES", default_value = "1048576", value_parser = non_zero)]
    pub publish_max_body_bytes: usize,

    /// `POST /api/v1/events` requests per second per producer (its token,
    /// or its IP address without one); over it `429` with `Retry-After`.
    /// `0`: unlimited.
    #[arg(
        long = "publish-max-rate",
        env = "PUBLISH_MAX_RATE",
        default_value = "0"
    )]
    pub publish_max_rate: u32,

    /// Seconds a publish answer is remembered for its `Idempotency-Key`: a
    /// repeat within it gets the first answer (`"duplicate": true`) and
    /// publishes nothing. `0`: keys are ignored.
    #[arg(
        long = "dedup-window-secs",
        env = "DEDUP_WINDOW_SECS",
        default_value = "120"
    )]
    pub dedup_window_secs: u64,

    /// Most `Idempotency-Key` answers remembered at once (the oldest are
    /// forgotten first).
    #[arg(long = "dedup-max-keys", env = "DEDUP_MAX_KEYS", default_value = "100000", value_parser = non_zero)]
    pub dedup_max_keys: usize,

    /// Webhooks that may be registered at once; beyond it
    /// `POST /api/v1/webhooks` answers `409 too_many_webhooks`. `0`:
    /// unlimited.
    #[arg(
        long = "webhook-max-count",
        env = "WEBHOOK_MAX_COUNT",
        default_value = "1000"
    )]
    pub webhook_max_count: usize,

    /// `POST /api/v1/webhooks` (registrations) per second per producer (its
    /// token, or its IP address without one); over it `429` with
    /// `Retry-After`. `0`: unlimited.
    #[arg(
        long = "webhook-create-max-rate",
        env = "WEBHOOK_CREATE_MAX_RATE",
        default_value = "10"
    )]
    pub webhook_create_max_rate: u32,

    /// Events per second each WebSocket and SSE consumer receives when it
    /// names no `max_rate` of its own (at most 10,000). Over it a consumer's
    /// `JobProgress` per job and `QueueStatus` are coalesced to the latest
    /// and the rest is counted in its lag signal; it is never disconnected
    /// for it. `0`: unlimited.
    #[arg(long = "stream-max-rate", env = "STREAM_MAX_RATE", default_value = "0", value_parser = stream_rate)]
    pub stream_max_rate: u32,

    /// Largest event, in bytes of rendered JSON (at least 1024). A larger one
    /// is refused: `413` on the publish API, an error for in-process
    /// publishers. Connection budgets always hold at least two such events.
    #[arg(long = "event-max-bytes", env = "EVENT_MAX_BYTES", default_value = "262144", value_parser = non_zero)]
    pub event_max_bytes: usize,

    /// Simulated jobs that may wait in the demo queue; beyond it
    /// `POST /api/v1/jobs` answers `429` with `Retry-After` (feature `demo`).
    #[arg(long = "demo-max-queued-jobs", env = "DEMO_MAX_QUEUED_JOBS", default_value = "1000", value_parser = non_zero)]
    pub demo_max_queued_jobs: usize,

    /// Milliseconds between the job bridge's periodic `QueueStatus` to the
    /// clients (100–3,600,000), sent while the instance has any (feature
    /// `jobs`). In a cluster an instance that sees another instance's status
    /// younger than the tick puts its own off until a quarter tick after the
    /// other's next one is due, so clients get one per tick, not one per
    /// instance, and at most 1.25 ticks apart (docs/cluster.md).
    #[arg(long = "queue-status-tick-ms", env = "QUEUE_STATUS_TICK_MS", default_value = "5000", value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub queue_status_tick_ms: u64,

    /// Milliseconds between two `stats` frames of `GET /api/v1/stats/stream`
    /// (the dashboard's charts), 250–60,000. The counters are collected once
    /// per interval for all open streams, and only while one is open.
    #[arg(long = "stats-stream-interval-ms", env = "STATS_STREAM_INTERVAL_MS", default_value = "1000", value_parser = clap::value_parser!(u64).range(crate::dashboard::stats_stream::MIN_INTERVAL_MS..=crate::dashboard::stats_stream::MAX_INTERVAL_MS))]
    pub stats_stream_interval_ms: u64,

    /// `GET /api/v1/stats/stream` streams open at once; one more answers
    /// `503 too_many_connections` with `Retry-After`.
    #[arg(long = "stats-stream-max", env = "STATS_STREAM_MAX", default_value = "64", value_parser = non_zero)]
    pub stats_stream_max: usize,

    /// MCP (`/mcp`, feature `mcp`): at most one
    /// `notifications/resources/updated` per subscribed resource per this
    /// many milliseconds, per session.
    #[arg(long = "mcp-update-interval-ms", env = "MCP_UPDATE_INTERVAL_MS", default_value = "500", value_parser = non_zero)]
    pub mcp_update_interval_ms: usize,

    /// MCP sessions open at once; an `initialize` beyond it gets `503`.
    #[arg(long = "mcp-max-sessions", env = "MCP_MAX_SESSIONS", default_value = "1000", value_parser = non_zero)]
    pub mcp_max_sessions: usize,

    /// Seconds without a request from its client after which an MCP session
    /// is closed (the client initializes again).
    #[arg(long = "mcp-session-idle-secs", env = "MCP_SESSION_IDLE_SECS", default_value = "600", value_parser = seconds)]
    pub mcp_session_idle_secs: u64,

    /// Messages queued for one MCP session's stream before the session
    /// waits for its client to read.
    #[arg(long = "mcp-session-queue", env = "MCP_SESSION_QUEUE", default_value = "16", value_parser = non_zero)]
    pub mcp_session_queue: usize,

    /// Allows anonymous local mode (no token set) on a non-loopback address.
    /// Anyone who can reach the port can then read every event, publish and
    /// register webhooks: only for a trusted network.
    #[arg(
        long = "auth-allow-anonymous",
        env = "AUTH_ALLOW_ANONYMOUS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub auth_allow_anonymous: bool,

    /// Comma-separated host names (without port) this server answers to
    /// besides loopback ones (`localhost`, `127.0.0.1`, `[::1]`). Checked
    /// against the `Host` header in anonymous mode (and in token mode when
    /// set), against DNS rebinding.
    #[arg(long = "public-hosts", env = "PUBLIC_HOSTS", value_delimiter = ',')]
    pub public_hosts: Vec<String>,

    /// Admin bearer token (webhooks, publishing, connection management). With
    /// neither this nor client tokens set, the server runs in anonymous local mode.
    #[arg(
        long = "auth-admin-token",
        env = "AUTH_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub auth_admin_token: Option<String>,

    /// Comma-separated client bearer tokens (UI, agents).
    #[arg(
        long = "auth-client-tokens",
        env = "AUTH_CLIENT_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_client_tokens: Vec<String>,

    /// Comma-separated allowed browser origins (WebSocket `Origin` check and
    /// CORS), each `scheme://host[:port]`, or `*` for any. Empty: any in token
    /// mode; loopback and same-host origins in anonymous mode.
    #[arg(
        long = "allowed-origins",
        env = "ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Comma-separated CIDRs webhook targets may resolve to despite being
    /// private (e.g. `127.0.0.0/8` for local testing).
    #[arg(
        long = "webhook-allow-cidrs",
        env = "WEBHOOK_ALLOW_CIDRS",
        value_delimiter = ','
    )]
    pub webhook_allow_cidrs: Vec<IpNet>,

    /// Delays between webhook delivery attempts.
    #[arg(
        long = "webhook-retry-schedule",
        env = "WEBHOOK_RETRY_SCHEDULE",
        default_value = "1s,5s,25s,125s"
    )]
    pub webhook_retry_schedule: Schedule,

    /// Seconds before a webhook request times out.
    #[arg(long = "webhook-timeout-secs", env = "WEBHOOK_TIMEOUT_SECS", default_value = "30", value_parser = seconds)]
    pub webhook_timeout_secs: u64,

    /// Seconds a worker's claim on a delivery holds: after a crash, the
    /// deliveries it had in flight are taken again after this (PostgreSQL;
    /// SQLite frees them at start). More than `WEBHOOK_TIMEOUT_SECS`.
    #[arg(long = "webhook-lease-secs", env = "WEBHOOK_LEASE_SECS", default_value = "300", value_parser = seconds)]
    pub webhook_lease_secs: u64,

    /// Rows of one webhook the delivery worker may hold locally when they
    /// come straight from this instance's own event sink: those are queued
    /// already claimed and skip the claim query. Beyond it rows are queued
    /// unclaimed and claimed in order. A crashed instance leaves up to this
    /// many per webhook claimed until `WEBHOOK_LEASE_SECS` ends
    /// (PostgreSQL). `0`: off (every row waits for a claim).
    #[arg(long = "webhook-handoff-hold", env = "WEBHOOK_HANDOFF_HOLD", default_value = "1024", value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub webhook_handoff_hold: u64,

    /// Delivery attempts the worker runs at once, over all webhooks.
    #[arg(long = "webhook-concurrency", env = "WEBHOOK_CONCURRENCY", default_value = "64", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub webhook_concurrency: u64,

    /// Delivery attempts the worker runs at once to one webhook: how many
    /// requests a receiver may see in flight from one instance.
    #[arg(long = "webhook-endpoint-concurrency", env = "WEBHOOK_ENDPOINT_CONCURRENCY", default_value = "8", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub webhook_endpoint_concurrency: u64,

    /// Name of the hex HMAC signature header on webhook requests.
    #[arg(long = "webhook-signature-header", env = "WEBHOOK_SIGNATURE_HEADER", default_value = "X-Matric-Signature", value_parser = header_name)]
    pub webhook_signature_header: String,

    /// Keys that encrypt webhook secrets at rest: base64 of 32 bytes each
    /// (`head -c32 /dev/urandom | base64`), comma-separated; the first
    /// encrypts, all decrypt (rotation: `NEW,OLD`, restart, then `NEW`).
    /// Unset: secrets are stored as they are.
    #[arg(
        long = "webhook-secret-key",
        env = "WEBHOOK_SECRET_KEY",
        hide_env_values = true
    )]
    pub webhook_secret_key: Option<String>,

    /// Log format.
    #[arg(
        long = "log-format",
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Log filter, `RUST_LOG` syntax (e.g. `info,matric::events=debug`).
    #[arg(long = "rust-log", env = "RUST_LOG", default_value = "info")]
    pub rust_log: String,

    /// NATS server for running several instances as one (feature `nats`).
    #[arg(long = "nats-url", env = "NATS_URL")]
    pub nats_url: Option<String>,

    /// JetStream stream shared by the instances (default `MATRIC_EVENTS`).
    #[arg(long = "nats-stream", env = "NATS_STREAM")]
    pub nats_stream: Option<String>,

    /// Subject prefix of the events on NATS (default `matric.events`).
    #[arg(long = "nats-subject-prefix", env = "NATS_SUBJECT_PREFIX")]
    pub nats_subject_prefix: Option<String>,

    /// JetStream key-value bucket of the named consumers' committed offsets,
    /// shared by the instances (default `MATRIC_CONSUMERS`).
    #[arg(long = "nats-consumers-bucket", env = "NATS_CONSUMERS_BUCKET")]
    pub nats_consumers_bucket: Option<String>,
    /// In cluster mode, how long `POST /api/v1/events` waits for JetStream
    /// to acknowledge its events before answering `503 nats_unavailable`,
    /// in milliseconds (at most 60,000). The default outlasts the
    /// publisher's retries through a stream-leader election (about 13 s),
    /// so an election delays answers instead of failing them.
    #[arg(long = "nats-publish-timeout-ms", env = "NATS_PUBLISH_TIMEOUT_MS", default_value = "20000", value_parser = non_zero)]
    pub nats_publish_timeout_ms: usize,

    /// In cluster mode, how long an instance may hold events of the
    /// instances' shared webhook work queue without acknowledging them
    /// before JetStream hands them to another instance, in seconds
    /// (5–3,600): how late the deliveries of events a killed instance had
    /// taken are queued by another.
    #[arg(long = "nats-webhook-ack-wait-secs", env = "NATS_WEBHOOK_ACK_WAIT_SECS", default_value = "30", value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub nats_webhook_ack_wait_secs: u64,
}

impl Config {
    /// Checks rules that involve several settings.
    pub fn validate(&self) -> Result<(), String> {
        if self.ws_idle_timeout_secs <= self.ws_ping_interval_secs {
            return Err(format!(
                "WS_IDLE_TIMEOUT_SECS ({}) must be greater than WS_PING_INTERVAL_SECS ({})",
                self.ws_idle_timeout_secs, self.ws_ping_interval_secs
            ));
        }
        let scheme = self.database_url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => {}
            "postgres" | "postgresql" if cfg!(feature = "postgres") => {}
            "postgres" | "postgresql" => {
                return Err("DATABASE_URL is PostgreSQL but the server was built without the `postgres` feature".to_owned());
            }
            _ => {
                return Err(format!(
                    "DATABASE_URL must start with sqlite:// or postgres:// (got scheme {scheme:?})"
                ));
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.rust_log) {
            return Err(format!(
                "RUST_LOG {:?} is not a valid log filter: {e}",
                self.rust_log
            ));
        }
        if self.auth_client_tokens.iter().any(|t| t.trim().is_empty()) {
            return Err("AUTH_CLIENT_TOKENS contains an empty token".to_owned());
        }
        if !self.auth_enabled() && !self.addr.ip().is_loopback() && !self.auth_allow_anonymous {
            return Err(format!(
                "no AUTH_ADMIN_TOKEN or AUTH_CLIENT_TOKENS is set (anonymous local mode) but \
                 EVENT_SERVER_ADDR {} is not a loopback address; set tokens, or \
                 AUTH_ALLOW_ANONYMOUS=true to serve anyone who can reach it",
                self.addr
            ));
        }
        #[cfg(feature = "webhook")]
        if let Some(keys) = &self.webhook_secret_key {
            event_webhook::SecretKey::parse_list(keys)
                .map_err(|e| format!("WEBHOOK_SECRET_KEY: {e}"))?;
        }
        if self.event_max_bytes < event_core::MIN_MAX_EVENT_BYTES {
            return Err(format!(
                "EVENT_MAX_BYTES ({}) must be at least {} bytes",
                self.event_max_bytes,
                event_core::MIN_MAX_EVENT_BYTES
            ));
        }
        if self.publish_max_body_bytes < self.event_max_bytes {
            return Err(format!(
                "PUBLISH_MAX_BODY_BYTES ({}) must be at least EVENT_MAX_BYTES ({}), or the largest event could never be published",
                self.publish_max_body_bytes, self.event_max_bytes
            ));
        }
        crate::guard::check_origins(&self.allowed_origins)?;
        for host in &self.public_hosts {
            crate::guard::check_host_name(host).map_err(|e| format!("PUBLIC_HOSTS: {e}"))?;
        }
        self.event_log_url()?;
        if self.webhook_lease_secs <= self.webhook_timeout_secs {
            return Err(format!(
                "WEBHOOK_LEASE_SECS ({}) must be greater than WEBHOOK_TIMEOUT_SECS ({}): a claim must outlive its attempt",
                self.webhook_lease_secs, self.webhook_timeout_secs
            ));
        }
        if self.nats_publish_timeout_ms > MAX_NATS_PUBLISH_TIMEOUT_MS {
            return Err(format!(
                "NATS_PUBLISH_TIMEOUT_MS ({}) is over {MAX_NATS_PUBLISH_TIMEOUT_MS}",
                self.nats_publish_timeout_ms
            ));
        }
        if self.nats_url.is_some() && !cfg!(feature = "nats") {
            return Err(
                "NATS_URL is set but the server was built without the `nats` feature".to_owned(),
            );
        }
        Ok(())
    }

    /// Whether any token is configured (otherwise: anonymous local mode).
    pub fn auth_enabled(&self) -> bool {
        self.auth_admin_token.is_some() || !self.auth_client_tokens.is_empty()
    }

    /// Where the event log lives, or `None` for no log (`EVENT_LOG=off`).
    pub fn event_log_url(&self) -> Result<Option<String>, String> {
        match self.event_log.trim() {
            "off" | "false" | "0" => Ok(None),
            "on" | "true" | "1" => Ok(Some(beside(&self.database_url))),
            url if url.starts_with("sqlite:") => Ok(Some(url.to_owned())),
            url if url.starts_with("postgres:") || url.starts_with("postgresql:") => {
                if cfg!(feature = "postgres") {
                    Ok(Some(url.to_owned()))
                } else {
                    Err("EVENT_LOG is PostgreSQL but the server was built without the `postgres` feature".to_owned())
                }
            }
            other => Err(format!(
                "EVENT_LOG must be on, off, or a sqlite:// or postgres:// URL (got {:?})",
                other.split(':').next().unwrap_or_default()
            )),
        }
    }

    /// The directory a SQLite database file lives in, if the URL names a file.
    pub fn sqlite_dir(&self) -> Option<PathBuf> {
        let rest = self.database_url.strip_prefix("sqlite:")?;
        let path = rest.trim_start_matches("//");
        let path = path.split('?').next().unwrap_or(path);
        if path.is_empty() || path == ":memory:" {
            return None;
        }
        PathBuf::from(path).parent().map(PathBuf::from)
    }

    /// The WebSocket ping interval.
    pub fn ws_ping_interval(&self) -> Duration {
        Duration::from_secs(self.ws_ping_interval_secs)
    }

    /// The stream rate limit of consumers that name none (`STREAM_MAX_RATE`;
    /// `None`: unlimited).
    pub fn stream_max_rate(&self) -> Option<std::num::NonZeroU32> {
        std::num::NonZeroU32::new(self.stream_max_rate)
    }

    /// The WebSocket idle timeout.
    pub fn ws_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.ws_idle_timeout_secs)
    }

    /// Parses flags and environment; prints a one-line error and exits with
    /// code 2 on invalid configuration (help and version exit normally).
    pub fn load() -> Config {
        let config = match Config::try_parse() {
            Ok(c) => c,
            Err(e) => match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    e.exit()
                }
                _ => {
                    let text = e.to_string();
                    let first = text.lines().next().unwrap_or("invalid configuration");
                    eprintln!("event-server: {}", first.trim_start_matches("error: "));
                    std::process::exit(2);
                }
            },
        };
        if let Err(message) = config.validate() {
            eprintln!("event-server: invalid configuration: {message}");
            std::process::exit(2);
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["event-server"];
        all.extend_from_slice(args);
        let c = Config::try_parse_from(all).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.addr.to_string(), "127.0.0.1:3000");
        assert_eq!(c.bus_capacity, 1024);
        assert_eq!(
            c.webhook_retry_schedule.0,
            [1, 5, 25, 125].map(Duration::from_secs)
        );
        assert_eq!(c.sqlite_dir(), Some(PathBuf::from("data")));
        assert!(!c.auth_enabled());
        assert!(c.ws_compression);
        assert_eq!(c.ws_compress_min_bytes, 256);
        assert_eq!(c.ws_write_timeout_secs, 30);
        assert!(parse(&["--ws-write-timeout-secs", "0"]).is_err());
    }

    #[test]
    fn intake_threads_default_to_one_and_are_bounded() {
        assert_eq!(parse(&[]).unwrap().intake_threads, 1);
        assert_eq!(parse(&["--intake-threads", "1"]).unwrap().intake_threads, 1);
        assert_eq!(parse(&["--intake-threads", "0"]).unwrap().intake_threads, 0);
        assert_eq!(
            parse(&["--intake-threads", "64"]).unwrap().intake_threads,
            64
        );
        let err = parse(&["--intake-threads", "65"]).unwrap_err();
        assert!(err.contains("at most 64"), "{err}");
        assert!(parse(&["--intake-threads", "x"]).is_err());
    }

    #[test]
    fn webhook_concurrency_has_defaults_and_bounds() {
        let c = parse(&[]).unwrap();
        assert_eq!(
            (c.webhook_concurrency, c.webhook_endpoint_concurrency),
            (64, 8)
        );
        assert!(parse(&["--webhook-concurrency", "0"]).is_err());
        assert!(parse(&["--webhook-concurrency", "4097"]).is_err());
        assert!(parse(&["--webhook-endpoint-concurrency", "0"]).is_err());
        assert!(parse(&["--webhook-endpoint-concurrency", "1025"]).is_err());
        let c = parse(&["--webhook-endpoint-concurrency", "16"]).unwrap();
        assert_eq!(c.webhook_endpoint_concurrency, 16);
    }

    #[test]
    fn queue_status_tick_has_a_default_and_bounds() {
        assert_eq!(parse(&[]).unwrap().queue_status_tick_ms, 5000);
        for ms in [100, 3_600_000] {
            let c = parse(&["--queue-status-tick-ms", &ms.to_string()]).unwrap();
            assert_eq!(c.queue_status_tick_ms, ms);
        }
        for ms in ["99", "3600001", "0"] {
            let err = parse(&["--queue-status-tick-ms", ms]).unwrap_err();
            assert!(err.contains("QUEUE_STATUS_TICK_MS"), "{ms}: {err}");
        }
    }

    #[test]
    fn webhook_ack_wait_has_a_default_and_bounds() {
        assert_eq!(parse(&[]).unwrap().nats_webhook_ack_wait_secs, 30);
        for secs in [5, 3600] {
            let c = parse(&["--nats-webhook-ack-wait-secs", &secs.to_string()]).unwrap();
            assert_eq!(c.nats_webhook_ack_wait_secs, secs);
        }
        for secs in ["4", "3601"] {
            let err = parse(&["--nats-webhook-ack-wait-secs", secs]).unwrap_err();
            assert!(err.contains("NATS_WEBHOOK_ACK_WAIT_SECS"), "{secs}: {err}");
        }
    }

    #[test]
    fn memory_trim_defaults_to_a_thousand_closed_connections() {
        assert_eq!(parse(&[]).unwrap().memory_trim_closed, 1_000);
        assert_eq!(
            parse(&["--memory-trim-closed", "0"])
                .unwrap()
                .memory_trim_closed,
            0
        );
        assert!(parse(&["--memory-trim-closed", "-1"]).is_err());
    }

    #[test]
    fn websocket_compression_is_switched_with_on_and_off() {
        for (value, on) in [("on", true), ("off", false), ("true", true), ("0", false)] {
            let c = parse(&["--ws-compression", value]).unwrap();
            assert_eq!(c.ws_compression, on, "{value}");
        }
        assert!(parse(&["--ws-compression", "maybe"]).is_err());
        let c = parse(&["--ws-compress-min-bytes", "0"]).unwrap();
        assert_eq!(c.ws_compress_min_bytes, 0);
        assert!(parse(&["--ws-compress-min-bytes", "-1"]).is_err());
    }

    #[test]
    fn the_event_log_lives_beside_the_database_unless_told_otherwise() {
        let log = |args: &[&str]| parse(args).unwrap().event_log_url().unwrap();
        assert_eq!(
            log(&[]).as_deref(),
            Some("sqlite://data/matric-events-log.db")
        );
        let db = |url| log(&["--database-url", url]);
        assert_eq!(
            db("sqlite:///var/x.db?mode=rwc").as_deref(),
            Some("sqlite:///var/x-log.db?mode=rwc")
        );
        assert_eq!(db("sqlite:events").as_deref(), Some("sqlite:events-log"));
        assert_eq!(db("sqlite::memory:").as_deref(), Some("sqlite::memory:"));
        assert_eq!(log(&["--event-log", "off"]), None);
        assert_eq!(
            log(&["--event-log", "sqlite://elsewhere.db"]).as_deref(),
            Some("sqlite://elsewhere.db")
        );
        let err = parse(&["--event-log", "mysql://x"]).unwrap_err();
        assert!(err.contains("EVENT_LOG must be on, off"), "{err}");
        assert!(parse(&["--event-log-max-pending", "0"]).is_err());
        let err =
            parse(&["--webhook-timeout-secs", "30", "--webhook-lease-secs", "30"]).unwrap_err();
        assert!(err.contains("WEBHOOK_LEASE_SECS"), "{err}");
    }

    #[test]
    fn schedules_and_lists() {
        let c = parse(&[
            "--webhook-retry-schedule",
            "100ms, 2s,1m",
            "--webhook-allow-cidrs",
            "127.0.0.0/8,::1/128",
            "--auth-client-tokens",
            "a,b",
        ])
        .unwrap();
        assert_eq!(
            c.webhook_retry_schedule.0,
            vec![
                Duration::from_millis(100),
                Duration::from_secs(2),
                Duration::from_secs(60)
            ]
        );
        assert_eq!(c.webhook_allow_cidrs.len(), 2);
        assert_eq!(c.auth_client_tokens, ["a", "b"]);
        assert!(c.auth_enabled());
    }

    #[test]
    fn public_addresses_need_tokens_or_the_explicit_opt_in() {
        let any = ["--event-server-addr", "0.0.0.0:3000"];
        assert!(parse(&any).is_err());
        assert!(parse(&[any[0], any[1], "--auth-admin-token", "t"]).is_ok());
        assert!(parse(&[any[0], any[1], "--auth-allow-anonymous", "true"]).is_ok());
        let c = parse(&["--allowed-origins", "*", "--public-hosts", "events.example"]).unwrap();
        assert_eq!(c.allowed_origins, ["*"]);
        assert_eq!(c.public_hosts, ["events.example"]);
    }

    #[test]
    fn invalid_values_are_refused() {
        for args in [
            &["--event-bus-capacity", "0"][..],
            &["--event-bus-capacity", "many"],
            &["--webhook-retry-schedule", "5"],
            &["--webhook-retry-schedule", ""],
            &["--sse-default-format", "xml"],
            &["--webhook-signature-header", "bad header"],
            &[
                "--ws-ping-interval-secs",
                "30",
                "--ws-idle-timeout-secs",
                "30",
            ],
            &["--database-url", "mysql://x"],
            &["--rust-log", "info,=[bad"],
            &["--webhook-allow-cidrs", "10.0.0.0/33"],
            // Anonymous mode on a public address, without the opt-in.
            &["--event-server-addr", "0.0.0.0:3000"],
            &["--allowed-origins", "*,https://a.example"],
            &["--allowed-origins", "a.example"],
            &["--public-hosts", "https://a.example"],
            &["--webhook-secret-key", "not-base64-32-bytes"],
            &["--event-max-bytes", "100"],
            &["--event-max-bytes", "4000000"],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be refused");
        }
    }
}
