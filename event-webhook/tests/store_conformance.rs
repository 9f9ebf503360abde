//! One conformance suite for every `WebhookStore`: SQLite always,
//! PostgreSQL when `TEST_POSTGRES_URL` is set (each test in its own schema).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;

use event_core::EventKind;
use event_webhook::model::{
    AttemptOutcome, AttemptRecord, ClaimRequest, DeliveryStatus, NewDelivery, Webhook,
};
use event_webhook::store::WebhookStore;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

type Store = Arc<dyn WebhookStore>;

/// Whole milliseconds: both engines keep at least that precision.
fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap()
}

fn webhook(url: &str, events: Vec<EventKind>) -> Webhook {
    let t = now();
    Webhook {
        id: Uuid::now_v7(),
        url: url.to_owned(),
        events,
        secret: "whsec_dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=".to_owned(),
        active: true,
        max_retries: 4,
        created_at: t,
        updated_at: t,
        last_triggered_at: None,
        failure_count: 0,
        disabled_reason: None,
    }
}

fn delivery(
    webhook_id: Uuid,
    due: Option<OffsetDateTime>,
    created_at: OffsetDateTime,
) -> NewDelivery {
    let event_id = Uuid::now_v7();
    NewDelivery {
        id: Uuid::now_v7(),
        webhook_id,
        event_id,
        event_type: "JobQueued",
        // Key order matters: the stored body must be byte-identical.
        body: format!(
            r#"{{"id":"{event_id}","event":"JobQueued","timestamp":"2026-01-01T00:00:00.000Z","data":{{"type":"JobQueued","z":1,"a":2}}}}"#
        )
        .into(),
        created_at,
        next_attempt_at: due,
        trace: None,
    }
}

fn claim(now: OffsetDateTime, limit: u32, per_webhook: u32) -> ClaimRequest {
    ClaimRequest {
        now,
        limit,
        per_webhook,
        exclude: Vec::new(),
        lease_until: now + Duration::seconds(60),
        token: Uuid::new_v4(),
    }
}

fn record(
    d: &event_webhook::model::ClaimedDelivery,
    outcome: AttemptOutcome,
    code: Option<u16>,
    at: OffsetDateTime,
) -> AttemptRecord {
    AttemptRecord {
        delivery_id: d.id,
        webhook_id: d.webhook_id,
        claim_token: d.claim_token,
        attempt: d.attempts + 1,
        started_at: at,
        duration_ms: 5,
        status_code: code,
        error: if outcome == AttemptOutcome::Succeeded {
            None
        } else {
            Some("http_500".to_owned())
        },
        outcome,
        disable_after_dead: 3,
    }
}

async fn webhook_crud(store: Store) {
    let mut w = webhook(
        "https://a.example/hook",
        vec![EventKind::JobQueued, EventKind::NoteUpdated],
    );
    store.create_webhook(&w).await.unwrap();
    let w2 = webhook("https://b.example/hook", vec![]);
    store.create_webhook(&w2).await.unwrap();

    assert_eq!(store.get_webhook(w.id).await.unwrap().as_ref(), Some(&w));
    let all = store.list_webhooks().await.unwrap();
    assert_eq!(
        all.iter().map(|x| x.id).collect::<Vec<_>>(),
        vec![w.id, w2.id]
    );
    assert_eq!(store.count_webhooks().await.unwrap(), 2);

    w.url = "https://c.example/x".to_owned();
    w.events = vec![EventKind::JobFailed];
    w.active = false;
    w.max_retries = 7;
    w.secret = "another-secret-0123456789".to_owned();
    w.disabled_reason = Some("manual".to_owned());
    w.updated_at = now();
    assert!(store.update_webhook(&w).await.unwrap());
    assert_eq!(store.get_webhook(w.id).await.unwrap().as_ref(), Some(&w));

    assert!(store.delete_webhook(w.id).await.unwrap());
    assert!(!store.delete_webhook(w.id).await.unwrap());
    assert!(store.get_webhook(w.id).await.unwrap().is_none());
    assert_eq!(store.count_webhooks().await.unwrap(), 1);
    let mut ghost = w.clone();
    ghost.id = Uuid::now_v7();
    assert!(!store.update_webhook(&ghost).await.unwrap());
}

