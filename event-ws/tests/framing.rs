//! RFC 6455 framing as the endpoint reads and writes it, checked with a
//! client that writes its frames byte by byte: fragmented messages,
//! control frames between fragments, client pings, and the close codes
//! for broken framing (1002) and text that is not UTF-8 (1007).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use common::raw::{RawClient, client_frame};
use event_core::QueueStatus;
use event_ws::{WsConfig, close_code};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_fragmented_message_with_a_ping_between_its_parts_is_understood() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut client, first) = RawClient::connect(&server).await;
    assert!(first.starts_with(br#"{"type":"QueueStatus""#));
    client.send(0x01, br#"{"type""#, true).await;
    client.send(0x89, b"are you there", true).await;
    client.send(0x00, br#":"pi"#, true).await;
    client.send(0x80, br#"ng"}"#, true).await;
    // The ping is answered at once, with its payload; then the message.
    assert_eq!(client.frame().await, (0xA, b"are you there".to_vec()));
    assert_eq!(client.text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn replies_keep_the_order_of_the_requests_around_a_refresh() {
    let server = TestServer::start(WsConfig::default()).await;
    server.bus.publish(QueueStatus::new(3, 1));
    let (mut client, first) = RawClient::connect(&server).await;
    let status = String::from_utf8(first).unwrap();
    assert!(status.contains(r#""pending":3"#), "{status}");
    // In one write: the refresh's reply is prepared asynchronously, yet the
    // pong that follows it must come after it.
    let mut both = Vec::new();
    for text in [&b"refresh"[..], br#"{"type":"ping"}"#] {
        let mask = [1, 2, 3, 4];
        both.push(0x81);
        both.push(0x80 | text.len() as u8);
        both.extend_from_slice(&mask);
        both.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
    client.tcp.write_all(&both).await.unwrap();
    assert_eq!(client.text().await, status, "the pong overtook the refresh");
    assert_eq!(client.text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn broken_input_closes_with_its_code() {
    let server = TestServer::start(WsConfig::default()).await;
    // (first header byte, payload, masked, expected close code)
    let cases: [(u8, &[u8], bool, u16); 3] = [
        (0x81, b"refresh", false, close_code::PROTOCOL_ERROR),
        (0x83, b"", true, close_code::PROTOCOL_ERROR),
        (
            0x81,
            &[0x7b, 0xff, 0xfe, 0x7d],
            true,
            close_code::INVALID_PAYLOAD,
        ),
    ];
    for (first, payload, masked, code) in cases {
        let (mut client, _) = RawClient::connect(&server).await;
        client.send(first, payload, masked).await;
        assert_eq!(client.close_code().await, code, "{first:#x} {payload:?}");
        server.wait_registered(0).await;
    }
}

#[tokio::test]
async fn a_burst_of_events_arrives_whole_and_in_order() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut client, _) = RawClient::connect(&server).await;
    let published: Vec<String> = (0..500)
        .map(|i| {
            let event = server.bus.publish(QueueStatus::new(i, 0));
            String::from_utf8(event.json().to_vec()).unwrap()
        })
        .collect();
    for want in &published {
        assert_eq!(&client.text().await, want);
    }
}

/// A close frame's payload: the code and a reason.
fn close_with(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    client_frame(0x88, &payload)
}

#[tokio::test]
async fn a_close_code_a_client_may_not_send_fails_the_connection_with_1002() {
    let server = TestServer::start(WsConfig::default()).await;
    // RFC 6455 §7.4: 1004–1006 and 1015 are reserved, 1016–2999 are not
    // assigned, and nothing from 5000 exists.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        let (mut client, _) = RawClient::connect(&server).await;
        client.send_raw(&close_with(code, b"bye")).await;
        let payload = client.close_payload().await;
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            close_code::PROTOCOL_ERROR,
            "client code {code}"
        );
        client.expect_eof().await;
    }
    // Valid codes are echoed (§5.5.1), a reason is not.
    for code in [1000u16, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
        let (mut client, _) = RawClient::connect(&server).await;
        client.send_raw(&close_with(code, b"bye")).await;
        assert_eq!(client.close_payload().await, code.to_be_bytes(), "{code}");
        client.expect_eof().await;
    }
    // A close of one byte is broken framing; a reason that is not UTF-8 is
    // invalid data.
    for (frame, want) in [
        (client_frame(0x88, &[0x03]), close_code::PROTOCOL_ERROR),
        (close_with(1000, b"\xff\xfe"), close_code::INVALID_PAYLOAD),
    ] {
        let (mut client, _) = RawClient::connect(&server).await;
        client.send_raw(&frame).await;
        let payload = client.close_payload().await;
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), want);
        client.expect_eof().await;
    }
    server.wait_registered(0).await;
}

#[tokio::test]
async fn a_ping_read_with_a_close_gets_its_pong_before_the_close() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut client, _) = RawClient::connect(&server).await;
    let mut batch = client_frame(0x89, b"owed");
    batch.extend(close_with(1000, b""));
    client.send_raw(&batch).await;
    assert_eq!(client.frame().await, (0xA, b"owed".to_vec()));
    assert_eq!(client.frame().await, (0x8, 1000u16.to_be_bytes().to_vec()));
    client.expect_eof().await;

    // The replies to requests in the same batch are not lost either, a
    // `refresh` (answered asynchronously) included.
    server.bus.publish(QueueStatus::new(4, 2));
    let (mut client, status) = RawClient::connect(&server).await;
    let mut batch = client_frame(0x81, b"refresh");
    batch.extend(client_frame(0x81, br#"{"type":"ping"}"#));
    batch.extend(client_frame(0x89, b"p"));
    batch.extend(close_with(1001, b""));
    client.send_raw(&batch).await;
    assert_eq!(client.frame().await, (0x1, status));
    assert_eq!(client.frame().await, (0x1, br#"{"type":"pong"}"#.to_vec()));
    assert_eq!(client.frame().await, (0xA, b"p".to_vec()));
    assert_eq!(client.frame().await, (0x8, 1001u16.to_be_bytes().to_vec()));
    client.expect_eof().await;
}

#[tokio::test]
async fn invalid_utf8_fails_the_connection_before_the_message_ends() {
    let server = TestServer::start(WsConfig::default()).await;
    // In a fragment: the final fragment is never sent.
    let (mut client, _) = RawClient::connect(&server).await;
    client
        .send_raw(&client_frame(0x01, "κόσμε".as_bytes()))
        .await;
    client
        .send_raw(&client_frame(0x00, b"\xce\xbc\xed\xa0\x80edited"))
        .await;
    assert_eq!(client.close_code().await, close_code::INVALID_PAYLOAD);
    // In the middle of one frame: the rest of it is never sent.
    let (mut client, _) = RawClient::connect(&server).await;
    let frame = client_frame(0x81, b"valid, then \xf4\x90\x80\x80 and more");
    client.send_raw(&frame[..6 + 14]).await;
    assert_eq!(client.close_code().await, close_code::INVALID_PAYLOAD);
    // A character split between fragments is fine.
    let (mut client, _) = RawClient::connect(&server).await;
    let message = r#"{"type":"ping","note":"€"}"#.as_bytes();
    let cut = message.len() - 4;
    client.send_raw(&client_frame(0x01, &message[..cut])).await;
    client.send_raw(&client_frame(0x80, &message[cut..])).await;
    assert_eq!(client.text().await, r#"{"type":"pong"}"#);
}

#[tokio::test]
async fn frames_read_with_a_bad_one_are_handled_before_the_connection_fails() {
    let server = TestServer::start(WsConfig::default()).await;
    let reserved_bit = {
        let mut frame = client_frame(0x81, b"x");
        frame[0] |= 0x20;
        frame
    };
    let not_masked = b"\x81\x01x".to_vec();
    let fragmented_ping = client_frame(0x09, b"");
    for bad in [reserved_bit, not_masked, fragmented_ping] {
        let (mut client, _) = RawClient::connect(&server).await;
        let mut batch = client_frame(0x81, br#"{"type":"ping"}"#);
        batch.extend(client_frame(0x89, b"alive?"));
        batch.extend(&bad);
        client.send_raw(&batch).await;
        assert_eq!(client.frame().await, (0x1, br#"{"type":"pong"}"#.to_vec()));
        assert_eq!(client.frame().await, (0xA, b"alive?".to_vec()));
        assert_eq!(client.close_code().await, close_code::PROTOCOL_ERROR);
    }
}

#[tokio::test]
async fn a_64_bit_length_with_the_top_bit_set_closes_with_1002_not_1009() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut client, _) = RawClient::connect(&server).await;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    client.send_raw(&frame).await;
    assert_eq!(client.close_code().await, close_code::PROTOCOL_ERROR);
    // The largest length a client may announce is only too big.
    let (mut client, _) = RawClient::connect(&server).await;
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    client.send_raw(&frame).await;
    assert_eq!(client.close_code().await, close_code::MESSAGE_TOO_BIG);
}
