//! The SQLite store: one file, WAL journal, times as unix milliseconds.
//!
//! SQLite admits one writer at a time, so a claim (`UPDATE … RETURNING` over
//! the due rows) is atomic without row locks. The store writes through one
//! dedicated connection, queued behind an in-process gate: the sink, the
//! claims and the result recorder take turns the moment the previous write
//! commits instead of meeting `SQLITE_BUSY` and sleeping in the busy
//! handler, and the writer's page cache stays warm (another connection's
//! commit would invalidate it). Reads (the API) use a small pool of their
//! own and never wait for the writer (WAL).
//!
//! # Durability
//!
//! Commits use `synchronous = NORMAL`, which in WAL mode means a commit
//! appends to the write-ahead log without waiting for `fsync`; the log is
//! synced at checkpoints. A committed delivery or result survives the crash
//! or `SIGKILL` of the process (the log is in the operating system's page
//! cache and is replayed at the next open), which is the failure the queue
//! is built for; a power loss or kernel crash can lose the last commits
//! before a checkpoint (the database itself stays consistent). A host that
//! needs commits to survive power loss too can open its own pool with
//! `synchronous = FULL` and pass it to [`SqliteStore::from_pool`], at the
//! cost of an `fsync` per transaction.
//!
//! Only one process should run a worker
//! on a database: [`recover_in_flight`](super::WebhookStore::recover_in_flight)
//! frees *every* claim at start-up, taking any claimed row to be the
//! leftover of a dead process.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use event_core::EventKind;
use sqlx::query::Query;
use sqlx::sqlite::SqliteArguments;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use time::OffsetDateTime;
use uuid::Uuid;

use super::sql::{Arg, CLAIMED_COLUMNS, Engine};
use super::{candidate_pool, code_of, u32_of};
use crate::error::{Result, WebhookError};
use crate::model::{BatchClaim, ClaimRequest, NewDelivery, kinds_from_names, kinds_to_names};

mod record;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Rows per INSERT statement (SQLite caps bound parameters per statement).
const INSERT_CHUNK: usize = 500;

/// The SQLite implementation of [`WebhookStore`](super::WebhookStore).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Reads.
    pool: SqlitePool,
    /// Writes: one connection for a file (the same pool as `pool` for an
    /// in-memory database or a pool given to [`from_pool`](Self::from_pool)).
    writer: SqlitePool,
    /// Serializes this process's write transactions. SQLite admits one
    /// writer at a time; without the gate a second writer meets
    /// `SQLITE_BUSY` and sleeps in the busy handler (milliseconds at a time)
    /// instead of starting the moment the first one commits.
    write: Arc<tokio::sync::Mutex<()>>,
}

fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(v: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(v) * 1_000_000)
        .map_err(|e| WebhookError::Corrupt(format!("timestamp {v}: {e}")))
}

fn opt_from_ms(v: Option<i64>) -> Result<Option<OffsetDateTime>> {
    v.map(from_ms).transpose()
}

/// Owner-only access (0600) to a database file: created so when `create`
/// and missing, narrowed when it exists with more. A no-op off Unix.
fn restrict_permissions(path: &std::path::Path, create: bool) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let failed = |what: &'static str| {
            move |source: std::io::Error| WebhookError::DatabaseFile {
                path: path.display().to_string(),
                what,
                source,
            }
        };
        if create {
            // `create_new`: an existing file is never created over.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(failed("cannot create it")(e)),
            }
        }
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(failed("cannot restrict its permissions to 0600"))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("cannot read its permissions")(e)),
        }
    }
    #[cfg(not(unix))]
    let _ = (path, create);
    Ok(())
}

impl SqliteStore {
    /// Opens (creating when missing) the database at `url` and migrates it.
    pub async fn connect(url: &str) -> Result<Self> {
        let memory = url.contains(":memory:") || url.contains("mode=memory");
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        if memory {
            // An in-memory database exists per connection: keep exactly one.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            return Self::from_pool(pool).await;
        }
        // The file holds webhook secrets: owner-only before SQLite opens
        // it (created 0600 when missing, tightened when it exists); SQLite
        // gives its -wal and -shm files the database file's mode, and they
        // are tightened again below in case they predate this.
        let file = options.get_filename().to_path_buf();
        restrict_permissions(&file, true)?;
        // WAL + NORMAL: durable against a crash of the process (see the
        // module docs). Pages are read through a memory map rather than
        // copied by `pread`.
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .pragma("mmap_size", "268435456");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone().pragma("cache_size", "-32768"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        for suffix in ["-wal", "-shm", "-journal"] {
            let mut side = file.clone().into_os_string();
            side.push(suffix);
            restrict_permissions(std::path::Path::new(&side), false)?;
        }
        Ok(SqliteStore {
            pool,
            writer,
            write: Arc::default(),
        })
    }

    /// Wraps an existing pool (used for reads and writes) and migrates it.
    /// The caller owns the file and its permissions.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self> {
        MIGRATOR.run(&pool).await?;
        Ok(SqliteStore {
            writer: pool.clone(),
            pool,
            write: Arc::default(),
        })
    }

