//! Work queues shared by instances: two `NatsCluster`s (separate
//! connections, like separate instances) pulling one `work_<name>` consumer
//! on a real NATS. Each event is handled once while every handler succeeds;
//! a failure or an instance that stops answering hands its events to
//! another.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use event_core::{Event, async_trait};
use event_nats::testing::TestStream;
use event_nats::{WorkConfig, WorkError, WorkHandler};
use uuid::Uuid;

/// Generous: two cores shared with other test runs.
const LONG: Duration = Duration::from_secs(120);

/// What a handler does with a call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Succeed,
    /// Fails every call.
    Fail,
    /// Never returns (an instance that stopped answering).
    Hang,
}

/// Records the event ids each instance handled successfully.
struct Recorder {
    instance: &'static str,
    mode: Mutex<Mode>,
    handled: Arc<Mutex<Vec<(&'static str, Uuid)>>>,
    /// Events a call was given, successful or not.
    offered: Mutex<usize>,
    /// The events of a call that never returns.
    held: Mutex<Vec<Uuid>>,
}

#[async_trait]
impl WorkHandler for Recorder {
    async fn handle(&self, events: Vec<Arc<Event>>) -> Result<(), WorkError> {
        *self.offered.lock().unwrap() += events.len();
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Succeed => {
                let mut handled = self.handled.lock().unwrap();
                handled.extend(events.iter().map(|e| (self.instance, e.id())));
                Ok(())
            }
            Mode::Fail => Err(WorkError("refused by the test".to_owned())),
            Mode::Hang => {
                self.held
                    .lock()
                    .unwrap()
                    .extend(events.iter().map(|e| e.id()));
                std::future::pending().await
            }
        }
    }
}

fn recorder(
    instance: &'static str,
    mode: Mode,
    handled: &Arc<Mutex<Vec<(&'static str, Uuid)>>>,
) -> Arc<Recorder> {
    Arc::new(Recorder {
        instance,
        mode: Mutex::new(mode),
        handled: handled.clone(),
        offered: Mutex::new(0),
        held: Mutex::new(Vec::new()),
    })
}

fn config(ack_wait: Duration) -> WorkConfig {
    WorkConfig {
        ack_wait,
        retry_delay: Duration::from_millis(200),
        ..WorkConfig::new("test")
    }
}

/// Waits until `handled` holds every id of `ids`.
async fn wait_all(handled: &Mutex<Vec<(&'static str, Uuid)>>, ids: &[Uuid], what: &str) {
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let missing = {
            let handled = handled.lock().unwrap();
            let got: std::collections::HashSet<Uuid> = handled.iter().map(|h| h.1).collect();
            ids.iter().filter(|id| !got.contains(id)).count()
        };
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {missing} of {} events never handled",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes `n` events through `cluster`'s bus (to the stream); their ids.
fn publish(cluster: &event_nats::NatsCluster, n: usize) -> Vec<Uuid> {
    (0..n)
        .map(|i| cluster.bus().publish(progress((i % 100) as u8)).id())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_each_event_handled_once() {
    let Some(url) = nats_url("two_instances_share_the_work_each_event_handled_once") else {
        return;
    };
    let stream = TestStream::new(&url);
    let a = connect(&stream.config("a"), 64).await;
    let b = connect(&stream.config("b"), 64).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let qa = a
        .work_queue(
            config(Duration::from_secs(30)),
            recorder("a", Mode::Succeed, &handled),
        )
        .await
        .unwrap();
    let qb = b
        .work_queue(
            config(Duration::from_secs(30)),
            recorder("b", Mode::Succeed, &handled),
        )
        .await
        .unwrap();
    let ids = publish(&a, 600);
    wait_all(&handled, &ids, "shared").await;
    // Settle: anything handled twice would show up by now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handled = handled.lock().unwrap().clone();
    let mut per_event: HashMap<Uuid, usize> = HashMap::new();
    for (_, id) in &handled {
        *per_event.entry(*id).or_default() += 1;
    }
    assert!(
        per_event.values().all(|n| *n == 1),
        "an event was handled twice"
    );
    assert_eq!(per_event.len(), ids.len());
    qa.shutdown(WAIT).await;
    qb.shutdown(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_failing_or_silent_instance_took_are_handled_by_another() {
    let Some(url) = nats_url("events_a_failing_or_silent_instance_took_are_handled_by_another")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let a = connect(&stream.config("a"), 64).await;
    let b = connect(&stream.config("b"), 64).await;
    let handled = Arc::new(Mutex::new(Vec::new()));
    let ack_wait = Duration::from_secs(2);

    // Only A pulls, and A fails: nothing is handled, everything comes back.
    let failing = recorder("a", Mode::Fail, &handled);
    let qa = a
        .work_queue(config(ack_wait), failing.clone())
        .await
        .unwrap();
    let ids = publish(&a, 50);
    let deadline = tokio::time::Instant::now() + LONG;
    while *failing.offered.lock().unwrap() < 2 * ids.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry of the failed events"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(handled.lock().unwrap().is_empty());
    // Now A hangs in a call (an instance that stopped answering, its ack
    // deadline no longer extended once it is gone).
    *failing.mode.lock().unwrap() = Mode::Hang;
    while failing.held.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never took the events again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A is stuck in a call: stop it without a word (as SIGKILL would), and
    // start B: it gets A's events once their ack wait runs out.
    qa.shutdown(Duration::from_millis(1)).await;
    let qb = b
        .work_queue(config(ack_wait), recorder("b", Mode::Succeed, &handled))
        .await
        .unwrap();
    let more = publish(&b, 50);
    let held = failing.held.lock().unwrap().clone();
    wait_all(&handled, &held, "the events A held").await;
    let all: Vec<Uuid> = ids.iter().chain(&more).copied().collect();
    wait_all(&handled, &all, "after A stopped").await;
    assert!(
        handled.lock().unwrap().iter().all(|(who, _)| *who == "b"),
        "only B handled events"
    );
    qb.shutdown(WAIT).await;
}
