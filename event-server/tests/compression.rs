//! Compressed SSE streams through the real host (docs/protocol.md §3,
//! "Compression"): `Content-Encoding` gzip, br and zstd by
//! `Accept-Encoding`, in both formats, decoded by curl (zlib, libbrotli,
//! libzstd: decoders independent of the server's) and by a raw client here;
//! byte-identical to the plain stream of the same events, each event
//! decodable before the next is published, the encoding's trailer at a
//! clean end; `?compression=false` and `SSE_COMPRESSION`.
//!
//! curl is what `.ci/run` installs; without it (or without one of its
//! decoders) the curl half is skipped with a printed reason, unless
//! `EVENT_TEST_REQUIRE_SERVICES=1`, where that fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/page.rs"]
mod page;

use std::io::Read;
use std::process::Stdio;

use clap::Parser;
use event_server::testing::{Server, TempDir, WAIT, client};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const ENCODINGS: [&str; 3] = ["gzip", "br", "zstd"];

fn required() -> bool {
    std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether curl is here and decodes `encoding` (its `Features:` line).
fn curl_decodes(encoding: &str) -> bool {
    let feature = match encoding {
        "gzip" => "libz",
        "br" => "brotli",
        _ => "zstd",
    };
    let found = std::process::Command::new("curl")
        .arg("-V")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .is_some_and(|v| {
            v.lines()
                .any(|l| l.starts_with("Features:") && l.split_whitespace().any(|f| f == feature))
        });
    if !found {
        let why = format!(
            "curl with `{feature}` is not available: the curl half of this test is skipped"
        );
        assert!(!required(), "{why}, but EVENT_TEST_REQUIRE_SERVICES=1");
        eprintln!("{why}");
    }
    found
}

/// An event-stream request over a raw socket: the response head, and the
/// body as it arrives (chunked framing removed, content coding kept).
struct Raw {
    tcp: TcpStream,
    head: String,
    pending: Vec<u8>,
    body: Vec<u8>,
    ended: bool,
}

impl Raw {
    async fn open(server: &Server, path: &str, accept: Option<&str>) -> Raw {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let accept = accept.map_or(String::new(), |a| format!("Accept-Encoding: {a}\r\n"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\n{accept}\r\n",
            server.addr
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Raw {
            tcp,
            head: String::new(),
            pending: Vec::new(),
            body: Vec::new(),
            ended: false,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while !contains(&raw.pending, b"\r\n\r\n") {
            assert!(raw.read(deadline).await, "no response head for {path}");
        }
        let end = raw
            .pending
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap();
        raw.head = String::from_utf8_lossy(&raw.pending[..end]).to_ascii_lowercase();
        raw.pending.drain(..end + 4);
        raw.dechunk();
        raw
    }

    /// Reads once; `false` at the end of the connection or the deadline.
    async fn read(&mut self, deadline: tokio::time::Instant) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => false,
            Ok(Ok(n)) => {
                self.pending.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Moves whole chunks from `pending` to `body`.
    fn dechunk(&mut self) {
        loop {
            let Some(line_end) = self.pending.windows(2).position(|w| w == b"\r\n") else {
                return;
            };
            let size_line = std::str::from_utf8(&self.pending[..line_end]).unwrap();
            let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
            if self.pending.len() < line_end + 2 + size + 2 {
                return;
            }
            let start = line_end + 2;
            self.body
                .extend_from_slice(&self.pending[start..start + size]);
            self.pending.drain(..start + size + 2);
            if size == 0 {
                self.ended = true;
                return;
            }
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            (n.trim() == name).then(|| v.trim().to_owned())
        })
    }

    /// The body decoded as far as it goes.
    fn decoded(&self) -> Vec<u8> {
        match self.header("content-encoding") {
            None => self.body.clone(),
            Some(encoding) => decode_prefix(&encoding, &self.body),
        }
    }

    /// Reads until the decoded body holds `needle`.
    async fn wait_for(&mut self, needle: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !contains(&self.decoded(), needle.as_bytes()) {
            assert!(
                self.read(deadline).await,
                "{needle} did not arrive within {WAIT:?} (head: {}; decoded {:?})",
                self.head,
                String::from_utf8_lossy(&self.decoded())
            );
            self.dechunk();
        }
    }

    /// Reads to the end of the response.
    async fn wait_end(&mut self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.ended {
            assert!(self.read(deadline).await, "the response did not end");
            self.dechunk();
        }
    }
}

/// What a streaming decoder yields from the (possibly unfinished) `data`.
fn decode_prefix(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => read_prefix(flate2::read::GzDecoder::new(data), &mut out),
        "br" => read_prefix(brotli::Decompressor::new(data, 4096), &mut out),
        "zstd" => {
            let mut rest = data;
            while !rest.is_empty() {
                let Ok(dec) = ruzstd::decoding::StreamingDecoder::new(&mut rest) else {
                    break;
                };
                read_prefix(dec, &mut out);
            }
        }
        other => panic!("unexpected content-encoding {other}"),
    }
    out
}

fn read_prefix(mut reader: impl Read, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            return;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// The whole body decoded by a reader that checks the stream's end (the
/// gzip trailer's CRC and length, brotli's last meta-block).
fn decode_strict(encoding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(data)
                .read_to_end(&mut out)
                .expect("a complete gzip stream");
        }
        "br" => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("a complete brotli stream");
        }
        _ => out = decode_prefix(encoding, data),
    }
    out
}

/// `curl -N --compressed`, its output (headers, then the decoded body) as
/// it comes.
struct Curl {
    child: tokio::process::Child,
    out: watch::Receiver<Vec<u8>>,
}

impl Curl {
    fn spawn(url: &str, accept: &str) -> Curl {
        let mut child = tokio::process::Command::new("curl")
            .args(["-sS", "-N", "--compressed", "-D", "-", "-H"])
            .arg(format!("Accept-Encoding: {accept}"))
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("curl starts");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tx.send_modify(|o| o.extend_from_slice(&buf[..n]));
            }
        });
        Curl { child, out }
    }

    async fn wait_for(&mut self, needle: &str) {
        let found =
            tokio::time::timeout(WAIT, self.out.wait_for(|o| contains(o, needle.as_bytes())))
                .await
                .is_ok_and(|r| r.is_ok());
        assert!(
            found,
            "curl did not print {needle} within {WAIT:?}: {}",
            String::from_utf8_lossy(&self.out.borrow())
        );
    }

    /// The response head (lower-cased) and the decoded body.
    fn split(&self) -> (String, Vec<u8>) {
        let out = self.out.borrow();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8_lossy(&out[..end]).to_ascii_lowercase(),
            out[end + 4..].to_vec(),
        )
    }
}

