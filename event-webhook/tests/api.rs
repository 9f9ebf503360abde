//! Every route of `/api/v1/webhooks` and its error cases, over a real
//! socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::receiver::{Receiver, Reply};
use common::{client, fast_config, serve, serve_sqlite, sqlite_store};
use event_core::StaticTokens;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn create(base: &str, body: Value) -> (StatusCode, Value) {
    let r = client()
        .post(format!("{base}/api/v1/webhooks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `GET url`, its JSON body.
async fn get_json(url: String) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn assert_error(body: &Value, code: &str, mentions: &str) {
    assert_eq!(body["error"], code, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains(mentions),
        "{msg:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn create_shows_secret_once_and_never_lists_it() {
    let (_w, base) = serve_sqlite(fast_config()).await;
    let rx = Receiver::start().await;
    let (status, created) = create(
        &base,
        json!({"url": rx.url("a"), "events": ["job.completed", "JobFailed", "JobCompleted"]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    let key = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &secret["whsec_".len()..],
    )
    .unwrap();
    assert_eq!(key.len(), 32);
    assert_eq!(created["events"], json!(["JobCompleted", "JobFailed"]));
    assert_eq!(created["active"], true);
    assert_eq!(created["is_active"], true);
    assert_eq!(created["max_retries"], 4);
    assert_eq!(created["failure_count"], 0);
    assert_eq!(created["last_triggered_at"], Value::Null);
    assert!(created.get("disabled_reason").is_none());
    for key in ["id", "url", "created_at", "updated_at"] {
        assert!(created.get(key).is_some(), "{key}");
    }

    let id = created["id"].as_str().unwrap();
    let one: Value = get_json(format!("{base}/api/v1/webhooks/{id}")).await;
    assert!(one.get("secret").is_none());
    assert_eq!(one["url"], rx.url("a"));
    let all: Value = get_json(format!("{base}/api/v1/webhooks")).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    assert!(all[0].get("secret").is_none());
    assert!(!all.to_string().contains(secret));
}

#[tokio::test]
async fn create_with_explicit_fields() {
    let (_w, base) = serve_sqlite(fast_config()).await;
    let (status, created) = create(
        &base,
        json!({"url": "http://127.0.0.1:9/x", "secret": "0123456789abcdef", "max_retries": 2, "active": false}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["secret"], "0123456789abcdef");
    assert_eq!(created["max_retries"], 2);
    assert_eq!(created["active"], false);
    assert_eq!(created["events"], json!([]));
}

#[tokio::test]
async fn create_validation_names_the_field() {
    let (_w, base) = serve_sqlite(fast_config()).await;
    let long = format!("http://127.0.0.1/{}", "a".repeat(2100));
    let cases = [
        (json!({}), "url"),
        (json!({"url": "ftp://127.0.0.1/x"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (json!({"url": long}), "url"),
        (json!({"url": 5}), "url"),
        (
            json!({"url": "http://127.0.0.1/x", "events": ["Nope"]}),
            "events",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "events": "JobFailed"}),
            "events",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "secret": "short"}),
            "secret",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "secret": "x".repeat(129)}),
            "secret",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "max_retries": -1}),
            "max_retries",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "max_retries": 21}),
            "max_retries",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "active": "yes"}),
            "active",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "active": true, "is_active": false}),
            "is_active",
        ),
        (
            json!({"url": "http://127.0.0.1/x", "colour": "red"}),
            "colour",
        ),
        (json!({"url": "http://user:pw@127.0.0.1/x"}), "url"),
    ];
    for (body, field) in cases {
        let (status, err) = create(&base, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_error(&err, "validation_error", field);
    }
    // Malformed JSON and non-objects are 400.
    for raw in ["{", "[1]", "\"x\""] {
        let r = client()
            .post(format!("{base}/api/v1/webhooks"))
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{raw}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_request");
    }
    let (status, _) = create(
        &base,
        json!({"url": "https://127.0.0.1:1/x", "secret": "x".repeat(128)}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "128 bytes is allowed");
}

#[tokio::test]
async fn patch_get_delete_and_unknown_ids() {
    let (_w, base) = serve_sqlite(fast_config()).await;
    let (_, created) = create(&base, json!({"url": "http://127.0.0.1:9/a"})).await;
    let id = created["id"].as_str().unwrap();
    let url = format!("{base}/api/v1/webhooks/{id}");

    let r = client()
        .patch(&url)
        .json(&json!({"url": "http://127.0.0.1:9/b", "events": ["note.updated"], "is_active": false, "max_retries": 1, "secret": "abcdefghijklmnop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["url"], "http://127.0.0.1:9/b");
    assert_eq!(v["events"], json!(["NoteUpdated"]));
    assert_eq!(v["active"], false);
    assert_eq!(v["is_active"], false);
    assert_eq!(v["max_retries"], 1);
    assert!(v.get("secret").is_none());
    assert_ne!(v["updated_at"], created["updated_at"]);

    let r = client()
        .patch(&url)
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["active"], true);

    let r = client()
        .patch(&url)
        .json(&json!({"url": "gopher://x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&r.json().await.unwrap(), "validation_error", "url");
    let r = client().patch(&url).body("nope").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let ghost = uuid::Uuid::now_v7();
    for path in [format!("{ghost}"), "not-a-uuid".to_owned()] {
        let u = format!("{base}/api/v1/webhooks/{path}");
        let r = client().get(&u).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        assert_error(&r.json().await.unwrap(), "not_found", "webhook");
        let r = client()
            .patch(&u)
            .json(&json!({"active": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = client().delete(&u).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = client()
            .get(format!("{u}/deliveries"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = client().post(format!("{u}/test")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = client()
            .post(format!("{u}/deliveries/{ghost}/redeliver"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let r = client()
        .post(format!("{url}/deliveries/{ghost}/redeliver"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_error(&r.json().await.unwrap(), "not_found", "delivery");

    let r = client().delete(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn test_route_sends_a_signed_delivery_and_reports_honestly() {
    let (_w, base) = serve_sqlite(fast_config()).await;
    let rx = Receiver::start().await;
    rx.script("bad", [Reply::status(503)]);
    let (_, ok) = create(&base, json!({"url": rx.url("ok")})).await;
    let (_, bad) = create(&base, json!({"url": rx.url("bad")})).await;

    let r = client()
        .post(format!(
            "{base}/api/v1/webhooks/{}/test",
            ok["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["success"], true);
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["last_status_code"], 200);
    let got = rx.requests_to("ok");
    assert_eq!(got.len(), 1);
    let secret = ok["secret"].as_str().unwrap();
    let wh = standardwebhooks::Webhook::new(secret).unwrap();
    wh.verify(&got[0].body, &got[0].headers).unwrap();
    assert_eq!(got[0].header("x-matric-delivery"), d["id"].as_str());

    let r = client()
        .post(format!(
            "{base}/api/v1/webhooks/{}/test",
            bad["id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["success"], false);
    assert_eq!(d["status"], "failed");
    assert_eq!(d["last_status_code"], 503);
    assert_eq!(d["next_attempt_at"], Value::Null);
}

#[tokio::test]
async fn deliveries_query_validation() {
    let (_w, base) = serve_sqlite(fast_config()).await;
    let (_, created) = create(&base, json!({"url": "http://127.0.0.1:9/a"})).await;
    let u = format!(
        "{base}/api/v1/webhooks/{}/deliveries",
        created["id"].as_str().unwrap()
    );
    for q in ["?limit=0", "?limit=1001", "?limit=x", "?status=lost"] {
        let r = client().get(format!("{u}{q}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{q}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"], "bad_request");
    }
    let r = client()
        .get(format!("{u}?limit=5&status=dead"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
}

#[tokio::test]
async fn admin_principal_required_when_auth_is_enabled() {
    let auth = Arc::new(
        StaticTokens::new()
            .admin("admin-token")
            .client("client-token"),
    );
    let (_w, base) = serve(sqlite_store().await, auth, fast_config()).await;
    let u = format!("{base}/api/v1/webhooks");
    let r = client().get(&u).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let r = client().get(&u).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client()
        .get(&u)
        .bearer_auth("client-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
    let r = client()
        .post(&u)
        .bearer_auth("client-token")
        .json(&json!({"url": "http://127.0.0.1:9/x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = client()
        .get(&u)
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn inconsistent_configuration_is_refused() {
    use event_webhook::{WebhookConfig, Webhooks};
    let auth = Arc::new(event_core::AllowAnonymous);
    for (config, field) in [
        (
            WebhookConfig {
                signature_header: "bad header".into(),
                ..fast_config()
            },
            "signature_header",
        ),
        (
            WebhookConfig {
                lease: std::time::Duration::from_secs(1),
                ..fast_config()
            },
            "lease",
        ),
        (
            WebhookConfig {
                retry_schedule: vec![],
                ..fast_config()
            },
            "retry_schedule",
        ),
    ] {
        let err = Webhooks::new(sqlite_store().await, auth.clone(), config)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[tokio::test]
async fn registrations_stop_at_max_webhooks_until_one_is_deleted() {
    let config = event_webhook::WebhookConfig {
        max_webhooks: 2,
        ..fast_config()
    };
    let (_w, base) = serve_sqlite(config).await;
    let mut ids = Vec::new();
    for path in ["a", "b"] {
        let (status, created) =
            create(&base, json!({"url": format!("http://127.0.0.1:9/{path}")})).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let (status, body) = create(&base, json!({"url": "http://127.0.0.1:9/c"})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_error(&body, "too_many_webhooks", "at most 2 webhooks");
    let listed: Value = get_json(format!("{base}/api/v1/webhooks")).await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    let r = client()
        .delete(format!("{base}/api/v1/webhooks/{}", ids[0]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let (status, created) = create(&base, json!({"url": "http://127.0.0.1:9/c"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}
