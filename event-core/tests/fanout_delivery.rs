//! What `FanoutHub::fan_out` delivers when every outbox has room (drained
//! between batches): every event to every subscriber, in order, none
//! dropped; also when each subscriber set a filter every event passes
//! after subscribing (what a WebSocket `subscribe` with `topics` sets).
//! What it costs is measured by `cargo xtask bench --only fanout-cost`
//! (`examples/src/bin/bench-fanout.rs`), not here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use event_core::{
    Event, EventBus, EventFilter, FanoutHub, HubSubscription, JobProgress, OutboxLimits, Outgoing,
    OverflowPolicy, Principal, SubscribeOptions, TopicPattern, Uuid, WireForm,
};

const SUBSCRIBERS: usize = 50;
const EVENTS: usize = 1_000;
const BATCH: usize = 10;

fn events() -> Vec<Arc<Event>> {
    let bus = EventBus::default();
    let job = Uuid::now_v7();
    (0..EVENTS)
        .map(|i| {
            bus.publish(JobProgress {
                job_id: job,
                note_id: None,
                progress: (i % 100) as u8,
                message: None,
            })
        })
        .collect()
}

/// Fans `events` out in batches to `subs`, draining every outbox after
/// each batch; the sequence numbers each subscriber received.
fn fan_out_drained(
    hub: &FanoutHub,
    subs: &[HubSubscription],
    events: &[Arc<Event>],
) -> Vec<Vec<u64>> {
    let mut received = vec![Vec::new(); subs.len()];
    let mut sink = Vec::new();
    for batch in events.chunks(BATCH) {
        hub.fan_out(batch);
        for (sub, got) in subs.iter().zip(&mut received) {
            sub.outbox().drain_into(&mut sink);
            for item in sink.drain(..) {
                match item {
                    Outgoing::Event(ev) => got.push(ev.seq()),
                    other => panic!("not an event: {other:?}"),
                }
            }
        }
    }
    received
}

fn check(filter: Option<&str>) {
    let events = events();
    let hub = FanoutHub::new("test");
    let subs: Vec<HubSubscription> = (0..SUBSCRIBERS)
        .map(|_| {
            let sub = hub.subscribe(SubscribeOptions {
                filter: EventFilter::all(),
                principal: Principal::anonymous(),
                limits: OutboxLimits::default(),
                policy: OverflowPolicy::DropAndCount,
                wire: WireForm::Flat,
            });
            if let Some(pattern) = filter {
                sub.set_filter(Some(
                    EventFilter::all().with_topics(vec![TopicPattern::parse(pattern).unwrap()]),
                ));
            }
            sub
        })
        .collect();
    let received = fan_out_drained(&hub, &subs, &events);
    let sent: Vec<u64> = events.iter().map(|e| e.seq()).collect();
    for (i, got) in received.iter().enumerate() {
        assert_eq!(got, &sent, "subscriber {i}");
    }
    assert_eq!(hub.dropped(), 0);
    assert_eq!(hub.delivered(), (EVENTS * SUBSCRIBERS) as u64);
}

#[test]
fn drained_outboxes_get_every_event_in_order() {
    check(None);
}

#[test]
fn a_filter_set_after_subscribing_that_every_event_passes_lets_every_event_through() {
    check(Some("jo*"));
}
