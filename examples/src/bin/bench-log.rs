//! `bench-log`: the event log's costs, for `cargo xtask bench --only log`
//! (build it with `--release`).
//!
//! * `append` — sustained append: a bus tapped by a
//!   [`LogWriter`] over the log at `--url` (SQLite or
//!   PostgreSQL), `--events` `JobProgress` events of about 256 bytes
//!   published 1,000 at a time as fast as the writer takes them (the
//!   publisher pauses for the writer only while 90,000 are queued, below
//!   the default `EVENT_LOG_MAX_PENDING`, so none is dropped); events/s
//!   from the first publish to the last commit, and the mean batch (events
//!   per commit).
//! * `durable` — what waiting for the commit adds to a publish:
//!   `--producers` concurrent producers each publishing one event at a time,
//!   with [`EventBus::publish_durable`] (the publish API's path) against
//!   plain publishing, p50/p99 per call, runs alternating.
//! * `cluster` — both, in cluster mode, where the JetStream stream at
//!   `--nats` is the log: the sustained rate at which the stream takes
//!   events published as fast as it acknowledges them, and what waiting for
//!   JetStream's acknowledgement ([`EventBus::publish_acked`], the publish
//!   API's path in cluster mode) adds to a publish. Uses a stream of its
//!   own, deleted at the end.
//!
//! Each prints one JSON object per line.

use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use event_core::{
    AckedEvent, BusConfig, EventBus, EventMeta, JobProgress, LogConfig, LogWriter, Uuid,
};
use serde_json::{Value, json};

