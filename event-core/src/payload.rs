//! The seven HotM event types (`ServerEvent`) and their names.
//!
//! The JSON form is the wire contract of docs/protocol.md §1: one object, internally
//! tagged by `"type"` (PascalCase, always the first key), snake_case fields,
//! optional fields omitted rather than `null`. Deserialization is lenient in
//! the ways the upstream fixtures need (a `JobProgress` may carry only
//! `progress` or only `progress_percent`); [`ServerEvent::validate`] applies
//! the stricter rules a producer must follow before publishing.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// The kind of a [`ServerEvent`], without its data.
///
/// Kinds have two names: the PascalCase `type` used in the flat JSON and on
/// the WebSocket, and the dot name used by the envelope format and G2 clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// `QueueStatus` / `queue.status`
    QueueStatus,
    /// `JobQueued` / `job.queued`
    JobQueued,
    /// `JobStarted` / `job.started`
    JobStarted,
    /// `JobProgress` / `job.progress`
    JobProgress,
    /// `JobCompleted` / `job.completed`
    JobCompleted,
    /// `JobFailed` / `job.failed`
    JobFailed,
    /// `NoteUpdated` / `note.updated`
    NoteUpdated,
}

impl EventKind {
    /// Every kind, in a stable order (the order of docs/protocol.md §1).
    pub const ALL: [EventKind; 7] = [
        EventKind::QueueStatus,
        EventKind::JobQueued,
        EventKind::JobStarted,
        EventKind::JobProgress,
        EventKind::JobCompleted,
        EventKind::JobFailed,
        EventKind::NoteUpdated,
    ];

    /// The PascalCase name, as in the `type` field of the flat JSON.
    pub const fn type_name(self) -> &'static str {
        match self {
            EventKind::QueueStatus => "QueueStatus",
            EventKind::JobQueued => "JobQueued",
            EventKind::JobStarted => "JobStarted",
            EventKind::JobProgress => "JobProgress",
            EventKind::JobCompleted => "JobCompleted",
            EventKind::JobFailed => "JobFailed",
            EventKind::NoteUpdated => "NoteUpdated",
        }
    }

    /// The dot name, as in the envelope's `event_type` and the SSE `event:` line of G2.
    pub const fn dot_name(self) -> &'static str {
        match self {
            EventKind::QueueStatus => "queue.status",
            EventKind::JobQueued => "job.queued",
            EventKind::JobStarted => "job.started",
            EventKind::JobProgress => "job.progress",
            EventKind::JobCompleted => "job.completed",
            EventKind::JobFailed => "job.failed",
            EventKind::NoteUpdated => "note.updated",
        }
    }

    /// The family, the part of the dot name before the dot (`job`, `note`,
    /// `queue`): an event's default topic.
    pub const fn family(self) -> &'static str {
        match self {
            EventKind::QueueStatus => "queue",
            EventKind::NoteUpdated => "note",
            _ => "job",
        }
    }

    /// The entity an event of this kind is about, if any (`QueueStatus` has none).
    pub const fn entity_type(self) -> Option<EntityType> {
        match self {
            EventKind::QueueStatus => None,
            EventKind::NoteUpdated => Some(EntityType::Note),
            _ => Some(EntityType::Job),
        }
    }

    /// A dense index (0..7), used for per-kind tables.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Looks a kind up by its exact name in either naming scheme
    /// (`JobProgress` or `job.progress`). Case matters.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.type_name() == name || k.dot_name() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

impl FromStr for EventKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventKind::from_name(s).ok_or_else(|| Error::UnknownEventName(s.to_owned()))
    }
}

/// What an event is about: the envelope's `entity_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum EntityType {
    /// A background job.
    Job,
    /// A note.
    Note,
}

impl EntityType {
    /// The wire name (`job` or `note`).
    pub const fn as_str(self) -> &'static str {
        match self {
            EntityType::Job => "job",
            EntityType::Note => "note",
        }
    }
}

