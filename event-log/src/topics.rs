//! Per-topic retention ([`TopicRetention`]): table
//! `matric_topic_retention`, and pruning one topic's oldest events. The
//! statements are the same on both engines, so one macro implements the
//! [`EventLog`](event_core::EventLog) methods for each.

use std::time::Duration;

use event_core::{Retention, TopicRetention};

use crate::{seq_of_row, seq_to_row};

/// Creates the table (both engines accept this text).
pub(crate) const CREATE: &str = "CREATE TABLE IF NOT EXISTS matric_topic_retention (
    topic TEXT PRIMARY KEY,
    has_retention BOOLEAN NOT NULL,
    max_age_ms BIGINT,
    max_events BIGINT,
    max_bytes BIGINT,
    pruned_through BIGINT NOT NULL
)";

pub(crate) const SELECT_ALL: &str = "SELECT topic, has_retention, max_age_ms, max_events,
    max_bytes, pruned_through FROM matric_topic_retention ORDER BY topic";

/// Creates or replaces a record, keeping a higher stored watermark: the
/// pruner may have raised it since the caller read it.
pub(crate) const UPSERT: &str = "INSERT INTO matric_topic_retention
    (topic, has_retention, max_age_ms, max_events, max_bytes, pruned_through)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (topic) DO UPDATE SET has_retention = excluded.has_retention,
        max_age_ms = excluded.max_age_ms, max_events = excluded.max_events,
        max_bytes = excluded.max_bytes,
        pruned_through = CASE WHEN excluded.pruned_through > matric_topic_retention.pruned_through
            THEN excluded.pruned_through ELSE matric_topic_retention.pruned_through END";

/// The newest of the topic's events older than the cutoff.
pub(crate) const THROUGH_AGE: &str =
    "SELECT MAX(seq) FROM matric_event_log WHERE topic = $1 AND occurred_at_us < $2";

/// The newest of the topic's events beyond the count to keep.
pub(crate) const THROUGH_COUNT: &str =
    "SELECT seq FROM matric_event_log WHERE topic = $1 ORDER BY seq DESC LIMIT 1 OFFSET $2";

/// The newest of the topic's events beyond the bytes to keep.
pub(crate) const THROUGH_BYTES: &str = "SELECT seq FROM (SELECT seq,
    SUM(size) OVER (ORDER BY seq DESC) AS kept FROM matric_event_log WHERE topic = $1) AS t
    WHERE kept > $2 ORDER BY seq DESC LIMIT 1";

/// Raises a topic's stored watermark (never lowers it), before its events
/// are removed (see `EventLog::prune_topic`).
pub(crate) const RAISE_MARK: &str = "UPDATE matric_topic_retention SET pruned_through = $2
    WHERE topic = $1 AND pruned_through < $2";

/// Removes up to 10,000 of the topic's events at or below a sequence number
/// (a chunk at a time, so appends never wait long behind a prune).
pub(crate) const DELETE_CHUNK: &str = "DELETE FROM matric_event_log WHERE seq IN
    (SELECT seq FROM matric_event_log WHERE topic = $1 AND seq <= $2 ORDER BY seq LIMIT 10000)";

/// A row's columns, in [`SELECT_ALL`] order.
pub(crate) type Row = (String, bool, Option<i64>, Option<i64>, Option<i64>, i64);

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.map(|v| u64::try_from(v).unwrap_or(0))
}

