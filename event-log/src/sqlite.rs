//! The SQLite log: one file, WAL journal, one writer connection.
//!
//! Commits use `synchronous = NORMAL`: in WAL mode a commit is in the
//! write-ahead log when it returns, so it survives the crash or `SIGKILL`
//! of the process (the failure a `202` promises to survive); a power loss
//! can lose the last commits before a checkpoint.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use event_core::{Event, EventLog, LogBounds, LogError, Retention};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{INSERT_CHUNK, decode, micros, seq_to_row, storage};

/// Rows removed per `DELETE` when pruning, so that appends never wait long
/// behind a prune.
const PRUNE_CHUNK: i64 = 10_000;

/// Creates the file's directory when missing, and the file itself readable
/// by its owner only (0600; the log holds every event's payload). An
/// existing file is left as it is.
fn prepare_file(url: &str) -> Result<(), LogError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = std::path::Path::new(rest.split('?').next().unwrap_or(rest));
    if path.as_os_str().is_empty() {
        return Ok(());
    }
    let failed = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |e: std::io::Error| LogError::storage(what, e)
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(failed("cannot create the directory of"))?;
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(failed("cannot create")(e)),
    }
}

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] (`PASSIVE`: it never
/// waits for the writer or readers) until the log is dropped.
async fn checkpoint_loop(pool: SqlitePool, alive: std::sync::Weak<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 {
            break;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(%error, "event log checkpoint failed");
        }
    }
    pool.close().await;
}

crate::topics::topic_methods!(SqliteLog, pool, writer);
crate::offsets::offset_store!(SqliteLog, pool, writer);

/// The SQLite [`EventLog`] (and [`OffsetStore`](event_core::OffsetStore)).
#[derive(Debug, Clone)]
pub struct SqliteLog {
    /// Reads.
    pool: SqlitePool,
    /// The one writer (appends and prunes).
    writer: SqlitePool,
    write: Arc<tokio::sync::Mutex<()>>,
    /// Alive while any clone is: the checkpoint task stops with the last.
    _alive: Arc<()>,
}

/// How often the WAL is checkpointed in the background.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

impl SqliteLog {
    /// Opens (creating when missing) the log at `url` (`sqlite://path`).
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        if !memory {
            prepare_file(url)?;
        }
        let options = SqliteConnectOptions::from_str(url)
            .map_err(storage("invalid SQLite URL"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        // The writer never checkpoints inside a commit (SQLite's default
        // every 1,000 pages put a checkpoint's cost on one append's
        // latency); a background task does it on a connection of its own.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options
                    .clone()
                    .pragma("wal_autocheckpoint", if memory { "1000" } else { "0" }),
            )
            .await
            .map_err(storage("cannot open the SQLite event log"))?;
        let pool = if memory {
            writer.clone()
        } else {
            SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options.clone().read_only(true))
                .await
                .map_err(storage("cannot open the SQLite event log for reading"))?
        };
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS matric_event_log (
                seq INTEGER PRIMARY KEY,
                event_id BLOB NOT NULL,
                occurred_at_us INTEGER NOT NULL,
                topic TEXT NOT NULL,
                size INTEGER NOT NULL,
                body BLOB NOT NULL
            );
            CREATE INDEX IF NOT EXISTS matric_event_log_id ON matric_event_log (event_id);
            CREATE INDEX IF NOT EXISTS matric_event_log_time ON matric_event_log (occurred_at_us);",
        )
        .execute(&writer)
        .await
        .map_err(storage("cannot create the event log table"))?;
        sqlx::raw_sql(crate::topics::CREATE)
            .execute(&writer)
            .await
            .map_err(storage("cannot create the topic retention table"))?;
        sqlx::raw_sql(crate::offsets::CREATE)
            .execute(&writer)
            .await
            .map_err(storage("cannot create the event log table"))?;
        let alive = Arc::new(());
        if !memory {
            let checkpointer = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await
                .map_err(storage("cannot open the SQLite event log for checkpoints"))?;
            tokio::spawn(checkpoint_loop(checkpointer, Arc::downgrade(&alive)));
        }
        Ok(SqliteLog {
            pool,
            writer,
            write: Arc::new(tokio::sync::Mutex::new(())),
            _alive: alive,
        })
    }

    /// The newest sequence to remove so that `retention` holds, if any.
    async fn prune_through(
        &self,
        retention: &Retention,
        now: OffsetDateTime,
    ) -> Result<Option<i64>, LogError> {
        let mut through: Option<i64> = None;
        let mut raise = |v: Option<i64>| through = through.max(v);
        if let Some(age) = retention.max_age {
            let cutoff = micros(now - age);
            raise(
                sqlx::query_scalar(
                    "SELECT MAX(seq) FROM matric_event_log WHERE occurred_at_us < ?",
                )
                .bind(cutoff)
                .fetch_one(&self.pool)
                .await
                .map_err(storage("reading the log's age"))?,
            );
        }
        if let Some(max) = retention.max_events {
            raise(
                sqlx::query_scalar(
                    "SELECT seq FROM matric_event_log ORDER BY seq DESC LIMIT 1 OFFSET ?",
                )
                .bind(i64::try_from(max).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await
                .map_err(storage("reading the log's length"))?,
            );
        }
        if let Some(max) = retention.max_bytes {
            raise(
                sqlx::query_scalar(
                    "SELECT seq FROM (SELECT seq, SUM(size) OVER (ORDER BY seq DESC) AS kept
                       FROM matric_event_log) WHERE kept > ? ORDER BY seq DESC LIMIT 1",
                )
                .bind(i64::try_from(max).unwrap_or(i64::MAX))
                .fetch_optional(&self.pool)
                .await
                .map_err(storage("reading the log's size"))?,
            );
        }
        Ok(through)
    }
}

