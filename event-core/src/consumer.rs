//! Named durable consumers and consumer groups over the event log.
//!
//! # Model
//!
//! A plain subscription sees what is published while it is connected (and,
//! with a cursor, what it missed). A *named consumer* is a position in the
//! [event log](crate::log) that the server keeps for the client: it
//! survives disconnects and restarts, and a client that reconnects without
//! a cursor resumes right after the last event it was done with.
//!
//! Each consumer has one *dispatcher* task. It reads the log after the
//! consumer's position, skips events its filter does not match, and hands
//! each remaining event to one *member* (an attached connection). Every
//! handed-out event is *pending* until it is acknowledged:
//!
//! * [`AckMode::Auto`]: the transport taking the event from its member's
//!   queue to write it is the ack (at most once: an event in the socket when
//!   the connection dies is not sent again).
//! * [`AckMode::Explicit`]: the client acks each event (by sequence number
//!   or id). An event not acked within `ack_wait` is delivered again, and a
//!   member that leaves gives its pending events back at once (at least
//!   once).
//!
//! The *committed offset* is the last sequence number below every pending
//! event: everything at or below it is done. The dispatcher stores it
//! ([`OffsetStore`]) at most every [`ConsumerConfig::save_interval`] and when
//! the consumer goes idle or the host stops, so after a crash a consumer
//! resumes from a position at most that old: events after it may be
//! delivered again, none is skipped.
//!
//! A *group* (`shared`) has several members. Each event goes to exactly one
//! live member, chosen by a hash of its entity id (the job or note), so one
//! entity's events reach one member in order while the membership is
//! stable. When a member joins or leaves, the assignment changes for the
//! events dispatched from then on; a leaving member's pending events go to
//! the others. A consumer that is not a group has at most one member: a new
//! connection under its name takes over (the old one is closed), which is
//! what a client reconnecting before the server noticed its old connection
//! die needs.
//!
//! # Groups across processes
//!
//! With a [`GroupBackend`] set ([`Consumers::with_group_backend`]), groups
//! live in the backend rather than in this process's log and offset store
//! (event-nats: a JetStream durable pull consumer per group, so the members
//! of one group on several instances share its events). The group's
//! dispatcher then pulls from the backend in bounded batches and hands each
//! event to one *local* member by the same entity hash; a member's ack (or,
//! in [`AckMode::Auto`], its transport taking the event) acks it in the
//! backend, a member that leaves gives its events back at once (a nak), an
//! event not acked within `ack_wait` is delivered again by the backend
//! (to any process), and a process with no member of the group stops
//! pulling. Single consumers are unchanged. The backend decides which
//! process gets an event, so one entity's events stay on one member only
//! within a process (see the backend's documentation).
//!
//! The dispatcher reads ahead at most [`ConsumerConfig::max_ack_pending`]
//! events (and [`ConsumerConfig::max_pending_bytes`]): past that it waits
//! for acks, so a slow group is a growing lag (`matric_consumer_lag`), never
//! growing memory. The log holds the rest.
//!
//! # Limits
//!
//! | limit | set with | default | at the limit |
//! |---|---|---|---|
//! | consumers (stored, of both kinds) | [`ConsumerConfig::max_consumers`] | 1,000 | [`ConsumerError::TooMany`] |
//! | members of one group | [`ConsumerConfig::max_members`] | 64 | [`ConsumerError::TooManyMembers`] |
//! | pending events of one consumer | [`ConsumerConfig::max_ack_pending`] | 1,000 | dispatching pauses until acks arrive |
//! | pending bytes of one consumer | [`ConsumerConfig::max_pending_bytes`] | 8 MiB | dispatching pauses until acks arrive |
//! | `ack_wait` | [`ConsumerConfig::max_ack_wait`] | 1 s – 1 h | [`ConsumerError::Invalid`] |
//! | events one pull asks a [`GroupBackend`] for | fixed | 256, and at most the room `max_ack_pending` leaves | the rest come with the next pull |
//! | name | [`MAX_NAME_BYTES`] | 64 bytes of `A-Z a-z 0-9 . _ -` | [`ConsumerError::Invalid`] |

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::bus::EventBus;
use crate::filter::EventFilter;
use crate::log::{EventLog, LogError};
use crate::ring::Cursor;

