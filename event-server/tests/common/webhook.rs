//! A webhook receiver on loopback that records every attempt by its
//! `webhook-id` (the event id), for the tests that check which deliveries
//! arrived and how often; and the subscription that points a host at it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_server::testing::client;
use serde_json::json;

/// What the receiver was sent. It answers `204` while `accepting`, else
/// `503` after a moment (so a sender that is refused always has attempts
/// in flight).
#[derive(Default)]
pub struct Receiver {
    pub accepting: AtomicBool,
    /// `webhook-id` (`""` when missing) → (refused attempts, accepted
    /// attempts).
    pub attempts: Mutex<HashMap<String, (u32, u32)>>,
}

impl Receiver {
    /// Starts one on 127.0.0.1:0; its URL and what it records.
    pub async fn start(accepting: bool) -> (String, Arc<Receiver>) {
        let state = Arc::new(Receiver {
            accepting: AtomicBool::new(accepting),
            attempts: Mutex::default(),
        });
        let app = axum::Router::new().route(
            "/",
            axum::routing::post({
                let state = state.clone();
                move |headers: axum::http::HeaderMap| {
                    let state = state.clone();
                    async move { state.take(&headers).await }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, state)
    }

    async fn take(&self, headers: &axum::http::HeaderMap) -> axum::http::StatusCode {
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let accepting = self.accepting.load(Ordering::SeqCst);
        {
            let mut attempts = self.attempts.lock().unwrap();
            let entry = attempts.entry(id).or_default();
            if accepting {
                entry.1 += 1;
                return axum::http::StatusCode::NO_CONTENT;
            }
            entry.0 += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    }

    /// How many of `ids` were never accepted.
    pub fn missing(&self, ids: &[String]) -> usize {
        let attempts = self.attempts.lock().unwrap();
        ids.iter()
            .filter(|id| attempts.get(*id).is_none_or(|a| a.1 == 0))
            .count()
    }

    /// Waits until every one of `ids` (acknowledged events) was accepted;
    /// panics after `within`.
    pub async fn wait_for_all(&self, ids: &[String], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let missing = self.missing(ids);
            if missing == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{missing} of {} acknowledged events never reached the webhook",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Subscribes a webhook at `hook_url` to the `JobProgress` events of the
/// host at `host_url` (panics unless `201`).
pub async fn subscribe(host_url: &str, hook_url: &str) {
    let res = client()
        .post(format!("{host_url}/api/v1/webhooks"))
        .json(&json!({"url": hook_url, "events": ["JobProgress"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
}
