//! The per-event size limit (issue 15, item 2): no event over
//! `max_event_bytes` reaches a subscriber, and a connection budget fitted to
//! the limit never drops a reading client for one large event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use event_core::{
    BusConfig, Cursor, DEFAULT_MAX_EVENT_BYTES, DEFAULT_REPLAY_MAX_BYTES, Error, Event, EventBus,
    EventFilter, EventSink, FanoutHub, HubSubscription, NoteUpdated, OutboxLimits, Outgoing,
    OverflowPolicy, Principal, QueueStatus, Received, ReplayMiss, ReplayRing, SeqStart,
    ServerEvent, SinkError, SinkRunner, SubscribeOptions, WireForm, async_trait,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A `NoteUpdated` whose rendered JSON is exactly `bytes` long.
fn note_of(bytes: usize) -> NoteUpdated {
    let mut note = NoteUpdated {
        note_id: Uuid::now_v7(),
        title: Some(String::new()),
        tags: Vec::new(),
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    };
    let rendered = |n: &NoteUpdated| serde_json::to_vec(&ServerEvent::from(n.clone())).unwrap();
    let base = rendered(&note).len();
    note.title = Some("x".repeat(bytes - base));
    assert_eq!(rendered(&note).len(), bytes);
    note
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

fn connection(hub: &FanoutHub, bus: &EventBus, policy: OverflowPolicy) -> HubSubscription {
    hub.subscribe(SubscribeOptions {
        filter: EventFilter::all(),
        principal: Principal::anonymous(),
        // The transports' default budget, fitted to the bus's limit.
        limits: OutboxLimits::default().fit_event(bus.max_event_bytes()),
        policy,
        // The larger of the two renderings.
        wire: WireForm::Envelope,
    })
}

#[tokio::test]
async fn events_just_under_the_limit_reach_a_slow_reader_without_loss() {
    let bus = EventBus::default();
    assert_eq!(bus.max_event_bytes(), DEFAULT_MAX_EVENT_BYTES);
    let limit = bus.max_event_bytes();
    let hub = FanoutHub::new("t");
    let mut runner = SinkRunner::new(&bus);
    runner.register(Arc::new(hub.clone()));
    // A WebSocket-like connection (closed on overflow) and an SSE-like one
    // (drops and counts).
    let closing = connection(&hub, &bus, OverflowPolicy::Close);
    let dropping = connection(&hub, &bus, OverflowPolicy::DropAndCount);

    let mut published = 0;
    for round in 0..3 {
        // The reader is slow: two limit-sized events (and a small one)
        // arrive before it drains, then it reads everything.
        bus.try_publish(QueueStatus::new(round, 0)).unwrap();
        bus.try_publish(note_of(limit)).unwrap();
        bus.try_publish(note_of(limit - 1)).unwrap();
        published += 3;
        until("the hub to deliver the round", || {
            hub.delivered() + hub.dropped() == 2 * published
        })
        .await;
        for sub in [&closing, &dropping] {
            let mut out = Vec::new();
            let status = sub.outbox().drain_into(&mut out);
            assert!(!status.overflowed, "round {round}: overflowed");
            assert_eq!(out.len(), 3, "round {round}");
            assert!(out.iter().all(|o| matches!(o, Outgoing::Event(_))));
        }
    }
    assert_eq!(hub.dropped(), 0);
    runner.shutdown(WAIT).await;
}

struct Count(AtomicUsize, std::sync::Mutex<Vec<u64>>);

#[async_trait]
impl EventSink for Count {
    fn name(&self) -> &str {
        "count"
    }
    async fn deliver(&self, event: Arc<Event>) -> Result<(), SinkError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        self.1.lock().unwrap().push(event.seq());
        Ok(())
    }
}

#[tokio::test]
async fn an_event_over_the_limit_is_refused_and_reaches_no_sink() {
    let bus = EventBus::default();
    let limit = bus.max_event_bytes();
    let sink = Arc::new(Count(AtomicUsize::new(0), Default::default()));
    let mut runner = SinkRunner::new(&bus);
    runner.register(sink.clone());
    let hub = FanoutHub::new("t");
    runner.register(Arc::new(hub.clone()));
    let conn = connection(&hub, &bus, OverflowPolicy::Close);
    let mut sub = bus.subscribe();
    let before = (bus.last_seq(), bus.retained());

    let err = bus.try_publish(note_of(limit + 1)).unwrap_err();
    assert_eq!(
        err,
        Error::EventTooLarge {
            event_type: "NoteUpdated",
            size: limit + 1,
            limit,
        }
    );
    assert_eq!(err.code(), "event_too_large");
    assert!(err.to_string().contains(&limit.to_string()), "{err}");
    // The infallible form refuses it too: never sequenced.
    let refused = bus.publish(note_of(2 * limit));
    assert_eq!(refused.seq(), 0);
    // So does an event that arrives with its identity (another instance).
    let foreign = Event::new(
        before.0 + 10,
        Uuid::now_v7(),
        time::OffsetDateTime::now_utc(),
        Default::default(),
        note_of(limit + 100).into(),
    );
    assert!(matches!(
        bus.publish_event(foreign),
        Err(Error::EventTooLarge { .. })
    ));
    assert_eq!((bus.last_seq(), bus.retained()), before);

    // A marker behind them: once it is delivered, the refused ones would have been.
    let marker = bus.try_publish(QueueStatus::new(1, 0)).unwrap();
    until("the marker to reach the sink", || {
        sink.0.load(Ordering::Relaxed) >= 1
    })
    .await;
    until("the marker to reach the hub", || hub.delivered() >= 1).await;
    assert_eq!(*sink.1.lock().unwrap(), [marker.seq()]);
    let mut out = Vec::new();
    conn.outbox().drain_into(&mut out);
    assert_eq!(out.len(), 1);
    match sub.try_recv() {
        Some(Received::Event(e)) => assert_eq!(e.seq(), marker.seq()),
        other => panic!("unexpected {other:?}"),
    }
    assert!(sub.try_recv().is_none());
    runner.shutdown(WAIT).await;
}

