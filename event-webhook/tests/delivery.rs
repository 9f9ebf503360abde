//! Delivery end to end: bus → sink → durable row → worker → a real receiver.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::{client, eventually, fast_config, serve_sqlite};
use event_core::{EventBus, JobCompleted, JobQueued, NoteUpdated, SinkRunner};
use event_webhook::{DeliveryWorker, WebhookConfig, Webhooks};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

struct Harness {
    webhooks: Webhooks,
    base: String,
    bus: EventBus,
    runner: Option<SinkRunner>,
    worker: Option<DeliveryWorker>,
}

impl Harness {
    async fn start(config: WebhookConfig) -> Harness {
        let (webhooks, base) = serve_sqlite(config).await;
        let bus = EventBus::default();
        let mut runner = SinkRunner::new(&bus);
        runner.register(webhooks.sink());
        let worker = webhooks.start_worker(CancellationToken::new());
        Harness {
            webhooks,
            base,
            bus,
            runner: Some(runner),
            worker: Some(worker),
        }
    }

    async fn create(&self, body: Value) -> Value {
        let r = client()
            .post(format!("{}/api/v1/webhooks", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> Value {
        client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn deliveries(&self, id: &str) -> Vec<Value> {
        let v = self.get(&format!("/api/v1/webhooks/{id}/deliveries")).await;
        v.as_array().unwrap().clone()
    }

    async fn wait_delivery_status(&self, id: &str, status: &str) -> Value {
        let found = std::sync::Mutex::new(Value::Null);
        eventually(WAIT, || async {
            let list = self.deliveries(id).await;
            match list.first() {
                Some(d) if d["status"] == status => {
                    *found.lock().unwrap() = d.clone();
                    true
                }
                _ => false,
            }
        })
        .await;
        found.into_inner().unwrap()
    }

    fn job_completed(&self) -> Uuid {
        self.bus
            .publish(JobCompleted {
                job_id: Uuid::now_v7(),
                job_type: "Embedding".into(),
                note_id: None,
                duration_ms: Some(12),
            })
            .id()
    }

    async fn stop(mut self) {
        if let Some(r) = self.runner.take() {
            r.shutdown(Duration::from_secs(5)).await;
        }
        if let Some(w) = self.worker.take() {
            w.shutdown(Duration::from_secs(5)).await;
        }
    }
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn delivery_format_and_signatures() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    let wh = h
        .create(json!({"url": rx.url("a"), "events": ["job.completed"], "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}))
        .await;
    let event_id = h.job_completed();
    let got = rx.wait_for("a", 1, WAIT).await;
    let req = &got[0];

    // Standard Webhooks, checked by the independent crate.
    let verifier =
        standardwebhooks::Webhook::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    verifier.verify(&req.body, &req.headers).unwrap();
    // X-Matric-Signature: HMAC over the body keyed by the secret string.
    let expected = event_webhook::signing::matric_signature(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &req.body,
    );
    assert_eq!(req.header("x-matric-signature"), Some(expected.as_str()));
    // And our own verify() accepts it.
    event_webhook::verify(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &req.headers,
        &req.body,
    )
    .unwrap();
    assert!(
        event_webhook::verify("whsec_b3RoZXJvdGhlcm90aGVyMTIz", &req.headers, &req.body).is_err()
    );

    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("x-matric-event"), Some("JobCompleted"));
    assert_eq!(
        req.header("user-agent"),
        Some(concat!("matric-events/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        req.header("webhook-id"),
        Some(event_id.to_string().as_str())
    );
    let body = req.json();
    assert_eq!(body["id"], event_id.to_string());
    assert_eq!(body["event"], "JobCompleted");
    assert_eq!(body["data"]["type"], "JobCompleted");
    assert_eq!(body["data"]["duration_ms"], 12);
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
    // `type` first in data, as on every transport.
    let raw = std::str::from_utf8(&req.body).unwrap();
    assert!(raw.contains(r#""data":{"type":"JobCompleted""#), "{raw}");

    let d = h.wait_delivery_status(&id_of(&wh), "succeeded").await;
    assert_eq!(req.header("x-matric-delivery"), d["id"].as_str());
    assert_eq!(d["success"], true);
    assert_eq!(d["event_id"], event_id.to_string());
    assert_eq!(d["event_type"], "JobCompleted");
    let w = h.get(&format!("/api/v1/webhooks/{}", id_of(&wh))).await;
    assert!(w["last_triggered_at"].is_string());
    h.stop().await;
}

#[tokio::test]
async fn hand_computed_hmac_vector_with_configured_header() {
    // HMAC-SHA256(key = "key", "The quick brown fox jumps over the lazy dog")
    assert_eq!(
        event_webhook::signing::matric_signature(
            "key",
            b"The quick brown fox jumps over the lazy dog"
        ),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
    let config = WebhookConfig {
        signature_header: "X-Fortemi-Signature".into(),
        ..fast_config()
    };
    let h = Harness::start(config).await;
    let rx = Receiver::start().await;
    h.create(json!({"url": rx.url("f"), "secret": "0123456789abcdef"}))
        .await;
    h.job_completed();
    let got = rx.wait_for("f", 1, WAIT).await;
    let sig = got[0].header("x-fortemi-signature").unwrap();
    assert!(got[0].header("x-matric-signature").is_none());
    // Independent HMAC: via the standardwebhooks crate's primitive would
    // need its key format; compute with hmac directly.
    use hmac::{Hmac, KeyInit, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef").unwrap();
    m.update(&got[0].body);
    assert_eq!(
        sig,
        format!("sha256={}", hex::encode(m.finalize().into_bytes()))
    );
    h.stop().await;
}

#[tokio::test]
async fn only_subscribed_events_are_delivered() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    h.create(json!({"url": rx.url("notes"), "events": ["NoteUpdated"]}))
        .await;
    h.create(json!({"url": rx.url("all")})).await;
    h.bus.publish(JobQueued {
        job_id: Uuid::now_v7(),
        job_type: "x".into(),
        note_id: None,
    });
    h.bus.publish(NoteUpdated {
        note_id: Uuid::now_v7(),
        title: None,
        tags: vec![],
        has_ai_content: false,
        has_links: false,
        operation: None,
        user_id: None,
    });
    rx.wait_for("all", 2, WAIT).await;
    let notes = rx.wait_for("notes", 1, WAIT).await;
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].header("x-matric-event"), Some("NoteUpdated"));
    h.stop().await;
}

#[tokio::test]
async fn retries_until_success_on_third_attempt() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    rx.script(
        "r",
        [Reply::status(500), Reply::status(500), Reply::status(200)],
    );
    let wh = h.create(json!({"url": rx.url("r")})).await;
    let event_id = h.job_completed();
    let got = rx.wait_for("r", 3, WAIT).await;
    // webhook-id constant across retries; delivery id too.
    for r in &got {
        assert_eq!(r.header("webhook-id"), Some(event_id.to_string().as_str()));
        assert_eq!(
            r.header("x-matric-delivery"),
            got[0].header("x-matric-delivery")
        );
    }
    let d = h.wait_delivery_status(&id_of(&wh), "succeeded").await;
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["last_status_code"], 200);
    let attempts = h
        .webhooks
        .store()
        .list_attempts(d["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(),
        vec![Some(500), Some(500), Some(200)]
    );
    h.stop().await;
}

#[tokio::test]
async fn five_failures_make_a_dead_delivery_and_redeliver_requeues_it() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    rx.default_reply("dead", Reply::status(500));
    let wh = h.create(json!({"url": rx.url("dead")})).await;
    h.job_completed();
    let d = h.wait_delivery_status(&id_of(&wh), "dead").await;
    assert_eq!(d["attempts"], 5);
    assert_eq!(d["success"], false);
    assert_eq!(d["last_status_code"], 500);
    assert_eq!(rx.requests_to("dead").len(), 5, "1 attempt + 4 retries");
    let w = h.get(&format!("/api/v1/webhooks/{}", id_of(&wh))).await;
    assert_eq!(w["failure_count"], 1);
    let dead = h
        .get(&format!(
            "/api/v1/webhooks/{}/deliveries?status=dead",
            id_of(&wh)
        ))
        .await;
    assert_eq!(dead.as_array().unwrap().len(), 1);

    // Redeliver: 202, then it goes out again and succeeds.
    rx.default_reply("dead", Reply::status(200));
    let r = client()
        .post(format!(
            "{}/api/v1/webhooks/{}/deliveries/{}/redeliver",
            h.base,
            id_of(&wh),
            d["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    h.wait_delivery_status(&id_of(&wh), "succeeded").await;
    assert_eq!(rx.requests_to("dead").len(), 6);
    let w = h.get(&format!("/api/v1/webhooks/{}", id_of(&wh))).await;
    assert_eq!(w["failure_count"], 0, "a success resets the streak");
    h.stop().await;
}

#[tokio::test]
async fn gone_disables_the_webhook() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    rx.default_reply("gone", Reply::status(410));
    let wh = h.create(json!({"url": rx.url("gone")})).await;
    h.job_completed();
    let d = h.wait_delivery_status(&id_of(&wh), "dead").await;
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status_code"], 410);
    let w = h.get(&format!("/api/v1/webhooks/{}", id_of(&wh))).await;
    assert_eq!(w["active"], false);
    assert!(w["disabled_reason"].as_str().unwrap().contains("410"));
    // Disabled: later events are not queued for it.
    h.job_completed();
    let other = Receiver::start().await;
    h.create(json!({"url": other.url("x")})).await;
    h.job_completed();
    other.wait_for("x", 1, WAIT).await;
    assert_eq!(h.deliveries(&id_of(&wh)).await.len(), 1);
    assert_eq!(rx.requests_to("gone").len(), 1);
    h.stop().await;
}

#[tokio::test]
async fn redirect_is_a_failure_and_not_followed() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    rx.script(
        "moved",
        [Reply::status(301).header("location", rx.url("target"))],
    );
    let wh = h.create(json!({"url": rx.url("moved")})).await;
    h.job_completed();
    let got = rx.wait_for("moved", 2, WAIT).await;
    assert_eq!(got.len(), 2, "retried after the 301");
    let d = h.wait_delivery_status(&id_of(&wh), "succeeded").await;
    assert_eq!(d["attempts"], 2);
    assert!(
        rx.requests_to("target").is_empty(),
        "the redirect was not followed"
    );
    let attempts = h
        .webhooks
        .store()
        .list_attempts(d["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(attempts[0].status_code, Some(301));
    assert!(attempts[0].error.as_deref().unwrap().contains("redirect"));
    h.stop().await;
}

#[tokio::test]
async fn slow_receiver_times_out_and_is_retried() {
    let config = WebhookConfig {
        request_timeout: Duration::from_millis(300),
        ..fast_config()
    };
    let h = Harness::start(config).await;
    let rx = Receiver::start().await;
    rx.script("slow", [Reply::status(200).delay(Duration::from_secs(3))]);
    let wh = h.create(json!({"url": rx.url("slow")})).await;
    h.job_completed();
    let d = h.wait_delivery_status(&id_of(&wh), "succeeded").await;
    assert_eq!(d["attempts"], 2);
    let attempts = h
        .webhooks
        .store()
        .list_attempts(d["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    assert_eq!(attempts[0].status_code, None);
    assert!(
        attempts[0].error.as_deref().unwrap().starts_with("timeout"),
        "{:?}",
        attempts[0].error
    );
    h.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    rx.script("ra", [Reply::status(429).header("retry-after", "1")]);
    let wh = h.create(json!({"url": rx.url("ra")})).await;
    h.job_completed();
    // After the 429 the row is scheduled a second out, not 50 ms.
    let failed = h.wait_delivery_status(&id_of(&wh), "failed").await;
    let next: time::OffsetDateTime = time::OffsetDateTime::parse(
        failed["next_attempt_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let attempts = h
        .webhooks
        .store()
        .list_attempts(failed["id"].as_str().unwrap().parse().unwrap())
        .await
        .unwrap();
    let gap = (next - attempts[0].started_at).as_seconds_f64();
    assert!(
        (0.95..1.5).contains(&gap),
        "next attempt {gap}s after the first"
    );
    let got = rx.wait_for("ra", 2, WAIT).await;
    let waited = got[1].at.duration_since(got[0].at);
    assert!(
        waited >= Duration::from_millis(900),
        "retried after {waited:?}"
    );
    h.stop().await;
}

/// The slow endpoint's answers take longer than the whole wait: every
/// delivery to the healthy one must arrive while the slow one still holds
/// both its slots, an order, not a race against the clock.
#[tokio::test]
async fn a_failing_endpoint_does_not_delay_another() {
    const SLOW: Duration = Duration::from_secs(60);
    let config = WebhookConfig {
        per_endpoint_concurrency: 2,
        max_concurrency: 8,
        request_timeout: SLOW * 2,
        ..fast_config()
    };
    let h = Harness::start(config).await;
    let slow = Receiver::start().await;
    let fast = Receiver::start().await;
    slow.default_reply("s", Reply::status(500).delay(SLOW));
    h.create(json!({"url": slow.url("s")})).await;
    h.create(json!({"url": fast.url("f")})).await;
    for _ in 0..20 {
        h.job_completed();
    }
    assert!(WAIT < SLOW);
    // All 20 reach the healthy endpoint, while the slow one holds both its
    // slots (no answer of it can come before SLOW).
    let got = fast.wait_for("f", 20, WAIT).await;
    assert_eq!(got.len(), 20);
    let held = slow.wait_for("s", 2, WAIT).await;
    let first_slow_answer = held[0].at + SLOW;
    assert!(got.iter().all(|r| r.at < first_slow_answer));
    assert_eq!(slow.requests_to("s").len(), 2, "per-endpoint limit");
    h.stop().await;
}

#[tokio::test]
async fn ten_dead_deliveries_disable_the_webhook() {
    let config = WebhookConfig {
        retry_schedule: vec![Duration::from_millis(10)],
        disable_after_dead: 10,
        ..fast_config()
    };
    let h = Harness::start(config).await;
    let rx = Receiver::start().await;
    rx.default_reply("bad", Reply::status(500));
    let wh = h
        .create(json!({"url": rx.url("bad"), "max_retries": 0}))
        .await;
    for _ in 0..12 {
        h.job_completed();
    }
    let id = id_of(&wh);
    eventually(WAIT, || async {
        h.get(&format!("/api/v1/webhooks/{id}")).await["active"] == false
    })
    .await;
    let w = h.get(&format!("/api/v1/webhooks/{id}")).await;
    // Attempts already in flight when the tenth died still count.
    assert!(w["failure_count"].as_u64().unwrap() >= 10, "{w}");
    assert!(
        w["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("10 consecutive")
    );
    // Once disabled, new events are not queued for it.
    let before = h.deliveries(&id).await.len();
    let probe = Receiver::start().await;
    h.create(json!({"url": probe.url("probe")})).await;
    h.job_completed();
    probe.wait_for("probe", 1, WAIT).await;
    assert_eq!(h.deliveries(&id).await.len(), before);
    h.stop().await;
}

#[tokio::test]
async fn deliveries_list_is_newest_first_with_limit_and_status() {
    let h = Harness::start(fast_config()).await;
    let rx = Receiver::start().await;
    let wh = h.create(json!({"url": rx.url("l")})).await;
    let ids: Vec<Uuid> = (0..3).map(|_| h.job_completed()).collect();
    rx.wait_for("l", 3, WAIT).await;
    let id = id_of(&wh);
    eventually(WAIT, || async {
        h.get(&format!(
            "/api/v1/webhooks/{id}/deliveries?status=succeeded"
        ))
        .await
        .as_array()
        .unwrap()
        .len()
            == 3
    })
    .await;
    let list = h.deliveries(&id).await;
    let got: Vec<String> = list
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = ids.iter().rev().map(Uuid::to_string).collect();
    assert_eq!(got, want);
    let two = h
        .get(&format!("/api/v1/webhooks/{id}/deliveries?limit=2"))
        .await;
    assert_eq!(two.as_array().unwrap().len(), 2);
    let keys: Vec<&str> = list[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for k in [
        "id",
        "webhook_id",
        "event_id",
        "event_type",
        "status",
        "attempts",
        "next_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
        "success",
    ] {
        assert!(keys.contains(&k), "{k}");
    }
    h.stop().await;
}

#[tokio::test]
async fn succeeded_deliveries_are_pruned_after_retention() {
    let config = WebhookConfig {
        retention: Duration::from_millis(200),
        prune_interval: Duration::from_millis(100),
        ..fast_config()
    };
    let h = Harness::start(config).await;
    let rx = Receiver::start().await;
    rx.default_reply("p", Reply::status(200));
    let ok = h.create(json!({"url": rx.url("p")})).await;
    let bad = h
        .create(json!({"url": rx.url("q"), "max_retries": 0}))
        .await;
    rx.default_reply("q", Reply::status(500));
    h.job_completed();
    rx.wait_for("p", 1, WAIT).await;
    rx.wait_for("q", 1, WAIT).await;
    let (ok, bad) = (id_of(&ok), id_of(&bad));
    eventually(WAIT, || async { h.deliveries(&ok).await.is_empty() }).await;
    // Dead deliveries are kept.
    let kept = h.deliveries(&bad).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["status"], "dead");
    h.stop().await;
}
