//! docs/protocol.md §2 messages: initial status, refresh, the 7 types on the wire,
//! subscribe/unsubscribe, ping, unknown input, oversized frames.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{EMPTY_QUEUE, Setup, TestServer, expect_close, next_text, send_text};
use event_core::{
    Error, JobCompleted, JobFailed, JobProgress, JobQueued, JobStarted, NoteOperation, NoteUpdated,
    QueueSnapshot, QueueStatus, Uuid, async_trait,
};
use event_ws::{WsConfig, close_code};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

fn id(s: &str) -> Uuid {
    Uuid::parse_str(s).unwrap()
}

/// A queue snapshot provider whose answer changes on every call.
struct Counting(AtomicU64);

#[async_trait]
impl QueueSnapshot for Counting {
    async fn queue_status(&self) -> Result<QueueStatus, Error> {
        let n = self.0.fetch_add(1, Ordering::SeqCst);
        Ok(QueueStatus::new(100 + n, 1))
    }
}

#[tokio::test]
async fn initial_queue_status_is_the_first_message() {
    let server = TestServer::start(WsConfig::default()).await;
    let (_client, first) = server.connect_with_status().await;
    assert_eq!(first, EMPTY_QUEUE);

    // With a queue status published, a new client starts from it.
    server.bus.publish(QueueStatus::new(7, 2));
    let (_late, first) = server.connect_with_status().await;
    assert_eq!(
        first,
        r#"{"type":"QueueStatus","total_jobs":9,"running":2,"pending":7}"#
    );
}

#[tokio::test]
async fn initial_status_comes_from_the_snapshot_provider() {
    let server = TestServer::start_with(Setup {
        snapshot: Some(Arc::new(Counting(AtomicU64::new(0)))),
        ..Setup::default()
    })
    .await;
    server.bus.publish(QueueStatus::new(1, 1));
    let (_client, first) = server.connect_with_status().await;
    assert_eq!(
        first,
        r#"{"type":"QueueStatus","total_jobs":101,"running":1,"pending":100}"#
    );
}

#[tokio::test]
async fn refresh_answers_only_the_requester_with_a_fresh_status() {
    let server = TestServer::start_with(Setup {
        snapshot: Some(Arc::new(Counting(AtomicU64::new(0)))),
        ..Setup::default()
    })
    .await;
    let mut asker = server.connect().await; // snapshot #0
    let mut other = server.connect().await; // snapshot #1

    send_text(&mut asker, "refresh").await;
    assert_eq!(
        next_text(&mut asker).await,
        r#"{"type":"QueueStatus","total_jobs":103,"running":1,"pending":102}"#,
        "refresh must query the provider again"
    );
    // The JSON form is accepted too.
    send_text(&mut asker, r#"{"type":"refresh"}"#).await;
    assert_eq!(
        next_text(&mut asker).await,
        r#"{"type":"QueueStatus","total_jobs":104,"running":1,"pending":103}"#
    );

    // A sentinel published after both answers is the very next message of
    // the other client: it received no QueueStatus in between.
    let sentinel = server.bus.publish(JobQueued {
        job_id: Uuid::now_v7(),
        job_type: "Sentinel".into(),
        note_id: None,
    });
    let expected = std::str::from_utf8(sentinel.json()).unwrap();
    assert_eq!(next_text(&mut other).await, expected);
    assert_eq!(next_text(&mut asker).await, expected);
}

#[tokio::test]
async fn refresh_without_provider_uses_the_last_published_status() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    server.bus.publish(QueueStatus::new(3, 1));
    assert_eq!(
        next_text(&mut client).await,
        r#"{"type":"QueueStatus","total_jobs":4,"running":1,"pending":3}"#
    );
    send_text(&mut client, "refresh").await;
    assert_eq!(
        next_text(&mut client).await,
        r#"{"type":"QueueStatus","total_jobs":4,"running":1,"pending":3}"#
    );
}

