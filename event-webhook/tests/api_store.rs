//! The REST API on a store of its own (`Webhooks::serve_api_from`), opened
//! on the runtime that serves the API.
#![cfg(feature = "postgres")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use event_core::AllowAnonymous;
use event_test_support::runtime::{occupy, one_worker};
use event_webhook::Webhooks;
use event_webhook::store::PostgresStore;

/// How long a request may take before the test calls it stuck.
const WAIT: Duration = Duration::from_secs(20);

/// `POST /api/v1/webhooks` over a plain socket: the answer's head and body
/// as text (empty if none came within [`WAIT`]).
fn create(addr: SocketAddr) -> String {
    let body = r#"{"url":"http://127.0.0.1:9/hook","active":false}"#;
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        socket,
        "POST /api/v1/webhooks HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A host serves the API on a runtime of its own (event-server's intake)
/// and opens the API's store there: a registration is answered while the
/// runtime that opened the service's store (where the worker runs) is
/// blocked, as a saturated fan-out keeps it from its I/O driver. Through
/// the service's own store the request would wait for that runtime: a
/// PostgreSQL connection is served by the driver of the runtime that
/// opened it.
#[test]
fn the_api_on_its_own_store_does_not_wait_for_the_runtime_that_opened_the_service() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let (main, intake) = (one_worker("test-main"), one_worker("test-intake"));
    let webhooks = main.block_on(async {
        let store = PostgresStore::connect_in_schema(&url, &schema)
            .await
            .unwrap();
        let auth = Arc::new(AllowAnonymous);
        Webhooks::new(Arc::new(store), auth, common::fast_config())
            .await
            .unwrap()
    });
    let api_store = intake
        .block_on(PostgresStore::connect_in_schema(&url, &schema))
        .unwrap();
    webhooks.serve_api_from(Arc::new(api_store)).unwrap();
    // Only once.
    let again = intake
        .block_on(PostgresStore::connect_in_schema(&url, &schema))
        .unwrap();
    assert!(webhooks.serve_api_from(Arc::new(again)).is_err());

    let app: axum::Router = webhooks.router();
    let listener = intake
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    intake.spawn(async move { axum::serve(listener, app).await });

    let stuck = occupy(&main, 3 * WAIT);
    let answer = create(addr);
    drop(stuck);
    assert!(
        answer.starts_with("HTTP/1.1 201"),
        "no registration while the service's runtime was blocked: {answer:?}"
    );
    // The same database: the service's own store sees it.
    let stored = main.block_on(webhooks.store().list_webhooks()).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].url, "http://127.0.0.1:9/hook");

    main.block_on(common::drop_schema(&schema));
    main.shutdown_background();
    intake.shutdown_background();
}
