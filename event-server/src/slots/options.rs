//! What a client may ask of a connection slot, checked when the slot is
//! created and turned into the query its stream is opened with.

use std::fmt::Write as _;

use event_core::{AckMode, Cursor, EventFilter, FilterParams, Principal, StartAt};
use serde::{Deserialize, Serialize};

use crate::error::ServerError;

// The SSE transport's heartbeat range (its own constants when the build has
// it; a build without SSE refuses SSE slots before they are checked).
#[cfg(feature = "sse")]
use event_sse::{MAX_HEARTBEAT_SECS, MIN_HEARTBEAT_SECS};
#[cfg(not(feature = "sse"))]
const MIN_HEARTBEAT_SECS: u64 = 5;
#[cfg(not(feature = "sse"))]
const MAX_HEARTBEAT_SECS: u64 = 300;

/// Which transport a slot's stream uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// Server-Sent Events (`GET`, `text/event-stream`).
    #[default]
    Sse,
    /// A WebSocket (`GET` with `Upgrade: websocket`).
    Ws,
}

impl StreamKind {
    /// `sse` or `ws`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Sse => "sse",
            StreamKind::Ws => "ws",
        }
    }
}

/// The body of `POST /api/v1/connections`: the stream's transport and
/// options, the same ones the transports take on their own URLs
/// (docs/protocol.md §3 and §11.1).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SlotOptions {
    /// `sse` (default) or `ws`.
    #[serde(default)]
    pub transport: StreamKind,
    /// The filter object (`types`, `events`, `entity_id`, `memory`,
    /// `topics`), as `?filter=` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<serde_json::Map<String, serde_json::Value>>,
    /// SSE: `v1` or `envelope`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// SSE: seconds between keep-alives (5–300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<u64>,
    /// `false`: no compression even when the client offers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<bool>,
    /// Events per second, over which progress is coalesced (`0`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rate: Option<u32>,
    /// The connection's queue budget in bytes, lower than the server's:
    /// SSE clients hear of lag sooner, WebSocket clients are closed (4008)
    /// sooner. At least two of the largest events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffer_max_bytes: Option<u64>,
    /// A named durable consumer to read as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// A consumer group to join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// With `consumer` or `group`: `auto` or `explicit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<String>,
    /// With `consumer` or `group`: seconds before an unacknowledged
    /// event is delivered again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_wait: Option<u64>,
    /// With `consumer` or `group`: `latest` or `earliest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// SSE: resume after this event (a sequence number or event id), as
    /// `Last-Event-ID` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_id: Option<String>,
}

fn bad(code: &'static str, message: impl Into<String>) -> ServerError {
    ServerError::bad_request(code, message)
}

impl SlotOptions {
    /// Refuses what the transport would refuse, so the client hears it now
    /// rather than when it connects: the filter (and `principal`'s access to
    /// its memory), ranges, names, combinations.
    ///
    /// `max_event_bytes` is the bus's event limit, which the lowest
    /// `buffer_max_bytes` must hold twice.
    pub fn check(&self, principal: &Principal, max_event_bytes: usize) -> Result<(), ServerError> {
        if self.transport == StreamKind::Ws {
            let sse_only = [
                ("format", self.format.is_some()),
                ("heartbeat", self.heartbeat.is_some()),
                ("last_event_id", self.last_event_id.is_some()),
            ];
            if let Some((name, _)) = sse_only.iter().find(|(_, set)| *set) {
                return Err(bad(
                    "unsupported_option",
                    format!("`{name}` applies to SSE streams only (docs/protocol.md §12)"),
                ));
            }
        }
        if let Some(filter) = self.filter_json() {
            let parsed = EventFilter::parse_with_json(FilterParams::default(), Some(&filter))
                .map_err(ServerError::from)?;
            if let Some(memory) = parsed.memory()
                && !principal.memories.allows(memory)
            {
                return Err(ServerError::Forbidden(format!(
                    "no access to memory {memory:?}"
                )));
            }
        }
        if let Some(f) = &self.format
            && !matches!(f.as_str(), "v1" | "envelope")
        {
            return Err(bad("invalid_parameter", "`format` is `v1` or `envelope`"));
        }
        if let Some(h) = self.heartbeat
            && !(MIN_HEARTBEAT_SECS..=MAX_HEARTBEAT_SECS).contains(&h)
        {
            return Err(bad(
                "invalid_parameter",
                format!(
                    "`heartbeat` is whole seconds from {MIN_HEARTBEAT_SECS} to {MAX_HEARTBEAT_SECS}"
                ),
            ));
        }
        if let Some(r) = self.max_rate {
            event_core::pace::parse_max_rate(&r.to_string())
                .map_err(|why| bad("invalid_parameter", format!("`max_rate`: {why}")))?;
        }
        if self.buffer_max_bytes.is_some() {
            // The transports' own rule and default budget.
            event_core::OutboxLimits::default()
                .with_client_budget(self.buffer_max_bytes, max_event_bytes)
                .map_err(|why| bad("invalid_parameter", format!("`buffer_max_bytes`: {why}")))?;
        }
        self.check_consumer()?;
        if let Some(cursor) = &self.last_event_id {
            Cursor::parse(cursor).map_err(|_| {
                bad(
                    "invalid_parameter",
                    "`last_event_id` is a sequence number or an event UUID",
                )
            })?;
        }
        Ok(())
    }

