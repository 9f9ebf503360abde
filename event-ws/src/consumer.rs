//! A WebSocket connection reading a named consumer or group
//! (`{"type":"subscribe","consumer":"NAME",…}`, docs/protocol.md §11.1).
//!
//! Once the consumer is attached the connection stops taking the live
//! fan-out (its hub subscription selects no kinds) and writes what the
//! consumer's dispatcher hands its [`Member`] instead, each event as
//! `{"type":"delivery","seq":N,"redelivered":K,"event":{envelope}}`. The
//! member is drained only when the socket has written everything before,
//! so a client that stops reading holds back its own deliveries (bounded by
//! the consumer's read-ahead) and is closed after the write timeout.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use event_core::{
    AttachRequest, Consumers, Cursor, Delivery, EventFilter, FilterParams, KindSet, Member,
    Principal,
};

use crate::deflate::Framing;
use crate::protocol::{ConsumerAsk, Refusal, Subscribe};

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A consumer attached to the connection.
pub(crate) struct Attached {
    member: Member,
    ready: Wait,
    closed: Wait,
    due: bool,
    scratch: Vec<Delivery>,
}

impl Attached {
    pub(crate) fn new(member: Member) -> Attached {
        Attached {
            ready: Box::pin(member.readiness()),
            closed: Box::pin(member.closed()),
            member,
            due: true,
            scratch: Vec::new(),
        }
    }

    /// Whether the consumer closed this member (taken over by a newer
    /// connection, or deleted).
    pub(crate) fn poll_closed(&mut self, cx: &mut Context<'_>) -> bool {
        self.closed.as_mut().poll(cx).is_ready()
    }

    /// Registers for new deliveries; `true` when some may be queued.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> bool {
        if self.member.is_closed() {
            return false;
        }
        // Level-triggered (ready while anything is queued): polled again
        // only after a drain, when a fresh one registers for the next push.
        if !self.due && self.ready.as_mut().poll(cx).is_ready() {
            self.ready = Box::pin(self.member.readiness());
            self.due = true;
        }
        self.due
    }

    /// Frames every queued delivery into `queue`; how many events.
    pub(crate) fn drain(&mut self, framing: Framing, mut queue: impl FnMut(Bytes)) -> u64 {
        self.due = false;
        self.member.drain(&mut self.scratch);
        let mut events = 0;
        for delivery in self.scratch.drain(..) {
            match delivery {
                Delivery::Event { event, redelivered } => {
                    events += 1;
                    let envelope = event.envelope_json();
                    let mut text = Vec::with_capacity(envelope.len() + 64);
                    text.extend_from_slice(
                        format!(
                            r#"{{"type":"delivery","seq":{},"redelivered":{redelivered},"event":"#,
                            event.seq()
                        )
                        .as_bytes(),
                    );
                    text.extend_from_slice(envelope);
                    text.push(b'}');
                    queue(framing.text(&text));
                }
                Delivery::Gap { after } => {
                    // The same message as SSE's (docs/protocol.md §3).
                    let text = format!(
                        r#"{{"type":"resync_required","reason":"cursor_expired","last_event_id":"{after}"}}"#
                    );
                    queue(framing.text(text.as_bytes()));
                }
            }
        }
        events
    }

    /// How long the oldest undrained delivery has waited.
    pub(crate) fn stalled_for(&self) -> Option<Duration> {
        self.member.stalled_for()
    }

    /// Sends acks; resolves once the dispatcher applied them.
    pub(crate) fn ack_applied(&self, acks: Vec<Cursor>) -> Acking {
        Box::pin(self.member.ack_applied(acks))
    }
}

/// `{"type":"subscribed","consumer"|"group":"NAME","ack":"…"}`.
pub(crate) fn subscribed_reply(member: &Member) -> String {
    let key = if member.is_group() {
        "group"
    } else {
        "consumer"
    };
    serde_json::json!({"type": "subscribed", key: member.name(), "ack": member.mode().as_str()})
        .to_string()
}

/// The attach request of a `subscribe` with `consumer` or `group`: the
/// upgrade's filter ANDed with the message's `events`, `topics` and
/// `filter`.
pub(crate) fn request(
    ask: ConsumerAsk,
    subscribe: &Subscribe,
    base: &EventFilter,
    principal: &Principal,
) -> Result<AttachRequest, Refusal> {
    if subscribe.max_rate.is_some() {
        return Err(Refusal::new(
            "invalid_parameter",
            "`max_rate` does not apply to a consumer (its read-ahead is bounded by acks)",
        ));
    }
    let mut filter = base.clone();
    if subscribe.topics.is_some() || subscribe.filter.is_some() {
        let own = EventFilter::parse_with_json(
            FilterParams {
                topics: subscribe.topics.as_deref(),
                ..FilterParams::default()
            },
            subscribe.filter.as_deref(),
        )
        .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        if let Some(memory) = own.memory() {
            if !principal.memories.allows(memory) {
                return Err(Refusal::new(
                    "forbidden",
                    format!("no access to memory {memory:?}"),
                ));
            }
            if base.memory().is_some_and(|m| m != memory) {
                return Err(contradicts("memory"));
            }
            filter = filter.with_memory(memory);
        }
        if let Some(id) = own.entity_id() {
            if base.entity_id().is_some_and(|e| e != id) {
                return Err(contradicts("entity_id"));
            }
            filter = filter.with_entity(id);
        }
        for any in own.topics() {
            filter = filter.with_topics(any.clone());
        }
        let kinds = filter.kinds().intersection(own.kinds());
        filter = filter.with_kinds(kinds);
    }
    if let Some(names) = &subscribe.events {
        let mut kinds = KindSet::EMPTY;
        for name in names {
            kinds = kinds.union(KindSet::from_name_or_pattern(name).ok_or_else(|| {
                Refusal::new("invalid_filter", format!("unknown event name {name:?}"))
            })?);
        }
        let kinds = filter.kinds().intersection(kinds);
        filter = filter.with_kinds(kinds);
    }
    Ok(AttachRequest {
        name: ask.name,
        shared: ask.shared,
        mode: ask.mode,
        ack_wait: ask.ack_wait,
        filter,
        principal: principal.clone(),
        cursor: None,
        start: ask.start,
    })
}

/// Acks on their way to the dispatcher.
pub(crate) type Acking = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A `filter` field that, ANDed with the upgrade's, could match nothing.
fn contradicts(field: &str) -> Refusal {
    Refusal::new(
        "invalid_filter",
        format!("`filter.{field}` differs from the upgrade request's, so nothing could match"),
    )
}

/// The attach in flight (the dispatcher answers asynchronously).
pub(crate) type Attaching =
    Pin<Box<dyn Future<Output = Result<Member, event_core::ConsumerError>> + Send>>;

/// Starts attaching.
pub(crate) fn attach(consumers: &Consumers, request: AttachRequest) -> Attaching {
    let consumers = consumers.clone();
    Box::pin(async move { consumers.attach(request).await })
}

/// Polls an attach in flight.
pub(crate) fn poll_attach(
    attaching: &mut Attaching,
    cx: &mut Context<'_>,
) -> Poll<Result<Member, event_core::ConsumerError>> {
    attaching.as_mut().poll(cx)
}