async fn enqueue_and_list(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    let batch: Vec<_> = (0..3)
        .map(|i| delivery(w.id, Some(t0), t0 + Duration::milliseconds(i)))
        .collect();
    store.enqueue(&batch).await.unwrap();

    let listed = store.list_deliveries(w.id, None, 50).await.unwrap();
    assert_eq!(
        listed.iter().map(|d| d.id).collect::<Vec<_>>(),
        batch.iter().rev().map(|d| d.id).collect::<Vec<_>>(),
        "newest first"
    );
    assert!(
        listed
            .iter()
            .all(|d| d.status == DeliveryStatus::Pending && !d.success)
    );
    assert_eq!(store.list_deliveries(w.id, None, 2).await.unwrap().len(), 2);
    assert!(
        store
            .list_deliveries(w.id, Some(DeliveryStatus::Dead), 50)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.queue_depth().await.unwrap(), 3);
    let one = store
        .get_delivery(w.id, batch[1].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(one.event_id, batch[1].event_id);
    assert_eq!(one.event_type, "JobQueued");
    assert!(
        store
            .get_delivery(Uuid::now_v7(), batch[1].id)
            .await
            .unwrap()
            .is_none()
    );

    // The body comes back byte for byte.
    let claimed = store.claim_due(&claim(now(), 10, 10)).await.unwrap();
    let c = claimed.iter().find(|c| c.id == batch[0].id).unwrap();
    assert_eq!(c.body.as_bytes(), &batch[0].body[..]);
}

async fn claim_rules(store: Store) {
    let a = webhook("https://a.example/hook", vec![]);
    let b = webhook("https://b.example/hook", vec![]);
    let off = webhook("https://off.example/hook", vec![]);
    for w in [&a, &b, &off] {
        store.create_webhook(w).await.unwrap();
    }
    let mut off2 = off.clone();
    off2.active = false;
    store.update_webhook(&off2).await.unwrap();

    let t0 = now();
    let mut rows: Vec<_> = (0..5).map(|_| delivery(a.id, Some(t0), t0)).collect();
    rows.extend((0..2).map(|_| delivery(b.id, Some(t0), t0)));
    rows.push(delivery(b.id, Some(t0 + Duration::hours(1)), t0)); // not due
    rows.push(delivery(b.id, None, t0)); // never scheduled
    rows.push(delivery(off.id, Some(t0), t0)); // inactive webhook
    store.enqueue(&rows).await.unwrap();

    // At most 2 per webhook, and webhook b excluded.
    let mut req = claim(t0, 100, 2);
    req.exclude = vec![b.id];
    let got = store.claim_due(&req).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|c| c.webhook_id == a.id && c.claim_token == req.token)
    );

    // Claimed rows are not claimed again while the lease holds.
    let got2 = store.claim_due(&claim(t0, 100, 100)).await.unwrap();
    assert_eq!(got2.len(), 5, "3 left of a + 2 of b");
    assert!(got2.iter().all(|c| !got.iter().any(|g| g.id == c.id)));

    // Released rows come back; expired leases come back.
    store.release(&[got[0].id], req.token).await.unwrap();
    let got3 = store.claim_due(&claim(t0, 100, 100)).await.unwrap();
    assert_eq!(
        got3.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![got[0].id]
    );
    let later = t0 + Duration::seconds(120);
    let got4 = store.claim_due(&claim(later, 100, 100)).await.unwrap();
    assert_eq!(
        got4.len(),
        7,
        "every lease expired; the hour-later row not yet due"
    );
    // A release with the wrong token does nothing.
    store.release(&[got4[0].id], Uuid::new_v4()).await.unwrap();
    assert!(
        store
            .claim_due(&claim(later, 100, 100))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn attempt_transitions(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    let rows: Vec<_> = (0..6).map(|_| delivery(w.id, Some(t0), t0)).collect();
    store.enqueue(&rows).await.unwrap();
    let claimed = store.claim_due(&claim(t0, 1, 1)).await.unwrap();
    let c = &claimed[0];

    // Retry: failed, scheduled, attempt recorded.
    let retry_at = t0 + Duration::seconds(5);
    let eff = store
        .complete_attempt(&record(c, AttemptOutcome::Retry(retry_at), Some(500), t0))
        .await
        .unwrap();
    assert!(!eff.lost_claim && !eff.webhook_disabled);
    let d = store.get_delivery(w.id, c.id).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Failed);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.next_attempt_at, Some(retry_at));
    assert_eq!(d.last_status_code, Some(500));
    assert_eq!(d.last_error.as_deref(), Some("http_500"));

    // The same claim cannot record twice.
    let eff = store
        .complete_attempt(&record(c, AttemptOutcome::Succeeded, Some(200), t0))
        .await
        .unwrap();
    assert!(eff.lost_claim);

    // Not due before retry_at; then success.
    assert!(
        store
            .claim_due(&claim(t0 + Duration::seconds(1), 10, 10))
            .await
            .unwrap()
            .iter()
            .all(|x| x.id != c.id)
    );
    let again = store.claim_due(&claim(retry_at, 10, 1)).await.unwrap();
    let c2 = again.iter().find(|x| x.id == c.id).expect("due again");
    assert_eq!(c2.attempts, 1);
    store
        .complete_attempt(&record(c2, AttemptOutcome::Succeeded, Some(204), retry_at))
        .await
        .unwrap();
    let d = store.get_delivery(w.id, c.id).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Succeeded);
    assert!(d.success);
    assert_eq!(d.attempts, 2);
    assert!(d.delivered_at.is_some());
    let attempts = store.list_attempts(c.id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(attempts[0].status_code, Some(500));
    assert_eq!(attempts[1].status_code, Some(204));
    let wh = store.get_webhook(w.id).await.unwrap().unwrap();
    assert_eq!(wh.last_triggered_at, Some(retry_at));

    // Three dead deliveries in a row disable the webhook (threshold 3 here).
    // (The other rows were claimed above; their leases have expired by t1.)
    let t1 = t0 + Duration::minutes(2);
    let rest = store.claim_due(&claim(t1, 10, 10)).await.unwrap();
    assert_eq!(rest.len(), 5);
    for (i, c) in rest.iter().take(3).enumerate() {
        let eff = store
            .complete_attempt(&record(c, AttemptOutcome::Dead, Some(500), t1))
            .await
            .unwrap();
        assert_eq!(
            eff.webhook_disabled,
            i == 2,
            "disabled exactly at the third"
        );
    }
    let wh = store.get_webhook(w.id).await.unwrap().unwrap();
    assert!(!wh.active);
    assert_eq!(wh.failure_count, 3);
    assert!(
        wh.disabled_reason
            .as_deref()
            .unwrap()
            .contains("3 consecutive")
    );
    assert_eq!(
        store
            .list_deliveries(w.id, Some(DeliveryStatus::Dead), 10)
            .await
            .unwrap()
            .len(),
        3
    );
    // Inactive: its remaining due rows are not claimed.
    store
        .release(&[rest[3].id, rest[4].id], rest[3].claim_token)
        .await
        .unwrap();
    assert!(
        store
            .claim_due(&claim(t1, 10, 10))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn gone_disables(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    store
        .enqueue(&[delivery(w.id, Some(t0), t0)])
        .await
        .unwrap();
    let c = store.claim_due(&claim(t0, 1, 1)).await.unwrap().remove(0);
    let eff = store
        .complete_attempt(&record(&c, AttemptOutcome::Gone, Some(410), t0))
        .await
        .unwrap();
    assert!(eff.webhook_disabled);
    let wh = store.get_webhook(w.id).await.unwrap().unwrap();
    assert!(!wh.active);
    assert!(wh.disabled_reason.unwrap().contains("410"));
    let d = store.get_delivery(w.id, c.id).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Dead);
}

async fn success_resets_failure_count(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    store
        .enqueue(&[delivery(w.id, Some(t0), t0), delivery(w.id, Some(t0), t0)])
        .await
        .unwrap();
    let cs = store.claim_due(&claim(t0, 2, 2)).await.unwrap();
    store
        .complete_attempt(&record(&cs[0], AttemptOutcome::Dead, Some(500), t0))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_webhook(w.id)
            .await
            .unwrap()
            .unwrap()
            .failure_count,
        1
    );
    store
        .complete_attempt(&record(&cs[1], AttemptOutcome::Succeeded, Some(200), t0))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_webhook(w.id)
            .await
            .unwrap()
            .unwrap()
            .failure_count,
        0
    );
}