/// The frames of `stream` from the first one holding `marker` on: what
/// two connections opened at different times both received.
fn from_marker(stream: &[u8], marker: &str) -> Vec<u8> {
    let text = std::str::from_utf8(stream).expect("UTF-8 frames");
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in the stream"));
    let start = text[..at].rfind("\n\n").map_or(0, |i| i + 2);
    stream[start..].to_vec()
}

/// The test's events: small progress events and larger notes, each with a
/// unique marker.
fn event(i: usize) -> (Value, String) {
    let id = uuid::Uuid::now_v7().to_string();
    let body = if i % 3 == 2 {
        let title = format!("Meeting notes {i}: ").repeat(30);
        json!({"type":"NoteUpdated","note_id":id,"title":title,"tags":["work","notes"],
               "has_ai_content":true,"has_links":false,"operation":"updated"})
    } else {
        json!({"type":"JobProgress","job_id":id,"progress":i % 101,
               "message":format!("Embedding chunk {i}/20")})
    };
    (body, id)
}

/// For each format and encoding: a plain stream (`?compression=false`),
/// the same stream compressed and read raw, and the same through curl
/// receive the same events; the compressed ones decode (each event before
/// the next is published) to exactly the plain bytes, and end with the
/// encoding's trailer when the server shuts down.
#[tokio::test]
async fn compressed_streams_decode_to_the_plain_stream() {
    for format in ["v1", "envelope"] {
        for encoding in ENCODINGS {
            let with_curl = curl_decodes(encoding);
            let mut server = Server::start(&[]).await;
            let path = format!("/api/v1/events?format={format}&heartbeat=300");
            let mut plain = Raw::open(
                &server,
                &format!("{path}&compression=false"),
                Some("gzip, br, zstd"),
            )
            .await;
            assert_eq!(
                plain.header("content-encoding"),
                None,
                "{format} {encoding}"
            );
            assert_eq!(plain.header("vary").as_deref(), Some("accept-encoding"));
            let mut packed = Raw::open(&server, &path, Some(encoding)).await;
            assert_eq!(
                packed.header("content-encoding").as_deref(),
                Some(encoding),
                "{}",
                packed.head
            );
            assert_eq!(packed.header("vary").as_deref(), Some("accept-encoding"));
            let mut curl = with_curl.then(|| Curl::spawn(&server.url(&path), encoding));
            if let Some(curl) = &mut curl {
                // Its confirmation (named in both formats): it is subscribed.
                curl.wait_for("QueueStatus").await;
            }
            packed.wait_for("QueueStatus").await;
            let mut markers = Vec::new();
            for i in 0..24 {
                let (body, marker) = event(i);
                server.publish(&body).await;
                // Each event arrives, decoded, before the next is published.
                packed.wait_for(&marker).await;
                plain.wait_for(&marker).await;
                if let Some(curl) = &mut curl {
                    curl.wait_for(&marker).await;
                }
                markers.push(marker);
            }
            let want = from_marker(&plain.decoded(), &markers[0]);
            assert!(want.len() > 5_000);
            assert_eq!(
                String::from_utf8_lossy(&from_marker(&packed.decoded(), &markers[0])),
                String::from_utf8_lossy(&want),
                "{format} {encoding}: the raw client's decoded stream"
            );
            if let Some(curl) = &curl {
                let (head, body) = curl.split();
                assert!(
                    head.contains(&format!("content-encoding: {encoding}")),
                    "{head}"
                );
                assert_eq!(
                    String::from_utf8_lossy(&from_marker(&body, &markers[0])),
                    String::from_utf8_lossy(&want),
                    "{format} {encoding}: curl's decoded stream"
                );
            }
            // Fewer bytes on the wire (zstd gains only on the large events
            // and spends a frame header on each small one).
            let (wire, plain_len) = (packed.body.len(), plain.body.len());
            match encoding {
                "gzip" => assert!(wire * 3 < plain_len, "{format} gzip: {wire} of {plain_len}"),
                "br" => assert!(
                    wire * 3 < plain_len * 2,
                    "{format} br: {wire} of {plain_len}"
                ),
                _ => assert!(wire < plain_len, "{format} zstd: {wire} of {plain_len}"),
            }

            // A clean end: the trailer, checked by strict readers and curl.
            server.shutdown().await;
            packed.wait_end().await;
            plain.wait_end().await;
            let whole = decode_strict(encoding, &packed.body);
            assert_eq!(whole, packed.decoded());
            if let Some(mut curl) = curl {
                let status = tokio::time::timeout(WAIT, curl.child.wait())
                    .await
                    .expect("curl ends with the stream")
                    .unwrap();
                assert!(
                    status.success(),
                    "curl failed to decode to the end: {status}"
                );
            }
        }
    }
}

