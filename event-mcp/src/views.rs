//! What tools and resources answer: JSON views of the replay ring.

use std::sync::Arc;

use event_core::{Event, EventBus, Principal, ServerEvent, Uuid};
use serde::Serialize;
use serde_json::{Map, Value};

/// One event as tools and resources show it: the envelope (docs/protocol.md §3)
/// with the bus sequence number added as `seq` (a `since` cursor).
pub(crate) fn event_json(event: &Event) -> Value {
    let mut object: Map<String, Value> =
        serde_json::from_slice(event.envelope_json()).unwrap_or_default();
    object.insert("seq".to_owned(), Value::from(event.seq()));
    Value::Object(object)
}

/// A page of events, cut short at `max_bytes` (never below one event).
#[derive(Debug, Serialize)]
pub(crate) struct EventsPage {
    /// The events, oldest first.
    pub events: Vec<Value>,
    /// The cursor to pass as `since` to continue after this page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_since: Option<String>,
    /// Whether the size budget cut the page short.
    pub truncated: bool,
}

impl EventsPage {
    pub(crate) fn build(events: &[Arc<Event>], max_bytes: usize) -> EventsPage {
        let mut used = 0usize;
        let mut out = Vec::with_capacity(events.len());
        let mut truncated = false;
        for ev in events {
            let size = ev.envelope_json().len();
            if !out.is_empty() && used + size > max_bytes {
                truncated = true;
                break;
            }
            used += size;
            out.push(ev);
        }
        EventsPage {
            next_since: out.last().map(|e| e.seq().to_string()),
            events: out.into_iter().map(|e| event_json(e)).collect(),
            truncated,
        }
    }
}

/// A job's state, from the events of it still in the replay ring.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct JobStatus {
    /// The job.
    pub job_id: Uuid,
    /// `unknown` (no event seen), `queued`, `running`, `completed` or `failed`.
    pub state: &'static str,
    /// Whether the state is final.
    pub done: bool,
    /// Its type (`Embedding`, `AiRevision`, …), once seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_type: Option<String>,
    /// The note it works on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note_id: Option<Uuid>,
    /// Percent done (the last `JobProgress`; 100 once completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    /// The last progress message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The failure code of a failed job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long a completed job ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// How many of its events were seen.
    pub events_seen: usize,
    /// The sequence number of its newest event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,
}

impl JobStatus {
    pub(crate) fn unknown(job_id: Uuid) -> JobStatus {
        JobStatus {
            job_id,
            state: "unknown",
            done: false,
            job_type: None,
            note_id: None,
            progress: None,
            message: None,
            error: None,
            duration_ms: None,
            events_seen: 0,
            last_seq: None,
        }
    }

    /// Folds one event of the job in.
    pub(crate) fn apply(&mut self, event: &Event) {
        if event.payload().job_id() != Some(self.job_id) {
            return;
        }
        self.events_seen += 1;
        self.last_seq = Some(event.seq());
        match event.payload() {
            ServerEvent::JobQueued(e) => {
                self.state = "queued";
                self.job_type = Some(e.job_type.clone());
                self.note_id = e.note_id.or(self.note_id);
            }
            ServerEvent::JobStarted(e) => {
                self.state = "running";
                self.job_type = Some(e.job_type.clone());
                self.note_id = e.note_id.or(self.note_id);
                self.progress.get_or_insert(0);
            }
            ServerEvent::JobProgress(e) => {
                if !self.done {
                    self.state = "running";
                }
                self.progress = Some(e.progress);
                if e.message.is_some() {
                    self.message.clone_from(&e.message);
                }
                self.note_id = e.note_id.or(self.note_id);
            }
            ServerEvent::JobCompleted(e) => {
                self.state = "completed";
                self.progress = Some(100);
                self.message = None;
                self.job_type = Some(e.job_type.clone());
                self.duration_ms = e.duration_ms;
                self.note_id = e.note_id.or(self.note_id);
            }
            ServerEvent::JobFailed(e) => {
                self.state = "failed";
                self.job_type = Some(e.job_type.clone());
                self.error = Some(e.error.clone());
                self.note_id = e.note_id.or(self.note_id);
            }
            ServerEvent::QueueStatus(_) | ServerEvent::NoteUpdated(_) => {}
        }
        self.done = matches!(self.state, "completed" | "failed");
    }

    /// The job's state from the ring, as `principal` may see it.
    pub(crate) fn from_ring(bus: &EventBus, principal: &Principal, job_id: Uuid) -> JobStatus {
        let mut status = JobStatus::unknown(job_id);
        for ev in bus.history(None, usize::MAX).unwrap_or_default() {
            if ev.payload().job_id() == Some(job_id) && principal.can_see(&ev) {
                status.apply(&ev);
            }
        }
        status
    }
}

/// The events the principal may see that pass `keep`, newest `limit` of
/// them, oldest first.
pub(crate) fn latest_visible(
    bus: &EventBus,
    principal: &Principal,
    limit: usize,
    keep: impl Fn(&Event) -> bool,
) -> Vec<Arc<Event>> {
    let all = bus.history(None, usize::MAX).unwrap_or_default();
    let mut picked: Vec<Arc<Event>> = all
        .into_iter()
        .rev()
        .filter(|ev| principal.can_see(ev) && keep(ev))
        .take(limit)
        .collect();
    picked.reverse();
    picked
}

/// `events://notes/{note_id}`: its latest `NoteUpdated` and recent events
/// that concern it (its jobs included).
pub(crate) fn note_view(bus: &EventBus, principal: &Principal, note_id: Uuid) -> Value {
    let events = latest_visible(bus, principal, 20, |ev| {
        ev.payload().note_id() == Some(note_id)
    });
    let latest = events
        .iter()
        .rev()
        .find(|ev| matches!(ev.payload(), ServerEvent::NoteUpdated(_)))
        .map(|ev| event_json(ev));
    serde_json::json!({
        "note_id": note_id,
        "latest_update": latest,
        "events": events.iter().map(|ev| event_json(ev)).collect::<Vec<_>>(),
    })
}
