//! Event filters shared by every transport (docs/protocol.md §3).
//!
//! * `events=NoteUpdated,job.completed` — exact names, either naming scheme.
//! * `types=job,note.updated` — case-insensitive; a dot name matches exactly
//!   or as a prefix ending at a dot (`job` matches `job.progress`, not
//!   `jobs.paused`).
//! * `entity_id=<uuid>` — the envelope's `entity_id` (the job of a job event,
//!   the note of a `NoteUpdated`).
//! * `memory=<name>` — only events of that memory, plus unscoped ones.
//! * `topics=jobs.gpu,billing.*` — the event's topic ([`Event::topic`]),
//!   exactly or, with a trailing `*`, by prefix.
//!
//! All parts combine with AND. Because there are only seven kinds, the name
//! filters compile to a 7-bit [`KindSet`] at parse time, and matching an event
//! is a bit test.

use std::fmt;

use uuid::Uuid;

use crate::Error;
use crate::event::Event;
use crate::payload::EventKind;

/// A set of event kinds, as a bit mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KindSet(u8);

impl KindSet {
    /// Every kind.
    pub const ALL: KindSet = KindSet(0x7f);
    /// No kind.
    pub const EMPTY: KindSet = KindSet(0);

    /// The set holding one kind.
    pub const fn only(kind: EventKind) -> KindSet {
        KindSet(1 << kind as u8)
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: EventKind) -> bool {
        self.0 & (1 << kind as u8) != 0
    }

    /// The union.
    pub const fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }

    /// The intersection.
    pub const fn intersection(self, other: KindSet) -> KindSet {
        KindSet(self.0 & other.0)
    }

    /// The kinds of `self` not in `other`.
    pub const fn difference(self, other: KindSet) -> KindSet {
        KindSet(self.0 & !other.0)
    }

    /// Whether the set is empty.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The raw mask (bit `k` = `EventKind::ALL[k]`).
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The set from a raw mask; bits beyond the seven kinds are ignored.
    pub const fn from_bits(bits: u8) -> KindSet {
        KindSet(bits & 0x7f)
    }

    /// The kinds in the set, in protocol order.
    pub fn iter(self) -> impl Iterator<Item = EventKind> {
        EventKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// The PascalCase names of the kinds in the set.
    pub fn type_names(self) -> Vec<&'static str> {
        self.iter().map(EventKind::type_name).collect()
    }

    /// The kinds one `types=` entry selects: a name in either scheme
    /// (case-insensitive), or a dot prefix ending at a dot. `None` when it
    /// selects nothing.
    pub fn from_type_pattern(pattern: &str) -> Option<KindSet> {
        let p = pattern.trim().to_ascii_lowercase();
        if p.is_empty() {
            return None;
        }
        let mut set = KindSet::EMPTY;
        for kind in EventKind::ALL {
            let dot = kind.dot_name();
            let prefix_match = dot.len() > p.len()
                && dot.starts_with(p.as_str())
                && dot.as_bytes()[p.len()] == b'.';
            if dot == p || prefix_match || kind.type_name().eq_ignore_ascii_case(&p) {
                set = set.union(KindSet::only(kind));
            }
        }
        (!set.is_empty()).then_some(set)
    }

    /// The kinds a client-supplied name selects: an exact name in either
    /// scheme, else a `types=`-style pattern. Used by the WebSocket
    /// `subscribe` message, which accepts both (`["JobProgress","note"]`).
    pub fn from_name_or_pattern(name: &str) -> Option<KindSet> {
        EventKind::from_name(name.trim())
            .map(KindSet::only)
            .or_else(|| KindSet::from_type_pattern(name))
    }

    /// Parses a comma-separated `events=` list (exact names).
    pub fn parse_events(list: &str) -> Result<KindSet, Error> {
        parse_list("events", list, |item| {
            EventKind::from_name(item).map(KindSet::only)
        })
    }

    /// Parses a comma-separated `types=` list (case-insensitive prefixes).
    pub fn parse_types(list: &str) -> Result<KindSet, Error> {
        parse_list("types", list, KindSet::from_type_pattern)
    }
}

