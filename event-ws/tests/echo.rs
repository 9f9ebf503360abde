//! `echo_router`: the endpoint's machinery answering with what it gets,
//! for conformance suites.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;

use common::{WAIT, expect_close};
use event_ws::{WsConfig, close_code, echo_router};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

#[tokio::test]
async fn messages_come_back_and_the_limits_are_the_endpoints() {
    let config = WsConfig {
        path: "/".into(),
        max_message_bytes: 1024,
        ..WsConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = echo_router(config).into_make_service_with_connect_info::<SocketAddr>();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    // No initial status: the first message is the echo; requests of the
    // HotM protocol are echoed like anything else.
    for message in [
        Message::text("refresh"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("é".repeat(512)),
    ] {
        client.send(message.clone()).await.unwrap();
        let got = tokio::time::timeout(WAIT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, message);
    }
    client.send(Message::text("x".repeat(1025))).await.unwrap();
    assert_eq!(expect_close(&mut client).await, close_code::MESSAGE_TOO_BIG);

    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    client
        .send(Message::Close(Some(CloseFrame {
            code: 3001.into(),
            reason: "done".into(),
        })))
        .await
        .unwrap();
    assert_eq!(expect_close(&mut client).await, 3001);
    server.abort();
}
