//! HotM compatibility, docs/protocol.md §3 (SSE `/api/v1/events`): one test per
//! bullet, as a G2 client would see it.

use serde_json::{Value, json};

use crate::harness::*;

fn note(id: uuid::Uuid) -> Value {
    json!({"type":"NoteUpdated","note_id":id,"tags":[],"has_ai_content":false,"has_links":false})
}

#[tokio::test]
async fn response_headers_and_first_frames_before_any_event() {
    let server = Server::start(&[]).await;
    for path in ["/api/v1/events", "/api/v1/events/stream"] {
        let mut sse = SseClient::connect(&server.url(path), &[]).await;
        let h = sse.response.headers().clone();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{path}"
        );
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert_eq!(h["x-accel-buffering"], "no", "{path}");
        // Flushed at once: the frames arrive although nothing is published.
        let first = sse.next_frame().await;
        assert_eq!(first.raw, "retry: 3000\n\n", "{path}");
        let confirm = sse.next_frame().await;
        let v = confirm.json();
        assert_eq!(v["type"], "QueueStatus", "{path}");
        assert_eq!(confirm.event.as_deref(), Some("QueueStatus"));
        server.publish(&note(uuid::Uuid::now_v7())).await;
        sse.next_non_queue().await;
        assert!(
            !sse.all.contains(&b'\r'),
            "{path}: line endings are LF only"
        );
    }
}

#[tokio::test]
async fn default_format_is_configurable_and_overridable_per_request() {
    let server = Server::start(&["--sse-default-format", "envelope"]).await;
    let mut env = SseClient::connect(&server.url("/api/v1/events"), &[]).await;
    let mut v1 = SseClient::connect(&server.url("/api/v1/events?format=v1"), &[]).await;
    let (seq, id) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    let f = env.next_non_queue().await;
    assert!(
        f.raw.starts_with(&format!(
            "event: note.updated\nid: {id}\ndata: {{\"event_id\":\"{id}\""
        )),
        "{}",
        f.raw
    );
    let f = v1.next_non_queue().await;
    assert!(
        f.raw.starts_with(&format!(
            "id: {seq}\nevent: NoteUpdated\ndata: {{\"type\":\"NoteUpdated\""
        )),
        "{}",
        f.raw
    );
}

#[tokio::test]
async fn replay_accepts_either_form_of_id_in_header_or_query() {
    let server = Server::start(&[]).await;
    let anchor = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    let mut later = server
        .publish(&json!([
            note(uuid::Uuid::now_v7()),
            note(uuid::Uuid::now_v7())
        ]))
        .await;
    let seq_form = anchor.0.to_string();
    for (format, cursor, in_header) in [
        ("v1", seq_form.as_str(), true),
        ("v1", anchor.1.as_str(), false),
        ("envelope", seq_form.as_str(), false),
        ("envelope", anchor.1.as_str(), true),
    ] {
        let base = server.url(&format!("/api/v1/events?format={format}"));
        let mut sse = if in_header {
            SseClient::connect(&base, &[("Last-Event-ID", cursor)]).await
        } else {
            SseClient::connect(&format!("{base}&last_event_id={cursor}"), &[]).await
        };
        for (seq, id) in &later {
            let f = sse.next_non_queue().await;
            let want = if format == "v1" {
                seq.to_string()
            } else {
                id.clone()
            };
            assert_eq!(
                f.id.as_deref(),
                Some(want.as_str()),
                "{format} {cursor} {in_header}"
            );
        }
        // Then live (and replayed by the next iteration's cursor).
        let (seq, id) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
        let f = sse.next_non_queue().await;
        let want = if format == "v1" {
            seq.to_string()
        } else {
            id.clone()
        };
        assert_eq!(f.id.as_deref(), Some(want.as_str()));
        later.push((seq, id));
    }
}

#[tokio::test]
async fn unknown_or_expired_id_gets_resync_required_without_id_bypassing_filters() {
    // Without the event log, which would serve the evicted cursors.
    let server = Server::start(&["--event-replay-size", "4", "--event-log", "off"]).await;
    let (old_seq, old_id) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    for _ in 0..8 {
        server.publish(&note(uuid::Uuid::now_v7())).await;
    }
    let unknown = uuid::Uuid::now_v7().to_string();
    let old_seq = old_seq.to_string();
    for cursor in [
        old_seq.as_str(),
        old_id.as_str(),
        unknown.as_str(),
        "not-an-id",
    ] {
        // The filter excludes notes and queue status: the synthetic frame still comes.
        let mut sse = SseClient::connect(
            &server.url("/api/v1/events?events=JobCompleted"),
            &[("Last-Event-ID", cursor)],
        )
        .await;
        let f = sse
            .next_where(|f| f.event.as_deref() == Some("resync_required"))
            .await;
        assert!(f.id.is_none(), "synthetic frames carry no id: {}", f.raw);
        let v = f.json();
        assert_eq!(v["type"], "resync_required");
        assert_eq!(v["reason"], "cursor_expired");
        assert_eq!(v["last_event_id"], cursor);
        // Then live, filtered.
        let job = uuid::Uuid::now_v7();
        let ids = server
            .publish(&json!([note(job), {"type":"JobCompleted","job_id":job,"job_type":"E"}]))
            .await;
        let f = sse.next_non_queue().await;
        assert_eq!(f.id, Some(ids[1].0.to_string()), "{cursor}");
    }
}

