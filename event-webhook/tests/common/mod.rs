//! Test helpers shared by the integration tests: store factories (SQLite
//! temp files, PostgreSQL in a fresh schema) and a scriptable receiver.
#![allow(
    dead_code,
    unused_macros,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

pub mod receiver;

use std::sync::Arc;

use event_core::EventKind;
use event_webhook::model::Webhook;
use event_webhook::store::{SqliteStore, WebhookStore};

/// The PostgreSQL URL for tests, or `None` (skip) when unset. With
/// `EVENT_TEST_REQUIRE_SERVICES=1` a missing URL fails the test.
pub fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            if std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("TEST_POSTGRES_URL is not set but EVENT_TEST_REQUIRE_SERVICES=1");
            }
            eprintln!("skipping: TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A unique temporary SQLite URL (the file is created on connect).
pub fn sqlite_url() -> (String, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("event-webhook-{}.db", uuid::Uuid::new_v4()));
    (format!("sqlite://{}", path.display()), path)
}

/// A fresh SQLite store in a temporary file.
pub async fn sqlite_store() -> Arc<dyn WebhookStore> {
    let (url, _) = sqlite_url();
    Arc::new(SqliteStore::connect(&url).await.expect("sqlite store"))
}

/// A unique schema name for one test.
pub fn fresh_schema() -> String {
    format!("wh_test_{}", uuid::Uuid::new_v4().simple())
}

/// A fresh PostgreSQL store in its own schema (and the schema's name, for
/// [`drop_schema`]), or `None` when PostgreSQL is not configured.
#[cfg(feature = "postgres")]
pub async fn postgres_store() -> Option<(Arc<dyn WebhookStore>, String)> {
    let url = postgres_url()?;
    let schema = fresh_schema();
    let store = event_webhook::store::PostgresStore::connect_in_schema(&url, &schema)
        .await
        .expect("postgres store");
    Some((Arc::new(store), schema))
}

/// Removes a test schema (best effort: a failed test leaves its schema for
/// inspection).
#[cfg(feature = "postgres")]
pub async fn drop_schema(schema: &str) {
    let Ok(url) = std::env::var("TEST_POSTGRES_URL") else {
        return;
    };
    if let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
    {
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
        pool.close().await;
    }
}

use std::time::Duration;

use event_core::{AllowAnonymous, Authenticator};
use event_webhook::{WebhookConfig, Webhooks};

/// A config for tests: loopback allowed, short schedule, fast polling.
pub fn fast_config() -> WebhookConfig {
    WebhookConfig {
        retry_schedule: vec![Duration::from_millis(50); 4],
        jitter: 0.0,
        poll_interval: Duration::from_millis(20),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        allow_cidrs: vec!["127.0.0.0/8".parse().unwrap()],
        ..WebhookConfig::default()
    }
}

/// The service on `store` with `config`, its API served on 127.0.0.1:0.
pub async fn serve(
    store: Arc<dyn WebhookStore>,
    auth: Arc<dyn Authenticator>,
    config: WebhookConfig,
) -> (Webhooks, String) {
    let webhooks = Webhooks::new(store, auth, config).await.unwrap();
    let app: axum::Router = webhooks.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (webhooks, base)
}

/// The service on a fresh SQLite store, anonymous admin, fast config.
pub async fn serve_sqlite(config: WebhookConfig) -> (Webhooks, String) {
    serve(sqlite_store().await, Arc::new(AllowAnonymous), config).await
}

/// A plain HTTP client for calling the API.
pub fn client() -> reqwest::Client {
    event_webhook::client::install_crypto_provider();
    reqwest::Client::new()
}

/// Polls `check` (an async condition on the store) until it holds.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let result = tokio::time::timeout(timeout, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if check().await {
                return;
            }
        }
    })
    .await;
    assert!(result.is_ok(), "condition not met within {timeout:?}");
}

/// `url` with `options=-c search_path=<schema>` so any process connecting
/// with it works inside that schema.
pub fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

/// Runs each named `async fn(Arc<dyn WebhookStore>)` of the calling test
/// file as two tests: `sqlite::<name>` and `postgres::<name>` (skipped
/// without `TEST_POSTGRES_URL`, in a fresh schema dropped afterwards; not
/// built without the `postgres` feature).
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::common::sqlite_store().await).await;
                }
            )*
        }
        // Built without the `postgres` feature there is no PostgreSQL store
        // to test.
        #[cfg(feature = "postgres")]
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    let Some((store, schema)) = super::common::postgres_store().await else {
                        return;
                    };
                    super::$name(store).await;
                    super::common::drop_schema(&schema).await;
                }
            )*
        }
    };
}

/// An active webhook for `url` (every kind when `events` is empty), with a
/// test secret and 4 retries; tests change what they need with
/// `Webhook { field, ..webhook(url, events) }`.
pub fn webhook(url: impl Into<String>, events: Vec<EventKind>) -> Webhook {
    let now = time::OffsetDateTime::now_utc();
    Webhook {
        id: uuid::Uuid::now_v7(),
        url: url.into(),
        events,
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        active: true,
        max_retries: 4,
        created_at: now,
        updated_at: now,
        last_triggered_at: None,
        failure_count: 0,
        disabled_reason: None,
    }
}
