//! Out of file descriptors, the accept loop backs off and logs once, then
//! accepts again by itself when descriptors are freed.
//!
//! Its own binary: it lowers this process's open-file limit, which no other
//! test may share. The clock is paused, so the back-off's steps are counted
//! in virtual time, not measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::Listener;
use event_http::{CappedListener, ConnectionCaps};

/// Log lines, shared with the subscriber.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    fn count(&self, needle: &str) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines().filter(|l| l.contains(needle)).count()
    }
}

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

#[tokio::test(start_paused = true)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_logs_once() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let mut listener = CappedListener::new(
        tcp,
        ConnectionCaps {
            total: 10_000,
            per_ip: 0,
        },
    );
    // Ten clients wait in the backlog before the limit drops.
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(std::net::TcpStream::connect(addr).unwrap());
    }
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    let room = 3;
    rlimit::setrlimit(rlimit::Resource::NOFILE, open_fds() + room, hard).unwrap();

    let accepted = Arc::new(Mutex::new(Vec::new()));
    let keep = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await;
            keep.lock().unwrap().push(io);
        }
    });
    // Virtual time: ten seconds of the loop's life, out of descriptors.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let held = accepted.lock().unwrap().len() as u64;
    // (The count of open descriptors is approximate: reading it opens one.)
    assert!(
        held < clients.len() as u64,
        "all {held} accepted: the limit did not bite"
    );
    assert_eq!(lines.count("cannot accept connections"), 1, "warned once");
    let retries = lines.count("accept still failing");
    // Back-off from 10 ms doubling to 1 s: about 7 tries in the first
    // second, then one a second. A spinning loop would try millions of
    // times.
    assert!((5..=25).contains(&retries), "{retries} retries in 10 s");

    // Descriptors come back: everyone waiting is accepted without help.
    accepted.lock().unwrap().clear();
    rlimit::setrlimit(rlimit::Resource::NOFILE, soft, hard).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while accepted.lock().unwrap().len() + (held as usize) < clients.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} more accepted",
            accepted.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lines.count("accepting connections again"), 1);
    task.abort();
    drop(clients);
}
