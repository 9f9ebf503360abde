//! Which instance pulls which of a group's partitions.
//!
//! A group's events are spread over [`NatsConfig::group_partitions`]
//! partitions by a hash of their entity ([`partition_of`](super::partition_of)),
//! and each partition is pulled by one instance at a time, so one entity's
//! events reach one instance, in stream order. The instances agree on who
//! owns what through keys in the groups bucket
//! ([`NatsConfig::groups_bucket`]), under `<consumer>.`:
//!
//! - `i.<instance id, hex>`: an instance's heartbeat, rewritten every
//!   2 s (and when its member count changes) while it has members of the
//!   group, holding how many;
//! - `p.<n>`: the owner of partition `n`, rewritten by that owner every 2 s
//!   against the revision it wrote last (compare-and-set), so an owner whose
//!   partition was taken over learns it at its next rewrite and stops
//!   pulling;
//! - `gap`: the last notice that the group lost events a topic's retention
//!   purged before the group settled them (written by the pruning instance,
//!   [`losses`](super::losses)); every instance with members tells them
//!   ([`GroupFeed::gaps`](event_core::GroupFeed::gaps)).
//!
//! Each instance watches the group's keys. At every beat (and at once when
//! its member count changes) it works out each live instance's share of
//! the partitions, in proportion to its members; an instance is live while
//! its heartbeat keeps changing within [`OWNER_LEASE`], as this instance sees the
//! changes arrive, so no two clocks are compared. It gives up the
//! partitions above its share, each once no pull of it is out, and takes
//! free ones up to its share: a partition with no key, or whose key was not
//! renewed within the lease (its owner died or stalled). An instance that
//! dies therefore hands its partitions over after [`OWNER_LEASE`]; one that stops
//! (its last member left) hands them over within a pull wait.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use futures_util::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

#[cfg(doc)]
use crate::NatsConfig;

/// How often an instance with members rebalances (moves partitions toward
/// its share).
pub const OWNER_BEAT: Duration = Duration::from_secs(1);
/// How long a heartbeat or an owner's key stays valid without renewal:
/// after it, the instance counts as gone and its partitions are taken over.
pub const OWNER_LEASE: Duration = Duration::from_secs(5);
/// How often the heartbeat and the owned partitions' keys are rewritten:
/// twice within a lease, so one late rewrite does not lose it. The beats in
/// between (and the ones a member change or a finished pull wakes) only
/// rebalance.
pub const OWNER_RENEW: Duration = Duration::from_secs(2);

/// What the coordinator remembers between beats.
#[derive(Debug, Default)]
struct Renewal {
    /// The heartbeat as last written: this instance's member count.
    heartbeat: Option<usize>,
    /// When the keys were last rewritten.
    at: Option<Instant>,
}

/// One key of the group as this instance last saw it.
#[derive(Debug, Clone)]
struct Seen {
    value: bytes::Bytes,
    revision: u64,
    /// When this instance saw it change (for keys that were there when the
    /// watch started: their age by the server's timestamp, at most
    /// [`OWNER_LEASE`]).
    at: Instant,
}

/// What the feed's pulls and the coordinator share.
#[derive(Debug, Default)]
struct State {
    /// Owned partitions, with the revision of their key.
    owned: BTreeMap<u16, u64>,
    /// Owned partitions being given up: no new pull takes them.
    releasing: BTreeSet<u16>,
    /// Pulls out, per partition.
    in_flight: HashMap<u16, usize>,
}

#[derive(Debug)]
struct Inner {
    kv: kv::Store,
    /// `<consumer>.`: the group's keys.
    prefix: String,
    /// This instance's id, hex (valid in a key).
    me: String,
    partitions: u16,
    members: AtomicUsize,
    wake: Notify,
    state: Mutex<State>,
    /// The last `gap` notice seen, as written.
    gaps: watch::Sender<String>,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partition_key(&self, partition: u16) -> String {
        format!("{}p.{partition}", self.prefix)
    }

    fn heartbeat_key(&self) -> String {
        format!("{}i.{}", self.prefix, self.me)
    }
}

/// One instance's ownership of one group's partitions; the coordinator
/// runs until this is dropped, and then gives back what it owned.
#[derive(Debug)]
pub(super) struct Owners {
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
    /// The notices of lost events, until the feed's dispatcher takes them.
    gaps: Mutex<Option<watch::Receiver<String>>>,
}

/// A pull's claim on a partition: while it lives the partition is not
/// handed to another instance.
#[derive(Debug)]
pub(super) struct PullLease {
    inner: Arc<Inner>,
    /// The partition pulled.
    pub(super) partition: u16,
}

