//! Consumer groups spanning instances: event-core's `Consumers` on two or
//! three `NatsCluster`s (separate connections, like separate instances)
//! sharing one group through `JetStreamGroups`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use event_core::log::MemoryLog;
use event_core::{
    AckMode, AttachRequest, ConsumerConfig, Consumers, Cursor, Delivery, EventLog, GroupBackend,
    JobProgress, Member, MemoryOffsets, Principal, StartAt,
};
use event_nats::testing::TestStream;
use event_nats::{JetStreamGroups, NatsCluster, bus_seq};
use tokio::sync::mpsc;
use uuid::Uuid;

/// Generous: two cores shared with other test runs.
const LONG: Duration = Duration::from_secs(180);
const PULL_WAIT: Duration = Duration::from_millis(500);

/// An instance's consumers, its groups in JetStream.
fn consumers(cluster: &NatsCluster) -> Consumers {
    Consumers::new(
        cluster.bus().clone(),
        Arc::new(MemoryLog::default()),
        Arc::new(MemoryOffsets::default()),
        ConsumerConfig::default(),
    )
    .with_group_backend(Arc::new(
        JetStreamGroups::new(cluster).with_pull_wait(PULL_WAIT),
    ))
}

fn group(name: &str, mode: AckMode, ack_wait: Duration) -> AttachRequest {
    AttachRequest {
        shared: true,
        mode,
        ack_wait: Some(ack_wait),
        start: StartAt::Latest,
        ..AttachRequest::new(name, Principal::anonymous())
    }
}

/// One delivery as a member saw it.
#[derive(Debug, Clone, Copy)]
struct Got {
    member: usize,
    seq: u64,
    id: Uuid,
    job: Uuid,
    redelivered: u32,
}

/// Runs `member` (number `index`) until it is dropped by the test: every
/// delivery goes to `out`; with `ack`, each is acknowledged at once. The
/// returned sender drops the member when it sends (or is dropped).
fn run_member(
    mut member: Member,
    index: usize,
    ack: bool,
    out: mpsc::UnboundedSender<Got>,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                d = member.recv() => match d {
                    Some(Delivery::Event { event, redelivered }) => {
                        if ack {
                            member.ack(vec![Cursor::Seq(event.seq())]);
                        }
                        let job = event.payload().job_id().expect("a job event");
                        let _ = out.send(Got { member: index, seq: event.seq(), id: event.id(), job, redelivered });
                    }
                    Some(Delivery::Gap { after }) => panic!("member {index}: gap after {after}"),
                    None => return,
                },
            }
        }
    });
    stop
}

