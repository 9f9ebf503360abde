//! The connection registry shared by the WebSocket and SSE transports.
//!
//! Every live client connection holds a [`ConnectionGuard`]; dropping the
//! guard removes the entry, so a connection leaves the registry however it
//! ends (client close, abrupt TCP drop, heartbeat timeout, server kick,
//! panic in its task). The registry is the management view — list, inspect,
//! kick — and the source of the client counts other parts need (the queue
//! ticker runs only while a client is connected).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Principal;

mod close;

pub use close::{CloseSignal, Closed};

/// Which transport a connection uses.
///
/// Non-exhaustive: a transport may be added without breaking the matches of
/// other crates (give them a wildcard arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Transport {
    /// `/api/v1/ws`
    #[serde(rename = "ws")]
    WebSocket,
    /// `/api/v1/events`
    Sse,
    /// `/mcp` (Model Context Protocol sessions, `event-mcp`)
    Mcp,
}

impl Transport {
    /// `ws`, `sse` or `mcp`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "ws",
            Transport::Sse => "sse",
            Transport::Mcp => "mcp",
        }
    }
}

/// Why a connection ended or was asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// An operator removed it through the registry.
    Kicked,
    /// The server is shutting down.
    Shutdown,
}

/// One connection's live record.
pub struct ConnectionEntry {
    id: u64,
    transport: Transport,
    remote_addr: Option<SocketAddr>,
    principal_id: String,
    connected_at: OffsetDateTime,
    events_sent: AtomicU64,
    dropped: AtomicU64,
    /// When an event was last written, in Unix milliseconds (0: never).
    last_sent_ms: AtomicU64,
    queued: AtomicU64,
    slot: Option<String>,
    close: CloseSignal,
}

impl fmt::Debug for ConnectionEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionEntry")
            .field("id", &self.id)
            .field("transport", &self.transport)
            .field("remote_addr", &self.remote_addr)
            .finish()
    }
}

impl ConnectionEntry {
    /// The connection id (unique per registry).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Counts events written to the client (and notes the time, for the
    /// connection's `last_event_at`).
    pub fn record_sent(&self, n: u64) {
        if n == 0 {
            return;
        }
        self.events_sent.fetch_add(n, Ordering::Relaxed);
        // Once per written batch, not per event.
        self.last_sent_ms
            .store(unix_millis_now(), Ordering::Relaxed);
    }

    /// Records how many wire bytes wait in the connection's queue now (its
    /// `queued_bytes`); transports call it when they write a batch.
    pub fn record_queued(&self, bytes: u64) {
        self.queued.store(bytes, Ordering::Relaxed);
    }

    /// The connection slot it was opened for ([`Principal::slot`]).
    pub fn slot(&self) -> Option<&str> {
        self.slot.as_deref()
    }

    /// Counts events the client missed.
    pub fn record_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Resolves when the connection has been asked to close (kick or
    /// shutdown). Polling the same future again with the same waker is one
    /// atomic load (a connection task polls it on every wake-up); create it
    /// once per wait, not once per loop turn (each new one registers).
    pub fn closed(&self) -> Closed<'_> {
        self.close.closed()
    }

    /// Whether the connection has been asked to close.
    pub fn is_closing(&self) -> bool {
        self.close.is_closed()
    }

    /// A snapshot for listing.
    pub fn info(&self) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            transport: self.transport,
            remote_addr: self.remote_addr.map(|a| a.to_string()),
            principal: self.principal_id.clone(),
            connected_at: crate::event::format_rfc3339_millis(self.connected_at),
            events_sent: self.events_sent.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            queued_bytes: self.queued.load(Ordering::Relaxed),
            last_event_at: match self.last_sent_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                    .ok()
                    .map(crate::event::format_rfc3339_millis),
            },
            slot: self.slot.clone(),
        }
    }
}

fn unix_millis_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Told when connections open and close, for a host that follows some of
/// them (the connection API's slots). Called outside the registry's lock,
/// on the connection's task: keep it short and never block.
pub trait ConnectionObserver: Send + Sync + 'static {
    /// A connection was registered.
    fn opened(&self, info: &ConnectionInfo);
    /// A connection left the registry; `info` has its final counters.
    fn closed(&self, info: &ConnectionInfo);
}

