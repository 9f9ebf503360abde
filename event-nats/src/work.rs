//! Work shared by the instances: each stream event handled once, by one
//! live instance, acknowledged only once its effect is durable.
//!
//! Every instance injects every stream event into its bus, so a side
//! effect that must happen once per event in the whole cluster (queueing
//! webhook deliveries in the shared database) cannot simply run as a sink
//! on every bus. Running it only on the event's origin instance
//! ([`NatsCluster::local_origin_only`]) loses the effect when that
//! instance dies between the publish's acknowledgement and the effect's
//! commit, and it has no way of telling afterwards which events those were.
//!
//! A [`WorkQueue`] instead reads the stream through one JetStream durable
//! pull consumer that every instance shares (`work_<name>`, explicit acks):
//! JetStream hands each event to one of the instances pulling, the instance
//! runs its [`WorkHandler`] on it and acknowledges it only when the
//! handler says the effect is committed. An event whose instance dies
//! first (or whose handler fails) is handed out again, after
//! [`WorkConfig::ack_wait`] (dead instance) or [`WorkConfig::retry_delay`]
//! (failure), to whichever instance pulls next, the same one included.
//! While a handler runs, its events' ack deadline is extended, so a slow
//! database does not make another instance take them too. The consumer
//! lives in JetStream, not in an instance: events published while every
//! instance is down are handled when the first one comes back (within the
//! stream's retention).
//!
//! So the effect happens **at least once** per event: an instance that
//! dies after its handler committed but before JetStream received the ack
//! leaves the event to be handled again elsewhere. A handler that must not
//! repeat an effect records the events it handled in the same transaction
//! and skips them (the webhook queue does, see `event-webhook`'s
//! `Webhooks::derive`). Events reach the handlers in stream order per
//! instance, but two instances handle interleaved parts of the stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use event_core::{Event, async_trait};
use futures_util::{FutureExt, StreamExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::{Error, NatsCluster};

/// The prefix of a work queue's durable consumer name (`work_<name>`),
/// apart from the consumer groups' `grp_`.
pub const WORK_CONSUMER_PREFIX: &str = "work_";

/// The bounds of [`WorkConfig::ack_wait`].
pub const WORK_ACK_WAIT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// The longest pull request (and so, at half of it, the heartbeat by which
/// a consumer lost with its NATS node is noticed), as for the instance's
/// own stream consumer.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// What a [`WorkHandler`] reports when it could not make its effect
/// durable; the events are handed out again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkError(pub String);

/// The effect a [`WorkQueue`] runs once per stream event (at least once:
/// see the module docs).
#[async_trait]
pub trait WorkHandler: Send + Sync + 'static {
    /// Handles `events` (stream order, at most [`WorkConfig::batch`]).
    /// Return `Ok` only once the effect of every one of them is durable:
    /// they are acknowledged then. On `Err` they are handed out again after
    /// [`WorkConfig::retry_delay`], to any instance.
    async fn handle(&self, events: Vec<Arc<Event>>) -> Result<(), WorkError>;
}

/// A work queue's settings.
#[derive(Debug, Clone)]
pub struct WorkConfig {
    /// The queue's name: its durable consumer is `work_<name>` (letters,
    /// digits, `-` and `_`). Every instance names the same.
    pub name: String,
    /// How long JetStream waits for an instance's ack before it hands the
    /// events to another instance: the delay after which the events of an
    /// instance that died are handled elsewhere. Within
    /// [`WORK_ACK_WAIT_RANGE`].
    pub ack_wait: Duration,
    /// Events handed to one instance and not yet acknowledged, at most
    /// (JetStream's `max_ack_pending`, for all instances together).
    pub max_ack_pending: usize,
    /// Events per handler call, at most (and the instance's read-ahead).
    pub batch: usize,
    /// How long events a handler failed on wait before they are handed out
    /// again (and this instance pauses before its next call).
    pub retry_delay: Duration,
}

impl WorkConfig {
    /// The defaults for a queue named `name`: ack wait 30 s, 4,096 events
    /// pending, batches of 256, retries after 1 s.
    pub fn new(name: impl Into<String>) -> Self {
        WorkConfig {
            name: name.into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 4096,
            batch: 256,
            retry_delay: Duration::from_secs(1),
        }
    }