mod backed;
#[cfg(test)]
mod backed_tests;
mod backend;
mod dispatch;
mod member;
mod relay;
mod store;
#[cfg(test)]
mod tests;

pub use backend::{
    AckHandle, GroupBackend, GroupFeed, GroupMessage, GroupPull, GroupSpec, GroupState, Settle,
};
pub use member::{Delivery, Member};
pub use relay::AckRelay;
pub use store::{ConsumerRecord, MemoryOffsets, OffsetStore};

use backed::BackedDispatcher;
use dispatch::Dispatcher;
use member::MemberQueue;

/// Longest consumer or group name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// How a consumer's deliveries are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// Taking an event to write it acknowledges it (at most once).
    #[default]
    Auto,
    /// The client acknowledges each event; unacknowledged ones are delivered
    /// again after `ack_wait` (at least once).
    Explicit,
}

impl AckMode {
    /// `auto` or `explicit`.
    pub fn parse(text: &str) -> Option<AckMode> {
        match text.trim() {
            "auto" => Some(AckMode::Auto),
            "explicit" => Some(AckMode::Explicit),
            _ => None,
        }
    }

    /// The name [`parse`](Self::parse) reads.
    pub fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Explicit => "explicit",
        }
    }
}

/// The bounds and timings of a host's consumers.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Most consumers (and groups) stored at once.
    pub max_consumers: usize,
    /// Most members of one group.
    pub max_members: usize,
    /// Most events of one consumer delivered and not yet acknowledged.
    pub max_ack_pending: usize,
    /// Most bytes (envelope JSON) of those events.
    pub max_pending_bytes: usize,
    /// `ack_wait` when the client names none.
    pub default_ack_wait: Duration,
    /// Largest `ack_wait` a client may ask for (the smallest is 1 s).
    pub max_ack_wait: Duration,
    /// How often a consumer whose offset moved stores it.
    pub save_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_consumers: 1_000,
            max_members: 64,
            max_ack_pending: 1_000,
            max_pending_bytes: 8 << 20,
            default_ack_wait: Duration::from_secs(30),
            max_ack_wait: Duration::from_secs(3600),
            save_interval: Duration::from_millis(200),
        }
    }
}

/// The smallest `ack_wait`.
pub const MIN_ACK_WAIT: Duration = Duration::from_secs(1);

/// Where a consumer that does not exist yet starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// After the newest logged event: only what is published from now on.
    #[default]
    Latest,
    /// At the oldest event the log still holds.
    Earliest,
}

impl StartAt {
    /// `latest` or `earliest`.
    pub fn parse(text: &str) -> Option<StartAt> {
        match text.trim() {
            "latest" => Some(StartAt::Latest),
            "earliest" => Some(StartAt::Earliest),
            _ => None,
        }
    }
}

/// What a connection asks for when it attaches ([`Consumers::attach`]).
#[derive(Debug, Clone)]
pub struct AttachRequest {
    /// The consumer's or group's name.
    pub name: String,
    /// A group member (`true`) or the consumer's single connection.
    pub shared: bool,
    /// The acknowledgement mode.
    pub mode: AckMode,
    /// `ack_wait` (explicit mode); `None`: the configured default.
    pub ack_wait: Option<Duration>,
    /// Which events the consumer takes. Every member of a group must ask for
    /// the same filter.
    pub filter: EventFilter,
    /// Who is attaching: events it may not see are skipped for it.
    pub principal: Principal,
    /// A single consumer's client position (the SSE `Last-Event-ID`): the
    /// consumer continues after it instead of after its committed offset.
    /// Ignored for groups.
    pub cursor: Option<Cursor>,
    /// Where a new consumer starts (without a cursor).
    pub start: StartAt,
}

impl AttachRequest {
    /// A request for `name` with the defaults: a single consumer, auto
    /// acks, every event, starting at the newest.
    pub fn new(name: impl Into<String>, principal: Principal) -> Self {
        AttachRequest {
            name: name.into(),
            shared: false,
            mode: AckMode::Auto,
            ack_wait: None,
            filter: EventFilter::all(),
            principal,
            cursor: None,
            start: StartAt::Latest,
        }
    }
}

