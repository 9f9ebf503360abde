//! The host on PostgreSQL (feature `postgres`): the use cases that touch the
//! database — notes committed before `NoteUpdated` (UC-002) and durable,
//! signed, retried webhook deliveries (UC-004). Each test runs in a fresh
//! schema. Skipped when `TEST_POSTGRES_URL` is unset, unless
//! `EVENT_TEST_REQUIRE_SERVICES=1`.

use crate::harness::*;
use crate::use_cases::{uc002, uc004};

fn postgres_url() -> Option<String> {
    match std::env::var("TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "TEST_POSTGRES_URL is not set but EVENT_TEST_REQUIRE_SERVICES=1"
            );
            eprintln!("skipping: TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// A fresh schema; the server's connections use it through `search_path`.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    async fn create(url: &str) -> Schema {
        let name = format!("conformance_{}", uuid::Uuid::now_v7().simple());
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        // The name is generated here (a UUID), never outside input.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        Schema {
            url: url.to_owned(),
            name,
        }
    }

    fn scoped_url(&self) -> String {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!("{}{sep}options=-c%20search_path%3D{}", self.url, self.name)
    }

    async fn drop_it(self) {
        let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.name
        )))
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
}

async fn with_pg_server(extra: &[&str], run: impl AsyncFnOnce(&Server)) {
    let Some(url) = postgres_url() else { return };
    let schema = Schema::create(&url).await;
    let mut server = Server::builder()
        .database_url(schema.scoped_url())
        .args(extra)
        .start()
        .await;
    run(&server).await;
    server.shutdown().await;
    schema.drop_it().await;
}

#[tokio::test]
async fn uc002_on_postgresql() {
    with_pg_server(&[], async |server| uc002(server).await).await;
}

#[tokio::test]
async fn uc004_on_postgresql() {
    with_pg_server(
        &["--webhook-retry-schedule", "100ms,200ms"],
        async |server| uc004(server).await,
    )
    .await;
}
