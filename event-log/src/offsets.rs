//! Named consumers' committed offsets ([`OffsetStore`]) in the log's
//! database: table `matric_consumer_offsets`, one row per consumer.
//!
//! The statements are the same on both engines (`$n` parameters, an
//! `ON CONFLICT` upsert), so one macro implements the trait for each.

use std::time::Duration;

use event_core::{AckMode, ConsumerRecord};
use time::OffsetDateTime;

use crate::{micros, seq_of_row, seq_to_row};

/// Creates the table (both engines accept this text).
pub(crate) const CREATE: &str = "CREATE TABLE IF NOT EXISTS matric_consumer_offsets (
    name TEXT PRIMARY KEY,
    shared BOOLEAN NOT NULL,
    ack_mode TEXT NOT NULL,
    ack_wait_ms BIGINT NOT NULL,
    committed BIGINT NOT NULL,
    updated_at_us BIGINT NOT NULL
)";

pub(crate) const SELECT_ONE: &str = "SELECT name, shared, ack_mode, ack_wait_ms, committed,
    updated_at_us FROM matric_consumer_offsets WHERE name = $1";

pub(crate) const SELECT_ALL: &str = "SELECT name, shared, ack_mode, ack_wait_ms, committed,
    updated_at_us FROM matric_consumer_offsets ORDER BY name";

pub(crate) const UPSERT: &str = "INSERT INTO matric_consumer_offsets
    (name, shared, ack_mode, ack_wait_ms, committed, updated_at_us)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (name) DO UPDATE SET shared = excluded.shared, ack_mode = excluded.ack_mode,
        ack_wait_ms = excluded.ack_wait_ms, committed = excluded.committed,
        updated_at_us = excluded.updated_at_us";

pub(crate) const DELETE: &str = "DELETE FROM matric_consumer_offsets WHERE name = $1";

/// A row's columns, in [`SELECT_ONE`] order.
pub(crate) type Row = (String, bool, String, i64, i64, i64);

pub(crate) fn record_of(row: Row) -> ConsumerRecord {
    let (name, shared, mode, ack_wait_ms, committed, updated_us) = row;
    ConsumerRecord {
        name,
        shared,
        mode: AckMode::parse(&mode).unwrap_or_default(),
        ack_wait: Duration::from_millis(u64::try_from(ack_wait_ms).unwrap_or(0)),
        committed: seq_of_row(committed),
        updated_at: OffsetDateTime::from_unix_timestamp_nanos(i128::from(updated_us) * 1000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
    }
}

/// The values [`UPSERT`] binds, in order.
pub(crate) fn row_of(record: &ConsumerRecord) -> Row {
    (
        record.name.clone(),
        record.shared,
        record.mode.as_str().to_owned(),
        i64::try_from(record.ack_wait.as_millis()).unwrap_or(i64::MAX),
        seq_to_row(record.committed),
        micros(record.updated_at),
    )
}

/// Implements [`OffsetStore`](event_core::OffsetStore) for a log type with
/// a `$read` pool for queries and a `$write` pool for changes.
macro_rules! offset_store {
    ($ty:ty, $read:ident, $write:ident) => {
        #[async_trait::async_trait]
        impl event_core::OffsetStore for $ty {
            async fn load(
                &self,
                name: &str,
            ) -> Result<Option<event_core::ConsumerRecord>, event_core::LogError> {
                let row: Option<$crate::offsets::Row> = sqlx::query_as($crate::offsets::SELECT_ONE)
                    .bind(name)
                    .fetch_optional(&self.$read)
                    .await
                    .map_err($crate::storage("reading a consumer's offset"))?;
                Ok(row.map($crate::offsets::record_of))
            }

            async fn save(
                &self,
                record: &event_core::ConsumerRecord,
            ) -> Result<(), event_core::LogError> {
                let (name, shared, mode, wait, committed, updated) =
                    $crate::offsets::row_of(record);
                sqlx::query($crate::offsets::UPSERT)
                    .bind(name)
                    .bind(shared)
                    .bind(mode)
                    .bind(wait)
                    .bind(committed)
                    .bind(updated)
                    .execute(&self.$write)
                    .await
                    .map_err($crate::storage("storing a consumer's offset"))?;
                Ok(())
            }

            async fn delete(&self, name: &str) -> Result<bool, event_core::LogError> {
                let done = sqlx::query($crate::offsets::DELETE)
                    .bind(name)
                    .execute(&self.$write)
                    .await
                    .map_err($crate::storage("deleting a consumer"))?;
                Ok(done.rows_affected() > 0)
            }

            async fn list(&self) -> Result<Vec<event_core::ConsumerRecord>, event_core::LogError> {
                let rows: Vec<$crate::offsets::Row> = sqlx::query_as($crate::offsets::SELECT_ALL)
                    .fetch_all(&self.$read)
                    .await
                    .map_err($crate::storage("listing consumers"))?;
                Ok(rows.into_iter().map($crate::offsets::record_of).collect())
            }
        }
    };
}

pub(crate) use offset_store;
