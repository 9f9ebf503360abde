//! Configuration: where NATS is, which stream, how long it keeps events.

use std::time::Duration;

use crate::Error;

/// The protocol's subject prefix: events go to
/// `matric.events.<dot name>.<partition>.<topic>`, e.g.
/// `matric.events.job.progress.7.job` ([`NatsConfig::subject_for`]).
pub const DEFAULT_SUBJECT_PREFIX: &str = "matric.events";
/// The default JetStream stream name.
pub const DEFAULT_STREAM: &str = "MATRIC_EVENTS";
/// The default key-value bucket of consumer offsets.
pub const DEFAULT_CONSUMERS_BUCKET: &str = "MATRIC_CONSUMERS";
/// The default NATS URL.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// How long and how much the stream keeps: the window in which a client can
/// resume on any instance (older cursors get `resync_required`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// Oldest event kept (default 24 h).
    pub max_age: Duration,
    /// Most events kept (default 1,000,000).
    pub max_messages: i64,
    /// Most bytes kept (default 1 GiB).
    pub max_bytes: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_messages: 1_000_000,
            max_bytes: 1 << 30,
        }
    }
}

/// Cluster configuration. `Default` connects to `nats://127.0.0.1:4222`,
/// stream `MATRIC_EVENTS`, subjects `matric.events.>`.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// NATS server URL(s), comma-separated. May carry credentials; it is
    /// never logged or put in errors.
    pub url: String,
    /// JetStream stream name (no `.`, `*`, `>` or whitespace).
    pub stream: String,
    /// Subject prefix; each event goes to
    /// `<prefix>.<dot name>.<partition>.<topic>` ([`subject_for`](Self::subject_for)).
    pub subject_prefix: String,
    /// This instance's id, sent with every event it publishes (header
    /// `Matric-Origin`). Unique per running instance; keep it stable across
    /// restarts if you want [`crate::NatsCluster::originated_here`] to
    /// recognise events from before a restart.
    pub instance_id: String,
    /// Stream retention.
    pub retention: Retention,
    /// Keep the stream in memory instead of on disk (tests).
    pub memory_storage: bool,
    /// Stream replicas (on a clustered NATS).
    pub replicas: usize,
    /// Timeout of the first connection and of JetStream API requests.
    pub connect_timeout: Duration,
    /// How long to wait for JetStream to acknowledge a published event.
    pub publish_ack_timeout: Duration,
    /// How many times a failed publish is retried (same `Nats-Msg-Id`, so
    /// retries are deduplicated by the stream) before the event is delivered
    /// locally only. The waits between attempts double from 200 ms up to
    /// 6.4 s; the default, 6, keeps retrying for 12.6 s (plus the
    /// acknowledgement timeouts), longer than a replicated stream takes to
    /// elect a new leader after losing one (4 to 9 s on NATS's Raft), during
    /// which JetStream answers "no stream found" at once. Between two
    /// retries the first refused event is published alone every 250 ms; once
    /// JetStream takes it, the rest is retried at once (these probes are not
    /// counted as retries and do not extend the 12.6 s).
    pub publish_retries: u32,
    /// Upper bound of the reconnect backoff (exponential from 50 ms).
    pub max_reconnect_delay: Duration,
    /// For this long after the connection drops, events are still queued
    /// for the stream rather than delivered locally only: with several NATS
    /// servers in [`url`](Self::url), the client is usually connected to
    /// another one within about 100 ms, and an event delivered locally only
    /// never reaches the other instances. Past it (a real outage), events
    /// are delivered locally at once; the ones queued meanwhile are
    /// delivered locally when it ends, delayed by at most this. `ZERO`:
    /// local-only from the first moment.
    pub reconnect_grace: Duration,
    /// Events waiting to be published; when full, new events are delivered
    /// locally only (publishing never blocks).
    pub publish_queue: usize,
    /// How many recent events to load into the bus's replay ring at startup
    /// (`None`: the ring's size).
    pub warm_up: Option<usize>,
    /// Most events one [`crate::NatsCluster::replay_since`] returns; older
    /// cursors get [`Error::ReplayTooLong`] (→ resync).
    pub max_replay: usize,
    /// Deadline of one replay from JetStream (including the wait for a
    /// replay slot).
    pub replay_timeout: Duration,
    /// How many replays from JetStream run at once; more wait for a slot
    /// (so a reconnect storm after a deploy does not flood NATS).
    pub max_concurrent_replays: usize,
    /// How far around a UUID cursor's timestamp a replay looks for it in the
    /// stream (clock skew between instances and NATS).
    pub id_search_window: Duration,
    /// How many of the newest events the topics listing of the stream as an
    /// event log ([`crate::JetStreamLog`]) reads (`NATS_TOPIC_SCAN`; at most
    /// [`MAX_TOPIC_SCAN`]): older events are not counted.
    pub topic_scan: usize,
    /// The JetStream key-value bucket where named consumers keep their
    /// committed offsets ([`crate::KvOffsets`]; `NATS_CONSUMERS_BUCKET`,
    /// default `MATRIC_CONSUMERS`), shared by every instance. Created with
    /// the stream's [`replicas`](Self::replicas) and storage.
    pub consumers_bucket: String,
    /// The stream's duplicate window (default 2 minutes): a message whose
    /// `Nats-Msg-Id` (an event id, or an `Idempotency-Key` request's
    /// derived id) the stream stored within it is dropped and acknowledged
    /// as a duplicate of the original. JetStream keeps every id of the
    /// window in memory. At least 1 s and at most the retention's
    /// `max_age`; the host sets it from `DEDUP_WINDOW_SECS`.
    pub duplicate_window: Duration,
    /// How many partitions the stream's events are spread over, by a hash
    /// of their entity (`NATS_GROUP_PARTITIONS`, default 16, 1 to
    /// [`MAX_GROUP_PARTITIONS`]): a consumer group's unit of work across
    /// instances, so one entity's events are pulled by one instance at a
    /// time (docs/cluster.md). The same on every instance: an event's
    /// subject carries its partition.
    pub group_partitions: u16,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: DEFAULT_URL.to_owned(),
            stream: DEFAULT_STREAM.to_owned(),
            subject_prefix: DEFAULT_SUBJECT_PREFIX.to_owned(),
            instance_id: format!("instance-{}", uuid::Uuid::new_v4().simple()),
            retention: Retention::default(),
            memory_storage: false,
            replicas: 1,
            connect_timeout: Duration::from_secs(5),
            publish_ack_timeout: Duration::from_secs(2),
            publish_retries: 6,
            max_reconnect_delay: Duration::from_secs(5),
            reconnect_grace: Duration::from_secs(2),
            publish_queue: 65_536,
            warm_up: None,
            max_replay: 100_000,
            replay_timeout: Duration::from_secs(10),
            max_concurrent_replays: 8,
            id_search_window: Duration::from_secs(60),
            topic_scan: DEFAULT_TOPIC_SCAN,
            consumers_bucket: DEFAULT_CONSUMERS_BUCKET.to_owned(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            group_partitions: DEFAULT_GROUP_PARTITIONS,
        }
    }
}

