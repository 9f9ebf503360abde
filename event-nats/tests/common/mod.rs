//! Shared helpers: waiting on events and cluster state; service gating,
//! unique streams and a private nats-server come from `event_nats::testing`.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use event_core::{
    BusConfig, ConsumerConfig, Consumers, Event, JobProgress, Received, SeqStart, Subscription,
};
pub use event_nats::testing::{PrivateNats, cleanup, instance, nats_url, unique_config};
use event_nats::{ConnectionState, NatsCluster, NatsConfig};
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(20);

pub fn bus_config(replay_size: usize) -> BusConfig {
    BusConfig {
        capacity: 4096,
        replay_size,
        seq_start: SeqStart::Clock,
    }
}

pub async fn connect(config: &NatsConfig, replay_size: usize) -> NatsCluster {
    NatsCluster::connect(config.clone(), bus_config(replay_size))
        .await
        .expect("connect to NATS")
}

/// `event_core`'s consumers over `cluster`'s stream and offsets.
pub async fn consumers(cluster: &NatsCluster) -> Consumers {
    Consumers::with_mark(
        cluster.bus().clone(),
        Arc::new(cluster.log()),
        Arc::new(cluster.offsets().await.unwrap()),
        ConsumerConfig {
            save_interval: Duration::from_millis(50),
            ..ConsumerConfig::default()
        },
        cluster.log_mark(),
    )
}

pub fn progress(n: u8) -> JobProgress {
    JobProgress {
        job_id: Uuid::now_v7(),
        note_id: None,
        progress: n % 101,
        message: Some(format!("step {n}")),
    }
}

/// The next event on `sub`, failing the test on timeout, lag or close.
pub async fn next_event(sub: &mut Subscription, what: &str) -> Arc<Event> {
    match tokio::time::timeout(WAIT, sub.recv()).await {
        Ok(Received::Event(ev)) => ev,
        Ok(other) => panic!("{what}: unexpected {other:?}"),
        Err(_) => panic!("{what}: no event within {WAIT:?}"),
    }
}

pub async fn collect(sub: &mut Subscription, n: usize, what: &str) -> Vec<Arc<Event>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(next_event(sub, &format!("{what} #{i}")).await);
    }
    out
}

pub fn identity(events: &[Arc<Event>]) -> Vec<(u64, Uuid)> {
    events.iter().map(|e| (e.seq(), e.id())).collect()
}

pub async fn wait_state(cluster: &NatsCluster, want: ConnectionState, what: &str) {
    let mut rx = cluster.state_changes();
    tokio::time::timeout(WAIT, rx.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("{what}: not {want:?} within {WAIT:?}"))
        .expect("state channel");
}