#[test]
fn a_batch_with_one_event_over_the_limit_publishes_nothing() {
    let bus = EventBus::default();
    let limit = bus.max_event_bytes();
    let before = bus.last_seq();
    let batch: Vec<ServerEvent> = vec![
        QueueStatus::new(1, 0).into(),
        note_of(limit + 1).into(),
        QueueStatus::new(2, 0).into(),
    ];
    let err = bus
        .try_publish_all_with(batch, &Default::default())
        .unwrap_err();
    assert!(matches!(err, Error::EventTooLarge { size, .. } if size == limit + 1));
    assert_eq!(bus.last_seq(), before);
    assert_eq!(bus.retained(), 0);

    let ok: Vec<ServerEvent> = vec![QueueStatus::new(1, 0).into(), note_of(limit).into()];
    let published = bus.try_publish_all_with(ok, &Default::default()).unwrap();
    let seqs: Vec<u64> = published.iter().map(|e| e.seq()).collect();
    assert_eq!(seqs, [before + 1, before + 2]);
}

#[test]
fn the_limit_is_a_setting_and_budgets_fit_it() {
    let bus = EventBus::default();
    assert!(matches!(
        bus.set_max_event_bytes(100),
        Err(Error::InvalidSetting { .. })
    ));
    assert_eq!(bus.max_event_bytes(), DEFAULT_MAX_EVENT_BYTES);
    bus.set_max_event_bytes(4096).unwrap();
    assert!(bus.try_publish(note_of(4096)).is_ok());
    assert!(bus.try_publish(note_of(4097)).is_err());

    // The default budget holds two default-limit events with slack …
    let default = OutboxLimits::default();
    assert!(default.max_bytes >= OutboxLimits::min_bytes_for(DEFAULT_MAX_EVENT_BYTES));
    assert_eq!(default.fit_event(DEFAULT_MAX_EVENT_BYTES), default);
    // … and a larger limit raises it.
    let fitted = default.fit_event(4 << 20);
    assert!(fitted.max_bytes >= 2 * (4 << 20));
    assert_eq!(fitted.max_messages, default.max_messages);
}

/// The replay ring's byte bound: a ring of events at the size limit stays
/// under it, keeps the newest, and still serves cursors within them.
#[test]
fn a_ring_of_large_events_stays_under_its_byte_bound() {
    // The render keys of the SSE and WebSocket transports, as a host
    // registers them before events flow (no other test here registers any).
    static TRANSPORT_KEYS: std::sync::LazyLock<[event_core::event::RenderKey; 3]> =
        std::sync::LazyLock::new(|| {
            std::array::from_fn(|_| event_core::event::RenderKey::register())
        });
    let _ = *TRANSPORT_KEYS;
    let bus = EventBus::new(BusConfig {
        seq_start: SeqStart::At(1),
        ..BusConfig::default()
    });
    assert_eq!(bus.replay_max_bytes(), DEFAULT_REPLAY_MAX_BYTES);
    let max = 8 * 1024 * 1024;
    bus.set_replay_max_bytes(max);
    let events: Vec<Arc<Event>> = (0..64)
        .map(|_| bus.try_publish(note_of(DEFAULT_MAX_EVENT_BYTES)).unwrap())
        .collect();
    let weight = ReplayRing::weight(&events[0]);
    // The weight covers every rendering an event can come to hold.
    assert!(weight >= 6 * DEFAULT_MAX_EVENT_BYTES, "{weight}");
    let kept = max / weight;
    assert!(kept > 0 && kept < 64, "{kept}");
    assert_eq!(bus.retained(), kept);
    assert!(bus.retained_bytes() <= max);
    assert_eq!(bus.retained_bytes(), kept * weight);

    // The last event evicted is a cursor that can still be served whole
    // (everything after it is kept); the one before it cannot.
    let first_kept = 64 - kept;
    let after = bus
        .replay_since(&Cursor::Seq(events[first_kept - 1].seq()))
        .unwrap();
    let seqs = |v: &[Arc<Event>]| v.iter().map(|e| e.seq()).collect::<Vec<_>>();
    assert_eq!(seqs(&after), seqs(&events[first_kept..]));
    let by_id = bus
        .replay_since(&Cursor::Id(events[first_kept].id()))
        .unwrap();
    assert_eq!(seqs(&by_id), seqs(&events[first_kept + 1..]));
    assert_eq!(
        bus.replay_since(&Cursor::Seq(events[first_kept - 2].seq()))
            .unwrap_err(),
        ReplayMiss::Expired
    );
    assert_eq!(
        bus.replay_since(&Cursor::Id(events[first_kept - 1].id()))
            .unwrap_err(),
        ReplayMiss::Expired
    );

    // Lowering the bound evicts at once.
    bus.set_replay_max_bytes(weight);
    assert_eq!(bus.retained(), 1);
    assert_eq!(
        seqs(&bus.replay_since(&Cursor::Seq(events[62].seq())).unwrap()),
        [events[63].seq()]
    );
}
