//! What the two SQL engines share: every [`WebhookStore`] step is written
//! once here, over an [`Engine`] that runs statements and reads columns in
//! its own encoding (SQLite: times as unix milliseconds, events as JSON
//! text; PostgreSQL: `TIMESTAMPTZ`, `TEXT[]`, `INTEGER`).
//!
//! Statements use numbered parameters (`$1`), which both engines accept
//! (SQLite binds `$N` by position), so most SQL is written once too. The
//! few statements that differ in text are constants of each [`Engine`];
//! the steps that differ in shape (batching with a `VALUES` list or with
//! `UNNEST` arrays, claiming with or without row locks) are the engine's
//! own methods.

use async_trait::async_trait;
use event_core::EventKind;
use time::OffsetDateTime;
use uuid::Uuid;

use super::record::{RecordSteps, WebhookState, record_batch};
use super::{WebhookStore, status_of};
use crate::error::Result;
use crate::model::{
    Attempt, AttemptEffect, AttemptRecord, BatchClaim, ClaimRequest, ClaimedDelivery, Delivery,
    DeliveryStatus, NewDelivery, Webhook,
};

/// A statement parameter, which the engine encodes its own way.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// A UUID.
    Id(Uuid),
    /// Text.
    Text(&'a str),
    /// Text or `NULL`.
    OptText(Option<&'a str>),
    /// An `INTEGER` column's value.
    Small(u32),
    /// A 64-bit integer (`LIMIT`s, `BIGINT` columns).
    Big(i64),
    /// A boolean.
    Flag(bool),
    /// A point in time.
    Time(OffsetDateTime),
    /// A point in time or `NULL`.
    OptTime(Option<OffsetDateTime>),
    /// A webhook's event kinds.
    Events(&'a [EventKind]),
}

/// One SQL engine under the shared [`WebhookStore`] implementation.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// A result row.
    type Row: Send + Sync;
    /// A transaction recording attempt results.
    type Record: RecordSteps;
    /// The engine's name, for logs.
    const NAME: &'static str;
    /// Whether several processes may run workers on one database.
    const SHARED_QUEUE: bool;
    /// Inserts one delivery already claimed: `$1` id, `$2` webhook, `$3`
    /// event, `$4` type, `$5` body, `$6` next attempt, `$7` lease, `$8`
    /// token, `$9` created.
    const ENQUEUE_CLAIMED: &'static str;
    /// Frees the claims of dead processes at start-up; `$1` is now.
    const RECOVER: &'static str;

    /// Runs a reading statement.
    async fn read(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Self::Row>>;
    /// Runs a writing statement that returns rows.
    async fn write(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<Vec<Self::Row>>;
    /// Runs a writing statement; returns the rows it affected.
    async fn execute(&self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64>;

    /// See [`WebhookStore::enqueue_claiming`].
    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()>;
    /// See [`WebhookStore::enqueue_derived`].
    async fn enqueue_derived(&self, deliveries: &[NewDelivery], now: OffsetDateTime)
    -> Result<u64>;
    /// Claims due rows (see [`WebhookStore::claim_due`]); returns the
    /// columns of [`CLAIMED_COLUMNS`].
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<Self::Row>>;
    /// See [`WebhookStore::release`].
    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()>;
    /// Begins the transaction a batch of results is recorded in.
    async fn begin_record(&self) -> Result<Self::Record>;

    /// A UUID column.
    fn id(row: &Self::Row, column: &str) -> Result<Uuid>;
    /// A text column.
    fn text(row: &Self::Row, column: &str) -> Result<String>;
    /// A nullable text column.
    fn opt_text(row: &Self::Row, column: &str) -> Result<Option<String>>;
    /// A boolean column.
    fn flag(row: &Self::Row, column: &str) -> Result<bool>;
    /// An `INTEGER` column (never negative).
    fn small(row: &Self::Row, column: &str) -> Result<u32>;
    /// A nullable `INTEGER` column holding an HTTP status.
    fn code(row: &Self::Row, column: &str) -> Result<Option<u16>>;
    /// A 64-bit integer column.
    fn big(row: &Self::Row, column: &str) -> Result<i64>;
    /// A time column.
    fn time(row: &Self::Row, column: &str) -> Result<OffsetDateTime>;
    /// A nullable time column.
    fn opt_time(row: &Self::Row, column: &str) -> Result<Option<OffsetDateTime>>;
    /// The `events` column.
    fn events(row: &Self::Row, column: &str) -> Result<Vec<EventKind>>;
}

/// The columns [`webhook_of`] reads, as a literal for `concat!`.
macro_rules! webhook_columns {
    () => {
        "id, url, events, secret, active, max_retries, created_at, updated_at, \
         last_triggered_at, failure_count, disabled_reason"
    };
}

/// The columns [`delivery_of`] reads, as a literal for `concat!`.
macro_rules! delivery_columns {
    () => {
        "id, webhook_id, event_id, event_type, status, attempts, next_attempt_at, \
         last_status_code, last_error, created_at, delivered_at"
    };
}

/// The webhook columns [`state_of`] reads.
pub const STATE_COLUMNS: &str =
    "id, active, failure_count, disabled_reason, last_triggered_at, updated_at";

/// The columns an engine's [`Engine::claim`] returns (`body` as text).
pub const CLAIMED_COLUMNS: &str =
    "id, webhook_id, event_id, event_type, body, attempts, created_at, trace";

fn webhook_of<E: Engine>(row: &E::Row) -> Result<Webhook> {
    Ok(Webhook {
        id: E::id(row, "id")?,
        url: E::text(row, "url")?,
        events: E::events(row, "events")?,
        secret: E::text(row, "secret")?,
        active: E::flag(row, "active")?,
        max_retries: E::small(row, "max_retries")?,
        created_at: E::time(row, "created_at")?,
        updated_at: E::time(row, "updated_at")?,
        last_triggered_at: E::opt_time(row, "last_triggered_at")?,
        failure_count: E::small(row, "failure_count")?,
        disabled_reason: E::opt_text(row, "disabled_reason")?,
    })
}

fn delivery_of<E: Engine>(row: &E::Row) -> Result<Delivery> {
    let status = status_of(&E::text(row, "status")?)?;
    Ok(Delivery {
        id: E::id(row, "id")?,
        webhook_id: E::id(row, "webhook_id")?,
        event_id: E::id(row, "event_id")?,
        event_type: E::text(row, "event_type")?,
        status,
        attempts: E::small(row, "attempts")?,
        next_attempt_at: E::opt_time(row, "next_attempt_at")?,
        last_status_code: E::code(row, "last_status_code")?,
        last_error: E::opt_text(row, "last_error")?,
        created_at: E::time(row, "created_at")?,
        delivered_at: E::opt_time(row, "delivered_at")?,
        success: status == DeliveryStatus::Succeeded,
    })
}

fn claimed_of<E: Engine>(row: &E::Row, token: Uuid) -> Result<ClaimedDelivery> {
    Ok(ClaimedDelivery {
        id: E::id(row, "id")?,
        webhook_id: E::id(row, "webhook_id")?,
        event_id: E::id(row, "event_id")?,
        event_type: E::text(row, "event_type")?,
        body: E::text(row, "body")?,
        attempts: E::small(row, "attempts")?,
        created_at: E::time(row, "created_at")?,
        claim_token: token,
        trace: E::opt_text(row, "trace")?,
    })
}

/// A webhook's state as [`RecordSteps::webhook_states`] reads it (the
/// columns of [`STATE_COLUMNS`]).
pub fn state_of<E: Engine>(row: &E::Row) -> Result<WebhookState> {
    Ok(WebhookState {
        id: E::id(row, "id")?,
        active: E::flag(row, "active")?,
        failure_count: E::small(row, "failure_count")?,
        disabled_reason: E::opt_text(row, "disabled_reason")?,
        last_triggered_at: E::opt_time(row, "last_triggered_at")?,
        updated_at: E::time(row, "updated_at")?,
    })
}

fn attempt_of<E: Engine>(row: &E::Row) -> Result<Attempt> {
    Ok(Attempt {
        attempt: E::small(row, "attempt")?,
        started_at: E::time(row, "started_at")?,
        duration_ms: E::big(row, "duration_ms")?.max(0) as u64,
        status_code: E::code(row, "status_code")?,
        error: E::opt_text(row, "error")?,
    })
}

#[async_trait]
impl<E: Engine> WebhookStore for E {
    fn engine(&self) -> &'static str {
        E::NAME
    }

    fn shared_queue(&self) -> bool {
        E::SHARED_QUEUE
    }

    async fn create_webhook(&self, w: &Webhook) -> Result<()> {
        self.execute(
            "INSERT INTO webhooks (id, url, events, secret, active, max_retries, created_at, \
             updated_at, last_triggered_at, failure_count, disabled_reason) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                Arg::Id(w.id),
                Arg::Text(&w.url),
                Arg::Events(&w.events),
                Arg::Text(&w.secret),
                Arg::Flag(w.active),
                Arg::Small(w.max_retries),
                Arg::Time(w.created_at),
                Arg::Time(w.updated_at),
                Arg::OptTime(w.last_triggered_at),
                Arg::Small(w.failure_count),
                Arg::OptText(w.disabled_reason.as_deref()),
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_webhook(&self, id: Uuid) -> Result<Option<Webhook>> {
        let sql = concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhooks WHERE id = $1"
        );
        let rows = self.read(sql, &[Arg::Id(id)]).await?;
        rows.first().map(webhook_of::<E>).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<Webhook>> {
        let sql = concat!(
            "SELECT ",
            webhook_columns!(),
            " FROM webhooks ORDER BY created_at, id"
        );
        self.read(sql, &[])
            .await?
            .iter()
            .map(webhook_of::<E>)
            .collect()
    }

    async fn update_webhook(&self, w: &Webhook) -> Result<bool> {
        let done = self
            .execute(
                "UPDATE webhooks SET url = $1, events = $2, secret = $3, active = $4, \
                 max_retries = $5, updated_at = $6, last_triggered_at = $7, \
                 failure_count = $8, disabled_reason = $9 WHERE id = $10",
                &[
                    Arg::Text(&w.url),
                    Arg::Events(&w.events),
                    Arg::Text(&w.secret),
                    Arg::Flag(w.active),
                    Arg::Small(w.max_retries),
                    Arg::Time(w.updated_at),
                    Arg::OptTime(w.last_triggered_at),
                    Arg::Small(w.failure_count),
                    Arg::OptText(w.disabled_reason.as_deref()),
                    Arg::Id(w.id),
                ],
            )
            .await?;
        Ok(done == 1)
    }

    async fn delete_webhook(&self, id: Uuid) -> Result<bool> {
        let done = self
            .execute("DELETE FROM webhooks WHERE id = $1", &[Arg::Id(id)])
            .await?;
        Ok(done == 1)
    }

    async fn enqueue_claiming(
        &self,
        deliveries: &[NewDelivery],
        claim: Option<&BatchClaim>,
    ) -> Result<()> {
        if deliveries.is_empty() {
            return Ok(());
        }
        Engine::enqueue_claiming(self, deliveries, claim).await
    }

    async fn enqueue_claimed(
        &self,
        d: &NewDelivery,
        token: Uuid,
        lease_until: OffsetDateTime,
    ) -> Result<()> {
        let body = String::from_utf8_lossy(&d.body);
        self.execute(
            E::ENQUEUE_CLAIMED,
            &[
                Arg::Id(d.id),
                Arg::Id(d.webhook_id),
                Arg::Id(d.event_id),
                Arg::Text(d.event_type),
                Arg::Text(&body),
                Arg::OptTime(d.next_attempt_at),
                Arg::Time(lease_until),
                Arg::Id(token),
                Arg::Time(d.created_at),
            ],
        )
        .await?;
        Ok(())
    }

    async fn get_delivery(&self, webhook_id: Uuid, id: Uuid) -> Result<Option<Delivery>> {
        let sql = concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries WHERE id = $1 AND webhook_id = $2"
        );
        let rows = self.read(sql, &[Arg::Id(id), Arg::Id(webhook_id)]).await?;
        rows.first().map(delivery_of::<E>).transpose()
    }

    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        status: Option<DeliveryStatus>,
        limit: u32,
    ) -> Result<Vec<Delivery>> {
        // `CAST`: PostgreSQL must know the parameter's type when it is NULL.
        let sql = concat!(
            "SELECT ",
            delivery_columns!(),
            " FROM deliveries WHERE webhook_id = $1 \
             AND (CAST($2 AS TEXT) IS NULL OR status = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        );
        let args = [
            Arg::Id(webhook_id),
            Arg::OptText(status.map(DeliveryStatus::as_str)),
            Arg::Big(i64::from(limit)),
        ];
        self.read(sql, &args)
            .await?
            .iter()
            .map(delivery_of::<E>)
            .collect()
    }

    async fn list_attempts(&self, delivery_id: Uuid) -> Result<Vec<Attempt>> {
        let sql = "SELECT attempt, started_at, duration_ms, status_code, error FROM attempts \
                   WHERE delivery_id = $1 ORDER BY attempt, id";
        self.read(sql, &[Arg::Id(delivery_id)])
            .await?
            .iter()
            .map(attempt_of::<E>)
            .collect()
    }

    async fn redeliver(
        &self,
        webhook_id: Uuid,
        id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<Delivery>> {
        let sql = concat!(
            "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, \
             claimed_until = NULL, claim_token = NULL, delivered_at = NULL \
             WHERE id = $2 AND webhook_id = $3 RETURNING ",
            delivery_columns!()
        );
        let args = [Arg::Time(now), Arg::Id(id), Arg::Id(webhook_id)];
        let rows = self.write(sql, &args).await?;
        rows.first().map(delivery_of::<E>).transpose()
    }

    async fn claim_due(&self, req: &ClaimRequest) -> Result<Vec<ClaimedDelivery>> {
        self.claim(req)
            .await?
            .iter()
            .map(|r| claimed_of::<E>(r, req.token))
            .collect()
    }

    async fn release(&self, ids: &[Uuid], token: Uuid) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        Engine::release(self, ids, token).await
    }

    async fn complete_attempts(&self, records: &[AttemptRecord]) -> Result<Vec<AttemptEffect>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        record_batch(self.begin_record().await?, records).await
    }

    async fn enqueue_derived(
        &self,
        deliveries: &[NewDelivery],
        now: OffsetDateTime,
    ) -> Result<u64> {
        if deliveries.is_empty() {
            return Ok(0);
        }
        Engine::enqueue_derived(self, deliveries, now).await
    }

    async fn webhooks_fingerprint(&self) -> Result<Option<super::WebhooksFingerprint>> {
        let rows = self
            .read(
                "SELECT COUNT(*) AS n, MAX(updated_at) AS at FROM webhooks",
                &[],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        Ok(Some(super::WebhooksFingerprint {
            count: E::big(row, "n")?.max(0) as u64,
            updated_at: E::opt_time(row, "at")?,
        }))
    }

    async fn prune_derived(&self, before: OffsetDateTime) -> Result<u64> {
        let sql = "DELETE FROM webhook_derived WHERE derived_at < $1";
        self.execute(sql, &[Arg::Time(before)]).await
    }

    async fn recover_in_flight(&self, now: OffsetDateTime) -> Result<u64> {
        self.execute(E::RECOVER, &[Arg::Time(now)]).await
    }

    async fn prune_succeeded(&self, before: OffsetDateTime) -> Result<u64> {
        let sql = "DELETE FROM deliveries WHERE status = 'succeeded' AND delivered_at < $1";
        self.execute(sql, &[Arg::Time(before)]).await
    }

    async fn log_cursor(&self) -> Result<Option<u64>> {
        let rows = self
            .read("SELECT seq FROM webhook_log_cursor WHERE id = 1", &[])
            .await?;
        rows.first()
            .map(|row| E::big(row, "seq").map(|v| v.max(0) as u64))
            .transpose()
    }

    async fn set_log_cursor(&self, seq: u64) -> Result<()> {
        let sql = "INSERT INTO webhook_log_cursor (id, seq) VALUES (1, $1) \
                   ON CONFLICT (id) DO UPDATE SET seq = excluded.seq \
                   WHERE webhook_log_cursor.seq < excluded.seq";
        self.execute(sql, &[Arg::Big(i64::try_from(seq).unwrap_or(i64::MAX))])
            .await
            .map(|_| ())
    }

    async fn count_webhooks(&self) -> Result<u64> {
        let rows = self.read("SELECT COUNT(*) AS n FROM webhooks", &[]).await?;
        match rows.first() {
            Some(row) => Ok(E::big(row, "n")?.max(0) as u64),
            None => Ok(0),
        }
    }

    async fn queue_depth(&self) -> Result<u64> {
        let sql = "SELECT COUNT(*) AS n FROM deliveries WHERE status IN ('pending', 'failed') \
                   AND next_attempt_at IS NOT NULL";
        let rows = self.read(sql, &[]).await?;
        match rows.first() {
            Some(row) => Ok(E::big(row, "n")?.max(0) as u64),
            None => Ok(0),
        }
    }

    async fn stored_secrets(&self) -> Result<Vec<(Uuid, String)>> {
        let sql = "SELECT id, secret FROM webhooks ORDER BY created_at, id";
        self.read(sql, &[])
            .await?
            .iter()
            .map(|r| Ok((E::id(r, "id")?, E::text(r, "secret")?)))
            .collect()
    }

    async fn replace_stored_secret(&self, id: Uuid, expected: &str, new: &str) -> Result<bool> {
        let sql = "UPDATE webhooks SET secret = $1 WHERE id = $2 AND secret = $3";
        let args = [Arg::Text(new), Arg::Id(id), Arg::Text(expected)];
        Ok(self.execute(sql, &args).await? == 1)
    }
}