/// The change a `NoteUpdated` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NoteOperation {
    /// The note was created.
    Created,
    /// The note was changed.
    Updated,
    /// The note was deleted.
    Deleted,
}

/// `QueueStatus`: the depth of the job queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct QueueStatus {
    /// `pending + running` for a well-formed status.
    pub total_jobs: u64,
    /// Jobs being worked on.
    pub running: u64,
    /// Jobs waiting for a worker.
    pub pending: u64,
}

impl QueueStatus {
    /// A status with `total_jobs` computed from its parts.
    pub fn new(pending: u64, running: u64) -> Self {
        QueueStatus {
            total_jobs: pending.saturating_add(running),
            running,
            pending,
        }
    }
}

/// `JobQueued`: a job entered the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobQueued {
    /// The job.
    pub job_id: Uuid,
    /// What kind of work it is (`Embedding`, `AiRevision`, …).
    pub job_type: String,
    /// The note the job works on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_id: Option<Uuid>,
}

/// `JobStarted`: a worker picked the job up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobStarted {
    /// The job.
    pub job_id: Uuid,
    /// What kind of work it is.
    pub job_type: String,
    /// The note the job works on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_id: Option<Uuid>,
}

/// `JobProgress`: how far a running job is.
///
/// On the wire the value appears twice, as `progress` and `progress_percent`,
/// because some clients read only the latter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(into = "schema::JobProgressOut", try_from = "JobProgressWire")
)]
#[serde(try_from = "JobProgressWire", into = "JobProgressWire")]
pub struct JobProgress {
    /// The job.
    pub job_id: Uuid,
    /// The note the job works on, if any.
    pub note_id: Option<Uuid>,
    /// Percent done, 0–100.
    pub progress: u8,
    /// A short human-readable step description.
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
struct JobProgressWire {
    job_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    progress_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl TryFrom<JobProgressWire> for JobProgress {
    type Error = String;

    fn try_from(w: JobProgressWire) -> Result<Self, Self::Error> {
        let progress = match (w.progress, w.progress_percent) {
            (Some(p), Some(pp)) if p != pp => {
                return Err(format!(
                    "`progress` ({p}) and `progress_percent` ({pp}) disagree"
                ));
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => return Err("missing field `progress`".to_owned()),
        };
        Ok(JobProgress {
            job_id: w.job_id,
            note_id: w.note_id,
            progress,
            message: w.message,
        })
    }
}

impl From<JobProgress> for JobProgressWire {
    fn from(p: JobProgress) -> Self {
        JobProgressWire {
            job_id: p.job_id,
            note_id: p.note_id,
            progress: Some(p.progress),
            progress_percent: Some(p.progress),
            message: p.message,
        }
    }
}

/// The schema of a `JobProgress` as the server renders it: unlike
/// [`JobProgressWire`] (what it accepts), `progress` and `progress_percent`
/// are both always present.
#[cfg(feature = "schema")]
mod schema {
    use uuid::Uuid;

    /// `JobProgress` as rendered (docs/protocol.md §1).
    #[derive(schemars::JsonSchema)]
    #[allow(dead_code, reason = "only its schema is used")]
    pub(super) struct JobProgressOut {
        /// The job.
        job_id: Uuid,
        /// The note the job works on, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note_id: Option<Uuid>,
        /// Percent done, 0–100.
        #[schemars(range(max = 100))]
        progress: u8,
        /// The same value as `progress` (some clients read only this).
        #[schemars(range(max = 100))]
        progress_percent: u8,
        /// A short human-readable step description.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    }

    impl From<super::JobProgress> for JobProgressOut {
        fn from(p: super::JobProgress) -> Self {
            JobProgressOut {
                job_id: p.job_id,
                note_id: p.note_id,
                progress: p.progress,
                progress_percent: p.progress,
                message: p.message,
            }
        }
    }
}

/// `JobCompleted`: the job finished successfully (terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobCompleted {
    /// The job.
    pub job_id: Uuid,
    /// What kind of work it was.
    pub job_type: String,
    /// The note the job worked on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_id: Option<Uuid>,
    /// How long the job ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// `JobFailed`: the job gave up (terminal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobFailed {
    /// The job.
    pub job_id: Uuid,
    /// What kind of work it was.
    pub job_type: String,
    /// The note the job worked on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note_id: Option<Uuid>,
    /// A stable, short failure code (`timed_out`, `rate_limited`, …), never raw backend text.
    pub error: String,
}

/// `NoteUpdated`: a note changed, and the change is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NoteUpdated {
    /// The note.
    pub note_id: Uuid,
    /// Its title, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Its tags (required on the wire, may be empty).
    pub tags: Vec<String>,
    /// Whether AI-generated content is attached.
    pub has_ai_content: bool,
    /// Whether the note links to others.
    pub has_links: bool,
    /// What happened to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<NoteOperation>,
    /// Who changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// One of the seven HotM events, exactly as docs/protocol.md §1 puts it on the wire.
///
/// ```
/// use event_core::{ServerEvent, QueueStatus};
/// let ev = ServerEvent::QueueStatus(QueueStatus::new(7, 2));
/// assert_eq!(
///     serde_json::to_string(&ev).unwrap(),
///     r#"{"type":"QueueStatus","total_jobs":9,"running":2,"pending":7}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "type")]
pub enum ServerEvent {
    /// Queue depth.
    QueueStatus(QueueStatus),
    /// A job was queued.
    JobQueued(JobQueued),
    /// A job started.
    JobStarted(JobStarted),
    /// A job progressed.
    JobProgress(JobProgress),
    /// A job completed.
    JobCompleted(JobCompleted),
    /// A job failed.
    JobFailed(JobFailed),
    /// A note changed.
    NoteUpdated(NoteUpdated),
}

impl ServerEvent {
    /// The kind of this event.
    pub const fn kind(&self) -> EventKind {
        match self {
            ServerEvent::QueueStatus(_) => EventKind::QueueStatus,
            ServerEvent::JobQueued(_) => EventKind::JobQueued,
            ServerEvent::JobStarted(_) => EventKind::JobStarted,
            ServerEvent::JobProgress(_) => EventKind::JobProgress,
            ServerEvent::JobCompleted(_) => EventKind::JobCompleted,
            ServerEvent::JobFailed(_) => EventKind::JobFailed,
            ServerEvent::NoteUpdated(_) => EventKind::NoteUpdated,
        }
    }

    /// The PascalCase type name (`JobProgress`).
    pub const fn type_name(&self) -> &'static str {
        self.kind().type_name()
    }

    /// The dot name (`job.progress`).
    pub const fn dot_name(&self) -> &'static str {
        self.kind().dot_name()
    }

