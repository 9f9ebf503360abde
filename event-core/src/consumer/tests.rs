use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::*;
use crate::bus::{BusConfig, SeqStart};
use crate::event::{Event, EventMeta};
use crate::log::{LogConfig, LogWriter, MemoryLog};
use crate::payload::{JobProgress, ServerEvent};

mod topics;

const WAIT: Duration = Duration::from_secs(10);

struct Fixture {
    bus: EventBus,
    log: MemoryLog,
    store: Arc<MemoryOffsets>,
    _writer: LogWriter,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::after(MemoryLog::default(), Arc::new(MemoryOffsets::default()), 1).await
    }

    /// A process over an existing log and store (a restart), its sequence
    /// starting at `first`.
    async fn after(log: MemoryLog, store: Arc<MemoryOffsets>, first: u64) -> Fixture {
        let bus = EventBus::new(BusConfig {
            seq_start: SeqStart::At(first),
            ..BusConfig::default()
        });
        let writer = LogWriter::start(&bus, Arc::new(log.clone()), LogConfig::default())
            .await
            .unwrap();
        Fixture {
            bus,
            log,
            store,
            _writer: writer,
        }
    }

    fn consumers(&self, config: ConsumerConfig) -> Consumers {
        Consumers::new(
            self.bus.clone(),
            Arc::new(self.log.clone()),
            self.store.clone(),
            config,
        )
    }

    /// Publishes one progress event per `(job, step)` and waits for the log.
    async fn publish(&self, events: impl IntoIterator<Item = (Uuid, u8)>) -> Vec<u64> {
        let payloads: Vec<ServerEvent> = events
            .into_iter()
            .map(|(job_id, progress)| {
                ServerEvent::JobProgress(JobProgress {
                    job_id,
                    note_id: None,
                    progress,
                    message: None,
                })
            })
            .collect();
        self.bus
            .publish_durable(payloads, &EventMeta::default())
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq())
            .collect()
    }
}

fn request(name: &str) -> AttachRequest {
    AttachRequest::new(name, Principal::anonymous())
}

fn group(name: &str, mode: AckMode) -> AttachRequest {
    AttachRequest {
        shared: true,
        mode,
        ..request(name)
    }
}

/// The next `n` event deliveries of `member` (gaps fail the test).
async fn take(member: &mut Member, n: usize) -> Vec<(u64, u32)> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(WAIT, member.recv()).await {
            Ok(Some(Delivery::Event { event, redelivered })) => {
                out.push((event.seq(), redelivered))
            }
            Ok(Some(Delivery::Gap { after })) => panic!("unexpected gap after {after}"),
            Ok(None) => panic!("member closed after {} of {n}", out.len()),
            Err(_) => panic!("only {} of {n} deliveries within {WAIT:?}", out.len()),
        }
    }
    out
}

fn seqs(deliveries: &[(u64, u32)]) -> Vec<u64> {
    deliveries.iter().map(|d| d.0).collect()
}

