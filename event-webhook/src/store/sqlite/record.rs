//! Recording attempt results: a whole batch in a fixed number of set-based
//! statements (see [`WebhookPlan`]).

use std::collections::HashSet;

use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::ms;
use crate::error::Result;
use crate::model::{AttemptEffect, AttemptOutcome, AttemptRecord};
use crate::store::{GONE_REASON, WebhookPlan, dead_streak_reason, outcome_columns};

/// Attempt records per set-based statement (eight parameters each).
const RECORD_CHUNK: usize = 500;

/// Records a run of attempts (no delivery twice) inside a transaction with a
/// fixed number of statements: one `UPDATE … FROM` for the deliveries whose
/// claim still holds, one multi-row `INSERT` for their attempts, one update
/// for the webhooks, plus one statement per record of a webhook with a dead
/// or gone outcome (see [`WebhookPlan`]). A lost claim writes nothing.
pub(super) async fn record_run(
    tx: &mut sqlx::Transaction<'_, Sqlite>,
    records: &[AttemptRecord],
) -> Result<Vec<AttemptEffect>> {
    let mut held_ids = HashSet::new();
    for chunk in records.chunks(RECORD_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "WITH v(vid, vtoken, vstatus, vattempts, vnext, vcode, verror, vdelivered) AS (",
        );
        qb.push_values(chunk, |mut b, r| {
            let (status, next_at, delivered_at) = outcome_columns(r);
            b.push_bind(r.delivery_id)
                .push_bind(r.claim_token)
                .push_bind(status.as_str())
                .push_bind(i64::from(r.attempt))
                .push_bind(next_at.map(ms))
                .push_bind(r.status_code.map(i64::from))
                .push_bind(r.error.clone())
                .push_bind(delivered_at.map(ms));
        });
        qb.push(
            ") UPDATE deliveries SET status = v.vstatus, attempts = v.vattempts, \
             next_attempt_at = v.vnext, last_status_code = v.vcode, last_error = v.verror, \
             delivered_at = v.vdelivered, claimed_until = NULL, claim_token = NULL \
             FROM v WHERE deliveries.id = v.vid AND deliveries.claim_token = v.vtoken \
             RETURNING id",
        );
        for row in qb.build().fetch_all(&mut **tx).await? {
            held_ids.insert(row.try_get::<Uuid, _>("id")?);
        }
    }
    let held: Vec<&AttemptRecord> = records
        .iter()
        .filter(|r| held_ids.contains(&r.delivery_id))
        .collect();
    for chunk in held.chunks(RECORD_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, \
             error) ",
        );
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.delivery_id)
                .push_bind(i64::from(r.attempt))
                .push_bind(ms(r.started_at))
                .push_bind(r.duration_ms as i64)
                .push_bind(r.status_code.map(i64::from))
                .push_bind(r.error.clone());
        });
        qb.build().execute(&mut **tx).await?;
    }
    let plan = WebhookPlan::of(&held);
    for chunk in plan.simple.chunks(RECORD_CHUNK) {
        let mut qb = QueryBuilder::<Sqlite>::new("WITH v(vid, vat, vreset) AS (");
        qb.push_values(chunk, |mut b, (id, at, reset)| {
            b.push_bind(*id).push_bind(ms(*at)).push_bind(*reset);
        });
        qb.push(
            ") UPDATE webhooks SET last_triggered_at = v.vat, \
             failure_count = CASE WHEN v.vreset THEN 0 ELSE failure_count END \
             FROM v WHERE webhooks.id = v.vid",
        );
        qb.build().execute(&mut **tx).await?;
    }
    let mut disabled = HashSet::new();
    for r in &plan.replay {
        if webhook_effect(tx, r).await? {
            disabled.insert(r.delivery_id);
        }
    }
    Ok(records
        .iter()
        .map(|r| AttemptEffect {
            lost_claim: !held_ids.contains(&r.delivery_id),
            webhook_disabled: disabled.contains(&r.delivery_id),
        })
        .collect())
}

/// Applies one attempt's effect on its webhook; returns whether it disabled
/// the webhook.
async fn webhook_effect(tx: &mut sqlx::Transaction<'_, Sqlite>, r: &AttemptRecord) -> Result<bool> {
    let now = ms(r.started_at);
    let webhook_disabled = match r.outcome {
        AttemptOutcome::Succeeded => {
            sqlx::query(
                "UPDATE webhooks SET last_triggered_at = ?, failure_count = 0 WHERE id = ?",
            )
            .bind(now)
            .bind(r.webhook_id)
            .execute(&mut **tx)
            .await?;
            false
        }
        AttemptOutcome::Retry(_) | AttemptOutcome::FailedOnce => {
            sqlx::query("UPDATE webhooks SET last_triggered_at = ? WHERE id = ?")
                .bind(now)
                .bind(r.webhook_id)
                .execute(&mut **tx)
                .await?;
            false
        }
        AttemptOutcome::Gone => {
            sqlx::query(
                "UPDATE webhooks SET last_triggered_at = ?, active = 0, disabled_reason = ?, \
                 updated_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(GONE_REASON)
            .bind(now)
            .bind(r.webhook_id)
            .execute(&mut **tx)
            .await?;
            true
        }
        AttemptOutcome::Dead => {
            let limit = i64::from(r.disable_after_dead);
            let row = sqlx::query(
                "UPDATE webhooks SET last_triggered_at = ?1, failure_count = failure_count + 1, \
                 active = CASE WHEN failure_count + 1 >= ?2 THEN 0 ELSE active END, \
                 disabled_reason = CASE WHEN active = 1 AND failure_count + 1 >= ?2 \
                 THEN ?3 ELSE disabled_reason END, updated_at = ?1 \
                 WHERE id = ?4 RETURNING active, failure_count",
            )
            .bind(now)
            .bind(limit)
            .bind(dead_streak_reason(r.disable_after_dead))
            .bind(r.webhook_id)
            .fetch_optional(&mut **tx)
            .await?;
            match row {
                Some(row) => {
                    let active: bool = row.try_get("active")?;
                    let count: i64 = row.try_get("failure_count")?;
                    !active && count == limit
                }
                None => false,
            }
        }
    };
    Ok(webhook_disabled)
}