    /// The entity this event is about: the job for job events, the note for
    /// `NoteUpdated`, none for `QueueStatus`.
    pub fn entity(&self) -> Option<(EntityType, Uuid)> {
        match self {
            ServerEvent::QueueStatus(_) => None,
            ServerEvent::JobQueued(e) => Some((EntityType::Job, e.job_id)),
            ServerEvent::JobStarted(e) => Some((EntityType::Job, e.job_id)),
            ServerEvent::JobProgress(e) => Some((EntityType::Job, e.job_id)),
            ServerEvent::JobCompleted(e) => Some((EntityType::Job, e.job_id)),
            ServerEvent::JobFailed(e) => Some((EntityType::Job, e.job_id)),
            ServerEvent::NoteUpdated(e) => Some((EntityType::Note, e.note_id)),
        }
    }

    /// The job id, for job events.
    pub fn job_id(&self) -> Option<Uuid> {
        match self.entity() {
            Some((EntityType::Job, id)) => Some(id),
            _ => None,
        }
    }

    /// The note id this event concerns: the note of a `NoteUpdated`, or the
    /// note a job works on.
    pub fn note_id(&self) -> Option<Uuid> {
        match self {
            ServerEvent::QueueStatus(_) => None,
            ServerEvent::JobQueued(e) => e.note_id,
            ServerEvent::JobStarted(e) => e.note_id,
            ServerEvent::JobProgress(e) => e.note_id,
            ServerEvent::JobCompleted(e) => e.note_id,
            ServerEvent::JobFailed(e) => e.note_id,
            ServerEvent::NoteUpdated(e) => Some(e.note_id),
        }
    }

