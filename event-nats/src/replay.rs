//! Replay for cursors older than the local ring, from JetStream.
//!
//! A client resuming on any instance names the last event it saw, by bus
//! sequence (SSE `v1`) or by UUID (SSE `envelope`). The local ring answers
//! recent cursors; older ones are served from the stream, as far back as its
//! retention reaches and up to `NatsConfig::max_replay` events. A UUID is
//! located by reading the stream's headers around the time embedded in the
//! UUIDv7 (`NatsConfig::id_search_window` either side).

use std::sync::Arc;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use event_core::{Cursor, Event, EventFilter, ReplayMiss, ReplaySource, Replayed, async_trait};
use futures_util::StreamExt;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::cluster::Shared;
use crate::codec::{self, bus_seq, stream_seq};
use crate::{Error, NatsCluster};

impl NatsCluster {
    /// Every event after `cursor`, oldest first: from the local replay ring
    /// when it still has them, else from JetStream (bounded by the stream's
    /// retention and `max_replay`). An error means the cursor cannot be
    /// served: answer the client with `resync_required`
    /// ([`Error::requires_resync`]).
    ///
    /// The events from JetStream reach up to the stream's newest event when
    /// the call was made, which may be ahead of what the local bus has
    /// injected yet. To hand over to live delivery without gap or duplicate,
    /// subscribe to the bus *before* calling this and drop live events whose
    /// `seq` is at most the last replayed one (or at most the cursor's
    /// sequence when the replay is empty).
    pub async fn replay_since(&self, cursor: &Cursor) -> Result<Vec<Arc<Event>>, Error> {
        match self.bus().replay_since(cursor) {
            Ok(events) => Ok(events),
            Err(ReplayMiss::Expired | ReplayMiss::Unknown) => self.replay_from_stream(cursor).await,
        }
    }

    /// Like [`replay_since`](Self::replay_since) but always from JetStream.
    /// A cursor before events a topic's own retention removed is
    /// [`Error::CursorExpired`].
    pub async fn replay_from_stream(&self, cursor: &Cursor) -> Result<Vec<Arc<Event>>, Error> {
        let (events, after) = self.replay_bounded(cursor).await?;
        self.check_topics(cursor, cursor_seq(cursor, after), None)
            .await?;
        Ok(events)
    }

    /// Refuses a reader with `filter` (`None`: any event) whose cursor, at
    /// bus sequence `after`, is older than events a topic's own retention
    /// removed. Asked after the read: a prune stores the topic's watermark
    /// before it purges, so one that cut into the read is seen here.
    async fn check_topics(
        &self,
        cursor: &Cursor,
        after: u64,
        filter: Option<&EventFilter>,
    ) -> Result<(), Error> {
        let shared = self.shared();
        let records = shared.topics.records(shared).await?;
        if event_core::log::pruned_for(&records, filter, after) {
            return Err(Error::CursorExpired(cursor.to_string()));
        }
        Ok(())
    }

    async fn replay_for(
        &self,
        cursor: &Cursor,
        filter: Option<&EventFilter>,
    ) -> Result<Replayed, Error> {
        let (events, after) = self.replay_bounded(cursor).await?;
        let cursor_seq = cursor_seq(cursor, after);
        self.check_topics(cursor, cursor_seq, filter).await?;
        Ok(Replayed::new(events, cursor_seq))
    }

    async fn history_for(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
        filter: Option<&EventFilter>,
    ) -> Result<Vec<Arc<Event>>, Error> {
        let shared = self.shared();
        let timeout = shared.config.replay_timeout;
        let (events, after) = tokio::time::timeout(timeout, shared.history_page(cursor, limit))
            .await
            .map_err(|_| Error::Replay(format!("no answer within {} ms", timeout.as_millis())))??;
        // From the oldest stored event: nothing before it is claimed.
        if let (Some(cursor), Some(after)) = (cursor, after) {
            self.check_topics(cursor, cursor_seq(cursor, after), filter)
                .await?;
        }
        Ok(events)
    }