async fn redeliver_requeues(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    store
        .enqueue(&[delivery(w.id, Some(t0), t0)])
        .await
        .unwrap();
    let c = store.claim_due(&claim(t0, 1, 1)).await.unwrap().remove(0);
    store
        .complete_attempt(&record(&c, AttemptOutcome::Dead, Some(500), t0))
        .await
        .unwrap();
    assert!(store.claim_due(&claim(t0, 1, 1)).await.unwrap().is_empty());
    let t1 = t0 + Duration::seconds(1);
    let d = store.redeliver(w.id, c.id, t1).await.unwrap().unwrap();
    assert_eq!(d.status, DeliveryStatus::Pending);
    assert_eq!(d.attempts, 0);
    assert_eq!(d.next_attempt_at, Some(t1));
    let again = store.claim_due(&claim(t1, 1, 1)).await.unwrap();
    assert_eq!(again[0].id, c.id);
    assert!(
        store
            .redeliver(w.id, Uuid::now_v7(), t1)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .redeliver(Uuid::now_v7(), c.id, t1)
            .await
            .unwrap()
            .is_none()
    );
}

async fn recover_frees_dead_claims(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    store
        .enqueue(&[delivery(w.id, Some(t0), t0)])
        .await
        .unwrap();
    let mut req = claim(t0, 1, 1);
    req.lease_until = t0 + Duration::seconds(10);
    assert_eq!(store.claim_due(&req).await.unwrap().len(), 1);
    // After the lease, every engine frees it at start-up.
    let freed = store
        .recover_in_flight(t0 + Duration::seconds(11))
        .await
        .unwrap();
    assert_eq!(freed, 1);
    assert_eq!(store.claim_due(&claim(t0, 1, 1)).await.unwrap().len(), 1);
}