    /// An upper bound of the length of this event's flat JSON (what
    /// [`Event::json`](crate::Event::json) renders), computed from the lengths of its
    /// strings without rendering: each string byte takes at most 6 bytes
    /// escaped (`\u00XX`), and everything else (keys, type, UUIDs, numbers,
    /// booleans) fits in [`JSON_FIXED_BOUND`] bytes.
    ///
    /// The bus compares this with its size limit and renders an event only
    /// when the bound is over the limit: an ordinary event is checked with a
    /// few additions and one comparison.
    pub(crate) fn json_len_bound(&self) -> usize {
        fn string(len: usize) -> usize {
            // Quotes and a separator around the escaped bytes.
            len.saturating_mul(6).saturating_add(3)
        }
        let optional = |s: &Option<String>| s.as_ref().map_or(0, |s| string(s.len()));
        let strings = match self {
            ServerEvent::QueueStatus(_) => 0,
            ServerEvent::JobQueued(e) => string(e.job_type.len()),
            ServerEvent::JobStarted(e) => string(e.job_type.len()),
            ServerEvent::JobProgress(e) => optional(&e.message),
            ServerEvent::JobCompleted(e) => string(e.job_type.len()),
            ServerEvent::JobFailed(e) => {
                string(e.job_type.len()).saturating_add(string(e.error.len()))
            }
            ServerEvent::NoteUpdated(e) => e.tags.iter().fold(
                optional(&e.title).saturating_add(optional(&e.user_id)),
                |sum, t| sum.saturating_add(string(t.len())),
            ),
        };
        JSON_FIXED_BOUND.saturating_add(strings)
    }

    /// Checks the rules a producer must follow that the JSON shape alone
    /// cannot express: progress within 0–100, `total_jobs == pending +
    /// running`, non-empty `job_type` and `error`.
    ///
    /// The upstream fixtures do not all pass (their queue status does not add
    /// up), which is why deserialization does not apply these rules.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid =
            |field: &'static str, message: String| Err(Error::InvalidEvent { field, message });
        let job_type = match self {
            ServerEvent::JobQueued(e) => Some(&e.job_type),
            ServerEvent::JobStarted(e) => Some(&e.job_type),
            ServerEvent::JobCompleted(e) => Some(&e.job_type),
            ServerEvent::JobFailed(e) => Some(&e.job_type),
            _ => None,
        };
        if job_type.is_some_and(|t| t.trim().is_empty()) {
            return invalid("job_type", "must not be empty".to_owned());
        }
        match self {
            ServerEvent::QueueStatus(q)
                if q.pending.checked_add(q.running) != Some(q.total_jobs) =>
            {
                invalid(
                    "total_jobs",
                    format!(
                        "must equal pending + running ({} + {}), got {}",
                        q.pending, q.running, q.total_jobs
                    ),
                )
            }
            ServerEvent::JobProgress(p) if p.progress > 100 => {
                invalid("progress", format!("must be 0–100, got {}", p.progress))
            }
            ServerEvent::JobFailed(f) if f.error.trim().is_empty() => {
                invalid("error", "must be a non-empty failure code".to_owned())
            }
            _ => Ok(()),
        }
    }
}

/// The most bytes the flat JSON of any event takes besides its strings'
/// contents (the largest kind, `NoteUpdated`, takes under 200).
const JSON_FIXED_BOUND: usize = 512;

impl From<QueueStatus> for ServerEvent {
    fn from(v: QueueStatus) -> Self {
        ServerEvent::QueueStatus(v)
    }
}

