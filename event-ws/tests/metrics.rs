//! Metrics through the opentelemetry API: connection gauge, events sent per
//! type, latency, close reasons. Its own test binary, because it installs
//! the process-global meter provider.
//!
//! The test runs on tokio's default current-thread runtime: events published
//! back to back from the test are fanned out and written as one batch, so
//! the number of writes — and so of latency samples — is exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, next_text, send_text};
use event_core::{JobQueued, NoteUpdated, Uuid};
use event_test_support::{install, value};
use event_ws::WsConfig;

#[tokio::test]
async fn gauge_sent_latency_and_close_reasons() {
    let registry = install();
    let server = TestServer::start(WsConfig::default()).await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    assert_eq!(
        value(&registry, "matric_ws_connections_active", &[]),
        Some(2.0)
    );

    let queued = || JobQueued {
        job_id: Uuid::now_v7(),
        job_type: "Embedding".into(),
        note_id: None,
    };
    // Published with no await in between: no other task runs until the test
    // awaits, so each connection gets the three events as one batch.
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
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            next_text(c).await;
        }
        // The pong is written after the events' batch was recorded.
        send_text(c, r#"{"type":"ping"}"#).await;
        assert_eq!(next_text(c).await, r#"{"type":"pong"}"#);
    }
    let sent = |t| {
        value(
            &registry,
            "matric_ws_events_sent_total",
            &[("event_type", t)],
        )
    };
    let latency_samples = || {
        value(
            &registry,
            "matric_event_latency_ms_count",
            &[("transport", "ws")],
        )
    };
    assert_eq!(sent("JobQueued"), Some(4.0));
    assert_eq!(sent("NoteUpdated"), Some(2.0));
    // One sample per write to a socket (for its oldest event), not per
    // event: two clients, one write of three events each.
    assert_eq!(latency_samples(), Some(2.0));

    // A lone event: one more write, so one more sample, per client.
    server.bus.publish(queued());
    for c in [&mut a, &mut b] {
        next_text(c).await;
        send_text(c, r#"{"type":"ping"}"#).await;
        assert_eq!(next_text(c).await, r#"{"type":"pong"}"#);
    }
    assert_eq!(sent("JobQueued"), Some(6.0));
    assert_eq!(latency_samples(), Some(4.0));

    drop(a); // abrupt: no close frame
    server.wait_registered(1).await;
    assert_eq!(
        value(&registry, "matric_ws_connections_active", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &registry,
            "matric_connections_closed_total",
            &[("transport", "ws"), ("reason", "client_gone")]
        ),
        Some(1.0)
    );
    server.registry.shutdown();
    common::expect_close(&mut b).await;
    server.wait_registered(0).await;
    assert_eq!(
        value(&registry, "matric_ws_connections_active", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &registry,
            "matric_connections_closed_total",
            &[("transport", "ws"), ("reason", "shutdown")]
        ),
        Some(1.0)
    );
}
