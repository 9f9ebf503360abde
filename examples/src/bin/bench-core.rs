//! `bench-core`: in-process measurements of `event-core` for
//! `cargo xtask bench` (build it with `--release`).
//!
//! * `publish` — nanoseconds per [`EventBus::publish`] with S subscribers.
//!   `hub`: S connections subscribed to one [`FanoutHub`] registered on the
//!   bus (how the WebSocket and SSE transports subscribe), each drained by
//!   its own task. `bus`: S plain bus subscriptions, each awaited by its own
//!   task. Only the `publish` calls are timed; between chunks the publisher
//!   waits for the hub to catch up, so nothing lags.
//! * `telemetry` — the same bus with a hub of 100 drained connections, with
//!   and without event-telemetry's `TelemetrySink` (JSON log lines to a
//!   discarding writer, Prometheus instruments): sustained events/s and
//!   process CPU time per event, runs alternating, each on a fresh runtime.
//!
//! Each prints one JSON object per line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use event_core::bus::{BusConfig, SeqStart};
use event_core::{
    EventBus, EventFilter, FanoutHub, HubSubscription, JobProgress, OutboxLimits, OverflowPolicy,
    Principal, Received, ServerEvent, SinkRunner, SinkStats, SubscribeOptions, Uuid, WireForm,
};
use serde_json::{Value, json};

/// In-process benchmarks of the event bus.
#[derive(Debug, Parser)]
#[command(name = "bench-core", about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// ns per publish with 0, 100, … subscribers.
    Publish {
        /// Subscriber counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,100,10000")]
        subscribers: Vec<usize>,
        /// How subscribers are attached.
        #[arg(long, value_enum, default_value = "hub")]
        via: Via,
        /// Events timed per subscriber count.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
    },
    /// Bus throughput and CPU per event with and without the telemetry sink.
    Telemetry {
        /// Events per run.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Runs of each variant, alternating (medians are reported).
        #[arg(long, default_value_t = 5)]
        runs: u32,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Via {
    /// Connections of a FanoutHub registered on the bus.
    Hub,
    /// Plain bus subscriptions.
    Bus,
}

/// Events published between waits for the consumers.
const CHUNK: usize = 256;

fn probe(n: u64) -> ServerEvent {
    // 256 bytes of flat JSON, like loadgen's events.
    let mut message = format!("t=0;n={n};");
    message.extend(std::iter::repeat_n('x', 128 - message.len()));
    ServerEvent::JobProgress(JobProgress {
        job_id: Uuid::from_u128(0x0197c0de_5e1a_7a00_8000_00000000b0b0),
        note_id: None,
        progress: 50,
        message: Some(message),
    })
}

fn bus() -> EventBus {
    EventBus::new(BusConfig {
        capacity: 4096,
        replay_size: 1024,
        seq_start: SeqStart::At(1),
    })
}

/// Subscribes `n` connections to `hub`, each drained (and its events
/// rendered) by its own task, as a transport's connection would.
fn hub_connections(hub: &FanoutHub, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let sub: HubSubscription = hub.subscribe(SubscribeOptions {
                filter: EventFilter::all(),
                principal: Principal::anonymous(),
                limits: OutboxLimits::default(),
                policy: OverflowPolicy::DropAndCount,
                wire: WireForm::Flat,
            });
            tokio::spawn(async move {
                let mut batch = Vec::new();
                loop {
                    sub.outbox().ready().await;
                    sub.outbox().drain_into(&mut batch);
                    for item in batch.drain(..) {
                        if let event_core::Outgoing::Event(ev) = item {
                            std::hint::black_box(ev.json());
                        }
                    }
                }
            })
        })
        .collect()
}

