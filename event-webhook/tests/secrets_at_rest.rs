//! Webhook secrets at rest: the SQLite file is owner-only, and with
//! `WEBHOOK_SECRET_KEY` secrets are sealed in the database (both engines):
//! the raw row never holds the secret, deliveries still sign with it, keys
//! rotate, plaintext rows from before keep working, and a missing or wrong
//! key is a clear error at start-up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::receiver::Receiver;
use common::{fast_config, sqlite_url};
use event_core::{AllowAnonymous, EventBus, JobCompleted, SinkRunner};
use event_webhook::model::Webhook;
#[cfg(feature = "postgres")]
use event_webhook::store::PostgresStore;
use event_webhook::store::{SqliteStore, WebhookStore};
use event_webhook::{SecretKey, WebhookConfig, WebhookError, Webhooks};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);
const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn keys(list: &str) -> Vec<SecretKey> {
    SecretKey::parse_list(list).unwrap()
}

fn config(list: &str) -> WebhookConfig {
    WebhookConfig {
        secret_keys: keys(list),
        ..fast_config()
    }
}

/// A store and a way to read its raw `webhooks.secret` column.
#[derive(Clone)]
enum Raw {
    Sqlite(SqliteStore),
    #[cfg(feature = "postgres")]
    Postgres(PostgresStore),
}

impl Raw {
    fn store(&self) -> Arc<dyn WebhookStore> {
        match self {
            Raw::Sqlite(s) => Arc::new(s.clone()),
            #[cfg(feature = "postgres")]
            Raw::Postgres(s) => Arc::new(s.clone()),
        }
    }

    async fn secret_column(&self, id: Uuid) -> String {
        match self {
            Raw::Sqlite(s) => sqlx::query_scalar("SELECT secret FROM webhooks WHERE id = ?")
                .bind(id)
                .fetch_one(s.pool())
                .await
                .unwrap(),
            #[cfg(feature = "postgres")]
            Raw::Postgres(s) => sqlx::query_scalar("SELECT secret FROM webhooks WHERE id = $1")
                .bind(id)
                .fetch_one(s.pool())
                .await
                .unwrap(),
        }
    }

    /// Every column of the row as text, to look for the secret anywhere.
    async fn whole_row(&self, id: Uuid) -> String {
        match self {
            Raw::Sqlite(s) => sqlx::query_scalar(
                "SELECT url || ' ' || events || ' ' || secret FROM webhooks WHERE id = ?",
            )
            .bind(id)
            .fetch_one(s.pool())
            .await
            .unwrap(),
            #[cfg(feature = "postgres")]
            Raw::Postgres(s) => {
                sqlx::query_scalar("SELECT row_to_json(w)::text FROM webhooks w WHERE id = $1")
                    .bind(id)
                    .fetch_one(s.pool())
                    .await
                    .unwrap()
            }
        }
    }
}

fn webhook(url: String, secret: &str) -> Webhook {
    Webhook {
        secret: secret.to_owned(),
        ..common::webhook(url, Vec::new())
    }
}

/// Publishes one event through the service and returns the delivery the
/// receiver got at `path`, checked against `secret`.
async fn deliver_and_verify(webhooks: &Webhooks, rx: &Receiver, path: &str, secret: &str) {
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());
    bus.publish(JobCompleted {
        job_id: Uuid::now_v7(),
        job_type: "Embedding".into(),
        note_id: None,
        duration_ms: None,
    });
    let got = rx.wait_for(path, 1, WAIT).await;
    let req = got.last().unwrap();
    event_webhook::verify(secret, &req.headers, &req.body).unwrap();
    standardwebhooks::Webhook::from_bytes(event_webhook::signing::standard_key(secret))
        .unwrap()
        .verify(&req.body, &req.headers)
        .unwrap();
    runner.shutdown(Duration::from_secs(5)).await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);
}

async fn start(raw: &Raw, list: &str) -> Result<Webhooks, WebhookError> {
    Webhooks::new(raw.store(), Arc::new(AllowAnonymous), config(list)).await
}

