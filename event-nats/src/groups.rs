//! Consumer groups spanning instances: one JetStream durable pull consumer
//! per group on the cluster's stream ([`JetStreamGroups`], event-core's
//! [`GroupBackend`]).
//!
//! Each instance with members of a group pulls from the group's durable
//! consumer in bounded batches (at most the room its `max_ack_pending`
//! leaves, each pull expiring after [`JetStreamGroups::pull_wait`]) and
//! hands each event to one of its local members. JetStream gives each
//! message to one puller, delivers it again at once when it is nak'd (a
//! member left) and after `ack_wait` when nobody acked it (an instance
//! died), so a member on any instance takes its share and nothing a dead
//! instance held is lost.
//!
//! **Acks that reach another instance.** An SSE client acks with a
//! separate HTTP request, which a load balancer may send to any instance.
//! An instance that does not hold the acked events publishes the acks on
//! the core NATS subject `_matric_groups.<stream>.<consumer>.ack` (outside
//! the stream: nothing is stored); every instance with the group open
//! listens there and settles those it holds.
//!
//! **Ordering.** JetStream spreads messages over the instances that pull,
//! so one entity's events can reach members on two instances. Within an
//! instance the entity hash keeps one entity on one member, and every
//! member receives its events in stream order (redeliveries aside).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use event_core::{
    AckHandle, AckMode, ConsumerError, Cursor, GroupBackend, GroupFeed, GroupMessage, GroupPull,
    GroupSpec, GroupState, Settle, StartAt, async_trait,
};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use crate::codec::{self, bus_seq};
use crate::{Error, NatsCluster};

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