/// The event log's throughput and latency.
#[derive(Debug, Parser)]
#[command(name = "bench-log", about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sustained append rate.
    Append {
        /// `sqlite://…` or `postgres://…` (an empty log).
        #[arg(long)]
        url: String,
        /// Events to append.
        #[arg(long, default_value_t = 500_000)]
        events: u64,
    },
    /// Added latency of publish_durable.
    Durable {
        /// `sqlite://…` or `postgres://…` (an empty log).
        #[arg(long)]
        url: String,
        /// Concurrent producers.
        #[arg(long, default_value_t = 16)]
        producers: usize,
        /// Publishes per producer and run.
        #[arg(long, default_value_t = 500)]
        per_producer: usize,
        /// Runs of each variant, alternating.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
    /// Both, with a JetStream stream as the log (cluster mode).
    Cluster {
        /// The NATS server(s), `nats://…` (JetStream enabled).
        #[arg(long)]
        nats: String,
        /// Events for the sustained rate.
        #[arg(long, default_value_t = 200_000)]
        events: u64,
        /// Concurrent producers.
        #[arg(long, default_value_t = 16)]
        producers: usize,
        /// Publishes per producer and run.
        #[arg(long, default_value_t = 500)]
        per_producer: usize,
        /// Runs of each variant, alternating.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
}

fn event() -> JobProgress {
    JobProgress {
        job_id: Uuid::now_v7(),
        note_id: Some(Uuid::now_v7()),
        progress: 42,
        message: Some("Embedding chunk 3 of 7 (note text, 2,048 tokens)".into()),
    }
}

async fn append(url: &str, events: u64) -> Result<Value, String> {
    let log = event_log::open(url).await.map_err(|e| e.to_string())?;
    let bus = EventBus::default();
    let writer = LogWriter::start(&bus, log, LogConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let meta = EventMeta::default();
    let started = Instant::now();
    let mut sent = 0;
    while sent < events {
        // 1,000 at a time through the durable path's room check, without
        // waiting for each commit: the writer always has a queue to take.
        let chunk = 1_000.min(events - sent);
        let batch: Vec<JobProgress> = (0..chunk).map(|_| event()).collect();
        if writer.stats().pending >= 90_000 {
            writer
                .flush(Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?;
        }
        bus.try_publish_all_with(batch, &meta)
            .map_err(|e| e.to_string())?;
        sent += chunk;
    }
    writer
        .flush(Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    let elapsed = started.elapsed();
    let stats = writer.stats();
    writer.shutdown(Duration::from_secs(5)).await;
    Ok(json!({
        "bench": "log_append",
        "engine": url.split(':').next().unwrap_or_default(),
        "events": events,
        "seconds": elapsed.as_secs_f64(),
        "events_per_s": events as f64 / elapsed.as_secs_f64(),
        "commits": stats.batches,
        "mean_batch": stats.appended as f64 / stats.batches.max(1) as f64,
        "dropped": stats.dropped,
    }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// How a latency run publishes.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// `try_publish_all_with`: the bus only.
    Plain,
    /// `publish_durable`: waits for the log's commit.
    Durable,
    /// `publish_acked`: waits for JetStream's acknowledgement.
    Acked,
}

/// One run: `producers` tasks, each publishing `per` events one at a time;
/// microseconds per call.
async fn latency_run(bus: &EventBus, producers: usize, per: usize, path: Path) -> Vec<f64> {
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let bus = bus.clone();
            tokio::spawn(async move {
                let meta = EventMeta::default();
                let mut samples = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    match path {
                        Path::Durable => {
                            let _ = bus.publish_durable([event()], &meta).await;
                        }
                        Path::Acked => {
                            let acked = vec![AckedEvent::new(event())];
                            let _ = bus
                                .publish_acked(acked, &meta, Duration::from_secs(20))
                                .await;
                        }
                        Path::Plain => {
                            let _ = bus.try_publish_all_with([event()], &meta);
                            tokio::task::yield_now().await;
                        }
                    }
                    samples.push(t.elapsed().as_secs_f64() * 1e6);
                }
                samples
            })
        })
        .collect();
    let mut all = Vec::with_capacity(producers * per);
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all.sort_by(f64::total_cmp);
    all
}

async fn durable(url: &str, producers: usize, per: usize, runs: u32) -> Result<Value, String> {
    let log = event_log::open(url).await.map_err(|e| e.to_string())?;
    let bus = EventBus::default();
    let writer = LogWriter::start(&bus, log, LogConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let (mut plain, mut logged) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        plain.push(latency_run(&bus, producers, per, Path::Plain).await);
        logged.push(latency_run(&bus, producers, per, Path::Durable).await);
    }
    let stats = writer.stats();
    writer.shutdown(Duration::from_secs(5)).await;
    let (p, d) = (summary(&plain), summary(&logged));
    Ok(json!({
        "bench": "log_durable",
        "engine": url.split(':').next().unwrap_or_default(),
        "producers": producers,
        "calls": producers * per * runs.max(1) as usize * 2,
        "plain": p,
        "durable": d,
        "added_p99_ms": (d["p99_us"].as_f64().unwrap_or(0.0) - p["p99_us"].as_f64().unwrap_or(0.0)) / 1000.0,
        "mean_batch": stats.appended as f64 / stats.batches.max(1) as f64,
    }))
}

/// p50 and p99 of several runs' samples.
fn summary(runs: &[Vec<f64>]) -> Value {
    let mut all: Vec<f64> = runs.iter().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    json!({"p50_us": percentile(&all, 0.50), "p99_us": percentile(&all, 0.99)})
}

/// Sustained rate and added latency with a JetStream stream as the log.
async fn cluster(
    nats: &str,
    events: u64,
    producers: usize,
    per: usize,
    runs: u32,
) -> Result<Value, String> {
    let id = format!("{}_{}", std::process::id(), Uuid::now_v7().simple());
    let config = event_nats::NatsConfig {
        stream: format!("BENCH_LOG_{id}"),
        subject_prefix: format!("benchlog.{id}"),
        instance_id: format!("bench-log-{id}"),
        ..event_nats::NatsConfig::new(nats)
    };
    let cluster = event_nats::NatsCluster::connect(config.clone(), BusConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let measured = cluster_runs(&cluster, events, producers, per, runs).await;
    cluster.shutdown(Duration::from_secs(5)).await;
    let _ = event_nats::delete_stream(&config).await;
    measured
}

async fn cluster_runs(
    cluster: &event_nats::NatsCluster,
    events: u64,
    producers: usize,
    per: usize,
    runs: u32,
) -> Result<Value, String> {
    let bus = cluster.bus().clone();
    let meta = EventMeta::default();
    let first = cluster.last_stream_seq();
    let started = Instant::now();
    let mut sent = 0;
    while sent < events {
        // Never more than half the publish queue ahead of the stream: a
        // full queue would deliver events locally only.
        if first + sent > cluster.last_stream_seq() + 30_000
            && !cluster
                .wait_for_stream_seq(first + sent - 30_000, Duration::from_secs(60))
                .await
        {
            return Err("the stream took nothing for 60 s".to_owned());
        }
        let chunk = 1_000.min(events - sent);
        let batch: Vec<JobProgress> = (0..chunk).map(|_| event()).collect();
        bus.try_publish_all_with(batch, &meta)
            .map_err(|e| e.to_string())?;
        sent += chunk;
    }
    if !cluster
        .wait_for_stream_seq(first + events, Duration::from_secs(300))
        .await
    {
        return Err(format!(
            "the stream took {} of {events} events within 300 s",
            cluster.last_stream_seq() - first
        ));
    }
    let elapsed = started.elapsed();
    let (mut plain, mut acked) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        plain.push(latency_run(&bus, producers, per, Path::Plain).await);
        acked.push(latency_run(&bus, producers, per, Path::Acked).await);
    }
    let (p, a) = (summary(&plain), summary(&acked));
    Ok(json!({
        "bench": "log_cluster",
        "engine": "jetstream",
        "events": events,
        "seconds": elapsed.as_secs_f64(),
        "events_per_s": events as f64 / elapsed.as_secs_f64(),
        "producers": producers,
        "calls": producers * per * runs.max(1) as usize * 2,
        "plain": p,
        "durable": a,
        "added_p99_ms": (a["p99_us"].as_f64().unwrap_or(0.0) - p["p99_us"].as_f64().unwrap_or(0.0)) / 1000.0,
    }))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-log: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        match args.command {
            Command::Append { url, events } => append(&url, events).await,
            Command::Durable {
                url,
                producers,
                per_producer,
                runs,
            } => durable(&url, producers, per_producer, runs).await,
            Command::Cluster {
                nats,
                events,
                producers,
                per_producer,
                runs,
            } => cluster(&nats, events, producers, per_producer, runs).await,
        }
    });
    match outcome {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-log: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
