//! What a client may send (docs/protocol.md §2, client → server) and the replies.
//!
//! Anything that is not one of these messages is ignored, so a client
//! speaking a newer dialect never loses its connection over it.

use std::fmt;

use event_core::{EventKind, KindSet, QueueStatus, ServerEvent};
use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

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
    /// `{"type":"subscribe","events":[…]}`.
    Subscribe(Vec<String>),
    /// `{"type":"unsubscribe","events":[…]}`.
    Unsubscribe(Vec<String>),
    /// A `subscribe` or `unsubscribe` with more than
    /// [`MAX_SUBSCRIBE_NAMES`] names or a name over
    /// [`MAX_SUBSCRIBE_NAME_BYTES`] bytes: the connection is closed with
    /// 1008 (no client of the protocol needs that many, and the reply
    /// echoes unknown names).
    OverLimit,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum JsonMessage {
    Refresh,
    Ping,
    Subscribe { events: Names },
    Unsubscribe { events: Names },
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
                events: Names(Some(names)),
            } => ClientMessage::Subscribe(names),
            JsonMessage::Unsubscribe {
                events: Names(Some(names)),
            } => ClientMessage::Unsubscribe(names),
            JsonMessage::Subscribe {
                events: Names(None),
            }
            | JsonMessage::Unsubscribe {
                events: Names(None),
            } => ClientMessage::OverLimit,
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
}

/// `{"type":"subscribed","events":[…]}` (plus `"unknown":[…]` when some
/// names matched nothing).
pub(crate) fn subscribed_reply(kinds: KindSet, unknown: &[String]) -> String {
    let reply = Subscribed {
        kind: "subscribed",
        events: kinds.iter().map(EventKind::type_name).collect(),
        unknown,
    };
    // Serializing strings into a String cannot fail.
    serde_json::to_string(&reply).unwrap_or_default()
}

/// The flat §1 JSON of a queue status.
pub(crate) fn queue_status_json(status: QueueStatus) -> String {
    serde_json::to_string(&ServerEvent::QueueStatus(status)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Some(ClientMessage::Subscribe(vec![
                "JobProgress".into(),
                "note".into()
            ]))
        );
        for junk in [
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
            subscribed_reply(fresh.kinds(), &[]),
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
            Some(ClientMessage::Subscribe(at_limit.clone()))
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
}