    fn check_consumer(&self) -> Result<(), ServerError> {
        let name = match (&self.consumer, &self.group) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "invalid_parameter",
                    "give either `consumer` or `group`, not both",
                ));
            }
            (Some(_), None) | (None, Some(_))
                if self.transport == StreamKind::Sse
                    && (self.max_rate.is_some() || self.buffer_max_bytes.is_some()) =>
            {
                return Err(bad(
                    "invalid_parameter",
                    "`max_rate` and `buffer_max_bytes` do not apply to an SSE consumer (its read-ahead is CONSUMER_MAX_ACK_PENDING)",
                ));
            }
            (Some(n), None) | (None, Some(n)) => n,
            (None, None) => {
                if self.ack.is_some() || self.ack_wait.is_some() || self.start.is_some() {
                    return Err(bad(
                        "invalid_parameter",
                        "`ack`, `ack_wait` and `start` apply only with `consumer` or `group`",
                    ));
                }
                return Ok(());
            }
        };
        event_core::consumer::validate_name(name)
            .map_err(|e| bad("invalid_parameter", e.to_string()))?;
        if let Some(a) = &self.ack
            && AckMode::parse(a).is_none()
        {
            return Err(bad("invalid_parameter", "`ack` is `auto` or `explicit`"));
        }
        if let Some(s) = &self.start
            && StartAt::parse(s).is_none()
        {
            return Err(bad(
                "invalid_parameter",
                "`start` is `latest` or `earliest`",
            ));
        }
        if let Some(w) = self.ack_wait
            && !(1..=3600).contains(&w)
        {
            return Err(bad(
                "invalid_parameter",
                "`ack_wait` is whole seconds from 1 to 3600",
            ));
        }
        Ok(())
    }

    fn filter_json(&self) -> Option<String> {
        self.filter
            .as_ref()
            .map(|f| serde_json::Value::Object(f.clone()).to_string())
    }

    /// The query string the transport's own route reads these options from.
    pub fn to_query(&self) -> String {
        let mut q = Query::default();
        q.push("filter", self.filter_json().as_deref());
        q.push("format", self.format.as_deref());
        q.push(
            "heartbeat",
            self.heartbeat.map(|h| h.to_string()).as_deref(),
        );
        q.push("max_rate", self.max_rate.map(|r| r.to_string()).as_deref());
        q.push(
            "buffer_max_bytes",
            self.buffer_max_bytes.map(|b| b.to_string()).as_deref(),
        );
        q.push("consumer", self.consumer.as_deref());
        q.push("group", self.group.as_deref());
        q.push("ack", self.ack.as_deref());
        q.push("ack_wait", self.ack_wait.map(|w| w.to_string()).as_deref());
        q.push("start", self.start.as_deref());
        q.push("last_event_id", self.last_event_id.as_deref());
        q.0
    }
}

#[derive(Default)]
struct Query(String);

impl Query {
    fn push(&mut self, name: &str, value: Option<&str>) {
        let Some(value) = value else { return };
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(name);
        self.0.push('=');
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                self.0.push(b as char);
            } else {
                let _ = write!(self.0, "%{b:02X}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(json: serde_json::Value) -> SlotOptions {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn options_become_the_transport_query_percent_encoded() {
        let o = options(serde_json::json!({
            "filter": {"types": "job", "memory": "a b"},
            "heartbeat": 10, "group": "g-1", "ack": "explicit"
        }));
        o.check(&Principal::anonymous(), 1024).unwrap();
        let q = o.to_query();
        assert!(q.starts_with("filter=%7B%22"), "{q}");
        assert!(q.contains("a%20b"), "{q}");
        assert!(q.ends_with("&heartbeat=10&group=g-1&ack=explicit"), "{q}");
        let back: std::collections::HashMap<String, String> =
            axum::extract::Query::try_from_uri(&format!("/?{q}").parse().unwrap())
                .unwrap()
                .0;
        assert_eq!(back["filter"], r#"{"memory":"a b","types":"job"}"#);
    }

    #[test]
    fn bad_options_are_refused_with_their_name() {
        let p = Principal::anonymous();
        let refused = |json: serde_json::Value| {
            let err = options(json).check(&p, 1024).unwrap_err();
            err.to_string()
        };
        assert!(refused(serde_json::json!({"heartbeat": 1})).contains("heartbeat"));
        assert!(refused(serde_json::json!({"consumer": "a", "group": "b"})).contains("either"));
        assert!(refused(serde_json::json!({"ack": "explicit"})).contains("only with"));
        assert!(
            refused(serde_json::json!({"consumer": "c", "buffer_max_bytes": 600_000}))
                .contains("do not apply")
        );
        assert!(refused(serde_json::json!({"group": "g", "ack_wait": 0})).contains("ack_wait"));
        assert!(refused(serde_json::json!({"consumer": "bad name"})).contains("consumer name"));
        assert!(refused(serde_json::json!({"filter": {"types": "nope"}})).contains("nope"));
        assert!(refused(serde_json::json!({"last_event_id": "x"})).contains("last_event_id"));
        assert!(
            refused(serde_json::json!({"transport": "ws", "heartbeat": 30}))
                .contains("SSE streams only")
        );
        assert!(
            refused(serde_json::json!({"buffer_max_bytes": 100})).contains("two of the largest")
        );
        options(serde_json::json!({"transport": "ws", "max_rate": 3, "buffer_max_bytes": 40_000}))
            .check(&p, 1024)
            .unwrap();
        assert!(serde_json::from_value::<SlotOptions>(serde_json::json!({"nope": 1})).is_err());
        let reader = Principal {
            memories: event_core::Access::none(),
            ..Principal::anonymous()
        };
        let err = options(serde_json::json!({"filter": {"memory": "m1"}}))
            .check(&reader, 1024)
            .unwrap_err();
        assert!(matches!(err, ServerError::Forbidden(_)));
    }
}
