//! Streams of named durable consumers and groups: `?consumer=NAME` or
//! `?group=NAME` on `/api/v1/events` (docs/protocol.md §11).
//!
//! Such a stream is not fed by the live fan-out but by the consumer's
//! dispatcher in event-core ([`event_core::consumer`]), which reads the event
//! log after the consumer's committed offset. The connection's
//! [`Member`] queue is what this feed drains; the frames are the same as a
//! plain stream's (each event rendered once per format, shared).

use std::time::Duration;

use event_core::{
    AckMode, AttachRequest, Consumers, Cursor, Delivery, Event, EventBus, EventFilter, Member,
    Principal, StartAt,
};

use crate::error::SseError;
use crate::feed::Slot;
use crate::params::Query;
use crate::stream::{Feed, Item};

/// The consumer a request asks for, if any.
pub(crate) fn request(
    query: &Query,
    filter: &EventFilter,
    principal: &Principal,
    cursor: Option<&str>,
) -> Result<Option<AttachRequest>, SseError> {
    let (name, shared) = match (query.get("consumer"), query.get("group")) {
        (None, None) => {
            for param in ["ack", "ack_wait", "start"] {
                if let Some(v) = query.get(param) {
                    return Err(SseError::param(
                        param,
                        v,
                        "applies only with `consumer` or `group`",
                    ));
                }
            }
            return Ok(None);
        }
        (Some(_), Some(_)) => {
            return Err(SseError::param(
                "group",
                query.get("group").unwrap_or_default(),
                "give either `consumer` or `group`, not both",
            ));
        }
        (Some(name), None) => (name, false),
        (None, Some(name)) => (name, true),
    };
    let param = if shared { "group" } else { "consumer" };
    event_core::consumer::validate_name(name)
        .map_err(|e| SseError::param(param, name, e.to_string()))?;
    let mode = match query.get("ack") {
        None => AckMode::Auto,
        Some(v) => AckMode::parse(v)
            .ok_or_else(|| SseError::param("ack", v, "expected `auto` or `explicit`"))?,
    };
    let ack_wait = match query.get("ack_wait") {
        None => None,
        Some(v) => Some(Duration::from_secs(v.trim().parse::<u64>().map_err(
            |_| SseError::param("ack_wait", v, "expected whole seconds"),
        )?)),
    };
    let start = match query.get("start") {
        None => StartAt::Latest,
        Some(v) => StartAt::parse(v)
            .ok_or_else(|| SseError::param("start", v, "expected `latest` or `earliest`"))?,
    };
    let cursor = match cursor {
        Some(raw) if !shared => Some(Cursor::parse(raw).map_err(|_| {
            SseError::param(
                "last_event_id",
                raw,
                "expected a sequence number or an event UUID",
            )
        })?),
        _ => None,
    };
    Ok(Some(AttachRequest {
        name: name.to_owned(),
        shared,
        mode,
        ack_wait,
        filter: filter.clone(),
        principal: principal.clone(),
        cursor,
        start,
    }))
}

/// Attaches, with the consumer's refusal as the HTTP error.
pub(crate) async fn attach(
    consumers: Option<&Consumers>,
    request: AttachRequest,
) -> Result<Member, SseError> {
    let Some(consumers) = consumers else {
        return Err(SseError::Consumer {
            status: axum::http::StatusCode::GONE,
            code: "consumers_unavailable",
            message: "named consumers need the event log, which this server runs without"
                .to_owned(),
        });
    };
    consumers
        .attach(request)
        .await
        .map_err(|e| SseError::Consumer {
            status: e.http_status(),
            code: e.code(),
            message: e.to_string(),
        })
}

/// The feed of a consumer's stream: its member queue.
pub(crate) struct ConsumerFeed {
    member: Member,
    scratch: Vec<Delivery>,
    _slot: Slot,
    /// For the event before one (compressed streams' delta pieces).
    bus: EventBus,
}

impl ConsumerFeed {
    pub(crate) fn new(member: Member, slot: Slot, bus: EventBus) -> Self {
        ConsumerFeed {
            member,
            scratch: Vec::new(),
            _slot: slot,
            bus,
        }
    }
}

impl Feed for ConsumerFeed {
    type Event = Event;

    fn lend_items(_kept: &mut Vec<Item<Event>>) -> Vec<Item<Event>> {
        crate::scratch::lend_items()
    }

    fn give_back_items(_kept: &mut Vec<Item<Event>>, items: Vec<Item<Event>>) {
        crate::scratch::give_back_items(items);
    }

    fn previous(&self, event: &Event) -> Option<std::sync::Arc<Event>> {
        crate::feed::previous_on_bus(&self.bus, event.seq())
    }

    async fn ready(&self) {
        self.member.ready().await;
    }

    fn drain(&mut self, out: &mut Vec<Item<Event>>) {
        self.member.drain(&mut self.scratch);
        out.extend(self.scratch.drain(..).map(|d| match d {
            // Never a latency sample: a consumer's event may have waited
            // in the log for the client.
            Delivery::Event { event, .. } => Item::Replayed(event),
            Delivery::Gap { after } => Item::Resync(after.to_string()),
        }));
    }

    fn stalled_for(&self) -> Option<Duration> {
        self.member.stalled_for()
    }
}