    /// The replay from JetStream and the stream sequence of the cursor,
    /// within `replay_timeout`.
    async fn replay_bounded(&self, cursor: &Cursor) -> Result<(Vec<Arc<Event>>, u64), Error> {
        let timeout = self.config().replay_timeout;
        match tokio::time::timeout(timeout, self.replay_inner(cursor)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Replay(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn replay_inner(&self, cursor: &Cursor) -> Result<(Vec<Arc<Event>>, u64), Error> {
        let shared = self.shared();
        if !shared.state.is_connected() {
            return Err(Error::Disconnected);
        }
        let _slot = shared
            .replay_slots
            .acquire()
            .await
            .map_err(|e| Error::Replay(e.to_string()))?;
        let info = shared
            .stream
            .get_info()
            .await
            .map_err(|e| Error::Replay(e.to_string()))?;
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let after = shared.resolve(cursor, first, last).await?;
        if after == last {
            return Ok((Vec::new(), after));
        }
        let count = last - after;
        if count > shared.config.max_replay as u64 {
            return Err(Error::ReplayTooLong {
                count,
                limit: shared.config.max_replay,
            });
        }
        let events = shared.read_range(after + 1, last, count as usize).await?;
        Ok((events, after))
    }
}

impl Shared {
    /// The stream sequence `cursor` names, if everything after it is still
    /// in the stream (`first..=last`).
    async fn resolve(&self, cursor: &Cursor, first: u64, last: u64) -> Result<u64, Error> {
        let after = match *cursor {
            Cursor::Seq(seq) => stream_seq(seq),
            Cursor::Id(id) => self.locate(id, first, last).await?,
        };
        if after > last {
            return Err(Error::CursorUnknown(cursor.to_string()));
        }
        if after.saturating_add(1) < first {
            return Err(Error::CursorExpired(cursor.to_string()));
        }
        Ok(after)
    }

    /// A page of history: at most `limit` events after `cursor` (from the
    /// oldest stored when `None`), however far the stream reaches, and the
    /// stream sequence of the cursor.
    async fn history_page(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<Arc<Event>>, Option<u64>), Error> {
        if !self.state.is_connected() {
            return Err(Error::Disconnected);
        }
        let _slot = self
            .replay_slots
            .acquire()
            .await
            .map_err(|e| Error::Replay(e.to_string()))?;
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| Error::Replay(e.to_string()))?;
        if info.state.messages == 0 {
            return match cursor {
                None => Ok((Vec::new(), None)),
                Some(cursor) => Err(Error::CursorUnknown(cursor.to_string())),
            };
        }
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let after = match cursor {
            Some(cursor) => self.resolve(cursor, first, last).await?,
            None => first - 1,
        };
        let events = self
            .read_range(after + 1, last, limit.min(self.config.max_replay))
            .await?;
        Ok((events, cursor.map(|_| after)))
    }

    /// The events at stream sequences `start..=end`, at most `limit`, oldest
    /// first (one ordered consumer; call only when `end` is stored, or it
    /// waits for new events until the caller's deadline). Undecodable
    /// messages are skipped with a warning.
    pub(crate) async fn read_range(
        &self,
        start: u64,
        end: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, Error> {
        if start > end || limit == 0 {
            return Ok(Vec::new());
        }
        let (mut messages, _consumer) = self
            .ordered(
                DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                false,
            )
            .await?;
        let mut events = Vec::with_capacity(limit.min((end - start + 1) as usize).min(4096));
        while let Some(item) = messages.next().await {
            let message = item.map_err(|e| Error::Replay(e.to_string()))?;
            let info = message.info().map_err(|e| Error::Replay(e.to_string()))?;
            let seq = info.stream_sequence;
            let pending = info.pending;
            if seq > end {
                break;
            }
            match codec::decode(seq, &message.payload, message.headers.as_ref()) {
                Ok(decoded) => events.push(Arc::new(decoded.event)),
                Err(error) => {
                    tracing::warn!(seq, %error, "undecodable stream message; not read")
                }
            }
            if seq == end || pending == 0 || events.len() >= limit {
                break;
            }
        }
        Ok(events)
    }

    /// The stream sequence of the event with this id.
    pub(crate) async fn locate(&self, id: Uuid, first: u64, last: u64) -> Result<u64, Error> {
        let unknown = || Error::CursorUnknown(id.to_string());
        if last < first {
            return Err(unknown());
        }
        let (secs, nanos) = id.get_timestamp().ok_or_else(unknown)?.to_unix();
        let made_at = i64::try_from(secs)
            .ok()
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .map(|t| t + time::Duration::nanoseconds(i64::from(nanos)))
            .ok_or_else(unknown)?;
        let window = time::Duration::try_from(self.config.id_search_window)
            .unwrap_or(time::Duration::minutes(1));
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| Error::Replay(e.to_string()))?;
        if info.state.first_timestamp > made_at + window {
            return Err(Error::CursorExpired(id.to_string()));
        }
        // A consumer waits for new messages forever: only start one when the
        // window holds at least one.
        if info.state.last_timestamp < made_at - window {
            return Err(unknown());
        }
        let (mut headers, _consumer) = self
            .ordered(
                DeliverPolicy::ByStartTime {
                    start_time: made_at - window,
                },
                true,
            )
            .await?;
        let limit = self.config.max_replay.saturating_mul(10);
        let mut scanned = 0usize;
        while let Some(item) = headers.next().await {
            let message = item.map_err(|e| Error::Replay(e.to_string()))?;
            let info = message.info().map_err(|e| Error::Replay(e.to_string()))?;
            let (seq, pending, stored_at) = (info.stream_sequence, info.pending, info.published);
            if codec::message_id(message.headers.as_ref()) == Some(id) {
                return Ok(seq);
            }
            scanned += 1;
            if pending == 0 || seq >= last || stored_at > made_at + window || scanned >= limit {
                break;
            }
        }
        Err(unknown())
    }

    /// An ordered consumer for one replay. It is deleted when the returned
    /// guard drops, rather than lingering until the server's inactivity
    /// timeout.
    pub(crate) async fn ordered(
        &self,
        deliver_policy: DeliverPolicy,
        headers_only: bool,
    ) -> Result<(pull::Ordered, ConsumerGuard), Error> {
        let config = pull::OrderedConfig {
            deliver_policy,
            headers_only,
            ..Default::default()
        };
        ordered_on(&self.stream, config)
            .await
            .map(|(messages, guard, _)| (messages, guard))
    }
}

/// An ordered consumer on `stream` with `config`, the guard that deletes
/// it, and how many messages it has to deliver (when it was created).
pub(crate) async fn ordered_on(
    stream: &async_nats::jetstream::stream::Stream,
    config: pull::OrderedConfig,
) -> Result<(pull::Ordered, ConsumerGuard, u64), Error> {
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| Error::Replay(e.to_string()))?;
    let info = consumer.cached_info();
    let guard = ConsumerGuard {
        stream: stream.clone(),
        name: info.name.clone(),
    };
    let pending = info.num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| Error::Replay(e.to_string()))?;
    Ok((messages, guard, pending))
}

