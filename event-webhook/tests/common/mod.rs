//! Test helpers shared by the integration tests: store factories (SQLite
//! temp files, PostgreSQL in a fresh schema) and a scriptable receiver.
#![allow(dead_code, missing_docs, clippy::unwrap_used, clippy::expect_used)]

pub mod receiver;

use std::sync::Arc;

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

/// A fresh PostgreSQL store in its own schema, or `None` when PostgreSQL is
/// not configured.
pub async fn postgres_store() -> Option<Arc<dyn WebhookStore>> {
    let url = postgres_url()?;
    let schema = fresh_schema();
    Some(Arc::new(
        event_webhook::store::PostgresStore::connect_in_schema(&url, &schema)
            .await
            .expect("postgres store"),
    ))
}