#[tokio::test]
async fn filters_by_name_type_prefix_and_entity() {
    let server = Server::start(&[]).await;
    let job = uuid::Uuid::now_v7();
    let other = uuid::Uuid::now_v7();
    // Indexes into the batch below.
    let cases: Vec<(String, Vec<usize>)> = vec![
        ("events=job.progress,NoteUpdated".into(), vec![2, 4]),
        ("types=JOB".into(), vec![0, 1, 2, 3]),
        ("types=job.failed".into(), vec![]),
        ("types=note.updated,job.completed".into(), vec![3, 4]),
        (format!("entity_id={job}"), vec![0, 1, 2, 3]),
        (format!("types=job&entity_id={other}"), vec![]),
    ];
    let mut clients = Vec::new();
    for (q, _) in &cases {
        let mut c = SseClient::connect(&server.url(&format!("/api/v1/events?{q}")), &[]).await;
        c.next_frame().await; // retry
        clients.push(c);
    }
    let ids = server
        .publish(&json!([
            {"type":"JobQueued","job_id":job,"job_type":"E"},
            {"type":"JobStarted","job_id":job,"job_type":"E"},
            {"type":"JobProgress","job_id":job,"progress":3},
            {"type":"JobCompleted","job_id":job,"job_type":"E"},
            note(other),
        ]))
        .await;
    // A marker every client accepts ends each stream's check.
    let marker = uuid::Uuid::now_v7();
    let marker_ids = server
        .publish(&json!([
            {"type":"JobFailed","job_id":other,"job_type":"M","error":"marker"},
            {"type":"JobFailed","job_id":job,"job_type":"M","error":"marker"},
            {"type":"JobCompleted","job_id":marker,"job_type":"M"},
            {"type":"NoteUpdated","note_id":marker,"tags":[],"has_ai_content":false,"has_links":false},
            {"type":"JobProgress","job_id":marker,"progress":1},
        ]))
        .await;
    let marker_seqs: Vec<String> = marker_ids.iter().map(|(s, _)| s.to_string()).collect();
    for ((q, want), c) in cases.iter().zip(clients.iter_mut()) {
        let mut got = Vec::new();
        let mut saw_marker = false;
        while !saw_marker {
            // Each filter lets at least one of the markers through.
            let f = c.next_frame().await;
            let Some(id) = f.id.clone() else { continue };
            if f.event.as_deref() == Some("QueueStatus") {
                panic!("{q}: QueueStatus passed the filter");
            }
            if marker_seqs.contains(&id) {
                saw_marker = true;
            } else {
                got.push(id);
            }
        }
        let expect: Vec<String> = want.iter().map(|i| ids[*i].0.to_string()).collect();
        assert_eq!(got, expect, "filter {q}");
    }
}

#[tokio::test]
async fn bad_filters_are_400_json_naming_the_problem() {
    let server = Server::start(&[]).await;
    for (q, needle) in [
        ("events=", "events"),
        ("types=", "types"),
        ("events=NoteUpdated,Bogus", "Bogus"),
        ("events=noteupdated", "noteupdated"),
        ("entity_id=xyz", "entity_id"),
        ("format=xml", "format"),
        // A prefix must end at a dot: `job.prog` names no type.
        ("types=job.prog", "job.prog"),
    ] {
        let res = SseClient::request(&server.url(&format!("/api/v1/events?{q}")), &[]).await;
        let err = assert_json_error(res, 400).await;
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{q}: {err}"
        );
    }
}

