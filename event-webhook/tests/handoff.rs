//! The sink → worker handoff: rows this process's sink queues are inserted
//! already claimed by its worker and sent without a claim query, whole
//! batches at a time, up to `handoff_hold` per webhook, and without waiting
//! for their insert to commit; beyond it rows wait for a claim, in order;
//! while older rows may be due in the store, fresh rows wait in the worker
//! for the claim that takes those (not in the store, unclaimed);
//! and rows handed over to a worker that dies are sent by the next one once
//! their lease ends (at least once, none lost).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::receiver::{Receiver, Reply};
use common::{eventually, fast_config};
use event_core::{AllowAnonymous, EventBus, EventKind, JobQueued, SinkRunner};
use event_webhook::model::DeliveryStatus;
use event_webhook::store::WebhookStore;
use event_webhook::{WebhookConfig, Webhooks};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Registers a `JobQueued` webhook pointing at `url` and reloads the
/// service's index.
async fn register(webhooks: &Webhooks, url: String) -> Uuid {
    let w = common::webhook(url, vec![EventKind::JobQueued]);
    webhooks.store().create_webhook(&w).await.unwrap();
    webhooks.refresh().await.unwrap();
    w.id
}

/// Publishes `n` `JobQueued` events; returns their ids in order.
fn publish(bus: &EventBus, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            bus.publish(JobQueued {
                job_id: Uuid::now_v7(),
                job_type: "x".into(),
                note_id: None,
            })
            .id()
            .to_string()
        })
        .collect()
}

/// Waits until the worker has finished a claim since it started, so the
/// store holds nothing it has not looked at (until then the sink's rows
/// wait for a claim, as rows from before the start might be older).
async fn wait_for_first_claims(webhooks: &Webhooks) {
    let w = webhooks.clone();
    eventually(Duration::from_secs(10), move || {
        let w = w.clone();
        async move { w.queue_stats().claims >= 2 }
    })
    .await;
}

async fn succeeded(store: &Arc<dyn WebhookStore>, webhook: Uuid, limit: u32) -> usize {
    store
        .list_deliveries(webhook, Some(DeliveryStatus::Succeeded), limit)
        .await
        .unwrap()
        .len()
}

/// A burst larger than a claim may bring (16 rounds of 8 slots = 128 rows)
/// goes to the worker entirely through the handoff: no row is claimed by a
/// query, none is queued unclaimed, each is delivered once.
async fn a_large_burst_is_handed_over_without_a_claim(store: Arc<dyn WebhookStore>) {
    const N: usize = 1000;
    let rx = Receiver::start().await;
    let webhooks = Webhooks::new(store, Arc::new(AllowAnonymous), fast_config())
        .await
        .unwrap();
    let webhook = register(&webhooks, rx.url("fast")).await;
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());
    wait_for_first_claims(&webhooks).await;

    let ids = publish(&bus, N);
    let requests = rx.wait_for("fast", N, Duration::from_secs(60)).await;
    let store = webhooks.store().clone();
    eventually(Duration::from_secs(60), || {
        let store = store.clone();
        async move { succeeded(&store, webhook, N as u32).await == N }
    })
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);

    let stats = webhooks.queue_stats();
    assert_eq!(stats.handed_off, N as u64, "{stats:?}");
    assert_eq!(stats.queued_unclaimed, 0, "{stats:?}");
    assert_eq!(stats.claimed, 0, "no row came through a claim: {stats:?}");
    let got: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect());
    assert_eq!(rx.requests_to("fast").len(), N, "a delivery was sent twice");
}

