//! Differential test of the host's HTTP/1.1 front (`event-http`: `src/serve.rs` and its
//! direct event-stream path, `src/serve/direct.rs`) against hyper alone.
//!
//! Generated request heads — valid, borderline and broken: duplicate or
//! conflicting `Content-Length`, `Transfer-Encoding`, obs-fold, bare CR and
//! LF, NUL, obs-text, long lines, many headers, odd request lines — each
//! followed by a pipelined `GET /health`, are written over raw TCP to the
//! real host (`event_server::testing::Server`) and to a plain
//! `hyper::server::conn::http1` server on 127.0.0.1:0 with a trivial service
//! and the same header-read timeout. Both must give the same status classes
//! in the same order and the same connection outcome (kept or closed), so a
//! pipelined follower is never served after a head hyper would reject.
//!
//! The trivial service answers what the host's router answers for the
//! paths used: `/api/v1/events?format=bogus` is the SSE endpoint's `400`
//! (finite, so the direct path answers it and keeps the connection),
//! `/health` and `/api/v1/events/history` are `200`, another method a `4xx`, anything else `404`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use event_server::testing::Server;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The header-read timeout of both servers (short: a head that never
/// completes costs this much).
const HEAD_TIMEOUT_SECS: u64 = 2;
/// How long one exchange may take before the client gives up: beyond the
/// head timeout, so a server that waits for more always closes first.
const EXCHANGE: Duration = Duration::from_secs(HEAD_TIMEOUT_SECS + 8);
/// The stream path with a query the endpoint refuses: a finite answer.
const STREAM: &str = "/api/v1/events?format=bogus";
const FOLLOWER: &[u8] = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// What a client saw on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outcome {
    /// The status class (1–5) of each response, in order.
    classes: Vec<u16>,
    /// Whether the server closed the connection (rather than keeping it
    /// for a further request) before the exchange's deadline.
    closed: bool,
}

/// The two servers, started once for the whole binary on a runtime that
/// outlives every case.
struct Servers {
    runtime: tokio::runtime::Runtime,
    host: SocketAddr,
    hyper: SocketAddr,
}

fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (host, hyper) = runtime.block_on(async {
            let server =
                Server::start(&["--http-head-timeout-secs", &HEAD_TIMEOUT_SECS.to_string()]).await;
            let host = server.addr;
            // Kept for the process's life (dropping it stops the server).
            std::mem::forget(server);
            (host, start_hyper().await)
        });
        Servers {
            runtime,
            host,
            hyper,
        }
    })
}

/// hyper's HTTP/1.1 server alone, configured as the host configures it.
async fn start_hyper() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(HEAD_TIMEOUT_SECS));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(trivial);
                let _ = builder
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

async fn trivial(
    request: http::Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let uri = request.uri();
    let status = match (uri.path(), uri.query()) {
        // A method the route does not take (`get` is not `GET`), or a
        // publish without a body: some 4xx.
        _ if request.method() != http::Method::GET => 405,
        ("/api/v1/events", Some(q)) if q.contains("format=bogus") => 400,
        ("/health" | "/api/v1/events/history", _) => 200,
        _ => 404,
    };
    Ok(http::Response::builder()
        .status(status)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap())
}

/// Writes `bytes` to `addr` and reads responses until the server closes,
/// `expected` responses have arrived, or [`EXCHANGE`] passes.
async fn exchange(addr: SocketAddr, bytes: &[u8], expected: usize) -> Outcome {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    // A server may close (and reset) before taking every byte.
    let _ = tcp.write_all(bytes).await;
    let deadline = tokio::time::Instant::now() + EXCHANGE;
    let mut buf = Vec::new();
    let mut closed = false;
    loop {
        let (classes, _) = parse_responses(&buf);
        if classes.len() >= expected {
            break;
        }
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0) | Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let (classes, _) = parse_responses(&buf);
    Outcome { classes, closed }
}

