//! A pluggable home for consumer groups: when a [`GroupBackend`] is set
//! ([`Consumers::with_group_backend`](super::Consumers::with_group_backend)),
//! a group's position, pending events and redeliveries live there instead
//! of in this process, so a group can span several processes (event-nats
//! implements it with one JetStream durable pull consumer per group).
//!
//! Each process with members of a group *opens* the group's feed
//! ([`GroupBackend::open`]) and *pulls* from it in bounded batches
//! ([`GroupFeed::pull`]). The backend hands each event to one puller and
//! tracks it until it is settled through its [`AckHandle`]: acknowledged
//! (done), given back ([`Settle::Nak`]: delivered again at once, to any
//! puller) or reported in progress (its `ack_wait` starts again). An event
//! that is not settled within the group's `ack_wait` is delivered again by
//! the backend on its own; that is how the events a crashed process held
//! reach the others.
//!
//! Inside a process the dispatcher gives each pulled event to one local
//! member by the entity hash, as for a group without a backend; across
//! processes the backend decides who pulls what.
//!
//! An ack can reach a process that does not hold the event (SSE clients
//! ack with a separate HTTP request, which a load balancer may send to
//! any instance). The dispatcher settles what it holds and passes the rest
//! to [`GroupBackend::forward_acks`]; a backend that supports it delivers
//! them to every process with the group open
//! ([`GroupFeed::forwarded_acks`]), where the holder settles them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use time::OffsetDateTime;

use super::{AckMode, ConsumerError, StartAt};
use crate::event::Event;
use crate::filter::EventFilter;
use crate::ring::Cursor;

/// What a process asks of a group when it opens it.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group's name (already validated: 1 to 64 bytes of
    /// `A-Z a-z 0-9 . _ -`).
    pub name: String,
    /// The acknowledgement mode. Both modes settle every event through its
    /// handle; in [`AckMode::Auto`] the dispatcher acks an event when the
    /// transport takes it.
    pub mode: AckMode,
    /// How long a delivered event waits for its settlement before the
    /// backend delivers it again.
    pub ack_wait: Duration,
    /// The members' filter. The dispatcher applies it to every pulled event
    /// (and acks those it does not match); a backend may also use it to
    /// narrow what it hands out.
    pub filter: EventFilter,
    /// Most events of the group delivered and not yet settled.
    pub max_ack_pending: usize,
    /// Where a group that does not exist yet starts.
    pub start: StartAt,
}

/// How a pulled event is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with: never delivered again.
    Ack,
    /// Given back: delivered again at once, to any puller.
    Nak,
    /// Still being worked on: its `ack_wait` starts again.
    InProgress,
}

/// Settles one delivery of one event.
#[async_trait]
pub trait AckHandle: Send + Sync + 'static {
    /// Sends the settlement. Settling a delivery the backend already gave to
    /// someone else (its `ack_wait` passed) may be ignored by the backend.
    async fn settle(&self, how: Settle) -> Result<(), ConsumerError>;
}

/// One event pulled from a group.
pub struct GroupMessage {
    /// The event, with its bus sequence number.
    pub event: Arc<Event>,
    /// How many times the backend has delivered it, this time included
    /// (1 the first time).
    pub delivered: u32,
    /// Settles this delivery.
    pub handle: Box<dyn AckHandle>,
}

impl std::fmt::Debug for GroupMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupMessage")
            .field("seq", &self.event.seq())
            .field("delivered", &self.delivered)
            .finish()
    }
}

/// The events of one pull, as they arrive. The stream ends after the
/// requested number or when the backend's pull expires (a backend bounds
/// each pull in time, so a dispatcher that stops pulling is idle soon).
pub type GroupPull = BoxStream<'static, Result<GroupMessage, ConsumerError>>;

/// One process's access to one group's events.
#[async_trait]
pub trait GroupFeed: Send + Sync + 'static {
    /// Asks for up to `max` events. They arrive on the returned stream; the
    /// backend counts them as delivered to this process until settled.
    async fn pull(&self, max: usize) -> Result<GroupPull, ConsumerError>;

    /// Acks other processes forwarded for this group
    /// ([`GroupBackend::forward_acks`]); taken once per feed. `None`: the
    /// backend does not forward acks.
    fn forwarded_acks(&self) -> Option<BoxStream<'static, Vec<Cursor>>> {
        None
    }

    /// Notices that the group lost events it had not settled (a topic's
    /// retention removed them from the backend first); taken once per feed.
    /// Each item is the bus sequence after which events may be missing; the
    /// dispatcher tells every local member ([`Delivery::Gap`], a resync
    /// signal). `None` (the default): the backend never loses them.
    ///
    /// [`Delivery::Gap`]: crate::Delivery::Gap
    fn gaps(&self) -> Option<BoxStream<'static, u64>> {
        None
    }

    /// This process's members of the group changed to `members` (`0`: the
    /// last one left). A backend that shares the group's work out among
    /// processes by their members uses it; the default ignores it.
    fn members_changed(&self, members: usize) {
        let _ = members;
    }
}

/// A group as the backend knows it (for `GET /api/v1/consumers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group's name.
    pub name: String,
    /// Its acknowledgement mode.
    pub mode: AckMode,
    /// Its `ack_wait`.
    pub ack_wait: Duration,
    /// The bus sequence number below which everything is settled (the ack
    /// floor).
    pub committed: u64,
    /// Events after the committed position not yet settled (waiting or
    /// delivered).
    pub lag: u64,
    /// Events delivered and not yet settled, in every process.
    pub pending: usize,
    /// When the group was created or last delivered an event.
    pub last_active: OffsetDateTime,
}

/// Where groups live when they span processes.
#[async_trait]
pub trait GroupBackend: Send + Sync + 'static {
    /// Creates the group if it does not exist and returns this process's
    /// feed of it. An existing group in use with another mode or `ack_wait`
    /// may be refused with [`ConsumerError::Mismatch`].
    async fn open(&self, spec: &GroupSpec) -> Result<Arc<dyn GroupFeed>, ConsumerError>;
    /// The group named `name`, if it exists.
    async fn info(&self, name: &str) -> Result<Option<GroupState>, ConsumerError>;
    /// Every group, by name.
    async fn list(&self) -> Result<Vec<GroupState>, ConsumerError>;
    /// Deletes the group and what it tracks; `false` if there was none.
    async fn delete(&self, name: &str) -> Result<bool, ConsumerError>;

    /// Passes acks this process could not apply (it does not hold those
    /// events) to every process with the group open; `false` when the
    /// backend does not forward acks (they are then lost, and the events
    /// delivered again after `ack_wait`).
    async fn forward_acks(&self, name: &str, acks: &[Cursor]) -> Result<bool, ConsumerError> {
        let _ = (name, acks);
        Ok(false)
    }
}
