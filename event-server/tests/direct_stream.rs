//! Event streams answered without hyper (`event-http/src/serve/direct.rs`), seen from
//! a raw TCP client: the exact HTTP/1.1 framing, keep-alive after an error
//! answer, HTTP/1.0, a client leaving, shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use event_server::testing::Server;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

async fn connect(server: &Server) -> TcpStream {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp
}

/// Reads until `buf` holds `want` (or the peer closes, or [`WAIT`] passes).
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, want: &[u8]) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !contains(buf, want) {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// Reads to end of stream (within [`WAIT`]).
async fn read_to_close(tcp: &mut TcpStream, buf: &mut Vec<u8>) {
    tokio::time::timeout(WAIT, tcp.read_to_end(buf))
        .await
        .expect("the server did not close the connection")
        .unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Splits a response into its head (lower-cased) and the bytes after it.
fn split_head(buf: &[u8]) -> (String, &[u8]) {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    (head, &buf[end + 4..])
}

/// Decodes a chunked body; returns the data and whether the terminating
/// zero-size chunk was seen. Panics on malformed framing.
fn dechunk(mut body: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            assert!(body.is_empty(), "a partial chunk-size line: {body:?}");
            return (out, false);
        };
        let size_line = std::str::from_utf8(&body[..line_end]).unwrap();
        let size = usize::from_str_radix(size_line, 16)
            .unwrap_or_else(|_| panic!("a bad chunk size {size_line:?}"));
        let rest = &body[line_end + 2..];
        if size == 0 {
            assert_eq!(rest, b"\r\n", "bytes after the last chunk");
            return (out, true);
        }
        if rest.len() < size + 2 {
            // The tail of a chunk still in flight.
            out.extend_from_slice(&rest[..rest.len().min(size)]);
            return (out, false);
        }
        out.extend_from_slice(&rest[..size]);
        assert_eq!(&rest[size..size + 2], b"\r\n", "a chunk without its CRLF");
        body = &rest[size + 2..];
    }
}