    fn validate(&self) -> Result<(), Error> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(Error::Config(format!(
                "work queue name {:?}: 1-64 of A-Z a-z 0-9 - _",
                self.name
            )));
        }
        if !WORK_ACK_WAIT_RANGE.contains(&self.ack_wait) {
            return Err(Error::Config(format!(
                "work queue ack wait {} s: must be 1-3600 s",
                self.ack_wait.as_secs_f64()
            )));
        }
        if self.batch == 0 || self.max_ack_pending < self.batch {
            return Err(Error::Config(
                "work queue: batch must be at least 1 and at most max_ack_pending".to_owned(),
            ));
        }
        Ok(())
    }

    /// The durable consumer's name.
    pub fn consumer_name(&self) -> String {
        format!("{WORK_CONSUMER_PREFIX}{}", self.name)
    }
}

/// A running work queue on this instance; stop it with
/// [`shutdown`](Self::shutdown) (dropping it stops it too, without giving
/// back what it holds).
#[derive(Debug)]
pub struct WorkQueue {
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Drop for WorkQueue {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl WorkQueue {
    /// Stops pulling: the events handed to this instance and not handled
    /// yet are given back at once (nak) for the other instances; waits at
    /// most `deadline` for a handler call in progress.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.cancel.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(deadline, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl NatsCluster {
    /// Starts this instance's share of the work queue `config` names (see
    /// the module docs): creates its durable consumer on the cluster's
    /// stream when no instance did yet (delivering events published from
    /// now on), or takes the existing one over with `config`'s settings and
    /// its own position. Returns once the consumer exists, so every event
    /// published from then on is handled; fails on an invalid `config` or
    /// when JetStream refuses the consumer. Later failures (NATS away, the
    /// consumer lost with its node) are retried in the background.
    pub async fn work_queue(
        &self,
        config: WorkConfig,
        handler: Arc<dyn WorkHandler>,
    ) -> Result<WorkQueue, Error> {
        config.validate()?;
        let consumer = open(self, &config).await?;
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(
            self.clone(),
            config,
            handler,
            Some(consumer),
            cancel.clone(),
        ));
        Ok(WorkQueue {
            cancel,
            task: Some(task),
        })
    }
}

/// Creates (or updates) the durable consumer.
async fn open(cluster: &NatsCluster, config: &WorkConfig) -> Result<PullConsumer, Error> {
    let stream = &cluster.shared().stream;
    let name = config.consumer_name();
    let mut consumer = pull::Config {
        durable_name: Some(name.clone()),
        description: Some(format!("matric work queue {}", config.name)),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_ack_pending: i64::try_from(config.max_ack_pending).unwrap_or(i64::MAX),
        deliver_policy: DeliverPolicy::New,
        ..Default::default()
    };
    // An existing consumer keeps its start (JetStream refuses a change):
    // it continues from its own acknowledgements.
    if let Ok(existing) = stream.consumer_info(&name).await {
        consumer.deliver_policy = existing.config.deliver_policy;
    }
    stream
        .create_consumer(consumer)
        .await
        .map_err(|e| Error::Work(format!("consumer {name}: {e}")))
}

async fn run(
    cluster: NatsCluster,
    config: WorkConfig,
    handler: Arc<dyn WorkHandler>,
    mut opened: Option<PullConsumer>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        let consumer = match opened.take() {
            Some(consumer) => Ok(consumer),
            None => open(&cluster, &config).await,
        };
        let pulled = match consumer {
            Ok(consumer) => pull_loop(consumer, &config, handler.as_ref(), &cancel).await,
            Err(error) => Err(error),
        };
        match pulled {
            Ok(()) => return,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(queue = %config.name, %error, "work queue consumer failed; re-creating it");
            }
        }
        let delay = Duration::from_millis(100u64 << failures.min(6)).min(
            cluster
                .config()
                .max_reconnect_delay
                .max(Duration::from_millis(100)),
        );
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One pulled message, decoded.
struct Pulled {
    event: Arc<Event>,
    acker: Acker,
}

/// Pulls and handles until cancelled (`Ok`) or the consumer fails.
async fn pull_loop(
    consumer: PullConsumer,
    config: &WorkConfig,
    handler: &dyn WorkHandler,
    cancel: &CancellationToken,
) -> Result<(), Error> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.batch)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| Error::Work(e.to_string()))?;
    tracing::info!(queue = %config.name, consumer = %config.consumer_name(), "work queue running");
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            item = messages.next() => item,
        };
        let mut chunk = Vec::new();
        let mut next = first;
        // The first message, then whatever else has arrived already: a
        // handler call per burst, not per event, and no wait for a full
        // batch when events are few.
        loop {
            match next {
                Some(Ok(message)) => {
                    if let Some(pulled) = decode(message).await {
                        chunk.push(pulled);
                    }
                }
                Some(Err(e)) => {
                    give_back(chunk, None).await;
                    return Err(Error::Work(e.to_string()));
                }
                None => {
                    give_back(chunk, None).await;
                    return Err(Error::Work("the consumer's messages ended".to_owned()));
                }
            }
            if chunk.len() >= config.batch {
                break;
            }
            match messages.next().now_or_never() {
                Some(item) => next = item,
                None => break,
            }
        }
        if chunk.is_empty() {
            continue;
        }
        if !handle(config, handler, chunk, cancel).await {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(config.retry_delay) => {}
            }
        }
    }
    // Give back what was pulled ahead, so another instance takes it now
    // rather than after the ack wait.
    let mut ahead = Vec::new();
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Some(pulled) = decode(message).await {
            ahead.push(pulled);
        }
    }
    give_back(ahead, None).await;
    Ok(())
}

