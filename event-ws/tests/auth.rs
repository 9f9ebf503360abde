//! Handshake: tokens (header, query, subprotocol), origin allow-list, scoped
//! events, capacity.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{Setup, TestServer, WAIT, next_text, request_with};
use event_core::{Access, EventMeta, QueueStatus, StaticTokens};
use event_ws::WsConfig;
use tokio_tungstenite::tungstenite;

fn tokens() -> Setup {
    Setup {
        auth: Arc::new(StaticTokens::new().client("good-token")),
        ..Setup::default()
    }
}

/// The HTTP status of a refused handshake and its body.
async fn refused(request: tungstenite::handshake::client::Request) -> (u16, String) {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake timed out")
    {
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            (status, body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the upgrade succeeded"),
    }
}

#[tokio::test]
async fn token_required_401_without_and_101_with() {
    let server = TestServer::start_with(tokens()).await;
    let url = server.url();

    let (status, body) = refused(request_with(&url, &[])).await;
    assert_eq!(status, 401);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"], "unauthorized");
    assert!(json["message"].is_string());
    let (status, _) = refused(request_with(&format!("{url}?token=wrong"), &[])).await;
    assert_eq!(status, 401);
    assert_eq!(server.registry.total(), 0);

    // Query parameter.
    let (mut c1, r1) = tokio_tungstenite::connect_async(format!("{url}?token=good-token"))
        .await
        .unwrap();
    assert_eq!(r1.status(), 101);
    assert!(
        next_text(&mut c1)
            .await
            .starts_with(r#"{"type":"QueueStatus""#)
    );

    // Authorization header.
    let (mut c2, r2) = tokio_tungstenite::connect_async(request_with(
        &url,
        &[("authorization", "Bearer good-token")],
    ))
    .await
    .unwrap();
    assert_eq!(r2.status(), 101);
    assert!(
        next_text(&mut c2)
            .await
            .starts_with(r#"{"type":"QueueStatus""#)
    );

    // Subprotocol, echoed back so browsers accept the handshake.
    let (mut c3, r3) = tokio_tungstenite::connect_async(request_with(
        &url,
        &[("sec-websocket-protocol", "json, bearer.good-token")],
    ))
    .await
    .unwrap();
    assert_eq!(r3.status(), 101);
    assert_eq!(
        r3.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("bearer.good-token")
    );
    assert!(
        next_text(&mut c3)
            .await
            .starts_with(r#"{"type":"QueueStatus""#)
    );
    server.wait_registered(3).await;
}

#[tokio::test]
async fn no_subprotocol_is_selected_when_none_was_offered() {
    let server = TestServer::start(WsConfig::default()).await;
    let (_c, response) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    assert!(response.headers().get("sec-websocket-protocol").is_none());
}

#[tokio::test]
async fn origin_allow_list_403() {
    let server = TestServer::start(WsConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..WsConfig::default()
    })
    .await;
    let url = server.url();
    let (status, body) = refused(request_with(&url, &[("origin", "https://evil.example")])).await;
    assert_eq!(status, 403);
    assert!(body.contains(r#""error":"forbidden""#), "{body}");

    let (_ok, response) =
        tokio_tungstenite::connect_async(request_with(&url, &[("origin", "https://app.example")]))
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
}

#[tokio::test]
async fn a_star_in_the_allow_list_allows_any_origin() {
    // `*` means any origin, as it does for CORS (ALLOWED_ORIGINS='*'), also
    // next to exact entries.
    for allowed in [vec!["*"], vec!["https://app.example", " * "]] {
        let server = TestServer::start(WsConfig {
            allowed_origins: allowed.iter().map(|a| a.to_string()).collect(),
            ..WsConfig::default()
        })
        .await;
        for origin in ["https://evil.example", "null", "http://localhost:3000"] {
            let request = request_with(&server.url(), &[("origin", origin)]);
            let (_client, response) =
                tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
                    .await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{allowed:?} refused {origin}: {e}"));
            assert_eq!(response.status(), 101);
        }
    }
}

#[tokio::test]
async fn plain_get_is_a_json_400() {
    let server = TestServer::start(WsConfig::default()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /api/v1/ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(response.contains(r#""error":"bad_upgrade""#), "{response}");
}

#[tokio::test]
async fn scoped_events_reach_only_allowed_principals() {
    let only = |m: &str| Access::Only(BTreeSet::from([m.to_owned()]));
    let server = TestServer::start_with(Setup {
        auth: Arc::new(
            StaticTokens::new()
                .client_with_memories("alpha-token", only("alpha"))
                .client_with_memories("beta-token", only("beta"))
                .allow_anonymous(true),
        ),
        ..Setup::default()
    })
    .await;
    let url = server.url();
    let connect = |token: Option<&str>| {
        let url = match token {
            Some(t) => format!("{url}?token={t}"),
            None => url.clone(),
        };
        async move {
            let (mut c, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            next_text(&mut c).await;
            c
        }
    };
    let mut alpha = connect(Some("alpha-token")).await;
    let mut beta = connect(Some("beta-token")).await;
    let mut anon = connect(None).await;

    let a = server
        .bus
        .publish_with(QueueStatus::new(1, 0), EventMeta::default().memory("alpha"));
    let b = server
        .bus
        .publish_with(QueueStatus::new(2, 0), EventMeta::default().memory("beta"));
    let open = server.bus.publish(QueueStatus::new(3, 0));
    let text = |e: &event_core::Event| String::from_utf8(e.json().to_vec()).unwrap();

    assert_eq!(next_text(&mut alpha).await, text(&a));
    assert_eq!(next_text(&mut alpha).await, text(&open));
    assert_eq!(next_text(&mut beta).await, text(&b));
    assert_eq!(next_text(&mut beta).await, text(&open));
    // Anonymous principals see only unscoped events.
    assert_eq!(next_text(&mut anon).await, text(&open));
}

#[tokio::test]
async fn over_capacity_is_503_before_the_upgrade() {
    let server = TestServer::start(WsConfig {
        max_connections: 2,
        ..WsConfig::default()
    })
    .await;
    let _a = server.connect().await;
    let b = server.connect().await;
    let (status, body) = refused(request_with(&server.url(), &[])).await;
    assert_eq!(status, 503);
    assert!(body.contains(r#""error":"too_many_connections""#), "{body}");

    drop(b);
    server.wait_endpoint_connections(1).await;
    let _c = server.connect().await;
    assert_eq!(server.endpoint.connections(), 2);
}

#[tokio::test]
async fn a_subscribe_filter_naming_a_memory_the_token_may_not_see_is_refused() {
    use futures_util::SinkExt;
    let only = |m: &str| Access::Only(BTreeSet::from([m.to_owned()]));
    let server = TestServer::start_with(Setup {
        auth: Arc::new(StaticTokens::new().client_with_memories("alpha-token", only("alpha"))),
        ..Setup::default()
    })
    .await;
    let (mut alpha, _) =
        tokio_tungstenite::connect_async(format!("{}?token=alpha-token", server.url()))
            .await
            .unwrap();
    next_text(&mut alpha).await;
    async fn ask(client: &mut common::Client, message: &str) -> serde_json::Value {
        client
            .send(tungstenite::Message::text(message))
            .await
            .unwrap();
        serde_json::from_str(&next_text(client).await).unwrap()
    }
    let refused = ask(
        &mut alpha,
        r#"{"type":"subscribe","events":["queue"],"filter":{"memory":"beta"}}"#,
    )
    .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["error"], "forbidden", "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("beta"),
        "{refused}"
    );
    let accepted = ask(
        &mut alpha,
        r#"{"type":"subscribe","filter":{"memory":"alpha"}}"#,
    )
    .await;
    assert_eq!(accepted["type"], "subscribed", "{accepted}");
    // The refused message changed nothing: every kind still goes.
    assert_eq!(
        accepted["events"].as_array().unwrap().len(),
        7,
        "{accepted}"
    );
    let a = server
        .bus
        .publish_with(QueueStatus::new(1, 0), EventMeta::default().memory("alpha"));
    assert_eq!(
        next_text(&mut alpha).await,
        String::from_utf8(a.json().to_vec()).unwrap()
    );
}
