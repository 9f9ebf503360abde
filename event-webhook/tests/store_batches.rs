//! Recording many attempt results in one `complete_attempts` call (what the
//! worker's recorder does) has exactly the effect of recording them one by
//! one, in order: lost claims write nothing, failure streaks count across
//! the batch, a success in the batch resets them, the attempt that reaches
//! the dead limit (and only it) reports disabling. Rows queued already
//! claimed (`enqueue_claiming`) are left alone by the claim query and
//! recorded under their batch's claim. SQLite always, PostgreSQL when
//! `TEST_POSTGRES_URL` is set.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;

use event_webhook::model::{
    AttemptOutcome, AttemptRecord, BatchClaim, ClaimRequest, ClaimedDelivery, DeliveryStatus,
    NewDelivery, Webhook,
};
use event_webhook::store::WebhookStore;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

type Store = Arc<dyn WebhookStore>;

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap()
}

fn webhook(failure_count: u32) -> Webhook {
    let t = now();
    Webhook {
        id: Uuid::now_v7(),
        url: "https://a.example/hook".to_owned(),
        events: vec![],
        secret: "whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=".to_owned(),
        active: true,
        max_retries: 4,
        created_at: t,
        updated_at: t,
        last_triggered_at: None,
        failure_count,
        disabled_reason: None,
    }
}

