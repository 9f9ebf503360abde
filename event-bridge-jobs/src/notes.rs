//! `NoteUpdated` emission.
//!
//! A [`NoteChange`] describes a committed change to a note; [`NoteEvents`]
//! turns it into a `NoteUpdated` on the bus, scoped to the note's memory and
//! attributed to the user who made it. Handlers that change notes inside a
//! database transaction should not call [`NoteEvents::updated`] directly but
//! queue the change on an [`AfterCommit`](crate::AfterCommit), so the event
//! goes out only once the change is visible to a client that re-fetches.

use std::sync::Arc;

use event_core::{Actor, Event, EventBus, EventMeta, NoteOperation, NoteUpdated};
use uuid::Uuid;

use crate::after_commit::PendingEvents;

/// A change to one note, as the note handlers know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteChange {
    /// The note.
    pub note_id: Uuid,
    /// Its title after the change, if it has one.
    pub title: Option<String>,
    /// Its tags after the change (may be empty).
    pub tags: Vec<String>,
    /// Whether AI-generated content is attached.
    pub has_ai_content: bool,
    /// Whether it links to other notes.
    pub has_links: bool,
    /// Created, updated or deleted.
    pub operation: NoteOperation,
    /// Who made the change (`None` for the system, e.g. a job).
    pub user_id: Option<String>,
    /// The memory (archive) the note belongs to; scopes who receives the event.
    pub memory: Option<String>,
}

impl NoteChange {
    /// A change with no title, tags or flags; fill the rest with the builders.
    pub fn new(note_id: Uuid, operation: NoteOperation) -> Self {
        NoteChange {
            note_id,
            title: None,
            tags: Vec::new(),
            has_ai_content: false,
            has_links: false,
            operation,
            user_id: None,
            memory: None,
        }
    }

    /// Sets the title.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = Some(title.into());
        self
    }

    /// Sets the tags.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets `has_ai_content`.
    pub fn ai_content(mut self, yes: bool) -> Self {
        self.has_ai_content = yes;
        self
    }

    /// Sets `has_links`.
    pub fn links(mut self, yes: bool) -> Self {
        self.has_links = yes;
        self
    }

    /// Sets the user who made the change.
    pub fn user(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Sets the memory scope.
    pub fn memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = Some(memory.into());
        self
    }

    /// The wire payload and the metadata (memory scope, actor) to publish it with.
    pub fn into_event(self) -> (NoteUpdated, EventMeta) {
        let actor = match &self.user_id {
            Some(id) => Actor::user(id.clone()),
            None => Actor::system(),
        };
        let mut meta = EventMeta::default().actor(actor);
        meta.memory = self.memory;
        let payload = NoteUpdated {
            note_id: self.note_id,
            title: self.title,
            tags: self.tags,
            has_ai_content: self.has_ai_content,
            has_links: self.has_links,
            operation: Some(self.operation),
            user_id: self.user_id,
        };
        (payload, meta)
    }
}

/// Publishes note changes. Cheap to clone.
///
/// ```
/// use event_bridge_jobs::{NoteChange, NoteEvents};
/// use event_core::{EventBus, NoteOperation};
/// let bus = EventBus::default();
/// let notes = NoteEvents::new(&bus);
/// let ev = notes.updated(
///     NoteChange::new(uuid::Uuid::now_v7(), NoteOperation::Created).title("T").tags(["a"]),
/// );
/// assert!(std::str::from_utf8(ev.json()).unwrap().contains(r#""operation":"created""#));
/// ```
#[derive(Debug, Clone)]
pub struct NoteEvents {
    bus: EventBus,
}

impl NoteEvents {
    /// Publishes on `bus`.
    pub fn new(bus: &EventBus) -> Self {
        NoteEvents { bus: bus.clone() }
    }

    /// Publishes `NoteUpdated` now. Call it only after the change is
    /// committed (or use [`pending`](Self::pending) / [`AfterCommit`](crate::AfterCommit)).
    pub fn updated(&self, change: NoteChange) -> Arc<Event> {
        let (payload, meta) = change.into_event();
        self.bus.publish_with(payload, meta)
    }

    /// An empty batch of events to publish after a commit.
    pub fn pending(&self) -> PendingEvents {
        PendingEvents::new(&self.bus)
    }

    /// The bus this publishes on.
    pub fn bus(&self) -> &EventBus {
        &self.bus
    }
}
