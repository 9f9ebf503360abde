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
//!   Between chunks the publisher waits until every sink has every event
//!   (woken by the sinks' progress, no polling). Then, on one thread and
//!   without contention, the direct costs: CPU ns to mirror one event
//!   (`TelemetrySink::deliver_batch` under the JSON subscriber) and to record
//!   one client write into the transports' Prometheus instruments
//!   (`TransportMetrics::record_write`).
//!
//! Each prints one JSON object per line.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use event_core::bus::{BusConfig, SeqStart};
use event_core::{
    EventBus, EventFilter, EventSink, FanoutHub, HubSubscription, JobProgress, OutboxLimits,
    OverflowPolicy, Principal, Received, ServerEvent, SinkRunner, SinkStats, SubscribeOptions,
    Uuid, WireForm,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

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
        /// Events timed per subscriber count and round.
        #[arg(long, default_value_t = 100_000)]
        events: u64,
        /// Rounds over all subscriber counts, interleaved (the median round
        /// of each count is reported: one run drifts with the machine).
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// Bus throughput and CPU per event with and without the telemetry sink.
    Telemetry {
        /// Events per run.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Runs of each variant, alternating (medians are reported).
        #[arg(long, default_value_t = 5)]
        runs: u32,
        /// Publish `JobCompleted` (mirrored at INFO, so every event is
        /// formatted as a JSON log line) instead of `JobProgress` (DEBUG,
        /// filtered out by the default `info` filter).
        #[arg(long)]
        info: bool,
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

fn completed(n: u64) -> ServerEvent {
    ServerEvent::JobCompleted(event_core::JobCompleted {
        job_id: Uuid::from_u128(u128::from(n)),
        job_type: "Embedding".into(),
        note_id: None,
        duration_ms: Some(n % 5000),
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

/// The round with the median `ns_per_publish`, with every round's figure
/// added as `rounds_ns_per_publish`.
fn median_round(mut runs: Vec<Value>) -> Value {
    let ns = |v: &Value| v["ns_per_publish"].as_f64().unwrap_or(f64::MAX);
    runs.sort_by(|a, b| ns(a).total_cmp(&ns(b)));
    let all: Vec<f64> = runs.iter().map(ns).collect();
    let mut median = runs.swap_remove(runs.len() / 2);
    median["rounds_ns_per_publish"] = json!(all);
    median
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

/// A sink that does nothing: the cost of having one more sink at all.
struct NoopSink;

#[event_core::async_trait]
impl event_core::EventSink for NoopSink {
    fn name(&self) -> &str {
        "noop"
    }

    async fn deliver(&self, event: Arc<event_core::Event>) -> Result<(), event_core::SinkError> {
        std::hint::black_box(event);
        Ok(())
    }
}

/// The extra sink of a throughput run.
#[derive(Clone, Copy)]
enum Extra<'a> {
    None,
    Noop,
    Telemetry(&'a event_telemetry::PrometheusMetrics),
}

/// A sink wrapped to tell the publisher how far it got: the count of events
/// it has finished, and a wake-up after each batch. Every sink of a
/// throughput run is wrapped alike, so the wrapper's cost is in every
/// variant.
struct Tracked {
    inner: Arc<dyn EventSink>,
    done: AtomicU64,
    lagged: AtomicU64,
    progress: Arc<Notify>,
}

impl Tracked {
    fn new(inner: Arc<dyn EventSink>, progress: &Arc<Notify>) -> Arc<Tracked> {
        Arc::new(Tracked {
            inner,
            done: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
            progress: progress.clone(),
        })
    }

    fn finished(&self, n: usize) {
        self.done.fetch_add(n as u64, Ordering::Release);
        self.progress.notify_waiters();
    }
}

#[event_core::async_trait]
impl EventSink for Tracked {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn deliver(&self, event: Arc<event_core::Event>) -> Result<(), event_core::SinkError> {
        let result = self.inner.deliver(event).await;
        self.finished(1);
        result
    }

    async fn deliver_batch(
        &self,
        events: Vec<Arc<event_core::Event>>,
    ) -> Result<(), event_core::SinkError> {
        let n = events.len();
        let result = self.inner.deliver_batch(events).await;
        self.finished(n);
        result
    }

    fn recover_lagged(&self) -> bool {
        self.inner.recover_lagged()
    }

    fn intake_capacity(&self) -> Option<usize> {
        self.inner.intake_capacity()
    }

    async fn on_lag(&self, missed: u64) {
        self.lagged.fetch_add(missed, Ordering::Relaxed);
        // Missed events will never be delivered; count them as done so the
        // publisher does not wait for them (the run reports the lag).
        self.finished(missed as usize);
        self.inner.on_lag(missed).await;
    }
}

/// Waits until every sink has finished `target` events (false after 10 s
/// without reaching it).
async fn reached(progress: &Notify, sinks: &[Arc<Tracked>], target: u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let notified = progress.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so a batch finishing in between
        // still wakes this wait.
        notified.as_mut().enable();
        if sinks
            .iter()
            .all(|s| s.done.load(Ordering::Acquire) >= target)
        {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return false;
        }
    }
}

/// One throughput run: events/s and CPU ns per event, with every sink
/// keeping up: after each chunk the publisher waits (woken by the sinks'
/// progress) until every sink has every event.
async fn throughput(events: u64, extra: Extra<'_>, make: fn(u64) -> ServerEvent) -> Value {
    let bus = bus();
    let hub = FanoutHub::new("bench");
    let mut runner = SinkRunner::new(&bus);
    let progress = Arc::new(Notify::new());
    let mut sinks = vec![Tracked::new(Arc::new(hub.clone()), &progress)];
    match extra {
        Extra::None => {}
        Extra::Noop => sinks.push(Tracked::new(Arc::new(NoopSink), &progress)),
        Extra::Telemetry(metrics) => sinks.push(Tracked::new(
            event_telemetry::TelemetrySink::with_meter(&metrics.meter()).into_sink(),
            &progress,
        )),
    }
    for sink in &sinks {
        runner.register(sink.clone());
    }
    let tasks = hub_connections(&hub, 100);
    // The sinks' tasks subscribe when they first run.
    tokio::task::yield_now().await;
    let cpu0 = process_cpu();
    let started = Instant::now();
    let mut published = 0u64;
    let mut complete = true;
    while published < events {
        for i in 0..CHUNK as u64 {
            bus.publish(make(published + i));
        }
        published += CHUNK as u64;
        complete &= reached(&progress, &sinks, published).await;
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = process_cpu() - cpu0;
    let lagged: u64 = sinks.iter().map(|s| s.lagged.load(Ordering::Relaxed)).sum();
    for t in tasks {
        t.abort();
    }
    runner.shutdown(Duration::from_secs(1)).await;
    json!({
        "events_per_s": published as f64 / wall,
        "cpu_ns_per_event": cpu * 1e9 / published as f64,
        "lagged": lagged,
        "complete": complete,
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
    make: fn(u64) -> ServerEvent,
    extra: Extra<'_>,
    dispatch: Option<&tracing::Dispatch>,
) -> Result<Value, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(dispatch) = dispatch {
        let dispatch = dispatch.clone();
        builder.on_thread_start(move || {
            // The worker threads live as long as the runtime: keep the
            // default for their whole life.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        });
    }
    let rt = builder.build().map_err(|e| e.to_string())?;
    let run = || rt.block_on(throughput(events, extra, make));
    Ok(match dispatch {
        Some(dispatch) => tracing::dispatcher::with_default(dispatch, run),
        None => run(),
    })
}

/// Percent changes of `key` between paired runs: `(b / a - 1) × 100`.
fn changes(a: &[Value], b: &[Value], key: &str) -> Vec<f64> {
    a.iter()
        .zip(b)
        .filter_map(|(a, b)| Some((b[key].as_f64()? / a[key].as_f64()? - 1.0) * 100.0))
        .collect()
}

/// Rotates runs without an extra sink, with a no-op sink, and with
/// telemetry (so all see the same machine load) and reports medians. The
/// no-op variant separates the cost of one more sink from telemetry's own.
/// Nanoseconds per iteration of `f` run `iterations` times on this thread:
/// the best of 5 repetitions (a repetition that was preempted or shared
/// its core is slower, never faster; the thread-CPU clock in `/proc`
/// moves only at scheduler ticks, too coarse here).
fn best_ns(iterations: u64, mut f: impl FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..iterations {
                f();
            }
            t0.elapsed().as_nanos() as f64 / iterations as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// ns per event of the telemetry sink alone: 4,096 distinct events in
/// batches of 256 (as the runner hands them over), 10 passes, on this
/// thread with `dispatch` as its subscriber.
fn mirror_cost(
    make: fn(u64) -> ServerEvent,
    metrics: &event_telemetry::PrometheusMetrics,
    dispatch: &tracing::Dispatch,
) -> Result<f64, String> {
    const DISTINCT: u64 = 4096;
    const PASSES: u64 = 10;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| e.to_string())?;
    let bus = bus();
    let mut sub = bus.subscribe();
    let events: Vec<Arc<event_core::Event>> = rt.block_on(async {
        let mut out = Vec::new();
        for n in 0..DISTINCT {
            bus.publish(make(n));
            if let Received::Event(ev) = sub.recv().await {
                out.push(ev);
            }
        }
        out
    });
    let sink = event_telemetry::TelemetrySink::with_meter(&metrics.meter());
    let per_pass = tracing::dispatcher::with_default(dispatch, || {
        best_ns(PASSES, || {
            for chunk in events.chunks(CHUNK) {
                // Infallible: the telemetry sink never refuses a batch.
                let _ = rt.block_on(sink.deliver_batch(chunk.to_vec()));
            }
        })
    });
    Ok(per_pass / events.len() as f64)
}

/// ns per client write recorded into a transport's instruments, with the
/// Prometheus provider installed globally as the host does: the whole
/// `record_write` (events sent for the two types of a five-event write and
/// one latency sample), and its two parts.
fn write_metrics_cost(metrics: &event_telemetry::PrometheusMetrics) -> Value {
    const WRITES: u64 = 200_000;
    metrics.set_global();
    let instruments = event_core::TransportMetrics::new(event_core::Transport::Sse);
    let mut batch = event_core::metrics::WrittenBatch::new();
    let now = Instant::now();
    for _ in 0..4 {
        batch.event(event_core::EventKind::JobProgress, now);
    }
    batch.event(event_core::EventKind::QueueStatus, now);
    json!({
        "record_write": best_ns(WRITES, || instruments.record_write(std::hint::black_box(&batch))),
        "events_sent": best_ns(WRITES, || {
            instruments.events_sent(event_core::EventKind::JobProgress, std::hint::black_box(4))
        }),
        "observe_latency": best_ns(WRITES, || instruments.observe_latency(std::hint::black_box(now))),
    })
}

fn telemetry_overhead(events: u64, runs: u32, info: bool) -> Result<Value, String> {
    let make: fn(u64) -> ServerEvent = if info { completed } else { probe };
    let config = event_telemetry::TelemetryConfig {
        format: event_telemetry::LogFormat::Json,
        filter: Some("info".into()),
        ..Default::default()
    };
    let subscriber =
        event_telemetry::subscriber(&config, std::io::sink).map_err(|e| e.to_string())?;
    let dispatch = tracing::Dispatch::new(subscriber);
    let metrics = event_telemetry::PrometheusMetrics::new("bench").map_err(|e| e.to_string())?;
    let (mut without, mut noop, mut with) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        without.push(telemetry_run(events, make, Extra::None, None)?);
        noop.push(telemetry_run(events, make, Extra::Noop, None)?);
        with.push(telemetry_run(
            events,
            make,
            Extra::Telemetry(&metrics),
            Some(&dispatch),
        )?);
    }
    let pick =
        |runs: &[Value], key: &str| median(runs.iter().filter_map(|r| r[key].as_f64()).collect());
    let summary = |runs: &[Value]| {
        json!({
            "events_per_s": pick(runs, "events_per_s"),
            "cpu_ns_per_event": pick(runs, "cpu_ns_per_event"),
        })
    };
    let loss = |a: &[Value], b: &[Value]| -median(changes(a, b, "events_per_s"));
    let cpu = |a: &[Value], b: &[Value]| median(changes(a, b, "cpu_ns_per_event"));
    // A run in which a sink lagged or never caught up measured something
    // else than sustained throughput: say so instead of reporting it.
    let broken = [&without, &noop, &with]
        .iter()
        .flat_map(|runs| runs.iter())
        .filter(|r| r["complete"] != json!(true) || r["lagged"] != json!(0))
        .count();
    if broken > 0 {
        return Err(format!(
            "{broken} telemetry runs lagged or did not finish; the figures would not be sustained throughput"
        ));
    }
    let mirror_ns = mirror_cost(make, &metrics, &dispatch)?;
    let write_metrics = write_metrics_cost(&metrics);
    Ok(json!({
        "bench": "telemetry",
        "mirror_ns_per_event": mirror_ns,
        "metrics_ns_per_write": write_metrics,
        "mirror_share_of_run_cpu_pct": mirror_ns / pick(&with, "cpu_ns_per_event") * 100.0,
        "event": if info { "JobCompleted" } else { "JobProgress" },
        "events": events,
        "hub_connections": 100,
        "without": summary(&without),
        "noop": summary(&noop),
        "with": summary(&with),
        "added_cpu_ns_per_event": pick(&with, "cpu_ns_per_event") - pick(&without, "cpu_ns_per_event"),
        "throughput_loss_pct": loss(&without, &with),
        "cpu_overhead_pct": cpu(&without, &with),
        "vs_noop_throughput_loss_pct": loss(&noop, &with),
        "vs_noop_cpu_overhead_pct": cpu(&noop, &with),
        "noop_throughput_loss_pct": loss(&without, &noop),
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
            rounds,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
            .map(|rt| {
                // The publisher runs on this thread; subscribers on the workers.
                let mut results: Vec<Vec<Value>> = vec![Vec::new(); subscribers.len()];
                for _ in 0..rounds.max(1) {
                    for (i, s) in subscribers.iter().enumerate() {
                        results[i].push(rt.block_on(publish_cost(*s, via, events)));
                    }
                }
                for runs in results {
                    println!("{}", median_round(runs));
                }
            }),
        Command::Telemetry { events, runs, info } => {
            telemetry_overhead(events, runs, info).map(|v| println!("{v}"))
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