/// Default of [`NatsConfig::topic_scan`].
pub const DEFAULT_TOPIC_SCAN: usize = 10_000;
/// Largest [`NatsConfig::topic_scan`] (one listing holds that many events).
pub const MAX_TOPIC_SCAN: usize = 100_000;
/// The stream's default duplicate window (2 minutes, JetStream's own
/// default too).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Default of [`NatsConfig::group_partitions`].
pub const DEFAULT_GROUP_PARTITIONS: u16 = 16;
/// Most [`NatsConfig::group_partitions`] (each is a JetStream consumer per
/// group).
pub const MAX_GROUP_PARTITIONS: u16 = 256;

/// Most stream replicas (JetStream's own limit).
pub const MAX_REPLICAS: usize = 5;
/// Most publish retries (about a minute of backoff).
pub const MAX_PUBLISH_RETRIES: u32 = 20;
/// Longest reconnect grace: events wait at most this long for NATS before
/// they are delivered locally only.
pub const MAX_RECONNECT_GRACE: Duration = Duration::from_secs(30);

impl NatsConfig {
    /// The defaults with another URL.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            ..NatsConfig::default()
        }
    }

    /// From the environment: `None` when `NATS_URL` is unset or empty (run
    /// as a single instance); otherwise the defaults overridden by
    /// `NATS_URL`, `NATS_STREAM`, `NATS_SUBJECT_PREFIX`, `NATS_INSTANCE_ID`,
    /// `NATS_MAX_AGE_SECS`, `NATS_REPLICAS` (stream replicas on a
    /// clustered NATS, e.g. 3; unset or unparsable: 1) and
    /// `NATS_PUBLISH_RETRIES` ([`publish_retries`](Self::publish_retries))
    /// and `NATS_RECONNECT_GRACE_MS` ([`reconnect_grace`](Self::reconnect_grace))
    /// and `NATS_TOPIC_SCAN` ([`topic_scan`](Self::topic_scan)) and
    /// `NATS_CONSUMERS_BUCKET` ([`consumers_bucket`](Self::consumers_bucket))
    /// and `NATS_GROUP_PARTITIONS` ([`group_partitions`](Self::group_partitions)).
    ///
    /// A numeric variable that is set but not a number, or out of its
    /// bounds ([`validate`](Self::validate)), is an [`Error::Config`] naming
    /// it.
    pub fn from_env() -> Result<Option<Self>, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        fn number<T: std::str::FromStr>(
            name: &str,
            raw: Option<String>,
        ) -> Result<Option<T>, Error> {
            raw.map(|v| {
                v.trim()
                    .parse::<T>()
                    .map_err(|_| Error::Config(format!("{name}={v:?} is not a whole number")))
            })
            .transpose()
        }
        let Some(url) = var("NATS_URL") else {
            return Ok(None);
        };
        let mut config = NatsConfig::new(url);
        if let Some(stream) = var("NATS_STREAM") {
            config.stream = stream;
        }
        if let Some(prefix) = var("NATS_SUBJECT_PREFIX") {
            config.subject_prefix = prefix;
        }
        if let Some(id) = var("NATS_INSTANCE_ID") {
            config.instance_id = id;
        }
        if let Some(secs) = number::<u64>("NATS_MAX_AGE_SECS", var("NATS_MAX_AGE_SECS"))? {
            config.retention.max_age = Duration::from_secs(secs);
        }
        if let Some(replicas) = number("NATS_REPLICAS", var("NATS_REPLICAS"))? {
            config.replicas = replicas;
        }
        if let Some(retries) = number("NATS_PUBLISH_RETRIES", var("NATS_PUBLISH_RETRIES"))? {
            config.publish_retries = retries;
        }
        if let Some(ms) = number("NATS_RECONNECT_GRACE_MS", var("NATS_RECONNECT_GRACE_MS"))? {
            config.reconnect_grace = Duration::from_millis(ms);
        }
        if let Some(scan) = number("NATS_TOPIC_SCAN", var("NATS_TOPIC_SCAN"))? {
            config.topic_scan = scan;
        }
        if let Some(bucket) = var("NATS_CONSUMERS_BUCKET") {
            config.consumers_bucket = bucket;
        }
        if let Some(n) = number("NATS_GROUP_PARTITIONS", var("NATS_GROUP_PARTITIONS"))? {
            config.group_partitions = n;
        }
        config.validate()?;
        Ok(Some(config))
    }

    /// The server URLs of [`url`](Self::url), split at commas and trimmed
    /// (the NATS client takes a list; one string with commas is not parsed
    /// as one).
    pub fn server_urls(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The subject of an event of type `dot_name` in `partition` and
    /// `topic`: `<prefix>.<dot name>.<partition>.<topic>`. The type comes
    /// first, so `<prefix>.job.>` still selects every job event; the
    /// partition is at a fixed place, so a group's consumer of one partition
    /// filters on [`partition_subjects`](Self::partition_subjects).
    pub fn subject_for(&self, dot_name: &str, partition: u16, topic: &str) -> String {
        format!(
            "{}.{dot_name}.{partition}.{}",
            self.subject_prefix,
            topic_tokens(topic)
        )
    }

    /// The subjects of every event in `partition`:
    /// `<prefix>.*.*.<partition>.>` (every dot name has two tokens).
    pub fn partition_subjects(&self, partition: u16) -> String {
        format!("{}.*.*.{partition}.>", self.subject_prefix)
    }

    /// The key-value bucket where instances agree on who pulls which of a
    /// group's partitions: [`consumers_bucket`](Self::consumers_bucket)
    /// with `_GROUPS` appended.
    pub fn groups_bucket(&self) -> String {
        format!("{}_GROUPS", self.consumers_bucket)
    }

    /// The key-value bucket of per-topic retentions and their pruning
    /// watermarks, shared by every instance:
    /// [`consumers_bucket`](Self::consumers_bucket) with `_TOPICS` appended.
    pub fn topics_bucket(&self) -> String {
        format!("{}_TOPICS", self.consumers_bucket)
    }

    /// The subjects of every event of `topic`: `<prefix>.*.*.*.<topic>`
    /// (the dot name's two tokens and the partition come first, so the
    /// topic, which may hold `.`, is the subject's tail).
    pub fn topic_subjects(&self, topic: &str) -> String {
        format!("{}.*.*.*.{}", self.subject_prefix, topic_tokens(topic))
    }

    /// The stream's subject filter: `<prefix>.>`.
    pub fn stream_subjects(&self) -> String {
        format!("{}.>", self.subject_prefix)
    }

    /// Checks names and bounds.
    pub fn validate(&self) -> Result<(), Error> {
        let bad_char = |c: char| c.is_whitespace() || matches!(c, '*' | '>' | '/' | '\\');
        if self.stream.is_empty() || self.stream.contains('.') || self.stream.chars().any(bad_char)
        {
            return Err(Error::Config(format!(
                "stream name {:?} must be non-empty without `.`, `*`, `>`, `/` or whitespace",
                self.stream
            )));
        }
        if self.subject_prefix.split('.').any(|t| t.is_empty())
            || self.subject_prefix.chars().any(bad_char)
        {
            return Err(Error::Config(format!(
                "subject prefix {:?} must be dot-separated non-empty tokens without wildcards",
                self.subject_prefix
            )));
        }
        if self.instance_id.trim().is_empty() {
            return Err(Error::Config("instance id must not be empty".to_owned()));
        }
        if self.server_urls().is_empty() {
            return Err(Error::Config("NATS URL must not be empty".to_owned()));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            return Err(Error::Config(format!(
                "NATS_REPLICAS={} is outside 1 to {MAX_REPLICAS} (JetStream's limit)",
                self.replicas
            )));
        }
        if self.publish_retries > MAX_PUBLISH_RETRIES {
            return Err(Error::Config(format!(
                "NATS_PUBLISH_RETRIES={} is over {MAX_PUBLISH_RETRIES}",
                self.publish_retries
            )));
        }
        if self.reconnect_grace > MAX_RECONNECT_GRACE {
            return Err(Error::Config(format!(
                "NATS_RECONNECT_GRACE_MS={} is over {}",
                self.reconnect_grace.as_millis(),
                MAX_RECONNECT_GRACE.as_millis()
            )));
        }
        if self.topic_scan > MAX_TOPIC_SCAN {
            return Err(Error::Config(format!(
                "NATS_TOPIC_SCAN={} is over {MAX_TOPIC_SCAN}",
                self.topic_scan
            )));
        }
        if self.consumers_bucket.is_empty()
            || self.consumers_bucket.len() > 64
            || !self
                .consumers_bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            return Err(Error::Config(format!(
                "NATS_CONSUMERS_BUCKET={:?} must be 1 to 64 characters of A-Z a-z 0-9 _ -",
                self.consumers_bucket
            )));
        }
        if !(1..=MAX_GROUP_PARTITIONS).contains(&self.group_partitions) {
            return Err(Error::Config(format!(
                "NATS_GROUP_PARTITIONS={} is outside 1 to {MAX_GROUP_PARTITIONS}",
                self.group_partitions
            )));
        }
        if self.duplicate_window < Duration::from_secs(1)
            || (!self.retention.max_age.is_zero() && self.duplicate_window > self.retention.max_age)
        {
            return Err(Error::Config(format!(
                "the duplicate window ({} s, DEDUP_WINDOW_SECS) must be at least 1 s and at most the \
                 stream's max age ({} s, NATS_MAX_AGE_SECS)",
                self.duplicate_window.as_secs(),
                self.retention.max_age.as_secs()
            )));
        }
        if self.publish_queue == 0 || self.max_replay == 0 || self.max_concurrent_replays == 0 {
            return Err(Error::Config(
                "publish_queue, max_replay and max_concurrent_replays must be at least 1"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

/// `topic` as subject tokens: itself, except that an empty part (`a..b`,
/// `a.`: valid topics, but a subject token may not be empty) is written
/// `E`, which no topic part can be (topics are lowercase), so distinct
/// topics keep distinct subjects.
fn topic_tokens(topic: &str) -> std::borrow::Cow<'_, str> {
    if topic.split('.').any(str::is_empty) {
        std::borrow::Cow::Owned(
            topic
                .split('.')
                .map(|part| if part.is_empty() { "E" } else { part })
                .collect::<Vec<_>>()
                .join("."),
        )
    } else {
        std::borrow::Cow::Borrowed(topic)
    }
}

/// The URL(s) without user info, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| {
            let u = u.trim();
            match (u.find("://"), u.rfind('@')) {
                (Some(scheme_end), Some(at)) if at > scheme_end => {
                    format!("{}://***@{}", &u[..scheme_end], &u[at + 1..])
                }
                (None, Some(at)) => format!("***@{}", &u[at + 1..]),
                _ => u.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_protocol_names() {
        let c = NatsConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(
            c.subject_for("job.progress", 7, "job"),
            "matric.events.job.progress.7.job"
        );
        assert_eq!(c.partition_subjects(7), "matric.events.*.*.7.>");
        // Empty topic parts become `E`: a subject token may not be empty.
        assert_eq!(
            c.subject_for("job.progress", 0, "a..b."),
            "matric.events.job.progress.0.a.E.b.E"
        );
        assert_eq!(c.topic_subjects("a..b."), "matric.events.*.*.*.a.E.b.E");
        assert_ne!(c.topic_subjects("a..b"), c.topic_subjects("a.e.b"));
        assert_eq!(c.stream_subjects(), "matric.events.>");
        assert_eq!(
            c.topic_subjects("gpu.large"),
            "matric.events.*.*.*.gpu.large"
        );
        assert_eq!(c.topics_bucket(), "MATRIC_CONSUMERS_TOPICS");
    }

    #[test]
    fn bad_names_are_refused() {
        for (stream, prefix) in [
            ("A.B", "x"),
            ("", "x"),
            ("A B", "x"),
            ("A", "x..y"),
            ("A", "x.*"),
        ] {
            let c = NatsConfig {
                stream: stream.into(),
                subject_prefix: prefix.into(),
                ..NatsConfig::default()
            };
            assert!(
                matches!(c.validate(), Err(Error::Config(_))),
                "{stream} {prefix}"
            );
        }
    }

    #[test]
    fn replicas_retries_and_grace_are_bounded() {
        for bad in [
            NatsConfig {
                replicas: 0,
                ..NatsConfig::default()
            },
            NatsConfig {
                replicas: MAX_REPLICAS + 1,
                ..NatsConfig::default()
            },
            NatsConfig {
                publish_retries: MAX_PUBLISH_RETRIES + 1,
                ..NatsConfig::default()
            },
            NatsConfig {
                reconnect_grace: MAX_RECONNECT_GRACE + Duration::from_millis(1),
                ..NatsConfig::default()
            },
            NatsConfig {
                topic_scan: MAX_TOPIC_SCAN + 1,
                ..NatsConfig::default()
            },
            NatsConfig {
                consumers_bucket: "a.b".into(),
                ..NatsConfig::default()
            },
            NatsConfig {
                consumers_bucket: "x".repeat(65),
                ..NatsConfig::default()
            },
            NatsConfig {
                duplicate_window: Duration::ZERO,
                ..NatsConfig::default()
            },
            NatsConfig {
                duplicate_window: Duration::from_secs(24 * 3600 + 1),
                ..NatsConfig::default()
            },
            NatsConfig {
                group_partitions: 0,
                ..NatsConfig::default()
            },
            NatsConfig {
                group_partitions: MAX_GROUP_PARTITIONS + 1,
                ..NatsConfig::default()
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config(_))), "{bad:?}");
        }
        let at_the_limits = NatsConfig {
            replicas: MAX_REPLICAS,
            publish_retries: MAX_PUBLISH_RETRIES,
            reconnect_grace: MAX_RECONNECT_GRACE,
            topic_scan: MAX_TOPIC_SCAN,
            consumers_bucket: "x".repeat(64),
            group_partitions: MAX_GROUP_PARTITIONS,
            ..NatsConfig::default()
        };
        assert!(at_the_limits.validate().is_ok());
        let one = NatsConfig {
            group_partitions: 1,
            ..NatsConfig::default()
        };
        assert!(one.validate().is_ok());
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact_url("nats://user:secret@h1:4222, tls://tok@h2:4222,nats://h3"),
            "nats://***@h1:4222,tls://***@h2:4222,nats://h3"
        );
        assert_eq!(redact_url("tok@h:1"), "***@h:1");
    }

    #[test]
    fn a_comma_list_is_several_servers() {
        let c = NatsConfig::new(" nats://h1:4222, nats://h2:4223,,nats://h3 ");
        assert_eq!(
            c.server_urls(),
            ["nats://h1:4222", "nats://h2:4223", "nats://h3"]
        );
        assert_eq!(NatsConfig::default().server_urls(), [DEFAULT_URL]);
    }
}
