//! `event_http::serve` through its public API, over real loopback TCP: the
//! graceful shutdown ends registered streams and idle connections, a client
//! that stops reading cannot hold the shutdown up past the write-stall
//! timeout, and a connection over the caps is refused with `503`. Every
//! wait is bounded; nothing asserts how fast anything is.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use bytes::Bytes;
use event_core::{ConnectionRegistry, Principal, Transport};
use event_http::ConnectionCaps;
use event_test_support::runtime::{occupy, one_worker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait may take (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(20);

/// `/stream`: one frame, then open until the registry closes it (as an SSE
/// stream is). `/big`: an endless body. `/ok`: a short answer.
fn router(registry: ConnectionRegistry) -> Router {
    async fn stream(State(registry): State<ConnectionRegistry>) -> Body {
        let guard = registry.register(Transport::Sse, None, &Principal::anonymous());
        let frames = futures_util::stream::unfold((guard, true), |(guard, first)| async move {
            if first {
                return Some((
                    Ok::<_, std::io::Error>(Bytes::from("data: hi\n\n")),
                    (guard, false),
                ));
            }
            guard.closed().await;
            None
        });
        Body::from_stream(frames)
    }
    async fn big() -> Body {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        Body::from_stream(futures_util::stream::repeat_with(move || {
            Ok::<_, std::io::Error>(chunk.clone())
        }))
    }
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/stream", get(stream))
        .route("/big", get(big))
        .with_state(registry)
}

/// A server on 127.0.0.1:0 configured by `configure`; its address, the
/// trigger of its graceful shutdown and its task.
async fn start(
    configure: impl FnOnce(event_http::Serve) -> event_http::Serve,
    registry: ConnectionRegistry,
) -> (SocketAddr, oneshot::Sender<()>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = configure(event_http::serve(listener, router(registry.clone())))
        .registry(registry)
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
    (
        addr,
        stop,
        tokio::spawn(std::future::IntoFuture::into_future(server)),
    )
}

async fn get_request(tcp: &mut TcpStream, path: &str) {
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
}

/// Reads until `buf` holds `want`; panics at EOF or after [`WAIT`].
async fn read_until(tcp: &mut TcpStream, buf: &mut Vec<u8>, want: &[u8]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !buf.windows(want.len()).any(|w| w == want) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {:?} in time", String::from_utf8_lossy(want)))
            .unwrap();
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(want));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads to the end of the connection (within [`WAIT`]).
async fn read_to_close(tcp: &mut TcpStream, buf: &mut Vec<u8>) {
    tokio::time::timeout(WAIT, tcp.read_to_end(buf))
        .await
        .expect("the server did not close the connection")
        .unwrap();
}

#[tokio::test]
async fn shutdown_ends_registered_streams_and_idle_connections_then_returns() {
    let registry = ConnectionRegistry::new();
    let (addr, stop, server) = start(|s| s.stream_paths(&["/stream"]), registry.clone()).await;

    // A stream answered by the direct path.
    let mut streaming = TcpStream::connect(addr).await.unwrap();
    get_request(&mut streaming, "/stream").await;
    let mut seen = Vec::new();
    read_until(&mut streaming, &mut seen, b"data: hi\n\n").await;
    assert!(seen.starts_with(b"HTTP/1.1 200 OK\r\n"), "{seen:?}");
    assert_eq!(registry.total(), 1);

    // An idle keep-alive connection after a request served by hyper.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    get_request(&mut idle, "/ok").await;
    let mut answer = Vec::new();
    read_until(&mut idle, &mut answer, b"\r\n\r\nok").await;

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("serve did not return after the signal")
        .unwrap();
    read_to_close(&mut streaming, &mut seen).await;
    assert!(
        seen.ends_with(b"0\r\n\r\n"),
        "the stream did not end cleanly"
    );
    read_to_close(&mut idle, &mut answer).await;
    assert_eq!(registry.total(), 0);
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_up_the_shutdown() {
    let registry = ConnectionRegistry::new();
    let (addr, stop, server) = start(
        |s| s.write_stall_timeout(Duration::from_millis(300)),
        registry,
    )
    .await;
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    get_request(&mut stalled, "/big").await;
    let mut first = [0u8; 16];
    stalled.read_exact(&mut first).await.unwrap();
    assert_eq!(&first[..12], b"HTTP/1.1 200");
    // From here on the client reads nothing: the response in progress can
    // neither finish nor be asked to; only the stall timeout ends it.
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("a stalled client held the shutdown up")
        .unwrap();
    drop(stalled);
}

#[tokio::test]
async fn a_connection_over_the_caps_is_refused_with_503() {
    let registry = ConnectionRegistry::new();
    let caps = ConnectionCaps {
        total: 1,
        per_ip: 0,
    };
    let (addr, stop, server) = start(|s| s.caps(caps), registry).await;
    let mut held = TcpStream::connect(addr).await.unwrap();
    get_request(&mut held, "/ok").await;
    let mut answer = Vec::new();
    read_until(&mut held, &mut answer, b"\r\n\r\nok").await;

    let mut refused = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    read_to_close(&mut refused, &mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("retry-after: 1"), "{out}");
    assert!(out.contains(r#""error":"too_many_connections""#), "{out}");

    drop(held);
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
}

/// A connection moved to the intake is registered with the intake's own I/O
/// driver: its requests are read and answered while every worker of the
/// main runtime is busy (here: blocked). Registered with the main runtime's
/// driver, as it was accepted, its reads would wait for a main worker to
/// poll that driver, which under a saturated fan-out took milliseconds per
/// request (BENCHMARKS.md) and here never happens.
#[tokio::test]
async fn an_intake_connection_is_served_while_the_main_runtime_is_stuck() {
    let (main, intake) = (one_worker("test-main"), one_worker("test-intake"));
    let router = Router::new().route("/ok", axum::routing::post(|| async { "ok" }));
    let listener = {
        let _entered = main.enter();
        let std = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std.set_nonblocking(true).unwrap();
        TcpListener::from_std(std).unwrap()
    };
    let addr = listener.local_addr().unwrap();
    main.spawn(std::future::IntoFuture::into_future(
        event_http::serve(listener, router).intake(intake.handle().clone()),
    ));
    let post = b"POST /ok HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n";
    let mut publisher = TcpStream::connect(addr).await.unwrap();
    // The first request is read on the main runtime, then the connection
    // moves to the intake.
    publisher.write_all(post).await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut publisher, &mut seen, b"\r\n\r\nok").await;
    assert!(seen.starts_with(b"HTTP/1.1 200"));

    // Main's only worker blocked, as a saturated fan-out keeps it from its
    // driver.
    let stuck = occupy(&main, 3 * WAIT);

    publisher.write_all(post).await.unwrap();
    let mut seen = Vec::new();
    // Shorter than `read_until`'s own deadline, so that the main runtime
    // is released before anything panics.
    let read = tokio::time::timeout(
        WAIT / 2,
        read_until(&mut publisher, &mut seen, b"\r\n\r\nok"),
    )
    .await;
    drop(stuck);
    assert!(
        read.is_ok(),
        "no answer while the main runtime was stuck: the connection still waits on its driver"
    );
    assert!(String::from_utf8_lossy(&seen).starts_with("HTTP/1.1 200"));
    drop(publisher);
    main.shutdown_background();
    intake.shutdown_background();
}

/// With an intake runtime, a connection whose first request is not a `GET`
/// is served on the intake's threads, keep-alive requests after it too;
/// a `GET` (an event stream, a WebSocket upgrade, the rest) stays on the
/// server's runtime. And the server still shuts down gracefully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_are_not_gets_are_served_on_the_intake_runtime() {
    let intake = one_worker("test-intake");
    let thread = || async {
        std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_owned()
    };
    let router = Router::new().route("/thread", get(thread).post(thread));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = event_http::serve(listener, router)
        .intake(intake.handle().clone())
        .with_graceful_shutdown(async move {
            let _ = stopped.await;
        });
    let server = tokio::spawn(std::future::IntoFuture::into_future(server));

    /// Sends `head` and returns the body of the answer (`content-length`).
    async fn ask(tcp: &mut TcpStream, head: &str) -> String {
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        read_until(tcp, &mut seen, b"\r\n\r\n").await;
        let text = String::from_utf8_lossy(&seen).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(str::to_owned)
            })
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mut body = body.as_bytes().to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 256];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0);
            body.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(body).unwrap()
    }
    let post = "POST /thread HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n";
    let get_head = "GET /thread HTTP/1.1\r\nHost: x\r\n\r\n";

    let mut publisher = TcpStream::connect(addr).await.unwrap();
    assert_eq!(ask(&mut publisher, post).await, "test-intake");
    // Later requests on the same connection: still the intake's.
    assert_eq!(ask(&mut publisher, get_head).await, "test-intake");
    let mut reader = TcpStream::connect(addr).await.unwrap();
    let on_main = ask(&mut reader, get_head).await;
    assert_ne!(on_main, "test-intake");

    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .expect("serve did not return after the signal")
        .unwrap();
    let mut rest = Vec::new();
    read_to_close(&mut publisher, &mut rest).await;
    intake.shutdown_background();
}
