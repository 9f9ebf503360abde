//! The error type of event-core.

/// Everything that can go wrong in event-core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A filter parameter could not be parsed.
    #[error("invalid `{param}` filter {value:?}: {reason}")]
    InvalidFilter {
        /// The parameter (`events`, `types`, `entity_id`, `memory`).
        param: &'static str,
        /// The raw value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An event name is not one of the seven.
    #[error("unknown event name {0:?}")]
    UnknownEventName(String),
    /// A `Last-Event-ID` that is neither a sequence number nor a UUID.
    #[error("invalid event id {0:?}: expected a sequence number or a UUID")]
    InvalidCursor(String),
    /// An event breaks a rule of docs/protocol.md §1.
    #[error("invalid event: `{field}` {message}")]
    InvalidEvent {
        /// The offending field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Credentials were missing or wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The principal may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// An event with an assigned sequence number arrived after a later one.
    #[error("event sequence {seq} is out of order (the bus is at {next})")]
    OutOfOrder {
        /// The refused sequence number.
        seq: u64,
        /// The lowest sequence number the bus would accept.
        next: u64,
    },
    /// A host-supplied provider failed.
    #[error("{0}")]
    Provider(String),
    /// An event's rendered JSON (docs/protocol.md §1) is larger than the bus's
    /// per-event limit ([`EventBus::max_event_bytes`](crate::EventBus::max_event_bytes),
    /// `EVENT_MAX_BYTES`). It was not published.
    #[error("a {event_type} event of {size} bytes is over the limit of {limit} bytes per event")]
    EventTooLarge {
        /// The event's `type`.
        event_type: &'static str,
        /// The size of its rendered JSON, in bytes.
        size: usize,
        /// The limit, in bytes.
        limit: usize,
    },
    /// A topic name breaks the rules of [`validate_topic`](crate::event::validate_topic).
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The name (truncated).
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting has a value that cannot be used.
    #[error("invalid setting `{setting}`: {message}")]
    InvalidSetting {
        /// The setting.
        setting: &'static str,
        /// What is wrong with the value.
        message: String,
    },
    /// A bounded store is full (outstanding one-time tokens, say).
    #[error("{0}")]
    Full(String),
    /// The bus's [`Upstream`](crate::Upstream) did not store an event a
    /// publisher waits for ([`EventBus::publish_acked`](crate::EventBus::publish_acked)):
    /// it could not take it, or gave up publishing it.
    #[error("the event was not stored upstream: {0}")]
    Unstored(String),
    /// The [`Upstream`](crate::Upstream) did not acknowledge the events
    /// within the publisher's wait (they may still be stored later).
    #[error("the upstream did not acknowledge the events within {} ms", .0.as_millis())]
    AckTimeout(std::time::Duration),
}

impl Error {
    /// A short machine-readable code for JSON error bodies
    /// (`{"error": code, "message": …}`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidFilter { .. } => "invalid_filter",
            Error::UnknownEventName(_) => "unknown_event",
            Error::InvalidCursor(_) => "invalid_cursor",
            Error::InvalidEvent { .. } => "invalid_event",
            Error::Unauthorized(_) => "unauthorized",
            Error::Forbidden(_) => "forbidden",
            Error::OutOfOrder { .. } => "out_of_order",
            Error::Provider(_) => "provider_error",
            Error::EventTooLarge { .. } => "event_too_large",
            Error::InvalidSetting { .. } => "invalid_setting",
            Error::InvalidTopic { .. } => "invalid_topic",
            Error::Full(_) => "limit_reached",
            Error::Unstored(_) | Error::AckTimeout(_) => "upstream_unavailable",
        }
    }
}