/// Runs the handler on `chunk`, keeping its events' ack deadline from
/// running out meanwhile; acks them when it succeeded, gives them back
/// when it failed. Whether it succeeded.
async fn handle(
    config: &WorkConfig,
    handler: &dyn WorkHandler,
    chunk: Vec<Pulled>,
    cancel: &CancellationToken,
) -> bool {
    let events: Vec<Arc<Event>> = chunk.iter().map(|p| p.event.clone()).collect();
    let n = events.len();
    let call = std::panic::AssertUnwindSafe(handler.handle(events)).catch_unwind();
    tokio::pin!(call);
    let mut progress = tokio::time::interval(config.ack_wait / 3);
    progress.tick().await;
    let outcome = loop {
        tokio::select! {
            outcome = &mut call => break outcome,
            _ = progress.tick() => {
                for pulled in &chunk {
                    let _ = pulled.acker.ack_with(AckKind::Progress).await;
                }
            }
        }
    };
    match outcome {
        Ok(Ok(())) => {
            for pulled in &chunk {
                if let Err(error) = pulled.acker.ack().await {
                    // JetStream hands the event out again after the ack
                    // wait: the handler must tolerate the repeat.
                    tracing::debug!(queue = %config.name, %error, "work queue ack not sent");
                }
            }
            true
        }
        Ok(Err(error)) => {
            if !cancel.is_cancelled() {
                tracing::warn!(queue = %config.name, events = n, %error, "work queue handler failed; the events are handed out again");
            }
            give_back(chunk, Some(config.retry_delay)).await;
            false
        }
        Err(_) => {
            tracing::error!(queue = %config.name, events = n, "work queue handler panicked; the events are handed out again");
            give_back(chunk, Some(config.retry_delay)).await;
            false
        }
    }
}

/// Naks `pulled`: handed out again after `delay` (at once with `None`).
async fn give_back(pulled: Vec<Pulled>, delay: Option<Duration>) {
    for p in pulled {
        let _ = p.acker.ack_with(AckKind::Nak(delay)).await;
    }
}

async fn decode(message: async_nats::jetstream::Message) -> Option<Pulled> {
    let stream_seq = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(error) => {
            tracing::warn!(%error, "work queue message without metadata; skipped");
            return None;
        }
    };
    let (message, acker) = message.split();
    match codec::decode(stream_seq, &message.payload, message.headers.as_ref()) {
        Ok(decoded) => Some(Pulled {
            event: Arc::new(decoded.event),
            acker,
        }),
        Err(error) => {
            tracing::warn!(stream_seq, %error, "undecodable stream message; the work queue skips it");
            let _ = acker.ack_with(AckKind::Term).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_bounded() {
        assert!(WorkConfig::new("webhooks").validate().is_ok());
        assert_eq!(WorkConfig::new("webhooks").consumer_name(), "work_webhooks");
        for bad in ["", "a.b", "a b", &"x".repeat(65)] {
            assert!(WorkConfig::new(bad).validate().is_err(), "{bad:?}");
        }
        let mut c = WorkConfig::new("w");
        c.ack_wait = Duration::from_millis(500);
        assert!(c.validate().is_err());
        c.ack_wait = Duration::from_secs(3601);
        assert!(c.validate().is_err());
        let mut c = WorkConfig::new("w");
        c.batch = c.max_ack_pending + 1;
        assert!(c.validate().is_err());
    }
}
