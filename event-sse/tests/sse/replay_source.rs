//! `SseEndpoint::with_replay_source`: cursors older than the ring are served
//! from a longer log (here an in-memory one standing in for JetStream, which
//! event-server's cluster test covers for real), with the same no-gap,
//! no-duplicate hand-over to live delivery; a miss there is a resync.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_core::{
    BusConfig, Cursor, Event, EventBus, EventMeta, QueueStatus, ReplayMiss, ReplaySource, Replayed,
    SeqStart, ServerEvent, Uuid, async_trait,
};

use crate::common::{Options, RawSse, Server};

/// An ordered log of the cluster's events, some of which the local bus has
/// not received yet: they are handed to the bus while a replay is read, as
/// when the shared log is ahead of this instance.
struct Log {
    bus: EventBus,
    events: Vec<Arc<Event>>,
    ahead_of_bus: Mutex<Vec<Arc<Event>>>,
    miss: Option<ReplayMiss>,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl ReplaySource for Log {
    async fn replay_since(&self, cursor: &Cursor) -> Result<Replayed, ReplayMiss> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(miss) = self.miss {
            return Err(miss);
        }
        // The bus catches up while the log is read: these arrive live too.
        for ev in self.ahead_of_bus.lock().unwrap().drain(..) {
            self.bus.publish_event(copy(&ev)).unwrap();
        }
        let (start, cursor_seq) = match *cursor {
            Cursor::Seq(seq) => (self.events.partition_point(|e| e.seq() <= seq), seq),
            Cursor::Id(id) => {
                let pos = self
                    .events
                    .iter()
                    .position(|e| e.id() == id)
                    .ok_or(ReplayMiss::Unknown)?;
                (pos + 1, self.events[pos].seq())
            }
        };
        Ok(Replayed::new(self.events[start..].to_vec(), cursor_seq))
    }
}

/// The same event (id, seq, time, payload) as a new value to publish.
fn copy(ev: &Event) -> Event {
    Event::new(
        ev.seq(),
        ev.id(),
        ev.occurred_at(),
        ev.meta().clone(),
        ev.payload().clone(),
    )
}

fn log_event(seq: u64) -> Arc<Event> {
    Arc::new(Event::new(
        seq,
        Uuid::now_v7(),
        time::OffsetDateTime::now_utc(),
        EventMeta::default(),
        ServerEvent::QueueStatus(QueueStatus::new(seq, 0)),
    ))
}

struct Setup {
    server: Server,
    /// The whole log (seq 10, 20, 30, …), the last `ahead` not yet on the bus.
    log: Vec<Arc<Event>>,
    calls: Arc<AtomicUsize>,
}

/// A server whose ring keeps 3 events, over a log of `total` events of
/// which the last `ahead` reach the bus only during the first replay.
async fn setup(total: usize, ahead: usize, miss: Option<ReplayMiss>) -> Setup {
    let log: Vec<Arc<Event>> = (1..=total as u64).map(|i| log_event(i * 10)).collect();
    let calls = Arc::new(AtomicUsize::new(0));
    let source = {
        let (log, calls) = (log.clone(), calls.clone());
        Box::new(move |bus: &EventBus| {
            Arc::new(Log {
                bus: bus.clone(),
                ahead_of_bus: Mutex::new(log[total - ahead..].to_vec()),
                events: log,
                miss,
                calls,
            }) as Arc<dyn ReplaySource>
        })
    };
    let server = Server::with(Options {
        bus: BusConfig {
            capacity: 1024,
            replay_size: 3,
            seq_start: SeqStart::At(1),
        },
        replay_source: Some(source),
        ..Options::default()
    })
    .await;
    for ev in &log[..total - ahead] {
        server.bus.publish_event(copy(ev)).unwrap();
    }
    Setup { server, log, calls }
}

/// Publishes the next log event and checks it is the client's next frame:
/// nothing (no duplicate) came in between.
async fn next_is_live(s: &Setup, client: &mut RawSse) {
    let next = s.log.last().unwrap().seq() + 10;
    s.server.bus.publish_event(copy(&log_event(next))).unwrap();
    assert_eq!(client.event_frame().await.seq(), next);
}

#[tokio::test]
async fn cursor_older_than_the_ring_is_replayed_from_the_source() {
    let s = setup(12, 0, None).await;
    for cursor in [s.log[2].seq().to_string(), s.log[2].id().to_string()] {
        let mut client = RawSse::connect(
            s.server.addr,
            "/api/v1/events",
            &[("Last-Event-ID", &cursor)],
        )
        .await;
        client.skip_preamble().await; // no resync_required before the status
        for ev in &s.log[3..] {
            let frame = client.event_frame().await;
            assert_eq!(frame.seq(), ev.seq(), "{cursor}");
            assert_eq!(frame.data.as_bytes(), &ev.json()[..]);
        }
    }
    assert_eq!(s.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cursor_in_the_ring_does_not_ask_the_source() {
    let s = setup(12, 0, None).await;
    let cursor = s.log[10].seq().to_string();
    let mut client = RawSse::connect(
        s.server.addr,
        "/api/v1/events",
        &[("Last-Event-ID", &cursor)],
    )
    .await;
    client.skip_preamble().await;
    assert_eq!(client.event_frame().await.seq(), s.log[11].seq());
    assert_eq!(s.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn source_ahead_of_the_bus_hands_over_without_gap_or_duplicate() {
    // Events 10..=80 are on the bus; 90..=120 only in the log until the
    // replay is read, then they reach the bus (and the live queue) as well.
    let s = setup(12, 4, None).await;
    let cursor = s.log[1].seq().to_string();
    let mut client = RawSse::connect(
        s.server.addr,
        "/api/v1/events",
        &[("Last-Event-ID", &cursor)],
    )
    .await;
    client.skip_preamble().await;
    for ev in &s.log[2..] {
        assert_eq!(
            client.event_frame().await.seq(),
            ev.seq(),
            "gap or duplicate"
        );
    }
    next_is_live(&s, &mut client).await;
}

#[tokio::test]
async fn id_cursor_at_the_log_head_skips_its_own_late_live_copy() {
    // The client saw event 120 on another instance; here it is not on the
    // bus yet (ring: Unknown) and the log has nothing after it.
    let s = setup(12, 1, None).await;
    let path = format!(
        "/api/v1/events?format=envelope&last_event_id={}",
        s.log[11].id()
    );
    let mut client = RawSse::connect(s.server.addr, &path, &[]).await;
    client.skip_preamble().await;
    let next = log_event(130);
    s.server.bus.publish_event(copy(&next)).unwrap();
    // Not event 120 again: the next frame is the new one.
    let frame = client.event_frame().await;
    assert_eq!(frame.id, Some(next.id().to_string()));
    assert_eq!(s.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn source_miss_means_resync_required_then_live() {
    for miss in [ReplayMiss::Expired, ReplayMiss::Unknown] {
        let s = setup(12, 0, Some(miss)).await;
        let cursor = s.log[0].seq().to_string();
        let mut client = RawSse::connect(
            s.server.addr,
            "/api/v1/events",
            &[("Last-Event-ID", &cursor)],
        )
        .await;
        assert_eq!(client.frame().await.raw, "retry: 3000\n\n");
        let resync = client.frame().await;
        assert_eq!(resync.event.as_deref(), Some("resync_required"), "{miss:?}");
        assert_eq!(resync.json()["last_event_id"], cursor.as_str());
        assert_eq!(client.frame().await.event.as_deref(), Some("QueueStatus"));
        next_is_live(&s, &mut client).await;
        assert_eq!(s.calls.load(Ordering::SeqCst), 1);
    }
}