impl Drop for PullLease {
    fn drop(&mut self) {
        let releasing = {
            let mut state = self.inner.state();
            if let Some(n) = state.in_flight.get_mut(&self.partition) {
                *n = n.saturating_sub(1);
            }
            state.releasing.contains(&self.partition)
        };
        if releasing {
            self.inner.wake.notify_one();
        }
    }
}

impl Owners {
    /// Starts coordinating `consumer`'s partitions for instance `instance`.
    pub(super) fn start(kv: kv::Store, consumer: &str, instance: &str, partitions: u16) -> Owners {
        let inner = Arc::new(Inner {
            kv,
            prefix: format!("{consumer}."),
            me: crate::bucket::hex_key("", instance),
            partitions,
            members: AtomicUsize::new(0),
            wake: Notify::new(),
            state: Mutex::new(State::default()),
            gaps: watch::Sender::new(String::new()),
        });
        // Subscribed before the watch starts: no notice is missed.
        let gaps = Mutex::new(Some(inner.gaps.subscribe()));
        let task = tokio::spawn(run(inner.clone()));
        Owners { inner, task, gaps }
    }

    /// The bus sequences after which the group lost events, as notices
    /// arrive (each notice once); taken once.
    pub(super) fn take_gaps(&self) -> Option<futures_util::stream::BoxStream<'static, u64>> {
        let rx = self.gaps.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(
            futures_util::stream::unfold(rx, |mut rx| async move {
                loop {
                    rx.changed().await.ok()?;
                    let notice = rx.borrow_and_update().clone();
                    if let Some(after) = super::losses::after_of(&notice) {
                        return Some((after, rx));
                    }
                }
            })
            .boxed(),
        )
    }

    /// This instance now has `members` members of the group.
    pub(super) fn set_members(&self, members: usize) {
        if self.inner.members.swap(members, Ordering::SeqCst) != members {
            self.inner.wake.notify_one();
        }
    }

    /// Leases on every partition this instance may pull now.
    pub(super) fn lease_pulls(&self) -> Vec<PullLease> {
        let mut state = self.inner.state();
        let partitions: Vec<u16> = state
            .owned
            .keys()
            .filter(|p| !state.releasing.contains(p))
            .copied()
            .collect();
        partitions
            .into_iter()
            .map(|partition| {
                *state.in_flight.entry(partition).or_default() += 1;
                PullLease {
                    inner: self.inner.clone(),
                    partition,
                }
            })
            .collect()
    }
}

impl Drop for Owners {
    fn drop(&mut self) {
        self.task.abort();
        let inner = self.inner.clone();
        // Gives the partitions back at once rather than after the lease.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let owned = std::mem::take(&mut inner.state().owned);
                for (partition, revision) in owned {
                    let _ = inner
                        .kv
                        .delete_expect_revision(inner.partition_key(partition), Some(revision))
                        .await;
                }
                let _ = inner.kv.delete(inner.heartbeat_key()).await;
            });
        }
    }
}

/// How many of `partitions` each live instance owns: in proportion to its
/// members (counted up to `partitions`), the remainder going to the
/// largest fractions, then by id. `live` is sorted by id; every instance
/// works this out alike from the same view.
pub(super) fn shares(live: &[(String, usize)], partitions: u16) -> Vec<u16> {
    let weights: Vec<u64> = live
        .iter()
        .map(|(_, m)| (*m).min(usize::from(partitions)) as u64)
        .collect();
    let total: u64 = weights.iter().sum();
    if total == 0 {
        return vec![0; live.len()];
    }
    let p = u64::from(partitions);
    let mut out: Vec<u16> = weights
        .iter()
        .map(|w| u16::try_from(p * w / total).unwrap_or(partitions))
        .collect();
    let given: u64 = out.iter().map(|n| u64::from(*n)).sum();
    let mut by_fraction: Vec<usize> = (0..live.len()).collect();
    // Largest remainder first; the sort is stable, so ties keep id order.
    by_fraction.sort_by_key(|&i| std::cmp::Reverse(p * weights[i] % total));
    for &i in by_fraction.iter().take((p - given) as usize) {
        out[i] += 1;
    }
    out
}

