//! Local events → JetStream.
//!
//! [`Forwarder`] is the bus's [`Upstream`]: `EventBus::publish` hands it the
//! event (synchronously, never blocking) and it queues the event for the
//! publisher task, or refuses it, so the bus delivers it locally at once,
//! when NATS has been unreachable for longer than
//! `NatsConfig::reconnect_grace` or the queue is full. Within the grace
//! (a failover to another NATS server) the task waits for the connection
//! before sending, and delivers locally what is still queued when the grace
//! runs out. The task publishes queued
//! events in batches (pipelined: all sent, then all acknowledgements
//! awaited), in queue order. A failed publish is retried with the same
//! `Nats-Msg-Id`, so the stream stores it once even if an earlier attempt
//! did arrive; after the last retry the event is delivered locally only.
//! While it waits for the next retry, the task probes: it publishes the
//! first refused event alone every [`PROBE_INTERVAL`], and retries the rest
//! as soon as JetStream takes it (a stream leader elected), in order.
//!
//! An event published with [`Upstream::forward_acked`] (the publish API's
//! awaited `202`) travels in the same queue and batches; its publisher is
//! told JetStream's acknowledgement (stream sequence, and whether the
//! stream already had the message: `duplicate`, with the original's
//! sequence). When NATS is unreachable it is delivered locally only like
//! any other (refused at once past the grace, or after the last retry), and
//! its publisher is told so (`local_only`, with the local sequence).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use event_core::{DedupKey, Error as CoreError, Event, PendingAck, Stored, Upstream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Shared;
use crate::codec::{self, bus_seq};

/// Most events sent before their acknowledgements are awaited.
const MAX_BATCH: usize = 256;

/// What became of one awaited event.
enum AckResult {
    /// JetStream stored it at this stream sequence, or (`true`) already had
    /// the message there.
    Stream(u64, bool),
    /// Given up on: delivered on this instance only, under this bus
    /// sequence.
    Local(u64),
    /// Given up on, and the stream turned out to have it after all (its
    /// sequence unknown here).
    Lost,
}

/// A publisher waiting for an event's acknowledgement.
pub(crate) struct Waiter {
    tx: oneshot::Sender<AckResult>,
    dedup: Option<DedupKey>,
}

/// One event in the publish queue.
pub(crate) struct Outgoing {
    event: Arc<Event>,
    waiter: Option<Waiter>,
}

impl Outgoing {
    fn message(&self, shared: &Shared) -> (String, PublishMessage) {
        let event = &self.event;
        let dedup = self.waiter.as_ref().and_then(|w| w.dedup.as_ref());
        let subject = shared.config.subject_for(
            event.kind().dot_name(),
            crate::groups::partition_of(event, shared.config.group_partitions),
            event.topic(),
        );
        let message = PublishMessage::build()
            .payload(event.envelope_json().clone())
            .headers(codec::headers(event, &shared.config.instance_id, dedup));
        (subject, message)
    }

    /// Tells the waiting publisher, if any, what JetStream answered.
    fn stored(self, stream_seq: u64, duplicate: bool) {
        if let Some(waiter) = self.waiter {
            // The publisher may have stopped waiting (its timeout): fine.
            let _ = waiter.tx.send(AckResult::Stream(stream_seq, duplicate));
        }
    }

    /// Given up on: delivered locally only, and the waiting publisher told.
    fn give_up(self, shared: &Shared) {
        let local = shared.deliver_locally(&self.event);
        if let Some(waiter) = self.waiter {
            let _ = waiter.tx.send(match local {
                Some(event) => AckResult::Local(event.seq()),
                None => AckResult::Lost,
            });
        }
    }
}

/// The bus's upstream.
pub(crate) struct Forwarder {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Outgoing>,
}

impl Forwarder {
    pub(crate) fn new(shared: Arc<Shared>, tx: mpsc::Sender<Outgoing>) -> Self {
        Forwarder { shared, tx }
    }

    /// Disconnected for longer than the grace: an outage, not a failover.
    fn in_outage(&self) -> bool {
        self.shared
            .state
            .grace_left(self.shared.config.reconnect_grace)
            .is_some_and(|left| left.is_zero())
    }

    /// The event back, for the bus to publish locally right after; it is
    /// remembered as ours so `originated_here` and `local_origin_only` know
    /// it.
    fn refuse(&self, event: Arc<Event>) -> Arc<Event> {
        self.shared.origins.insert(event.id());
        self.shared.stats.local_only();
        event
    }
}