impl fmt::Debug for KindSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl FromIterator<EventKind> for KindSet {
    fn from_iter<I: IntoIterator<Item = EventKind>>(iter: I) -> Self {
        iter.into_iter()
            .fold(KindSet::EMPTY, |set, k| set.union(KindSet::only(k)))
    }
}

fn parse_list(
    param: &'static str,
    list: &str,
    mut one: impl FnMut(&str) -> Option<KindSet>,
) -> Result<KindSet, Error> {
    let mut set = KindSet::EMPTY;
    let mut unknown = Vec::new();
    let mut any = false;
    // Empty items (a trailing comma) are tolerated; an empty list is not.
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        any = true;
        match one(item) {
            Some(kinds) => set = set.union(kinds),
            None => unknown.push(item.to_owned()),
        }
    }
    if !any {
        return Err(Error::InvalidFilter {
            param,
            value: list.to_owned(),
            reason: "the list is empty".to_owned(),
        });
    }
    if !unknown.is_empty() {
        return Err(Error::InvalidFilter {
            param,
            value: list.to_owned(),
            reason: format!("unknown event name(s): {}", unknown.join(", ")),
        });
    }
    Ok(set)
}

/// One entry of a `topics=` list: a topic, or a prefix (`billing.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Exactly this topic.
    Exact(String),
    /// Topics starting with this (the pattern without its `*`).
    Prefix(String),
}

impl TopicPattern {
    /// Parses one entry: a valid topic, or a prefix of one followed by `*`
    /// (`*` alone matches every topic).
    pub fn parse(text: &str) -> Result<TopicPattern, Error> {
        let text = text.trim();
        match text.strip_suffix('*') {
            Some(prefix) => {
                if !prefix.is_empty() {
                    // A prefix is checked as the topic it begins.
                    crate::event::validate_topic(&format!("{prefix}x"))?;
                }
                Ok(TopicPattern::Prefix(prefix.to_owned()))
            }
            None => {
                crate::event::validate_topic(text)?;
                Ok(TopicPattern::Exact(text.to_owned()))
            }
        }
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(t) => t == topic,
            TopicPattern::Prefix(p) => topic.starts_with(p.as_str()),
        }
    }
}

/// Most entries of one `topics=` list.
pub const MAX_TOPIC_PATTERNS: usize = 64;

fn parse_topics(list: &str) -> Result<Vec<TopicPattern>, Error> {
    let invalid = |reason: String| Error::InvalidFilter {
        param: "topics",
        value: list.chars().take(200).collect(),
        reason,
    };
    let items: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(invalid("the list is empty".to_owned()));
    }
    if items.len() > MAX_TOPIC_PATTERNS {
        return Err(invalid(format!("more than {MAX_TOPIC_PATTERNS} topics")));
    }
    items
        .into_iter()
        .map(|item| TopicPattern::parse(item).map_err(|e| invalid(e.to_string())))
        .collect()
}

/// Which events a subscriber wants. The default matches everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFilter {
    kinds: KindSet,
    entity_id: Option<Uuid>,
    memory: Option<String>,
    /// Each list must match (AND); within a list any pattern (OR). Empty:
    /// every topic.
    topics: Vec<Vec<TopicPattern>>,
}

impl Default for EventFilter {
    fn default() -> Self {
        EventFilter::all()
    }
}

/// The raw filter parameters of a request, before parsing.
#[derive(Debug, Clone, Copy, Default)]
pub struct FilterParams<'a> {
    /// `events=`
    pub events: Option<&'a str>,
    /// `types=`
    pub types: Option<&'a str>,
    /// `entity_id=`
    pub entity_id: Option<&'a str>,
    /// `memory=` (or the `X-Fortemi-Memory` header)
    pub memory: Option<&'a str>,
    /// `topics=`
    pub topics: Option<&'a str>,
}

