//! # event-log
//!
//! The durable event log on SQLite (embedded, the default) or PostgreSQL:
//! implementations of event-core's [`EventLog`].
//! A host taps its bus with a [`LogWriter`](event_core::LogWriter) over one
//! of these and serves old cursors with a
//! [`LogReplay`](event_core::LogReplay); the model is in
//! [`event_core::log`].
//!
//! Each event is one row: its sequence number (the primary key), id, time,
//! topic ([`Event::topic`](event_core::Event::topic)), size and its
//! envelope JSON exactly as the SSE `envelope` format sends it. Appends are
//! one multi-row `INSERT` per batch in one transaction; a row that already
//! exists is skipped, so a retried batch is harmless. The table is
//! `matric_event_log`, created when missing (no migration table: it can
//! share a database with the webhook store).
//!
//! ## Example
//!
//! ```
//! use std::sync::Arc;
//! use event_core::{EventBus, EventLog, QueueStatus};
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let path = std::env::temp_dir().join(format!("log-doc-{}.db", uuid::Uuid::new_v4()));
//! let log = event_log::open(&format!("sqlite://{}", path.display())).await.unwrap();
//! let bus = EventBus::default();
//! let event = bus.publish(QueueStatus::new(4, 2));
//! log.append(&[event.clone()]).await.unwrap();
//! let stored = log.read_after(0, 10).await.unwrap();
//! assert_eq!((stored[0].seq(), stored[0].id()), (event.seq(), event.id()));
//! assert_eq!(stored[0].json(), event.json());
//! # let _ = std::fs::remove_file(path);
//! # }
//! ```

use std::sync::Arc;

use event_core::{Event, EventLog, LogError, OffsetStore};

mod offsets;
#[cfg(feature = "postgres")]
mod postgres;
mod sqlite;
mod topics;

#[cfg(feature = "postgres")]
pub use postgres::PostgresLog;
pub use sqlite::SqliteLog;

/// The table every engine uses.
pub const TABLE: &str = "matric_event_log";

/// Rows per `INSERT` (bound parameters per statement stay under SQLite's
/// and PostgreSQL's limits).
const INSERT_CHUNK: usize = 1000;

/// Opens the log at `url` together with the consumer offsets kept in the
/// same database ([`open`] gives the log alone).
pub async fn open_with_offsets(
    url: &str,
) -> Result<(Arc<dyn EventLog>, Arc<dyn OffsetStore>), LogError> {
    if url.starts_with("sqlite:") {
        let log = Arc::new(SqliteLog::connect(url).await?);
        return Ok((log.clone(), log));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let log = Arc::new(PostgresLog::connect(url).await?);
        return Ok((log.clone(), log));
    }
    Err(unsupported(url))
}

fn unsupported(url: &str) -> LogError {
    LogError::Storage {
        message: format!(
            "unsupported event log URL scheme in {:?} (sqlite://{})",
            url.split(':').next().unwrap_or_default(),
            if cfg!(feature = "postgres") {
                " or postgres://"
            } else {
                ""
            }
        ),
        source: None,
    }
}

/// Opens the log at `url`: `sqlite://path` (created when missing) or, with
/// the `postgres` feature, `postgres://…`.
pub async fn open(url: &str) -> Result<Arc<dyn EventLog>, LogError> {
    if url.starts_with("sqlite:") {
        return Ok(Arc::new(SqliteLog::connect(url).await?));
    }
    #[cfg(feature = "postgres")]
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Ok(Arc::new(PostgresLog::connect(url).await?));
    }
    Err(unsupported(url))
}

fn storage(what: &'static str) -> impl FnOnce(sqlx::Error) -> LogError {
    move |e| LogError::storage(what, e)
}

fn micros(t: time::OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// A stored sequence number as the `u64` the bus uses.
fn seq_of_row(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A bus sequence number as a SQL `BIGINT` (bus sequences stay far below
/// 2^63: the clock start is in microseconds).
fn seq_to_row(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn decode(seq: i64, body: &[u8]) -> Result<Arc<Event>, LogError> {
    let seq = seq_of_row(seq);
    Event::from_envelope_json(seq, body)
        .map(Arc::new)
        .map_err(|source| LogError::Corrupt { seq, source })
}