/// A connection as listed by `GET /api/v1/connections`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConnectionInfo {
    /// The connection id.
    pub id: u64,
    /// `ws`, `sse` or `mcp`.
    pub transport: Transport,
    /// The peer address, if known.
    pub remote_addr: Option<String>,
    /// The principal id (never a token).
    pub principal: String,
    /// When it connected (RFC 3339).
    #[cfg_attr(feature = "schema", schemars(extend("format" = "date-time")))]
    pub connected_at: String,
    /// Events written to it.
    pub events_sent: u64,
    /// Events it missed.
    pub dropped: u64,
    /// Wire bytes waiting in its queue when it last wrote.
    pub queued_bytes: u64,
    /// When an event was last written to it (RFC 3339), if ever.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(extend("format" = "date-time")))]
    pub last_event_at: Option<String>,
    /// The connection slot (`POST /api/v1/connections`) it was opened for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

struct RegistryInner {
    next_id: AtomicU64,
    entries: RwLock<HashMap<u64, Arc<ConnectionEntry>>>,
    /// The number of open connections, for tasks that wait for the first
    /// client (or the last to leave).
    count: watch::Sender<usize>,
    shutdown: CancellationToken,
    observer: OnceLock<Arc<dyn ConnectionObserver>>,
}

/// Table capacity below which the registry never shrinks its table.
const SHRINK_ABOVE: usize = 1024;

/// The registry of open client connections. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionRegistry {
    inner: Arc<RegistryInner>,
}

impl fmt::Debug for ConnectionRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionRegistry")
            .field("open", &self.total())
            .finish()
    }
}

impl Default for ConnectionRegistry {
    fn default() -> Self {
        ConnectionRegistry::new()
    }
}

impl ConnectionRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        ConnectionRegistry {
            inner: Arc::new(RegistryInner {
                next_id: AtomicU64::new(1),
                entries: RwLock::new(HashMap::new()),
                count: watch::Sender::new(0),
                shutdown: CancellationToken::new(),
                observer: OnceLock::new(),
            }),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<u64, Arc<ConnectionEntry>>> {
        // Map operations cannot leave it inconsistent; ignore poisoning.
        self.inner.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<u64, Arc<ConnectionEntry>>> {
        self.inner
            .entries
            .write()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a connection. Keep the guard for the connection's lifetime.
    pub fn register(
        &self,
        transport: Transport,
        remote_addr: Option<SocketAddr>,
        principal: &Principal,
    ) -> ConnectionGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ConnectionEntry {
            id,
            transport,
            remote_addr,
            principal_id: principal.id.clone(),
            connected_at: OffsetDateTime::now_utc(),
            events_sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            last_sent_ms: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            slot: principal.slot.clone(),
            close: CloseSignal::default(),
        });
        let len = {
            let mut map = self.write();
            map.insert(id, entry.clone());
            map.len()
        };
        // After the insert: a shutdown either saw this entry or had begun
        // before it (see `shutdown`).
        if self.is_shutting_down() {
            entry.close.close();
        }
        self.inner.count.send_replace(len);
        if let Some(observer) = self.inner.observer.get() {
            observer.opened(&entry.info());
        }
        ConnectionGuard {
            registry: self.clone(),
            entry,
        }
    }

    fn remove(&self, entry: &ConnectionEntry) {
        let len = {
            let mut map = self.write();
            map.remove(&entry.id);
            // After a mass close the table would keep the peak's buckets
            // for the process's life: give most of them back once it is a
            // quarter full (amortised, like its growth).
            let len = map.len();
            if map.capacity() > SHRINK_ABOVE && len < map.capacity() / 4 {
                map.shrink_to(len * 2);
            }
            map.len()
        };
        self.inner.count.send_replace(len);
        if let Some(observer) = self.inner.observer.get() {
            observer.closed(&entry.info());
        }
    }