impl EventFilter {
    /// Matches every event.
    pub fn all() -> Self {
        EventFilter {
            kinds: KindSet::ALL,
            entity_id: None,
            memory: None,
            topics: Vec::new(),
        }
    }

    /// Parses request parameters. A parameter that is present but empty is
    /// an error, as is an unknown event name; the error names the parameter
    /// and the offending value.
    ///
    /// ```
    /// use event_core::{EventFilter, FilterParams, EventKind};
    /// let f = EventFilter::parse(FilterParams { types: Some("job"), ..Default::default() }).unwrap();
    /// assert!(f.kinds().contains(EventKind::JobProgress));
    /// assert!(!f.kinds().contains(EventKind::NoteUpdated));
    /// assert!(EventFilter::parse(FilterParams { events: Some("Nope"), ..Default::default() }).is_err());
    /// ```
    pub fn parse(params: FilterParams<'_>) -> Result<Self, Error> {
        let mut kinds = KindSet::ALL;
        if let Some(list) = params.events {
            kinds = kinds.intersection(KindSet::parse_events(list)?);
        }
        if let Some(list) = params.types {
            kinds = kinds.intersection(KindSet::parse_types(list)?);
        }
        let entity_id = match params.entity_id {
            None => None,
            Some(raw) => Some(
                Uuid::try_parse(raw.trim()).map_err(|_| Error::InvalidFilter {
                    param: "entity_id",
                    value: raw.to_owned(),
                    reason: "not a UUID".to_owned(),
                })?,
            ),
        };
        let memory = match params.memory {
            None => None,
            Some(raw) if raw.trim().is_empty() => {
                return Err(Error::InvalidFilter {
                    param: "memory",
                    value: raw.to_owned(),
                    reason: "empty memory name".to_owned(),
                });
            }
            Some(raw) => Some(raw.trim().to_owned()),
        };
        let topics = match params.topics {
            None => Vec::new(),
            Some(list) => vec![parse_topics(list)?],
        };
        Ok(EventFilter {
            kinds,
            entity_id,
            memory,
            topics,
        })
    }

    /// Only these topics (in addition to any topic filter already set).
    pub fn with_topics(mut self, topics: Vec<TopicPattern>) -> Self {
        self.topics.push(topics);
        self
    }

    /// The topic filter: every list must have a matching pattern.
    pub fn topics(&self) -> &[Vec<TopicPattern>] {
        &self.topics
    }

    /// Only these kinds.
    pub fn with_kinds(mut self, kinds: KindSet) -> Self {
        self.kinds = kinds;
        self
    }

    /// Only this entity.
    pub fn with_entity(mut self, id: Uuid) -> Self {
        self.entity_id = Some(id);
        self
    }

    /// Only this memory (plus unscoped events).
    pub fn with_memory(mut self, memory: impl Into<String>) -> Self {
        self.memory = Some(memory.into());
        self
    }

    /// Whether an event of `topic` can pass this filter's topic patterns
    /// (ignoring its other conditions).
    pub fn may_match_topic(&self, topic: &str) -> bool {
        self.topics()
            .iter()
            .all(|any| any.iter().any(|p| p.matches(topic)))
    }

    /// The kinds that pass.
    pub fn kinds(&self) -> KindSet {
        self.kinds
    }

    /// The entity filter, if any.
    pub fn entity_id(&self) -> Option<Uuid> {
        self.entity_id
    }

    /// The memory filter, if any.
    pub fn memory(&self) -> Option<&str> {
        self.memory.as_deref()
    }

