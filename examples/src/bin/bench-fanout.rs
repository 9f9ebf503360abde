//! `bench-fanout`: what [`FanoutHub::fan_out`] costs per delivery,
//! in-process (no sockets, no tasks), for `cargo xtask bench --only
//! fanout-cost` (build it with `--profile profiling` or `--release`).
//!
//! S subscribers, N `JobProgress` events in batches of 10, best of R
//! rounds:
//!
//! * `drained` — outboxes with room: every outbox is drained between
//!   batches (not timed). Nanoseconds per delivery.
//! * `filtered` — the same with a filter set on every subscriber after it
//!   subscribed (what a WebSocket `subscribe` with `topics` sets; every
//!   event passes it, so what is measured is the check).
//! * `saturated` — outboxes that are all full and never drained, so every
//!   push takes the overflow path: nanoseconds per push with each overflow
//!   policy (coalescing with one job and with 1,000 jobs).
//!
//! Each prints one JSON object per line. A run whose hub dropped events
//! where it must not (or delivered fewer than it was given) fails instead
//! of printing a figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use event_core::{
    Event, EventBus, EventFilter, FanoutHub, HubSubscription, JobProgress, OutboxLimits,
    OverflowPolicy, Principal, SubscribeOptions, TopicPattern, Uuid, WireForm,
};
use serde_json::{Value, json};

/// Events per `fan_out` call.
const BATCH: usize = 10;

/// In-process cost of the fan-out hub.
#[derive(Debug, Parser)]
#[command(name = "bench-fanout", about)]
struct Args {
    /// Subscribers of the hub.
    #[arg(long, default_value_t = 2_000)]
    subscribers: usize,
    /// Events fanned out per round.
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Rounds of each measurement (the fastest is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// `events` `JobProgress` events of `jobs` jobs (in turn), published on a
/// bus of their own.
fn events(events: usize, jobs: usize) -> Vec<Arc<Event>> {
    let bus = EventBus::default();
    let ids: Vec<Uuid> = (0..jobs.max(1)).map(|_| Uuid::now_v7()).collect();
    (0..events)
        .map(|i| {
            bus.publish(JobProgress {
                job_id: ids[i % ids.len()],
                note_id: None,
                progress: (i % 100) as u8,
                message: None,
            })
        })
        .collect()
}

fn subscribe(hub: &FanoutHub, limits: OutboxLimits, policy: OverflowPolicy) -> HubSubscription {
    hub.subscribe(SubscribeOptions {
        filter: EventFilter::all(),
        principal: Principal::anonymous(),
        limits,
        policy,
        wire: WireForm::Flat,
    })
}

/// `drained` or, with `filter`, `filtered`: nanoseconds per delivery, the
/// fastest of the rounds.
fn drained(args: &Args, filter: Option<&TopicPattern>) -> Result<Value, String> {
    let events = events(args.events, 1);
    let hub = FanoutHub::new("bench");
    let subs: Vec<HubSubscription> = (0..args.subscribers)
        .map(|_| {
            let sub = subscribe(&hub, OutboxLimits::default(), OverflowPolicy::DropAndCount);
            if let Some(pattern) = filter {
                sub.set_filter(Some(EventFilter::all().with_topics(vec![pattern.clone()])));
            }
            sub
        })
        .collect();
    let rounds = args.rounds.max(1);
    let mut best = Duration::MAX;
    let mut sink = Vec::new();
    for _ in 0..rounds {
        let mut spent = Duration::ZERO;
        for batch in events.chunks(BATCH) {
            let started = Instant::now();
            hub.fan_out(batch);
            spent += started.elapsed();
            for sub in &subs {
                sub.outbox().drain_into(&mut sink);
                sink.clear();
            }
        }
        best = best.min(spent);
    }
    let deliveries = (events.len() * subs.len()) as u64;
    // Outboxes with room drop nothing, and a filter every event passes
    // lets every event through: otherwise the figure is of another path.
    if hub.dropped() != 0 {
        return Err(format!(
            "{} events dropped into drained outboxes",
            hub.dropped()
        ));
    }
    if hub.delivered() != deliveries * rounds as u64 {
        return Err(format!(
            "{} deliveries, {} expected",
            hub.delivered(),
            deliveries * rounds as u64
        ));
    }
    Ok(json!({
        "measure": if filter.is_some() { "filtered" } else { "drained" },
        "subscribers": args.subscribers,
        "events": args.events,
        "batch": BATCH,
        "rounds": rounds,
        "ns_per_delivery": best.as_nanos() as f64 / deliveries.max(1) as f64,
    }))
}

/// Nanoseconds per push into outboxes that are all full and never drained
/// (every push takes the overflow path), the fastest of the rounds.
fn saturated(args: &Args, policy: OverflowPolicy, jobs: usize) -> f64 {
    let events = events(args.events, jobs);
    let hub = FanoutHub::new("bench");
    let limits = OutboxLimits {
        max_messages: 2,
        max_bytes: 1 << 20,
    };
    let _subs: Vec<HubSubscription> = (0..args.subscribers)
        .map(|_| subscribe(&hub, limits, policy))
        .collect();
    // Fill every outbox (and, coalescing, every key) first.
    hub.fan_out(&events);
    let mut best = Duration::MAX;
    for _ in 0..args.rounds.max(1) {
        let started = Instant::now();
        for batch in events.chunks(BATCH) {
            hub.fan_out(batch);
        }
        best = best.min(started.elapsed());
    }
    best.as_nanos() as f64 / (events.len() * args.subscribers).max(1) as f64
}

fn run(args: &Args) -> Result<(), String> {
    println!("{}", drained(args, None)?);
    let pattern = TopicPattern::parse("jo*").map_err(|e| e.to_string())?;
    println!("{}", drained(args, Some(&pattern))?);
    let pushes = [
        ("DropAndCount", OverflowPolicy::DropAndCount, 1),
        ("Close", OverflowPolicy::Close, 1),
        ("Coalesce, one job", OverflowPolicy::Coalesce, 1),
        ("Coalesce, 1,000 jobs", OverflowPolicy::Coalesce, 1000),
    ];
    // A list, not an object: the policies keep this order in the table.
    let ns_per_push: Vec<Value> = pushes
        .into_iter()
        .map(|(name, policy, jobs)| json!({"policy": name, "ns": saturated(args, policy, jobs)}))
        .collect();
    println!(
        "{}",
        json!({
            "measure": "saturated",
            "subscribers": args.subscribers,
            "events": args.events,
            "batch": BATCH,
            "rounds": args.rounds.max(1),
            "ns_per_push": ns_per_push,
        })
    );
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(&Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-fanout: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