/// Waits until `check` holds for the consumer's listing.
async fn until_info(consumers: &Consumers, name: &str, check: impl Fn(&ConsumerInfo) -> bool) {
    tokio::time::timeout(WAIT, async {
        loop {
            let list = consumers.list().await.unwrap();
            if list.iter().any(|i| i.name == name && check(i)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{name}: {:?}", "condition not reached"));
}

#[tokio::test]
async fn a_consumer_resumes_after_its_committed_offset_when_it_reconnects() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let job = Uuid::now_v7();
    let mut member = consumers.attach(request("tail")).await.unwrap();
    let first = f.publish((0..10).map(|i| (job, i))).await;
    assert_eq!(seqs(&take(&mut member, 10).await), first);
    drop(member);
    // Published while nobody is attached: kept for the consumer.
    let away = f.publish((10..15).map(|i| (job, i))).await;
    until_info(&consumers, "tail", |i| i.members == 0 && i.lag == 5).await;
    let mut member = consumers.attach(request("tail")).await.unwrap();
    assert_eq!(seqs(&take(&mut member, 5).await), away);
    until_info(&consumers, "tail", |i| {
        i.committed_seq == away[4] && i.lag == 0
    })
    .await;
}

#[tokio::test]
async fn the_offset_survives_a_restart() {
    let f = Fixture::new().await;
    let job = Uuid::now_v7();
    {
        let consumers = f.consumers(ConsumerConfig::default());
        let mut member = consumers.attach(request("durable")).await.unwrap();
        let seen = f.publish((0..4).map(|i| (job, i))).await;
        assert_eq!(seqs(&take(&mut member, 4).await), seen);
        drop(member);
        until_info(&consumers, "durable", |i| i.members == 0).await;
        consumers.shutdown().await;
    }
    let missed = f.publish((4..7).map(|i| (job, i))).await;
    // A new process over the same log and store.
    let restarted = Fixture::after(f.log.clone(), f.store.clone(), 1_000).await;
    let consumers = restarted.consumers(ConsumerConfig::default());
    let mut member = consumers.attach(request("durable")).await.unwrap();
    assert_eq!(seqs(&take(&mut member, 3).await), missed);
    let next = restarted.publish([(job, 9)]).await;
    assert_eq!(seqs(&take(&mut member, 1).await), next);
}

#[tokio::test]
async fn explicit_acks_redeliver_what_is_not_acknowledged_in_time() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let member = consumers
        .attach(AttachRequest {
            mode: AckMode::Explicit,
            ack_wait: Some(Duration::from_secs(1)),
            ..request("worker")
        })
        .await
        .unwrap();
    let mut member = member;
    let job = Uuid::now_v7();
    let published = f.publish((0..4).map(|i| (job, i))).await;
    let first = take(&mut member, 4).await;
    assert!(first.iter().all(|d| d.1 == 0), "{first:?}");
    // Ack two (one by the REST path); the other two come back.
    member.ack(vec![Cursor::Seq(published[0])]);
    assert_eq!(
        consumers
            .ack(
                "worker",
                vec![Cursor::Seq(published[2]), Cursor::Seq(99_999)]
            )
            .await
            .unwrap(),
        1
    );
    let again = take(&mut member, 2).await;
    assert_eq!(seqs(&again), [published[1], published[3]]);
    assert!(again.iter().all(|d| d.1 == 1), "{again:?}");
    member.ack(vec![Cursor::Seq(published[1]), Cursor::Seq(published[3])]);
    until_info(&consumers, "worker", |i| {
        i.pending == 0 && i.committed_seq == published[3]
    })
    .await;
}

#[tokio::test]
async fn a_group_splits_the_stream_by_entity_without_loss_or_duplicates() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(consumers.attach(group("g", AckMode::Auto)).await.unwrap());
    }
    let jobs: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let mut published = Vec::new();
    for round in 0..10u8 {
        published.extend(f.publish(jobs.iter().map(|j| (*j, round))).await);
    }
    // Every member takes what it is given until all 300 are accounted for.
    let mut got: Vec<Vec<Arc<Event>>> = vec![Vec::new(); 3];
    tokio::time::timeout(WAIT, async {
        while got.iter().map(Vec::len).sum::<usize>() < published.len() {
            for (i, m) in members.iter().enumerate() {
                let mut out = Vec::new();
                m.drain(&mut out);
                for d in out {
                    if let Delivery::Event { event, .. } = d {
                        got[i].push(event);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("all events delivered");
    let all: Vec<u64> = got.iter().flatten().map(|e| e.seq()).collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "no duplicates");
    assert_eq!(unique.into_iter().collect::<Vec<_>>(), published);
    // Each job on one member, in order.
    let mut owner: HashMap<Uuid, usize> = HashMap::new();
    for (i, events) in got.iter().enumerate() {
        assert!(!events.is_empty(), "member {i} got nothing");
        let mut last: HashMap<Uuid, u64> = HashMap::new();
        for e in events {
            let job = e.payload().job_id().unwrap();
            assert_eq!(*owner.entry(job).or_insert(i), i, "job split over members");
            let prev = last.insert(job, e.seq()).unwrap_or(0);
            assert!(e.seq() > prev, "out of order");
        }
    }
}

#[tokio::test]
async fn a_group_member_that_leaves_gives_its_unacknowledged_events_to_the_others() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let mut a = consumers
        .attach(group("pool", AckMode::Explicit))
        .await
        .unwrap();
    let mut b = consumers
        .attach(group("pool", AckMode::Explicit))
        .await
        .unwrap();
    let jobs: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();
    let published = f.publish(jobs.iter().map(|j| (*j, 1))).await;
    // Collect until both together hold all 20 (each its share).
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got_a.len() + got_b.len() < published.len() {
            tokio::select! {
                Some(Delivery::Event { event, .. }) = a.recv() => got_a.push(event.seq()),
                Some(Delivery::Event { event, .. }) = b.recv() => got_b.push(event.seq()),
            }
        }
    })
    .await
    .expect("all delivered once");
    assert!(
        !got_a.is_empty() && !got_b.is_empty(),
        "{got_a:?} {got_b:?}"
    );
    // `a` acks nothing and dies: `b` receives a's share, marked redelivered.
    b.ack(got_b.iter().map(|s| Cursor::Seq(*s)).collect());
    drop(a);
    let again = take(&mut b, got_a.len()).await;
    assert_eq!(seqs(&again), got_a);
    assert!(again.iter().all(|d| d.1 == 1));
}

#[tokio::test]
async fn a_new_connection_takes_over_a_single_consumer_and_a_cursor_repositions_it() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let job = Uuid::now_v7();
    let old = consumers.attach(request("solo")).await.unwrap();
    let published = f.publish((0..6).map(|i| (job, i))).await;
    let mut new = consumers
        .attach(AttachRequest {
            cursor: Some(Cursor::Seq(published[2])),
            ..request("solo")
        })
        .await
        .unwrap();
    tokio::time::timeout(WAIT, old.closed())
        .await
        .expect("the old connection is closed");
    assert_eq!(seqs(&take(&mut new, 3).await), &published[3..]);
}

#[tokio::test]
async fn settings_names_and_counts_are_checked() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig {
        max_consumers: 1,
        max_members: 1,
        ..ConsumerConfig::default()
    });
    for bad in ["", "a b", &"x".repeat(MAX_NAME_BYTES + 1)] {
        assert!(matches!(
            consumers.attach(request(bad)).await,
            Err(ConsumerError::Invalid(_))
        ));
    }
    assert!(matches!(
        consumers
            .attach(AttachRequest {
                ack_wait: Some(Duration::from_millis(10)),
                ..request("ok")
            })
            .await,
        Err(ConsumerError::Invalid(_))
    ));
    let _g = consumers.attach(group("one", AckMode::Auto)).await.unwrap();
    assert!(matches!(
        consumers.attach(group("one", AckMode::Auto)).await,
        Err(ConsumerError::TooManyMembers { max: 1, .. })
    ));
    assert!(matches!(
        consumers.attach(group("one", AckMode::Explicit)).await,
        Err(ConsumerError::Mismatch { .. })
    ));
    assert!(matches!(
        consumers.attach(request("one")).await,
        Err(ConsumerError::Mismatch { .. })
    ));
    assert!(matches!(
        consumers.attach(request("two")).await,
        Err(ConsumerError::TooMany(1))
    ));
}