impl Upstream for Forwarder {
    fn forward(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        if self.in_outage() {
            return Err(self.refuse(event));
        }
        match self.tx.try_send(Outgoing {
            event,
            waiter: None,
        }) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(out)) => {
                tracing::warn!("NATS publish queue full; delivering the event locally only");
                Err(self.refuse(out.event))
            }
            Err(mpsc::error::TrySendError::Closed(out)) => Err(self.refuse(out.event)),
        }
    }

    fn forward_acked(
        &self,
        event: Arc<Event>,
        dedup: Option<DedupKey>,
    ) -> Result<PendingAck, Arc<Event>> {
        if self.in_outage() {
            return Err(self.refuse(event));
        }
        let (tx, rx) = oneshot::channel();
        let (event_id, ours) = (event.id(), event.envelope_json().clone());
        let out = Outgoing {
            event,
            waiter: Some(Waiter { tx, dedup }),
        };
        if let Err(e) = self.tx.try_send(out) {
            let out = match e {
                mpsc::error::TrySendError::Full(out) | mpsc::error::TrySendError::Closed(out) => {
                    out
                }
            };
            return Err(self.refuse(out.event));
        }
        let shared = self.shared.clone();
        Ok(Box::pin(async move {
            let answer = rx
                .await
                .map_err(|_| CoreError::Unstored("the NATS publisher stopped".to_owned()))?;
            let (stream_seq, duplicate) = match answer {
                AckResult::Stream(seq, duplicate) => (seq, duplicate),
                AckResult::Local(seq) => {
                    return Ok(Stored {
                        seq,
                        event_id,
                        duplicate: false,
                        fingerprint: None,
                        local_only: true,
                    });
                }
                AckResult::Lost => {
                    return Err(CoreError::Unstored(
                        "JetStream stored the event after its publisher gave up".to_owned(),
                    ));
                }
            };
            if !duplicate {
                return Ok(Stored {
                    seq: bus_seq(stream_seq),
                    event_id,
                    duplicate: false,
                    fingerprint: None,
                    local_only: false,
                });
            }
            original(&shared, stream_seq, ours).await
        }))
    }
}

/// What the stream holds at `stream_seq`, which JetStream named as the
/// original of a message it deduplicated: its id and fingerprint. A
/// duplicate of the very event sent now (a retry by the publisher task
/// whose first attempt was stored but not acknowledged) is not reported as
/// a duplicate: the same envelope (id and time) means it is this publish.
async fn original(
    shared: &Shared,
    stream_seq: u64,
    ours: event_core::Bytes,
) -> Result<Stored, CoreError> {
    let message = shared
        .stream
        .get_raw_message(stream_seq)
        .await
        .map_err(|e| CoreError::Unstored(format!("cannot read the original event: {e}")))?;
    let headers = Some(&message.headers);
    let decoded = codec::decode(stream_seq, &message.payload, headers)
        .map_err(|e| CoreError::Unstored(format!("cannot decode the original event: {e}")))?;
    Ok(Stored {
        seq: bus_seq(stream_seq),
        event_id: decoded.event.id(),
        duplicate: message.payload != ours,
        fingerprint: codec::fingerprint(headers),
        local_only: false,
    })
}

/// How often a publisher waiting between retries offers the stream the
/// first of its refused events again. A stream-leader election makes
/// JetStream refuse every publish for 4 to 9 s, and the retries' waits
/// double up to 6.4 s, so without this the next retry came up to 6.4 s
/// after JetStream took events again, every later event of the instance
/// waiting behind it (the leader drill: led again 7.2 s after the kill,
/// every event in the stream at 13 s; with probes, 6.2 to 6.7 s for a
/// leader at 6.1 to 6.7 s). A probe is one publish, which JetStream refuses
/// at once while it has no leader; the event's `Nats-Msg-Id` makes a probe
/// that was stored but not acknowledged harmless.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// The publisher task.
pub(crate) async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<Outgoing>,
    cancel: CancellationToken,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            ev = rx.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        publish_batch(&shared, &mut batch, &cancel).await;
    }
    // Shutting down: the bus no longer forwards here; publish what is
    // queued (no retries), deliver locally what fails.
    rx.close();
    while let Ok(ev) = rx.try_recv() {
        batch.push(ev);
        if batch.len() == MAX_BATCH {
            publish_batch(&shared, &mut batch, &cancel).await;
        }
    }
    publish_batch(&shared, &mut batch, &cancel).await;
}

