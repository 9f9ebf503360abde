//! Overload degrades, it does not disconnect everyone: a client that reads,
//! however slowly, stays connected and ends with the latest state; only a
//! client that stops reading is closed (4008), after the write timeout.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::raw::{RawClient, client_frame};
use common::{Setup, TestServer, WAIT};
use event_core::{JobProgress, NoteUpdated, OutboxLimits, QueueStatus, Uuid};
use event_ws::{WsConfig, close_code};
use tokio::net::TcpSocket;

/// A raw client whose receive buffer is small, so that the server's writes
/// block as soon as it stops reading for a moment.
async fn small_window_client(server: &TestServer) -> RawClient {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let mut client = RawClient::upgrade(tcp, "/api/v1/ws").await;
    let (opcode, first) = client.frame().await;
    assert_eq!(opcode, 0x1);
    assert!(first.starts_with(br#"{"type":"QueueStatus""#));
    client
}

fn note() -> NoteUpdated {
    NoteUpdated {
        note_id: Uuid::now_v7(),
        title: Some("x".repeat(512)),
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    }
}

/// A server whose connections fill quickly: small socket buffers, an
/// outbox of 32 messages.
async fn overloaded_server(config: WsConfig) -> TestServer {
    TestServer::start_with(Setup {
        send_buffer: Some(8 * 1024),
        config: WsConfig {
            outbox: OutboxLimits {
                max_messages: 32,
                ..OutboxLimits::default()
            },
            ..config
        },
        ..Setup::default()
    })
    .await
}

/// Waits until the fan-out has handed `n` events to the one connection
/// (queued, kept or counted as dropped): a producer that waits for it
/// never runs further ahead of the fan-out than the bus holds, which on a
/// loaded machine would be a loss upstream (closed as such), not the
/// overload under test. Returns at once when the connection is gone.
async fn fanned_out(server: &TestServer, n: u64) {
    let hub = server.endpoint.hub();
    tokio::time::timeout(WAIT, async {
        while hub.delivered() + hub.dropped() < n && !hub.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the fan-out stopped");
}

/// The close frame's code and reason, reading past everything before it.
async fn close_of(client: &mut RawClient) -> (u16, String) {
    let payload = client.close_payload().await;
    assert!(payload.len() >= 2, "close frame without a code");
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        String::from_utf8(payload[2..].to_vec()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_stays_connected_and_ends_with_the_latest_state() {
    const JOBS: usize = 12;
    const STEPS: u8 = 100;
    // Each step: every job's progress, a queue status, a note.
    const PUBLISHED: u64 = (JOBS as u64 + 2) * STEPS as u64;
    let server = overloaded_server(WsConfig::default()).await;
    let mut client = small_window_client(&server).await;
    server.wait_registered(1).await;

    // Far more than the client takes: every step, each job's progress, the
    // queue status and a note (which coalescing drops and counts).
    let jobs: Vec<Uuid> = (0..JOBS).map(|_| Uuid::now_v7()).collect();
    let producer = async {
        let bus = &server.bus;
        {
            for step in 1..=STEPS {
                for job in &jobs {
                    bus.publish(JobProgress {
                        job_id: *job,
                        note_id: None,
                        progress: step,
                        message: None,
                    });
                }
                bus.publish(QueueStatus::new(u64::from(step), 0));
                bus.publish(note());
                fanned_out(&server, u64::from(step) * (JOBS as u64 + 2)).await;
            }
        }
    };

    // Reads in bursts of 8 frames with a pause between them, until it holds
    // the last state of everything and every event is accounted for (or
    // the deadline fails the test).
    let mut progress: HashMap<Uuid, u8> = HashMap::new();
    let mut pending = 0u64;
    let (mut events, mut lagged, mut lag_frames) = (0u64, 0u64, 0u64);
    let done = |progress: &HashMap<Uuid, u8>, pending: u64| {
        pending == u64::from(STEPS)
            && progress.len() == JOBS
            && progress.values().all(|p| *p == STEPS)
    };
    let read = async {
        let mut burst = 0;
        while !(done(&progress, pending) && events + lagged >= PUBLISHED) {
            let (opcode, payload) = client.frame().await;
            match opcode {
                0x1 => {}
                0x9 => continue,
                0x8 => panic!(
                    "closed while reading: {:?}",
                    String::from_utf8_lossy(&payload)
                ),
                other => panic!("unexpected opcode {other:#x}"),
            }
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            match v["type"].as_str().unwrap() {
                "events.lagged" => {
                    lagged += v["dropped_count"].as_u64().unwrap();
                    lag_frames += 1;
                }
                "JobProgress" => {
                    events += 1;
                    let job: Uuid = v["job_id"].as_str().unwrap().parse().unwrap();
                    let p = u8::try_from(v["progress"].as_u64().unwrap()).unwrap();
                    let last = progress.insert(job, p).unwrap_or(0);
                    assert!(p > last, "job progress went back from {last} to {p}");
                }
                "QueueStatus" => {
                    events += 1;
                    let p = v["pending"].as_u64().unwrap();
                    assert!(p > pending, "queue status went back from {pending} to {p}");
                    pending = p;
                }
                "NoteUpdated" => events += 1,
                other => panic!("unexpected message {other}"),
            }
            burst += 1;
            if burst == 8 {
                burst = 0;
                // The slow reader's pause: its window closes meanwhile.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    };
    tokio::time::timeout(WAIT * 3, async { tokio::join!(producer, read) })
        .await
        .expect("the slow reader never got the latest state, or events went missing");

    assert!(lag_frames > 0, "the client was never told it lagged");
    assert!(
        events < PUBLISHED,
        "the client took everything: no overload"
    );
    // Whatever it did not receive was counted, exactly.
    assert_eq!(events + lagged, PUBLISHED, "events counted twice");
    assert_eq!(server.endpoint.hub().dropped(), lagged);

    // Still connected, and answering.
    client
        .send_raw(&client_frame(0x81, br#"{"type":"ping"}"#))
        .await;
    loop {
        let text = tokio::time::timeout(WAIT, client.text()).await.unwrap();
        if text == r#"{"type":"pong"}"# {
            break;
        }
    }
    assert_eq!(server.endpoint.hub().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_with_4008_after_the_write_timeout() {
    let server = overloaded_server(WsConfig {
        write_timeout: Duration::from_millis(1500),
        // Long enough for the test to read the backlog and reach the close
        // frame.
        close_timeout: Duration::from_secs(60),
        ..WsConfig::default()
    })
    .await;
    let mut client = small_window_client(&server).await;
    server.wait_registered(1).await;
    let job = Uuid::now_v7();
    for step in 0..1_000u32 {
        server.bus.publish(JobProgress {
            job_id: job,
            note_id: None,
            progress: u8::try_from(step % 100).unwrap(),
            message: None,
        });
        server.bus.publish(note());
        fanned_out(&server, 2 * u64::from(step + 1)).await;
    }
    // The outbox overflowed and coalesced rather than closing …
    tokio::time::timeout(WAIT, async {
        while server.endpoint.hub().dropped() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the outbox never overflowed");
    // … and the connection ends once its write made no progress for the
    // write timeout.
    tokio::time::timeout(WAIT, async {
        while !server.endpoint.hub().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stalled client was never closed");
    assert_eq!(
        close_of(&mut client).await,
        (close_code::SLOW_CONSUMER, "write stalled".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_on_overflow_closes_a_full_outbox_at_once() {
    let server = overloaded_server(WsConfig {
        close_on_overflow: true,
        // Far beyond the test's deadline: only the overflow can close it.
        write_timeout: Duration::from_secs(600),
        close_timeout: Duration::from_secs(60),
        ..WsConfig::default()
    })
    .await;
    let mut client = small_window_client(&server).await;
    server.wait_registered(1).await;
    for i in 0..2_000 {
        server.bus.publish(note());
        fanned_out(&server, i + 1).await;
    }
    tokio::time::timeout(WAIT, async {
        while !server.endpoint.hub().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the overflowing client was not closed");
    assert_eq!(
        close_of(&mut client).await,
        (close_code::SLOW_CONSUMER, "outbox overflow".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_the_write_timeout_per_batch_is_not_closed() {
    const NOTES: u64 = 100;
    let server = TestServer::start_with(Setup {
        send_buffer: Some(8 * 1024),
        config: WsConfig {
            // Far less than the client takes to read one batch (~400 KiB
            // at 4 KiB per 10 ms), far more than it pauses between reads.
            write_timeout: Duration::from_millis(400),
            ..WsConfig::default()
        },
        ..Setup::default()
    })
    .await;
    let mut client = small_window_client(&server).await;
    server.wait_registered(1).await;
    let padding = "x".repeat(4096);
    for i in 0..NOTES {
        server.bus.publish(NoteUpdated {
            title: Some(format!("{i}-{padding}")),
            ..note()
        });
        fanned_out(&server, i + 1).await;
    }
    for _ in 0..NOTES {
        let text = client.text().await;
        assert!(
            text.starts_with(r#"{"type":"NoteUpdated""#),
            "{}",
            &text[..60]
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.endpoint.hub().dropped(), 0, "within the budget");
    client
        .send_raw(&client_frame(0x81, br#"{"type":"ping"}"#))
        .await;
    assert_eq!(client.text().await, r#"{"type":"pong"}"#);
}
