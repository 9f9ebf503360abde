//! Publishing after a database commit, never before and never on rollback.
//!
//! # The pattern
//!
//! A client that receives `NoteUpdated` re-fetches the note. If the event
//! went out before the transaction committed, the client would read the old
//! state (or a 404 for a new note); if it went out and the transaction then
//! rolled back, the client would be told about a change that never happened.
//! So a handler queues its events on the transaction and the events are
//! published only when `commit()` has succeeded, exactly once:
//!
//! * [`AfterCommit`] wraps a `sqlx::Transaction` (any database: SQLite,
//!   PostgreSQL, …). Run queries through it (`&mut *tx` is the connection,
//!   as with a plain transaction), queue events with
//!   [`note_updated`](AfterCommit::note_updated) / [`queue`](AfterCommit::queue),
//!   then [`commit`](AfterCommit::commit). Rollback, an error (`?` returning
//!   early) or dropping it discards the queued events with the transaction.
//! * [`PendingEvents`] is the same batch without the transaction, for code
//!   that manages its transaction itself: push, commit, then
//!   [`publish`](PendingEvents::publish).
//!
//! Two limits, by design:
//!
//! * Wrap the **outermost** transaction only. A nested `begin()` is a
//!   savepoint; "committing" it is not durable while the outer transaction
//!   can still roll back.
//! * If `COMMIT` itself reports an error (e.g. the connection dropped after
//!   sending it), the outcome is unknown and nothing is published: delivery
//!   is at most once, never an event for a change that may not exist.
//!
//! # How matric-api's handlers use it
//!
//! * **Create / update / delete a note**: begin an [`AfterCommit`] from the
//!   pool, write the note (and its tags, links …) through it, queue one
//!   [`NoteChange`] with `operation` `created` / `updated` / `deleted` and the
//!   state after the change, `commit()`. The HTTP response is sent after the
//!   commit, so a client never sees the event before its own request returns
//!   a success that it could not re-fetch.
//! * **AI revision job**: the job handler writes the revised content in an
//!   [`AfterCommit`], queues `NoteChange { operation: updated,
//!   has_ai_content: true, user_id: None, .. }`, commits, and only *then*
//!   reports the job as completed to the worker (which emits
//!   `JobCompleted`). Clients therefore see `NoteUpdated` before
//!   `JobCompleted`, and re-fetching on either shows the revised note. The
//!   `simulator::SimulatedWorker`'s completion hook follows exactly
//!   this order.
//!
//! ```
//! use event_bridge_jobs::{AfterCommit, NoteChange};
//! use event_core::{EventBus, NoteOperation, Received};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! sqlx::query("CREATE TABLE notes (id TEXT PRIMARY KEY, title TEXT)").execute(&pool).await?;
//! let bus = EventBus::default();
//! let mut sub = bus.subscribe();
//!
//! let id = uuid::Uuid::now_v7();
//! let mut tx = AfterCommit::begin(&pool, &bus).await?;
//! sqlx::query("INSERT INTO notes (id, title) VALUES (?, ?)")
//!     .bind(id.to_string()).bind("Hello")
//!     .execute(&mut *tx).await?;
//! tx.note_updated(NoteChange::new(id, NoteOperation::Created).title("Hello"));
//! assert!(sub.try_recv().is_none()); // nothing before the commit
//! let published = tx.commit().await?;
//! assert_eq!(published.len(), 1);
//! assert!(matches!(sub.try_recv(), Some(Received::Event(_))));
//! # Ok(()) }
//! ```

use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use event_core::{Event, EventBus, EventMeta, ServerEvent};
use sqlx::{Database, Pool, Transaction};

use crate::Error;
use crate::notes::NoteChange;

/// Events waiting for a commit. Dropping it (or [`discard`](Self::discard))
/// publishes nothing; [`publish`](Self::publish) consumes it, so a batch is
/// published at most once.
#[derive(Debug)]
#[must_use = "queued events are published only by `publish()`"]
pub struct PendingEvents {
    bus: EventBus,
    queued: Vec<(ServerEvent, EventMeta)>,
}

