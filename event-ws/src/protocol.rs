//! What a client may send (docs/protocol.md §2, client → server) and the replies.
//!
//! Anything that is not one of these messages is ignored, so a client
//! speaking a newer dialect never loses its connection over it.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use event_core::{AckMode, Cursor, EventKind, KindSet, QueueStatus, ServerEvent, StartAt, Uuid};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most names one `subscribe` or `unsubscribe` may carry.
pub(crate) const MAX_SUBSCRIBE_NAMES: usize = 64;
/// Longest name (bytes, after JSON unescaping) in a `subscribe` or
/// `unsubscribe`.
pub(crate) const MAX_SUBSCRIBE_NAME_BYTES: usize = 128;

/// A recognised client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientMessage {
    /// `refresh` (plain text) or `{"type":"refresh"}`: a fresh `QueueStatus`
    /// to this client.
    Refresh,
    /// `{"type":"ping"}` → `{"type":"pong"}`.
    Ping,
    /// `{"type":"subscribe","events":[…],"topics":[…],"filter":{…},"max_rate":N}`
    /// (every field optional, at least one present).
    Subscribe(Subscribe),
    /// A `subscribe` whose `topics`, `filter` or `max_rate` is not of the
    /// right kind: answered with an error reply, nothing applied.
    Refused(Refusal),
    /// `{"type":"unsubscribe","events":[…]}`.
    Unsubscribe(Vec<String>),
    /// `{"type":"ack","seq":N}` (or `seqs`, `event_id`, `event_ids`): a
    /// consumer's acknowledgements.
    Ack(Vec<Cursor>),
    /// A `subscribe` or `unsubscribe` with more than
    /// [`MAX_SUBSCRIBE_NAMES`] names or a name over
    /// [`MAX_SUBSCRIBE_NAME_BYTES`] bytes: the connection is closed with
    /// 1008 (no client of the protocol needs that many, and the reply
    /// echoes unknown names).
    OverLimit,
}

/// What a `subscribe` asks for; a field left out changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Subscribe {
    /// Kind names or type prefixes to add (the first `subscribe` narrows).
    pub(crate) events: Option<Vec<String>>,
    /// The topic patterns, as a comma list (the SSE `topics=` text);
    /// replaces the connection's previous ones.
    pub(crate) topics: Option<String>,
    /// The filter object, as JSON text (the SSE `filter=` text); replaces
    /// the connection's previous one.
    pub(crate) filter: Option<String>,
    /// The rate limit: `Some(None)` lifts it.
    pub(crate) max_rate: Option<Option<NonZeroU32>>,
    /// Read as a named consumer or group member instead of the live stream.
    pub(crate) consumer: Option<ConsumerAsk>,
}

/// The `consumer` or `group` of a `subscribe` and its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConsumerAsk {
    pub(crate) name: String,
    pub(crate) shared: bool,
    pub(crate) mode: AckMode,
    pub(crate) ack_wait: Option<Duration>,
    pub(crate) start: StartAt,
}