    /// The pool reads go through.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// `sql` with `args` bound in SQLite's encoding.
fn bound(sql: &'static str, args: &[Arg<'_>]) -> Query<'static, Sqlite, SqliteArguments> {
    args.iter().fold(sqlx::query(sql), |q, arg| match *arg {
        Arg::Id(v) => q.bind(v),
        Arg::Text(v) => q.bind(v),
        Arg::OptText(v) => q.bind(v),
        Arg::Small(v) => q.bind(i64::from(v)),
        Arg::Big(v) => q.bind(v),
        Arg::Flag(v) => q.bind(v),
        Arg::Time(v) => q.bind(ms(v)),
        Arg::OptTime(v) => q.bind(v.map(ms)),
        Arg::Events(v) => q.bind(serde_json::Value::from(kinds_to_names(v)).to_string()),
    })
}

#[async_trait]
impl Engine for SqliteStore {
    type Row = SqliteRow;
    type Record = record::SqliteRecord;
    const NAME: &'static str = "sqlite";
    const SHARED_QUEUE: bool = false;
    const ENQUEUE_CLAIMED: &'static str = "INSERT INTO deliveries (id, webhook_id, \
         event_id, event_type, body, status, attempts, next_attempt_at, claimed_until, \
         claim_token, created_at) VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $7, $8, $9)";
    // One worker process per SQLite database: any claim found at
    // start-up belongs to a process that is gone, whatever its lease
    // (so `$1`, the time, is not used).
    const RECOVER: &'static str = "UPDATE deliveries SET claimed_until = NULL, \
         claim_token = NULL WHERE claimed_until IS NOT NULL \
         AND status IN ('pending', 'failed')";