/// For `event_sse::SseEndpoint::with_replay_source` (or any transport):
/// cursors the local ring misses are served from JetStream, as
/// [`NatsCluster::replay_from_stream`] does. Every [`Error`] is a miss
/// (`resync_required`): [`Error::CursorUnknown`] as
/// [`ReplayMiss::Unknown`], the others as [`ReplayMiss::Expired`].
///
/// [`Replayed::through`] is the last replayed event's bus sequence or, when
/// nothing follows the cursor, the cursor's own (for a UUID cursor, the bus
/// sequence of its stream position). So a client that resumes here with an
/// event this instance has not injected yet does not get it twice.
///
/// A cursor older than events a topic's own retention removed (its
/// watermark, [`JetStreamLog`](crate::JetStreamLog)) is
/// [`ReplayMiss::Expired`] for a reader whose filter can match that topic
/// (`replay_matching`, `history_matching`; any reader without a filter),
/// and served for the others.
#[async_trait]
impl ReplaySource for NatsCluster {
    async fn replay_since(&self, cursor: &Cursor) -> Result<Replayed, ReplayMiss> {
        self.replay_for(cursor, None).await.map_err(miss)
    }

    async fn replay_matching(
        &self,
        cursor: &Cursor,
        filter: &EventFilter,
    ) -> Result<Replayed, ReplayMiss> {
        self.replay_for(cursor, Some(filter)).await.map_err(miss)
    }

    /// A page of the stream after `cursor`, or from its oldest event: the
    /// history route in cluster mode (`since`, then its own `until`,
    /// `offset`, filter and `limit` within the page).
    async fn history(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        self.history_for(cursor, limit, None).await.map_err(miss)
    }

    async fn history_matching(
        &self,
        cursor: Option<&Cursor>,
        limit: usize,
        filter: &EventFilter,
    ) -> Result<Vec<Arc<Event>>, ReplayMiss> {
        self.history_for(cursor, limit, Some(filter))
            .await
            .map_err(miss)
    }
}

/// The bus sequence a replay after `cursor` is complete through when it
/// holds no event: the cursor's own, or for a UUID the bus sequence of its
/// stream position `after`.
fn cursor_seq(cursor: &Cursor, after: u64) -> u64 {
    match *cursor {
        Cursor::Seq(seq) => seq,
        Cursor::Id(_) => bus_seq(after),
    }
}

/// Every [`Error`] is a miss: [`Error::CursorUnknown`] as
/// [`ReplayMiss::Unknown`], the others as [`ReplayMiss::Expired`].
fn miss(error: Error) -> ReplayMiss {
    tracing::debug!(code = error.code(), %error, "cursor not served from JetStream");
    match error {
        Error::CursorUnknown(_) => ReplayMiss::Unknown,
        _ => ReplayMiss::Expired,
    }
}

/// Deletes a replay's consumer in the background when dropped.
pub(crate) struct ConsumerGuard {
    stream: async_nats::jetstream::stream::Stream,
    name: String,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let stream = self.stream.clone();
        let name = std::mem::take(&mut self.name);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(error) = stream.delete_consumer(&name).await {
                    tracing::debug!(%error, consumer = %name, "could not delete a replay consumer");
                }
            });
        }
    }
}
