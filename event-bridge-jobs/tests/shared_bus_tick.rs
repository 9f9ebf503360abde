//! The periodic `QueueStatus` when other producers' statuses reach the same
//! bus — in a cluster, every instance's bridge publishes onto one stream that
//! every instance's clients read. On the real clock: the bridge compares a
//! status's `occurred_at` with the wall clock, which Tokio's paused clock
//! does not move.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use event_bridge_jobs::{JobBridge, JobBridgeConfig, WorkerEvent};
use event_core::{
    Actor, ConnectionRegistry, EventBus, EventMeta, Principal, QueueStatus, Received, ServerEvent,
    Subscription, Transport,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};

const TICK: Duration = Duration::from_millis(300);

fn config(tick: Duration) -> JobBridgeConfig {
    JobBridgeConfig {
        queue_status_tick: tick,
        ..JobBridgeConfig::default()
    }
}

/// The next `QueueStatus` on the bus, with when it arrived and its actor.
async fn next_status(sub: &mut Subscription) -> (Instant, Actor) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, sub.recv())
            .await
            .expect("a QueueStatus within 20 s")
        {
            Received::Event(ev) if matches!(ev.payload(), ServerEvent::QueueStatus(_)) => {
                return (Instant::now(), ev.meta().actor.clone());
            }
            Received::Event(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn two_bridges_on_one_bus_send_about_one_status_per_tick() {
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let (_worker_a, rx_a) = broadcast::channel::<WorkerEvent>(16);
    let (_worker_b, rx_b) = broadcast::channel::<WorkerEvent>(16);
    let _a = JobBridge::new(&bus, &registry, config(TICK)).spawn(rx_a);
    let _b = JobBridge::new(&bus, &registry, config(TICK)).spawn(rx_b);
    let _client = registry.register(Transport::WebSocket, None, &Principal::anonymous());

    let (first, _) = next_status(&mut sub).await;
    let mut last = first;
    for _ in 0..9 {
        last = next_status(&mut sub).await.0;
    }
    // Ten statuses from two bridges that each ticked would span 4.5 ticks;
    // one status per tick spans 9. A busy machine only makes it longer.
    let span = last - first;
    assert!(
        span >= TICK * 7,
        "10 statuses in {span:?}: more than one per {TICK:?} tick"
    );
}

#[tokio::test]
async fn another_producers_status_puts_the_tick_off_by_its_age() {
    // Long enough that a busy machine does not fire the tick before the
    // other status half a tick later.
    const TICK: Duration = Duration::from_secs(1);
    let bus = EventBus::default();
    let registry = ConnectionRegistry::new();
    let mut sub = bus.subscribe();
    let (_worker, rx) = broadcast::channel::<WorkerEvent>(16);
    let _bridge = JobBridge::new(&bus, &registry, config(TICK)).spawn(rx);
    let _client = registry.register(Transport::Sse, None, &Principal::anonymous());

    let (ticked, bridge_actor) = next_status(&mut sub).await;
    // Halfway to the next tick, another instance's status arrives.
    tokio::time::sleep_until(ticked + TICK / 2).await;
    let other = Actor::user("other-instance");
    bus.publish_with(
        QueueStatus::new(2, 1),
        EventMeta::default().actor(other.clone()),
    );
    assert_eq!(next_status(&mut sub).await.1, other);

    // The bridge's own next status comes a tick after that one, not a tick
    // after its last.
    let (at, actor) = next_status(&mut sub).await;
    assert_eq!(actor, bridge_actor);
    assert!(
        at - ticked >= TICK * 14 / 10,
        "the bridge ticked {:?} after its last status despite another's at {:?}",
        at - ticked,
        TICK / 2
    );
}
