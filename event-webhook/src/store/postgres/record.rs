//! Recording attempt results: a whole batch in a fixed number of set-based
//! statements (see [`WebhookPlan`]).

use std::collections::HashSet;

use sqlx::{Postgres, Row};
use uuid::Uuid;

use super::i32_of;
use crate::error::Result;
use crate::model::{AttemptEffect, AttemptOutcome, AttemptRecord};
use crate::store::{GONE_REASON, WebhookPlan, dead_streak_reason, outcome_columns};

/// Records a run of attempts (no delivery twice) inside a transaction with a
/// fixed number of statements whatever its length: one `UPDATE … FROM
/// UNNEST` for the deliveries whose claim still holds, one `INSERT … SELECT
/// FROM UNNEST` for their attempts, one update for the webhooks (locked
/// beforehand, in id order, by the caller), plus one statement per record of
/// a webhook with a dead or gone outcome (see [`WebhookPlan`]). A lost claim
/// writes nothing.
pub(super) async fn record_run(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    records: &[AttemptRecord],
) -> Result<Vec<AttemptEffect>> {
    let n = records.len();
    let (mut ids, mut tokens, mut statuses, mut attempts) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut next_ats, mut codes, mut errors, mut delivered) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for r in records {
        let (status, next_at, delivered_at) = outcome_columns(r);
        ids.push(r.delivery_id);
        tokens.push(r.claim_token);
        statuses.push(status.as_str());
        attempts.push(i32_of(r.attempt));
        next_ats.push(next_at);
        codes.push(r.status_code.map(i32::from));
        errors.push(r.error.clone());
        delivered.push(delivered_at);
    }
    let held_ids: HashSet<Uuid> = sqlx::query_scalar(
        "UPDATE deliveries d SET status = v.status, attempts = v.attempts, \
         next_attempt_at = v.next_at, last_status_code = v.code, last_error = v.error, \
         delivered_at = v.delivered, claimed_until = NULL, claim_token = NULL \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::timestamptz[], \
           $6::int4[], $7::text[], $8::timestamptz[]) \
           AS v(id, token, status, attempts, next_at, code, error, delivered) \
         WHERE d.id = v.id AND d.claim_token = v.token RETURNING d.id",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&next_ats)
    .bind(&codes)
    .bind(&errors)
    .bind(&delivered)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    let held: Vec<&AttemptRecord> = records
        .iter()
        .filter(|r| held_ids.contains(&r.delivery_id))
        .collect();
    if !held.is_empty() {
        sqlx::query(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status_code, \
             error) SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::timestamptz[], \
             $4::int8[], $5::int4[], $6::text[])",
        )
        .bind(held.iter().map(|r| r.delivery_id).collect::<Vec<_>>())
        .bind(held.iter().map(|r| i32_of(r.attempt)).collect::<Vec<_>>())
        .bind(held.iter().map(|r| r.started_at).collect::<Vec<_>>())
        .bind(
            held.iter()
                .map(|r| r.duration_ms as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            held.iter()
                .map(|r| r.status_code.map(i32::from))
                .collect::<Vec<_>>(),
        )
        .bind(held.iter().map(|r| r.error.clone()).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    // The webhooks were locked at the start of the transaction (see
    // `complete_attempts`).
    let plan = WebhookPlan::of(&held);
    if !plan.simple.is_empty() {
        sqlx::query(
            "UPDATE webhooks w SET last_triggered_at = v.at, \
             failure_count = CASE WHEN v.reset THEN 0 ELSE w.failure_count END \
             FROM UNNEST($1::uuid[], $2::timestamptz[], $3::bool[]) AS v(id, at, reset) \
             WHERE w.id = v.id",
        )
        .bind(plan.simple.iter().map(|s| s.0).collect::<Vec<_>>())
        .bind(plan.simple.iter().map(|s| s.1).collect::<Vec<_>>())
        .bind(plan.simple.iter().map(|s| s.2).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
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
async fn webhook_effect(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    r: &AttemptRecord,
) -> Result<bool> {
    let now = r.started_at;
    let webhook_disabled = match r.outcome {
        AttemptOutcome::Succeeded => {
            sqlx::query(
                "UPDATE webhooks SET last_triggered_at = $1, failure_count = 0 WHERE id = $2",
            )
            .bind(now)
            .bind(r.webhook_id)
            .execute(&mut **tx)
            .await?;
            false
        }
        AttemptOutcome::Retry(_) | AttemptOutcome::FailedOnce => {
            sqlx::query("UPDATE webhooks SET last_triggered_at = $1 WHERE id = $2")
                .bind(now)
                .bind(r.webhook_id)
                .execute(&mut **tx)
                .await?;
            false
        }
        AttemptOutcome::Gone => {
            sqlx::query(
                "UPDATE webhooks SET last_triggered_at = $1, active = FALSE, \
                 disabled_reason = $2, updated_at = $1 WHERE id = $3",
            )
            .bind(now)
            .bind(GONE_REASON)
            .bind(r.webhook_id)
            .execute(&mut **tx)
            .await?;
            true
        }
        AttemptOutcome::Dead => {
            let limit = i32_of(r.disable_after_dead);
            let row = sqlx::query(
                "UPDATE webhooks SET last_triggered_at = $1, failure_count = failure_count + 1, \
                 active = CASE WHEN failure_count + 1 >= $2 THEN FALSE ELSE active END, \
                 disabled_reason = CASE WHEN active AND failure_count + 1 >= $2 \
                 THEN $3 ELSE disabled_reason END, updated_at = $1 \
                 WHERE id = $4 RETURNING active, failure_count",
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
                    let count: i32 = row.try_get("failure_count")?;
                    !active && count == limit
                }
                None => false,
            }
        }
    };
    Ok(webhook_disabled)
}