/// Why a client's request was not applied: the `{"type":"error",…}` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The machine-readable code (`invalid_filter`, `invalid_parameter`,
    /// `forbidden`), as in the HTTP error bodies.
    pub(crate) error: &'static str,
    /// What is wrong, naming the field.
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(error: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            error,
            message: message.into(),
        }
    }

    /// `{"type":"error","error":"…","message":"…"}`.
    pub(crate) fn reply(&self) -> String {
        serde_json::json!({"type": "error", "error": self.error, "message": self.message})
            .to_string()
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum JsonMessage {
    Refresh,
    Ping,
    Subscribe {
        #[serde(default)]
        events: Option<Names>,
        #[serde(default)]
        topics: Option<Value>,
        #[serde(default)]
        filter: Option<Value>,
        #[serde(default)]
        max_rate: Option<Value>,
        #[serde(default)]
        consumer: Option<Value>,
        #[serde(default)]
        group: Option<Value>,
        #[serde(default)]
        ack: Option<Value>,
        #[serde(default)]
        ack_wait: Option<Value>,
        #[serde(default)]
        start: Option<Value>,
    },
    Unsubscribe {
        events: Names,
    },
    Ack {
        #[serde(default)]
        seq: Option<Value>,
        #[serde(default)]
        seqs: Option<Value>,
        #[serde(default)]
        event_id: Option<Value>,
        #[serde(default)]
        event_ids: Option<Value>,
    },
}

/// Most acknowledgements one `ack` message may carry.
pub(crate) const MAX_ACKS: usize = 1_000;

/// The events an `ack` names.
fn acks_of(
    seq: Option<Value>,
    seqs: Option<Value>,
    event_id: Option<Value>,
    event_ids: Option<Value>,
) -> Result<Vec<Cursor>, Refusal> {
    let refuse = |why: &str| Refusal::new("invalid_ack", why.to_owned());
    let list = |v: Option<Value>| -> Result<Vec<Value>, Refusal> {
        match v {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) if items.len() <= MAX_ACKS => Ok(items),
            Some(Value::Array(_)) => Err(refuse("at most 1,000 acknowledgements per message")),
            Some(_) => Err(refuse("`seqs` and `event_ids` are arrays")),
        }
    };
    let mut acks = Vec::new();
    for v in seq.into_iter().chain(list(seqs)?) {
        acks.push(Cursor::Seq(
            v.as_u64()
                .ok_or_else(|| refuse("a sequence number is a whole number"))?,
        ));
    }
    for v in event_id.into_iter().chain(list(event_ids)?) {
        let id = v
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| refuse("an event id is a UUID string"))?;
        acks.push(Cursor::Id(id));
    }
    if acks.is_empty() {
        return Err(refuse(
            "name at least one event (`seq`, `seqs`, `event_id` or `event_ids`)",
        ));
    }
    if acks.len() > MAX_ACKS {
        return Err(refuse("at most 1,000 acknowledgements per message"));
    }
    Ok(acks)
}

/// The `consumer`/`group` of a `subscribe` with its `ack`, `ack_wait` and
/// `start`, checked as the SSE parameters are.
fn consumer_of(
    consumer: Option<Value>,
    group: Option<Value>,
    ack: Option<Value>,
    ack_wait: Option<Value>,
    start: Option<Value>,
) -> Result<Option<ConsumerAsk>, Refusal> {
    let refuse = |why: String| Refusal::new("invalid_parameter", why);
    let (name, shared) = match (consumer, group) {
        (None, None) => {
            if ack.is_some() || ack_wait.is_some() || start.is_some() {
                return Err(refuse(
                    "`ack`, `ack_wait` and `start` apply only with `consumer` or `group`".into(),
                ));
            }
            return Ok(None);
        }
        (Some(_), Some(_)) => {
            return Err(refuse("give either `consumer` or `group`, not both".into()));
        }
        (Some(name), None) => (name, false),
        (None, Some(name)) => (name, true),
    };
    let name = match name {
        Value::String(name) => name,
        _ => return Err(refuse("`consumer` and `group` are names (strings)".into())),
    };
    event_core::consumer::validate_name(&name).map_err(|e| refuse(e.to_string()))?;
    let mode = match ack {
        None => AckMode::Auto,
        Some(v) => v
            .as_str()
            .and_then(AckMode::parse)
            .ok_or_else(|| refuse("`ack` is `auto` or `explicit`".into()))?,
    };
    let ack_wait = match ack_wait {
        None => None,
        Some(v) => {
            Some(Duration::from_secs(v.as_u64().ok_or_else(|| {
                refuse("`ack_wait` is whole seconds".into())
            })?))
        }
    };
    let start = match start {
        None => StartAt::Latest,
        Some(v) => v
            .as_str()
            .and_then(StartAt::parse)
            .ok_or_else(|| refuse("`start` is `latest` or `earliest`".into()))?,
    };
    Ok(Some(ConsumerAsk {
        name,
        shared,
        mode,
        ack_wait,
        start,
    }))
}

