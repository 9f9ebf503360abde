//! Real parts for the conformance tests: an in-process `event-server` on
//! 127.0.0.1:0 (`event_server::testing`), a WebSocket client, an SSE client
//! that keeps every frame's raw bytes, and a scriptable webhook receiver (a
//! real axum server).

use std::time::Duration;

// The observability binary includes this harness too and uses only part of it.
#[allow(unused_imports)]
pub use event_server::testing::{Server, TempDir, WAIT, client, next_where};

/// `work` to its end, within [`WAIT`] in all.
///
/// For a loop over messages that waits for one in particular: each read has
/// its own timeout, but periodic messages (the job bridge's `QueueStatus`)
/// would keep such a loop alive forever when the awaited one never comes.
///
/// # Panics
///
/// When `work` does not finish in time; `what` says what was awaited.
pub async fn within<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, work).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not arrive within {WAIT:?}"),
    }
}

/// An HTTP client without an overall timeout, for streams.
pub fn stream_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Ends the first connection `GET /api/v1/connections` lists, as an operator
/// does with `DELETE /api/v1/connections/{id}`, so the client sees its stream
/// end and has to reconnect.
pub async fn kick_first_connection(server: &Server) {
    let conns: serde_json::Value = client()
        .get(server.url("/api/v1/connections"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = conns[0]["id"].as_u64().unwrap();
    let res = client()
        .delete(server.url(&format!("/api/v1/connections/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
}

mod metrics;
mod receiver;
mod sse;
mod ws;

pub use metrics::*;
pub use receiver::*;
pub use sse::*;
pub use ws::*;
