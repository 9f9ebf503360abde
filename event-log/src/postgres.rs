//! The PostgreSQL log: one `INSERT … SELECT FROM UNNEST(…)` per batch.
//!
//! An append is one statement however many events it carries (arrays bound
//! as six parameters), so a batch costs one round trip and one commit.
//!
//! Appends have a connection of their own, opened by the first append. A
//! tokio socket is served by the I/O driver of the runtime it was opened
//! on, and a host runs the log writer on a thread of its own (event-server:
//! the `event-log` runtime) because its main runtime is saturated by the
//! fan-out; a connection opened there, at startup, would make every commit
//! wait for a busy main worker to poll that runtime's driver (at 10,000
//! events/s × 2,000 subscribers: 38–55 % of the offered events accepted,
//! against 100 % with this connection, BENCHMARKS.md). Reads, retention and
//! offsets share the other pool.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use event_core::{Event, EventLog, LogBounds, LogError, Retention};
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{decode, micros, seq_of_row, seq_to_row, storage};

const PRUNE_CHUNK: i64 = 10_000;

crate::topics::topic_methods!(PostgresLog, pool, pool);
crate::offsets::offset_store!(PostgresLog, pool, pool);

/// The PostgreSQL [`EventLog`] (and [`OffsetStore`](event_core::OffsetStore)).
#[derive(Debug, Clone)]
pub struct PostgresLog {
    pool: PgPool,
    /// One connection for appends, opened on the appending runtime.
    writer: PgPool,
}

impl PostgresLog {
    /// Connects to `url` and creates the table when missing.
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        let options = PgConnectOptions::from_str(url).map_err(storage("invalid PostgreSQL URL"))?;
        Self::connect_with(options).await
    }

    /// Like [`connect`](Self::connect), with the table in `schema` (created
    /// when missing): for tests, each in a schema of its own. `schema` is
    /// ASCII letters, digits and underscores.
    pub async fn connect_in_schema(url: &str, schema: &str) -> Result<Self, LogError> {
        if schema.is_empty()
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(LogError::Storage {
                message: format!("invalid schema name {schema:?}"),
                source: None,
            });
        }
        let options = PgConnectOptions::from_str(url).map_err(storage("invalid PostgreSQL URL"))?;
        let setup = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(storage("cannot connect to PostgreSQL"))?;
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&setup)
            .await
            .map_err(storage("cannot create the schema"))?;
        setup.close().await;
        Self::connect_with(options.options([("search_path", schema)])).await
    }

    async fn connect_with(options: PgConnectOptions) -> Result<Self, LogError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(storage("cannot connect to PostgreSQL"))?;
        // Lazy: its connection is opened (and reopened) inside an append.
        let writer = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS matric_event_log (
                seq BIGINT PRIMARY KEY,
                event_id UUID NOT NULL,
                occurred_at_us BIGINT NOT NULL,
                topic TEXT NOT NULL,
                size INTEGER NOT NULL,
                body BYTEA NOT NULL
            );
            CREATE INDEX IF NOT EXISTS matric_event_log_id ON matric_event_log (event_id);
            CREATE INDEX IF NOT EXISTS matric_event_log_time ON matric_event_log (occurred_at_us);",
        )
        .execute(&pool)
        .await
        .map_err(storage("cannot create the event log table"))?;
        sqlx::raw_sql(crate::topics::CREATE)
            .execute(&pool)
            .await
            .map_err(storage("cannot create the topic retention table"))?;
        sqlx::raw_sql(crate::offsets::CREATE)
            .execute(&pool)
            .await
            .map_err(storage("cannot create the event log table"))?;
        Ok(PostgresLog { pool, writer })
    }
}

