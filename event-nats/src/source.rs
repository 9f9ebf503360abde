//! JetStream → the local bus.
//!
//! One ordered consumer reads the stream from a given sequence and injects
//! every event into the bus with [`EventBus::publish_event`], under the
//! bus sequence [`bus_seq`] of its stream sequence and with its original id.
//! Every instance, the origin included, does this, so every bus holds the
//! same events in the same order under the same numbers. When the consumer
//! fails (an outage, a server restart), it is re-created from the next
//! sequence not yet injected: nothing is skipped and nothing injected twice.
//!
//! [`EventBus::publish_event`]: event_core::EventBus::publish_event

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use event_core::Error as CoreError;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cluster::Shared;
use crate::codec::{self, bus_seq};
use crate::state::ConnectionState;

/// Longest pull request of the stream consumer. The client's ordered
/// consumer takes its idle heartbeat from it (half of it) and re-creates a
/// consumer that missed two heartbeat windows (2 × 2 × heartbeat). The
/// consumer lives on one NATS node: with the client's default (30 s pulls,
/// 15 s heartbeats) a consumer lost with its node was replaced after about
/// a minute, during which this instance received nothing from the stream
/// (the three-node drill failed two runs in three). 2 s pulls (about 4 s)
/// made a heavily loaded instance re-create healthy consumers (p99 5 s in
/// the cluster bench instead of 0.4 s); 5 s replaces a lost one in about
/// 10 s and needs 5 s without a single heartbeat for a false alarm.
const CONSUMER_MAX_EXPIRES: Duration = Duration::from_secs(5);

/// The source task: injects stream events from `start` on.
pub(crate) async fn run(shared: Arc<Shared>, start: u64, cancel: CancellationToken) {
    let mut next = start;
    let mut failures = 0usize;
    let mut state = shared.state.subscribe();
    while !cancel.is_cancelled() {
        match open(&shared, next).await {
            Ok(mut messages) => {
                shared.state.set_source_running(true);
                failures = 0;
                state.mark_unchanged();
                loop {
                    let item = tokio::select! {
                        biased;
                        () = cancel.cancelled() => return,
                        changed = state.changed() => {
                            // Back after an outage: the server may have lost
                            // the consumer (a restart). Re-create it now
                            // rather than when its heartbeats are missed.
                            if changed.is_ok() && *state.borrow_and_update() == ConnectionState::Connected {
                                tracing::debug!(next, "reconnected; re-creating the stream consumer");
                                break;
                            }
                            continue;
                        }
                        item = messages.next() => item,
                    };
                    match item {
                        Some(Ok(message)) => inject(&shared, &message, &mut next),
                        Some(Err(error)) => {
                            tracing::debug!(%error, next, "stream consumer failed; re-creating it");
                            break;
                        }
                        None => break,
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, next, "cannot create the stream consumer");
            }
        }
        shared.state.set_source_running(false);
        failures += 1;
        let delay =
            Duration::from_millis(50u64 << failures.min(6)).min(shared.config.max_reconnect_delay);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {},
        }
    }
}

async fn open(shared: &Shared, start: u64) -> Result<pull::Ordered, async_nats::Error> {
    let consumer = shared
        .stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            max_expires: CONSUMER_MAX_EXPIRES,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

fn inject(shared: &Shared, message: &async_nats::jetstream::Message, next: &mut u64) {
    let stream_seq = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(error) => {
            tracing::warn!(%error, "stream message without metadata; skipped");
            return;
        }
    };
    if stream_seq < *next {
        shared.stats.skipped("duplicate");
        return;
    }
    if stream_seq > *next {
        tracing::warn!(
            expected = *next,
            got = stream_seq,
            "events missing from the stream (retention removed them before this instance read them)"
        );
        // Cursors before the gap must resync rather than silently skip it.
        shared.bus.expire_through(bus_seq(stream_seq - 1));
    }
    *next = stream_seq + 1;
    match codec::decode(stream_seq, &message.payload, message.headers.as_ref()) {
        Ok(decoded) => {
            let own = decoded.origin.as_deref() == Some(shared.config.instance_id.as_str());
            if own {
                let _guard = shared
                    .own_event_lock
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if shared.fallback.take(&decoded.event.id()) {
                    // Already delivered locally after a publish that looked
                    // failed but reached the stream.
                    shared.stats.skipped("duplicate");
                } else {
                    shared.origins.insert(decoded.event.id());
                    publish(shared, decoded.event);
                }
            } else {
                publish(shared, decoded.event);
            }
        }
        Err(error) => {
            tracing::warn!(stream_seq, %error, "undecodable stream message; skipped");
            shared.stats.skipped("undecodable");
        }
    }
    shared.last_injected.send_replace(stream_seq);
    shared.logged.send_replace(bus_seq(stream_seq));
}

fn publish(shared: &Shared, event: event_core::Event) {
    let seq = event.seq();
    // Taken from the stream: a span of the event's trace on this instance.
    let _span = event.meta().trace.as_ref().map(|context| {
        let span = tracing::info_span!(
            target: "matric::nats",
            "nats.receive",
            "event.id" = %event.id(),
            "event.seq" = seq,
        );
        event_core::trace::link(&span, context);
        span.entered()
    });
    match shared.bus.publish_event(event) {
        Ok(_) => shared.stats.received(),
        Err(CoreError::OutOfOrder { next, .. }) => {
            // Only possible when more than `SEQ_STRIDE - 1` local-only events
            // were produced between two stream events.
            tracing::error!(
                bus_seq = seq,
                bus_next = next,
                expected = bus_seq(codec::stream_seq(seq)),
                "stream event below the bus sequence; skipped"
            );
            shared.stats.skipped("out_of_order");
        }
        Err(error) => {
            tracing::error!(%error, "cannot inject stream event");
            shared.stats.skipped("out_of_order");
        }
    }
}
