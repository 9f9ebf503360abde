//! What a rate-limited connection's own limit costs it is counted in
//! `matric_events_paced_total`, not in `matric_events_dropped_total` (whose
//! alerts are for clients that fell behind). Its own test binary, because it
//! installs the process-global meter provider.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::num::NonZeroU32;

use common::{TestServer, next_text, send_text};
use event_core::{JobProgress, Uuid};
use event_test_support::{install, value};
use event_ws::WsConfig;
use serde_json::Value;

#[tokio::test]
async fn a_paced_connections_drops_are_counted_as_paced_not_as_lost() {
    let registry = install();
    let server = TestServer::start(WsConfig {
        max_rate: NonZeroU32::new(2),
        ..WsConfig::default()
    })
    .await;
    let mut client = server.connect().await;
    send_text(&mut client, r#"{"type":"subscribe","events":["job"]}"#).await;
    let reply: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
    assert_eq!(reply["max_rate"], 2, "{reply}");

    let job = Uuid::now_v7();
    for progress in 1..=50 {
        server.bus.publish(JobProgress {
            job_id: job,
            note_id: None,
            progress,
            message: None,
        });
    }
    let (mut events, mut dropped) = (0u64, 0u64);
    loop {
        let message: Value = serde_json::from_str(&next_text(&mut client).await).unwrap();
        match message["type"].as_str().unwrap() {
            "events.lagged" => dropped += message["dropped_count"].as_u64().unwrap(),
            "JobProgress" => {
                events += 1;
                if message["progress"] == 50 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {message}"),
        }
    }
    assert_eq!(events + dropped, 50);
    assert!(dropped > 0, "50 events at 2/s are coalesced");
    assert_eq!(
        value(
            &registry,
            "matric_events_paced_total",
            &[("consumer", "ws")]
        ),
        Some(dropped as f64)
    );
    assert_eq!(
        value(
            &registry,
            "matric_events_dropped_total",
            &[("consumer", "ws")]
        ),
        Some(0.0)
    );
}