/// Waits until a sink has been handed `count` events (or 10 s passed).
async fn caught_up(stats: &SinkStats, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.snapshot().delivered < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

async fn publish_cost(subscribers: usize, via: Via, events: u64) -> Value {
    let bus = bus();
    let hub = FanoutHub::new("bench");
    let mut runner = SinkRunner::new(&bus);
    let hub_stats = runner.register(Arc::new(hub.clone()));
    let tasks = match via {
        Via::Hub => hub_connections(&hub, subscribers),
        Via::Bus => (0..subscribers)
            .map(|_| {
                let mut sub = bus.subscribe();
                tokio::spawn(async move {
                    while let Received::Event(_) | Received::Lagged(_) = sub.recv().await {}
                })
            })
            .collect(),
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut published = 0u64;
    let mut timed = Duration::ZERO;
    let mut chunks = Vec::new();
    let warmup = (events / 10).max(CHUNK as u64);
    while published < events + warmup {
        let chunk: Vec<ServerEvent> = (0..CHUNK as u64).map(|i| probe(published + i)).collect();
        let started = Instant::now();
        for ev in chunk {
            std::hint::black_box(bus.publish(ev));
        }
        let took = started.elapsed();
        if published >= warmup {
            timed += took;
            chunks.push(took);
        }
        published += CHUNK as u64;
        caught_up(&hub_stats, published).await;
    }
    let measured = published - warmup;
    let lagged = hub_stats.snapshot().lagged;
    for t in tasks {
        t.abort();
    }
    runner.shutdown(Duration::from_secs(1)).await;
    // The median chunk is the cost when the publisher is not preempted (the
    // machine is shared); the mean includes preemptions.
    chunks.sort();
    let per_publish = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_nanos() as f64 / CHUNK as f64);
    json!({
        "bench": "publish",
        "via": format!("{via:?}").to_lowercase(),
        "subscribers": subscribers,
        "events": measured,
        "ns_per_publish": per_publish(chunks.get(chunks.len() / 2)),
        "mean_ns_per_publish": timed.as_nanos() as f64 / measured as f64,
        "p99_chunk_ns_per_publish": per_publish(chunks.get(chunks.len() * 99 / 100)),
        "hub_lagged": lagged,
    })
}

/// CPU seconds of every live thread of this process, with nanosecond
/// resolution (`/proc/self/task/*/schedstat`; `/proc/self/stat` counts in
/// 10 ms ticks, too coarse for a 1 % difference).
fn process_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// One throughput run: events/s and CPU ns per event, with every sink
/// keeping up (the publisher waits for the slowest between chunks).
async fn throughput(events: u64, telemetry: Option<&event_telemetry::PrometheusMetrics>) -> Value {
    let bus = bus();
    let hub = FanoutHub::new("bench");
    let mut runner = SinkRunner::new(&bus);
    let mut sinks = vec![runner.register(Arc::new(hub.clone()))];
    if let Some(metrics) = telemetry {
        sinks
            .push(runner.register(
                event_telemetry::TelemetrySink::with_meter(&metrics.meter()).into_sink(),
            ));
    }
    let tasks = hub_connections(&hub, 100);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cpu0 = process_cpu();
    let started = Instant::now();
    let mut published = 0u64;
    while published < events {
        for i in 0..CHUNK as u64 {
            bus.publish(probe(published + i));
        }
        published += CHUNK as u64;
        for s in &sinks {
            caught_up(s, published).await;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu0;
    for t in tasks {
        t.abort();
    }
    runner.shutdown(Duration::from_secs(1)).await;
    json!({
        "events_per_s": published as f64 / wall,
        "cpu_ns_per_event": cpu * 1e9 / published as f64,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One throughput run on a fresh runtime; with `dispatch`, every thread of
/// it (and the publishing thread) logs through the telemetry subscriber.
fn telemetry_run(
    events: u64,
    telemetry: Option<(&tracing::Dispatch, &event_telemetry::PrometheusMetrics)>,
) -> Result<Value, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some((dispatch, _)) = telemetry {
        let dispatch = dispatch.clone();
        builder.on_thread_start(move || {
            // The worker threads live as long as the runtime: keep the
            // default for their whole life.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        });
    }
    let rt = builder.build().map_err(|e| e.to_string())?;
    let run = || rt.block_on(throughput(events, telemetry.map(|(_, m)| m)));
    Ok(match telemetry {
        Some((dispatch, _)) => tracing::dispatcher::with_default(dispatch, run),
        None => run(),
    })
}

/// Alternates runs without and with telemetry (so both see the same machine
/// load) and reports the medians.
fn telemetry_overhead(events: u64, runs: u32) -> Result<Value, String> {
    let config = event_telemetry::TelemetryConfig {
        format: event_telemetry::LogFormat::Json,
        filter: Some("info".into()),
        ..Default::default()
    };
    let subscriber =
        event_telemetry::subscriber(&config, std::io::sink).map_err(|e| e.to_string())?;
    let dispatch = tracing::Dispatch::new(subscriber);
    let metrics = event_telemetry::PrometheusMetrics::new("bench").map_err(|e| e.to_string())?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        without.push(telemetry_run(events, None)?);
        with.push(telemetry_run(events, Some((&dispatch, &metrics)))?);
    }
    let pick =
        |runs: &[Value], key: &str| median(runs.iter().filter_map(|r| r[key].as_f64()).collect());
    let loss: Vec<f64> = without
        .iter()
        .zip(&with)
        .filter_map(|(a, b)| {
            Some((1.0 - b["events_per_s"].as_f64()? / a["events_per_s"].as_f64()?) * 100.0)
        })
        .collect();
    let cpu: Vec<f64> = without
        .iter()
        .zip(&with)
        .filter_map(|(a, b)| {
            Some((b["cpu_ns_per_event"].as_f64()? / a["cpu_ns_per_event"].as_f64()? - 1.0) * 100.0)
        })
        .collect();
    let base_cpu = pick(&without, "cpu_ns_per_event");
    let tel_cpu = pick(&with, "cpu_ns_per_event");
    Ok(json!({
        "bench": "telemetry",
        "events": events,
        "hub_connections": 100,
        "without": {"events_per_s": pick(&without, "events_per_s"), "cpu_ns_per_event": base_cpu},
        "with": {"events_per_s": pick(&with, "events_per_s"), "cpu_ns_per_event": tel_cpu},
        "added_cpu_ns_per_event": tel_cpu - base_cpu,
        "throughput_loss_pct": median(loss.clone()),
        "throughput_loss_pct_runs": loss,
        "cpu_overhead_pct": median(cpu.clone()),
        "cpu_overhead_pct_runs": cpu,
        "runs": runs,
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let outcome = match args.command {
        Command::Publish {
            subscribers,
            via,
            events,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .map(|rt| {
                // The publisher runs on this thread; subscribers on the workers.
                for s in subscribers {
                    println!("{}", rt.block_on(publish_cost(s, via, events)));
                }
            }),
        Command::Telemetry { events, runs } => {
            telemetry_overhead(events, runs).map(|v| println!("{v}"))
        }
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-core: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
