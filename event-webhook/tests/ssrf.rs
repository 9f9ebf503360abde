//! The SSRF guard at registration and at delivery time. No request is ever
//! sent to a refused address: refusal happens before any connection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::receiver::Receiver;
use common::{client, eventually, fast_config, serve_sqlite, sqlite_store};
use event_core::{AllowAnonymous, EventBus, JobQueued, SinkRunner};
use event_webhook::model::Webhook;
use event_webhook::{WebhookConfig, Webhooks};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const SPELLINGS: &[&str] = &[
    // IPv4 loopback in every spelling.
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://0x7f.0.0.1/",
    "http://127.000.000.001/",
    "http://localhost/",
    // Private, link-local, metadata, CGNAT, multicast, broadcast, unspecified.
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0xa9fea9fe/",
    "http://2852039166/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://0.0.0.0/",
    "http://0/",
    // IPv6 and IPv4 inside IPv6.
    "http://[::1]/",
    "http://[::]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[fe80::1]/",
    "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::1]/",
    // IPv4-translated (::ffff:0:0/96) and NAT64, well-known and local-use.
    "http://[::ffff:0:127.0.0.1]/",
    "http://[::ffff:0:7f00:1]/",
    "http://[::ffff:0:169.254.169.254]/",
    "http://[::ffff:0:10.0.0.1]:8080/x",
    "http://[64:ff9b::127.0.0.1]/",
    "http://[64:ff9b::10.0.0.1]/",
    "http://[64:ff9b:1::127.0.0.1]/",
    "http://[64:ff9b:1::8.8.8.8]/",
    "http://[64:ff9b:1:abcd::1]/",
];

async fn register(base: &str, url: &str) -> (u16, Value) {
    let r = client()
        .post(format!("{base}/api/v1/webhooks"))
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn every_internal_spelling_is_refused_at_registration() {
    let config = WebhookConfig {
        allow_cidrs: vec![],
        ..fast_config()
    };
    let (_w, base) = serve_sqlite(config).await;
    for url in SPELLINGS {
        let (status, body) = register(&base, url).await;
        assert_eq!(status, 422, "{url} must be refused: {body}");
        assert_eq!(body["error"], "validation_error");
        assert!(body["message"].as_str().unwrap().contains("url"), "{body}");
    }
    let list: Value = client()
        .get(format!("{base}/api/v1/webhooks"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]));
}

#[tokio::test]
async fn loopback_passes_only_through_the_allow_list() {
    let (_w, base) = serve_sqlite(fast_config()).await; // allows 127.0.0.0/8
    for url in [
        "http://127.0.0.1:9/",
        "http://localhost:9/",
        "http://2130706433:9/",
        "http://0x7f.1:9/",
        "http://[::ffff:127.0.0.1]:9/",
    ] {
        let (status, body) = register(&base, url).await;
        assert_eq!(status, 201, "{url}: {body}");
    }
    // Still refused: loopback outside the list, and everything else.
    for url in [
        "http://[::1]/",
        "http://10.0.0.1/",
        "http://169.254.169.254/",
        "http://[fe80::1]/",
    ] {
        let (status, _) = register(&base, url).await;
        assert_eq!(status, 422, "{url}");
    }
}

/// A webhook written straight to the store (as if registered under an
/// older, looser configuration) is still refused when delivering.
#[tokio::test]
async fn refused_at_delivery_time_too() {
    let rx = Receiver::start().await;
    let store = sqlite_store().await;
    let mut ids = Vec::new();
    for url in [
        format!("http://localhost:{}/named", rx.addr.port()),
        format!("http://127.0.0.1:{}/literal", rx.addr.port()),
        format!("http://2130706433:{}/decimal", rx.addr.port()),
    ] {
        let w = Webhook {
            max_retries: 0,
            ..common::webhook(url, vec![])
        };
        store.create_webhook(&w).await.unwrap();
        ids.push(w.id);
    }
    let config = WebhookConfig {
        allow_cidrs: vec![],
        ..fast_config()
    };
    let webhooks = Webhooks::new(store.clone(), Arc::new(AllowAnonymous), config)
        .await
        .unwrap();
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());
    bus.publish(JobQueued {
        job_id: uuid::Uuid::now_v7(),
        job_type: "x".into(),
        note_id: None,
    });
    for id in &ids {
        eventually(Duration::from_secs(10), || async {
            store
                .list_deliveries(*id, None, 1)
                .await
                .unwrap()
                .first()
                .is_some_and(|d| d.status == event_webhook::model::DeliveryStatus::Dead)
        })
        .await;
        let d = store.list_deliveries(*id, None, 1).await.unwrap().remove(0);
        let err = d.last_error.unwrap();
        assert!(err.contains("refused") || err.contains("loopback"), "{err}");
        assert_eq!(d.last_status_code, None);
    }
    assert!(rx.requests().is_empty(), "nothing reached the receiver");
    runner.shutdown(Duration::from_secs(2)).await;
    worker.shutdown(Duration::from_secs(2)).await;
}