#[tokio::test]
async fn deleting_a_consumer_closes_its_members_and_forgets_it() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let member = consumers.attach(request("gone")).await.unwrap();
    consumers.delete("gone").await.unwrap();
    tokio::time::timeout(WAIT, member.closed())
        .await
        .expect("closed");
    assert!(consumers.list().await.unwrap().is_empty());
    assert!(matches!(
        consumers.delete("gone").await,
        Err(ConsumerError::NotFound(_))
    ));
    assert!(matches!(
        consumers.ack("gone", vec![Cursor::Seq(1)]).await,
        Err(ConsumerError::NotFound(_))
    ));
}

#[tokio::test]
async fn a_filter_skips_events_and_the_offset_still_moves() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let wanted = Uuid::now_v7();
    let mut member = consumers
        .attach(AttachRequest {
            filter: EventFilter::all().with_entity(wanted),
            ..request("one-job")
        })
        .await
        .unwrap();
    let other = f.publish((0..5).map(|i| (Uuid::now_v7(), i))).await;
    let mine = f.publish([(wanted, 50)]).await;
    assert_eq!(seqs(&take(&mut member, 1).await), mine);
    until_info(&consumers, "one-job", |i| i.committed_seq == mine[0]).await;
    assert!(other[4] < mine[0]);
}

#[tokio::test]
async fn the_read_ahead_is_bounded_by_max_ack_pending() {
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig {
        max_ack_pending: 5,
        ..ConsumerConfig::default()
    });
    let mut member = consumers
        .attach(AttachRequest {
            mode: AckMode::Explicit,
            ..request("slow")
        })
        .await
        .unwrap();
    let job = Uuid::now_v7();
    let published = f.publish((0..20).map(|i| (job, i))).await;
    let first = take(&mut member, 5).await;
    until_info(&consumers, "slow", |i| i.pending == 5).await;
    // Nothing more until acks make room.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), member.recv())
            .await
            .is_err()
    );
    member.ack(first.iter().map(|d| Cursor::Seq(d.0)).collect());
    assert_eq!(seqs(&take(&mut member, 5).await), &published[5..10]);
}