/// With the endpoint stuck, the worker takes exactly `handoff_hold` rows
/// from the sink — the oldest — and the rest are queued unclaimed; once the
/// endpoint answers again a claim brings the rest, each delivered once.
async fn the_handoff_stops_at_its_hold(store: Arc<dyn WebhookStore>) {
    const N: usize = 100;
    const HOLD: usize = 20;
    let rx = Receiver::start().await;
    rx.default_reply("stuck", Reply::status(204).delay(Duration::from_secs(3)));
    let config = WebhookConfig {
        handoff_hold: HOLD,
        per_endpoint_concurrency: 1,
        max_concurrency: 1,
        ..fast_config()
    };
    let webhooks = Webhooks::new(store, Arc::new(AllowAnonymous), config)
        .await
        .unwrap();
    let webhook = register(&webhooks, rx.url("stuck")).await;
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());
    wait_for_first_claims(&webhooks).await;

    let ids = publish(&bus, N);
    // Everything queued while the first attempt is still waiting.
    let w = webhooks.clone();
    eventually(Duration::from_secs(30), move || {
        let w = w.clone();
        async move {
            let s = w.queue_stats();
            s.handed_off + s.queued_unclaimed == N as u64
        }
    })
    .await;
    rx.wait_for("stuck", 1, Duration::from_secs(10)).await;
    let stats = webhooks.queue_stats();
    assert_eq!(
        stats.handed_off, HOLD as u64,
        "the hold was passed: {stats:?}"
    );
    assert_eq!(stats.queued_unclaimed, (N - HOLD) as u64, "{stats:?}");

    rx.default_reply("stuck", Reply::status(204));
    let store = webhooks.store().clone();
    eventually(Duration::from_secs(60), || {
        let store = store.clone();
        async move { succeeded(&store, webhook, N as u32).await == N }
    })
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);

    let stats = webhooks.queue_stats();
    assert_eq!(stats.handed_off, HOLD as u64, "{stats:?}");
    assert!(stats.claimed >= (N - HOLD) as u64, "{stats:?}");
    let requests = rx.requests_to("stuck");
    assert_eq!(requests.len(), N, "a delivery was sent twice or lost");
    let order: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(
        order.iter().copied().collect::<HashSet<_>>(),
        ids.iter().map(String::as_str).collect()
    );
    // The handed-over rows are the oldest: no later row overtook them.
    let first: HashSet<&str> = order[..HOLD].iter().copied().collect();
    assert_eq!(first, ids[..HOLD].iter().map(String::as_str).collect());
}

on_both_engines!(
    a_large_burst_is_handed_over_without_a_claim,
    the_handoff_stops_at_its_hold
);

/// Another connection holding a write lock on the deliveries: the sink's
/// inserts wait until it is released.
enum WriteLock {
    Sqlite(sqlx::SqliteConnection),
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgConnection),
}

/// A write lock on the SQLite database at `url`, held until dropped.
async fn sqlite_write_lock(url: &str) -> WriteLock {
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut c)
        .await
        .unwrap();
    WriteLock::Sqlite(c)
}

/// A lock on `schema`'s deliveries table that holds up every insert,
/// until dropped.
#[cfg(feature = "postgres")]
async fn postgres_write_lock(url: &str, schema: &str) -> WriteLock {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut c).await.unwrap();
    let lock = format!("LOCK TABLE \"{schema}\".deliveries IN EXCLUSIVE MODE");
    sqlx::query(sqlx::AssertSqlSafe(lock))
        .execute(&mut c)
        .await
        .unwrap();
    WriteLock::Postgres(c)
}

impl WriteLock {
    async fn release(self) {
        use sqlx::Connection;
        match self {
            WriteLock::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
            #[cfg(feature = "postgres")]
            WriteLock::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut c).await.unwrap();
                c.close().await.unwrap();
            }
        }
    }
}

/// A handed-over row is sent while its insert is still waiting for the
/// database (the commit is not part of the delivery's latency), and its
/// outcome is recorded once the insert has committed: the row ends
/// succeeded, with one attempt, sent once.
async fn a_handed_over_row_is_sent_before_its_insert_commits(
    store: Arc<dyn WebhookStore>,
    lock: impl AsyncFnOnce() -> WriteLock,
) {
    let rx = Receiver::start().await;
    let webhooks = Webhooks::new(store, Arc::new(AllowAnonymous), fast_config())
        .await
        .unwrap();
    let webhook = register(&webhooks, rx.url("early")).await;
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    let worker = webhooks.start_worker(CancellationToken::new());
    wait_for_first_claims(&webhooks).await;

    let lock = lock().await;
    let ids = publish(&bus, 3);
    // Sent while nothing can be inserted (the lock outlasts this wait).
    let requests = rx.wait_for("early", 3, Duration::from_secs(8)).await;
    let store = webhooks.store().clone();
    assert!(
        store
            .list_deliveries(webhook, None, 10)
            .await
            .unwrap()
            .is_empty(),
        "the rows were inserted despite the lock"
    );
    lock.release().await;
    eventually(Duration::from_secs(30), || {
        let store = store.clone();
        async move { succeeded(&store, webhook, 10).await == 3 }
    })
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);
    let got: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect());
    assert_eq!(
        rx.requests_to("early").len(),
        3,
        "a delivery was sent twice"
    );
    for d in store.list_deliveries(webhook, None, 10).await.unwrap() {
        assert_eq!(store.list_attempts(d.id).await.unwrap().len(), 1);
    }
}

