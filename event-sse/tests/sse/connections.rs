//! Many clients, slow clients, shutdown, kicks and registry bookkeeping.

use std::time::Duration;

use event_core::{BusConfig, JobProgress, NoteUpdated, OutboxLimits, QueueStatus, SeqStart, Uuid};
use event_sse::SseConfig;
use futures_util::future::join_all;
use tokio::net::TcpSocket;
use tokio::sync::watch;

use crate::common::{EsClient, Options, RawSse, Server, WAIT};

fn big_note(i: u64) -> NoteUpdated {
    NoteUpdated {
        note_id: Uuid::now_v7(),
        title: Some(format!("{i:>1024}")),
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    }
}

/// A client with a tiny receive window that sends its request and then
/// reads nothing until told to.
async fn stalled_client(server: &Server) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    RawSse::send_only(server.addr, &mut stream, "/api/v1/events").await;
    stream
}

struct SlowRun {
    server: Server,
    slow: tokio::net::TcpStream,
    first_seq: u64,
    last_seq: u64,
}

/// 100 reading clients and one stalled one; publishes in rounds (each
/// round fits a reading client's outbox, and the next starts when all 100
/// have everything) until the stalled client's outbox overflowed.
async fn run_with_a_stalled_client(config: SseConfig) -> SlowRun {
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 16_384,
            replay_size: 16,
            seq_start: SeqStart::At(1),
        },
        config,
        ..Options::default()
    })
    .await;
    let mut progress = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..100 {
        let mut client = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
        client.skip_preamble().await;
        let (tx, rx) = watch::channel(0u64);
        progress.push(rx);
        readers.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(raw) = client.next_raw().await {
                let frame = crate::common::Frame::parse(&raw);
                if frame.comment {
                    continue;
                }
                assert_ne!(
                    frame.event.as_deref(),
                    Some("events.lagged"),
                    "a reading client lagged"
                );
                seen.push(frame.seq());
                tx.send_replace(frame.seq());
            }
            seen
        }));
    }
    let slow = stalled_client(&server).await;
    server.wait_connections(101).await;
    let first_seq = server.bus.last_seq() + 1;
    let mut last_seq = 0;
    let mut extra_rounds = 3;
    for _round in 0..2000 {
        for i in 0..16 {
            last_seq = server.bus.publish(big_note(i)).seq();
        }
        for rx in &mut progress {
            tokio::time::timeout(WAIT, rx.wait_for(|s| *s >= last_seq))
                .await
                .expect("a reading client fell behind")
                .unwrap();
        }
        if server.endpoint.hub().dropped() > 0 {
            extra_rounds -= 1;
            if extra_rounds == 0 {
                break;
            }
        }
    }
    assert!(
        server.endpoint.hub().dropped() > 0,
        "the stalled client never overflowed"
    );
    // The 100 reading clients got every event, in order.
    server.shutdown();
    for reader in readers {
        let seen = tokio::time::timeout(WAIT, reader).await.unwrap().unwrap();
        assert_eq!(seen, (first_seq..=last_seq).collect::<Vec<_>>());
    }
    SlowRun {
        server,
        slow,
        first_seq,
        last_seq,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_gets_exact_lag_counts_while_100_others_get_everything() {
    let config = SseConfig {
        outbox: OutboxLimits {
            max_messages: 32,
            max_bytes: 1 << 20,
        },
        ..SseConfig::default()
    };
    let run = run_with_a_stalled_client(config).await;
    // Now the stalled client reads everything that was kept for it.
    let mut client = RawSse::resume(run.slow).await;
    client.skip_preamble().await;
    let mut expected_next = run.first_seq;
    let mut lagged_total = 0;
    let mut lag_frames = 0;
    let mut pending_lag = 0;
    while let Some(raw) = tokio::time::timeout(WAIT, client.next_raw()).await.unwrap() {
        let frame = crate::common::Frame::parse(&raw);
        if frame.comment {
            continue;
        }
        if frame.event.as_deref() == Some("events.lagged") {
            let n = frame.json()["dropped_count"].as_u64().unwrap();
            assert!(n > 0);
            pending_lag += n;
            lagged_total += n;
            lag_frames += 1;
            continue;
        }
        // Every gap is announced, exactly, right where it happened.
        assert_eq!(
            frame.seq(),
            expected_next + pending_lag,
            "gap not matched by events.lagged"
        );
        expected_next = frame.seq() + 1;
        pending_lag = 0;
    }
    assert!(lag_frames > 0);
    assert_eq!(
        expected_next + pending_lag,
        run.last_seq + 1,
        "events unaccounted for"
    );
    assert_eq!(lagged_total, run.server.endpoint.hub().dropped());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_stalled_past_the_timeout_is_dropped() {
    let config = SseConfig {
        outbox: OutboxLimits {
            max_messages: 32,
            max_bytes: 1 << 20,
        },
        // Zero: the first write attempt after an overflow drops the client.
        stall_timeout: Duration::ZERO,
        ..SseConfig::default()
    };
    let run = run_with_a_stalled_client(config).await;
    // The next write attempt drops the connection: the client sees the end
    // of the connection without the end of the body, and never receives
    // the last round.
    let mut client = RawSse::resume(run.slow).await;
    let mut last_seen = 0;
    while let Some(raw) = tokio::time::timeout(WAIT, client.next_raw()).await.unwrap() {
        let frame = crate::common::Frame::parse(&raw);
        if frame.id.is_some() {
            last_seen = frame.seq();
        }
    }
    assert!(
        last_seen < run.last_seq,
        "a dropped client still got everything"
    );
    run.server.wait_connections(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_never_reads_is_dropped_at_the_socket_while_others_continue() {
    let server = Server::with(Options {
        config: SseConfig {
            outbox: OutboxLimits {
                max_messages: 32,
                max_bytes: 1 << 20,
            },
            ..SseConfig::default()
        },
        write_timeout: Duration::from_millis(500),
        ..Options::default()
    })
    .await;
    let mut reader = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    reader.skip_preamble().await;
    let _stalled = stalled_client(&server).await;
    server.wait_connections(2).await;
    // Publish in rounds the reader keeps up with, until the stalled
    // client's connection is gone (its socket write timed out).
    let mut total = server.registry.watch_total();
    let dropped = async {
        let mut n = 0u64;
        loop {
            for i in 0..16 {
                server.bus.publish(big_note(n + i));
            }
            n += 16;
            for _ in 0..16 {
                let frame = reader.event_frame().await;
                assert_ne!(frame.event.as_deref(), Some("events.lagged"));
            }
            if *total.borrow_and_update() == 1 {
                return n;
            }
            // Give the timer its chance without a fixed sleep: wait for the
            // count to change, or publish the next round.
            let _ = tokio::time::timeout(Duration::from_millis(50), total.changed()).await;
            if *total.borrow() == 1 {
                return n;
            }
        }
    };
    tokio::time::timeout(WAIT, dropped)
        .await
        .expect("the stalled client was never dropped");
    assert_eq!(server.endpoint.hub().len(), 1);
    // The reader is unaffected.
    let ev = server.bus.publish(QueueStatus::new(0, 0));
    assert_eq!(reader.event_frame().await.seq(), ev.seq());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_clients_receive_every_event() {
    let server = Server::start().await;
    let clients =
        join_all((0..500).map(|_| RawSse::connect(server.addr, "/api/v1/events", &[]))).await;
    server.wait_connections(500).await;
    assert_eq!(server.endpoint.hub().len(), 500);
    let events: Vec<u64> = (0..20)
        .map(|i| server.bus.publish(QueueStatus::new(i, 1)).seq())
        .collect();
    let results = join_all(clients.into_iter().map(|mut c| {
        tokio::spawn(async move {
            c.skip_preamble().await;
            let mut seen = Vec::new();
            for _ in 0..20 {
                seen.push(c.event_frame().await.seq());
            }
            seen
        })
    }))
    .await;
    for r in results {
        assert_eq!(r.unwrap(), events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_stream_and_the_server_stops() {
    let server = Server::start().await;
    let mut raw_a = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    let mut raw_b = RawSse::connect(server.addr, "/api/v1/events?format=envelope", &[]).await;
    let mut es = EsClient::connect(&server.url("/api/v1/events/stream"), &[]).await;
    raw_a.skip_preamble().await;
    raw_b.skip_preamble().await;
    es.next().await;
    server.wait_connections(3).await;

    server.shutdown();
    let within = Duration::from_secs(1);
    tokio::time::timeout(within, raw_a.wait_end())
        .await
        .expect("stream a still open");
    tokio::time::timeout(within, raw_b.wait_end())
        .await
        .expect("stream b still open");
    assert!(es.ends().await);
    server.wait_connections(0).await;
    // axum's graceful shutdown is no longer held up by open streams.
    let task = server.task;
    tokio::time::timeout(WAIT, task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn kick_ends_one_stream_and_leaves_the_others() {
    let server = Server::start().await;
    let mut a = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    a.skip_preamble().await;
    server.wait_connections(1).await;
    let id = server.registry.list()[0].id;
    let mut b = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    b.skip_preamble().await;
    server.wait_connections(2).await;
    assert!(server.registry.disconnect(id));
    tokio::time::timeout(WAIT, a.wait_end()).await.unwrap();
    server.wait_connections(1).await;
    let ev = server.bus.publish(QueueStatus::new(1, 0));
    assert_eq!(b.event_frame().await.seq(), ev.seq());
}

#[tokio::test]
async fn registry_entry_goes_away_however_the_client_leaves() {
    let server = Server::start().await;
    let mut raw = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    raw.skip_preamble().await;
    let mut es = EsClient::connect(&server.url("/api/v1/events"), &[]).await;
    es.next().await;
    server.wait_connections(2).await;
    let info = server.registry.list();
    assert!(
        info.iter()
            .all(|c| c.transport == event_core::Transport::Sse)
    );
    assert!(info.iter().all(|c| {
        c.remote_addr
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    }));
    drop(raw); // abrupt TCP close
    server.wait_connections(1).await;
    drop(es); // reqwest drops its connection
    server.wait_connections(0).await;
    // The hub forgets them once the bodies are gone.
    let hub = server.endpoint.hub().clone();
    tokio::time::timeout(WAIT, async move {
        while !hub.is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_fell_behind_gets_the_lag_count_then_the_latest_state() {
    const JOBS: usize = 8;
    const STEPS: u8 = 100;
    let server = Server::with(Options {
        config: SseConfig {
            outbox: OutboxLimits {
                max_messages: 32,
                max_bytes: 1 << 20,
            },
            ..SseConfig::default()
        },
        ..Options::default()
    })
    .await;
    let slow = stalled_client(&server).await;
    server.wait_connections(1).await;
    let jobs: Vec<Uuid> = (0..JOBS).map(|_| Uuid::now_v7()).collect();
    let hub = server.endpoint.hub();
    let fanned_out = |n: u64| async move {
        // The fan-out keeps up with the bus: what is lost is the
        // client's, not the endpoint's.
        tokio::time::timeout(WAIT, async {
            while hub.delivered() + hub.dropped() < n {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the fan-out stopped");
    };
    // Notes until the socket buffers are full and the outbox overflows.
    let mut published = 0u64;
    while hub.dropped() == 0 {
        assert!(published < 100_000, "the stalled client never overflowed");
        for _ in 0..64 {
            server.bus.publish(big_note(published));
            published += 1;
        }
        fanned_out(published).await;
    }
    for step in 1..=STEPS {
        for job in &jobs {
            server.bus.publish(JobProgress {
                job_id: *job,
                note_id: None,
                progress: step,
                message: None,
            });
        }
        server.bus.publish(QueueStatus::new(u64::from(step), 0));
        server.bus.publish(big_note(u64::from(step)));
        published += JOBS as u64 + 2;
        fanned_out(published).await;
    }
    server.shutdown();

    let mut client = RawSse::resume(slow).await;
    client.skip_preamble().await;
    let mut progress = std::collections::HashMap::new();
    let (mut pending, mut events, mut lagged) = (0, 0u64, 0u64);
    while let Some(raw) = tokio::time::timeout(WAIT, client.next_raw()).await.unwrap() {
        let frame = crate::common::Frame::parse(&raw);
        if frame.comment {
            continue;
        }
        let v = frame.json();
        match v["type"].as_str().unwrap() {
            "events.lagged" => lagged += v["dropped_count"].as_u64().unwrap(),
            "JobProgress" => {
                events += 1;
                let p = v["progress"].as_u64().unwrap();
                let last = progress.insert(v["job_id"].as_str().unwrap().to_owned(), p);
                assert!(last.is_none_or(|l| l < p), "progress went back");
            }
            "QueueStatus" => {
                events += 1;
                pending = v["pending"].as_u64().unwrap();
            }
            _ => events += 1,
        }
    }
    assert!(lagged > 0, "no events.lagged");
    assert_eq!(events + lagged, published, "events unaccounted for");
    assert_eq!(lagged, hub.dropped());
    // The latest state of everything, though most of it was skipped.
    assert_eq!(pending, u64::from(STEPS));
    assert_eq!(progress.len(), JOBS);
    assert!(progress.values().all(|p| *p == u64::from(STEPS)));
}
