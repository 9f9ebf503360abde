//! Cross-instance publish → receive latency and throughput over NATS
//! JetStream: instance A publishes, instance B's bus receives.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo run --release -p event-nats --example cross_instance_latency -- 10000
//! ```

use std::collections::HashMap;
use std::time::{Duration, Instant};

use event_core::{BusConfig, JobProgress, Received};
use event_nats::{NatsCluster, NatsConfig};
use uuid::Uuid;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL")
        .or_else(|_| std::env::var("TEST_NATS_URL"))
        .unwrap_or_else(|_| event_nats::DEFAULT_URL.to_owned());
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let tag = Uuid::new_v4().simple().to_string();
    let config = NatsConfig {
        stream: format!("BENCH_{tag}"),
        subject_prefix: format!("bench.{tag}"),
        memory_storage: true,
        ..NatsConfig::new(url)
    };
    let bus_config = BusConfig {
        capacity: n.max(1024) * 2,
        ..BusConfig::default()
    };
    let a = NatsCluster::connect(
        NatsConfig {
            instance_id: "bench-a".into(),
            ..config.clone()
        },
        bus_config.clone(),
    )
    .await?;
    let b = NatsCluster::connect(
        NatsConfig {
            instance_id: "bench-b".into(),
            ..config.clone()
        },
        bus_config,
    )
    .await?;
    let mut sub = b.bus().subscribe();

    // Paced (one in flight at a time): latency without queueing.
    let mut latencies = Vec::with_capacity(1000);
    for i in 0..1000u32 {
        let sent_at = Instant::now();
        let ev = a.bus().publish(progress(i));
        loop {
            match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await? {
                Received::Event(got) if got.id() == ev.id() => break,
                Received::Event(_) => {}
                other => return Err(format!("unexpected {other:?}").into()),
            }
        }
        latencies.push(sent_at.elapsed());
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "paced latency A→B over 1000 events: p50 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1]
    );

    // Burst: throughput and latency under load.
    let mut sent = HashMap::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let ev = a.bus().publish(progress(i as u32));
        sent.insert(ev.id(), Instant::now());
    }
    let mut burst = Vec::with_capacity(n);
    while burst.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), sub.recv()).await? {
            Received::Event(got) => {
                if let Some(at) = sent.get(&got.id()) {
                    burst.push(at.elapsed());
                }
            }
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    let elapsed = start.elapsed();
    burst.sort();
    println!(
        "burst of {n}: {:.0} events/s A→B, latency p50 {:?}, p99 {:?}; local-only fallbacks: {}",
        n as f64 / elapsed.as_secs_f64(),
        burst[burst.len() / 2],
        burst[(burst.len() * 99 / 100).min(burst.len() - 1)],
        a.health().local_only
    );

    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    event_nats::delete_stream(&config).await?;
    Ok(())
}

fn progress(i: u32) -> JobProgress {
    JobProgress {
        job_id: Uuid::now_v7(),
        note_id: None,
        progress: (i % 101) as u8,
        message: None,
    }
}
