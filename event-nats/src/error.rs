//! The one error type of event-nats.

/// Everything that can go wrong in event-nats.
///
/// Messages never contain the NATS URL (it may carry credentials).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable (bad stream name, subject prefix, …).
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    /// The NATS server could not be reached at startup.
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    /// The JetStream stream could not be created, updated or inspected.
    #[error("JetStream stream `{stream}`: {message}")]
    Stream {
        /// The stream name.
        stream: String,
        /// What went wrong.
        message: String,
    },
    /// The events after this cursor are no longer in the stream (retention):
    /// the client must resync.
    #[error("cursor {0} is older than the stream's retention")]
    CursorExpired(String),
    /// The cursor names no event of the stream (from the future, from
    /// another stream, or an id that was never published): the client must
    /// resync.
    #[error("cursor {0} names no event in the stream")]
    CursorUnknown(String),
    /// Replaying would return more events than the configured bound: the
    /// client must resync.
    #[error("replay of {count} events exceeds the limit of {limit}")]
    ReplayTooLong {
        /// How many events the replay would need.
        count: u64,
        /// The configured bound (`NatsConfig::max_replay`).
        limit: usize,
    },
    /// NATS is unreachable right now.
    #[error("NATS is disconnected")]
    Disconnected,
    /// Reading from JetStream failed or took too long.
    #[error("replay from JetStream failed: {0}")]
    Replay(String),
    /// A consumer group's durable consumer could not be created, read,
    /// acknowledged or deleted.
    #[error("consumer group in JetStream: {0}")]
    Group(String),
    /// A work queue's durable consumer could not be created or read.
    #[error("work queue in JetStream: {0}")]
    Work(String),
}

impl Error {
    /// A short machine-readable code for JSON error bodies and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Config(_) => "invalid_config",
            Error::Connect(_) => "nats_unreachable",
            Error::Stream { .. } => "stream_error",
            Error::CursorExpired(_) => "cursor_expired",
            Error::CursorUnknown(_) => "cursor_unknown",
            Error::ReplayTooLong { .. } => "replay_too_long",
            Error::Disconnected => "nats_disconnected",
            Error::Replay(_) => "replay_failed",
            Error::Group(_) => "group_failed",
            Error::Work(_) => "work_queue_failed",
        }
    }

    /// Whether the right answer to a client is a `resync_required` frame
    /// (true for every replay error: the cursor cannot be served).
    pub fn requires_resync(&self) -> bool {
        matches!(
            self,
            Error::CursorExpired(_)
                | Error::CursorUnknown(_)
                | Error::ReplayTooLong { .. }
                | Error::Disconnected
                | Error::Replay(_)
        )
    }
}
