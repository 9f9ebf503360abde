//! Consumer groups spanning instances ([`JetStreamGroups`], event-core's
//! [`GroupBackend`]): a group is a set of JetStream durable pull consumers
//! on the cluster's stream, one per partition.
//!
//! **Partitions.** Every event's subject carries its partition, a hash of
//! its entity (its job or note) modulo [`NatsConfig::group_partitions`]
//! ([`partition_of`]), and a group has one durable consumer per partition
//! (`grp_<name>_p<n>`, filtering on that partition's subjects). Each
//! partition is pulled by one instance at a time, the instances sharing the
//! partitions in proportion to their members ([`owners`]), and within an
//! instance the entity hash keeps an entity on one member: so one entity's
//! events reach one member, in stream order, wherever the members are
//! connected. When the instances' members change, partitions move: the
//! giving instance stops pulling a partition before the taking one starts,
//! but events it had handed out and not yet had acknowledged are delivered
//! again (after a nak or `ack_wait`) behind newer ones.
//!
//! Each instance pulls its partitions in bounded batches (at most the room
//! its `max_ack_pending` leaves, each pull expiring after
//! [`JetStreamGroups::pull_wait`]) and hands each event to one of its local
//! members. JetStream delivers a message again at once when it is nak'd (a
//! member left) and after `ack_wait` when nobody acked it (an instance
//! died), so nothing a dead instance held is lost.
//!
//! **Acks that reach another instance.** An SSE client acks with a
//! separate HTTP request, which a load balancer may send to any instance.
//! An instance that does not hold the acked events publishes the acks on
//! the core NATS subject `_matric_groups.<stream>.<consumer>.ack` (outside
//! the stream: nothing is stored); every instance with the group open
//! listens there and settles those it holds.

mod losses;
mod names;
mod owners;
pub(crate) use losses::note_purge;

use names::parse_consumer;
pub use names::{consumer_name, group_name, partition_consumer_name, partition_of};

