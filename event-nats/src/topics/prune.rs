//! Pruning one topic's subjects (see the [parent module](super)).

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use event_core::Retention;
use futures_util::StreamExt;
use time::OffsetDateTime;

use super::{CALL_TIMEOUT, MAX_PRUNE_PER_ROUND, PRUNE_CHUNK, bounded};
use crate::Error;
use crate::cluster::Shared;
use crate::codec::bus_seq;
use crate::replay::ordered_on;

/// Removes the oldest of `topic`'s events until `retention`'s bounds hold
/// at `now` (see the module docs); the newest removed event's bus
/// sequence, if any was.
pub(crate) async fn prune(
    shared: &Shared,
    topic: &str,
    retention: &Retention,
    now: OffsetDateTime,
) -> Result<Option<u64>, Error> {
    let cutoff = retention
        .max_age
        .and_then(|age| time::Duration::try_from(age).ok())
        .and_then(|age| now.checked_sub(age));
    let subject = shared.config.topic_subjects(topic);
    let by_count_or_age = by_count_or_age(shared, topic, &subject, retention, cutoff).await?;
    let by_size = match retention.max_bytes {
        Some(max) => super::sizes::cut(shared, topic, &subject, max).await?,
        None => None,
    };
    if let Some(seq) = by_size
        && by_count_or_age.is_none_or(|c| c < seq)
    {
        purge_through(shared, topic, &subject, seq).await?;
    }
    Ok(by_count_or_age.max(by_size).map(bus_seq))
}

/// The `max_events` and `max_age` part of [`prune`]: the newest removed
/// stream sequence.
async fn by_count_or_age(
    shared: &Shared,
    topic: &str,
    subject: &str,
    retention: &Retention,
    cutoff: Option<OffsetDateTime>,
) -> Result<Option<u64>, Error> {
    if retention.max_events.is_none() && cutoff.is_none() {
        return Ok(None);
    }
    let (mut messages, _guard, pending) = bounded(
        shared,
        "read a topic",
        ordered_on(
            &shared.stream,
            pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::All,
                headers_only: true,
                ..Default::default()
            },
        ),
    )
    .await?;
    if pending == 0 {
        return Ok(None);
    }
    let mut through: Option<u64> = None;
    let mut purged: Option<u64> = None;
    let mut read = 0usize;
    loop {
        let message = match tokio::time::timeout(CALL_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(Error::Replay(e.to_string())),
            Ok(None) => break,
            // Messages counted but gone meanwhile (another instance pruned
            // them): remove what was found.
            Err(_) => break,
        };
        let info = message.info().map_err(|e| Error::Replay(e.to_string()))?;
        let remove = retention.max_events.is_some_and(|n| info.pending >= n)
            || cutoff.is_some_and(|c| info.published < c);
        if !remove {
            break;
        }
        through = Some(info.stream_sequence);
        read += 1;
        if info.pending == 0 || read >= MAX_PRUNE_PER_ROUND {
            break;
        }
        if read.is_multiple_of(PRUNE_CHUNK) {
            purge_through(shared, topic, subject, info.stream_sequence).await?;
            purged = through;
        }
    }
    if let Some(seq) = through
        && purged != through
    {
        purge_through(shared, topic, subject, seq).await?;
    }
    Ok(through)
}

/// Raises `topic`'s watermark to `seq` (a stream sequence), tells the
/// consumer groups that had not settled events below it, and then purges
/// the topic's messages at or below it: never the other way round, so a
/// reader that checks the watermark after reading sees every purge that
/// could have cut into its read.
async fn purge_through(shared: &Shared, topic: &str, subject: &str, seq: u64) -> Result<(), Error> {
    shared.topics.raise(shared, topic, bus_seq(seq)).await?;
    // Consumer groups cannot see a purge afterwards: they are told first.
    if let Err(error) = bounded(
        shared,
        "check the groups",
        crate::groups::note_purge(shared, seq),
    )
    .await
    {
        tracing::warn!(%error, topic, "consumer groups not checked before a topic's purge; one that had not settled its events is not told");
    }
    bounded(shared, "purge a topic", async {
        shared
            .stream
            .purge()
            .filter(subject)
            .sequence(seq + 1)
            .await
            .map(|_| ())
            .map_err(|e| Error::Stream {
                stream: shared.config.stream.clone(),
                message: format!("purge of topic {topic:?}: {e}"),
            })
    })
    .await
}
