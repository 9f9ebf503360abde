//! The TCP listener: connection caps and an accept loop that survives
//! running out of file descriptors.
//!
//! # Caps
//!
//! Every accepted connection takes a place under two caps before anything
//! of it is read: the open connections in all (`MAX_OPEN_CONNECTIONS`, kept
//! below the process's file limit so the database, logs and webhook requests
//! always have descriptors left) and those from one IP address
//! (`MAX_CONNECTIONS_PER_IP`, all routes and transports together). The place
//! is released when the connection's socket is dropped. A connection over a
//! cap is answered `503` with a JSON body and `Retry-After` and closed; at
//! most [`MAX_REFUSING`] such answers are in flight at once, beyond which a
//! refused connection is closed at once, so a flood cannot pile up work.
//!
//! # Accept errors
//!
//! When the process is out of descriptors (`EMFILE`, `ENFILE`) or memory,
//! `accept` fails until a connection closes. The loop then waits, doubling
//! from 10 ms to 1 s, logs one warning when this starts and one line when it
//! ends (with how often it failed), instead of one error per attempt.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Refusal answers (`503`) written at the same time, at most.
pub const MAX_REFUSING: usize = 64;
/// Descriptors kept free below the file limit when `MAX_OPEN_CONNECTIONS` is
/// derived from it (a quarter of the limit when that is less).
pub const RESERVED_FDS: u64 = 128;
/// How long a refusal may take to write and close.
const REFUSAL_TIME: Duration = Duration::from_secs(1);
/// The `Retry-After` of a refusal, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// The connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// Open connections in all.
    pub total: usize,
    /// Open connections from one IP address (`0`: no limit).
    pub per_ip: usize,
}

impl ConnectionCaps {
    /// The caps for `configured_total` (or, when unset, the file limit less
    /// [`RESERVED_FDS`]), after raising the soft file limit to the hard one.
    /// A configured total above what the file limit allows is lowered to it,
    /// with a warning.
    pub fn from_file_limit(configured_total: Option<usize>, per_ip: usize) -> ConnectionCaps {
        let soft = raise_file_limit();
        let allowed = usize::try_from(soft.saturating_sub(RESERVED_FDS.min(soft / 4)).max(1))
            .unwrap_or(usize::MAX);
        let total = match configured_total {
            Some(n) if n > allowed => {
                tracing::warn!(
                    configured = n,
                    allowed,
                    file_limit = soft,
                    "MAX_OPEN_CONNECTIONS is above the file limit allows; using the lower value"
                );
                allowed
            }
            Some(n) => n,
            None => allowed,
        };
        ConnectionCaps { total, per_ip }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force afterwards (a large default where it cannot be read).
fn raise_file_limit() -> u64 {
    #[cfg(unix)]
    {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(error) => {
                tracing::warn!(%error, "could not raise the open file limit");
                rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
            }
        }
    }
    #[cfg(not(unix))]
    {
        65_536
    }
}

/// Counts open connections, in all and per IP address.
#[derive(Debug)]
struct Counts {
    caps: ConnectionCaps,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Total,
    PerIp,
}

impl Counts {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Place, Refusal> {
        let previous = self.total.fetch_add(1, Ordering::AcqRel);
        if previous >= self.caps.total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        if self.caps.per_ip > 0 {
            let mut map = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
            let count = map.entry(ip).or_insert(0);
            if *count >= self.caps.per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerIp);
            }
            *count += 1;
        }
        Ok(Place {
            counts: self.clone(),
            ip,
        })
    }
}

/// A connection's place under the caps, released on drop.
#[derive(Debug)]
struct Place {
    counts: Arc<Counts>,
    ip: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.counts.caps.per_ip > 0 {
            let mut map = self
                .counts
                .per_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = map.get_mut(&self.ip) {
                *count -= 1;
                if *count == 0 {
                    map.remove(&self.ip);
                }
            }
        }
        self.counts.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A TCP listener that sets `TCP_NODELAY`, enforces [`ConnectionCaps`] and
/// backs off on accept errors (see the module docs).
#[derive(Debug)]
pub struct CappedListener {
    tcp: TcpListener,
    counts: Arc<Counts>,
    refusing: Arc<Semaphore>,
}

impl CappedListener {
    /// Wraps a bound listener.
    pub fn new(tcp: TcpListener, caps: ConnectionCaps) -> CappedListener {
        CappedListener {
            tcp,
            counts: Arc::new(Counts {
                caps,
                total: AtomicUsize::new(0),
                per_ip: Mutex::new(HashMap::new()),
            }),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        }
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.counts.total.load(Ordering::Acquire)
    }