fn delivery(webhook_id: Uuid, at: OffsetDateTime) -> NewDelivery {
    let event_id = Uuid::now_v7();
    NewDelivery {
        id: Uuid::now_v7(),
        webhook_id,
        event_id,
        event_type: "JobQueued",
        body: format!(r#"{{"id":"{event_id}","event":"JobQueued","data":{{}}}}"#).into(),
        created_at: at,
        next_attempt_at: Some(at),
        trace: None,
    }
}

fn claim(now: OffsetDateTime) -> ClaimRequest {
    ClaimRequest {
        now,
        limit: 100,
        per_webhook: 100,
        exclude: Vec::new(),
        lease_until: now + Duration::seconds(60),
        token: Uuid::new_v4(),
    }
}

fn record(d: &ClaimedDelivery, outcome: AttemptOutcome, at: OffsetDateTime) -> AttemptRecord {
    let ok = outcome == AttemptOutcome::Succeeded;
    AttemptRecord {
        delivery_id: d.id,
        webhook_id: d.webhook_id,
        claim_token: d.claim_token,
        attempt: d.attempts + 1,
        started_at: at,
        duration_ms: 5,
        status_code: Some(if ok { 200 } else { 500 }),
        error: (!ok).then(|| "http_500".to_owned()),
        outcome,
        disable_after_dead: 3,
    }
}

async fn status_of(store: &Store, d: &ClaimedDelivery) -> DeliveryStatus {
    store
        .get_delivery(d.webhook_id, d.id)
        .await
        .unwrap()
        .unwrap()
        .status
}

async fn batch_applies_in_order(store: Store) {
    // `a` starts one dead delivery into a streak, `b` two.
    let (a, b) = (webhook(1), webhook(2));
    store.create_webhook(&a).await.unwrap();
    store.create_webhook(&b).await.unwrap();
    let t0 = now();
    let rows: Vec<NewDelivery> = (0..5)
        .map(|_| delivery(a.id, t0))
        .chain((0..3).map(|_| delivery(b.id, t0)))
        .collect();
    store.enqueue(&rows).await.unwrap();
    let claimed = store.claim_due(&claim(t0)).await.unwrap();
    assert_eq!(claimed.len(), 8);
    let find = |id: Uuid| claimed.iter().find(|c| c.id == id).unwrap().clone();
    let a_rows: Vec<ClaimedDelivery> = rows[..5].iter().map(|r| find(r.id)).collect();
    let b_rows: Vec<ClaimedDelivery> = rows[5..].iter().map(|r| find(r.id)).collect();
    let at = |ms: i64| t0 + Duration::milliseconds(ms);
    let retry_at = t0 + Duration::seconds(60);
    let mut stale = record(&b_rows[2], AttemptOutcome::Succeeded, at(7));
    stale.claim_token = Uuid::new_v4();
    let batch = vec![
        record(&a_rows[0], AttemptOutcome::Succeeded, at(1)), // a: streak 1 → 0
        record(&b_rows[0], AttemptOutcome::Retry(retry_at), at(2)),
        record(&a_rows[1], AttemptOutcome::Dead, at(3)), // a: 1
        record(&a_rows[2], AttemptOutcome::Dead, at(4)), // a: 2
        record(&b_rows[1], AttemptOutcome::Succeeded, at(5)), // b: 2 → 0
        record(&a_rows[3], AttemptOutcome::Dead, at(6)), // a: 3 → disabled
        stale,                                           // lost claim
        record(&a_rows[4], AttemptOutcome::Retry(retry_at), at(8)),
    ];
    let effects = store.complete_attempts(&batch).await.unwrap();
    let lost: Vec<bool> = effects.iter().map(|e| e.lost_claim).collect();
    assert_eq!(
        lost,
        [false, false, false, false, false, false, true, false]
    );
    let disabled: Vec<bool> = effects.iter().map(|e| e.webhook_disabled).collect();
    assert_eq!(
        disabled,
        [false, false, false, false, false, true, false, false]
    );

    let a_now = store.get_webhook(a.id).await.unwrap().unwrap();
    assert!(!a_now.active);
    assert_eq!(a_now.failure_count, 3);
    assert!(a_now.disabled_reason.unwrap().contains('3'));
    assert_eq!(a_now.last_triggered_at, Some(at(8)));
    let b_now = store.get_webhook(b.id).await.unwrap().unwrap();
    assert!(b_now.active);
    assert_eq!(b_now.failure_count, 0);
    assert_eq!(
        b_now.last_triggered_at,
        Some(at(5)),
        "the stale record wrote nothing"
    );

    let expected = [
        (&a_rows[0], DeliveryStatus::Succeeded),
        (&a_rows[1], DeliveryStatus::Dead),
        (&a_rows[2], DeliveryStatus::Dead),
        (&a_rows[3], DeliveryStatus::Dead),
        (&a_rows[4], DeliveryStatus::Failed),
        (&b_rows[0], DeliveryStatus::Failed),
        (&b_rows[1], DeliveryStatus::Succeeded),
        (&b_rows[2], DeliveryStatus::Pending),
    ];
    for (row, status) in expected {
        assert_eq!(status_of(&store, row).await, status, "{}", row.id);
        let attempts = store.list_attempts(row.id).await.unwrap();
        let want = usize::from(status != DeliveryStatus::Pending);
        assert_eq!(attempts.len(), want, "{}", row.id);
    }
    let retried = store
        .get_delivery(a.id, a_rows[4].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(retried.next_attempt_at, Some(retry_at));
    assert_eq!(retried.attempts, 1);
    let done = store
        .get_delivery(b.id, b_rows[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.last_status_code, Some(200));
    assert!(done.delivered_at.is_some());
}

async fn same_delivery_twice_in_a_batch(store: Store) {
    let w = webhook(0);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    let d = delivery(w.id, t0);
    store.enqueue(std::slice::from_ref(&d)).await.unwrap();
    let first = store.claim_due(&claim(t0)).await.unwrap().remove(0);
    // The first claim's lease runs out and the row is claimed again; both
    // results reach one batch, the stale one first.
    let later = t0 + Duration::minutes(2);
    let second = store.claim_due(&claim(later)).await.unwrap().remove(0);
    assert_eq!(second.id, d.id);
    let batch = [
        record(&first, AttemptOutcome::Retry(later), t0),
        record(&second, AttemptOutcome::Succeeded, later),
    ];
    let effects = store.complete_attempts(&batch).await.unwrap();
    assert!(effects[0].lost_claim);
    assert!(!effects[1].lost_claim);
    assert_eq!(status_of(&store, &second).await, DeliveryStatus::Succeeded);
    assert_eq!(store.list_attempts(d.id).await.unwrap().len(), 1);
}

async fn enqueue_claiming_claims_the_first_rows(store: Store) {
    let w = webhook(0);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    let rows: Vec<NewDelivery> = (0..5).map(|_| delivery(w.id, t0)).collect();
    let pre = BatchClaim {
        count: 2,
        token: Uuid::new_v4(),
        lease_until: t0 + Duration::seconds(60),
    };
    store.enqueue_claiming(&rows, Some(&pre)).await.unwrap();
    // The claim query finds only the rows queued unclaimed…
    let mut found: Vec<Uuid> = store
        .claim_due(&claim(t0))
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    found.sort_unstable();
    assert_eq!(found, rows[2..].iter().map(|r| r.id).collect::<Vec<_>>());
    // …and the pre-claimed ones are recorded under their batch's claim.
    let pre_claimed: Vec<ClaimedDelivery> = rows[..2]
        .iter()
        .map(|r| ClaimedDelivery {
            id: r.id,
            webhook_id: r.webhook_id,
            event_id: r.event_id,
            event_type: r.event_type.to_owned(),
            body: String::from_utf8_lossy(&r.body).into_owned(),
            attempts: 0,
            created_at: r.created_at,
            claim_token: pre.token,
            trace: None,
        })
        .collect();
    let batch: Vec<AttemptRecord> = pre_claimed
        .iter()
        .map(|c| record(c, AttemptOutcome::Succeeded, t0))
        .collect();
    let effects = store.complete_attempts(&batch).await.unwrap();
    assert!(effects.iter().all(|e| !e.lost_claim));
    for c in &pre_claimed {
        assert_eq!(status_of(&store, c).await, DeliveryStatus::Succeeded);
    }
    // Without a claim, `enqueue_claiming` is `enqueue`.
    let more = [delivery(w.id, t0)];
    store.enqueue_claiming(&more, None).await.unwrap();
    let again = store.claim_due(&claim(t0)).await.unwrap();
    assert_eq!(again.iter().map(|c| c.id).collect::<Vec<_>>(), [more[0].id]);
}

async fn rows_of_a_deleted_webhook_are_skipped_not_fatal(store: Store) {
    let (gone, kept) = (webhook(0), webhook(0));
    store.create_webhook(&gone).await.unwrap();
    store.create_webhook(&kept).await.unwrap();
    let t0 = now();
    let rows = [delivery(gone.id, t0), delivery(kept.id, t0)];
    // Deleted after the sink looked its subscribers up.
    assert!(store.delete_webhook(gone.id).await.unwrap());
    store.enqueue(&rows).await.unwrap();
    assert!(
        store
            .get_delivery(gone.id, rows[0].id)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .get_delivery(kept.id, rows[1].id)
            .await
            .unwrap()
            .is_some()
    );
}

/// One batch over several webhooks, every kind of outcome: each webhook's
/// stored state is that of its results applied in order (the store writes
/// it once per webhook), a stale claim and a webhook deleted meanwhile
/// change nothing and fail nothing.
async fn batch_over_several_webhooks(store: Store) {
    // a: success then retry; b: a retry and the dead delivery that reaches
    // the limit; c: dead, success, dead; d: 410 Gone; e: only a stale claim;
    // f: paused by the API meanwhile, then reaches the limit; g: deleted
    // meanwhile.
    let ws = [0, 2, 1, 0, 2, 2, 0].map(webhook);
    for w in &ws {
        store.create_webhook(w).await.unwrap();
    }
    let [a, b, c, d, e, f, g] = &ws;
    let t0 = now();
    let per = [2, 2, 3, 1, 1, 1, 1];
    let rows: Vec<NewDelivery> = ws
        .iter()
        .zip(per)
        .flat_map(|(w, n)| (0..n).map(|_| delivery(w.id, t0)).collect::<Vec<_>>())
        .collect();
    store.enqueue(&rows).await.unwrap();
    let claimed = store.claim_due(&claim(t0)).await.unwrap();
    assert_eq!(claimed.len(), rows.len());
    let of = |w: &Webhook| -> Vec<ClaimedDelivery> {
        rows.iter()
            .filter(|r| r.webhook_id == w.id)
            .map(|r| claimed.iter().find(|c| c.id == r.id).unwrap().clone())
            .collect()
    };
    let (ra, rb, rc, rd, re, rf, rg) = (of(a), of(b), of(c), of(d), of(e), of(f), of(g));
    let mut paused = f.clone();
    paused.active = false;
    paused.disabled_reason = Some("paused".to_owned());
    assert!(store.update_webhook(&paused).await.unwrap());
    assert!(store.delete_webhook(g.id).await.unwrap());

    let at = |ms: i64| t0 + Duration::milliseconds(ms);
    let retry_at = t0 + Duration::seconds(60);
    let mut stale = record(&re[0], AttemptOutcome::Succeeded, at(9));
    stale.claim_token = Uuid::new_v4();
    let batch = vec![
        record(&rc[0], AttemptOutcome::Dead, at(1)), // c: 1 → 2
        record(&ra[0], AttemptOutcome::Succeeded, at(2)),
        record(&rb[0], AttemptOutcome::Retry(retry_at), at(3)),
        record(&rg[0], AttemptOutcome::Succeeded, at(4)), // g: deleted
        record(&rd[0], AttemptOutcome::Gone, at(5)),
        record(&rc[1], AttemptOutcome::Succeeded, at(6)), // c: → 0
        record(&rb[1], AttemptOutcome::Dead, at(7)),      // b: 2 → 3, disabled
        stale,                                            // e: lost claim
        record(&rf[0], AttemptOutcome::Dead, at(10)),     // f: 2 → 3, paused
        record(&ra[1], AttemptOutcome::Retry(retry_at), at(11)),
        record(&rc[2], AttemptOutcome::Dead, at(12)), // c: 0 → 1
    ];
    let effects = store.complete_attempts(&batch).await.unwrap();
    let lost: Vec<usize> = (0..batch.len())
        .filter(|&i| effects[i].lost_claim)
        .collect();
    assert_eq!(lost, [3, 7], "g's row is gone, e's claim is stale");
    assert!(effects[4].webhook_disabled, "410 Gone disables");
    assert!(effects[6].webhook_disabled, "b reached the limit");
    for i in [0, 1, 2, 3, 5, 7, 9, 10] {
        assert!(!effects[i].webhook_disabled, "record {i}");
    }

    let get = |w: &Webhook| {
        let (store, id) = (store.clone(), w.id);
        async move { store.get_webhook(id).await.unwrap().unwrap() }
    };
    let a_now = get(a).await;
    assert_eq!(
        (a_now.active, a_now.failure_count, a_now.last_triggered_at),
        (true, 0, Some(at(11)))
    );
    assert_eq!(a_now.updated_at, a.updated_at, "no state change");
    let b_now = get(b).await;
    assert_eq!((b_now.active, b_now.failure_count), (false, 3));
    assert!(b_now.disabled_reason.unwrap().contains('3'));
    assert_eq!(
        (b_now.last_triggered_at, b_now.updated_at),
        (Some(at(7)), at(7))
    );
    let c_now = get(c).await;
    assert_eq!(
        (c_now.active, c_now.failure_count, c_now.last_triggered_at),
        (true, 1, Some(at(12)))
    );
    assert_eq!(c_now.disabled_reason, None);
    let d_now = get(d).await;
    assert!(!d_now.active);
    assert!(d_now.disabled_reason.unwrap().contains("410"));
    assert_eq!(d_now.updated_at, at(5));
    let e_now = get(e).await;
    assert_eq!(
        (e_now.failure_count, e_now.last_triggered_at),
        (2, None),
        "the stale record wrote nothing"
    );
    let f_now = get(f).await;
    assert_eq!((f_now.active, f_now.failure_count), (false, 3));
    assert_eq!(
        f_now.disabled_reason.as_deref(),
        Some("paused"),
        "a webhook disabled already keeps its reason"
    );
    assert!(store.get_webhook(g.id).await.unwrap().is_none());

    for (row, status) in [
        (&ra[1], DeliveryStatus::Failed),
        (&rb[1], DeliveryStatus::Dead),
        (&rc[1], DeliveryStatus::Succeeded),
        (&rd[0], DeliveryStatus::Dead),
        (&re[0], DeliveryStatus::Pending),
    ] {
        assert_eq!(status_of(&store, row).await, status, "{}", row.id);
    }
    let attempts = store.list_attempts(rc[2].id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].started_at, at(12));
}

on_both_engines!(
    batch_applies_in_order,
    same_delivery_twice_in_a_batch,
    enqueue_claiming_claims_the_first_rows,
    rows_of_a_deleted_webhook_are_skipped_not_fatal,
    batch_over_several_webhooks,
);