#[tokio::test]
async fn all_seven_types_arrive_byte_exact() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    let job = id("0197c0de-5e1a-7a00-8000-000000000001");
    let note = id("0197c0de-5e1a-7a00-8000-0000000000aa");
    server.bus.publish(QueueStatus::new(7, 2));
    server.bus.publish(JobQueued {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: Some(note),
    });
    server.bus.publish(JobStarted {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: None,
    });
    server.bus.publish(JobProgress {
        job_id: job,
        note_id: None,
        progress: 50,
        message: Some("Embedding chunk 3/6".into()),
    });
    server.bus.publish(JobCompleted {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: Some(note),
        duration_ms: Some(1234),
    });
    server.bus.publish(JobFailed {
        job_id: job,
        job_type: "AiRevision".into(),
        note_id: None,
        error: "timed_out".into(),
    });
    server.bus.publish(NoteUpdated {
        note_id: note,
        title: Some("T".into()),
        tags: vec!["a".into()],
        has_ai_content: true,
        has_links: false,
        operation: Some(NoteOperation::Updated),
        user_id: None,
    });
    server.bus.publish(NoteUpdated {
        note_id: note,
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: true,
        operation: None,
        user_id: Some("u-1".into()),
    });
    let expected = [
        r#"{"type":"QueueStatus","total_jobs":9,"running":2,"pending":7}"#,
        r#"{"type":"JobQueued","job_id":"0197c0de-5e1a-7a00-8000-000000000001","job_type":"Embedding","note_id":"0197c0de-5e1a-7a00-8000-0000000000aa"}"#,
        r#"{"type":"JobStarted","job_id":"0197c0de-5e1a-7a00-8000-000000000001","job_type":"Embedding"}"#,
        r#"{"type":"JobProgress","job_id":"0197c0de-5e1a-7a00-8000-000000000001","progress":50,"progress_percent":50,"message":"Embedding chunk 3/6"}"#,
        r#"{"type":"JobCompleted","job_id":"0197c0de-5e1a-7a00-8000-000000000001","job_type":"Embedding","note_id":"0197c0de-5e1a-7a00-8000-0000000000aa","duration_ms":1234}"#,
        r#"{"type":"JobFailed","job_id":"0197c0de-5e1a-7a00-8000-000000000001","job_type":"AiRevision","error":"timed_out"}"#,
        r#"{"type":"NoteUpdated","note_id":"0197c0de-5e1a-7a00-8000-0000000000aa","title":"T","tags":["a"],"has_ai_content":true,"has_links":false,"operation":"updated"}"#,
        r#"{"type":"NoteUpdated","note_id":"0197c0de-5e1a-7a00-8000-0000000000aa","tags":[],"has_ai_content":false,"has_links":true,"user_id":"u-1"}"#,
    ];
    for want in expected {
        assert_eq!(next_text(&mut client).await, want);
    }
}

#[tokio::test]
async fn events_are_text_frames() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    server.bus.publish(QueueStatus::new(1, 0));
    // next_text panics on anything but a text frame (pings aside).
    assert!(
        next_text(&mut client)
            .await
            .starts_with(r#"{"type":"QueueStatus""#)
    );
}

