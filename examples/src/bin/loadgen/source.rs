//! `--source-addrs`: client sockets bound to several local addresses in
//! turn before they connect.
//!
//! One source address gives a client about 28,000 ephemeral ports (Linux's
//! default range 32768–60999) towards one server; 100,000 connections need
//! several. All of 127.0.0.0/8 is loopback on Linux, so `127.0.0.2`,
//! `127.0.0.3`, … work without any setup. Binding to port 0 picks the port
//! at bind time, per source address, so every address adds a full range.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpSocket, TcpStream};

/// The addresses, used round-robin.
#[derive(Debug)]
pub struct Sources {
    addrs: Vec<IpAddr>,
    next: AtomicUsize,
}

impl Sources {
    /// Round-robin over `addrs` (none: let the kernel choose).
    pub fn new(addrs: Vec<IpAddr>) -> Self {
        Sources {
            addrs,
            next: AtomicUsize::new(0),
        }
    }

    /// The next address to bind, if any were given.
    pub fn pick(&self) -> Option<IpAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        Some(self.addrs[i])
    }

    /// Connects to `addr`, bound to the next source address when there is one.
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let Some(ip) = self.pick() else {
            return TcpStream::connect(addr).await;
        };
        let socket = match ip {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket
            .bind(SocketAddr::new(ip, 0))
            .map_err(|e| io::Error::new(e.kind(), format!("bind to source address {ip}: {e}")))?;
        socket.connect(addr).await
    }
}

/// The process's sources (set once, from `--source-addrs`).
static SOURCES: OnceLock<Sources> = OnceLock::new();

/// Sets the process's source addresses; the first call wins.
pub fn set(addrs: Vec<IpAddr>) {
    let _ = SOURCES.set(Sources::new(addrs));
}

/// Connects a client socket to `addr` from the next `--source-addrs`
/// address (or the kernel's choice when none were given).
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    match SOURCES.get() {
        Some(sources) => sources.connect(addr).await,
        None => TcpStream::connect(addr).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_used_in_turn() {
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let s = Sources::new(vec![a, b]);
        let picked: Vec<_> = (0..5).map(|_| s.pick().unwrap()).collect();
        assert_eq!(picked, vec![a, b, a, b, a]);
        assert_eq!(Sources::new(Vec::new()).pick(), None);
    }

    #[tokio::test]
    async fn connections_come_from_the_source_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sources = Sources::new(vec![
            "127.0.0.2".parse().unwrap(),
            "127.0.0.3".parse().unwrap(),
        ]);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let client = sources.connect(addr).await.unwrap();
            let (_server_side, peer) = listener.accept().await.unwrap();
            assert_eq!(client.local_addr().unwrap(), peer);
            seen.push(peer.ip().to_string());
        }
        assert_eq!(seen, ["127.0.0.2", "127.0.0.3", "127.0.0.2", "127.0.0.3"]);
    }
}
