//! The resources a session can read and subscribe to, and which events
//! change them.

use event_core::{Event, EventKind, Uuid};

use crate::error::McpError;

/// `events://recent`: the latest events the principal may see.
pub const RECENT: &str = "events://recent";
/// `events://queue`: the latest queue status.
pub const QUEUE: &str = "events://queue";
/// The template of one job's state.
pub const JOB_TEMPLATE: &str = "events://jobs/{job_id}";
/// The template of one note's recent changes.
pub const NOTE_TEMPLATE: &str = "events://notes/{note_id}";

const JOB_PREFIX: &str = "events://jobs/";
const NOTE_PREFIX: &str = "events://notes/";

/// A resource, parsed from its URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceId {
    /// `events://recent`
    Recent,
    /// `events://queue`
    Queue,
    /// `events://jobs/{job_id}`
    Job(Uuid),
    /// `events://notes/{note_id}`
    Note(Uuid),
}

impl ResourceId {
    /// Parses a URI this server serves.
    pub fn parse(uri: &str) -> Result<ResourceId, McpError> {
        let id = |rest: &str, what: &str| {
            Uuid::try_parse(rest.trim_end_matches('/')).map_err(|_| {
                McpError::InvalidArgument(format!("{uri:?}: the {what} id must be a UUID"))
            })
        };
        match uri {
            RECENT => Ok(ResourceId::Recent),
            QUEUE => Ok(ResourceId::Queue),
            _ => {
                if let Some(rest) = uri.strip_prefix(JOB_PREFIX) {
                    Ok(ResourceId::Job(id(rest, "job")?))
                } else if let Some(rest) = uri.strip_prefix(NOTE_PREFIX) {
                    Ok(ResourceId::Note(id(rest, "note")?))
                } else {
                    Err(McpError::UnknownResource(uri.to_owned()))
                }
            }
        }
    }

    /// The canonical URI.
    pub fn uri(&self) -> String {
        match self {
            ResourceId::Recent => RECENT.to_owned(),
            ResourceId::Queue => QUEUE.to_owned(),
            ResourceId::Job(id) => format!("{JOB_PREFIX}{id}"),
            ResourceId::Note(id) => format!("{NOTE_PREFIX}{id}"),
        }
    }

    /// Whether `event` changes this resource (visibility is checked apart).
    pub fn affected_by(&self, event: &Event) -> bool {
        match self {
            ResourceId::Recent => true,
            ResourceId::Queue => event.kind() == EventKind::QueueStatus,
            ResourceId::Job(id) => event.payload().job_id() == Some(*id),
            ResourceId::Note(id) => event.payload().note_id() == Some(*id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip_and_bad_ones_are_named() {
        let job = Uuid::now_v7();
        for r in [
            ResourceId::Recent,
            ResourceId::Queue,
            ResourceId::Job(job),
            ResourceId::Note(job),
        ] {
            assert_eq!(ResourceId::parse(&r.uri()).unwrap(), r);
        }
        assert!(matches!(
            ResourceId::parse("events://jobs/nope"),
            Err(McpError::InvalidArgument(_))
        ));
        assert!(matches!(
            ResourceId::parse("file:///etc/passwd"),
            Err(McpError::UnknownResource(_))
        ));
    }
}