/// A consumer as `GET /api/v1/consumers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// `consumer` or `group`.
    pub kind: &'static str,
    /// Its ack mode.
    pub ack: AckMode,
    /// Its `ack_wait`, in milliseconds.
    pub ack_wait_ms: u64,
    /// Its committed offset.
    pub committed_seq: u64,
    /// Logged events after the committed offset.
    pub lag: u64,
    /// Events delivered and not yet acknowledged.
    pub pending: usize,
    /// Attached connections (of a group in a [`GroupBackend`]: those
    /// attached to this process).
    pub members: usize,
    /// When a member was last attached, or the offset last stored (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

/// What went wrong with a consumer.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// A parameter is unusable (name, `ack_wait`).
    #[error("{0}")]
    Invalid(String),
    /// The consumer exists with other settings and has members attached.
    #[error("consumer {name:?} is in use with {reason}")]
    Mismatch {
        /// The consumer.
        name: String,
        /// What differs.
        reason: String,
    },
    /// [`ConsumerConfig::max_consumers`] are stored.
    #[error("at most {0} consumers may exist; delete one first")]
    TooMany(usize),
    /// The group has [`ConsumerConfig::max_members`] members.
    #[error("group {name:?} has its maximum of {max} members")]
    TooManyMembers {
        /// The group.
        name: String,
        /// The limit.
        max: usize,
    },
    /// No consumer has this name.
    #[error("no consumer named {0:?}")]
    NotFound(String),
    /// The offset store failed.
    #[error(transparent)]
    Store(#[from] LogError),
    /// The group backend failed or is unreachable.
    #[error("group backend: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The host is stopping.
    #[error("the server is shutting down")]
    Closed,
}