/// Rows the sink queues while older rows may be due in the store (here: at
/// start-up, before the worker's first claim, which a write lock holds up)
/// are still handed over, claimed in their insert, but wait in the worker
/// until that claim has looked; then they go out in order, none through a
/// claim and none queued unclaimed. (Queued unclaimed instead, a steady
/// stream of fresh rows kept the webhook behind: every claim found the rows
/// committed while it ran.)
async fn fresh_rows_wait_for_the_first_claim_without_going_unclaimed(
    store: Arc<dyn WebhookStore>,
    lock: impl AsyncFnOnce() -> WriteLock,
) {
    // While the lock holds the inserts up, the sink hands over the rows of
    // at most `ENQUEUE_PIPELINE` batches in flight and the one batch waiting
    // for a slot after its hand-over. The runner may split the events into
    // as many batches as there are events, so more could not all be handed
    // over before the release.
    const N: usize = event_webhook::sink::ENQUEUE_PIPELINE + 1;
    let rx = Receiver::start().await;
    let config = WebhookConfig {
        per_endpoint_concurrency: 1,
        max_concurrency: 1,
        ..fast_config()
    };
    let webhooks = Webhooks::new(store, Arc::new(AllowAnonymous), config)
        .await
        .unwrap();
    let webhook = register(&webhooks, rx.url("parked")).await;
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(webhooks.sink());
    // The worker's start-up (freeing old claims, the first claim) waits for
    // the lock: until it has looked, the store may hold older rows.
    let lock = lock().await;
    let worker = webhooks.start_worker(CancellationToken::new());

    let ids = publish(&bus, N);
    let w = webhooks.clone();
    eventually(Duration::from_secs(10), move || {
        let w = w.clone();
        async move { w.queue_stats().handed_off == N as u64 }
    })
    .await;
    let stats = webhooks.queue_stats();
    assert_eq!(stats.parked, N as u64, "{stats:?}");
    assert_eq!(stats.claims, 0, "the first claim finished: {stats:?}");
    assert!(
        rx.requests_to("parked").is_empty(),
        "a parked row was sent before the claim looked"
    );

    lock.release().await;
    let requests = rx.wait_for("parked", N, Duration::from_secs(30)).await;
    let store = webhooks.store().clone();
    eventually(Duration::from_secs(30), || {
        let store = store.clone();
        async move { succeeded(&store, webhook, N as u32).await == N }
    })
    .await;
    runner.shutdown(Duration::from_secs(5)).await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);

    let stats = webhooks.queue_stats();
    assert_eq!(stats.queued_unclaimed, 0, "{stats:?}");
    assert_eq!(stats.claimed, 0, "no row came through a claim: {stats:?}");
    let order: Vec<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(order, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(
        rx.requests_to("parked").len(),
        N,
        "a delivery was sent twice"
    );
}

/// `sqlite_locked::<scenario>` and `postgres_locked::<scenario>` tests:
/// each scenario on each engine, given a way to take a write lock on the
/// database under test.
macro_rules! locked_on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod sqlite_locked {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (url, _) = super::common::sqlite_url();
                    let store = std::sync::Arc::new(
                        event_webhook::store::SqliteStore::connect(&url)
                            .await
                            .unwrap(),
                    );
                    super::$name(store, async || super::sqlite_write_lock(&url).await).await;
                }
            )*
        }
        #[cfg(feature = "postgres")]
        mod postgres_locked {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some((store, schema)) = super::common::postgres_store().await else {
                        return;
                    };
                    let url = super::common::postgres_url().unwrap();
                    let s = schema.clone();
                    super::$name(store, async move || {
                        super::postgres_write_lock(&url, &s).await
                    })
                    .await;
                    super::common::drop_schema(&schema).await;
                }
            )*
        }
    };
}

locked_on_both_engines!(
    a_handed_over_row_is_sent_before_its_insert_commits,
    fresh_rows_wait_for_the_first_claim_without_going_unclaimed
);

/// Opens a store on the database under test (a new pool each time).
type Open = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn WebhookStore>> + Send>>
        + Send
        + Sync,
