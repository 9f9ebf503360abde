//! docs/protocol.md §1 contract: the upstream fixtures and the exact JSON of each type.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_core::{
    Envelope, EventKind, JobCompleted, JobFailed, JobProgress, JobQueued, JobStarted,
    NoteOperation, NoteUpdated, QueueStatus, ServerEvent,
};
use serde_json::Value;
use uuid::Uuid;

const FIXTURES: [&str; 7] = [
    "queue_status",
    "job_queued",
    "job_started",
    "job_progress",
    "job_completed",
    "job_failed",
    "note_updated",
];

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_fixture_payload_round_trips() {
    for name in FIXTURES {
        let file = fixture(name);
        let payload = file["payload"].clone();
        let event: ServerEvent =
            serde_json::from_value(payload.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut expected = payload;
        if event.kind() == EventKind::JobProgress {
            // The only allowed difference: the mirrored field.
            let p = expected["progress"].clone();
            expected["progress_percent"] = p;
        }
        assert_eq!(serde_json::to_value(&event).unwrap(), expected, "{name}");
        assert_eq!(event.dot_name(), file["event_type"], "{name}");
    }
}

#[test]
fn every_fixture_is_an_envelope() {
    for name in FIXTURES {
        let file = fixture(name);
        let env: Envelope =
            serde_json::from_value(file.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(env.event_type, env.payload.dot_name(), "{name}");
        assert_eq!(env.payload_version, 1);
        assert_eq!(env.event_id.to_string(), file["event_id"], "{name}");
        assert_eq!(env.memory.as_deref(), Some("fixture-memory-alpha"));
        if let Some((kind, id)) = env.payload.entity() {
            assert_eq!(env.entity_type, Some(kind), "{name}");
            assert_eq!(env.entity_id, Some(id), "{name}");
        }
    }
}

fn id(n: u8) -> Uuid {
    Uuid::parse_str(&format!("0197c0de-5e1a-7a00-8000-0000000000{n:02x}")).unwrap()
}

#[test]
fn exact_bytes_of_each_type() {
    let cases: Vec<(ServerEvent, String)> = vec![
        (
            QueueStatus::new(7, 2).into(),
            r#"{"type":"QueueStatus","total_jobs":9,"running":2,"pending":7}"#.to_owned(),
        ),
        (
            JobQueued {
                job_id: id(1),
                job_type: "Embedding".into(),
                note_id: Some(id(0xaa)),
            }
            .into(),
            format!(
                r#"{{"type":"JobQueued","job_id":"{}","job_type":"Embedding","note_id":"{}"}}"#,
                id(1),
                id(0xaa)
            ),
        ),
        (
            JobStarted {
                job_id: id(1),
                job_type: "Embedding".into(),
                note_id: None,
            }
            .into(),
            format!(
                r#"{{"type":"JobStarted","job_id":"{}","job_type":"Embedding"}}"#,
                id(1)
            ),
        ),
        (
            JobProgress {
                job_id: id(1),
                note_id: None,
                progress: 50,
                message: Some("Embedding chunk 3/6".into()),
            }
            .into(),
            format!(
                r#"{{"type":"JobProgress","job_id":"{}","progress":50,"progress_percent":50,"message":"Embedding chunk 3/6"}}"#,
                id(1)
            ),
        ),
        (
            JobCompleted {
                job_id: id(1),
                job_type: "Embedding".into(),
                note_id: None,
                duration_ms: Some(1234),
            }
            .into(),
            format!(
                r#"{{"type":"JobCompleted","job_id":"{}","job_type":"Embedding","duration_ms":1234}}"#,
                id(1)
            ),
        ),
        (
            JobFailed {
                job_id: id(1),
                job_type: "Embedding".into(),
                note_id: None,
                error: "timed_out".into(),
            }
            .into(),
            format!(
                r#"{{"type":"JobFailed","job_id":"{}","job_type":"Embedding","error":"timed_out"}}"#,
                id(1)
            ),
        ),
        (
            NoteUpdated {
                note_id: id(0xaa),
                title: Some("T".into()),
                tags: vec!["a".into()],
                has_ai_content: true,
                has_links: false,
                operation: Some(NoteOperation::Updated),
                user_id: None,
            }
            .into(),
            format!(
                r#"{{"type":"NoteUpdated","note_id":"{}","title":"T","tags":["a"],"has_ai_content":true,"has_links":false,"operation":"updated"}}"#,
                id(0xaa)
            ),
        ),
    ];
    assert_eq!(cases.len(), 7);
    for (event, expected) in cases {
        assert_eq!(serde_json::to_string(&event).unwrap(), expected);
        let back: ServerEvent = serde_json::from_str(&expected).unwrap();
        assert_eq!(back, event);
    }
}

#[test]
fn empty_tags_are_written_not_omitted() {
    let ev: ServerEvent = NoteUpdated {
        note_id: id(1),
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: Some("u1".into()),
    }
    .into();
    assert_eq!(
        serde_json::to_string(&ev).unwrap(),
        format!(
            r#"{{"type":"NoteUpdated","note_id":"{}","tags":[],"has_ai_content":false,"has_links":false,"user_id":"u1"}}"#,
            id(1)
        )
    );
}

#[test]
fn progress_percent_alone_is_accepted_and_disagreement_is_not() {
    let j = format!(
        r#"{{"type":"JobProgress","job_id":"{}","progress_percent":40}}"#,
        id(1)
    );
    let ev: ServerEvent = serde_json::from_str(&j).unwrap();
    assert!(matches!(
        ev,
        ServerEvent::JobProgress(JobProgress { progress: 40, .. })
    ));
    let bad = format!(
        r#"{{"type":"JobProgress","job_id":"{}","progress":40,"progress_percent":41}}"#,
        id(1)
    );
    assert!(serde_json::from_str::<ServerEvent>(&bad).is_err());
    let missing = format!(r#"{{"type":"JobProgress","job_id":"{}"}}"#, id(1));
    assert!(
        serde_json::from_str::<ServerEvent>(&missing)
            .unwrap_err()
            .to_string()
            .contains("progress")
    );
}

#[test]
fn unknown_type_is_rejected() {
    assert!(serde_json::from_str::<ServerEvent>(r#"{"type":"JobPaused","job_id":"x"}"#).is_err());
    assert!(
        serde_json::from_str::<ServerEvent>(r#"{"total_jobs":1,"running":0,"pending":1}"#).is_err()
    );
}

#[test]
fn validate_applies_producer_rules() {
    assert!(ServerEvent::from(QueueStatus::new(1, 2)).validate().is_ok());
    let bad_total = ServerEvent::QueueStatus(QueueStatus {
        total_jobs: 42,
        running: 2,
        pending: 7,
    });
    assert!(
        bad_total
            .validate()
            .unwrap_err()
            .to_string()
            .contains("total_jobs")
    );
    let over = ServerEvent::from(JobProgress {
        job_id: id(1),
        note_id: None,
        progress: 101,
        message: None,
    });
    assert!(
        over.validate()
            .unwrap_err()
            .to_string()
            .contains("progress")
    );
    let empty_err = ServerEvent::from(JobFailed {
        job_id: id(1),
        job_type: "X".into(),
        note_id: None,
        error: " ".into(),
    });
    assert!(empty_err.validate().is_err());
    let empty_type = ServerEvent::from(JobQueued {
        job_id: id(1),
        job_type: "".into(),
        note_id: None,
    });
    assert!(
        empty_type
            .validate()
            .unwrap_err()
            .to_string()
            .contains("job_type")
    );
}

#[test]
fn names_round_trip() {
    for kind in EventKind::ALL {
        assert_eq!(EventKind::from_name(kind.type_name()), Some(kind));
        assert_eq!(EventKind::from_name(kind.dot_name()), Some(kind));
        assert_eq!(kind.type_name().parse::<EventKind>().unwrap(), kind);
    }
    assert!("jobprogress".parse::<EventKind>().is_err());
}