impl From<JobQueued> for ServerEvent {
    fn from(v: JobQueued) -> Self {
        ServerEvent::JobQueued(v)
    }
}

impl From<JobStarted> for ServerEvent {
    fn from(v: JobStarted) -> Self {
        ServerEvent::JobStarted(v)
    }
}

impl From<JobProgress> for ServerEvent {
    fn from(v: JobProgress) -> Self {
        ServerEvent::JobProgress(v)
    }
}

impl From<JobCompleted> for ServerEvent {
    fn from(v: JobCompleted) -> Self {
        ServerEvent::JobCompleted(v)
    }
}

impl From<JobFailed> for ServerEvent {
    fn from(v: JobFailed) -> Self {
        ServerEvent::JobFailed(v)
    }
}

impl From<NoteUpdated> for ServerEvent {
    fn from(v: NoteUpdated) -> Self {
        ServerEvent::NoteUpdated(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_length_bound_is_never_below_the_rendering() {
        let nasty = [
            String::new(),
            "plain".to_owned(),
            "\u{0}\u{1}\u{1f}\n\r\t\"\\".repeat(50),
            "é€😀".repeat(100),
            "x".repeat(10_000),
        ];
        let id = Uuid::now_v7();
        for text in &nasty {
            let events: Vec<ServerEvent> = vec![
                QueueStatus {
                    total_jobs: u64::MAX,
                    running: u64::MAX,
                    pending: u64::MAX,
                }
                .into(),
                JobQueued {
                    job_id: id,
                    job_type: text.clone(),
                    note_id: Some(id),
                }
                .into(),
                JobStarted {
                    job_id: id,
                    job_type: text.clone(),
                    note_id: Some(id),
                }
                .into(),
                JobProgress {
                    job_id: id,
                    note_id: Some(id),
                    progress: 100,
                    message: Some(text.clone()),
                }
                .into(),
                JobCompleted {
                    job_id: id,
                    job_type: text.clone(),
                    note_id: Some(id),
                    duration_ms: Some(u64::MAX),
                }
                .into(),
                JobFailed {
                    job_id: id,
                    job_type: text.clone(),
                    note_id: Some(id),
                    error: text.clone(),
                }
                .into(),
                NoteUpdated {
                    note_id: id,
                    title: Some(text.clone()),
                    tags: vec![text.clone(), String::new(), text.clone()],
                    has_ai_content: true,
                    has_links: false,
                    operation: Some(NoteOperation::Deleted),
                    user_id: Some(text.clone()),
                }
                .into(),
            ];
            for ev in events {
                let rendered = serde_json::to_vec(&ev).unwrap().len();
                assert!(
                    ev.json_len_bound() >= rendered,
                    "{}: bound {} < {rendered}",
                    ev.type_name(),
                    ev.json_len_bound()
                );
            }
        }
    }
}

#[cfg(all(test, feature = "schema"))]
mod schema_tests {
    use schemars::generate::SchemaSettings;
    use serde_json::Value;

    use super::EventKind;
    use crate::Envelope;

    fn serialized<T: schemars::JsonSchema>() -> Value {
        SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value()
    }

    #[test]
    fn the_envelope_schema_lists_every_dot_name() {
        let schema = serialized::<Envelope>();
        let names: Vec<&str> = schema["properties"]["event_type"]["enum"]
            .as_array()
            .expect("an enum of dot names")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let want: Vec<&str> = EventKind::ALL.iter().map(|k| k.dot_name()).collect();
        assert_eq!(names, want);
        assert_eq!(schema["properties"]["payload_version"]["const"], 1);
    }

    #[test]
    fn a_rendered_job_progress_requires_both_progress_fields() {
        let schema = serialized::<super::JobProgress>();
        let required = schema["required"].as_array().expect("required fields");
        for field in ["job_id", "progress", "progress_percent"] {
            assert!(required.iter().any(|r| r == field), "{field}: {schema}");
        }
        assert_eq!(schema["properties"]["progress"]["maximum"], 100);
    }
}