/// Whether the connection is up, waiting for it while the reconnect grace
/// lasts (a failover to another NATS server); `false` when it is still down
/// after that (an outage: deliver locally) or on shutdown.
async fn reconnected(shared: &Shared, cancel: &CancellationToken) -> bool {
    let Some(left) = shared.state.grace_left(shared.config.reconnect_grace) else {
        return true;
    };
    if left.is_zero() {
        return false;
    }
    let mut state = shared.state.subscribe();
    let connected = state.wait_for(|s| *s == crate::ConnectionState::Connected);
    tokio::select! {
        () = cancel.cancelled() => false,
        up = tokio::time::timeout(left, connected) => matches!(up, Ok(Ok(_))),
    }
}

async fn publish_batch(shared: &Shared, batch: &mut Vec<Outgoing>, cancel: &CancellationToken) {
    let mut pending = std::mem::take(batch);
    let mut attempt = 0u32;
    while !pending.is_empty() {
        if !reconnected(shared, cancel).await {
            break;
        }
        let mut sent: Vec<(Outgoing, Option<PublishAckFuture>)> = Vec::with_capacity(pending.len());
        // The hop into the stream is a span of each traced event's trace,
        // open until JetStream acknowledges it.
        let spans: Vec<tracing::Span> = pending
            .iter()
            .filter_map(|out| {
                let e = &out.event;
                let context = e.meta().trace.as_ref()?;
                let span = tracing::info_span!(
                    target: "matric::nats",
                    "nats.publish",
                    "event.id" = %e.id(),
                    "event.type" = e.kind().type_name(),
                );
                event_core::trace::link(&span, context);
                Some(span)
            })
            .collect();
        for out in pending.drain(..) {
            let (subject, message) = out.message(shared);
            match shared.js.send_publish(subject, message).await {
                Ok(ack) => sent.push((out, Some(ack))),
                Err(error) => {
                    tracing::debug!(%error, "NATS publish failed");
                    sent.push((out, None));
                }
            }
        }
        let mut failed = Vec::new();
        let mut last_error = None;
        for (out, ack) in sent {
            match ack {
                Some(ack) => match ack.await {
                    Ok(ack) => {
                        shared.stats.published();
                        out.stored(ack.sequence, ack.duplicate);
                    }
                    Err(error) => {
                        last_error = Some(error.to_string());
                        failed.push(out);
                    }
                },
                None => failed.push(out),
            }
        }
        drop(spans);
        pending = failed;
        if pending.is_empty() || attempt >= shared.config.publish_retries || cancel.is_cancelled() {
            break;
        }
        attempt += 1;
        tracing::warn!(
            events = pending.len(),
            attempt,
            error = last_error.as_deref().unwrap_or("not sent"),
            "JetStream publish failed; retrying"
        );
        let delay = Duration::from_millis(100u64 << attempt.min(6));
        probe_until(shared, &mut pending, Instant::now() + delay, cancel).await;
    }
    if !pending.is_empty() {
        tracing::warn!(
            events = pending.len(),
            "could not publish to JetStream; delivering locally only"
        );
        for out in pending {
            out.give_up(shared);
        }
    }
}

/// Waits until `until` (the next retry), but every [`PROBE_INTERVAL`]
/// publishes the first of `pending` alone: once JetStream stores it (a new
/// stream leader), it leaves `pending` and the wait ends, so the rest is
/// retried at once and in order. A probe is not a retry: `until` is the
/// retry schedule's, so the publisher gives up when it did before.
async fn probe_until(
    shared: &Shared,
    pending: &mut Vec<Outgoing>,
    until: Instant,
    cancel: &CancellationToken,
) {
    loop {
        let next = (Instant::now() + PROBE_INTERVAL).min(until);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(next) => {},
        }
        if next >= until {
            return;
        }
        // Disconnected: the retry waits for the reconnection.
        if !shared.state.is_connected() {
            continue;
        }
        let Some(first) = pending.first() else {
            return;
        };
        let (subject, message) = first.message(shared);
        let probe = async {
            let ack = shared.js.send_publish(subject, message).await?;
            ack.await
        };
        // Still refused, or no answer before the retry (which sends it
        // again under the same id): wait on.
        if let Ok(Ok(ack)) = tokio::time::timeout_at(until, probe).await {
            tracing::debug!("JetStream takes publishes again; retrying now");
            shared.stats.published();
            pending.remove(0).stored(ack.sequence, ack.duplicate);
            return;
        }
    }
}
