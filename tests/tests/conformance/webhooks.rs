//! docs/protocol.md §4 through the assembled host: the webhook REST API, the test
//! delivery, the configurable signature header and SSRF refusal.

use serde_json::{Value, json};

use crate::harness::*;

#[tokio::test]
async fn webhook_api_round_trip() {
    let server = Server::start(&[]).await;
    let receiver = Receiver::start().await;
    let http = client();

    // Created without a secret: one is generated and shown once.
    let created = register_webhook(
        &server,
        &json!({"url": receiver.url("/r"), "events": ["job.completed", "NoteUpdated"], "max_retries": 2}),
    )
    .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{created}");
    for key in [
        "id",
        "url",
        "events",
        "active",
        "is_active",
        "max_retries",
        "created_at",
        "updated_at",
        "last_triggered_at",
        "failure_count",
    ] {
        assert!(created.get(key).is_some(), "{key} missing from {created}");
    }
    assert_eq!(created["active"], true);
    assert_eq!(created["is_active"], true);
    assert_eq!(created["max_retries"], 2);

    let url = server.url(&format!("/api/v1/webhooks/{id}"));
    let fetched: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(fetched["id"], id.as_str());
    assert!(
        fetched.get("secret").is_none(),
        "GET shows the secret: {fetched}"
    );

    // PATCH: `is_active` and `active` are synonyms; events accept both schemes.
    let res = http
        .patch(&url)
        .json(&json!({"is_active": false, "events": ["JobFailed"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(patched["active"], false);
    assert_eq!(patched["is_active"], false);
    let res = http
        .patch(&url)
        .json(&json!({"active": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A real, signed test delivery with an honest result.
    let res = http.post(format!("{url}/test")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let delivery: Value = res.json().await.unwrap();
    assert_eq!(delivery["success"], true, "{delivery}");
    let got = receiver.wait_for(1).await;
    event_webhook::verify(&secret, &got[0].headers, &got[0].body).unwrap();
    receiver.script(&[503]);
    let res = http.post(format!("{url}/test")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let failed: Value = res.json().await.unwrap();
    assert_eq!(
        failed["success"], false,
        "a 503 is reported as a failure: {failed}"
    );

    let list: Value = http
        .get(format!("{url}/deliveries?limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list.as_array().unwrap().len() >= 2, "{list}");
    assert_json_error(
        http.get(format!("{url}/deliveries?limit=0"))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;

    let res = http.delete(&url).send().await.unwrap();
    assert_eq!(res.status(), 204);
    assert_json_error(http.get(&url).send().await.unwrap(), 404).await;
    assert_json_error(http.delete(&url).send().await.unwrap(), 404).await;
    // A malformed id names no webhook: 404 (or 400), JSON either way.
    let res = http
        .get(server.url("/api/v1/webhooks/not-a-uuid"))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert!(status == 404 || status == 400, "{status}");
    assert_json_error(res, status).await;
}

#[tokio::test]
async fn private_targets_are_refused_unless_allowed() {
    // No --webhook-allow-cidrs here: loopback and metadata addresses are refused.
    let strict = Server::builder().loopback_webhooks(false).start().await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://[::1]/",
        "http://0.0.0.0/",
    ] {
        let res = client()
            .post(strict.url("/api/v1/webhooks"))
            .json(&json!({"url": url, "events": []}))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        assert!(status == 400 || status == 422, "{url}: {status}");
        assert_json_error(res, status).await;
    }
}

#[tokio::test]
async fn signature_header_name_is_configurable() {
    let server = Server::start(&["--webhook-signature-header", "X-Fortemi-Signature"]).await;
    let receiver = Receiver::start().await;
    let secret = "fortemi-secret-value";
    register_webhook(
        &server,
        &json!({"url": receiver.url("/f"), "events": ["JobCompleted"], "secret": secret}),
    )
    .await;
    server
        .publish(&json!({"type":"JobCompleted","job_id":uuid::Uuid::now_v7(),"job_type":"E"}))
        .await;
    let got = receiver.wait_for(1).await;
    let r = &got[0];
    assert!(r.headers.get("x-matric-signature").is_none());
    assert_eq!(
        r.header("x-fortemi-signature"),
        event_webhook::signing::matric_signature(secret, &r.body)
    );
    event_webhook::signing::verify_with(
        secret,
        &r.headers,
        &r.body,
        "X-Fortemi-Signature",
        event_webhook::signing::TOLERANCE,
        time::OffsetDateTime::now_utc().unix_timestamp(),
    )
    .unwrap();
}
