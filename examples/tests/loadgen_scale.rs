//! `loadgen --subscribe` with `--source-addrs` (the client processes of
//! `cargo xtask bench --only scale`) against a real `raw-floor` on
//! loopback, with a second `loadgen` publishing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// A `raw-floor` on a free loopback port, killed on drop.
struct Floor {
    child: Child,
    port: u16,
}

impl Floor {
    fn start() -> Floor {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raw-floor"))
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start raw-floor");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Floor { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Established connections to local `port` from each remote IPv4 address
/// (`/proc/net/tcp`: little-endian hex addresses, state `01`).
fn peers_of(port: u16) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let mut peers: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (local, remote, state) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let local_port = u16::from_str_radix(local.split(':').nth(1)?, 16).ok()?;
            if local_port != port || *state != "01" {
                return None;
            }
            let ip = u32::from_str_radix(remote.split(':').next()?, 16).ok()?;
            Some(std::net::Ipv4Addr::from(ip.swap_bytes()).to_string())
        })
        .collect();
    peers.sort();
    peers
}

#[test]
fn subscribers_from_several_source_addresses_receive_every_event() {
    let floor = Floor::start();
    let mut sub = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--quiet", "--url", &floor.url(), "--subscribe", "20"])
        .args(["--ws-client", "raw", "--connect-timeout", "30"])
        .args(["--subscribe-timeout", "120", "--settle", "30"])
        .args(["--source-addrs", "127.0.0.2,127.0.0.3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start loadgen --subscribe");
    let (tx, lines) = mpsc::channel();
    let stdout = sub.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = || -> Value {
        let line = lines.recv_timeout(Duration::from_secs(120)).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    };

    let connected = next();
    assert_eq!(connected["phase"], "connected");
    assert_eq!(connected["established"], 20, "{connected}");
    // Half from each source address, none from 127.0.0.1.
    let peers = peers_of(floor.port);
    assert_eq!(peers.len(), 20, "{peers:?}");
    assert_eq!(peers.iter().filter(|p| *p == "127.0.0.2").count(), 10);
    assert_eq!(peers.iter().filter(|p| *p == "127.0.0.3").count(), 10);

    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--quiet", "--url", &floor.url(), "--ws", "0", "--sse", "0"])
        .args(["--rate", "50", "--duration", "1", "--settle", "0"])
        .output()
        .expect("run the publisher");
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let published: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let count = published["published"].as_u64().unwrap();
    assert_eq!(count, 50, "{published}");

    writeln!(sub.stdin.take().unwrap(), "stop {count} {started}").unwrap();
    let done = next();
    assert_eq!(done["phase"], "done", "{done}");
    assert_eq!(done["stopped_by"], "stop");
    assert_eq!(done["delivered"], 20 * count, "{done}");
    assert_eq!(done["lost"], 0, "{done}");
    assert_eq!(done["settled"], true, "{done}");
    assert!(done["latency_us"]["p99"].as_f64().unwrap() > 0.0, "{done}");
    assert!(sub.wait().unwrap().success());
}
