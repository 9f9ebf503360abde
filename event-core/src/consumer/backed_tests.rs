//! Groups kept in a [`GroupBackend`], with an in-memory backend shared by
//! two [`Consumers`] (two processes).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use time::OffsetDateTime;
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;
use uuid::Uuid;

use super::*;
use crate::bus::BusConfig;
use crate::event::{Event, EventMeta};
use crate::log::MemoryLog;
use crate::payload::{JobProgress, ServerEvent};

const WAIT: Duration = Duration::from_secs(10);
/// How long one in-memory pull waits for events.
const PULL_WAIT: Duration = Duration::from_millis(100);

struct Group {
    mode: AckMode,
    ack_wait: Duration,
    /// Index of the next never-delivered event.
    next: usize,
    /// seq -> deadline of its current delivery.
    pending: BTreeMap<u64, Instant>,
    /// Given back or expired: delivered again first.
    again: BTreeSet<u64>,
    /// Deliveries of each event so far.
    deliveries: HashMap<u64, u32>,
    /// Every event acknowledged.
    acked: BTreeSet<u64>,
}

#[derive(Default)]
struct State {
    events: Vec<Arc<Event>>,
    groups: HashMap<String, Group>,
    pulls: usize,
}

/// A JetStream-like backend in memory: each event to one puller, again at
/// once on a nak and after `ack_wait` without a settlement.
#[derive(Clone)]
struct MemoryGroups {
    state: Arc<Mutex<State>>,
    notify: Arc<Notify>,
    /// Forwarded acks, to every process: `(group, acks)`.
    acks: broadcast::Sender<(String, Vec<Cursor>)>,
    /// Notices of lost events, to every process: `(group, after)`.
    gaps: broadcast::Sender<(String, u64)>,
}

impl Default for MemoryGroups {
    fn default() -> Self {
        MemoryGroups {
            state: Arc::default(),
            notify: Arc::default(),
            acks: broadcast::channel(64).0,
            gaps: broadcast::channel(64).0,
        }
    }
}

impl MemoryGroups {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Appends one progress event per job, numbered after the last.
    fn publish(&self, jobs: impl IntoIterator<Item = Uuid>) -> Vec<u64> {
        let mut state = self.lock();
        let mut seqs = Vec::new();
        for job_id in jobs {
            let seq = state.events.len() as u64 + 1;
            state.events.push(Arc::new(Event::new(
                seq,
                Uuid::now_v7(),
                OffsetDateTime::now_utc(),
                EventMeta::default(),
                ServerEvent::JobProgress(JobProgress {
                    job_id,
                    note_id: None,
                    progress: 1,
                    message: None,
                }),
            )));
            seqs.push(seq);
        }
        drop(state);
        self.notify.notify_waiters();
        seqs
    }

    fn pulls(&self) -> usize {
        self.lock().pulls
    }

    fn acked(&self, group: &str) -> BTreeSet<u64> {
        self.lock().groups[group].acked.clone()
    }

    /// The next event due for a puller of `group`, if any.
    fn next(&self, group: &str) -> Option<Result<GroupMessage, ConsumerError>> {
        let mut state = self.lock();
        let State { events, groups, .. } = &mut *state;
        let Some(g) = groups.get_mut(group) else {
            return Some(Err(ConsumerError::NotFound(group.to_owned())));
        };
        let now = Instant::now();
        let expired: Vec<u64> = g
            .pending
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in expired {
            g.pending.remove(&seq);
            g.again.insert(seq);
        }
        let seq = match g.again.pop_first() {
            Some(seq) => seq,
            None if g.next < events.len() => {
                g.next += 1;
                g.next as u64
            }
            None => return None,
        };
        let delivered = g.deliveries.entry(seq).or_insert(0);
        *delivered += 1;
        let delivered = *delivered;
        g.pending.insert(seq, now + g.ack_wait);
        Some(Ok(GroupMessage {
            event: events[seq as usize - 1].clone(),
            delivered,
            handle: Box::new(MemoryHandle {
                groups: self.clone(),
                group: group.to_owned(),
                seq,
            }),
        }))
    }
}

struct MemoryHandle {
    groups: MemoryGroups,
    group: String,
    seq: u64,
}