#[async_trait]
impl EventLog for PostgresLog {
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
        "postgres"
    }

    async fn append(&self, events: &[Arc<Event>]) -> Result<(), LogError> {
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        let (mut seqs, mut ids, mut times, mut topics, mut sizes, mut bodies) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for e in events {
            let body = e.envelope_json();
            seqs.push(seq_to_row(e.seq()));
            ids.push(e.id());
            times.push(micros(e.occurred_at()));
            topics.push(e.topic());
            sizes.push(i32::try_from(body.len()).unwrap_or(i32::MAX));
            bodies.push(body.to_vec());
        }
        sqlx::query(
            "INSERT INTO matric_event_log (seq, event_id, occurred_at_us, topic, size, body)
             SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::int8[], $4::text[], $5::int4[], $6::bytea[])
             ON CONFLICT (seq) DO NOTHING",
        )
        .bind(seqs)
        .bind(ids)
        .bind(times)
        .bind(topics)
        .bind(sizes)
        .bind(bodies)
        .execute(&self.writer)
        .await
        .map_err(storage("appending events"))?;
        Ok(())
    }

    async fn read_after(&self, after_seq: u64, limit: usize) -> Result<Vec<Arc<Event>>, LogError> {
        let rows = sqlx::query(
            "SELECT seq, body FROM matric_event_log WHERE seq > $1 ORDER BY seq LIMIT $2",
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
            sqlx::query_scalar("SELECT MIN(seq) FROM matric_event_log WHERE occurred_at_us >= $1")
                .bind(micros(time))
                .fetch_one(&self.pool)
                .await
                .map_err(storage("finding an event by time"))?;
        Ok(seq.map(seq_of_row))
    }

    async fn seq_of(&self, id: Uuid) -> Result<Option<u64>, LogError> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM matric_event_log WHERE event_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(storage("finding an event by id"))?;
        Ok(seq.map(seq_of_row))
    }

    async fn first_seq(&self) -> Result<u64, LogError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM matric_event_log")
            .fetch_one(&self.pool)
            .await
            .map_err(storage("reading the log's start"))?;
        Ok(seq.map_or(0, seq_of_row))
    }

    async fn bounds(&self) -> Result<LogBounds, LogError> {
        let row = sqlx::query(
            "SELECT MIN(seq), MAX(seq), COUNT(*), COALESCE(SUM(size), 0)::int8 FROM matric_event_log",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(storage("reading the log's extent"))?;
        Ok(LogBounds {
            first_seq: row.get::<Option<i64>, _>(0).map_or(0, seq_of_row),
            last_seq: row.get::<Option<i64>, _>(1).map_or(0, seq_of_row),
            events: seq_of_row(row.get(2)),
            bytes: seq_of_row(row.get(3)),
        })
    }

    async fn topics(&self) -> Result<Vec<event_core::TopicStats>, LogError> {
        let rows = sqlx::query(
            "SELECT topic, COUNT(*), COALESCE(SUM(size), 0)::int8, MIN(seq), MAX(seq) \
             FROM matric_event_log GROUP BY topic ORDER BY topic",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(storage("reading the log's topics"))?;
        Ok(rows
            .iter()
            .map(|row| event_core::TopicStats {
                name: row.get(0),
                events: seq_of_row(row.get(1)),
                bytes: seq_of_row(row.get(2)),
                first_seq: seq_of_row(row.get(3)),
                last_seq: seq_of_row(row.get(4)),
            })
            .collect())
    }

    async fn prune(&self, retention: &Retention, now: OffsetDateTime) -> Result<u64, LogError> {
        let mut through: Option<i64> = None;
        if let Some(age) = retention.max_age {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT MAX(seq) FROM matric_event_log WHERE occurred_at_us < $1",
            )
            .bind(micros(now - age))
            .fetch_one(&self.pool)
            .await
            .map_err(storage("reading the log's age"))?;
            through = through.max(v);
        }
        if let Some(max) = retention.max_events {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM matric_event_log ORDER BY seq DESC LIMIT 1 OFFSET $1",
            )
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await
            .map_err(storage("reading the log's length"))?;
            through = through.max(v);
        }
        if let Some(max) = retention.max_bytes {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM (SELECT seq, SUM(size) OVER (ORDER BY seq DESC) AS kept
                   FROM matric_event_log) AS t WHERE kept > $1 ORDER BY seq DESC LIMIT 1",
            )
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_optional(&self.pool)
            .await
            .map_err(storage("reading the log's size"))?;
            through = through.max(v);
        }
        let Some(through) = through else {
            return Ok(0);
        };
        let mut removed = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM matric_event_log WHERE seq IN
                   (SELECT seq FROM matric_event_log WHERE seq <= $1 ORDER BY seq LIMIT $2)",
            )
            .bind(through)
            .bind(PRUNE_CHUNK)
            .execute(&self.pool)
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