async fn run(inner: Arc<Inner>) {
    let mut view: HashMap<String, Seen> = HashMap::new();
    let mut watch: Option<kv::Watch> = None;
    let mut renewal = Renewal::default();
    let mut tick = tokio::time::interval(OWNER_BEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A notice from before this instance opened the group is not news to
    // its members (they had not read anything yet); the watch replays it.
    let gap_key = format!("{}{}", inner.prefix, super::losses::GAP_KEY);
    if let Ok(Some(entry)) = inner.kv.entry(gap_key).await
        && entry.operation == Operation::Put
        && let Ok(notice) = std::str::from_utf8(&entry.value)
    {
        inner.gaps.send_if_modified(|last| {
            notice.clone_into(last);
            false
        });
    }
    loop {
        if watch.is_none() {
            match inner
                .kv
                .watch_with_history(format!("{}>", inner.prefix))
                .await
            {
                Ok(w) => watch = Some(w),
                Err(error) => {
                    tracing::warn!(group_keys = %inner.prefix, %error, "cannot watch the group's owners; retrying")
                }
            }
        }
        tokio::select! {
            entry = next_entry(&mut watch) => match entry {
                Some(Ok(entry)) => seen(&inner, &mut view, entry),
                Some(Err(error)) => {
                    tracing::debug!(%error, "group owners watch ended; watching again");
                    watch = None;
                }
                None => watch = None,
            },
            _ = tick.tick() => beat(&inner, &view, &mut renewal).await,
            _ = inner.wake.notified() => beat(&inner, &view, &mut renewal).await,
        }
    }
}

async fn next_entry(watch: &mut Option<kv::Watch>) -> Option<Result<kv::Entry, kv::WatcherError>> {
    match watch {
        Some(w) => w.next().await,
        // Watched again at the next turn of the loop.
        None => {
            tokio::time::sleep(OWNER_BEAT).await;
            None
        }
    }
}

fn seen(inner: &Inner, view: &mut HashMap<String, Seen>, entry: kv::Entry) {
    let Some(key) = entry.key.strip_prefix(&inner.prefix) else {
        return;
    };
    if key == super::losses::GAP_KEY {
        if entry.operation == Operation::Put
            && let Ok(notice) = std::str::from_utf8(&entry.value)
        {
            // A notice seen again (the watch restarted) is not news.
            inner.gaps.send_if_modified(|last| {
                let new = last != notice;
                if new {
                    notice.clone_into(last);
                }
                new
            });
        }
        return;
    }
    match entry.operation {
        Operation::Put => {
            let at = if entry.seen_current {
                Instant::now()
            } else {
                // There before the watch: as old as the server says (what a
                // dead instance left is not taken for live).
                let age = time::OffsetDateTime::now_utc() - entry.created;
                let age = Duration::try_from(age).unwrap_or_default().min(OWNER_LEASE);
                Instant::now().checked_sub(age).unwrap_or_else(Instant::now)
            };
            view.insert(
                key.to_owned(),
                Seen {
                    value: entry.value,
                    revision: entry.revision,
                    at,
                },
            );
        }
        Operation::Delete | Operation::Purge => {
            view.remove(key);
        }
    }
}

/// Renews this instance's keys when due and moves its partitions toward
/// its share.
async fn beat(inner: &Inner, view: &HashMap<String, Seen>, renewal: &mut Renewal) {
    let members = inner.members.load(Ordering::SeqCst);
    let now = Instant::now();
    let due = renewal
        .at
        .is_none_or(|at| now.saturating_duration_since(at) >= OWNER_RENEW);
    if members > 0 && (due || renewal.heartbeat != Some(members)) {
        match inner
            .kv
            .put(inner.heartbeat_key(), members.to_string().into())
            .await
        {
            Ok(_) => renewal.heartbeat = Some(members),
            Err(error) => tracing::debug!(%error, "group heartbeat not written"),
        }
    } else if members == 0
        && renewal.heartbeat.is_some()
        && inner.kv.delete(inner.heartbeat_key()).await.is_ok()
    {
        renewal.heartbeat = None;
    }
    if due {
        renew(inner).await;
        renewal.at = Some(now);
    }

    let fresh = |s: &Seen| now.saturating_duration_since(s.at) < OWNER_LEASE;
    let mut live: Vec<(String, usize)> = view
        .iter()
        .filter(|(_, s)| fresh(s))
        .filter_map(|(k, s)| {
            let id = k.strip_prefix("i.")?;
            let n = std::str::from_utf8(&s.value).ok()?.parse::<usize>().ok()?;
            (id != inner.me && n > 0).then(|| (id.to_owned(), n))
        })
        .collect();
    if members > 0 {
        live.push((inner.me.clone(), members));
    }
    live.sort();
    let share = live
        .iter()
        .position(|(id, _)| *id == inner.me)
        .map_or(0, |i| shares(&live, inner.partitions)[i]);

    release(inner, share).await;
    take(inner, view, share, now).await;
}

/// Rewrites each owned partition's key; one rewritten by another instance
/// meanwhile (its lease ran out here) is no longer this one's.
async fn renew(inner: &Inner) {
    let owned: Vec<(u16, u64)> = inner.state().owned.iter().map(|(p, r)| (*p, *r)).collect();
    for (partition, revision) in owned {
        let written = inner
            .kv
            .update(
                inner.partition_key(partition),
                inner.me.clone().into(),
                revision,
            )
            .await;
        let mut state = inner.state();
        match written {
            Ok(revision) => {
                state.owned.insert(partition, revision);
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(
                    group_keys = %inner.prefix,
                    partition,
                    "partition taken over by another instance (this one missed its lease); no longer pulled here"
                );
                state.owned.remove(&partition);
                state.releasing.remove(&partition);
            }
            // Kept: renewed at the next beat, well within the lease.
            Err(error) => tracing::debug!(partition, %error, "partition lease not renewed"),
        }
    }
}

/// Gives up the owned partitions above `share`, each once no pull is out.
async fn release(inner: &Inner, share: u16) {
    let done: Vec<(u16, u64)> = {
        let mut state = inner.state();
        let active: Vec<u16> = state
            .owned
            .keys()
            .filter(|p| !state.releasing.contains(p))
            .copied()
            .collect();
        let over = active.len().saturating_sub(usize::from(share));
        // The highest-numbered go: the same ones every beat.
        for partition in active.iter().rev().take(over) {
            state.releasing.insert(*partition);
        }
        state
            .releasing
            .iter()
            .filter(|p| state.in_flight.get(p).copied().unwrap_or(0) == 0)
            .filter_map(|p| Some((*p, *state.owned.get(p)?)))
            .collect()
    };
    for (partition, revision) in done {
        let deleted = inner
            .kv
            .delete_expect_revision(inner.partition_key(partition), Some(revision))
            .await;
        if let Err(error) = &deleted {
            // Another instance rewrote it (then it is that one's), or NATS
            // is away: the lease runs out by itself either way.
            tracing::debug!(partition, %error, "partition key not deleted");
        }
        let mut state = inner.state();
        state.owned.remove(&partition);
        state.releasing.remove(&partition);
    }
}

/// Takes free partitions up to `share`.
async fn take(inner: &Inner, view: &HashMap<String, Seen>, share: u16, now: Instant) {
    let (mut have, owned) = {
        let state = inner.state();
        (
            state.owned.len() - state.releasing.len(),
            state.owned.keys().copied().collect::<BTreeSet<u16>>(),
        )
    };
    for partition in 0..inner.partitions {
        if have >= usize::from(share) {
            break;
        }
        if owned.contains(&partition) {
            continue;
        }
        let key = inner.partition_key(partition);
        let written = match view.get(&format!("p.{partition}")) {
            None => inner
                .kv
                .create(&key, inner.me.clone().into())
                .await
                .map_err(|e| e.to_string()),
            Some(s) if now.saturating_duration_since(s.at) >= OWNER_LEASE => inner
                .kv
                .update(&key, inner.me.clone().into(), s.revision)
                .await
                .map_err(|e| e.to_string()),
            Some(_) => continue,
        };
        match written {
            Ok(revision) => {
                inner.state().owned.insert(partition, revision);
                have += 1;
            }
            // Another instance was first.
            Err(error) => tracing::debug!(partition, %error, "partition not taken"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(members: &[usize]) -> Vec<(String, usize)> {
        members
            .iter()
            .enumerate()
            .map(|(i, m)| (format!("i{i}"), *m))
            .collect()
    }

    #[test]
    fn shares_follow_members_and_add_up() {
        assert_eq!(shares(&live(&[1]), 16), [16]);
        assert_eq!(shares(&live(&[1, 1]), 16), [8, 8]);
        assert_eq!(shares(&live(&[2, 1]), 16), [11, 5]);
        assert_eq!(shares(&live(&[1, 1, 1]), 16), [6, 5, 5]);
        // One instance's many members do not starve the other.
        assert_eq!(shares(&live(&[100, 1]), 16), [15, 1]);
        assert_eq!(shares(&live(&[1, 1, 1]), 2), [1, 1, 0]);
        assert_eq!(shares(&live(&[]), 16), Vec::<u16>::new());
        for members in [vec![3, 5, 7], vec![1; 20], vec![16, 16]] {
            let total: u16 = shares(&live(&members), 16).iter().sum();
            assert_eq!(total, 16, "{members:?}");
        }
    }
}