/// The `topics` of a `subscribe`: a comma list or an array of patterns,
/// as the comma list the SSE `topics=` parameter takes (its rules and
/// limits then apply).
fn topics_text(value: Value) -> Result<String, Refusal> {
    let wrong = || {
        Refusal::new(
            "invalid_filter",
            "`topics` must be a string or an array of strings",
        )
    };
    match value {
        Value::String(list) => Ok(list),
        Value::Array(items) => {
            if items.len() > event_core::filter::MAX_TOPIC_PATTERNS {
                return Err(Refusal::new(
                    "invalid_filter",
                    format!(
                        "`topics`: more than {} topics",
                        event_core::filter::MAX_TOPIC_PATTERNS
                    ),
                ));
            }
            let names = items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    _ => Err(wrong()),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(names.join(","))
        }
        _ => Err(wrong()),
    }
}

/// The `filter` of a `subscribe`: an object (or the JSON text of one, as
/// SSE `filter=` takes it), as JSON text for `EventFilter::parse_with_json`.
fn filter_text(value: Value) -> Result<String, Refusal> {
    match value {
        Value::Object(_) => Ok(value.to_string()),
        Value::String(text) => Ok(text),
        _ => Err(Refusal::new(
            "invalid_filter",
            "`filter` must be a JSON object",
        )),
    }
}

fn max_rate_of(value: Value) -> Result<Option<NonZeroU32>, Refusal> {
    let refuse = |why: String| Refusal::new("invalid_parameter", format!("`max_rate`: {why}"));
    match value.as_u64() {
        Some(n) => event_core::pace::max_rate(n).map_err(refuse),
        None => Err(refuse(format!(
            "expected events per second from 1 to {}, or 0 for no limit",
            event_core::MAX_STREAM_RATE
        ))),
    }
}

/// The `events` of a `subscribe`: the names, or `None` when they exceed
/// the limits (the names beyond the limit are skipped without being
/// stored).
struct Names(Option<Vec<String>>);

impl<'de> Deserialize<'de> for Names {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Names, D::Error> {
        struct Bounded;
        impl<'de> Visitor<'de> for Bounded {
            type Value = Names;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of event names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Names, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    if names.len() == MAX_SUBSCRIBE_NAMES || name.len() > MAX_SUBSCRIBE_NAME_BYTES {
                        while seq.next_element::<IgnoredAny>()?.is_some() {}
                        return Ok(Names(None));
                    }
                    names.push(name);
                }
                Ok(Names(Some(names)))
            }
        }
        deserializer.deserialize_seq(Bounded)
    }
}

impl ClientMessage {
    /// Parses a text frame; `None` for anything unrecognised.
    pub(crate) fn parse(text: &str) -> Option<ClientMessage> {
        let text = text.trim();
        if text == "refresh" {
            return Some(ClientMessage::Refresh);
        }
        if !text.starts_with('{') {
            return None;
        }
        Some(match serde_json::from_str::<JsonMessage>(text).ok()? {
            JsonMessage::Refresh => ClientMessage::Refresh,
            JsonMessage::Ping => ClientMessage::Ping,
            JsonMessage::Subscribe {
                events: Some(Names(None)),
                ..
            }
            | JsonMessage::Unsubscribe {
                events: Names(None),
            } => ClientMessage::OverLimit,
            // A `subscribe` that asks for nothing is not one (ignored, as
            // before these fields existed).
            JsonMessage::Subscribe {
                events: None,
                topics: None,
                filter: None,
                max_rate: None,
                consumer: None,
                group: None,
                ack: None,
                ack_wait: None,
                start: None,
            } => return None,
            JsonMessage::Subscribe {
                events,
                topics,
                filter,
                max_rate,
                consumer,
                group,
                ack,
                ack_wait,
                start,
            } => {
                let request = (|| -> Result<Subscribe, Refusal> {
                    Ok(Subscribe {
                        events: events.and_then(|n| n.0),
                        topics: topics.map(topics_text).transpose()?,
                        filter: filter.map(filter_text).transpose()?,
                        max_rate: max_rate.map(max_rate_of).transpose()?,
                        consumer: consumer_of(consumer, group, ack, ack_wait, start)?,
                    })
                })();
                match request {
                    Ok(request) => ClientMessage::Subscribe(request),
                    Err(refusal) => ClientMessage::Refused(refusal),
                }
            }
            JsonMessage::Unsubscribe {
                events: Names(Some(names)),
            } => ClientMessage::Unsubscribe(names),
            JsonMessage::Ack {
                seq,
                seqs,
                event_id,
                event_ids,
            } => match acks_of(seq, seqs, event_id, event_ids) {
                Ok(acks) => ClientMessage::Ack(acks),
                Err(refusal) => ClientMessage::Refused(refusal),
            },
        })
    }
}