impl PendingEvents {
    /// An empty batch for `bus`.
    pub fn new(bus: &EventBus) -> Self {
        PendingEvents {
            bus: bus.clone(),
            queued: Vec::new(),
        }
    }

    /// Queues an event.
    pub fn push(&mut self, payload: impl Into<ServerEvent>, meta: EventMeta) {
        self.queued.push((payload.into(), meta));
    }

    /// Queues a `NoteUpdated`.
    pub fn note_updated(&mut self, change: NoteChange) {
        let (payload, meta) = change.into_event();
        self.push(payload, meta);
    }

    /// How many events are queued.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Publishes everything, in queue order. Call after the commit succeeded.
    pub fn publish(self) -> Vec<Arc<Event>> {
        let bus = self.bus;
        self.queued
            .into_iter()
            .map(|(payload, meta)| bus.publish_with(payload, meta))
            .collect()
    }

    /// Drops everything (rollback).
    pub fn discard(self) {
        if !self.queued.is_empty() {
            tracing::debug!(
                events = self.queued.len(),
                "discarding events of a rolled-back transaction"
            );
        }
    }
}

/// A `sqlx` transaction whose queued events are published when, and only
/// when, it commits. See the [module docs](self) for the pattern.
///
/// Dereferences to the database connection, so `&mut *tx` is an executor
/// exactly as with `sqlx::Transaction`.
#[must_use = "dropping the transaction rolls it back and discards its events"]
pub struct AfterCommit<'c, DB: Database> {
    tx: Transaction<'c, DB>,
    events: PendingEvents,
}

impl<DB: Database> std::fmt::Debug for AfterCommit<'_, DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterCommit")
            .field("queued", &self.events.len())
            .finish()
    }
}

impl<DB: Database> AfterCommit<'static, DB> {
    /// Begins a transaction on `pool`.
    pub async fn begin(pool: &Pool<DB>, bus: &EventBus) -> Result<Self, Error> {
        Ok(AfterCommit::new(pool.begin().await?, bus))
    }
}

impl<'c, DB: Database> AfterCommit<'c, DB> {
    /// Wraps a transaction that is already open.
    pub fn new(tx: Transaction<'c, DB>, bus: &EventBus) -> Self {
        AfterCommit {
            tx,
            events: PendingEvents::new(bus),
        }
    }

    /// Queues an event for after the commit.
    pub fn queue(&mut self, payload: impl Into<ServerEvent>, meta: EventMeta) {
        self.events.push(payload, meta);
    }

    /// Queues a `NoteUpdated` for after the commit.
    pub fn note_updated(&mut self, change: NoteChange) {
        self.events.note_updated(change);
    }

    /// How many events are queued.
    pub fn queued(&self) -> usize {
        self.events.len()
    }

    /// The underlying transaction.
    pub fn transaction(&mut self) -> &mut Transaction<'c, DB> {
        &mut self.tx
    }

    /// Commits; on success publishes the queued events (in order) and returns
    /// them. On failure nothing is published.
    pub async fn commit(self) -> Result<Vec<Arc<Event>>, Error> {
        let AfterCommit { tx, events } = self;
        match tx.commit().await {
            Ok(()) => Ok(events.publish()),
            Err(error) => {
                events.discard();
                Err(error.into())
            }
        }
    }

    /// Rolls back and discards the queued events.
    pub async fn rollback(self) -> Result<(), Error> {
        let AfterCommit { tx, events } = self;
        events.discard();
        tx.rollback().await?;
        Ok(())
    }
}

impl<DB: Database> Deref for AfterCommit<'_, DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        &self.tx
    }
}

impl<DB: Database> DerefMut for AfterCommit<'_, DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.tx
    }
}
