//! permessage-deflate (RFC 7692) on the endpoint, with a client that
//! writes its frames byte by byte: what the handshake agrees to for each
//! kind of offer, the compressed event frames (the same bytes on every
//! connection, inflating to the plain frame's payload), and the close codes
//! for compressed input that breaks the rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use common::raw::{RawClient, client_frame};
use event_core::{NoteUpdated, QueueStatus};
use event_ws::{WsConfig, close_code};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::net::TcpStream;

const AGREED: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// Connects with `offers` as `Sec-WebSocket-Extensions` lines; returns the
/// client (its first frame, the queue status, read) and what the server
/// agreed to (lowercased), if anything.
async fn connect(server: &TestServer, offers: &[&str]) -> (RawClient, Option<String>) {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let extra: String = offers
        .iter()
        .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
        .collect();
    let (mut client, head) = RawClient::upgrade_with(tcp, "/api/v1/ws", &extra).await;
    let agreed = head
        .lines()
        .find_map(|l| l.strip_prefix("sec-websocket-extensions: "))
        .map(str::to_owned);
    let (first, status) = client.frame_with_bits().await;
    assert_eq!(first, 0x81, "the queue status is small: plain");
    assert!(status.starts_with(br#"{"type":"QueueStatus""#));
    (client, agreed)
}

/// A client's deflate of `payload`: sync flush, tail cut.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    c.compress_vec(payload, &mut out, FlushCompress::Sync)
        .unwrap();
    out.truncate(out.len() - 4);
    out
}

/// What a client inflates a compressed server message to.
fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

fn note(title: String) -> NoteUpdated {
    NoteUpdated {
        note_id: uuid::Uuid::now_v7(),
        title: Some(title),
        tags: vec!["compressed".into()],
        has_ai_content: true,
        has_links: false,
        operation: None,
        user_id: None,
    }
}

#[tokio::test]
async fn the_handshake_agrees_to_the_first_usable_offer() {
    let server = TestServer::start(WsConfig::default()).await;
    let cases: [(&[&str], Option<String>); 6] = [
        (&[], None),
        (&["x-webkit-deflate-frame"], None),
        (
            &["permessage-deflate; client_max_window_bits"],
            Some(AGREED.into()),
        ),
        (
            &["permessage-deflate; server_max_window_bits=10"],
            Some(format!("{AGREED}; server_max_window_bits=10")),
        ),
        // A broken offer is declined on its own, in its line or another.
        (
            &[
                "permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=12",
            ],
            Some(format!("{AGREED}; server_max_window_bits=12")),
        ),
        (
            &["permessage-deflate; bogus", "permessage-deflate"],
            Some(AGREED.into()),
        ),
    ];
    for (offers, want) in cases {
        let (_, agreed) = connect(&server, offers).await;
        assert_eq!(agreed, want, "{offers:?}");
    }
    // Nothing usable: the upgrade still succeeds, without compression.
    let (_, agreed) = connect(&server, &["permessage-deflate; server_max_window_bits=7"]).await;
    assert_eq!(agreed, None);
    // Switched off: no offer is taken.
    let off = TestServer::start(WsConfig {
        compression: false,
        ..WsConfig::default()
    })
    .await;
    let (_, agreed) = connect(&off, &["permessage-deflate"]).await;
    assert_eq!(agreed, None);
}

#[tokio::test]
async fn an_event_is_one_compressed_frame_for_every_compressing_client() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut a, _) = connect(&server, &["permessage-deflate"]).await;
    let (mut b, _) = connect(&server, &["permessage-deflate; client_max_window_bits"]).await;
    let (mut small_window, agreed) =
        connect(&server, &["permessage-deflate; server_max_window_bits=8"]).await;
    assert!(agreed.unwrap().ends_with("server_max_window_bits=8"));
    let (mut plain, _) = connect(&server, &[]).await;

    let big = server
        .bus
        .publish(note("a compressible title, ".repeat(30)));
    let small = server.bus.publish(QueueStatus::new(3, 1));
    let (first, plain_big) = plain.frame_with_bits().await;
    assert_eq!(first, 0x81);
    assert_eq!(plain_big, &big.json()[..]);
    let (first, compressed) = a.frame_with_bits().await;
    assert_eq!(first, 0xC1, "FIN, RSV1, text");
    assert!(
        compressed.len() < plain_big.len() / 3,
        "{} bytes",
        compressed.len()
    );
    assert_eq!(
        inflate(&compressed),
        plain_big,
        "the same text, byte for byte"
    );
    assert_eq!(
        b.frame_with_bits().await,
        (0xC1, compressed.clone()),
        "the same bytes"
    );
    // Over a 256-byte window: plain.
    assert_eq!(
        small_window.frame_with_bits().await,
        (0x81, plain_big.clone())
    );
    // Under the threshold: plain for everyone.
    for client in [&mut a, &mut b, &mut small_window, &mut plain] {
        assert_eq!(
            client.frame_with_bits().await,
            (0x81, small.json().to_vec())
        );
    }
}

#[tokio::test]
async fn compressed_requests_are_understood() {
    let server = TestServer::start(WsConfig::default()).await;
    let (mut client, _) = connect(&server, &["permessage-deflate"]).await;
    let subscribe = br#"{"type":"subscribe","events":["QueueStatus"]}"#;
    let compressed = deflate(subscribe);
    // In two fragments, RSV1 on the first only.
    let (one, two) = compressed.split_at(compressed.len() / 2);
    client.send(0x41, one, true).await;
    client.send(0x80, two, true).await;
    assert_eq!(
        client.text().await,
        r#"{"type":"subscribed","events":["QueueStatus"]}"#
    );
    client.send(0xC1, &deflate(b"refresh"), true).await;
    assert!(client.text().await.starts_with(r#"{"type":"QueueStatus""#));
}

#[tokio::test]
async fn compressed_input_that_breaks_the_rules_closes_with_its_code() {
    let server = TestServer::start(WsConfig::default()).await;
    let bomb = deflate(&vec![b' '; 1 << 20]);
    let cases: Vec<(&[&str], Vec<u8>, u16)> = vec![
        // Not DEFLATE.
        (
            &["permessage-deflate"],
            client_frame(0xC1, &[0xff, 0xfe, 0xfd]),
            close_code::INVALID_PAYLOAD,
        ),
        // DEFLATE of text that is not UTF-8.
        (
            &["permessage-deflate"],
            client_frame(0xC1, &deflate(b"\xc3\x28")),
            close_code::INVALID_PAYLOAD,
        ),
        // A megabyte in about a kilobyte.
        (
            &["permessage-deflate"],
            client_frame(0xC1, &bomb),
            close_code::MESSAGE_TOO_BIG,
        ),
        // RSV1 where it does not belong.
        (
            &["permessage-deflate"],
            client_frame(0xC9, b""),
            close_code::PROTOCOL_ERROR,
        ),
        (
            &["permessage-deflate"],
            [client_frame(0x01, b"{"), client_frame(0xC0, b"}")].concat(),
            close_code::PROTOCOL_ERROR,
        ),
        // Compression was not agreed.
        (
            &[],
            client_frame(0xC1, &deflate(b"refresh")),
            close_code::PROTOCOL_ERROR,
        ),
    ];
    for (offers, bytes, code) in cases {
        let (mut client, _) = connect(&server, offers).await;
        client.send_raw(&bytes).await;
        assert_eq!(
            client.close_code().await,
            code,
            "{offers:?} {:x?}",
            &bytes[..2]
        );
        server.wait_registered(0).await;
    }
}