/// The durable consumer name of group `group`: [`GROUP_CONSUMER_PREFIX`]
/// and the name with `_` written `__` and `.` written `_d` (JetStream
/// names may not contain `.`), so distinct groups never share a consumer
/// and the name reads back ([`group_name`]).
pub fn consumer_name(group: &str) -> String {
    let mut out = String::with_capacity(GROUP_CONSUMER_PREFIX.len() + group.len() * 2);
    out.push_str(GROUP_CONSUMER_PREFIX);
    for c in group.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

/// The group whose durable consumer is `consumer`, if it is one
/// ([`consumer_name`] read back).
pub fn group_name(consumer: &str) -> Option<String> {
    let mut chars = consumer.strip_prefix(GROUP_CONSUMER_PREFIX)?.chars();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '_' => match chars.next()? {
                '_' => out.push('_'),
                'd' => out.push('.'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

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
}

impl JetStreamGroups {
    /// Groups on `cluster`'s stream.
    pub fn new(cluster: &NatsCluster) -> Self {
        JetStreamGroups {
            cluster: cluster.clone(),
            pull_wait: DEFAULT_PULL_WAIT,
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

    fn stream(&self) -> &async_nats::jetstream::stream::Stream {
        &self.cluster.shared().stream
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

fn state_of(name: String, info: &async_nats::jetstream::consumer::Info) -> GroupState {
    GroupState {
        name,
        mode: mode_of(info).unwrap_or_default(),
        ack_wait: info.config.ack_wait,
        committed: bus_seq(info.ack_floor.stream_sequence),
        lag: info.num_pending.saturating_add(info.num_ack_pending as u64),
        pending: info.num_ack_pending,
        last_active: info.delivered.last_active.unwrap_or(info.created),
    }
}

#[async_trait]
impl GroupBackend for JetStreamGroups {
    async fn open(&self, spec: &GroupSpec) -> Result<Arc<dyn GroupFeed>, ConsumerError> {
        let name = consumer_name(&spec.name);
        let mut config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("{DESCRIPTION}{}", spec.mode.as_str())),
            ack_policy: AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_ack_pending: i64::try_from(spec.max_ack_pending).unwrap_or(i64::MAX),
            deliver_policy: match spec.start {
                StartAt::Latest => DeliverPolicy::New,
                StartAt::Earliest => DeliverPolicy::All,
            },
            ..Default::default()
        };
        if let Some(existing) = self.consumer_info(&name).await? {
            let same = mode_of(&existing) == Some(spec.mode)
                && existing.config.ack_wait == spec.ack_wait
                && existing.config.max_ack_pending == config.max_ack_pending;
            if !same && self.in_use(&existing) {
                // Another instance pulls it with the settings it was opened
                // with.
                return Err(ConsumerError::Mismatch {
                    name: spec.name.clone(),
                    reason: format!(
                        "ack={} and ack_wait={} s on another instance",
                        mode_of(&existing).unwrap_or_default().as_str(),
                        existing.config.ack_wait.as_secs(),
                    ),
                });
            }
            // Where it starts is fixed once it exists.
            config.deliver_policy = existing.config.deliver_policy;
        }
        // Creates it, or updates an unused one's settings.
        let consumer: PullConsumer = self
            .stream()
            .create_consumer(config)
            .await
            .map_err(group_error)?;
        let acks = self
            .cluster
            .shared()
            .client
            .subscribe(self.ack_subject(&name))
            .await
            .map_err(group_error)?;
        tracing::info!(group = %spec.name, consumer = %name, "group consumer opened");
        Ok(Arc::new(Feed {
            consumer,
            groups: self.clone(),
            name,
            pull_wait: self.pull_wait,
            acks: std::sync::Mutex::new(Some(acks)),
        }))
    }

    async fn info(&self, group: &str) -> Result<Option<GroupState>, ConsumerError> {
        let info = self.consumer_info(&consumer_name(group)).await?;
        Ok(info
            .filter(|i| mode_of(i).is_some())
            .map(|i| state_of(group.to_owned(), &i)))
    }

    async fn list(&self) -> Result<Vec<GroupState>, ConsumerError> {
        let mut consumers = self.stream().consumers();
        let mut out = Vec::new();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(group_error)?;
            if let Some(group) = group_name(&info.name).filter(|_| mode_of(&info).is_some()) {
                out.push(state_of(group, &info));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, group: &str) -> Result<bool, ConsumerError> {
        match self.stream().delete_consumer(&consumer_name(group)).await {
            Ok(status) => Ok(status.success),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(e) => Err(group_error(e)),
        }
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

/// One instance's pulls from one group's durable consumer.
struct Feed {
    consumer: PullConsumer,
    groups: JetStreamGroups,
    name: String,
    pull_wait: Duration,
    /// The subscription to forwarded acks, until the dispatcher takes it.
    acks: std::sync::Mutex<Option<async_nats::Subscriber>>,
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

    async fn pull(&self, max: usize) -> Result<GroupPull, ConsumerError> {
        let batch = self
            .consumer
            .batch()
            .max_messages(max)
            .expires(self.pull_wait)
            .messages()
            .await
            .map_err(group_error)?;
        let groups = self.groups.clone();
        let name = self.name.clone();
        Ok(batch
            .filter_map(move |item| {
                let (groups, name) = (groups.clone(), name.clone());
                async move {
                    match item {
                        Ok(message) => decode(message).await,
                        // A pull refused because the group was deleted (by
                        // any instance) ends its members here too.
                        Err(e) => Some(Err(match groups.consumer_info(&name).await {
                            Ok(None) => ConsumerError::NotFound(group_name(&name).unwrap_or(name)),
                            _ => group_error(e),
                        })),
                    }
                }
            })
            .boxed())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_map_to_distinct_consumer_names_and_back() {
        for (group, consumer) in [
            ("workers", "grp_workers"),
            ("a.b", "grp_a_db"),
            ("a_d", "grp_a__d"),
            ("a_.-Z9", "grp_a___d-Z9"),
        ] {
            assert_eq!(consumer_name(group), consumer);
            assert_eq!(group_name(consumer).as_deref(), Some(group));
            assert!(!consumer.contains('.'));
        }
        assert_ne!(consumer_name("a.b"), consumer_name("a_db"));
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            parse_acks(format!(r#"["42000000","{id}","x"]"#).as_bytes()),
            [Cursor::Seq(42_000_000), Cursor::Id(id)]
        );
        let many: Vec<String> = (0..MAX_FORWARDED_ACKS + 5).map(|i| i.to_string()).collect();
        assert_eq!(
            parse_acks(&serde_json::to_vec(&many).unwrap()).len(),
            MAX_FORWARDED_ACKS
        );
        assert!(parse_acks(b"not json").is_empty());
        for not_a_group in ["workers", "grp_", "grp_a_x", "grp_a_"] {
            assert_eq!(group_name(not_a_group), None, "{not_a_group}");
        }
    }
}