/// The next `n` deliveries on `rx`.
async fn take(rx: &mut mpsc::UnboundedReceiver<Got>, n: usize, what: &str) -> Vec<Got> {
    let mut out = Vec::with_capacity(n);
    tokio::time::timeout(LONG, async {
        while out.len() < n {
            out.push(rx.recv().await.expect("members running"));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: {} of {n} deliveries within {LONG:?}", out.len()));
    out
}

/// Publishes `rounds` events for each of `jobs` jobs from `cluster`, and
/// waits until the stream holds them; their bus sequence numbers.
async fn publish(cluster: &NatsCluster, jobs: usize, rounds: usize) -> Vec<u64> {
    let first = cluster.last_stream_seq();
    let ids: Vec<Uuid> = (0..jobs).map(|_| Uuid::now_v7()).collect();
    for round in 0..rounds {
        for job_id in &ids {
            cluster.bus().publish(JobProgress {
                job_id: *job_id,
                note_id: None,
                progress: (round % 101) as u8,
                message: None,
            });
        }
        tokio::task::yield_now().await;
    }
    let last = first + (jobs * rounds) as u64;
    assert!(
        cluster.wait_for_stream_seq(last, LONG).await,
        "the stream holds every event"
    );
    (first + 1..=last).map(bus_seq).collect()
}

/// Waits until every partition of `group` is owned and each of `instances`
/// owns some; the owners by partition.
async fn wait_for_owners(
    cluster: &NatsCluster,
    group: &str,
    instances: &[&str],
) -> Vec<Option<String>> {
    let groups = JetStreamGroups::new(cluster);
    let mut last = Vec::new();
    let settled = tokio::time::timeout(LONG, async {
        loop {
            last = groups.owners(group).await.unwrap();
            if last.iter().all(Option::is_some)
                && instances
                    .iter()
                    .all(|i| last.iter().any(|o| o.as_deref() == Some(*i)))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "partitions not shared by {instances:?}: {last:?}"
    );
    last
}

fn check_order(got: &[Got]) {
    let mut last: HashMap<(usize, Uuid), u64> = HashMap::new();
    for g in got {
        if let Some(prev) = last.insert((g.member, g.job), g.seq) {
            assert!(prev < g.seq, "member {}: job events out of order", g.member);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_three_members_on_two_instances_shares_ten_thousand_events() {
    let Some(url) =
        nats_url("a_group_of_three_members_on_two_instances_shares_ten_thousand_events")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let a = connect(&stream.config("a"), 64).await;
    let b = connect(&stream.config("b"), 64).await;
    let (ca, cb) = (consumers(&a), consumers(&b));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wait = Duration::from_secs(30);
    let mut stops = Vec::new();
    for (i, c) in [&ca, &ca, &cb].into_iter().enumerate() {
        let member = c
            .attach(group("work", AckMode::Explicit, wait))
            .await
            .unwrap();
        stops.push(run_member(member, i, true, tx.clone()));
    }
    // Both instances pull their share of the partitions (A's two members
    // weigh twice B's one) before the stream starts.
    let owners = wait_for_owners(&a, "work", &["a", "b"]).await;
    let a_owns = owners.iter().filter(|o| o.as_deref() == Some("a")).count();
    assert_eq!((a_owns, owners.len() - a_owns), (11, 5), "{owners:?}");
    let published = publish(&a, 100, 100).await;
    let got = take(&mut rx, published.len(), "10,000 events").await;

    let seqs: Vec<u64> = got.iter().map(|g| g.seq).collect();
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(seqs.len(), unique.len(), "no duplicate without failures");
    assert_eq!(
        unique.into_iter().collect::<Vec<_>>(),
        published,
        "union is everything"
    );
    assert!(got.iter().all(|g| g.redelivered == 0));
    let shares: Vec<usize> = (0..3)
        .map(|i| got.iter().filter(|g| g.member == i).count())
        .collect();
    eprintln!("shares of members 0, 1 (instance A) and 2 (instance B): {shares:?}");
    assert!(
        shares.iter().all(|n| *n > 0),
        "a member got nothing: {shares:?}"
    );
    check_order(&got);
    // One job stays on one member, across the instances too.
    let mut owner: HashMap<Uuid, usize> = HashMap::new();
    for g in &got {
        assert_eq!(
            *owner.entry(g.job).or_insert(g.member),
            g.member,
            "job {} reached two members",
            g.job
        );
    }
    // Everything acknowledged: the group's floor reaches the last event.
    tokio::time::timeout(LONG, async {
        loop {
            let info = cb.list().await.unwrap();
            let work = info.iter().find(|i| i.name == "work").expect("listed");
            if work.pending == 0 && work.committed_seq == *published.last().unwrap() {
                assert_eq!(work.kind, "group");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("all acknowledged in JetStream");
    drop(stops);
    ca.delete("work").await.unwrap();
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_dropped_mid_stream_leaves_its_unacknowledged_events_to_the_others() {
    let Some(url) = nats_url("a_member_dropped_mid_stream_leaves_its_unacknowledged_events") else {
        return;
    };
    let stream = TestStream::new(&url);
    let a = connect(&stream.config("a"), 64).await;
    let b = connect(&stream.config("b"), 64).await;
    let (ca, cb) = (consumers(&a), consumers(&b));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let wait = Duration::from_secs(30);
    // Member 0 on A never acks; 1 (on A) and 2 (on B) ack everything.
    let m0 = ca
        .attach(group("pool", AckMode::Explicit, wait))
        .await
        .unwrap();
    let stop0 = run_member(m0, 0, false, tx.clone());
    let m1 = ca
        .attach(group("pool", AckMode::Explicit, wait))
        .await
        .unwrap();
    let _stop1 = run_member(m1, 1, true, tx.clone());
    let m2 = cb
        .attach(group("pool", AckMode::Explicit, wait))
        .await
        .unwrap();
    let _stop2 = run_member(m2, 2, true, tx.clone());

    let published = publish(&b, 50, 6).await;
    let first = take(&mut rx, published.len(), "first deliveries").await;
    let held: BTreeSet<u64> = first
        .iter()
        .filter(|g| g.member == 0)
        .map(|g| g.seq)
        .collect();
    assert!(!held.is_empty(), "member 0 got a share");
    // Member 0 goes away (its connection closed): long before ack_wait its
    // events reach the others, marked redelivered.
    let left_at = std::time::Instant::now();
    drop(stop0);
    let again = take(&mut rx, held.len(), "redeliveries").await;
    eprintln!(
        "{} events of the dropped member redelivered {:?} after it left",
        held.len(),
        left_at.elapsed()
    );
    assert!(
        again.iter().all(|g| g.member != 0 && g.redelivered >= 1),
        "{again:?}"
    );
    let again: BTreeSet<u64> = again.iter().map(|g| g.seq).collect();
    assert_eq!(again, held);
    // The stream goes on without it.
    let later = publish(&a, 10, 2).await;
    let rest = take(&mut rx, later.len(), "after the leave").await;
    let rest: BTreeSet<u64> = rest.iter().map(|g| g.seq).collect();
    assert_eq!(rest, later.into_iter().collect());
    cb.delete("pool").await.unwrap();
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

/// Instance A in a runtime of its own, so the test can kill it: its tasks
/// and its NATS connection vanish without a nak or a goodbye.
struct DoomedInstance {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DoomedInstance {
    /// Starts A with one explicit member that acks nothing; its deliveries
    /// go to `out` as member 0.
    async fn start(
        config: event_nats::NatsConfig,
        ack_wait: Duration,
        out: mpsc::UnboundedSender<Got>,
    ) -> DoomedInstance {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let a = connect(&config, 64).await;
                let ca = consumers(&a);
                let member = ca
                    .attach(group("crash", AckMode::Explicit, ack_wait))
                    .await
                    .unwrap();
                let stop = run_member(member, 0, false, out);
                let _ = ready_tx.send(());
                let _ = killed.await;
                // Keep everything alive until the runtime is dropped.
                std::mem::forget((a, ca, stop));
            });
            // Dropping the runtime drops every task mid-flight: no nak, the
            // connection just closes, as when the process dies.
            drop(runtime);
        });
        ready.await.expect("instance A started");
        DoomedInstance {
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("instance A's thread");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_s_pending_events_reach_another_instance_after_ack_wait() {
    let Some(url) = nats_url("a_crashed_instance_s_pending_events_reach_another_instance") else {
        return;
    };
    let stream = TestStream::new(&url);
    let ack_wait = Duration::from_secs(2);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut doomed = DoomedInstance::start(stream.config("a"), ack_wait, tx.clone()).await;
    let b = connect(&stream.config("b"), 64).await;
    let cb = consumers(&b);
    let member = cb
        .attach(group("crash", AckMode::Explicit, ack_wait))
        .await
        .unwrap();
    let _stop = run_member(member, 1, true, tx.clone());

    let published = publish(&b, 40, 5).await;
    let first = take(&mut rx, published.len(), "first deliveries").await;
    let held: BTreeSet<u64> = first
        .iter()
        .filter(|g| g.member == 0)
        .map(|g| g.seq)
        .collect();
    assert!(!held.is_empty(), "instance A got a share");
    let killed_at = std::time::Instant::now();
    doomed.kill();
    // Nobody gave them back: JetStream redelivers them after ack_wait, to B.
    let again = take(&mut rx, held.len(), "redeliveries after ack_wait").await;
    eprintln!(
        "{} events held by the killed instance redelivered to B {:?} after the kill",
        held.len(),
        killed_at.elapsed()
    );
    assert!(
        again.iter().all(|g| g.member == 1 && g.redelivered >= 1),
        "{again:?}"
    );
    let again: BTreeSet<u64> = again.iter().map(|g| g.seq).collect();
    assert_eq!(again, held);
    cb.delete("crash").await.unwrap();
    b.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_ack_group_on_three_instances_delivers_each_event_once() {
    let Some(url) = nats_url("an_auto_ack_group_on_three_instances_delivers_each_event_once")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let instances = [
        connect(&stream.config("a"), 64).await,
        connect(&stream.config("b"), 64).await,
        connect(&stream.config("c"), 64).await,
    ];
    let all: Vec<Consumers> = instances.iter().map(consumers).collect();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut stops = Vec::new();
    for (i, c) in all.iter().enumerate() {
        let member = c
            .attach(group("auto", AckMode::Auto, Duration::from_secs(30)))
            .await
            .unwrap();
        stops.push(run_member(member, i, false, tx.clone()));
    }
    // A member of another mode is refused while the group is in use.
    assert!(
        all[0]
            .attach(group("auto", AckMode::Explicit, Duration::from_secs(30)))
            .await
            .is_err()
    );
    let published = publish(&instances[1], 50, 20).await;
    let got = take(&mut rx, published.len(), "1,000 events").await;
    let seqs: BTreeSet<u64> = got.iter().map(|g| g.seq).collect();
    assert_eq!(seqs.len(), got.len(), "no duplicates");
    assert_eq!(seqs.into_iter().collect::<Vec<_>>(), published);
    check_order(&got);
    // Taking an event acknowledged it.
    tokio::time::timeout(LONG, async {
        loop {
            let info = all[2].list().await.unwrap();
            if info
                .iter()
                .any(|i| i.name == "auto" && i.pending == 0 && i.lag == 0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("all acknowledged by being taken");
    all[0].delete("auto").await.unwrap();
    for i in instances {
        i.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_sent_to_another_instance_reaches_the_one_holding_the_events() {
    let Some(url) = nats_url("an_ack_sent_to_another_instance_reaches_the_one_holding_the_events")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let a = connect(&stream.config("a"), 64).await;
    let b = connect(&stream.config("b"), 64).await;
    let (ca, cb) = (consumers(&a), consumers(&b));
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The member on A acks nothing itself (an SSE client acks by HTTP).
    let member = ca
        .attach(group("sse", AckMode::Explicit, Duration::from_secs(60)))
        .await
        .unwrap();
    let _stop = run_member(member, 0, false, tx);
    let published = publish(&a, 20, 5).await;
    let got = take(&mut rx, published.len(), "deliveries on A").await;
    // The ack requests land on B, which has no member of the group.
    let (by_seq, by_id) = got.split_at(50);
    assert_eq!(
        cb.ack("sse", by_seq.iter().map(|g| Cursor::Seq(g.seq)).collect())
            .await
            .unwrap(),
        0
    );
    let ids: Vec<Cursor> = by_id.iter().map(|g| Cursor::Id(g.id)).collect();
    assert_eq!(cb.ack("sse", ids).await.unwrap(), 0);
    // A settled them in JetStream long before ack_wait (60 s).
    tokio::time::timeout(LONG, async {
        loop {
            let info = cb.list().await.unwrap();
            let sse = info.iter().find(|i| i.name == "sse").expect("listed on B");
            if sse.pending == 0 && sse.committed_seq == *published.last().unwrap() {
                assert_eq!(sse.members, 0, "members counts this instance's");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("forwarded acks settled by A");
    assert!(rx.try_recv().is_err(), "nothing delivered again");
    ca.delete("sse").await.unwrap();
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_settings_are_refused_while_another_instance_uses_the_group() {
    let Some(url) = nats_url("other_settings_are_refused_while_another_instance_uses_the_group")
    else {
        return;
    };
    let stream = TestStream::new(&url);
    let a = connect(&stream.config("a"), 64).await;
    let b = connect(&stream.config("b"), 64).await;
    let (ca, cb) = (consumers(&a), consumers(&b));
    let thirty = Duration::from_secs(30);
    // A holds an unacknowledged event of the explicit group.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let member = ca
        .attach(group("cfg", AckMode::Explicit, thirty))
        .await
        .unwrap();
    let stop = run_member(member, 0, false, tx);
    let published = publish(&a, 1, 1).await;
    assert_eq!(take(&mut rx, 1, "A's event").await[0].seq, published[0]);
    let refused = cb
        .attach(group("cfg", AckMode::Auto, thirty))
        .await
        .expect_err("B may not open it as auto while A uses it");
    assert_eq!(refused.code(), "consumer_conflict", "{refused}");
    // Once A's member left (its event given back) and A's last pull
    // expired, B's settings replace the old ones.
    drop(stop);
    let mut opened = tokio::time::timeout(LONG, async {
        loop {
            match cb.attach(group("cfg", AckMode::Auto, thirty)).await {
                Ok(m) => return m,
                Err(event_core::ConsumerError::Mismatch { .. }) => {
                    tokio::time::sleep(PULL_WAIT).await;
                }
                Err(other) => panic!("{other}"),
            }
        }
    })
    .await
    .expect("opened once nobody uses it");
    assert_eq!(opened.mode(), AckMode::Auto);
    let listed = ca.list().await.unwrap();
    let cfg = listed.iter().find(|i| i.name == "cfg").unwrap();
    assert_eq!(
        cfg.ack,
        AckMode::Auto,
        "the group's settings changed in JetStream"
    );
    // The event A gave back reaches B.
    match tokio::time::timeout(LONG, opened.recv()).await {
        Ok(Some(Delivery::Event { event, redelivered })) => {
            assert_eq!((event.seq(), redelivered), (published[0], 1));
        }
        other => panic!("expected A's event again, got {other:?}"),
    }
    drop(opened);
    cb.delete("cfg").await.unwrap();
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}

/// The deliveries `member` gets until a gap: how many events, and the gap.
async fn until_gap(member: &mut Member, what: &str) -> (usize, u64) {
    let mut events = 0;
    let after = tokio::time::timeout(LONG, async {
        loop {
            match member.recv().await {
                Some(Delivery::Event { .. }) => events += 1,
                Some(Delivery::Gap { after }) => return after,
                None => panic!("{what}: member ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: no gap within {LONG:?} ({events} events)"));
    (events, after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_events_a_group_had_not_settled_is_a_gap_for_its_members() {
    let Some(url) = nats_url("a_purge_of_events_a_group_had_not_settled_is_a_gap") else {
        return;
    };
    let stream = TestStream::new(&url);
    let a = connect(&stream.config("a"), 64).await;
    let b = connect(&stream.config("b"), 64).await;
    let (ca, cb) = (consumers(&a), consumers(&b));
    let ack_wait = Duration::from_secs(120);
    // `slow` (a member on each instance) never acks; `done` acks at once.
    let mut slow_a = ca
        .attach(group("slow", AckMode::Explicit, ack_wait))
        .await
        .unwrap();
    let mut slow_b = cb
        .attach(group("slow", AckMode::Explicit, ack_wait))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let done = cb
        .attach(group("done", AckMode::Explicit, ack_wait))
        .await
        .unwrap();
    let _done = run_member(done, 0, true, tx);
    wait_for_owners(&a, "slow", &["a", "b"]).await;
    wait_for_owners(&a, "done", &["b"]).await;

    let published = publish(&a, 8, 5).await;
    take(&mut rx, published.len(), "the acking group").await;
    let groups = JetStreamGroups::new(&a);
    tokio::time::timeout(LONG, async {
        loop {
            let state = groups.info("done").await.unwrap().unwrap();
            if state.pending == 0 && state.lag == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the acking group settled everything");

    // `job` keeps its newest event: the others go.
    let through = a
        .log()
        .prune_topic(
            "job",
            &event_core::Retention {
                max_events: Some(1),
                max_age: None,
                max_bytes: None,
            },
            time::OffsetDateTime::now_utc(),
        )
        .await
        .unwrap();
    assert_eq!(through, Some(published[published.len() - 2]));
    // Both members of the group that had not settled them are told, on
    // each instance, after at most what they were given.
    let ((got_a, gap_a), (got_b, gap_b)) = tokio::join!(
        until_gap(&mut slow_a, "slow on A"),
        until_gap(&mut slow_b, "slow on B")
    );
    assert!(got_a + got_b <= published.len(), "{got_a} + {got_b}");
    assert_eq!(gap_a, gap_b, "one notice");
    assert!(gap_a < published[0], "after {gap_a}: before the first lost");
    // The group that had settled everything is not: its member (which
    // panics at a gap) takes the next event as usual.
    let next = publish(&a, 1, 1).await;
    let got = take(&mut rx, 1, "the next event").await;
    assert_eq!(got[0].seq, next[0]);

    for c in [&ca, &cb] {
        let _ = c.delete("slow").await;
        let _ = c.delete("done").await;
    }
    a.shutdown(Duration::from_secs(2)).await;
    b.shutdown(Duration::from_secs(2)).await;
}