    /// Whether the event passes, considering only the non-kind parts (entity
    /// and memory). Useful when the kind set is kept elsewhere (mutable, per
    /// connection).
    pub fn matches_except_kind(&self, event: &Event) -> bool {
        if let Some(want) = self.entity_id
            && event.payload().entity().map(|(_, id)| id) != Some(want)
        {
            return false;
        }
        if !self.topics.is_empty() {
            let topic = event.topic();
            if !self
                .topics
                .iter()
                .all(|any| any.iter().any(|p| p.matches(topic)))
            {
                return false;
            }
        }
        match (&self.memory, event.memory()) {
            (Some(want), Some(have)) => want == have,
            _ => true,
        }
    }

    /// Whether the event passes.
    pub fn matches(&self, event: &Event) -> bool {
        self.kinds.contains(event.kind()) && self.matches_except_kind(event)
    }
}

/// Most bytes of a JSON-encoded filter (`?filter=`).
pub const MAX_FILTER_JSON_BYTES: usize = 4096;

impl EventFilter {
    /// [`parse`](Self::parse) plus `json`, a JSON-encoded filter (the
    /// `?filter=` parameter): an object with the same fields as the separate
    /// parameters — `events` and `types` (a comma list or an array of
    /// names), `entity_id`, `memory` — combined with them by AND. An unknown
    /// field, a value of the wrong kind, or an `entity_id`/`memory` that
    /// differs from the separate parameter's is an error naming `filter`.
    ///
    /// ```
    /// use event_core::{EventFilter, EventKind, FilterParams};
    /// let f = EventFilter::parse_with_json(
    ///     FilterParams { types: Some("job"), ..Default::default() },
    ///     Some(r#"{"events":["JobCompleted","NoteUpdated"]}"#),
    /// )
    /// .unwrap();
    /// assert!(f.kinds().contains(EventKind::JobCompleted));
    /// assert!(!f.kinds().contains(EventKind::NoteUpdated), "AND with types=job");
    /// assert!(EventFilter::parse_with_json(FilterParams::default(), Some(r#"{"colour":"red"}"#)).is_err());
    /// ```
    pub fn parse_with_json(params: FilterParams<'_>, json: Option<&str>) -> Result<Self, Error> {
        let separate = EventFilter::parse(params)?;
        let Some(json) = json else {
            return Ok(separate);
        };
        let invalid = |reason: String| Error::InvalidFilter {
            param: "filter",
            value: json.chars().take(200).collect(),
            reason,
        };
        if json.len() > MAX_FILTER_JSON_BYTES {
            return Err(invalid(format!(
                "longer than {MAX_FILTER_JSON_BYTES} bytes"
            )));
        }
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let serde_json::Value::Object(fields) = value else {
            return Err(invalid("expected a JSON object".to_owned()));
        };
        let mut lists: [Option<String>; 3] = [None, None, None];
        let mut texts: [Option<String>; 2] = [None, None];
        for (key, value) in &fields {
            let (slot, is_list) = match key.as_str() {
                "events" => (0, true),
                "types" => (1, true),
                "topics" => (2, true),
                "entity_id" => (0, false),
                "memory" => (1, false),
                other => {
                    return Err(invalid(format!(
                        "unknown field `{other}` (expected events, types, topics, entity_id, memory)"
                    )));
                }
            };
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(items) if is_list => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| invalid(format!("`{key}` must hold strings")))?
                    .join(","),
                _ => {
                    let kind = if is_list {
                        "a string or an array of strings"
                    } else {
                        "a string"
                    };
                    return Err(invalid(format!("`{key}` must be {kind}")));
                }
            };
            if is_list {
                lists[slot] = Some(text);
            } else {
                texts[slot] = Some(text);
            }
        }
        let embedded = EventFilter::parse(FilterParams {
            events: lists[0].as_deref(),
            types: lists[1].as_deref(),
            entity_id: texts[0].as_deref(),
            memory: texts[1].as_deref(),
            topics: lists[2].as_deref(),
        })?;
        let entity_id = match (separate.entity_id, embedded.entity_id) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    "`entity_id` differs from the entity_id parameter".to_owned(),
                ));
            }
            (a, b) => a.or(b),
        };
        let memory = match (separate.memory, embedded.memory) {
            (Some(a), Some(b)) if a != b => {
                return Err(invalid(
                    "`memory` differs from the memory parameter".to_owned(),
                ));
            }
            (a, b) => a.or(b),
        };
        let mut topics = separate.topics;
        topics.extend(embedded.topics);
        Ok(EventFilter {
            kinds: separate.kinds.intersection(embedded.kinds),
            entity_id,
            memory,
            topics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(events: Option<&'a str>, types: Option<&'a str>) -> FilterParams<'a> {
        FilterParams {
            events,
            types,
            ..Default::default()
        }
    }

    #[test]
    fn events_accepts_both_schemes_exactly() {
        let f = EventFilter::parse(params(Some("NoteUpdated,job.completed"), None)).unwrap();
        assert_eq!(
            f.kinds(),
            [EventKind::JobCompleted, EventKind::NoteUpdated]
                .into_iter()
                .collect()
        );
        assert!(EventFilter::parse(params(Some("noteupdated"), None)).is_err());
        assert!(EventFilter::parse(params(Some("Note.Updated"), None)).is_err());
    }

    #[test]
    fn types_prefix_ends_at_a_dot() {
        let job = KindSet::parse_types("job").unwrap();
        assert_eq!(job.iter().count(), 5);
        assert!(!job.contains(EventKind::NoteUpdated));
        assert!(KindSet::parse_types("jobs").is_err());
        assert!(KindSet::parse_types("jo").is_err());
        assert_eq!(
            KindSet::parse_types("JOB.Progress").unwrap(),
            KindSet::only(EventKind::JobProgress)
        );
        assert_eq!(
            KindSet::parse_types("note.updated,queue")
                .unwrap()
                .iter()
                .count(),
            2
        );
        assert_eq!(
            KindSet::parse_types("JobFailed").unwrap(),
            KindSet::only(EventKind::JobFailed)
        );
    }

    #[test]
    fn empty_and_unknown_lists_name_the_problem() {
        for (p, bad) in [("events", ""), ("events", " , "), ("types", "")] {
            let err = if p == "events" {
                KindSet::parse_events(bad)
            } else {
                KindSet::parse_types(bad)
            }
            .unwrap_err();
            assert!(err.to_string().contains(p), "{err}");
            assert!(err.to_string().contains("empty"), "{err}");
        }
        let err = KindSet::parse_events("NoteUpdated,Bogus,Other").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("Bogus")
                && text.contains("Other")
                && !text.contains("unknown event name(s): NoteUpdated"),
            "{text}"
        );
        assert!(KindSet::parse_events("NoteUpdated,").is_ok());
    }

    #[test]
    fn events_and_types_intersect() {
        let f = EventFilter::parse(params(Some("JobProgress,NoteUpdated"), Some("job"))).unwrap();
        assert_eq!(f.kinds(), KindSet::only(EventKind::JobProgress));
    }

    #[test]
    fn entity_and_memory_are_validated() {
        let bad = FilterParams {
            entity_id: Some("not-a-uuid"),
            ..Default::default()
        };
        assert!(
            EventFilter::parse(bad)
                .unwrap_err()
                .to_string()
                .contains("entity_id")
        );
        let empty_mem = FilterParams {
            memory: Some(" "),
            ..Default::default()
        };
        assert!(EventFilter::parse(empty_mem).is_err());
    }

    #[test]
    fn name_or_pattern() {
        assert_eq!(
            KindSet::from_name_or_pattern("JobProgress"),
            Some(KindSet::only(EventKind::JobProgress))
        );
        assert_eq!(
            KindSet::from_name_or_pattern("note"),
            Some(KindSet::only(EventKind::NoteUpdated))
        );
        assert_eq!(KindSet::from_name_or_pattern("bogus"), None);
    }

    #[test]
    fn a_json_filter_ands_with_the_parameters_and_names_its_faults() {
        let x = "0197c0de-5e1a-7a00-8000-000000000001";
        let f = EventFilter::parse_with_json(
            FilterParams {
                entity_id: Some(x),
                ..Default::default()
            },
            Some(&format!(
                r#"{{"entity_id":"{x}","events":"JobProgress,NoteUpdated","types":["note"]}}"#
            )),
        )
        .unwrap();
        assert_eq!(f.entity_id().map(|u| u.to_string()).as_deref(), Some(x));
        assert!(f.kinds().contains(EventKind::NoteUpdated));
        assert!(!f.kinds().contains(EventKind::JobProgress));
        for bad in [
            r#"{"types":[1]}"#.to_owned(),
            r#"{"memory":["a"]}"#.to_owned(),
            r#"{"entity_id":"0197c0de-5e1a-7a00-8000-000000000002"}"#.to_owned(),
            "not json".to_owned(),
            format!(r#"{{"memory":"{}"}}"#, "m".repeat(MAX_FILTER_JSON_BYTES)),
        ] {
            let err = EventFilter::parse_with_json(
                FilterParams {
                    entity_id: Some(x),
                    ..Default::default()
                },
                Some(&bad),
            )
            .expect_err(&bad);
            assert!(
                matches!(
                    err,
                    Error::InvalidFilter {
                        param: "filter",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    fn topical(topic: Option<&str>) -> Event {
        let meta = crate::event::EventMeta {
            topic: topic.map(str::to_owned),
            ..Default::default()
        };
        Event::new(
            1,
            Uuid::now_v7(),
            time::OffsetDateTime::now_utc(),
            meta,
            crate::payload::ServerEvent::QueueStatus(crate::payload::QueueStatus::new(1, 0)),
        )
    }

    #[test]
    fn topics_match_exactly_or_by_prefix_and_default_to_the_family() {
        let f = EventFilter::parse(FilterParams {
            topics: Some("billing.*, gpu"),
            ..Default::default()
        })
        .unwrap();
        assert!(f.matches(&topical(Some("billing.invoices"))));
        assert!(f.matches(&topical(Some("gpu"))));
        assert!(!f.matches(&topical(Some("gpu.large"))));
        assert!(
            !f.matches(&topical(None)),
            "a QueueStatus is in topic `queue`"
        );
        let queue = EventFilter::parse(FilterParams {
            topics: Some("queue"),
            ..Default::default()
        })
        .unwrap();
        assert!(queue.matches(&topical(None)));
        // The JSON form, ANDed with the parameter.
        let both = EventFilter::parse_with_json(
            FilterParams {
                topics: Some("billing.*"),
                ..Default::default()
            },
            Some(r#"{"topics":["billing.eu.*","gpu"]}"#),
        )
        .unwrap();
        assert!(both.matches(&topical(Some("billing.eu.x"))));
        assert!(!both.matches(&topical(Some("billing.us.x"))));
        assert!(!both.matches(&topical(Some("gpu"))));
    }

    #[test]
    fn bad_topic_lists_name_the_parameter() {
        let too_many = vec!["t"; MAX_TOPIC_PATTERNS + 1].join(",");
        for bad in ["", "UPPER", "-lead", "spa ce", "a*b", too_many.as_str()] {
            let err = EventFilter::parse(FilterParams {
                topics: Some(bad),
                ..Default::default()
            })
            .unwrap_err();
            assert_eq!(err.code(), "invalid_filter", "{bad}: {err}");
            assert!(err.to_string().contains("`topics`"), "{bad}: {err}");
        }
        assert!(crate::event::validate_topic(&"a".repeat(129)).is_err());
        assert!(crate::event::validate_topic("jobs.gpu-large_2").is_ok());
    }
}