#[tokio::test]
async fn ping_message_is_answered_with_pong() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    send_text(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_text(&mut client).await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn garbage_invalid_json_and_binary_are_ignored() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    for junk in [
        "hello",
        "{not json",
        r#"{"type":"nope"}"#,
        r#"{"type":"subscribe","events":"JobProgress"}"#,
        r#"{"no_type":1}"#,
        "[1,2,3]",
        "",
    ] {
        send_text(&mut client, junk).await;
    }
    client
        .send(Message::binary(vec![0xff, 0x00, 0x7b]))
        .await
        .unwrap();
    client
        .send(Message::binary(b"refresh".to_vec()))
        .await
        .unwrap();
    // Nothing was answered and the connection is open: the next message is
    // the answer to this ping.
    send_text(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_text(&mut client).await, r#"{"type":"pong"}"#);
    assert_eq!(server.registry.total(), 1);
}

#[tokio::test]
async fn subscribe_narrows_and_unsubscribe_removes() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    let job = Uuid::now_v7();
    let note = Uuid::now_v7();
    let progress = |p: u8| JobProgress {
        job_id: job,
        note_id: None,
        progress: p,
        message: None,
    };
    let note_updated = || NoteUpdated {
        note_id: note,
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    };

    send_text(
        &mut client,
        r#"{"type":"subscribe","events":["JobProgress","note"]}"#,
    )
    .await;
    assert_eq!(
        next_text(&mut client).await,
        r#"{"type":"subscribed","events":["JobProgress","NoteUpdated"]}"#
    );
    server.bus.publish(JobQueued {
        job_id: job,
        job_type: "Embedding".into(),
        note_id: None,
    });
    let p10 = server.bus.publish(progress(10));
    server.bus.publish(QueueStatus::new(1, 0));
    let n1 = server.bus.publish(note_updated());
    assert_eq!(next_text(&mut client).await.as_bytes(), &p10.json()[..]);
    assert_eq!(next_text(&mut client).await.as_bytes(), &n1.json()[..]);

    send_text(
        &mut client,
        r#"{"type":"unsubscribe","events":["job.progress","Bogus"]}"#,
    )
    .await;
    assert_eq!(
        next_text(&mut client).await,
        r#"{"type":"subscribed","events":["NoteUpdated"],"unknown":["Bogus"]}"#
    );
    server.bus.publish(progress(20));
    let n2 = server.bus.publish(note_updated());
    assert_eq!(next_text(&mut client).await.as_bytes(), &n2.json()[..]);

    // Another subscribe adds to the selection.
    send_text(
        &mut client,
        r#"{"type":"subscribe","events":["JobFailed"]}"#,
    )
    .await;
    assert_eq!(
        next_text(&mut client).await,
        r#"{"type":"subscribed","events":["JobFailed","NoteUpdated"]}"#
    );
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut client = server.connect().await;
    // Exactly the limit is accepted (and ignored as unknown input).
    send_text(&mut client, &"x".repeat(64 * 1024)).await;
    send_text(&mut client, r#"{"type":"ping"}"#).await;
    assert_eq!(next_text(&mut client).await, r#"{"type":"pong"}"#);

    send_text(&mut client, &"x".repeat(64 * 1024 + 1)).await;
    assert_eq!(expect_close(&mut client).await, close_code::MESSAGE_TOO_BIG);
    server.wait_registered(0).await;
}

#[tokio::test]
async fn oversized_limit_is_configurable() {
    let server = TestServer::start(WsConfig {
        max_message_bytes: 1024,
        ..WsConfig::default()
    })
    .await;
    let mut client = server.connect().await;
    send_text(
        &mut client,
        &format!(r#"{{"type":"ping","pad":"{}"}}"#, "p".repeat(2000)),
    )
    .await;
    assert_eq!(expect_close(&mut client).await, 1009);
}

/// A provider that never answers.
struct Hanging;

#[async_trait]
impl QueueSnapshot for Hanging {
    async fn queue_status(&self) -> Result<QueueStatus, Error> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_hanging_snapshot_provider_falls_back_to_the_last_published_status() {
    let server = TestServer::start_with(Setup {
        snapshot: Some(Arc::new(Hanging)),
        config: WsConfig {
            snapshot_timeout: std::time::Duration::from_millis(100),
            ..WsConfig::default()
        },
        ..Setup::default()
    })
    .await;
    server.bus.publish(QueueStatus::new(5, 1));
    let want = r#"{"type":"QueueStatus","total_jobs":6,"running":1,"pending":5}"#;
    let (mut client, first) = server.connect_with_status().await;
    assert_eq!(first, want);
    send_text(&mut client, "refresh").await;
    assert_eq!(next_text(&mut client).await, want);
}

/// docs/protocol.md §2 answers `refresh` within 1 s: the default snapshot timeout,
/// after which the last published status is sent, leaves room for the write
/// (the host keeps the default; the conformance suite checks the order of
/// the answer, not its wall-clock time).
#[test]
fn the_default_snapshot_timeout_is_inside_the_one_second_refresh_budget() {
    let timeout = WsConfig::default().snapshot_timeout;
    assert!(
        timeout <= std::time::Duration::from_millis(800),
        "{timeout:?}"
    );
}

#[tokio::test]
async fn upgrade_query_filters_hold_for_the_connection_and_bound_subscribe() {
    let server = TestServer::start(WsConfig::default()).await;
    let job = Uuid::now_v7();
    let other = Uuid::now_v7();
    // `types=job` AND `entity_id=<job>`, the second as the JSON filter.
    let filter = format!(r#"{{"entity_id":"{job}"}}"#);
    let mut encoded = String::new();
    for b in filter.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let url = format!("{}?types=job&filter={encoded}", server.url());
    let (mut client, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = next_text(&mut client).await;
    assert!(first.starts_with(r#"{"type":"QueueStatus""#), "{first}");
    let progress = |job_id: Uuid| JobProgress {
        job_id,
        note_id: None,
        progress: 5,
        message: None,
    };
    server.bus.publish(progress(other));
    server.bus.publish(NoteUpdated {
        note_id: job,
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    });
    let mine = server.bus.publish(progress(job));
    assert_eq!(next_text(&mut client).await.as_bytes(), &mine.json()[..]);

    // `subscribe` chooses within the connection's filters: notes stay out.
    send_text(
        &mut client,
        r#"{"type":"subscribe","events":["JobCompleted","NoteUpdated"]}"#,
    )
    .await;
    assert_eq!(
        next_text(&mut client).await,
        r#"{"type":"subscribed","events":["JobCompleted"]}"#
    );

    // A bad filter refuses the upgrade with 400, naming it.
    let bad = format!("{}?filter=%5B1%5D", server.url());
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400);
        }
        other => panic!("expected a 400, got {other:?}"),
    }
}
