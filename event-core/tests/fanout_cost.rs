//! What `FanoutHub::fan_out` costs per delivery, in-process (no sockets):
//! 2,000 subscribers, 10,000 `JobProgress` events in batches of 10, the
//! outboxes drained between batches (not timed). A measurement, not a
//! check: ignored by default; run it in release,
//!
//! ```text
//! cargo test -p event-core --release --test fanout_cost -- --ignored --nocapture
//! ```
//!
//! and compare commits on the same machine (BENCHMARKS.md, analysis).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use event_core::{
    Event, EventBus, EventFilter, FanoutHub, HubSubscription, JobProgress, OutboxLimits,
    OverflowPolicy, Principal, SubscribeOptions, Uuid, WireForm,
};

const SUBSCRIBERS: usize = 2_000;
const EVENTS: usize = 10_000;
const BATCH: usize = 10;
const ROUNDS: usize = 5;

fn events(bus: &EventBus) -> Vec<Arc<Event>> {
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

/// The fastest of [`ROUNDS`] runs: nanoseconds per delivery.
fn measure(hub: &FanoutHub, subs: &[HubSubscription], events: &[Arc<Event>]) -> f64 {
    let mut best = Duration::MAX;
    let mut sink = Vec::new();
    for _ in 0..ROUNDS {
        let mut spent = Duration::ZERO;
        for batch in events.chunks(BATCH) {
            let started = Instant::now();
            hub.fan_out(batch);
            spent += started.elapsed();
            for sub in subs {
                sub.outbox().drain_into(&mut sink);
                sink.clear();
            }
        }
        best = best.min(spent);
    }
    best.as_nanos() as f64 / (events.len() * subs.len()) as f64
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn fan_out_cost_per_delivery() {
    let bus = EventBus::default();
    let events = events(&bus);
    let hub = FanoutHub::new("bench");
    let subs: Vec<HubSubscription> = (0..SUBSCRIBERS)
        .map(|_| {
            hub.subscribe(SubscribeOptions {
                filter: EventFilter::all(),
                principal: Principal::anonymous(),
                limits: OutboxLimits::default(),
                policy: OverflowPolicy::DropAndCount,
                wire: WireForm::Flat,
            })
        })
        .collect();
    let ns = measure(&hub, &subs, &events);
    println!(
        "fan_out: {SUBSCRIBERS} subscribers, {EVENTS} events in batches of {BATCH}: {ns:.2} ns per delivery (best of {ROUNDS})"
    );
    assert_eq!(hub.dropped(), 0);
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn fan_out_cost_per_delivery_with_a_filter_set_after_subscribing() {
    let bus = EventBus::default();
    let events = events(&bus);
    let hub = FanoutHub::new("bench");
    let subs: Vec<HubSubscription> = (0..SUBSCRIBERS)
        .map(|_| {
            let sub = hub.subscribe(SubscribeOptions {
                filter: EventFilter::all(),
                principal: Principal::anonymous(),
                limits: OutboxLimits::default(),
                policy: OverflowPolicy::DropAndCount,
                wire: WireForm::Flat,
            });
            // What a WebSocket `subscribe` with `topics` sets (every event
            // passes it: the cost measured is the check).
            sub.set_filter(Some(
                EventFilter::all()
                    .with_topics(vec![event_core::TopicPattern::parse("jo*").unwrap()]),
            ));
            sub
        })
        .collect();
    let ns = measure(&hub, &subs, &events);
    println!(
        "fan_out with a filter set after subscribing: {SUBSCRIBERS} subscribers, {EVENTS} events in batches of {BATCH}: {ns:.2} ns per delivery (best of {ROUNDS})"
    );
    assert_eq!(hub.dropped(), 0);
    assert_eq!(hub.delivered(), (ROUNDS * EVENTS * SUBSCRIBERS) as u64);
}

/// Nanoseconds per push into outboxes that are all full and never drained
/// (saturation: every push takes the overflow path), best of [`ROUNDS`].
fn measure_saturated(policy: OverflowPolicy, jobs: usize) -> f64 {
    let bus = EventBus::default();
    let ids: Vec<Uuid> = (0..jobs).map(|_| Uuid::now_v7()).collect();
    let events: Vec<Arc<Event>> = (0..EVENTS)
        .map(|i| {
            bus.publish(JobProgress {
                job_id: ids[i % jobs],
                note_id: None,
                progress: (i % 100) as u8,
                message: None,
            })
        })
        .collect();
    let hub = FanoutHub::new("bench");
    let _subs: Vec<HubSubscription> = (0..SUBSCRIBERS)
        .map(|_| {
            hub.subscribe(SubscribeOptions {
                filter: EventFilter::all(),
                principal: Principal::anonymous(),
                limits: OutboxLimits {
                    max_messages: 2,
                    max_bytes: 1 << 20,
                },
                policy,
                wire: WireForm::Flat,
            })
        })
        .collect();
    // Fill every outbox (and, coalescing, every key) first.
    hub.fan_out(&events);
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for batch in events.chunks(BATCH) {
            hub.fan_out(batch);
        }
        best = best.min(started.elapsed());
    }
    best.as_nanos() as f64 / (events.len() * SUBSCRIBERS) as f64
}

#[test]
#[ignore = "a measurement; run in release with --ignored --nocapture"]
fn fan_out_cost_per_push_under_saturation() {
    let drop = measure_saturated(OverflowPolicy::DropAndCount, 1);
    let close = measure_saturated(OverflowPolicy::Close, 1);
    let one = measure_saturated(OverflowPolicy::Coalesce, 1);
    let many = measure_saturated(OverflowPolicy::Coalesce, 1000);
    println!(
        "fan_out into full outboxes, {SUBSCRIBERS} subscribers, {EVENTS} events in batches of {BATCH}, ns per push: \
         DropAndCount {drop:.2}, Close {close:.2}, Coalesce one job {one:.2}, Coalesce 1,000 jobs {many:.2} (best of {ROUNDS})"
    );
}
