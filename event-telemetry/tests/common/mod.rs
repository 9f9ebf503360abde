//! Helpers shared by the integration tests: a real HTTP server on an
//! ephemeral port and a small Prometheus text parser.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
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

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape: `# TYPE` lines and samples.
#[derive(Debug, Default)]
pub struct Scrape {
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                scrape.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label pair");
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            scrape.samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        scrape
    }

    /// The value of the series `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// Every label name used by samples of `name`.
    pub fn label_names(&self, name: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
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
