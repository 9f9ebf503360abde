//! A producer's side of the tests that publish to an `event-server`
//! process (`host.rs`) over HTTP: `JobProgress` events told apart by a
//! number, single batches, bursts and a steady publisher that runs until
//! the server is gone.

#![allow(dead_code)]

use std::time::Duration;

use event_server::testing::client;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// A `JobProgress` event of a job of its own; its message is `step <n>`.
pub fn progress(n: u64) -> Value {
    json!({
        "type": "JobProgress",
        "job_id": uuid::Uuid::now_v7(),
        "progress": n % 100,
        "message": format!("step {n}"),
    })
}

/// POSTs `events` as one batch; `(seq, event_id)` of each (`seq` 0 where
/// the answer gives none), or `None` unless answered `202` (the server
/// refused, or is gone).
pub async fn try_publish(host_url: &str, events: &[Value]) -> Option<Vec<(u64, String)>> {
    let res = client()
        .post(format!("{host_url}/api/v1/events"))
        .json(&events)
        .send()
        .await
        .ok()?;
    if res.status() != 202 {
        return None;
    }
    let answer: Value = res.json().await.ok()?;
    answer["events"]
        .as_array()?
        .iter()
        .map(|e| {
            let id = e["event_id"].as_str()?.to_owned();
            Some((e["seq"].as_u64().unwrap_or(0), id))
        })
        .collect()
}

/// POSTs `events`; `(seq, event_id)` of each (panics unless `202`).
pub async fn publish(host_url: &str, events: &[Value]) -> Vec<(u64, String)> {
    try_publish(host_url, events).await.expect("a 202")
}

/// `producers` tasks each posting `rounds` requests of `per_request`
/// events (numbered apart across all of them) as fast as they are
/// accepted; every acknowledged event id. Panics unless every request is
/// answered `202` within two minutes.
pub async fn burst(url: &str, producers: u64, rounds: u64, per_request: u64) -> Vec<String> {
    let tasks: Vec<_> = (0..producers)
        .map(|p| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for r in 0..rounds {
                    let first = (p * rounds + r) * per_request;
                    let batch: Vec<Value> = (first..first + per_request).map(progress).collect();
                    ids.extend(publish(&url, &batch).await.into_iter().map(|(_, id)| id));
                }
                ids
            })
        })
        .collect();
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(
            tokio::time::timeout(Duration::from_secs(120), task)
                .await
                .expect("the burst is accepted")
                .unwrap(),
        );
    }
    acked
}

/// Publishes a batch of `per_batch` events every 10 ms until a request is
/// not answered `202` (the server is gone), handing each batch and what
/// its answer acknowledged (as [`try_publish`]) to `record`.
pub fn publisher(
    url: String,
    per_batch: u64,
    mut record: impl FnMut(&[Value], Vec<(u64, String)>) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut n = 0;
        loop {
            tick.tick().await;
            let batch: Vec<Value> = (n..n + per_batch).map(progress).collect();
            n += per_batch;
            match try_publish(&url, &batch).await {
                Some(acked) => record(&batch, acked),
                None => return,
            }
        }
    })
}