#[tokio::test]
async fn a_consumer_behind_the_retention_gets_a_gap_then_the_oldest_retained_event() {
    use crate::log::{EventLog, Retention};
    let f = Fixture::new().await;
    let consumers = f.consumers(ConsumerConfig::default());
    let job = Uuid::now_v7();
    let mut member = consumers.attach(request("slow")).await.unwrap();
    let read = f.publish((0..4).map(|i| (job, i))).await;
    assert_eq!(seqs(&take(&mut member, 4).await), read);
    drop(member);
    until_info(&consumers, "slow", |i| {
        i.members == 0 && i.committed_seq == read[3]
    })
    .await;
    let later = f.publish((4..10).map(|i| (job, i))).await;
    // Retention keeps the newest three: the consumer's next three are gone.
    let kept = Retention {
        max_age: None,
        max_events: Some(3),
        max_bytes: None,
    };
    f.log
        .prune(&kept, time::OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(f.log.first_seq().await.unwrap(), later[3]);

    let mut member = consumers.attach(request("slow")).await.unwrap();
    match tokio::time::timeout(WAIT, member.recv()).await {
        Ok(Some(Delivery::Gap { after })) => assert_eq!(after, read[3]),
        other => panic!("expected the retention gap first, got {other:?}"),
    }
    assert_eq!(seqs(&take(&mut member, 3).await), later[3..]);
}

/// An [`AckRelay`] between the processes of one test: every listener of a
/// name gets what is forwarded for it.
#[derive(Default)]
struct LocalRelay {
    listeners:
        std::sync::Mutex<HashMap<String, Vec<tokio::sync::mpsc::UnboundedSender<Vec<Cursor>>>>>,
}

#[async_trait::async_trait]
impl AckRelay for LocalRelay {
    async fn forward(&self, name: &str, acks: &[Cursor]) -> Result<bool, ConsumerError> {
        let mut listeners = self.listeners.lock().unwrap();
        let open = listeners.entry(name.to_owned()).or_default();
        open.retain(|tx| tx.send(acks.to_vec()).is_ok());
        Ok(!open.is_empty())
    }

    async fn listen(
        &self,
        name: &str,
    ) -> Option<futures_util::stream::BoxStream<'static, Vec<Cursor>>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.listeners
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default()
            .push(tx);
        Some(Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|acks| (acks, rx))
        })))
    }
}

/// Two processes over one log and offset store, sharing one relay.
fn two_processes(f: &Fixture) -> (Consumers, Consumers) {
    let relay = Arc::new(LocalRelay::default());
    let config = ConsumerConfig::default;
    (
        f.consumers(config()).with_ack_relay(relay.clone()),
        f.consumers(config()).with_ack_relay(relay),
    )
}

/// An explicit-ack consumer whose ack wait is far beyond the tests' wait:
/// only an ack that arrives can settle its events.
fn explicit(name: &str) -> AttachRequest {
    AttachRequest {
        mode: AckMode::Explicit,
        ack_wait: Some(Duration::from_secs(300)),
        ..request(name)
    }
}

/// Publishes `n` events, checks `member` receives them, and acks them all
/// through `other` (which holds none of them: it answers 0).
async fn ack_elsewhere(f: &Fixture, member: &mut Member, other: &Consumers, n: u8) -> Vec<u64> {
    let job = Uuid::now_v7();
    let published = f.publish((0..n).map(|i| (job, i))).await;
    assert_eq!(seqs(&take(member, n as usize).await), published);
    let acks: Vec<Cursor> = published.iter().map(|&s| Cursor::Seq(s)).collect();
    assert_eq!(other.ack("worker", acks).await.unwrap(), 0);
    published
}

#[tokio::test]
async fn an_ack_sent_to_another_process_reaches_the_consumer_through_the_relay() {
    let f = Fixture::new().await;
    // The consumer runs on `a`; `b` never ran it.
    let (a, b) = two_processes(&f);
    let mut member = a.attach(explicit("worker")).await.unwrap();
    let published = ack_elsewhere(&f, &mut member, &b, 3).await;
    until_info(&a, "worker", |i| {
        i.pending == 0 && i.committed_seq == published[2]
    })
    .await;
}

#[tokio::test]
async fn a_process_whose_member_left_passes_acks_on_to_the_one_streaming() {
    let f = Fixture::new().await;
    let (a, b) = two_processes(&f);
    // The consumer ran on `b` once: its dispatcher is still there, empty.
    drop(b.attach(explicit("worker")).await.unwrap());
    until_info(&b, "worker", |i| i.members == 0).await;
    let mut member = a.attach(explicit("worker")).await.unwrap();
    let published = ack_elsewhere(&f, &mut member, &b, 2).await;
    until_info(&a, "worker", |i| {
        i.pending == 0 && i.committed_seq == published[1]
    })
    .await;
}