#[async_trait]
impl AckHandle for MemoryHandle {
    async fn settle(&self, how: Settle) -> Result<(), ConsumerError> {
        let mut state = self.groups.lock();
        let Some(g) = state.groups.get_mut(&self.group) else {
            return Ok(());
        };
        let ack_wait = g.ack_wait;
        if let Some(deadline) = g.pending.get_mut(&self.seq) {
            match how {
                Settle::Ack => {
                    g.pending.remove(&self.seq);
                    g.acked.insert(self.seq);
                }
                Settle::Nak => {
                    g.pending.remove(&self.seq);
                    g.again.insert(self.seq);
                }
                Settle::InProgress => *deadline = Instant::now() + ack_wait,
            }
        }
        drop(state);
        self.groups.notify.notify_waiters();
        Ok(())
    }
}

struct MemoryFeed {
    groups: MemoryGroups,
    group: String,
}

#[async_trait]
impl GroupFeed for MemoryFeed {
    async fn pull(&self, max: usize) -> Result<GroupPull, ConsumerError> {
        self.groups.lock().pulls += 1;
        let until = Instant::now() + PULL_WAIT;
        let (groups, group) = (self.groups.clone(), self.group.clone());
        Ok(futures_util::stream::unfold(max, move |left| {
            let (groups, group) = (groups.clone(), group.clone());
            async move {
                if left == 0 {
                    return None;
                }
                loop {
                    let notified = groups.notify.notified();
                    if let Some(item) = groups.next(&group) {
                        // Let the other processes' pulls take their turn,
                        // as JetStream spreads events over waiting pulls.
                        tokio::task::yield_now().await;
                        return Some((item, left - 1));
                    }
                    // Expiries are noticed at least every 20 ms.
                    let wake = (Instant::now() + Duration::from_millis(20)).min(until);
                    if tokio::time::timeout_at(wake, notified).await.is_err()
                        && Instant::now() >= until
                    {
                        return None;
                    }
                }
            }
        })
        .boxed())
    }

    fn forwarded_acks(&self) -> Option<futures_util::stream::BoxStream<'static, Vec<Cursor>>> {
        Some(of_group(self.groups.acks.subscribe(), self.group.clone()))
    }

    fn gaps(&self) -> Option<futures_util::stream::BoxStream<'static, u64>> {
        Some(of_group(self.groups.gaps.subscribe(), self.group.clone()))
    }
}