async fn prune_and_cascade(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    store
        .enqueue(&[delivery(w.id, Some(t0), t0), delivery(w.id, Some(t0), t0)])
        .await
        .unwrap();
    let cs = store.claim_due(&claim(t0, 2, 2)).await.unwrap();
    store
        .complete_attempt(&record(&cs[0], AttemptOutcome::Succeeded, Some(200), t0))
        .await
        .unwrap();
    store
        .complete_attempt(&record(&cs[1], AttemptOutcome::Dead, Some(500), t0))
        .await
        .unwrap();
    // Nothing older than a minute before the delivery.
    assert_eq!(
        store
            .prune_succeeded(t0 - Duration::minutes(1))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune_succeeded(t0 + Duration::minutes(1))
            .await
            .unwrap(),
        1
    );
    let left = store.list_deliveries(w.id, None, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].status,
        DeliveryStatus::Dead,
        "only succeeded rows are pruned"
    );

    assert!(store.delete_webhook(w.id).await.unwrap());
    assert!(
        store
            .list_deliveries(w.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.list_attempts(cs[1].id).await.unwrap().is_empty());
}

async fn claimed_test_delivery(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    let d = delivery(w.id, None, t0);
    let token = Uuid::new_v4();
    store
        .enqueue_claimed(&d, token, t0 + Duration::seconds(30))
        .await
        .unwrap();
    let rec = AttemptRecord {
        delivery_id: d.id,
        webhook_id: w.id,
        claim_token: token,
        attempt: 1,
        started_at: t0,
        duration_ms: 3,
        status_code: Some(503),
        error: Some("http_503".into()),
        outcome: AttemptOutcome::FailedOnce,
        disable_after_dead: 10,
    };
    assert!(!store.complete_attempt(&rec).await.unwrap().lost_claim);
    let got = store.get_delivery(w.id, d.id).await.unwrap().unwrap();
    assert_eq!(got.status, DeliveryStatus::Failed);
    assert_eq!(got.next_attempt_at, None);
    assert!(
        store
            .claim_due(&claim(t0 + Duration::hours(1), 5, 5))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.queue_depth().await.unwrap(), 0);
}

async fn unsupported_url_is_refused(_store: Store) {
    let err = event_webhook::store::connect("mysql://localhost/x")
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "unsupported_database");
}

async fn log_cursor_only_moves_forward(store: Store) {
    assert_eq!(store.log_cursor().await.unwrap(), None);
    store.set_log_cursor(1_700_000_000_000_005).await.unwrap();
    assert_eq!(
        store.log_cursor().await.unwrap(),
        Some(1_700_000_000_000_005)
    );
    store.set_log_cursor(3).await.unwrap();
    assert_eq!(
        store.log_cursor().await.unwrap(),
        Some(1_700_000_000_000_005)
    );
    store.set_log_cursor(1_700_000_000_000_009).await.unwrap();
    assert_eq!(
        store.log_cursor().await.unwrap(),
        Some(1_700_000_000_000_009)
    );
}