    /// Buckets the table has room for (for the shrink test).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.read().capacity()
    }

    /// Installs the one [`ConnectionObserver`]; `false` if one was
    /// installed already (it stays).
    pub fn set_observer(&self, observer: Arc<dyn ConnectionObserver>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    /// Every open connection, ordered by id.
    pub fn list(&self) -> Vec<ConnectionInfo> {
        let mut v: Vec<_> = self.read().values().map(|e| e.info()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// One connection.
    pub fn get(&self, id: u64) -> Option<ConnectionInfo> {
        self.read().get(&id).map(|e| e.info())
    }

    /// Asks a connection to close. Returns `false` when no such connection
    /// is open. The entry disappears once the connection has closed.
    pub fn disconnect(&self, id: u64) -> bool {
        match self.read().get(&id) {
            Some(entry) => {
                entry.close.close();
                true
            }
            None => false,
        }
    }

    /// Asks every connection, present and future, to close (server shutdown).
    pub fn shutdown(&self) {
        // Marked first, then every entry closed: a connection registering
        // meanwhile is either in the map by now or sees the mark.
        self.inner.shutdown.cancel();
        // Woken outside the map's lock, so registrations are not held up.
        let entries: Vec<Arc<ConnectionEntry>> = self.read().values().cloned().collect();
        for entry in entries {
            entry.close.close();
        }
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Open connections of one transport.
    pub fn count(&self, transport: Transport) -> usize {
        self.read()
            .values()
            .filter(|e| e.transport == transport)
            .count()
    }

    /// All open connections.
    pub fn total(&self) -> usize {
        *self.inner.count.borrow()
    }

    /// Watches the number of open connections.
    pub fn watch_total(&self) -> watch::Receiver<usize> {
        self.inner.count.subscribe()
    }
}

/// Keeps a connection registered; dropping it unregisters.
#[derive(Debug)]
pub struct ConnectionGuard {
    registry: ConnectionRegistry,
    entry: Arc<ConnectionEntry>,
}

impl std::ops::Deref for ConnectionGuard {
    type Target = ConnectionEntry;

    fn deref(&self) -> &ConnectionEntry {
        &self.entry
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.registry.remove(&self.entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shrinks_after_a_mass_close() {
        let reg = ConnectionRegistry::new();
        let p = Principal::anonymous();
        let guards: Vec<_> = (0..20_000)
            .map(|_| reg.register(Transport::Sse, None, &p))
            .collect();
        let peak = reg.capacity();
        assert!(peak >= 20_000);
        drop(guards);
        assert_eq!(reg.total(), 0);
        assert!(
            reg.capacity() <= SHRINK_ABOVE * 2,
            "{} buckets kept after the close (peak {peak})",
            reg.capacity()
        );
    }

    #[tokio::test]
    async fn register_list_kick_drop() {
        let reg = ConnectionRegistry::new();
        let mut total = reg.watch_total();
        let p = Principal::anonymous();
        let a = reg.register(Transport::WebSocket, None, &p);
        let b = reg.register(Transport::Sse, "127.0.0.1:9".parse().ok(), &p);
        assert_eq!(reg.total(), 2);
        assert_eq!(reg.count(Transport::Sse), 1);
        b.record_sent(3);
        b.record_dropped(1);
        let info = reg.get(b.id()).unwrap();
        assert_eq!((info.events_sent, info.dropped), (3, 1));
        assert_eq!(info.remote_addr.as_deref(), Some("127.0.0.1:9"));
        assert!(reg.disconnect(a.id()));
        a.closed().await;
        drop(a);
        assert_eq!(reg.list().len(), 1);
        assert!(!reg.disconnect(999));
        drop(b);
        total.wait_for(|n| *n == 0).await.unwrap();
        let c = reg.register(Transport::Sse, None, &p);
        reg.shutdown();
        c.closed().await;
        assert!(reg.register(Transport::Sse, None, &p).is_closing());
    }

    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<(bool, ConnectionInfo)>>);

    impl ConnectionObserver for Seen {
        fn opened(&self, info: &ConnectionInfo) {
            self.0.lock().unwrap().push((true, info.clone()));
        }
        fn closed(&self, info: &ConnectionInfo) {
            self.0.lock().unwrap().push((false, info.clone()));
        }
    }

    #[test]
    fn slots_are_recorded_and_observed_with_final_counters() {
        let reg = ConnectionRegistry::new();
        let seen = Arc::new(Seen::default());
        assert!(reg.set_observer(seen.clone()));
        assert!(!reg.set_observer(Arc::new(Seen::default())));
        let p = Principal {
            slot: Some("conn_a".to_owned()),
            ..Principal::anonymous()
        };
        let a = reg.register(Transport::Sse, None, &p);
        let plain = reg.register(Transport::WebSocket, None, &Principal::anonymous());
        assert_eq!(reg.get(a.id()).unwrap().last_event_at, None);
        a.record_sent(0);
        assert_eq!(reg.get(a.id()).unwrap().last_event_at, None);
        a.record_sent(2);
        a.record_queued(5);
        let info = reg.get(a.id()).unwrap();
        assert!(info.last_event_at.is_some());
        assert_eq!((info.events_sent, info.queued_bytes), (2, 5));
        assert_eq!(info.slot.as_deref(), Some("conn_a"));
        assert_eq!(reg.get(plain.id()).unwrap().slot, None);
        drop(a);
        let seen = seen.0.lock().unwrap();
        assert_eq!(seen.len(), 3);
        assert!(seen[0].0 && seen[0].1.slot.as_deref() == Some("conn_a"));
        let (opened, last) = &seen[2];
        assert!(!opened);
        assert_eq!(last.events_sent, 2);
        assert_eq!(last.slot.as_deref(), Some("conn_a"));
    }
}
