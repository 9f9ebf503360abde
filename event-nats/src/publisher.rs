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

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use event_core::{Event, Upstream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::Shared;
use crate::codec;

/// Most events sent before their acknowledgements are awaited.
const MAX_BATCH: usize = 256;

/// The bus's upstream.
pub(crate) struct Forwarder {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Arc<Event>>,
}

impl Forwarder {
    pub(crate) fn new(shared: Arc<Shared>, tx: mpsc::Sender<Arc<Event>>) -> Self {
        Forwarder { shared, tx }
    }

    fn refuse(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        // The bus publishes it locally right after this returns; remember it
        // as ours so `originated_here` and `local_origin_only` know it.
        self.shared.origins.insert(event.id());
        self.shared.stats.local_only();
        Err(event)
    }
}

impl Upstream for Forwarder {
    fn forward(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
        // Disconnected for longer than the grace: an outage, not a failover.
        let grace = self.shared.config.reconnect_grace;
        if self
            .shared
            .state
            .grace_left(grace)
            .is_some_and(|left| left.is_zero())
        {
            return self.refuse(event);
        }
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(event)) => {
                tracing::warn!("NATS publish queue full; delivering the event locally only");
                self.refuse(event)
            }
            Err(mpsc::error::TrySendError::Closed(event)) => self.refuse(event),
        }
    }
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
    mut rx: mpsc::Receiver<Arc<Event>>,
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

async fn publish_batch(shared: &Shared, batch: &mut Vec<Arc<Event>>, cancel: &CancellationToken) {
    let mut pending = std::mem::take(batch);
    let mut attempt = 0u32;
    while !pending.is_empty() {
        if !reconnected(shared, cancel).await {
            break;
        }
        let mut sent: Vec<(Arc<Event>, Option<PublishAckFuture>)> =
            Vec::with_capacity(pending.len());
        // The hop into the stream is a span of each traced event's trace,
        // open until JetStream acknowledges it.
        let spans: Vec<tracing::Span> = pending
            .iter()
            .filter_map(|e| {
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
        for event in pending.drain(..) {
            let subject = shared.config.subject_for(event.kind().dot_name());
            let message = PublishMessage::build()
                .payload(event.envelope_json().clone())
                .headers(codec::headers(&event, &shared.config.instance_id));
            match shared.js.send_publish(subject, message).await {
                Ok(ack) => sent.push((event, Some(ack))),
                Err(error) => {
                    tracing::debug!(%error, "NATS publish failed");
                    sent.push((event, None));
                }
            }
        }
        let mut failed = Vec::new();
        let mut last_error = None;
        for (event, ack) in sent {
            match ack {
                Some(ack) => match ack.await {
                    Ok(_) => shared.stats.published(),
                    Err(error) => {
                        last_error = Some(error.to_string());
                        failed.push(event);
                    }
                },
                None => failed.push(event),
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
        for event in pending {
            shared.deliver_locally(&event);
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
    pending: &mut Vec<Arc<Event>>,
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
        let subject = shared.config.subject_for(first.kind().dot_name());
        let message = PublishMessage::build()
            .payload(first.envelope_json().clone())
            .headers(codec::headers(first, &shared.config.instance_id));
        let probe = async {
            let ack = shared.js.send_publish(subject, message).await?;
            ack.await
        };
        // Still refused, or no answer before the retry (which sends it
        // again under the same id): wait on.
        if let Ok(Ok(_)) = tokio::time::timeout_at(until, probe).await {
            tracing::debug!("JetStream takes publishes again; retrying now");
            shared.stats.published();
            pending.remove(0);
            return;
        }
    }
}