/// The whole story on one engine.
async fn sealed_secrets(raw: Raw) {
    let rx = Receiver::start().await;
    let k1 = SecretKey::from_base64(K1).unwrap();
    let k2 = SecretKey::from_base64(K2).unwrap();

    // A plaintext row from before encryption was turned on.
    let legacy = webhook(rx.url("legacy"), "legacy-secret-0123456789");
    raw.store().create_webhook(&legacy).await.unwrap();
    assert_eq!(raw.secret_column(legacy.id).await, legacy.secret);

    // Turned on with K1: the legacy row is sealed at start-up and still
    // works; a new webhook is sealed from the start.
    let webhooks = start(&raw, K1).await.unwrap();
    let sealed = raw.secret_column(legacy.id).await;
    assert!(
        sealed.starts_with(&format!("enc:v1:{}:", k1.id())),
        "{sealed}"
    );
    let fresh = webhook(rx.url("fresh"), SECRET);
    webhooks.store().create_webhook(&fresh).await.unwrap();
    webhooks.refresh().await.unwrap();
    for w in [&legacy, &fresh] {
        let row = raw.whole_row(w.id).await;
        assert!(
            !row.contains(&w.secret),
            "the raw row holds the secret: {row}"
        );
        assert!(!row.contains(&w.secret[8..20]), "{row}");
        let back = webhooks.store().get_webhook(w.id).await.unwrap().unwrap();
        assert_eq!(back.secret, w.secret);
    }
    // Deliveries sign with the real secrets.
    deliver_and_verify(&webhooks, &rx, "legacy", &legacy.secret).await;
    assert_eq!(rx.wait_for("fresh", 1, WAIT).await.len(), 1);
    let fresh_req = &rx.requests_to("fresh")[0];
    event_webhook::verify(SECRET, &fresh_req.headers, &fresh_req.body).unwrap();
    drop(webhooks);

    // A plaintext row written by something that does not seal (another
    // instance without keys) keeps working with keys configured.
    let late = webhook(rx.url("late"), "late-plaintext-secret-42");
    raw.store().create_webhook(&late).await.unwrap();

    // Rotation, step 2: K2 first, K1 still opens. Everything is re-sealed
    // under K2 at start-up and keeps signing correctly.
    let webhooks = start(&raw, &format!("{K2},{K1}")).await.unwrap();
    for w in [&legacy, &fresh, &late] {
        let col = raw.secret_column(w.id).await;
        assert!(col.starts_with(&format!("enc:v1:{}:", k2.id())), "{col}");
        let back = webhooks.store().get_webhook(w.id).await.unwrap().unwrap();
        assert_eq!(back.secret, w.secret);
    }
    // A write through the service re-seals with a fresh nonce.
    let before = raw.secret_column(fresh.id).await;
    let mut changed = webhooks
        .store()
        .get_webhook(fresh.id)
        .await
        .unwrap()
        .unwrap();
    changed.max_retries = 2;
    assert!(webhooks.store().update_webhook(&changed).await.unwrap());
    let after = raw.secret_column(fresh.id).await;
    assert_ne!(before, after);
    assert!(after.starts_with(&format!("enc:v1:{}:", k2.id())));
    drop(webhooks);

    // Step 3: K2 alone opens everything.
    let webhooks = start(&raw, K2).await.unwrap();
    deliver_and_verify(&webhooks, &rx, "late", &late.secret).await;
    drop(webhooks);

    // The retired key alone, or no key at all: a clear error at start-up
    // naming the webhook and the key id, never the secret.
    for list in [K1, ""] {
        let e = start(&raw, list).await.unwrap_err();
        assert!(
            matches!(e, WebhookError::SecretUndecryptable { .. }),
            "{list:?}: {e}"
        );
        let msg = e.to_string();
        assert!(msg.contains(k2.id()), "{msg}");
        for w in [&legacy, &fresh, &late] {
            assert!(!msg.contains(&w.secret), "{msg}");
        }
    }
}

#[tokio::test]
async fn sqlite_secrets_are_sealed_at_rest() {
    let (url, _) = sqlite_url();
    sealed_secrets(Raw::Sqlite(SqliteStore::connect(&url).await.unwrap())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_secrets_are_sealed_at_rest() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let store = PostgresStore::connect_in_schema(&url, &schema)
        .await
        .unwrap();
    sealed_secrets(Raw::Postgres(store)).await;
    common::drop_schema(&schema).await;
}

#[tokio::test]
async fn a_registered_secret_may_not_look_sealed() {
    let (_w, base) = common::serve_sqlite(config(K1)).await;
    let r = common::client()
        .post(format!("{base}/api/v1/webhooks"))
        .json(&serde_json::json!({"url": "http://127.0.0.1:9/x", "secret": "enc:v1:aaaaaaaa:AAAAAAAAAAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("secret"),
        "{body}"
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_sqlite_file_and_its_wal_and_shm_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let side = |p: &std::path::Path, s: &str| {
        let mut o = p.as_os_str().to_owned();
        o.push(s);
        std::path::PathBuf::from(o)
    };

    // Created by the service.
    let (url, path) = sqlite_url();
    let webhooks = Webhooks::connect(&url, Arc::new(AllowAnonymous), fast_config())
        .await
        .unwrap();
    webhooks
        .store()
        .create_webhook(&webhook("http://127.0.0.1:9/x".into(), SECRET))
        .await
        .unwrap();
    for p in [path.clone(), side(&path, "-wal"), side(&path, "-shm")] {
        assert!(p.exists(), "{}", p.display());
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }

    // A world-readable file from before is narrowed on open.
    let (url, path) = sqlite_url();
    drop(SqliteStore::connect(&url).await.unwrap());
    for p in [path.clone(), side(&path, "-wal"), side(&path, "-shm")] {
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let _store = SqliteStore::connect(&url).await.unwrap();
    for p in [path.clone(), side(&path, "-wal"), side(&path, "-shm")] {
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    assert_eq!(mode(&path), 0o600);
}
