//! The host on PostgreSQL (feature `postgres`): the use cases that touch the
//! database — notes committed before `NoteUpdated` (UC-002) and durable,
//! signed, retried webhook deliveries (UC-004). Each test runs in a fresh
//! schema. Skipped when `TEST_POSTGRES_URL` is unset, unless
//! `EVENT_TEST_REQUIRE_SERVICES=1`.

use crate::harness::*;
use crate::use_cases::{uc002, uc004};
use event_server::testing::{PgSchema, postgres_url};

async fn with_pg_server(extra: &[&str], run: impl AsyncFnOnce(&Server)) {
    let Some(url) = postgres_url("conformance on PostgreSQL") else {
        return;
    };
    let schema = PgSchema::create(&url).await;
    let mut server = Server::builder()
        .database_url(schema.scoped_url())
        .args(extra)
        .start()
        .await;
    run(&server).await;
    server.shutdown().await;
    schema.drop_schema().await;
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