/// The `{"type":"pong"}` reply.
pub(crate) const PONG: &str = r#"{"type":"pong"}"#;

/// A connection's kind selection, changed by `subscribe` / `unsubscribe`.
///
/// A connection starts with every kind. The first `subscribe` *narrows* it to
/// the named kinds; later ones add to that selection. `unsubscribe` removes
/// kinds. Unknown names are ignored (and reported back), so one typo does
/// not silence a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Selection {
    kinds: KindSet,
    explicit: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            kinds: KindSet::ALL,
            explicit: false,
        }
    }
}

/// The names a client sent, resolved.
fn resolve(names: &[String]) -> (KindSet, Vec<String>) {
    let mut set = KindSet::EMPTY;
    let mut unknown = Vec::new();
    for name in names {
        match KindSet::from_name_or_pattern(name) {
            Some(kinds) => set = set.union(kinds),
            None => unknown.push(name.clone()),
        }
    }
    (set, unknown)
}

impl Selection {
    /// The kinds delivered now.
    pub(crate) fn kinds(&self) -> KindSet {
        self.kinds
    }

    /// Applies a `subscribe`; returns the names that matched nothing.
    pub(crate) fn subscribe(&mut self, names: &[String]) -> Vec<String> {
        let (set, unknown) = resolve(names);
        if !set.is_empty() {
            self.kinds = if self.explicit {
                self.kinds.union(set)
            } else {
                set
            };
            self.explicit = true;
        }
        unknown
    }

    /// Applies an `unsubscribe`; returns the names that matched nothing.
    pub(crate) fn unsubscribe(&mut self, names: &[String]) -> Vec<String> {
        let (set, unknown) = resolve(names);
        if !set.is_empty() {
            self.kinds = self.kinds.difference(set);
            self.explicit = true;
        }
        unknown
    }
}

#[derive(Serialize)]
struct Subscribed<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    events: Vec<&'static str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    unknown: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    max_rate: Option<u32>,
}

/// `{"type":"subscribed","events":[…]}` (plus `"unknown":[…]` when some
/// names matched nothing, and `"max_rate":N` while the connection is rate
/// limited).
pub(crate) fn subscribed_reply(
    kinds: KindSet,
    unknown: &[String],
    max_rate: Option<NonZeroU32>,
) -> String {
    let reply = Subscribed {
        kind: "subscribed",
        events: kinds.iter().map(EventKind::type_name).collect(),
        unknown,
        max_rate: max_rate.map(NonZeroU32::get),
    };
    // Serializing strings into a String cannot fail.
    serde_json::to_string(&reply).unwrap_or_default()
}