#[cfg(doc)]
use crate::NatsConfig;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::kv;
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream;
use event_core::{
    AckHandle, AckMode, ConsumerError, Cursor, GroupBackend, GroupFeed, GroupMessage, GroupPull,
    GroupSpec, GroupState, Settle, StartAt, async_trait,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use tokio::sync::OnceCell;

use crate::codec::{self, bus_seq};
use crate::{Error, NatsCluster};

pub use owners::{OWNER_BEAT, OWNER_LEASE, OWNER_RENEW};

/// Every group's durable consumer name starts with this.
pub const GROUP_CONSUMER_PREFIX: &str = "grp_";
/// The description that marks a durable consumer as a group's, followed
/// by its ack mode.
const DESCRIPTION: &str = "matric consumer group; ack=";
/// Most acks one forwarded-ack message carries (the ack API's own limit);
/// the rest of a longer message is ignored.
pub const MAX_FORWARDED_ACKS: usize = 1_000;
/// How recent a group's last delivery or ack must be for it to count as
/// in use by another instance (besides two pull waits): settings that
/// differ are refused while it is.
pub const IN_USE_WINDOW: Duration = Duration::from_secs(3);
/// Default [`JetStreamGroups::pull_wait`].
pub const DEFAULT_PULL_WAIT: Duration = Duration::from_secs(1);
/// Bounds of [`JetStreamGroups::pull_wait`].
pub const PULL_WAIT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(30);
/// How long the groups bucket keeps a key nobody rewrites (what a dead
/// instance left): far longer than [`OWNER_LEASE`], which is what decides.
const KEY_MAX_AGE: Duration = Duration::from_secs(60);

fn group_error(e: impl std::fmt::Display) -> ConsumerError {
    ConsumerError::Backend(Box::new(Error::Group(e.to_string())))
}

fn is_not_found(e: &async_nats::jetstream::stream::ConsumerError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::stream::ConsumerErrorKind;
    matches!(e.kind(), ConsumerErrorKind::JetStream(j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND)
}

/// Consumer groups in the cluster's JetStream stream; give it to
/// `Consumers::with_group_backend`. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JetStreamGroups {
    cluster: NatsCluster,
    pull_wait: Duration,
    /// The groups bucket, opened by the first group.
    owners: Arc<OnceCell<kv::Store>>,
}

impl JetStreamGroups {
    /// Groups on `cluster`'s stream.
    pub fn new(cluster: &NatsCluster) -> Self {
        JetStreamGroups {
            cluster: cluster.clone(),
            pull_wait: DEFAULT_PULL_WAIT,
            owners: Arc::new(OnceCell::new()),
        }
    }

    /// How long one pull waits for events (default 1 s, bounded by
    /// [`PULL_WAIT_RANGE`]): an instance whose last member of a group left
    /// stops pulling within this, and what that pull brings is given back.
    pub fn with_pull_wait(mut self, wait: Duration) -> Self {
        self.pull_wait = wait.clamp(*PULL_WAIT_RANGE.start(), *PULL_WAIT_RANGE.end());
        self
    }

    /// The current pull wait.
    pub fn pull_wait(&self) -> Duration {
        self.pull_wait
    }

    fn partitions(&self) -> u16 {
        self.cluster.config().group_partitions.max(1)
    }

    fn stream(&self) -> &async_nats::jetstream::stream::Stream {
        &self.cluster.shared().stream
    }

    /// The groups bucket, created (or updated) the first time.
    async fn owners_bucket(&self) -> Result<&kv::Store, ConsumerError> {
        self.owners
            .get_or_try_init(|| async {
                let config = self.cluster.config();
                let bucket = config.groups_bucket();
                let js = &self.cluster.shared().js;
                // On disk like the stream: a bucket in memory would be gone
                // after a NATS restart, and with it every lease.
                js.create_or_update_stream(stream::Config {
                    max_age: KEY_MAX_AGE,
                    ..crate::bucket::bucket_stream(
                        config,
                        &bucket,
                        "matric consumer groups' partition owners",
                    )
                })
                .await
                .map_err(group_error)?;
                js.get_key_value(&bucket).await.map_err(group_error)
            })
            .await
    }

    /// Which instance pulls each partition of `group` now (`None`: none),
    /// as the groups bucket says.
    pub async fn owners(&self, group: &str) -> Result<Vec<Option<String>>, ConsumerError> {
        let kv = self.owners_bucket().await?;
        let consumer = consumer_name(group);
        let mut out = Vec::with_capacity(usize::from(self.partitions()));
        for partition in 0..self.partitions() {
            let owner = kv
                .get(format!("{consumer}.p.{partition}"))
                .await
                .map_err(group_error)?;
            out.push(
                owner
                    .and_then(|v| String::from_utf8(v.to_vec()).ok())
                    .and_then(|hex| crate::bucket::unhex(&hex)),
            );
        }
        Ok(out)
    }

    /// Whether an instance uses the group: a pull of it is waiting, or it
    /// delivered or had an event acknowledged within the last
    /// [`IN_USE_WINDOW`] plus two pull waits (an instance pulls again as
    /// soon as a pull ends, but the count of waiting pulls misses the moment
    /// in between and an instance whose read-ahead is full). A nak'd event
    /// waiting for redelivery counts as unacknowledged in JetStream, so
    /// that count cannot tell.
    fn in_use(&self, info: &async_nats::jetstream::consumer::Info) -> bool {
        let window = IN_USE_WINDOW + self.pull_wait * 2;
        let since = time::OffsetDateTime::now_utc() - window;
        info.num_waiting > 0
            || [info.delivered.last_active, info.ack_floor.last_active]
                .into_iter()
                .flatten()
                .any(|at| at > since)
    }

    /// The core NATS subject of a group's forwarded acks.
    fn ack_subject(&self, consumer: &str) -> String {
        format!(
            "_matric_groups.{}.{consumer}.ack",
            self.cluster.config().stream
        )
    }

    async fn consumer_info(
        &self,
        name: &str,
    ) -> Result<Option<async_nats::jetstream::consumer::Info>, ConsumerError> {
        match self.stream().consumer_info(name).await {
            Ok(info) => Ok(Some(info)),
            Err(e) if info_not_found(&e) => Ok(None),
            Err(e) => Err(group_error(e)),
        }
    }

    /// Every partition consumer of `group` that exists.
    async fn partition_infos(
        &self,
        group: &str,
    ) -> Result<Vec<async_nats::jetstream::consumer::Info>, ConsumerError> {
        let infos =
            futures_util::future::try_join_all((0..self.partitions()).map(|p| async move {
                self.consumer_info(&partition_consumer_name(group, p)).await
            }))
            .await?;
        Ok(infos.into_iter().flatten().collect())
    }
}

fn info_not_found(e: &async_nats::jetstream::context::ConsumerInfoError) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    match e.kind() {
        ConsumerInfoErrorKind::NotFound => true,
        ConsumerInfoErrorKind::JetStream(j) => j.error_code() == ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

fn mode_of(info: &async_nats::jetstream::consumer::Info) -> Option<AckMode> {
    info.config
        .description
        .as_deref()
        .and_then(|d| d.strip_prefix(DESCRIPTION))
        .and_then(AckMode::parse)
}

/// A group's state from its partition consumers' (at least one).
fn state_of(name: String, infos: &[&async_nats::jetstream::consumer::Info]) -> GroupState {
    let first = infos[0];
    let outstanding =
        |i: &&&async_nats::jetstream::consumer::Info| i.num_pending > 0 || i.num_ack_pending > 0;
    // Everything below the lowest floor of a partition with work left is
    // settled; with none left, everything delivered is.
    let floor = match infos
        .iter()
        .filter(outstanding)
        .map(|i| i.ack_floor.stream_sequence)
        .min()
    {
        Some(floor) => floor,
        None => infos
            .iter()
            .map(|i| i.ack_floor.stream_sequence)
            .max()
            .unwrap_or(0),
    };
    GroupState {
        name,
        mode: mode_of(first).unwrap_or_default(),
        ack_wait: first.config.ack_wait,
        committed: bus_seq(floor),
        lag: infos
            .iter()
            .map(|i| i.num_pending.saturating_add(i.num_ack_pending as u64))
            .sum(),
        pending: infos.iter().map(|i| i.num_ack_pending).sum(),
        last_active: infos
            .iter()
            .map(|i| i.delivered.last_active.unwrap_or(i.created))
            .max()
            .unwrap_or(first.created),
    }
}

#[async_trait]
impl GroupBackend for JetStreamGroups {
    async fn open(&self, spec: &GroupSpec) -> Result<Arc<dyn GroupFeed>, ConsumerError> {
        let name = consumer_name(&spec.name);
        let max_ack_pending = i64::try_from(spec.max_ack_pending).unwrap_or(i64::MAX);
        let mut deliver_policy = match spec.start {
            StartAt::Latest => DeliverPolicy::New,
            StartAt::Earliest => DeliverPolicy::All,
        };
        let existing = self.partition_infos(&spec.name).await?;
        if let Some(first) = existing.first() {
            let same = existing.iter().all(|e| {
                mode_of(e) == Some(spec.mode)
                    && e.config.ack_wait == spec.ack_wait
                    && e.config.max_ack_pending == max_ack_pending
            });
            if !same && existing.iter().any(|e| self.in_use(e)) {
                // Another instance pulls it with the settings it was opened
                // with.
                return Err(ConsumerError::Mismatch {
                    name: spec.name.clone(),
                    reason: format!(
                        "ack={} and ack_wait={} s on another instance",
                        mode_of(first).unwrap_or_default().as_str(),
                        first.config.ack_wait.as_secs(),
                    ),
                });
            }
            // Where it starts is fixed once it exists.
            deliver_policy = first.config.deliver_policy;
        }
        let config = self.cluster.config();
        // Creates them, or updates unused ones' settings.
        let consumers: Vec<PullConsumer> =
            futures_util::future::try_join_all((0..self.partitions()).map(|partition| {
                self.stream().create_consumer(pull::Config {
                    durable_name: Some(partition_consumer_name(&spec.name, partition)),
                    description: Some(format!("{DESCRIPTION}{}", spec.mode.as_str())),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: spec.ack_wait,
                    max_ack_pending,
                    deliver_policy,
                    filter_subject: config.partition_subjects(partition),
                    ..Default::default()
                })
            }))
            .await
            .map_err(group_error)?;
        let acks = self
            .cluster
            .shared()
            .client
            .subscribe(self.ack_subject(&name))
            .await
            .map_err(group_error)?;
        let owners = owners::Owners::start(
            self.owners_bucket().await?.clone(),
            &name,
            &config.instance_id,
            self.partitions(),
        );
        tracing::info!(group = %spec.name, consumer = %name, partitions = consumers.len(), "group consumers opened");
        Ok(Arc::new(Feed {
            consumers,
            owners,
            groups: self.clone(),
            group: spec.name.clone(),
            pull_wait: self.pull_wait,
            acks: std::sync::Mutex::new(Some(acks)),
            turn: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    async fn info(&self, group: &str) -> Result<Option<GroupState>, ConsumerError> {
        let infos = self.partition_infos(group).await?;
        let infos: Vec<_> = infos.iter().filter(|i| mode_of(i).is_some()).collect();
        Ok((!infos.is_empty()).then(|| state_of(group.to_owned(), &infos)))
    }

    async fn list(&self) -> Result<Vec<GroupState>, ConsumerError> {
        let mut consumers = self.stream().consumers();
        let mut groups: BTreeMap<String, Vec<async_nats::jetstream::consumer::Info>> =
            BTreeMap::new();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(group_error)?;
            if let Some((group, Some(_))) = parse_consumer(&info.name)
                && mode_of(&info).is_some()
            {
                groups.entry(group).or_default().push(info);
            }
        }
        Ok(groups
            .into_iter()
            .map(|(group, infos)| state_of(group, &infos.iter().collect::<Vec<_>>()))
            .collect())
    }

    async fn delete(&self, group: &str) -> Result<bool, ConsumerError> {
        // The partitions', and one from before partitions if it is left.
        let names = (0..self.partitions())
            .map(|p| partition_consumer_name(group, p))
            .chain([consumer_name(group)]);
        let mut deleted = false;
        for name in names {
            match self.stream().delete_consumer(&name).await {
                Ok(status) => deleted |= status.success,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(group_error(e)),
            }
        }
        Ok(deleted)
    }

    async fn forward_acks(&self, group: &str, acks: &[Cursor]) -> Result<bool, ConsumerError> {
        for chunk in acks.chunks(MAX_FORWARDED_ACKS) {
            let text: Vec<String> = chunk.iter().map(Cursor::to_string).collect();
            let payload = serde_json::to_vec(&text).map_err(group_error)?;
            self.cluster
                .shared()
                .client
                .publish(self.ack_subject(&consumer_name(group)), payload.into())
                .await
                .map_err(group_error)?;
        }
        Ok(true)
    }
}

/// The acks of one forwarded-ack message (at most [`MAX_FORWARDED_ACKS`];
/// what does not parse is skipped).
pub(crate) fn parse_acks(payload: &[u8]) -> Vec<Cursor> {
    serde_json::from_slice::<Vec<String>>(payload)
        .unwrap_or_default()
        .iter()
        .take(MAX_FORWARDED_ACKS)
        .filter_map(|t| Cursor::parse(t).ok())
        .collect()
}

/// One instance's pulls from one group's partitions.
struct Feed {
    /// Every partition's consumer, by partition.
    consumers: Vec<PullConsumer>,
    /// Which of them this instance pulls.
    owners: owners::Owners,
    groups: JetStreamGroups,
    group: String,
    pull_wait: Duration,
    /// The subscription to forwarded acks, until the dispatcher takes it.
    acks: std::sync::Mutex<Option<async_nats::Subscriber>>,
    /// Rotates which partitions a pull smaller than their number asks.
    turn: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl GroupFeed for Feed {
    fn forwarded_acks(&self) -> Option<BoxStream<'static, Vec<Cursor>>> {
        let acks = self.acks.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(
            acks.map(|message| parse_acks(&message.payload))
                .filter(|acks| std::future::ready(!acks.is_empty()))
                .boxed(),
        )
    }

    fn members_changed(&self, members: usize) {
        self.owners.set_members(members);
    }

    fn gaps(&self) -> Option<BoxStream<'static, u64>> {
        self.owners.take_gaps()
    }

    async fn pull(&self, max: usize) -> Result<GroupPull, ConsumerError> {
        let mut leases = self.owners.lease_pulls();
        if leases.is_empty() {
            // Nothing owned yet (or any more): an empty pull of the usual
            // length, so the dispatcher asks again.
            let wait = self.pull_wait;
            return Ok(futures_util::stream::once(tokio::time::sleep(wait))
                .filter_map(|()| std::future::ready(None))
                .boxed());
        }
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = leases.len();
        leases.rotate_left(turn % n);
        let mut pulls = Vec::with_capacity(n);
        for (i, lease) in leases.into_iter().enumerate() {
            // `max` split over the partitions; the first ones get the rest.
            let share = max / n + usize::from(i < max % n);
            if share == 0 {
                continue;
            }
            let Some(consumer) = self.consumers.get(usize::from(lease.partition)) else {
                continue;
            };
            let batch = consumer
                .batch()
                .max_messages(share)
                .expires(self.pull_wait)
                .messages()
                .await
                .map_err(group_error)?;
            let groups = self.groups.clone();
            let group = self.group.clone();
            let name = partition_consumer_name(&group, lease.partition);
            pulls.push(
                batch
                    .filter_map(move |item| {
                        // Held until the pull of this partition ends.
                        let _lease = &lease;
                        let (groups, group, name) = (groups.clone(), group.clone(), name.clone());
                        async move {
                            match item {
                                Ok(message) => decode(message).await,
                                // A pull refused because the group was
                                // deleted (by any instance) ends its
                                // members here too.
                                Err(e) => Some(Err(match groups.consumer_info(&name).await {
                                    Ok(None) => ConsumerError::NotFound(group),
                                    _ => group_error(e),
                                })),
                            }
                        }
                    })
                    .boxed(),
            );
        }
        Ok(futures_util::stream::select_all(pulls).boxed())
    }
}

/// The event a pulled message carries, with its ack handle; a message
/// that is not an event is terminated (never delivered again) and skipped.
async fn decode(
    message: async_nats::jetstream::Message,
) -> Option<Result<GroupMessage, ConsumerError>> {
    let (stream_seq, delivered) = match message.info() {
        Ok(info) => (
            info.stream_sequence,
            u32::try_from(info.delivered).unwrap_or(u32::MAX).max(1),
        ),
        Err(e) => return Some(Err(group_error(e))),
    };
    let (message, acker) = message.split();
    match codec::decode(stream_seq, &message.payload, message.headers.as_ref()) {
        Ok(decoded) => Some(Ok(GroupMessage {
            event: Arc::new(decoded.event),
            delivered,
            handle: Box::new(Handle(acker)),
        })),
        Err(error) => {
            tracing::warn!(stream_seq, %error, "undecodable stream message; skipped by the group");
            let _ = acker.ack_with(AckKind::Term).await;
            None
        }
    }
}

struct Handle(Acker);

#[async_trait]
impl AckHandle for Handle {
    async fn settle(&self, how: Settle) -> Result<(), ConsumerError> {
        let kind = match how {
            Settle::Ack => AckKind::Ack,
            Settle::Nak => AckKind::Nak(None),
            Settle::InProgress => AckKind::Progress,
        };
        self.0.ack_with(kind).await.map_err(group_error)
    }
}