#[tokio::test]
async fn slow_consumer_gets_events_lagged_and_the_stream_continues() {
    let server = Server::start(&[]).await;
    let mut sse = SseClient::connect(&server.url("/api/v1/events?events=NoteUpdated"), &[]).await;
    sse.next_frame().await;
    // Stop reading while ~18 MB are published (paced so the bus sink keeps up).
    let title = "s".repeat(1500);
    let n = 12_000u64;
    let note_id = uuid::Uuid::now_v7();
    let mut bus = server.bus.subscribe();
    let mut last = 0;
    for i in 0..n {
        last = server
            .bus
            .publish(event_core::NoteUpdated {
                note_id,
                title: Some(title.clone()),
                tags: Vec::new(),
                has_ai_content: false,
                has_links: false,
                operation: None,
                user_id: None,
            })
            .seq();
        if i % 256 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let _ = next_where(&mut bus, |e| e.seq() == last).await;
    // Resume: events, then `events.lagged` with the exact number lost, then
    // more. The end marker is published once the client reads again: while
    // its outbox is full a `NoteUpdated` (no state to coalesce) is dropped
    // and counted like the others.
    let mut received = 0u64;
    let mut dropped = 0u64;
    let mut lag_frames = 0;
    let mut end: Option<u64> = None;
    loop {
        let f = sse.next_where(Frame::is_event).await;
        match f.event.as_deref() {
            Some("events.lagged") => {
                assert!(f.id.is_none());
                let v = f.json();
                assert_eq!(v["type"], "events.lagged");
                dropped += v["dropped_count"].as_u64().unwrap();
                lag_frames += 1;
            }
            Some("NoteUpdated") => {
                if end.is_some_and(|end| f.id.as_deref() == Some(end.to_string().as_str())) {
                    break;
                }
                received += 1;
            }
            _ => {}
        }
        if end.is_none() && received + dropped == n {
            end = Some(
                server
                    .publish(&note(uuid::Uuid::now_v7()))
                    .await
                    .remove(0)
                    .0,
            );
        }
    }
    assert!(
        lag_frames >= 1,
        "no lag signal although {dropped} were dropped"
    );
    assert!(dropped > 0);
    assert_eq!(
        received + dropped,
        n,
        "every event is either delivered or counted"
    );
}

#[tokio::test]
async fn idle_streams_get_keepalive_comments() {
    let server = Server::start(&[]).await;
    let mut sse = SseClient::connect(
        &server.url("/api/v1/events?heartbeat=5&events=JobFailed"),
        &[],
    )
    .await;
    let f = sse.next_where(|f| f.comment).await;
    assert_eq!(f.raw, ": keepalive\n\n");
}

#[tokio::test]
async fn graceful_shutdown_ends_streams() {
    let mut server = Server::start(&[]).await;
    let mut sse = SseClient::connect(&server.url("/api/v1/events"), &[]).await;
    sse.next_frame().await;
    let ended = tokio::spawn(async move { sse.ends_within(WAIT).await });
    server.shutdown().await;
    assert!(ended.await.unwrap(), "the stream did not end at shutdown");
}

#[tokio::test]
async fn replay_hand_over_under_concurrent_publishing_has_no_gap_and_no_duplicate() {
    let server = Server::start(&[]).await;
    let first = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    // A publisher keeps going while the client reconnects with a cursor.
    let bus = server.bus.clone();
    let publisher = tokio::spawn(async move {
        let mut seqs = Vec::new();
        for _ in 0..300 {
            let ev = bus.publish(event_core::NoteUpdated {
                note_id: uuid::Uuid::now_v7(),
                title: None,
                tags: Vec::new(),
                has_ai_content: false,
                has_links: false,
                operation: None,
                user_id: None,
            });
            seqs.push(ev.seq());
            tokio::task::yield_now().await;
        }
        seqs
    });
    let mut sse = SseClient::connect(
        &server.url("/api/v1/events?events=NoteUpdated"),
        &[("Last-Event-ID", first.0.to_string().as_str())],
    )
    .await;
    let published = publisher.await.unwrap();
    let mut got = Vec::new();
    while got.len() < published.len() {
        let f = sse.next_non_queue().await;
        got.push(f.id.unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(
        got, published,
        "replay then live: in order, no gap, no duplicate"
    );
}

#[tokio::test]
async fn a_standard_sse_parser_reads_the_stream() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let server = Server::start(&[]).await;
    let res = SseClient::request(&server.url("/api/v1/events?format=envelope"), &[]).await;
    let mut events = res.bytes_stream().eventsource();
    let (_, id) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.next().await.unwrap().unwrap();
            if ev.event == "note.updated" {
                return ev;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(ev.id, id);
    assert_eq!(ev.retry, None, "retry arrives in its own frame");
    let v: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(v["payload"]["type"], "NoteUpdated");
}

#[tokio::test]
async fn g2_client_resumes_after_a_kick_with_its_last_envelope_id() {
    let server = Server::start(&[]).await;
    let url = server.url("/api/v1/events?format=envelope&types=note");
    let mut sse = SseClient::connect(&url, &[]).await;
    let (_, seen_id) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    let f = sse.next_non_queue().await;
    assert_eq!(f.id.as_deref(), Some(seen_id.as_str()));
    // An operator kicks the stream; it ends (EventSource then reconnects).
    kick_first_connection(&server).await;
    assert!(sse.ends_within(WAIT).await, "a kicked stream ends");
    let missed = server
        .publish(&json!([
            note(uuid::Uuid::now_v7()),
            note(uuid::Uuid::now_v7())
        ]))
        .await;
    let mut sse = SseClient::connect(&url, &[("Last-Event-ID", seen_id.as_str())]).await;
    for (_, id) in &missed {
        let f = sse.next_non_queue().await;
        assert_eq!(f.id.as_deref(), Some(id.as_str()));
        assert_eq!(f.json()["event_id"], id.as_str());
    }
}

#[tokio::test]
async fn history_returns_retained_envelopes_after_a_cursor_filtered_and_limited() {
    let server = Server::start(&[]).await;
    let (anchor, _) = server.publish(&note(uuid::Uuid::now_v7())).await.remove(0);
    let job = uuid::Uuid::now_v7();
    let ids = server
        .publish(&json!([
            {"type":"JobQueued","job_id":job,"job_type":"E"},
            note(uuid::Uuid::now_v7()),
            {"type":"JobCompleted","job_id":job,"job_type":"E"},
            note(uuid::Uuid::now_v7()),
        ]))
        .await;
    let get = |q: String| {
        let url = server.url(&format!("/api/v1/events/history?{q}"));
        async move {
            let res = client().get(url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.json::<Vec<Value>>().await.unwrap()
        }
    };
    let all = get(format!("since={anchor}")).await;
    let got: Vec<&str> = all
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let want: Vec<&str> = ids.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(
        got, want,
        "everything after the cursor, oldest first, as envelopes"
    );
    assert_eq!(all[0]["payload"]["type"], "JobQueued");
    let jobs = get(format!("since={anchor}&types=job")).await;
    assert_eq!(jobs.len(), 2);
    let limited = get(format!("since={anchor}&limit=1")).await;
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["event_id"], ids[0].1.as_str());
    let res = client()
        .get(server.url("/api/v1/events/history?limit=zero"))
        .send()
        .await
        .unwrap();
    assert_json_error(res, 400).await;
}

#[tokio::test]
async fn memory_scope_by_query_or_header_keeps_unscoped_events() {
    let server = Server::start(&[]).await;
    let mut work = SseClient::connect(
        &server.url("/api/v1/events?format=envelope&types=note&memory=work"),
        &[],
    )
    .await;
    let mut home = SseClient::connect(
        &server.url("/api/v1/events?format=envelope&types=note"),
        &[("X-Fortemi-Memory", "home")],
    )
    .await;
    let publish_in = |memory: Option<&'static str>| {
        let url = match memory {
            Some(m) => server.url(&format!("/api/v1/events?memory={m}")),
            None => server.url("/api/v1/events"),
        };
        async move {
            let res = client()
                .post(url)
                .json(&note(uuid::Uuid::now_v7()))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            res.json::<Value>().await.unwrap()["events"][0]["event_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let in_work = publish_in(Some("work")).await;
    let in_home = publish_in(Some("home")).await;
    let unscoped = publish_in(None).await;
    for (client, mine, memory) in [(&mut work, &in_work, "work"), (&mut home, &in_home, "home")] {
        let f = client.next_non_queue().await;
        assert_eq!(f.id.as_deref(), Some(mine.as_str()), "{memory}");
        assert_eq!(f.json()["memory"], memory);
        let f = client.next_non_queue().await;
        assert_eq!(
            f.id.as_deref(),
            Some(unscoped.as_str()),
            "{memory}: unscoped events pass"
        );
        assert!(f.json().get("memory").is_none());
    }
}

#[tokio::test]
async fn a_cursor_on_a_filtered_out_event_is_still_known() {
    // A client filtering on notes may reconnect with the id of any event it
    // saw before changing filters; a retained id is never "expired".
    let server = Server::start(&[]).await;
    let job = uuid::Uuid::now_v7();
    let ids = server
        .publish(&json!([
            {"type":"JobQueued","job_id":job,"job_type":"E"},
            note(uuid::Uuid::now_v7()),
        ]))
        .await;
    for cursor in [ids[0].0.to_string(), ids[0].1.clone()] {
        let mut sse = SseClient::connect(
            &server.url("/api/v1/events?events=NoteUpdated"),
            &[("Last-Event-ID", cursor.as_str())],
        )
        .await;
        let f = sse.next_non_queue().await;
        assert_ne!(f.event.as_deref(), Some("resync_required"), "{cursor}");
        assert_eq!(f.id, Some(ids[1].0.to_string()));
    }
}