/// The items of `rx` for `group`.
fn of_group<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<(String, T)>,
    group: String,
) -> futures_util::stream::BoxStream<'static, T> {
    futures_util::stream::unfold(rx, move |mut rx| {
        let group = group.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok((name, item)) if name == group => return Some((item, rx)),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
    .boxed()
}

#[async_trait]
impl GroupBackend for MemoryGroups {
    async fn open(&self, spec: &GroupSpec) -> Result<Arc<dyn GroupFeed>, ConsumerError> {
        let mut state = self.lock();
        let start = match spec.start {
            StartAt::Latest => state.events.len(),
            StartAt::Earliest => 0,
        };
        let g = state
            .groups
            .entry(spec.name.clone())
            .or_insert_with(|| Group {
                mode: spec.mode,
                ack_wait: spec.ack_wait,
                next: start,
                pending: BTreeMap::new(),
                again: BTreeSet::new(),
                deliveries: HashMap::new(),
                acked: BTreeSet::new(),
            });
        if g.mode != spec.mode && !g.pending.is_empty() {
            return Err(ConsumerError::Mismatch {
                name: spec.name.clone(),
                reason: format!("ack={}", g.mode.as_str()),
            });
        }
        g.mode = spec.mode;
        g.ack_wait = spec.ack_wait;
        Ok(Arc::new(MemoryFeed {
            groups: self.clone(),
            group: spec.name.clone(),
        }))
    }

    async fn info(&self, name: &str) -> Result<Option<GroupState>, ConsumerError> {
        let state = self.lock();
        Ok(state.groups.get(name).map(|g| GroupState {
            name: name.to_owned(),
            mode: g.mode,
            ack_wait: g.ack_wait,
            committed: g.pending.keys().next().map_or(g.next as u64, |s| s - 1),
            lag: (state.events.len() - g.next + g.pending.len()) as u64,
            pending: g.pending.len(),
            last_active: OffsetDateTime::now_utc(),
        }))
    }

    async fn list(&self) -> Result<Vec<GroupState>, ConsumerError> {
        let names: Vec<String> = self.lock().groups.keys().cloned().collect();
        let mut out = Vec::new();
        for name in names {
            out.extend(self.info(&name).await?);
        }
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<bool, ConsumerError> {
        Ok(self.lock().groups.remove(name).is_some())
    }

    async fn forward_acks(&self, name: &str, acks: &[Cursor]) -> Result<bool, ConsumerError> {
        let _ = self.acks.send((name.to_owned(), acks.to_vec()));
        Ok(true)
    }
}

/// A process: its own consumers over the shared backend.
fn process(groups: &MemoryGroups, config: ConsumerConfig) -> Consumers {
    Consumers::new(
        EventBus::new(BusConfig::default()),
        Arc::new(MemoryLog::default()),
        Arc::new(MemoryOffsets::default()),
        config,
    )
    .with_group_backend(Arc::new(groups.clone()))
}

fn group(name: &str, mode: AckMode) -> AttachRequest {
    AttachRequest {
        shared: true,
        mode,
        ack_wait: Some(Duration::from_secs(1)),
        ..AttachRequest::new(name, Principal::anonymous())
    }
}

/// Drains every member until `n` events arrived in all; each member's
/// events in arrival order, with their `redelivered`.
async fn collect(members: &[&Member], n: usize) -> Vec<Vec<(Arc<Event>, u32)>> {
    let mut got: Vec<Vec<(Arc<Event>, u32)>> = vec![Vec::new(); members.len()];
    tokio::time::timeout(WAIT, async {
        while got.iter().map(Vec::len).sum::<usize>() < n {
            for (i, m) in members.iter().enumerate() {
                let mut out = Vec::new();
                m.drain(&mut out);
                for d in out {
                    if let Delivery::Event { event, redelivered } = d {
                        got[i].push((event, redelivered));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "{} of {n} events within {WAIT:?}",
            got.iter().map(Vec::len).sum::<usize>()
        )
    });
    got
}

fn seqs(events: &[(Arc<Event>, u32)]) -> Vec<u64> {
    events.iter().map(|(e, _)| e.seq()).collect()
}

#[tokio::test]
async fn a_backed_group_spans_two_processes_without_loss_or_duplicates() {
    let groups = MemoryGroups::default();
    let (p1, p2) = (
        process(&groups, ConsumerConfig::default()),
        process(&groups, ConsumerConfig::default()),
    );
    let a = p1.attach(group("g", AckMode::Auto)).await.unwrap();
    let b = p1.attach(group("g", AckMode::Auto)).await.unwrap();
    let c = p2.attach(group("g", AckMode::Auto)).await.unwrap();
    let jobs: Vec<Uuid> = (0..30).map(|_| Uuid::new_v4()).collect();
    let mut published = Vec::new();
    for _ in 0..10 {
        published.extend(groups.publish(jobs.iter().copied()));
    }
    let got = collect(&[&a, &b, &c], published.len()).await;
    let all: Vec<u64> = got.iter().flat_map(|m| seqs(m)).collect();
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), unique.len(), "no duplicates");
    assert_eq!(unique.into_iter().collect::<Vec<_>>(), published);
    for (i, events) in got.iter().enumerate() {
        assert!(!events.is_empty(), "member {i} got nothing");
        let mut last: HashMap<Uuid, u64> = HashMap::new();
        for (e, redelivered) in events {
            assert_eq!(*redelivered, 0);
            let prev = last.insert(e.payload().job_id().unwrap(), e.seq());
            assert!(prev.is_none_or(|p| p < e.seq()), "out of order");
        }
    }
    // Within a process one job stays on one member.
    let mut owner: HashMap<Uuid, usize> = HashMap::new();
    for (i, events) in got[..2].iter().enumerate() {
        for (e, _) in events {
            let job = e.payload().job_id().unwrap();
            assert_eq!(*owner.entry(job).or_insert(i), i, "job split in a process");
        }
    }
    // Every event was acked by being taken (auto).
    tokio::time::timeout(WAIT, async {
        while groups.info("g").await.unwrap().unwrap().pending > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("all acked");
}

#[tokio::test]
async fn a_leaving_member_gives_its_unacknowledged_events_back_at_once() {
    let groups = MemoryGroups::default();
    let (p1, p2) = (
        process(&groups, ConsumerConfig::default()),
        process(&groups, ConsumerConfig::default()),
    );
    let a = p1.attach(group("pool", AckMode::Explicit)).await.unwrap();
    let b = p2.attach(group("pool", AckMode::Explicit)).await.unwrap();
    let published = groups.publish((0..40).map(|_| Uuid::new_v4()));
    let got = collect(&[&a, &b], published.len()).await;
    let (held_by_a, held_by_b) = (seqs(&got[0]), seqs(&got[1]));
    assert!(!held_by_a.is_empty() && !held_by_b.is_empty());
    b.ack(held_by_b.iter().map(|s| Cursor::Seq(*s)).collect());
    // Well within ack_wait (1 s) would not matter: the nak is immediate.
    drop(a);
    let again = collect(&[&b], held_by_a.len()).await;
    let mut again_seqs = seqs(&again[0]);
    again_seqs.sort_unstable();
    assert_eq!(again_seqs, held_by_a);
    assert!(again[0].iter().all(|(_, r)| *r >= 1), "marked redelivered");
}

#[tokio::test]
async fn unacknowledged_events_come_back_after_ack_wait() {
    let groups = MemoryGroups::default();
    let p1 = process(&groups, ConsumerConfig::default());
    let member = p1.attach(group("slow", AckMode::Explicit)).await.unwrap();
    let published = groups.publish((0..3).map(|_| Uuid::new_v4()));
    let first = collect(&[&member], 3).await;
    assert_eq!(seqs(&first[0]), published);
    member.ack(vec![Cursor::Seq(published[0])]);
    // Not acked within ack_wait: the backend delivers them again.
    let again = collect(&[&member], 2).await;
    assert_eq!(seqs(&again[0]), &published[1..]);
    assert!(again[0].iter().all(|(_, r)| *r == 1));
}

#[tokio::test]
async fn a_process_without_members_stops_pulling_and_the_others_take_everything() {
    let groups = MemoryGroups::default();
    let (p1, p2) = (
        process(&groups, ConsumerConfig::default()),
        process(&groups, ConsumerConfig::default()),
    );
    let a = p1.attach(group("g", AckMode::Auto)).await.unwrap();
    let b = p2.attach(group("g", AckMode::Auto)).await.unwrap();
    drop(a);
    // p1's last pull ends within PULL_WAIT; then it asks for nothing more.
    tokio::time::sleep(PULL_WAIT * 3).await;
    let published = groups.publish((0..50).map(|_| Uuid::new_v4()));
    let got = collect(&[&b], published.len()).await;
    assert_eq!(seqs(&got[0]), published);
    // None went through p1 (it would have given them back: redelivered).
    assert!(got[0].iter().all(|(_, r)| *r == 0), "p1 pulled");
    drop(b);
    tokio::time::sleep(PULL_WAIT * 3).await;
    let idle = groups.pulls();
    tokio::time::sleep(PULL_WAIT * 3).await;
    assert_eq!(groups.pulls(), idle, "no member anywhere: nobody pulls");
}

#[tokio::test]
async fn the_backed_read_ahead_is_bounded_by_max_ack_pending() {
    let groups = MemoryGroups::default();
    let p1 = process(
        &groups,
        ConsumerConfig {
            max_ack_pending: 5,
            ..ConsumerConfig::default()
        },
    );
    let mut member = p1.attach(group("slow", AckMode::Explicit)).await.unwrap();
    let published = groups.publish((0..20).map(|_| Uuid::new_v4()));
    let first = collect(&[&member], 5).await;
    assert_eq!(seqs(&first[0]), &published[..5]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), member.recv())
            .await
            .is_err(),
        "nothing past max_ack_pending"
    );
    member.ack(published[..5].iter().map(|s| Cursor::Seq(*s)).collect());
    let next = collect(&[&member], 5).await;
    assert_eq!(seqs(&next[0]), &published[5..10]);
}

#[tokio::test]
async fn backed_groups_are_listed_checked_and_deleted_across_processes() {
    let groups = MemoryGroups::default();
    let (p1, p2) = (
        process(&groups, ConsumerConfig::default()),
        process(&groups, ConsumerConfig::default()),
    );
    let member = p1.attach(group("shared", AckMode::Explicit)).await.unwrap();
    // A single consumer cannot take a running group's name.
    assert!(matches!(
        p1.attach(AttachRequest::new("shared", Principal::anonymous()))
            .await,
        Err(ConsumerError::Mismatch { .. })
    ));
    assert!(matches!(
        p1.attach(group("shared", AckMode::Auto)).await,
        Err(ConsumerError::Mismatch { .. })
    ));
    // p2 has no member but sees the group in the backend.
    let listed = p2.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].kind, listed[0].ack),
        ("shared", "group", AckMode::Explicit)
    );
    assert_eq!(p2.ack("shared", vec![Cursor::Seq(1)]).await.unwrap(), 0);
    let running = p1.list().await.unwrap();
    assert_eq!(running[0].members, 1);
    // Deleted from p2: gone from the backend; p1's member ends.
    p2.delete("shared").await.unwrap();
    assert!(groups.info("shared").await.unwrap().is_none());
    tokio::time::timeout(WAIT, member.closed())
        .await
        .expect("member closed after the group was deleted elsewhere");
    assert!(matches!(
        p2.delete("shared").await,
        Err(ConsumerError::NotFound(_))
    ));
}

