//! Metrics of the SSE transport through the opentelemetry API: events sent
//! per type and the latency histogram, one sample per chunk written. Its own
//! test binary, because it installs the process-global meter provider.
//!
//! Runs on tokio's default current-thread runtime: events published back to
//! back from the test reach each connection as one batch, so the number of
//! chunks — and so of latency samples — is exact. The count is also checked
//! against the chunks the clients actually received.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    dead_code
)]

#[path = "sse/common.rs"]
mod common;

use common::{RawSse, Server};
use event_core::{JobQueued, NoteUpdated, Uuid};
use event_test_support::{install, value};

fn queued() -> JobQueued {
    JobQueued {
        job_id: Uuid::now_v7(),
        job_type: "Embedding".into(),
        note_id: None,
    }
}

/// Chunks with events each client received (the first chunk, `retry:` and
/// the `QueueStatus` confirmation, has no latency sample).
fn event_chunks(clients: &[RawSse]) -> f64 {
    clients.iter().map(|c| c.chunks as f64 - 1.0).sum()
}

#[tokio::test]
async fn events_sent_per_type_and_one_latency_sample_per_chunk() {
    let registry = install();
    let server = Server::start().await;
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
        c.skip_preamble().await;
        assert_eq!(c.chunks, 1, "the preamble is one chunk");
        clients.push(c);
    }
    server.wait_connections(2).await;

    // Published with no await in between: no other task runs until the test
    // awaits, so each connection frames the three events into one chunk.
    server.bus.publish(queued());
    server.bus.publish(queued());
    server.bus.publish(NoteUpdated {
        note_id: Uuid::now_v7(),
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    });
    for c in &mut clients {
        for want in ["JobQueued", "JobQueued", "NoteUpdated"] {
            assert_eq!(c.event_frame().await.event.as_deref(), Some(want));
        }
    }
    // Recorded before the chunk left the server, so visible now.
    let sent = |t| {
        value(
            &registry,
            "matric_sse_events_sent_total",
            &[("event_type", t)],
        )
    };
    let latency_samples = || {
        value(
            &registry,
            "matric_event_latency_ms_count",
            &[("transport", "sse")],
        )
    };
    assert_eq!(sent("JobQueued"), Some(4.0));
    assert_eq!(sent("NoteUpdated"), Some(2.0));
    assert_eq!(event_chunks(&clients), 2.0, "one chunk per client");
    // One sample per chunk (for its oldest event), not one per event.
    assert_eq!(latency_samples(), Some(2.0));

    // A lone event: one more chunk, one more sample, per client.
    server.bus.publish(queued());
    for c in &mut clients {
        assert_eq!(c.event_frame().await.event.as_deref(), Some("JobQueued"));
    }
    assert_eq!(sent("JobQueued"), Some(6.0));
    assert_eq!(event_chunks(&clients), 4.0);
    assert_eq!(latency_samples(), Some(4.0));
}