>;

/// A process (its own runtime, dropped without any shutdown step: nothing
/// it held is released) takes `N` rows through the handoff and dies with
/// one attempt in flight; a new service on the same database sends every
/// row once the lease ends (SQLite: at its start), the one in flight at
/// most twice, and records each as succeeded.
async fn handed_rows_survive_a_crash(open: Open) {
    const N: usize = 50;
    let rx = Receiver::start().await;
    // The first worker's first attempt never gets its answer.
    rx.script("p", [Reply::status(204).delay(Duration::from_secs(30))]);
    let config = WebhookConfig {
        // The attempt in flight at the crash must not time out before it.
        lease: Duration::from_secs(5),
        request_timeout: Duration::from_secs(4),
        per_endpoint_concurrency: 1,
        max_concurrency: 1,
        ..fast_config()
    };

    // The first process lives in a runtime of its own, its store included.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (first, cfg, url) = (open.clone(), config.clone(), rx.url("p"));
    let (webhooks, webhook, bus) = doomed
        .spawn(async move {
            let webhooks = Webhooks::new(first().await, Arc::new(AllowAnonymous), cfg)
                .await
                .unwrap();
            let webhook = register(&webhooks, url).await;
            let bus = EventBus::default();
            let mut runner = SinkRunner::new(&bus);
            runner.register(webhooks.sink());
            let worker = webhooks.start_worker(CancellationToken::new());
            wait_for_first_claims(&webhooks).await;
            // Kept running until the runtime goes.
            std::mem::forget((runner, worker));
            (webhooks, webhook, bus)
        })
        .await
        .unwrap();
    let ids = publish(&bus, N);
    let stats = doomed
        .spawn(async move {
            let w = webhooks.clone();
            eventually(Duration::from_secs(30), move || {
                let w = w.clone();
                async move {
                    // Handed over, and committed (they are sent while
                    // their insert commits).
                    w.queue_stats().handed_off == N as u64
                        && w.store()
                            .list_deliveries(webhook, None, N as u32)
                            .await
                            .unwrap()
                            .len()
                            == N
                }
            })
            .await;
            webhooks.queue_stats()
        })
        .await
        .unwrap();
    assert_eq!(stats.queued_unclaimed, 0, "{stats:?}");
    rx.wait_for("p", 1, Duration::from_secs(10)).await;
    // The crash: every task of the first process stops where it is.
    doomed.shutdown_background();
    drop(bus);

    let second = Webhooks::new(open().await, Arc::new(AllowAnonymous), config)
        .await
        .unwrap();
    let worker = second.start_worker(CancellationToken::new());
    let store = second.store().clone();
    eventually(Duration::from_secs(60), || {
        let store = store.clone();
        async move { succeeded(&store, webhook, N as u32).await == N }
    })
    .await;
    assert!(worker.shutdown(Duration::from_secs(5)).await);
    assert!(
        second.queue_stats().claimed >= N as u64,
        "the second worker claimed every row: {:?}",
        second.queue_stats()
    );
    let requests = rx.requests_to("p");
    let got: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect(), "none lost");
    // Only the attempt in flight at the crash is sent again.
    assert_eq!(requests.len(), N + 1);
    for d in store
        .list_deliveries(webhook, None, N as u32)
        .await
        .unwrap()
    {
        assert_eq!(d.status, DeliveryStatus::Succeeded);
        assert_eq!(store.list_attempts(d.id).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_handed_rows_survive_a_crash() {
    let (url, _) = common::sqlite_url();
    handed_rows_survive_a_crash(Arc::new(move || {
        let url = url.clone();
        Box::pin(async move {
            Arc::new(
                event_webhook::store::SqliteStore::connect(&url)
                    .await
                    .unwrap(),
            ) as Arc<dyn WebhookStore>
        })
    }))
    .await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_handed_rows_survive_a_crash() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let schema = common::fresh_schema();
    let s = schema.clone();
    handed_rows_survive_a_crash(Arc::new(move || {
        let (url, schema) = (url.clone(), s.clone());
        Box::pin(async move {
            Arc::new(
                event_webhook::store::PostgresStore::connect_in_schema(&url, &schema)
                    .await
                    .unwrap(),
            ) as Arc<dyn WebhookStore>
        })
    }))
    .await;
    common::drop_schema(&schema).await;
}