async fn trace_context_round_trips_through_the_queue(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let t0 = now();
    let mut traced = delivery(w.id, Some(t0), t0);
    traced.trace =
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nvendor=abc".to_owned());
    let plain = delivery(w.id, Some(t0), t0);
    store
        .enqueue(&[traced.clone(), plain.clone()])
        .await
        .unwrap();
    let got = store.claim_due(&claim(t0, 10, 10)).await.unwrap();
    let by_id = |id| got.iter().find(|c| c.id == id).unwrap().trace.clone();
    assert_eq!(by_id(traced.id), traced.trace);
    assert_eq!(by_id(plain.id), None);
    let context = event_webhook::model::decode_trace(traced.trace.as_deref().unwrap()).unwrap();
    assert_eq!(context.tracestate(), Some("vendor=abc"));
}

/// A derivation repeated (in part or whole) queues nothing twice; the
/// record of derived events is pruned by age.
async fn derived_events_are_queued_once(store: Store) {
    let w = webhook("https://a.example/hook", vec![]);
    let v = webhook("https://b.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    store.create_webhook(&v).await.unwrap();
    let t0 = now();
    // Two webhooks for the first event, one for the second.
    let first = delivery(w.id, Some(t0), t0);
    let first_too = NewDelivery {
        id: Uuid::now_v7(),
        webhook_id: v.id,
        ..first.clone()
    };
    let second = delivery(w.id, Some(t0), t0);
    let batch = [first.clone(), first_too.clone(), second.clone()];
    assert_eq!(store.enqueue_derived(&batch, t0).await.unwrap(), 3);
    // Handed out again, with fresh row ids: nothing more.
    let again: Vec<NewDelivery> = batch
        .iter()
        .map(|d| NewDelivery {
            id: Uuid::now_v7(),
            ..d.clone()
        })
        .collect();
    assert_eq!(store.enqueue_derived(&again, t0).await.unwrap(), 0);
    // A batch overlapping an earlier one queues only its new event.
    let third = delivery(v.id, Some(t0), t0);
    let overlap = [again[2].clone(), third.clone()];
    assert_eq!(store.enqueue_derived(&overlap, t0).await.unwrap(), 1);
    let mut queued = store.list_deliveries(w.id, None, 100).await.unwrap();
    queued.extend(store.list_deliveries(v.id, None, 100).await.unwrap());
    assert_eq!(queued.len(), 4);
    // Forgotten after the memory: a repeat then would queue again.
    assert_eq!(
        store
            .prune_derived(t0 + Duration::seconds(1))
            .await
            .unwrap(),
        3
    );
    assert_eq!(store.enqueue_derived(&again[..1], t0).await.unwrap(), 1);
}

/// The fingerprint tells a list that changed from one that did not.
async fn fingerprint_follows_registrations_and_updates(store: Store) {
    let empty = store.webhooks_fingerprint().await.unwrap().unwrap();
    assert_eq!(empty.count, 0);
    let mut w = webhook("https://a.example/hook", vec![]);
    store.create_webhook(&w).await.unwrap();
    let one = store.webhooks_fingerprint().await.unwrap().unwrap();
    assert_ne!(one, empty);
    assert_eq!(store.webhooks_fingerprint().await.unwrap().unwrap(), one);
    w.active = false;
    w.updated_at += Duration::seconds(1);
    assert!(store.update_webhook(&w).await.unwrap());
    assert_ne!(store.webhooks_fingerprint().await.unwrap().unwrap(), one);
}

on_both_engines!(
    fingerprint_follows_registrations_and_updates,
    derived_events_are_queued_once,
    trace_context_round_trips_through_the_queue,
    log_cursor_only_moves_forward,
    webhook_crud,
    enqueue_and_list,
    claim_rules,
    attempt_transitions,
    gone_disables,
    success_resets_failure_count,
    redeliver_requeues,
    recover_frees_dead_claims,
    prune_and_cascade,
    claimed_test_delivery,
    unsupported_url_is_refused,
);
