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
//!   process CPU time per event.
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
        /// Runs of each variant (the best is reported).
        #[arg(long, default_value_t = 3)]
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
    let mut worst_chunk = Duration::ZERO;
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
            worst_chunk = worst_chunk.max(took);
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
    json!({
        "bench": "publish",
        "via": format!("{via:?}").to_lowercase(),
        "subscribers": subscribers,
        "events": measured,
        "ns_per_publish": timed.as_nanos() as f64 / measured as f64,
        "worst_chunk_ns_per_publish": worst_chunk.as_nanos() as f64 / CHUNK as f64,
        "hub_lagged": lagged,
    })
}

fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let rest = stat.rfind(')').map(|i| &stat[i + 1..]).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
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

fn best(runs: &[Value], key: &str, lower_is_better: bool) -> f64 {
    let values = runs.iter().filter_map(|r| r[key].as_f64());
    if lower_is_better {
        values.fold(f64::INFINITY, f64::min)
    } else {
        values.fold(0.0, f64::max)
    }
}

async fn telemetry_overhead(events: u64, runs: u32) -> Result<Value, String> {
    let mut without = Vec::new();
    for _ in 0..runs {
        without.push(throughput(events, None).await);
    }
    // From here on every tracing call in the process goes to the JSON
    // formatter (writing to a discarding writer), as in a host with logging on.
    let config = event_telemetry::TelemetryConfig {
        format: event_telemetry::LogFormat::Json,
        filter: Some("info".into()),
        ..Default::default()
    };
    let subscriber =
        event_telemetry::subscriber(&config, std::io::sink).map_err(|e| e.to_string())?;
    tracing::subscriber::set_global_default(subscriber).map_err(|e| e.to_string())?;
    let metrics = event_telemetry::PrometheusMetrics::new("bench").map_err(|e| e.to_string())?;
    let mut with = Vec::new();
    for _ in 0..runs {
        with.push(throughput(events, Some(&metrics)).await);
    }
    let base_rate = best(&without, "events_per_s", false);
    let tel_rate = best(&with, "events_per_s", false);
    let base_cpu = best(&without, "cpu_ns_per_event", true);
    let tel_cpu = best(&with, "cpu_ns_per_event", true);
    Ok(json!({
        "bench": "telemetry",
        "events": events,
        "hub_connections": 100,
        "without": {"events_per_s": base_rate, "cpu_ns_per_event": base_cpu},
        "with": {"events_per_s": tel_rate, "cpu_ns_per_event": tel_cpu},
        "throughput_loss_pct": (1.0 - tel_rate / base_rate) * 100.0,
        "cpu_overhead_pct": (tel_cpu / base_cpu - 1.0) * 100.0,
        "runs": runs,
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-core: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The publisher runs on this thread; subscribers on the runtime's workers.
    runtime.block_on(async {
        match args.command {
            Command::Publish {
                subscribers,
                via,
                events,
            } => {
                for s in subscribers {
                    println!("{}", publish_cost(s, via, events).await);
                }
                std::process::ExitCode::SUCCESS
            }
            Command::Telemetry { events, runs } => match telemetry_overhead(events, runs).await {
                Ok(v) => {
                    println!("{v}");
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("bench-core: telemetry: {e}");
                    std::process::ExitCode::FAILURE
                }
            },
        }
    })
}