#[tokio::test]
async fn an_ack_that_reaches_another_process_is_forwarded_to_the_holder() {
    let groups = MemoryGroups::default();
    let (p1, p2, p3) = (
        process(&groups, ConsumerConfig::default()),
        process(&groups, ConsumerConfig::default()),
        process(&groups, ConsumerConfig::default()),
    );
    let holder = p1
        .attach(AttachRequest {
            ack_wait: Some(Duration::from_secs(30)),
            ..group("sse", AckMode::Explicit)
        })
        .await
        .unwrap();
    let published = groups.publish((0..10).map(|_| Uuid::new_v4()));
    let got = collect(&[&holder], published.len()).await;
    assert_eq!(seqs(&got[0]), published);
    // p2 runs the group (no member left) and p3 never did: neither holds
    // the events, both pass the acks on (as SSE ack requests behind a
    // load balancer land anywhere).
    let other = p2
        .attach(AttachRequest {
            ack_wait: Some(Duration::from_secs(30)),
            ..group("sse", AckMode::Explicit)
        })
        .await
        .unwrap();
    drop(other);
    let first: Vec<Cursor> = published[..5].iter().map(|s| Cursor::Seq(*s)).collect();
    assert_eq!(p2.ack("sse", first).await.unwrap(), 0);
    let rest: Vec<Cursor> = got[0][5..]
        .iter()
        .map(|(e, _)| Cursor::Id(e.id()))
        .collect();
    let rest_by_id = p3.ack("sse", rest).await.unwrap();
    assert_eq!(rest_by_id, 0);
    tokio::time::timeout(WAIT, async {
        while groups.acked("sse").len() < published.len() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the holder settled every forwarded ack");
    assert_eq!(
        groups.acked("sse").into_iter().collect::<Vec<_>>(),
        published
    );
}

#[tokio::test]
async fn events_the_backend_lost_are_a_gap_for_every_member_of_every_process() {
    let groups = MemoryGroups::default();
    let (p1, p2) = (
        process(&groups, ConsumerConfig::default()),
        process(&groups, ConsumerConfig::default()),
    );
    let a = p1.attach(group("lossy", AckMode::Explicit)).await.unwrap();
    let b = p1.attach(group("lossy", AckMode::Explicit)).await.unwrap();
    let c = p2.attach(group("lossy", AckMode::Explicit)).await.unwrap();
    let other = p2.attach(group("other", AckMode::Explicit)).await.unwrap();
    // Every feed is open (each member got an event) before the notice.
    let published = groups.publish((0..30).map(|_| Uuid::new_v4()));
    collect(&[&a, &b, &c], published.len()).await;
    let _ = groups.gaps.send(("lossy".to_owned(), 17));
    for (name, member) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(first_gap(member).await, Some(17), "member {name}");
    }
    // Another group's member is not told: a notice of its own, sent after
    // the first one on the same channel, is the first gap it sees.
    let _ = groups.gaps.send(("other".to_owned(), 99));
    assert_eq!(first_gap(&other).await, Some(99));
}

/// The `after` of the first gap `member` is given within [`WAIT`].
async fn first_gap(member: &Member) -> Option<u64> {
    tokio::time::timeout(WAIT, async {
        loop {
            let mut out = Vec::new();
            member.drain(&mut out);
            if let Some(after) = out.iter().find_map(|d| match d {
                Delivery::Gap { after } => Some(*after),
                _ => None,
            }) {
                return after;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .ok()
}