/// The lag signal of a rate-limited connection:
/// `{"type":"events.lagged","dropped_count":N}` (the JSON of SSE's
/// `events.lagged`).
pub(crate) fn lagged_json(dropped: u64) -> String {
    format!(r#"{{"type":"events.lagged","dropped_count":{dropped}}}"#)
}

/// The flat §1 JSON of a queue status.
pub(crate) fn queue_status_json(status: QueueStatus) -> String {
    serde_json::to_string(&ServerEvent::QueueStatus(status)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_subscribes_and_acks_are_parsed_and_bad_ones_refused() {
        let parsed = ClientMessage::parse(
            r#"{"type":"subscribe","group":"g-1","ack":"explicit","ack_wait":60,"start":"earliest"}"#,
        );
        let Some(ClientMessage::Subscribe(request)) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(
            request.consumer,
            Some(ConsumerAsk {
                name: "g-1".into(),
                shared: true,
                mode: AckMode::Explicit,
                ack_wait: Some(Duration::from_secs(60)),
                start: StartAt::Earliest,
            })
        );
        let id = Uuid::now_v7();
        assert_eq!(
            ClientMessage::parse(&format!(
                r#"{{"type":"ack","seq":7,"seqs":[8,9],"event_id":"{id}"}}"#
            )),
            Some(ClientMessage::Ack(vec![
                Cursor::Seq(7),
                Cursor::Seq(8),
                Cursor::Seq(9),
                Cursor::Id(id)
            ]))
        );
        for bad in [
            r#"{"type":"subscribe","consumer":"a","group":"b"}"#,
            r#"{"type":"subscribe","consumer":"a b"}"#,
            r#"{"type":"subscribe","consumer":7}"#,
            r#"{"type":"subscribe","consumer":"a","ack":"sometimes"}"#,
            r#"{"type":"subscribe","events":["JobProgress"],"ack":"explicit"}"#,
            r#"{"type":"subscribe","consumer":"a","start":"middle"}"#,
            r#"{"type":"ack"}"#,
            r#"{"type":"ack","seq":"x"}"#,
            r#"{"type":"ack","event_id":"not-a-uuid"}"#,
        ] {
            assert!(
                matches!(ClientMessage::parse(bad), Some(ClientMessage::Refused(_))),
                "{bad}"
            );
        }
        let many = format!(
            r#"{{"type":"ack","seqs":[{}]}}"#,
            (0..=MAX_ACKS)
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert!(matches!(
            ClientMessage::parse(&many),
            Some(ClientMessage::Refused(_))
        ));
    }

    #[test]
    fn parses_the_protocol_messages_and_ignores_the_rest() {
        assert_eq!(
            ClientMessage::parse(" refresh\n"),
            Some(ClientMessage::Refresh)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"ping"}"#),
            Some(ClientMessage::Ping)
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","events":["JobProgress","note"]}"#),
            Some(ClientMessage::Subscribe(Subscribe {
                events: Some(vec!["JobProgress".into(), "note".into()]),
                ..Subscribe::default()
            }))
        );
        for junk in [
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","events":null,"filter":null}"#,
            "hello",
            "{not json",
            r#"{"type":"nope"}"#,
            r#"{"type":"subscribe","events":"JobProgress"}"#,
            r#"{"events":[]}"#,
            "",
        ] {
            assert_eq!(ClientMessage::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn subscribe_narrows_then_adds_and_unsubscribe_removes() {
        let mut s = Selection::default();
        assert_eq!(s.kinds(), KindSet::ALL);
        let unknown = s.subscribe(&["JobProgress".into(), "bogus".into()]);
        assert_eq!(unknown, ["bogus"]);
        assert_eq!(s.kinds(), KindSet::only(EventKind::JobProgress));
        s.subscribe(&["note".into()]);
        assert_eq!(
            s.kinds().type_names(),
            ["JobProgress", "NoteUpdated"].to_vec()
        );
        s.unsubscribe(&["job.progress".into()]);
        assert_eq!(s.kinds(), KindSet::only(EventKind::NoteUpdated));
        let mut fresh = Selection::default();
        fresh.subscribe(&["nothing".into()]);
        assert_eq!(fresh.kinds(), KindSet::ALL, "no valid name: unchanged");
        fresh.unsubscribe(&["job".into()]);
        assert_eq!(
            fresh.kinds().type_names(),
            ["QueueStatus", "NoteUpdated"].to_vec()
        );
        assert_eq!(
            subscribed_reply(fresh.kinds(), &[], None),
            r#"{"type":"subscribed","events":["QueueStatus","NoteUpdated"]}"#
        );
    }

    #[test]
    fn subscribe_names_are_capped_in_count_and_length() {
        let list = |names: &[String]| {
            format!(
                r#"{{"type":"subscribe","events":{}}}"#,
                serde_json::to_string(names).unwrap()
            )
        };
        let at_limit: Vec<String> = (0..MAX_SUBSCRIBE_NAMES)
            .map(|i| format!("{i:0>width$}", width = MAX_SUBSCRIBE_NAME_BYTES))
            .collect();
        assert_eq!(
            ClientMessage::parse(&list(&at_limit)),
            Some(ClientMessage::Subscribe(Subscribe {
                events: Some(at_limit.clone()),
                ..Subscribe::default()
            }))
        );
        let mut too_many = at_limit.clone();
        too_many.push("job".into());
        assert_eq!(
            ClientMessage::parse(&list(&too_many)),
            Some(ClientMessage::OverLimit)
        );
        let too_long = vec!["x".repeat(MAX_SUBSCRIBE_NAME_BYTES + 1)];
        assert_eq!(
            ClientMessage::parse(&list(&too_long)),
            Some(ClientMessage::OverLimit)
        );
        // The limit is on the name, not its JSON escaping.
        let escaped = format!(
            r#"{{"type":"unsubscribe","events":["{}"]}}"#,
            "\\u0041".repeat(MAX_SUBSCRIBE_NAME_BYTES)
        );
        assert_eq!(
            ClientMessage::parse(&escaped),
            Some(ClientMessage::Unsubscribe(vec![
                "A".repeat(MAX_SUBSCRIBE_NAME_BYTES)
            ]))
        );
        // Past the limit, anything goes: the rest is skipped, not parsed
        // into names.
        let mixed = format!(
            r#"{{"type":"unsubscribe","events":[{}1,{{}},[]]}}"#,
            r#""a","#.repeat(MAX_SUBSCRIBE_NAMES + 1)
        );
        assert_eq!(ClientMessage::parse(&mixed), Some(ClientMessage::OverLimit));
    }

    #[test]
    fn subscribe_takes_topics_filter_and_max_rate_and_refuses_wrong_kinds() {
        assert_eq!(
            ClientMessage::parse(
                r#"{"type":"subscribe","topics":["gpu.*","billing"],"filter":{"types":["job"]},"max_rate":5}"#
            ),
            Some(ClientMessage::Subscribe(Subscribe {
                events: None,
                topics: Some("gpu.*,billing".into()),
                filter: Some(r#"{"types":["job"]}"#.into()),
                max_rate: Some(NonZeroU32::new(5)),
                consumer: None,
            }))
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"subscribe","topics":"gpu","max_rate":0}"#),
            Some(ClientMessage::Subscribe(Subscribe {
                topics: Some("gpu".into()),
                max_rate: Some(None),
                ..Subscribe::default()
            }))
        );
        let too_many = format!(
            r#"{{"type":"subscribe","topics":{}}}"#,
            serde_json::to_string(&vec!["t"; event_core::filter::MAX_TOPIC_PATTERNS + 1]).unwrap()
        );
        for (bad, code) in [
            (r#"{"type":"subscribe","topics":[1]}"#, "invalid_filter"),
            (r#"{"type":"subscribe","topics":{"a":1}}"#, "invalid_filter"),
            (too_many.as_str(), "invalid_filter"),
            (r#"{"type":"subscribe","filter":[1]}"#, "invalid_filter"),
            (r#"{"type":"subscribe","max_rate":-1}"#, "invalid_parameter"),
            (
                r#"{"type":"subscribe","max_rate":"5"}"#,
                "invalid_parameter",
            ),
            (
                r#"{"type":"subscribe","max_rate":10001}"#,
                "invalid_parameter",
            ),
            (
                r#"{"type":"subscribe","max_rate":1.5}"#,
                "invalid_parameter",
            ),
        ] {
            match ClientMessage::parse(bad) {
                Some(ClientMessage::Refused(r)) => {
                    assert_eq!(r.error, code, "{bad}");
                    let reply: Value = serde_json::from_str(&r.reply()).unwrap();
                    assert_eq!(reply["type"], "error");
                    assert_eq!(reply["error"], code);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