    async fn read(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<SqliteRow>> {
        Ok(bound(sql, args).fetch_all(&self.pool).await?)
    }

    async fn write(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<SqliteRow>> {
        let _write = self.write.lock().await;
        Ok(bound(sql, args).fetch_all(&self.writer).await?)
    }

    async fn execute(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64> {
        let _write = self.write.lock().await;
        Ok(bound(sql, args)
            .execute(&self.writer)
            .await?
            .rows_affected())
    }

    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()> {
        let _write = self.write.lock().await;
        let mut tx = self.writer.begin().await?;
        insert_rows(&mut tx, deliveries, claim).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn enqueue_derived(
        &self,
        deliveries: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<u64> {
        let _write = self.write.lock().await;
        let mut tx = self.writer.begin().await?;
        // Record each event once; rows of events recorded before drop out.
        let mut fresh = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for d in deliveries {
            if !seen.insert(d.event_id) {
                continue;
            }
            let new = sqlx::query(
                "INSERT INTO webhook_derived (event_id, derived_at) VALUES ($1, $2) \
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(d.event_id)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if new == 1 {
                fresh.insert(d.event_id);
            }
        }
        let rows: Vec<NewDelivery> = deliveries
            .iter()
            .filter(|d| fresh.contains(&d.event_id))
            .cloned()
            .collect();
        let queued = insert_rows(&mut tx, &rows, None).await?;
        tx.commit().await?;
        Ok(queued)
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<SqliteRow>> {
        let _write = self.write.lock().await;
        let now = ms(req.now);
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE deliveries SET claimed_until = ");
        // SQLite admits one writer at a time, so the `UPDATE … RETURNING`
        // is atomic without row locks. Candidates come from the oldest due
        // rows only (an index range scan), so a claim costs the same however
        // long the queue is; the per-webhook cap is applied among them.
        qb.push_bind(ms(req.lease_until))
            .push(", claim_token = ")
            .push_bind(req.token)
            .push(
                " WHERE id IN (SELECT id FROM (SELECT id, next_attempt_at, row_number() \
                 OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, id) AS rn FROM \
                 (SELECT d.id, d.webhook_id, d.next_attempt_at \
                 FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
                 WHERE d.status IN ('pending', 'failed') AND w.active = 1 \
                 AND d.next_attempt_at <= ",
            )
            .push_bind(now)
            .push(" AND (d.claimed_until IS NULL OR d.claimed_until < ")
            .push_bind(now)
            .push(")");
        if !req.exclude.is_empty() {
            qb.push(" AND d.webhook_id NOT IN (");
            let mut list = qb.separated(", ");
            for id in &req.exclude {
                list.push_bind(*id);
            }
            qb.push(")");
        }
        qb.push(" ORDER BY d.next_attempt_at LIMIT ")
            .push_bind(i64::from(candidate_pool(req)))
            .push(")) WHERE rn <= ")
            .push_bind(i64::from(req.per_webhook))
            .push(" ORDER BY next_attempt_at LIMIT ")
            .push_bind(i64::from(req.limit))
            .push(") RETURNING ")
            .push(CLAIMED_COLUMNS);
        Ok(qb.build().fetch_all(&self.writer).await?)
    }

    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()> {
        let _write = self.write.lock().await;
        let mut qb = QueryBuilder::<Sqlite>::new(
            "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL WHERE claim_token = ",
        );
        qb.push_bind(token).push(" AND id IN (");
        let mut list = qb.separated(", ");
        for id in ids {
            list.push_bind(*id);
        }
        qb.push(")");
        qb.build().execute(&self.writer).await?;
        Ok(())
    }

    async fn begin_record(&self) -> Result<record::SqliteRecord> {
        let gate = Arc::clone(&self.write).lock_owned().await;
        // IMMEDIATE: the transaction reads the webhooks' state and writes it
        // back, so it takes the database's write lock before the read (no
        // other connection can commit in between).
        let tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(record::SqliteRecord::new(tx, gate))
    }

    fn id(row: &SqliteRow, column: &str) -> Result<Uuid> {
        Ok(row.try_get(column)?)
    }

    fn text(row: &SqliteRow, column: &str) -> Result<String> {
        Ok(row.try_get(column)?)
    }

    fn opt_text(row: &SqliteRow, column: &str) -> Result<Option<String>> {
        Ok(row.try_get(column)?)
    }

    fn flag(row: &SqliteRow, column: &str) -> Result<bool> {
        Ok(row.try_get(column)?)
    }

    fn small(row: &SqliteRow, column: &str) -> Result<u32> {
        u32_of(row.try_get(column)?, column)
    }

    fn code(row: &SqliteRow, column: &str) -> Result<Option<u16>> {
        Ok(code_of(row.try_get(column)?))
    }

    fn big(row: &SqliteRow, column: &str) -> Result<i64> {
        Ok(row.try_get(column)?)
    }

    fn time(row: &SqliteRow, column: &str) -> Result<OffsetDateTime> {
        from_ms(row.try_get(column)?)
    }

    fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<OffsetDateTime>> {
        opt_from_ms(row.try_get(column)?)
    }

    fn events(row: &SqliteRow, column: &str) -> Result<Vec<EventKind>> {
        let events: String = row.try_get(column)?;
        let names: Vec<String> = serde_json::from_str(&events)
            .map_err(|e| WebhookError::Corrupt(format!("events: {e}")))?;
        kinds_from_names(&names)
    }
}

/// Inserts `deliveries` in `tx` (the first `claim.count` claimed), skipping
/// rows of a webhook deleted since they were built; how many it inserted.
async fn insert_rows(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    deliveries: &[NewDelivery],
    claim: Option<&BatchClaim>,
) -> Result<u64> {
    let claimed = claim.map_or(0, |c| c.count);
    let mut inserted = 0;
    for (n, chunk) in deliveries.chunks(INSERT_CHUNK).enumerate() {
        // Rows of a webhook deleted since the sink looked it up are
        // skipped: failing the whole batch on the foreign key would drop
        // every other webhook's rows with it.
        let mut qb = QueryBuilder::<Sqlite>::new(
            "WITH v(id, webhook_id, event_id, event_type, body, status, attempts, \
                 next_attempt_at, created_at, claimed_until, claim_token, trace) AS (",
        );
        let mut i = n * INSERT_CHUNK;
        qb.push_values(chunk, |mut b, d| {
            let claim = claim.filter(|_| i < claimed);
            i += 1;
            b.push_bind(d.id)
                .push_bind(d.webhook_id)
                .push_bind(d.event_id)
                .push_bind(d.event_type)
                .push_bind(String::from_utf8_lossy(&d.body).into_owned())
                .push_bind("pending")
                .push_bind(0_i64)
                .push_bind(d.next_attempt_at.map(ms))
                .push_bind(ms(d.created_at))
                .push_bind(claim.map(|c| ms(c.lease_until)))
                .push_bind(claim.map(|c| c.token))
                .push_bind(d.trace.as_deref());
        });
        qb.push(
            ") INSERT INTO deliveries (id, webhook_id, event_id, event_type, body, status, \
                 attempts, next_attempt_at, created_at, claimed_until, claim_token, trace) \
                 SELECT * FROM v WHERE v.webhook_id IN (SELECT id FROM webhooks)",
        );
        inserted += qb.build().execute(&mut **tx).await?.rows_affected();
    }
    Ok(inserted)
}