/// A replay (`Last-Event-ID`) arrives compressed like live events, and
/// decodes to the plain replay.
#[tokio::test]
async fn a_replay_is_compressed_too() {
    let server = Server::start(&[]).await;
    let mut markers = Vec::new();
    let mut first_seq = 0;
    for i in 0..12 {
        let (body, marker) = event(i);
        let published = server.publish(&body).await;
        if i == 0 {
            first_seq = published[0].0;
        }
        markers.push(marker);
    }
    let path = format!(
        "/api/v1/events?heartbeat=300&last_event_id={}",
        first_seq - 1
    );
    for encoding in ENCODINGS {
        let mut plain = Raw::open(&server, &format!("{path}&compression=false"), None).await;
        let mut packed = Raw::open(&server, &path, Some(encoding)).await;
        let last = markers.last().unwrap();
        plain.wait_for(last).await;
        packed.wait_for(last).await;
        assert_eq!(
            from_marker(&packed.decoded(), &markers[0]),
            from_marker(&plain.decoded(), &markers[0]),
            "{encoding}"
        );
    }
}

/// Who gets plain: a client that opts out, one that accepts nothing
/// offered or prefers identity, every client of a server with
/// `SSE_COMPRESSION=off`; a server offering a list offers only it; a bad
/// `?compression=` is a 400 naming it, a bad setting stops the server.
#[tokio::test]
async fn compression_is_negotiated_and_can_be_turned_off() {
    let server = Server::start(&[]).await;
    let cases: [(&str, Option<&str>, Option<&str>); 8] = [
        ("", None, None),
        ("", Some("identity"), None),
        ("", Some("deflate"), None),
        ("", Some("identity;q=1, gzip;q=0.5"), None),
        ("&compression=false", Some("gzip"), None),
        ("&compression=0", Some("br"), None),
        ("", Some("gzip;q=0, br;q=0.8, zstd;q=0.9"), Some("zstd")),
        (
            "&compression=true",
            Some("gzip, deflate, br, zstd"),
            Some("gzip"),
        ),
    ];
    for (query, accept, want) in cases {
        let raw = Raw::open(
            &server,
            &format!("/api/v1/events?heartbeat=300{query}"),
            accept,
        )
        .await;
        assert!(raw.head.starts_with("http/1.1 200"), "{}", raw.head);
        assert_eq!(
            raw.header("content-encoding").as_deref(),
            want,
            "{query} {accept:?}"
        );
        assert_eq!(raw.header("vary").as_deref(), Some("accept-encoding"));
    }
    let res = client()
        .get(server.url("/api/v1/events?compression=maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "invalid_parameter");
    assert!(
        body["message"].as_str().unwrap().contains("compression"),
        "{body}"
    );

    let off = Server::start(&["--sse-compression", "off"]).await;
    let raw = Raw::open(&off, "/api/v1/events?heartbeat=300", Some("gzip, br, zstd")).await;
    assert_eq!(raw.header("content-encoding"), None);
    assert_eq!(raw.header("vary"), None, "nothing varies");

    let zstd_only = Server::start(&["--sse-compression", "zstd"]).await;
    let raw = Raw::open(&zstd_only, "/api/v1/events?heartbeat=300", Some("gzip, br")).await;
    assert_eq!(raw.header("content-encoding"), None);
    let raw = Raw::open(
        &zstd_only,
        "/api/v1/events?heartbeat=300",
        Some("gzip, br, zstd"),
    )
    .await;
    assert_eq!(raw.header("content-encoding").as_deref(), Some("zstd"));

    let err = event_server::config::Config::try_parse_from([
        "event-server",
        "--sse-compression",
        "gzip,lz4",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("lz4") && err.contains("sse-compression"),
        "{err}"
    );
    // The environment variable is the same setting.
    let from_env = event_server::config::Config::try_parse_from(["event-server"]).unwrap();
    assert_eq!(from_env.sse_compression, "on");
}

/// Keep-alives of a compressed stream are decodable as they come, like
/// events.
#[tokio::test]
async fn keepalives_are_compressed_and_flushed() {
    let server = Server::start(&[]).await;
    let mut streams = Vec::new();
    for encoding in ENCODINGS {
        // Filtered: the host's periodic queue statuses would put the
        // keep-alive off.
        let raw = Raw::open(
            &server,
            "/api/v1/events?heartbeat=5&events=NoteUpdated",
            Some(encoding),
        )
        .await;
        assert_eq!(raw.header("content-encoding").as_deref(), Some(encoding));
        streams.push(raw);
    }
    // Within the 10 s wait: a heartbeat every 5 s.
    for raw in &mut streams {
        raw.wait_for(": keepalive").await;
    }
}

/// Chromium's `EventSource` reads a compressed stream: the encoding its
/// network stack negotiates with the host (seen through `fetch`, which
/// shows the response's `Content-Encoding`) is a compressed one, and the
/// `EventSource` receives each event before the next is published.
#[tokio::test]
async fn a_browser_event_source_reads_a_compressed_stream() {
    if !page::browser_available() {
        return;
    }
    let _one = page::one_browser_at_a_time().await;
    let server = Server::start(&[]).await;
    let driver = event_test_support::browser::Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;
    browser.goto(&server.url("/health")).await.unwrap();
    browser
        .execute(
            r#"
            window.got = [];
            window.es = new EventSource('/api/v1/events?heartbeat=300&events=JobProgress');
            window.es.addEventListener('JobProgress', e => window.got.push(e.data));
            fetch('/api/v1/events?heartbeat=300').then(r => {
                window.encoding = r.headers.get('content-encoding') || 'identity';
                return r.body.cancel();
            });
            "#,
            vec![],
        )
        .await
        .unwrap();
    let encoding = page::until("the fetch's response head", || async {
        let v = browser
            .execute("return window.encoding || null", vec![])
            .await
            .ok()?;
        v.as_str().map(str::to_owned)
    })
    .await;
    assert!(
        ENCODINGS.contains(&encoding.as_str()),
        "Chromium was sent {encoding}"
    );
    eprintln!("Chromium's stream: Content-Encoding {encoding}");
    page::until("the EventSource to open", || async {
        let v = browser
            .execute("return window.es.readyState", vec![])
            .await
            .ok()?;
        (v.as_u64() == Some(1)).then_some(())
    })
    .await;
    for i in 0..5 {
        let (body, marker) = event(i * 3);
        server.publish(&body).await;
        page::until(&format!("event {i} in the page"), || async {
            let v = browser
                .execute("return window.got.join('\\n')", vec![])
                .await
                .ok()?;
            v.as_str()?.contains(&marker).then_some(())
        })
        .await;
    }
    browser.close().await.unwrap();
}

/// A named consumer's stream (fed from the event log, not the live
/// fan-out) is compressed the same way and decodes to what a plain
/// consumer of the same events receives.
#[tokio::test]
async fn a_consumer_stream_is_compressed_too() {
    let server = Server::start(&[]).await;
    for (n, encoding) in ENCODINGS.into_iter().enumerate() {
        for format in ["v1", "envelope"] {
            let path = |name: &str| {
                format!("/api/v1/events?consumer={name}-{n}-{format}&format={format}&heartbeat=300")
            };
            let mut plain = Raw::open(
                &server,
                &format!("{}&compression=false", path("plain")),
                None,
            )
            .await;
            let mut packed = Raw::open(&server, &path("packed"), Some(encoding)).await;
            assert_eq!(packed.header("content-encoding").as_deref(), Some(encoding));
            let mut markers = Vec::new();
            for i in 0..9 {
                let (body, marker) = event(i);
                server.publish(&body).await;
                markers.push(marker);
            }
            let last = markers.last().unwrap();
            plain.wait_for(last).await;
            packed.wait_for(last).await;
            assert_eq!(
                String::from_utf8_lossy(&from_marker(&packed.decoded(), &markers[0])),
                String::from_utf8_lossy(&from_marker(&plain.decoded(), &markers[0])),
                "{encoding} {format}"
            );
        }
    }
}