fn to_row(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

pub(crate) fn record_of(row: Row) -> TopicRetention {
    let (topic, has, age_ms, events, bytes, through) = row;
    TopicRetention {
        topic,
        retention: has.then(|| Retention {
            max_age: to_u64(age_ms).map(Duration::from_millis),
            max_events: to_u64(events),
            max_bytes: to_u64(bytes),
        }),
        pruned_through: seq_of_row(through),
    }
}

/// The values [`UPSERT`] binds, in order.
pub(crate) fn row_of(record: &TopicRetention) -> Row {
    let r = record.retention.unwrap_or(Retention {
        max_age: None,
        max_events: None,
        max_bytes: None,
    });
    (
        record.topic.clone(),
        record.retention.is_some(),
        to_row(
            r.max_age
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        ),
        to_row(r.max_events),
        to_row(r.max_bytes),
        seq_to_row(record.pruned_through),
    )
}

/// The topic methods of [`EventLog`](event_core::EventLog), as inherent
/// methods (`#[async_trait]` cannot see into a macro) of a log type with a
/// `$read` pool for queries and a `$write` pool for changes; the type's
/// `impl EventLog` forwards to them.
macro_rules! topic_methods {
    ($ty:ty, $read:ident, $write:ident) => {
        impl $ty {
            async fn sql_topic_retentions(
                &self,
            ) -> Result<Vec<event_core::TopicRetention>, event_core::LogError> {
                let rows: Vec<$crate::topics::Row> = sqlx::query_as($crate::topics::SELECT_ALL)
                    .fetch_all(&self.$read)
                    .await
                    .map_err($crate::storage("reading topic retentions"))?;
                Ok(rows.into_iter().map($crate::topics::record_of).collect())
            }

            async fn sql_set_topic_retention(
                &self,
                record: &event_core::TopicRetention,
            ) -> Result<(), event_core::LogError> {
                let (topic, has, age, events, bytes, through) = $crate::topics::row_of(record);
                sqlx::query($crate::topics::UPSERT)
                    .bind(topic)
                    .bind(has)
                    .bind(age)
                    .bind(events)
                    .bind(bytes)
                    .bind(through)
                    .execute(&self.$write)
                    .await
                    .map_err($crate::storage("storing a topic retention"))?;
                Ok(())
            }

            async fn sql_prune_topic(
                &self,
                topic: &str,
                retention: &event_core::Retention,
                now: time::OffsetDateTime,
            ) -> Result<Option<u64>, event_core::LogError> {
                let mut through: Option<i64> = None;
                if let Some(age) = retention.max_age {
                    let found: Option<i64> = sqlx::query_scalar($crate::topics::THROUGH_AGE)
                        .bind(topic)
                        .bind($crate::micros(now - age))
                        .fetch_one(&self.$read)
                        .await
                        .map_err($crate::storage("reading a topic's age"))?;
                    through = through.max(found);
                }
                if let Some(max) = retention.max_events {
                    let found: Option<i64> = sqlx::query_scalar($crate::topics::THROUGH_COUNT)
                        .bind(topic)
                        .bind(i64::try_from(max).unwrap_or(i64::MAX))
                        .fetch_optional(&self.$read)
                        .await
                        .map_err($crate::storage("reading a topic's length"))?;
                    through = through.max(found);
                }
                if let Some(max) = retention.max_bytes {
                    let found: Option<i64> = sqlx::query_scalar($crate::topics::THROUGH_BYTES)
                        .bind(topic)
                        .bind(i64::try_from(max).unwrap_or(i64::MAX))
                        .fetch_optional(&self.$read)
                        .await
                        .map_err($crate::storage("reading a topic's size"))?;
                    through = through.max(found);
                }
                let Some(through) = through else {
                    return Ok(None);
                };
                // The mark first: a reader that read around the rows going
                // now sees it when it checks after its read.
                sqlx::query($crate::topics::RAISE_MARK)
                    .bind(topic)
                    .bind(through)
                    .execute(&self.$write)
                    .await
                    .map_err($crate::storage("raising a topic's watermark"))?;
                loop {
                    let done = sqlx::query($crate::topics::DELETE_CHUNK)
                        .bind(topic)
                        .bind(through)
                        .execute(&self.$write)
                        .await
                        .map_err($crate::storage("pruning a topic"))?;
                    if done.rows_affected() == 0 {
                        break;
                    }
                }
                Ok(Some($crate::seq_of_row(through)))
            }
        }
    };
}

pub(crate) use topic_methods;