#[tokio::test]
async fn an_event_stream_is_chunked_and_ends_when_the_client_leaves() {
    let server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    tcp.write_all(
        b"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    assert!(read_until(&mut tcp, &mut buf, b"retry: 3000").await);
    let (head, _) = split_head(&buf);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    for line in [
        "content-type: text/event-stream",
        "cache-control: no-cache",
        "transfer-encoding: chunked",
        "connection: close",
        "date: ",
    ] {
        assert!(head.contains(line), "no `{line}` in {head}");
    }
    assert!(!head.contains("content-length"), "{head}");
    server.wait_connections(1).await;

    let job = "0197c0de-5e1a-7a00-8000-0000000000d1";
    server
        .publish(&json!({"type":"JobQueued","job_id":job,"job_type":"Embedding"}))
        .await;
    // One event is one chunk, so its data line arrives unbroken.
    assert!(read_until(&mut tcp, &mut buf, b"\"job_type\":\"Embedding\"}\n").await);
    let (_, body) = split_head(&buf);
    let (data, ended) = dechunk(body);
    assert!(!ended, "the stream ended early");
    let text = String::from_utf8(data).unwrap();
    assert!(text.starts_with("retry: 3000\n\n"), "{text}");
    assert!(
        text.contains(&format!(
            "event: JobQueued\ndata: {{\"type\":\"JobQueued\",\"job_id\":\"{job}\",\"job_type\":\"Embedding\"}}\n"
        )),
        "{text}"
    );

    drop(tcp);
    server.wait_connections(0).await;
}

#[tokio::test]
async fn a_head_sent_in_pieces_is_put_back_together() {
    let server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    for piece in [
        &b"GET /api/v1/ev"[..],
        b"ents?format=envelope HTTP/1.1\r\nHo",
        b"st: 127.0.0.1\r\n",
        b"\r\n",
    ] {
        tcp.write_all(piece).await.unwrap();
        tcp.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut buf = Vec::new();
    assert!(read_until(&mut tcp, &mut buf, b"retry: 3000").await);
    assert!(buf.starts_with(b"HTTP/1.1 200 OK\r\n"));
    server.wait_connections(1).await;
}

#[tokio::test]
async fn an_error_answer_keeps_the_connection_for_the_next_request() {
    let server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    // Both requests in one write: the second one is already read when the
    // first is answered, and must reach hyper intact.
    tcp.write_all(
        b"GET /api/v1/events?heartbeat=nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n\
          GET /api/v1/events/history HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    read_to_close(&mut tcp, &mut buf).await;
    let (head, rest) = split_head(&buf);
    assert!(head.starts_with("http/1.1 400 bad request\r\n"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .expect("a content-length")
        .parse()
        .unwrap();
    let error: serde_json::Value = serde_json::from_slice(&rest[..len]).unwrap();
    assert!(
        error["error"].is_string() && error["message"].is_string(),
        "{error}"
    );

    let (second, body) = split_head(&rest[len..]);
    assert!(second.starts_with("http/1.1 200 ok\r\n"), "{second}");
    let history: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert!(history.is_object() || history.is_array(), "{history}");
}

#[tokio::test]
async fn connection_close_on_an_error_answer_closes() {
    let server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    tcp.write_all(
        b"GET /api/v1/events?heartbeat=nope HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    read_to_close(&mut tcp, &mut buf).await;
    let (head, _) = split_head(&buf);
    assert!(head.starts_with("http/1.1 400 "), "{head}");
    assert!(head.contains("connection: close"), "{head}");
}

/// Opens a stream with `request`, shuts the server down once the stream is
/// registered, and returns everything the client received until the close.
async fn stream_until_shutdown(request: &[u8]) -> Vec<u8> {
    let mut server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    tcp.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    assert!(read_until(&mut tcp, &mut buf, b"retry: 3000\n\n").await);
    server.wait_connections(1).await;
    server.shutdown().await;
    read_to_close(&mut tcp, &mut buf).await;
    buf
}

#[tokio::test]
async fn an_http_1_0_stream_is_delimited_by_the_close() {
    let buf = stream_until_shutdown(b"GET /api/v1/events HTTP/1.0\r\n\r\n").await;
    let (head, body) = split_head(&buf);
    assert!(head.starts_with("http/1.0 200 ok\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(body.starts_with(b"retry: 3000\n\n"), "{body:?}");
}

#[tokio::test]
async fn shutdown_ends_a_stream_with_the_last_chunk() {
    let buf =
        stream_until_shutdown(b"GET /api/v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
    let (_, body) = split_head(&buf);
    let (data, ended) = dechunk(body);
    assert!(ended, "no terminating chunk: {body:?}");
    assert!(data.starts_with(b"retry: 3000\n\n"));
}

#[tokio::test]
async fn other_requests_go_to_hyper_with_what_was_read() {
    let server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    let body = br#"{"type":"QueueStatus","total_jobs":1,"running":0,"pending":1}"#;
    let request = format!(
        "POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(&[request.as_bytes(), body].concat())
        .await
        .unwrap();
    let mut buf = Vec::new();
    read_to_close(&mut tcp, &mut buf).await;
    let (head, answer) = split_head(&buf);
    assert!(head.starts_with("http/1.1 202 accepted\r\n"), "{head}");
    let answer: serde_json::Value = serde_json::from_slice(answer).unwrap();
    assert!(answer["events"][0]["seq"].as_u64().is_some(), "{answer}");
}

#[tokio::test]
async fn a_head_too_large_to_answer_here_goes_to_hyper() {
    let server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    let filler = "x".repeat(9 * 1024);
    let request =
        format!("GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {filler}\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert!(read_until(&mut tcp, &mut buf, b"retry: 3000").await);
    let (head, _) = split_head(&buf);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // hyper's answer: the direct path would have said `connection: close`.
    assert!(!head.contains("connection: close"), "{head}");
    server.wait_connections(1).await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_head_still_arriving() {
    let mut server = Server::start(&[]).await;
    let mut tcp = connect(&server).await;
    tcp.write_all(b"GET /api/v1/events HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // `shutdown` returns once every connection task has ended: a head read
    // that ignored the stop would hold it until the head timeout.
    server.shutdown().await;
    let mut buf = Vec::new();
    let ended = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
    assert!(ended.is_ok(), "the connection stayed open after shutdown");
    assert!(buf.is_empty(), "an answer to a partial head: {buf:?}");
}