/// The status classes of the complete responses in `buf` (1xx skipped),
/// and whether bytes of an incomplete one follow.
fn parse_responses(mut buf: &[u8]) -> (Vec<u16>, bool) {
    let mut classes = Vec::new();
    loop {
        if buf.is_empty() {
            return (classes, false);
        }
        let Some(end) = find(buf, b"\r\n\r\n") else {
            return (classes, true);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a response head: {head:?}"));
        let rest = &buf[end + 4..];
        let length = head.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        });
        let chunked = head.contains("transfer-encoding: chunked");
        let body_end = if (100..200).contains(&status) {
            0
        } else if let Some(n) = length {
            if rest.len() < n {
                return (classes, true);
            }
            n
        } else if chunked {
            match find(rest, b"0\r\n\r\n") {
                Some(i) => i + 5,
                None => return (classes, true),
            }
        } else {
            // Until close: complete only when the caller saw the close.
            rest.len()
        };
        if status >= 200 {
            classes.push(status / 100);
        }
        buf = &rest[body_end..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `bytes` (a request, then the pipelined follower) to both servers
/// at once; panics where they disagree.
fn check(bytes: &[u8]) {
    let servers = servers();
    // A request and the follower: at most two answers.
    let (host, hyper) = servers.runtime.block_on(async {
        tokio::join!(
            exchange(servers.host, bytes, 2),
            exchange(servers.hyper, bytes, 2)
        )
    });
    let shown = String::from_utf8_lossy(bytes);
    assert_eq!(host, hyper, "host vs hyper alone for {shown:?}");
    // Implied by the equality, stated for the reader: a follower is only
    // served where hyper serves it.
    assert!(host.classes.len() <= hyper.classes.len(), "{shown:?}");
}

/// One header line of a generated head.
#[derive(Debug, Clone)]
enum Header {
    Pad(usize),
    ContentLength(&'static str),
    TransferEncoding(&'static str),
    Connection(&'static str),
    Upgrade(&'static str),
    Expect,
    ObsFold,
    BareCr,
    Nul,
    ObsText,
    SpaceBeforeColon,
    BadName(&'static str),
    Many(usize),
    LastEventId(&'static str),
}

fn header() -> impl Strategy<Value = Header> {
    prop_oneof![
        4 => (1usize..200).prop_map(Header::Pad),
        1 => (7000usize..9500).prop_map(Header::Pad),
        3 => prop::sample::select(vec!["0", "5", "00", "+0", " 0 ", "0, 0", "-1", "0x0", "18446744073709551616"])
            .prop_map(Header::ContentLength),
        2 => prop::sample::select(vec!["chunked", "gzip", "chunked, gzip", "gzip, chunked", "identity", "Chunked", "chunked "])
            .prop_map(Header::TransferEncoding),
        2 => prop::sample::select(vec!["close", "keep-alive", "Upgrade", "TE, close", "keep-alive, close", "CLOSE"])
            .prop_map(Header::Connection),
        1 => prop::sample::select(vec!["websocket", "h2c"]).prop_map(Header::Upgrade),
        1 => Just(Header::Expect),
        1 => Just(Header::ObsFold),
        1 => Just(Header::BareCr),
        1 => Just(Header::Nul),
        1 => Just(Header::ObsText),
        1 => Just(Header::SpaceBeforeColon),
        1 => prop::sample::select(vec!["X@Y", "", "X Y", "X\u{7f}"]).prop_map(Header::BadName),
        1 => (40usize..130).prop_map(Header::Many),
        1 => prop::sample::select(vec!["12", "", "\u{e9}"]).prop_map(Header::LastEventId),
    ]
}

/// A generated first request.
#[derive(Debug, Clone)]
struct Head {
    method: &'static str,
    target: &'static str,
    sep: &'static str,
    version: &'static str,
    eol: &'static str,
    headers: Vec<Header>,
}

fn head() -> impl Strategy<Value = Head> {
    (
        prop::sample::select(vec!["GET", "GET", "GET", "get", "POST"]),
        prop::sample::select(vec![
            STREAM,
            STREAM,
            "/health",
            "/api/v1/events/history?format=bogus",
            "http://127.0.0.1/api/v1/events?format=bogus",
            "/api/v1/events?format=bogus&x=%zz",
            "/api/v1/ev ents?format=bogus",
            "*",
        ]),
        prop::sample::select(vec![" ", " ", " ", "  ", "\t"]),
        prop::sample::select(vec![
            "HTTP/1.1", "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2", "HTTP/2.0", "http/1.1", "",
        ]),
        prop::sample::select(vec!["\r\n", "\r\n", "\r\n", "\n"]),
        prop::collection::vec(header(), 0..6),
    )
        .prop_map(|(method, target, sep, version, eol, headers)| Head {
            method,
            target,
            sep,
            version,
            eol,
            headers,
        })
}

/// The bytes of `head`, its body (as its first length or coding says),
/// then the follower.
fn render(head: &Head) -> Vec<u8> {
    let eol = head.eol;
    let mut out = Vec::new();
    out.extend_from_slice(head.method.as_bytes());
    out.extend_from_slice(head.sep.as_bytes());
    out.extend_from_slice(head.target.as_bytes());
    if !head.version.is_empty() {
        out.extend_from_slice(head.sep.as_bytes());
        out.extend_from_slice(head.version.as_bytes());
    }
    out.extend_from_slice(eol.as_bytes());
    out.extend_from_slice(format!("Host: 127.0.0.1{eol}").as_bytes());
    let mut body: Option<&[u8]> = None;
    for (i, h) in head.headers.iter().enumerate() {
        let line: Vec<u8> = match h {
            Header::Pad(n) => format!("X-Pad-{i}: {}", "a".repeat(*n)).into_bytes(),
            Header::ContentLength(v) => {
                if body.is_none() && v.trim() == "5" {
                    body = Some(b"hello");
                }
                format!("Content-Length: {v}").into_bytes()
            }
            Header::TransferEncoding(v) => {
                if body.is_none() && v.trim().to_ascii_lowercase().ends_with("chunked") {
                    body = Some(b"0\r\n\r\n");
                }
                format!("Transfer-Encoding: {v}").into_bytes()
            }
            Header::Connection(v) => format!("Connection: {v}").into_bytes(),
            Header::Upgrade(v) => format!("Upgrade: {v}").into_bytes(),
            Header::Expect => b"Expect: 100-continue".to_vec(),
            Header::ObsFold => format!("X-Fold: a{eol} b").into_bytes(),
            Header::BareCr => b"X-Cr: a\rb".to_vec(),
            Header::Nul => b"X-Nul: a\0b".to_vec(),
            Header::ObsText => b"X-Obs: caf\xe9".to_vec(),
            Header::SpaceBeforeColon => b"X-Sp : v".to_vec(),
            Header::BadName(name) => format!("{name}: v").into_bytes(),
            Header::Many(n) => (0..*n)
                .map(|j| format!("X-Many-{i}-{j}: v"))
                .collect::<Vec<_>>()
                .join(eol)
                .into_bytes(),
            Header::LastEventId(v) => format!("Last-Event-ID: {v}").into_bytes(),
        };
        out.extend_from_slice(&line);
        out.extend_from_slice(eol.as_bytes());
    }
    out.extend_from_slice(eol.as_bytes());
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out.extend_from_slice(FOLLOWER);
    out
}

/// Heads worth checking on every run, whatever the generator draws.
#[test]
fn known_heads_agree_with_hyper() {
    let s = STREAM;
    let cases: Vec<Vec<u8>> = vec![
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
            .into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\nHost: 127.0.0.1\n\n").into_bytes(),
        // Duplicate and conflicting lengths.
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\nhello").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0, 0\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: +0\r\n\r\n").into_bytes(),
        // Transfer codings, alone and with a length.
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n0\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: gzip\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.0\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes(),
        // obs-fold, bare CR, NUL, a space before the colon.
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Fold: a\r\n b\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Cr: a\rb\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\rX: y\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Nul: a\0b\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Sp : v\r\n\r\n").into_bytes(),
        // Long lines and many headers, either side of the direct path's
        // limits (8 KiB, 64 headers) and hyper's (100 headers).
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {}\r\n\r\n", "a".repeat(8000)).into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {}\r\n\r\n", "a".repeat(9000)).into_bytes(),
        format!("GET {s}&{} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "a".repeat(9000)).into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n", "X-M: v\r\n".repeat(63)).into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n", "X-M: v\r\n".repeat(64)).into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n", "X-M: v\r\n".repeat(99)).into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\n{}\r\n", "X-M: v\r\n".repeat(120)).into_bytes(),
        // Upgrades and expectations.
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n\r\n").into_bytes(),
        // Request lines.
        format!("GET  {s} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
        format!("GET {s} HTTP/1.2\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
        format!("GET {s}\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
        format!("\r\nGET {s} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes(),
        b"GET http://127.0.0.1/api/v1/events?format=bogus HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
    ];
    for mut case in cases {
        case.extend_from_slice(FOLLOWER);
        check(&case);
    }
}

/// A head that never ends: neither server answers, and both close the
/// connection at the header timeout (the host's direct path waits for the
/// rest of a `GET` itself, hyper reads a `POST` on its own).
#[test]
fn an_unfinished_head_is_closed_unanswered_by_both() {
    let servers = servers();
    let heads = [
        format!("GET {STREAM} HTTP/1.1\r\nHost: 127.0.0.1\r\n"),
        "POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_owned(),
        format!("GET {STREAM} HTTP/1.1\r\nX-Long: {}", "a".repeat(9000)),
    ];
    // All at once: each waits for the header timeout.
    let outcomes = servers
        .runtime
        .block_on(futures_util::future::join_all(heads.iter().map(
            |bytes| async move {
                tokio::join!(
                    exchange(servers.host, bytes.as_bytes(), 1),
                    exchange(servers.hyper, bytes.as_bytes(), 1)
                )
            },
        )));
    let want = Outcome {
        classes: vec![],
        closed: true,
    };
    for (bytes, (host, hyper)) in heads.iter().zip(outcomes) {
        assert_eq!(hyper, want, "hyper alone for {bytes:.80?}");
        assert_eq!(host, want, "the host for {bytes:.80?}");
    }
}

proptest! {
    // Each case is two connections, most answered at once; a head a server
    // waits on costs the head timeout.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_heads_agree_with_hyper(head in head()) {
        check(&render(&head));
    }
}