impl ConsumerError {
    /// The machine-readable code of an HTTP error body.
    pub fn code(&self) -> &'static str {
        match self {
            ConsumerError::Invalid(_) => "invalid_parameter",
            ConsumerError::Mismatch { .. } => "consumer_conflict",
            ConsumerError::TooMany(_) => "consumer_limit",
            ConsumerError::TooManyMembers { .. } => "group_full",
            ConsumerError::NotFound(_) => "consumer_not_found",
            ConsumerError::Store(_) => "log_unavailable",
            ConsumerError::Backend(_) => "group_backend_unavailable",
            ConsumerError::Closed => "shutting_down",
        }
    }

    /// The HTTP status that answers it.
    pub fn http_status(&self) -> http::StatusCode {
        match self {
            ConsumerError::Invalid(_) => http::StatusCode::BAD_REQUEST,
            ConsumerError::Mismatch { .. }
            | ConsumerError::TooMany(_)
            | ConsumerError::TooManyMembers { .. } => http::StatusCode::CONFLICT,
            ConsumerError::NotFound(_) => http::StatusCode::NOT_FOUND,
            ConsumerError::Store(_) | ConsumerError::Backend(_) | ConsumerError::Closed => {
                http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Messages to a consumer's dispatcher.
pub(crate) enum Control {
    Join {
        request: Box<AttachRequest>,
        queue: Arc<MemberQueue>,
        id: u64,
        reply: oneshot::Sender<Result<(), ConsumerError>>,
    },
    Leave(u64),
    Ack {
        acks: Vec<Cursor>,
        reply: Option<oneshot::Sender<usize>>,
    },
    Info(oneshot::Sender<ConsumerInfo>),
    Delete(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A running consumer: its dispatcher's mailbox.
struct Running {
    control: mpsc::UnboundedSender<Control>,
    /// A group in the [`GroupBackend`].
    backed: bool,
}

struct Inner {
    bus: EventBus,
    log: Arc<dyn EventLog>,
    /// How far the log holds the bus's events when no log writer feeds it.
    mark: Option<LogMark>,
    store: Arc<dyn OffsetStore>,
    config: ConsumerConfig,
    running: Mutex<HashMap<String, Running>>,
    /// Where groups live, when they span processes.
    groups: std::sync::OnceLock<Arc<dyn GroupBackend>>,
    relay: std::sync::OnceLock<Arc<dyn AckRelay>>,
    /// Serialises loading and creating consumers.
    creating: tokio::sync::Mutex<()>,
    next_member: AtomicU64,
    lags: Arc<LagTable>,
    _lag_gauge: opentelemetry::metrics::ObservableGauge<u64>,
}

/// How far a log that no [`LogWriter`](crate::LogWriter) of this bus
/// feeds holds the bus's events: a JetStream stream in cluster mode, where
/// an event reaches the bus only after the stream stored it.
#[derive(Debug, Clone)]
pub struct LogMark {
    /// The bus sequence through which the log holds every event; wakes
    /// each consumer when it moves.
    pub through: tokio::sync::watch::Receiver<u64>,
    /// Bus sequence numbers per logged event, for the lag (1 when the bus
    /// numbers events one by one; JetStream's `SEQ_STRIDE` in cluster
    /// mode, where the numbers in between are events that never reach the
    /// log).
    pub stride: u64,
}

impl LogMark {
    /// Logged events after `committed`.
    pub(crate) fn lag(&self, committed: u64) -> u64 {
        let stride = self.stride.max(1);
        (*self.through.borrow() / stride).saturating_sub(committed / stride)
    }
}

/// Logged events after `committed`: by the mark when the log has one, else
/// by the bus's log writer.
pub(crate) fn lag_of(bus: &EventBus, mark: Option<&LogMark>, committed: u64) -> u64 {
    match mark {
        Some(mark) => mark.lag(committed),
        None => bus.logged_through().unwrap_or(0).saturating_sub(committed),
    }
}

/// Each running consumer's committed offset, for `matric_consumer_lag`.
pub(crate) struct LagTable {
    bus: EventBus,
    mark: Option<LogMark>,
    offsets: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl LagTable {
    fn offsets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicU64>>> {
        self.offsets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn gauge(table: &Arc<LagTable>) -> opentelemetry::metrics::ObservableGauge<u64> {
        let weak = Arc::downgrade(table);
        crate::metrics::meter()
            .u64_observable_gauge(crate::metrics::CONSUMER_LAG)
            .with_description("Logged events after each running named consumer's committed offset")
            .with_callback(move |observer| {
                let Some(table) = weak.upgrade() else { return };
                for (name, committed) in table.offsets().iter() {
                    observer.observe(
                        lag_of(
                            &table.bus,
                            table.mark.as_ref(),
                            committed.load(Ordering::Relaxed),
                        ),
                        &[opentelemetry::KeyValue::new("consumer", name.clone())],
                    );
                }
            })
            .build()
    }
}

/// The host's named consumers and groups. Cheap to clone.
///
/// Needs a bus whose events go to `log` (a [`LogWriter`](crate::LogWriter)
/// attached): consumers read the log, never the live fan-out.
#[derive(Clone)]
pub struct Consumers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumers")
            .field("running", &self.running().len())
            .field("config", &self.inner.config)
            .finish()
    }
}

/// Checks a consumer or group name.
pub fn validate_name(name: &str) -> Result<(), ConsumerError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConsumerError::Invalid(format!(
            "a consumer name is 1 to {MAX_NAME_BYTES} characters of A-Z a-z 0-9 . _ -"
        )))
    }
}

impl Consumers {
    /// Consumers of `bus`'s events as `log` stores them, with offsets in
    /// `store`. Build it after attaching the log writer to the bus, inside
    /// a Tokio runtime (each consumer runs a task).
    pub fn new(
        bus: EventBus,
        log: Arc<dyn EventLog>,
        store: Arc<dyn OffsetStore>,
        config: ConsumerConfig,
    ) -> Self {
        Self::build(bus, log, store, config, None)
    }

    /// Consumers of a log that no log writer of `bus` feeds (a JetStream
    /// stream in cluster mode): `mark` says how far it holds the bus's
    /// events. Never tap a [`LogWriter`](crate::LogWriter) onto such a log.
    pub fn with_mark(
        bus: EventBus,
        log: Arc<dyn EventLog>,
        store: Arc<dyn OffsetStore>,
        config: ConsumerConfig,
        mark: LogMark,
    ) -> Self {
        Self::build(bus, log, store, config, Some(mark))
    }

    fn build(
        bus: EventBus,
        log: Arc<dyn EventLog>,
        store: Arc<dyn OffsetStore>,
        config: ConsumerConfig,
        mark: Option<LogMark>,
    ) -> Self {
        let lags = Arc::new(LagTable {
            bus: bus.clone(),
            mark: mark.clone(),
            offsets: Mutex::new(HashMap::new()),
        });
        let lag_gauge = LagTable::gauge(&lags);
        Consumers {
            inner: Arc::new(Inner {
                bus,
                log,
                mark,
                store,
                config,
                running: Mutex::new(HashMap::new()),
                groups: std::sync::OnceLock::new(),
                relay: std::sync::OnceLock::new(),
                creating: tokio::sync::Mutex::new(()),
                next_member: AtomicU64::new(1),
                lags,
                _lag_gauge: lag_gauge,
            }),
        }
    }

    /// Keeps groups (`shared` attach requests) in `backend` instead of this
    /// process's log and offset store, so a group spans every process that
    /// uses the same backend. Set it once, before the first attach; a
    /// second backend is ignored.
    pub fn with_group_backend(self, backend: Arc<dyn GroupBackend>) -> Self {
        if self.inner.groups.set(backend).is_err() {
            tracing::warn!("a group backend is already set; the new one is ignored");
        }
        self
    }

    fn groups(&self) -> Option<&Arc<dyn GroupBackend>> {
        self.inner.groups.get()
    }

    /// Carries the acks of single consumers between processes (see
    /// [`AckRelay`]): acks for a consumer this process does not hold go to
    /// the process that does. Set it once, before the first attach; a
    /// second relay is ignored.
    pub fn with_ack_relay(self, relay: Arc<dyn AckRelay>) -> Self {
        if self.inner.relay.set(relay).is_err() {
            tracing::warn!("an ack relay is already set; the new one is ignored");
        }
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ConsumerConfig {
        &self.inner.config
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.inner.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mailbox(&self, name: &str) -> Option<mpsc::UnboundedSender<Control>> {
        self.running_kind(name).map(|(control, _)| control)
    }

    /// A running dispatcher's mailbox, and whether it is a backed group.
    fn running_kind(&self, name: &str) -> Option<(mpsc::UnboundedSender<Control>, bool)> {
        self.running()
            .get(name)
            .map(|r| (r.control.clone(), r.backed))
            .filter(|(c, _)| !c.is_closed())
    }

    /// The running dispatcher for `request.name` if it is of the kind the
    /// request needs.
    fn running_for(
        &self,
        request: &AttachRequest,
        backed: bool,
    ) -> Result<Option<mpsc::UnboundedSender<Control>>, ConsumerError> {
        match self.running_kind(&request.name) {
            Some((control, kind)) if kind == backed => Ok(Some(control)),
            Some((_, kind)) => Err(ConsumerError::Mismatch {
                name: request.name.clone(),
                reason: if kind {
                    "group members (a group spanning instances)".to_owned()
                } else {
                    "a consumer of this instance's log".to_owned()
                },
            }),
            None => Ok(None),
        }
    }

    /// Attaches a connection to the consumer `request.name`, creating it if
    /// it does not exist.
    pub async fn attach(&self, request: AttachRequest) -> Result<Member, ConsumerError> {
        validate_name(&request.name)?;
        let config = &self.inner.config;
        if let Some(wait) = request.ack_wait
            && !(MIN_ACK_WAIT..=config.max_ack_wait).contains(&wait)
        {
            return Err(ConsumerError::Invalid(format!(
                "ack_wait is whole seconds from {} to {}",
                MIN_ACK_WAIT.as_secs(),
                config.max_ack_wait.as_secs()
            )));
        }
        let control = self.start(&request).await?;
        let queue = Arc::new(MemberQueue::default());
        let id = self.inner.next_member.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        let member = Member {
            id,
            name: Arc::from(request.name.as_str()),
            mode: request.mode,
            shared: request.shared,
            queue: queue.clone(),
            control: control.clone(),
        };
        control
            .send(Control::Join {
                request: Box::new(request),
                queue,
                id,
                reply,
            })
            .map_err(|_| ConsumerError::Closed)?;
        match answer.await {
            Ok(Ok(())) => Ok(member),
            Ok(Err(e)) => {
                // Refused: this member never joined, so its drop must not
                // count as a leave (the dispatcher ignores unknown ids).
                Err(e)
            }
            Err(_) => Err(ConsumerError::Closed),
        }
    }

    /// The running dispatcher for `request.name`, started from its stored
    /// record or created.
    async fn start(
        &self,
        request: &AttachRequest,
    ) -> Result<mpsc::UnboundedSender<Control>, ConsumerError> {
        let backend = self.groups().filter(|_| request.shared).cloned();
        if let Some(control) = self.running_for(request, backend.is_some())? {
            return Ok(control);
        }
        let _creating = self.inner.creating.lock().await;
        if let Some(control) = self.running_for(request, backend.is_some())? {
            return Ok(control);
        }
        if let Some(backend) = backend {
            return self.start_backed(request, backend).await;
        }
        let inner = &self.inner;
        let record = match inner.store.load(&request.name).await? {
            Some(record) => record,
            None => {
                let stored = inner.store.list().await?.len();
                if stored >= inner.config.max_consumers {
                    return Err(ConsumerError::TooMany(inner.config.max_consumers));
                }
                let committed = match request.start {
                    StartAt::Latest => inner.bus.last_seq(),
                    StartAt::Earliest => 0,
                };
                let record = ConsumerRecord {
                    name: request.name.clone(),
                    shared: request.shared,
                    mode: request.mode,
                    ack_wait: request.ack_wait.unwrap_or(inner.config.default_ack_wait),
                    committed,
                    updated_at: OffsetDateTime::now_utc(),
                };
                inner.store.save(&record).await?;
                tracing::info!(consumer = %record.name, group = record.shared, "consumer created");
                record
            }
        };
        let (control, mailbox) = mpsc::unbounded_channel();
        let committed = Arc::new(AtomicU64::new(record.committed));
        inner
            .lags
            .offsets()
            .insert(request.name.clone(), committed.clone());
        let dispatcher = Dispatcher::new(record, inner, mailbox, committed);
        tokio::spawn(dispatcher.run());
        if let Some(relay) = inner.relay.get() {
            relay::listen_for(relay.as_ref(), request.name.clone(), control.clone()).await;
        }
        self.running().insert(
            request.name.clone(),
            Running {
                control: control.clone(),
                backed: false,
            },
        );
        Ok(control)
    }

    /// Opens the group `request.name` in `backend` and starts its
    /// dispatcher (under the `creating` lock).
    async fn start_backed(
        &self,
        request: &AttachRequest,
        backend: Arc<dyn GroupBackend>,
    ) -> Result<mpsc::UnboundedSender<Control>, ConsumerError> {
        let inner = &self.inner;
        if backend.info(&request.name).await?.is_none() {
            let stored = inner.store.list().await?.len() + backend.list().await?.len();
            if stored >= inner.config.max_consumers {
                return Err(ConsumerError::TooMany(inner.config.max_consumers));
            }
        }
        let spec = GroupSpec {
            name: request.name.clone(),
            mode: request.mode,
            ack_wait: request.ack_wait.unwrap_or(inner.config.default_ack_wait),
            filter: request.filter.clone(),
            max_ack_pending: inner.config.max_ack_pending,
            start: request.start,
        };
        let feed = backend.open(&spec).await?;
        let (control, mailbox) = mpsc::unbounded_channel();
        let dispatcher = BackedDispatcher::new(spec, backend, feed, inner.config.clone(), mailbox);
        tokio::spawn(dispatcher.run());
        self.running().insert(
            request.name.clone(),
            Running {
                control: control.clone(),
                backed: true,
            },
        );
        Ok(control)
    }

    /// Acknowledges events of consumer `name` (for transports where the
    /// client acks out of band, like SSE); returns how many were pending.
    pub async fn ack(&self, name: &str, acks: Vec<Cursor>) -> Result<usize, ConsumerError> {
        validate_name(name)?;
        let Some(control) = self.mailbox(name) else {
            // Not running here: nothing this process holds is pending.
            // Known or not?
            if let Some(backend) = self.groups()
                && backend.info(name).await?.is_some()
            {
                // Another process's members hold the group's events.
                backed::forward_acks(backend.as_ref(), name, &acks).await;
                return Ok(0);
            }
            return match self.inner.store.load(name).await? {
                Some(_) => {
                    self.relay_acks(name, &acks).await;
                    Ok(0)
                }
                None => Err(ConsumerError::NotFound(name.to_owned())),
            };
        };
        // Kept for the relay: this process may hold none of these events
        // (a dispatcher whose member left, while another process streams).
        let relayed = self.inner.relay.get().is_some().then(|| acks.clone());
        let (reply, answer) = oneshot::channel();
        control
            .send(Control::Ack {
                acks,
                reply: Some(reply),
            })
            .map_err(|_| ConsumerError::Closed)?;
        let applied = answer.await.map_err(|_| ConsumerError::Closed)?;
        if let Some(acks) = relayed
            && applied < acks.len()
            && !self.running_kind(name).is_some_and(|(_, backed)| backed)
        {
            self.relay_acks(name, &acks).await;
        }
        Ok(applied)
    }

    /// Passes acks this process could not apply to the process that runs
    /// the consumer, when a relay is set. A failure costs only the
    /// redelivery after `ack_wait`, so it is logged, not returned.
    async fn relay_acks(&self, name: &str, acks: &[Cursor]) {
        let Some(relay) = self.inner.relay.get() else {
            return;
        };
        match relay.forward(name, acks).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!(consumer = %name, "acks not relayed: no relay reachable"),
            Err(error) => tracing::warn!(consumer = %name, %error, "acks not relayed"),
        }
    }

    /// Every consumer, running or only stored, by name.
    pub async fn list(&self) -> Result<Vec<ConsumerInfo>, ConsumerError> {
        let mailboxes: Vec<_> = self.running().values().map(|r| r.control.clone()).collect();
        let mut out = HashMap::new();
        for control in mailboxes {
            let (reply, answer) = oneshot::channel();
            if control.send(Control::Info(reply)).is_ok()
                && let Ok(info) = answer.await
            {
                out.insert(info.name.clone(), info);
            }
        }
        for record in self.inner.store.list().await? {
            let lag = lag_of(&self.inner.bus, self.inner.mark.as_ref(), record.committed);
            out.entry(record.name.clone())
                .or_insert_with(|| info_of(&record, lag, 0, 0));
        }
        if let Some(backend) = self.groups() {
            match backend.list().await {
                Ok(groups) => {
                    for state in groups {
                        out.entry(state.name.clone())
                            .or_insert_with(|| info_of_group(state));
                    }
                }
                // The groups of this process's listing are still shown.
                Err(e) => tracing::warn!(error = %e, "group backend cannot list its groups"),
            }
        }
        let mut list: Vec<_> = out.into_values().collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(list)
    }

    /// Deletes consumer `name`: its members are closed and its offset
    /// forgotten.
    pub async fn delete(&self, name: &str) -> Result<(), ConsumerError> {
        validate_name(name)?;
        let _creating = self.inner.creating.lock().await;
        let running = self.running().remove(name);
        self.inner.lags.offsets().remove(name);
        if let Some(running) = running {
            let (reply, answer) = oneshot::channel();
            if running.control.send(Control::Delete(reply)).is_ok() {
                let _ = answer.await;
            }
        }
        let in_store = self.inner.store.delete(name).await?;
        let in_backend = match self.groups().map(|b| b.delete(name)) {
            Some(deleting) => match deleting.await {
                Ok(deleted) => deleted,
                // A single consumer of this log needs no backend.
                Err(e) if in_store => {
                    tracing::warn!(consumer = %name, error = %e, "group backend unavailable while deleting");
                    false
                }
                Err(e) => return Err(e),
            },
            None => false,
        };
        if in_store || in_backend {
            tracing::info!(consumer = %name, "consumer deleted");
            Ok(())
        } else {
            Err(ConsumerError::NotFound(name.to_owned()))
        }
    }

    /// Stores every running consumer's offset and closes its members (the
    /// host's shutdown).
    pub async fn shutdown(&self) {
        let running: Vec<_> = self.running().drain().map(|(_, r)| r.control).collect();
        for control in running {
            let (reply, answer) = oneshot::channel();
            if control.send(Control::Shutdown(reply)).is_ok() {
                let _ = answer.await;
            }
        }
    }
}

/// A backed group no member of this process is attached to.
fn info_of_group(state: GroupState) -> ConsumerInfo {
    ConsumerInfo {
        name: state.name,
        kind: "group",
        ack: state.mode,
        ack_wait_ms: u64::try_from(state.ack_wait.as_millis()).unwrap_or(u64::MAX),
        committed_seq: state.committed,
        lag: state.lag,
        pending: state.pending,
        members: 0,
        last_seen: state.last_active,
    }
}

pub(crate) fn info_of(
    record: &ConsumerRecord,
    lag: u64,
    pending: usize,
    members: usize,
) -> ConsumerInfo {
    ConsumerInfo {
        name: record.name.clone(),
        kind: if record.shared { "group" } else { "consumer" },
        ack: record.mode,
        ack_wait_ms: u64::try_from(record.ack_wait.as_millis()).unwrap_or(u64::MAX),
        committed_seq: record.committed,
        lag,
        pending,
        members,
        last_seen: record.updated_at,
    }
}
