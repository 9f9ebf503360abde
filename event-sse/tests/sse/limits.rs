//! Limits of issue 15: the connection limit (item 4) and the byte bound of
//! a replay (item 3).

use event_sse::SseConfig;

use crate::common::{Options, RawSse, Server, WAIT};

async fn wait_streams(server: &Server, n: usize) {
    tokio::time::timeout(WAIT, async {
        while server.endpoint.connections() != n {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "expected {n} open streams, have {}",
            server.endpoint.connections()
        )
    });
}

#[tokio::test]
async fn streams_beyond_max_connections_get_503_with_retry_after() {
    let server = Server::with(Options {
        config: SseConfig {
            max_connections: 3,
            ..SseConfig::default()
        },
        ..Options::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
        assert_eq!(c.status, 200);
        c.skip_preamble().await;
        open.push(c);
    }
    server.wait_connections(3).await;

    let mut refused = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.head);
    assert_eq!(refused.header("retry-after").as_deref(), Some("5"));
    assert!(
        refused
            .header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "{}",
        refused.head
    );
    let body: serde_json::Value = serde_json::from_str(&refused.body_text().await).unwrap();
    assert_eq!(body["error"], "over_capacity", "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains('3')),
        "{body}"
    );
    // The alias path counts against the same limit.
    let alias = RawSse::connect(server.addr, "/api/v1/events/stream", &[]).await;
    assert_eq!(alias.status, 503);
    assert_eq!(server.registry.total(), 3);

    // One leaves: its place is free again.
    drop(open.pop());
    wait_streams(&server, 2).await;
    let mut again = RawSse::connect(server.addr, "/api/v1/events", &[]).await;
    assert_eq!(again.status, 200, "{}", again.head);
    again.skip_preamble().await;
    assert_eq!(server.endpoint.connections(), 3);
}