    async fn accept_tcp(&mut self) -> (TcpStream, SocketAddr) {
        let mut backoff = Duration::from_millis(10);
        let mut failures = 0u64;
        loop {
            match self.tcp.accept().await {
                Ok(accepted) => {
                    if failures > 0 {
                        tracing::info!(failures, "accepting connections again");
                    }
                    return accepted;
                }
                // The peer left before it was accepted: nothing to wait for.
                Err(e) if is_connection_error(&e) => {}
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(
                            %error,
                            open = self.open(),
                            "cannot accept connections (out of file descriptors or memory?); \
                             retrying with back-off"
                        );
                    } else {
                        tracing::debug!(%error, failures, "accept still failing");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

impl Listener for CappedListener {
    type Io = CappedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, remote) = self.accept_tcp().await;
            match self.counts.admit(remote.ip()) {
                Ok(place) => {
                    // Events are small writes that must leave at once:
                    // without TCP_NODELAY, Nagle's algorithm holds a write
                    // back while the previous one is unacknowledged, and the
                    // client's delayed ACK makes that tens of milliseconds.
                    if let Err(error) = tcp.set_nodelay(true) {
                        tracing::debug!(%error, "could not set TCP_NODELAY");
                    }
                    return (CappedStream { tcp, _place: place }, remote);
                }
                Err(refusal) => self.refuse(tcp, refusal),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl CappedListener {
    /// Answers `503` on a refused connection (in the background, bounded in
    /// number and time) and closes it.
    fn refuse(&self, mut tcp: TcpStream, refusal: Refusal) {
        let (setting, limit) = match refusal {
            Refusal::Total => ("MAX_OPEN_CONNECTIONS", self.counts.caps.total),
            Refusal::PerIp => ("MAX_CONNECTIONS_PER_IP", self.counts.caps.per_ip),
        };
        tracing::debug!(setting, limit, "connection refused: over a connection cap");
        let Ok(permit) = self.refusing.clone().try_acquire_owned() else {
            return;
        };
        let body = format!(
            r#"{{"error":"too_many_connections","message":"the server has too many open connections ({setting}={limit}); retry later"}}"#
        );
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             retry-after: {RETRY_AFTER_SECS}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(REFUSAL_TIME, async {
                tcp.write_all(answer.as_bytes()).await?;
                tcp.shutdown().await?;
                // Read what the client sent until it closes, so the close is
                // not a reset that could discard the answer.
                let mut sink = [0u8; 1024];
                while tcp.read(&mut sink).await? > 0 {}
                Ok::<(), io::Error>(())
            })
            .await;
        });
    }
}

/// An admitted connection: the socket and its place under the caps.
#[derive(Debug)]
pub struct CappedStream {
    tcp: TcpStream,
    _place: Place,
}

/// The socket is registered with the current runtime's I/O driver instead
/// of the one it was accepted on; see [`Rehome`](super::Rehome).
impl super::Rehome for CappedStream {
    fn rehome(&mut self) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd;
            // A second descriptor of the same socket, registered here;
            // dropping the first deregisters it from the old driver before
            // closing it, so that driver never reports this socket again.
            let fd = self.tcp.as_fd().try_clone_to_owned()?;
            self.tcp = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        }
        Ok(())
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_and_released() {
        let counts = Arc::new(Counts {
            caps: ConnectionCaps {
                total: 3,
                per_ip: 2,
            },
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        });
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = counts.admit(a).expect("first from a");
        let second = counts.admit(a).expect("second from a");
        assert_eq!(counts.admit(a).err(), Some(Refusal::PerIp));
        let third = counts.admit(b).expect("first from b");
        assert_eq!(counts.admit(b).err(), Some(Refusal::Total));
        drop(first);
        assert_eq!(counts.total.load(Ordering::Acquire), 2);
        let again = counts.admit(a).expect("a has room again");
        drop((second, third, again));
        assert_eq!(counts.total.load(Ordering::Acquire), 0);
        assert!(counts.per_ip.lock().expect("lock").is_empty());
    }
}