#[async_trait]
impl EventLog for SqliteLog {
    async fn topic_retentions(&self) -> Result<Vec<event_core::TopicRetention>, LogError> {
        self.sql_topic_retentions().await
    }

    async fn set_topic_retention(
        &self,
        record: &event_core::TopicRetention,
    ) -> Result<(), LogError> {
        self.sql_set_topic_retention(record).await
    }

    async fn prune_topic(
        &self,
        topic: &str,
        retention: &Retention,
        now: OffsetDateTime,
    ) -> Result<Option<u64>, LogError> {
        self.sql_prune_topic(topic, retention, now).await
    }

    fn name(&self) -> &str {
        "sqlite"
    }

    async fn append(&self, events: &[Arc<Event>]) -> Result<(), LogError> {
        if events.is_empty() {
            return Ok(());
        }
        let _gate = self.write.lock().await;
        let mut tx = self
            .writer
            .begin()
            .await
            .map_err(storage("beginning an append"))?;
        for chunk in events.chunks(INSERT_CHUNK) {
            let mut insert: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT OR IGNORE INTO matric_event_log (seq, event_id, occurred_at_us, topic, size, body) ",
            );
            insert.push_values(chunk, |mut row, e| {
                let body = e.envelope_json();
                row.push_bind(seq_to_row(e.seq()))
                    .push_bind(e.id().as_bytes().to_vec())
                    .push_bind(micros(e.occurred_at()))
                    .push_bind(e.topic())
                    .push_bind(body.len() as i64)
                    .push_bind(body.to_vec());
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(storage("appending events"))?;
        }
        tx.commit().await.map_err(storage("committing an append"))
    }

    async fn read_after(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, LogError> {
        let rows = sqlx::query(
            "SELECT seq, body FROM matric_event_log WHERE seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(seq_to_row(after_seq))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(storage("reading events"))?;
        rows.iter()
            .map(|row| decode(row.get(0), row.get::<&[u8], _>(1)))
            .collect()
    }

    async fn seq_at_time(&self, time: OffsetDateTime) -> Result<Option<u64>, LogError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT MIN(seq) FROM matric_event_log WHERE occurred_at_us >= ?")
                .bind(micros(time))
                .fetch_one(&self.pool)
                .await
                .map_err(storage("finding an event by time"))?;
        Ok(seq.map(crate::seq_of_row))
    }

    async fn seq_of(&self, id: Uuid) -> Result<Option<u64>, LogError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM matric_event_log WHERE event_id = ?")
                .bind(id.as_bytes().to_vec())
                .fetch_optional(&self.pool)
                .await
                .map_err(storage("finding an event by id"))?;
        Ok(seq.map(crate::seq_of_row))
    }

    async fn first_seq(&self) -> Result<u64, LogError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM matric_event_log")
            .fetch_one(&self.pool)
            .await
            .map_err(storage("reading the log's start"))?;
        Ok(seq.map_or(0, crate::seq_of_row))
    }

    async fn bounds(&self) -> Result<LogBounds, LogError> {
        let row = sqlx::query(
            "SELECT MIN(seq), MAX(seq), COUNT(*), COALESCE(SUM(size), 0) FROM matric_event_log",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(storage("reading the log's extent"))?;
        Ok(LogBounds {
            first_seq: row.get::<Option<i64>, _>(0).map_or(0, crate::seq_of_row),
            last_seq: row.get::<Option<i64>, _>(1).map_or(0, crate::seq_of_row),
            events: crate::seq_of_row(row.get(2)),
            bytes: crate::seq_of_row(row.get(3)),
        })
    }

    async fn topics(&self) -> Result<Vec<event_core::TopicStats>, LogError> {
        let rows = sqlx::query(
            "SELECT topic, COUNT(*), COALESCE(SUM(size), 0), MIN(seq), MAX(seq) \
             FROM matric_event_log GROUP BY topic ORDER BY topic",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(storage("reading the log's topics"))?;
        Ok(rows
            .iter()
            .map(|row| event_core::TopicStats {
                name: row.get(0),
                events: crate::seq_of_row(row.get(1)),
                bytes: crate::seq_of_row(row.get(2)),
                first_seq: crate::seq_of_row(row.get(3)),
                last_seq: crate::seq_of_row(row.get(4)),
            })
            .collect())
    }

    async fn prune(&self, retention: &Retention, now: OffsetDateTime) -> Result<u64, LogError> {
        let Some(through) = self.prune_through(retention, now).await? else {
            return Ok(0);
        };
        let mut removed = 0;
        loop {
            let _gate = self.write.lock().await;
            let done = sqlx::query(
                "DELETE FROM matric_event_log WHERE seq IN
                   (SELECT seq FROM matric_event_log WHERE seq <= ? ORDER BY seq LIMIT ?)",
            )
            .bind(through)
            .bind(PRUNE_CHUNK)
            .execute(&self.writer)
            .await
            .map_err(storage("pruning the log"))?
            .rows_affected();
            removed += done;
            if done < PRUNE_CHUNK as u64 {
                return Ok(removed);
            }
        }
    }
}
