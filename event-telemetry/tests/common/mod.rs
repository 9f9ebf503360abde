//! Helpers shared by the integration tests: a real HTTP server on an
//! ephemeral port and a small Prometheus text parser.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;

use axum::Router;

/// Serves `router` on 127.0.0.1:0 and returns its address.
pub async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, router).await.expect("serve");
    });
    addr
}

/// GETs `http://addr/path`, returning status, content type and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    // reqwest is built without a default TLS provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resp = reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.text().await.expect("body");
    (status, content_type, body)
}

use event_core::{
    JobCompleted, JobFailed, JobProgress, JobQueued, JobStarted, NoteOperation, NoteUpdated,
    QueueStatus, ServerEvent, Uuid,
};

/// Personal or secret strings the tests feed in and then look for in logs.
pub const NOTE_TITLE: &str = "Diary of Alice Example 7f3k";
pub const TAG: &str = "tag-private-medical-q9z";
pub const USER_ID: &str = "user-alice-4711";
pub const USER_NAME: &str = "Alice Example";
pub const TOKEN: &str = "sk_live_tok_9a8b7c6d5e";
pub const SECRET_URL: &str = "https://hooks.example.com/secret-path-x1";

/// One event of each of the 7 types; free-text fields carry the secrets
/// above so the tests can prove they are never logged.
pub fn seven_events(job_id: Uuid, note_id: Uuid) -> Vec<ServerEvent> {
    vec![
        ServerEvent::QueueStatus(QueueStatus::new(7, 2)),
        JobQueued {
            job_id,
            job_type: "Embedding".into(),
            note_id: Some(note_id),
        }
        .into(),
        JobStarted {
            job_id,
            job_type: "Embedding".into(),
            note_id: Some(note_id),
        }
        .into(),
        ServerEvent::JobProgress(JobProgress {
            job_id,
            note_id: Some(note_id),
            progress: 50,
            message: Some(format!("embedding '{NOTE_TITLE}' with token {TOKEN}")),
        }),
        JobCompleted {
            job_id,
            job_type: "Embedding".into(),
            note_id: Some(note_id),
            duration_ms: Some(1234),
        }
        .into(),
        JobFailed {
            job_id,
            job_type: "Embedding".into(),
            note_id: None,
            error: "timed_out".into(),
        }
        .into(),
        NoteUpdated {
            note_id,
            title: Some(NOTE_TITLE.into()),
            tags: vec![TAG.into(), "work".into()],
            has_ai_content: true,
            has_links: false,
            operation: Some(NoteOperation::Updated),
            user_id: Some(USER_ID.into()),
        }
        .into(),
    ]
}
