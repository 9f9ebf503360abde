//! Property tests for the parsers of outside input: generators of
//! near-valid input (mostly well-formed, with one or a few fields missing,
//! null, of the wrong type or out of range), each checked against a
//! reference predicate written here from docs/protocol.md §1 and the parsers' docs,
//! not from their code: a parse succeeds exactly when the rules hold, and
//! then yields what the input says.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_core::{Cursor, EventFilter, EventKind, FilterParams, KindSet, ServerEvent};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// The seven kinds by their two names, as docs/protocol.md §1 lists them.
const NAMES: [(&str, &str); 7] = [
    ("QueueStatus", "queue.status"),
    ("JobQueued", "job.queued"),
    ("JobStarted", "job.started"),
    ("JobProgress", "job.progress"),
    ("JobCompleted", "job.completed"),
    ("JobFailed", "job.failed"),
    ("NoteUpdated", "note.updated"),
];

/// The JSON type of a field.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ty {
    Uuid,
    Str,
    U64,
    U8,
    Bool,
    Tags,
    Op,
}

/// One generated field: what the object carries under its name.
#[derive(Debug, Clone)]
enum Case {
    Absent,
    Null,
    /// A value of the field's type, in range.
    Good(Value),
    /// Of the wrong type, out of range or malformed.
    Bad(Value),
}

fn good(ty: Ty) -> BoxedStrategy<Value> {
    match ty {
        Ty::Uuid => any::<u128>()
            .prop_map(|n| json!(uuid::Uuid::from_u128(n).to_string()))
            .boxed(),
        Ty::Str => prop_oneof![
            Just(json!("")),
            Just(json!("   ")),
            Just(json!("Embedding")),
            Just(json!("timed_out")),
            "[a-z é]{0,8}".prop_map(Value::from),
        ]
        .boxed(),
        // Small values, so that `total_jobs == pending + running` holds often.
        Ty::U64 => prop_oneof![4 => 0u64..4, 1 => any::<u64>()]
            .prop_map(Value::from)
            .boxed(),
        // A few values, so that `progress` and `progress_percent` agree often.
        Ty::U8 => prop_oneof![
            4 => prop::sample::select(vec![0u8, 50, 100, 101, 255]),
            1 => any::<u8>(),
        ]
        .prop_map(Value::from)
        .boxed(),
        Ty::Bool => any::<bool>().prop_map(Value::from).boxed(),
        Ty::Tags => prop::collection::vec("[a-z]{0,4}", 0..3)
            .prop_map(|t| json!(t))
            .boxed(),
        Ty::Op => prop::sample::select(vec!["created", "updated", "deleted"])
            .prop_map(Value::from)
            .boxed(),
    }
}

fn bad(ty: Ty) -> BoxedStrategy<Value> {
    let values = match ty {
        Ty::Uuid => vec![
            json!("not-a-uuid"),
            json!(""),
            json!(42),
            json!("0197c0de-5e1a-7a00-8000-00000000000"),
        ],
        Ty::Str => vec![json!(7), json!(true), json!(["x"]), json!({})],
        Ty::U64 => vec![json!(-1), json!("3"), json!(1.5), json!(true)],
        Ty::U8 => vec![json!(256), json!(-1), json!("50"), json!(50.5)],
        Ty::Bool => vec![json!(0), json!("true"), json!([])],
        Ty::Tags => vec![json!("a"), json!([1]), json!({})],
        Ty::Op => vec![json!("Created"), json!("renamed"), json!(1)],
    };
    prop::sample::select(values).boxed()
}

fn case(ty: Ty) -> BoxedStrategy<Case> {
    prop_oneof![
        8 => good(ty).prop_map(Case::Good),
        1 => Just(Case::Absent),
        1 => Just(Case::Null),
        1 => bad(ty).prop_map(Case::Bad),
    ]
    .boxed()
}

/// The fields of each kind: name, type, required.
fn schema(kind: usize) -> Vec<(&'static str, Ty, bool)> {
    let job = |extra: Vec<(&'static str, Ty, bool)>| {
        let mut f = vec![
            ("job_id", Ty::Uuid, true),
            ("job_type", Ty::Str, true),
            ("note_id", Ty::Uuid, false),
        ];
        f.extend(extra);
        f
    };
    match kind {
        0 => vec![
            ("total_jobs", Ty::U64, true),
            ("running", Ty::U64, true),
            ("pending", Ty::U64, true),
        ],
        1 | 2 => job(vec![]),
        3 => vec![
            ("job_id", Ty::Uuid, true),
            ("note_id", Ty::Uuid, false),
            ("progress", Ty::U8, false),
            ("progress_percent", Ty::U8, false),
            ("message", Ty::Str, false),
        ],
        4 => job(vec![("duration_ms", Ty::U64, false)]),
        5 => job(vec![("error", Ty::Str, true)]),
        _ => vec![
            ("note_id", Ty::Uuid, true),
            ("title", Ty::Str, false),
            ("tags", Ty::Tags, true),
            ("has_ai_content", Ty::Bool, true),
            ("has_links", Ty::Bool, true),
            ("operation", Ty::Op, false),
            ("user_id", Ty::Str, false),
        ],
    }
}

/// The `type` member.
#[derive(Debug, Clone)]
enum Tag {
    TypeName,
    /// The dot name: accepted in filters and subscriptions, not as `type`.
    DotName,
    Unknown,
    Absent,
    NotAString,
}

#[derive(Debug, Clone)]
struct Generated {
    kind: usize,
    tag: Tag,
    fields: Vec<(&'static str, Ty, bool, Case)>,
    /// An unknown member (ignored by the parser).
    extra: bool,
}

impl Generated {
    fn json(&self) -> Value {
        let mut obj = Map::new();
        match self.tag {
            Tag::TypeName => obj.insert("type".into(), json!(NAMES[self.kind].0)),
            Tag::DotName => obj.insert("type".into(), json!(NAMES[self.kind].1)),
            Tag::Unknown => obj.insert("type".into(), json!("JobPaused")),
            Tag::NotAString => obj.insert("type".into(), json!(3)),
            Tag::Absent => None,
        };
        for (name, _, _, case) in &self.fields {
            match case {
                Case::Absent => {}
                Case::Null => {
                    obj.insert((*name).into(), Value::Null);
                }
                Case::Good(v) | Case::Bad(v) => {
                    obj.insert((*name).into(), v.clone());
                }
            }
        }
        if self.extra {
            obj.insert("x_extra".into(), json!({"nested": [1, 2]}));
        }
        Value::Object(obj)
    }

    fn good(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find_map(|(n, _, _, c)| match c {
            Case::Good(v) if *n == name => Some(v),
            _ => None,
        })
    }

    /// The reference: whether the object deserializes. Required fields must
    /// be present with a value of their type; optional ones may also be
    /// absent or `null`; unknown members are ignored. A `JobProgress` needs
    /// `progress` or `progress_percent`, and both must agree when both are
    /// given.
    fn parses(&self) -> bool {
        if !matches!(self.tag, Tag::TypeName) {
            return false;
        }
        let fields_ok = self.fields.iter().all(|(_, _, required, case)| match case {
            Case::Good(_) => true,
            Case::Absent | Case::Null => !required,
            Case::Bad(_) => false,
        });
        if !fields_ok {
            return false;
        }
        if self.kind == 3 {
            return match (self.good("progress"), self.good("progress_percent")) {
                (None, None) => false,
                (Some(p), Some(pp)) => p == pp,
                _ => true,
            };
        }
        true
    }

    /// The reference for `validate`, on an object that parses: queue counts
    /// add up, progress is 0–100, `job_type` and `error` are not blank.
    fn valid(&self) -> bool {
        let n = |name| self.good(name).and_then(Value::as_u64);
        let blank = |name| {
            self.good(name)
                .and_then(Value::as_str)
                .is_some_and(|s| s.trim().is_empty())
        };
        match self.kind {
            0 => n("pending").and_then(|p| p.checked_add(n("running")?)) == n("total_jobs"),
            3 => n("progress")
                .or(n("progress_percent"))
                .is_some_and(|p| p <= 100),
            5 => !blank("job_type") && !blank("error"),
            1 | 2 | 4 => !blank("job_type"),
            _ => true,
        }
    }
}

fn generated() -> impl Strategy<Value = Generated> {
    (0usize..7).prop_flat_map(|kind| {
        let fields: Vec<_> = schema(kind)
            .into_iter()
            .map(|(name, ty, required)| case(ty).prop_map(move |c| (name, ty, required, c)))
            .collect();
        let tag = prop_oneof![
            12 => Just(Tag::TypeName),
            1 => Just(Tag::DotName),
            1 => Just(Tag::Unknown),
            1 => Just(Tag::Absent),
            1 => Just(Tag::NotAString),
        ];
        (tag, fields, any::<bool>()).prop_map(move |(tag, fields, extra)| Generated {
            kind,
            tag,
            fields,
            extra,
        })
    })
}

/// A `Last-Event-ID` value and what it names (`None`: refused).
fn cursor_text() -> impl Strategy<Value = (String, Option<Cursor>)> {
    let seq = prop_oneof![
        any::<u64>().prop_map(|n| (n.to_string(), Some(Cursor::Seq(n)))),
        // Leading zeros are still the number.
        any::<u32>().prop_map(|n| (format!("000{n}"), Some(Cursor::Seq(u64::from(n))))),
        // One past u64::MAX, and longer.
        Just(("18446744073709551616".to_owned(), None)),
        "[1-9][0-9]{20,24}".prop_map(|s| (s, None)),
        any::<u64>().prop_map(|n| (format!("{n}x"), None)),
        any::<u64>().prop_map(|n| (format!("-{n}"), None)),
        any::<u64>().prop_map(|n| (format!("+{n}"), None)),
    ];
    let id = (any::<u128>(), 0usize..5, any::<bool>()).prop_map(|(n, form, upper)| {
        let u = uuid::Uuid::from_u128(n);
        let text = match form {
            0 => u.hyphenated().to_string(),
            1 => u.simple().to_string(),
            2 => u.braced().to_string(),
            3 => u.urn().to_string(),
            // Malformed: a hyphenated UUID one digit short.
            _ => {
                let mut t = u.hyphenated().to_string();
                t.pop();
                return (t, None);
            }
        };
        let text = if upper { text.to_uppercase() } else { text };
        // 32 digits and nothing else is read as a (too large) number.
        let named = (!text.bytes().all(|b| b.is_ascii_digit())).then_some(Cursor::Id(u));
        (text, named)
    });
    let bad_id = (any::<u128>(), 0usize..36).prop_map(|(n, at)| {
        let mut t: Vec<char> = uuid::Uuid::from_u128(n)
            .hyphenated()
            .to_string()
            .chars()
            .collect();
        t[at] = 'g';
        (t.into_iter().collect::<String>(), None)
    });
    let other = prop_oneof![
        Just((String::new(), None)),
        Just(("   ".to_owned(), None)),
        ".{0,12}"
            .prop_filter("not a number or UUID", |s| {
                let t = s.trim();
                !t.bytes().all(|b| b.is_ascii_digit()) && uuid::Uuid::try_parse(t).is_err()
            })
            .prop_map(|s| (s, None)),
    ];
    (
        prop_oneof![4 => seq, 4 => id, 2 => bad_id, 1 => other],
        prop::sample::select(vec!["", " ", "\t", "  "]),
        prop::sample::select(vec!["", " ", "\r", "\n"]),
    )
        .prop_map(|((text, named), before, after)| (format!("{before}{text}{after}"), named))
}

/// One item of an `events=` / `types=` list, near the valid names.
fn list_item() -> impl Strategy<Value = String> {
    let mut pool: Vec<String> = NAMES
        .iter()
        .flat_map(|(t, d)| [(*t).to_owned(), (*d).to_owned()])
        .collect();
    pool.extend(
        [
            "job",
            "queue",
            "note",
            "JOB",
            "Job.Progress",
            "jobprogress",
            "job.",
            "jobs",
            "bogus",
            "",
            " ",
            "queue.status.x",
            "NOTE.UPDATED",
        ]
        .map(str::to_owned),
    );
    (prop::sample::select(pool), 0usize..3).prop_map(|(item, pad)| {
        let pad = " ".repeat(pad);
        format!("{pad}{item}{pad}")
    })
}

/// The reference for one `events=` item: an exact name in either scheme.
fn events_item(item: &str) -> Option<Vec<usize>> {
    let hit: Vec<usize> = (0..7)
        .filter(|&k| NAMES[k].0 == item || NAMES[k].1 == item)
        .collect();
    (!hit.is_empty()).then_some(hit)
}

/// The reference for one `types=` item: case-insensitively, a type name, a
/// dot name, or a dot name's prefix up to a dot (`job` → every `job.*`).
fn types_item(item: &str) -> Option<Vec<usize>> {
    let p = item.to_ascii_lowercase();
    let hit: Vec<usize> = (0..7)
        .filter(|&k| {
            let dot = NAMES[k].1;
            NAMES[k].0.to_ascii_lowercase() == p
                || dot == p
                || (!p.is_empty() && dot.starts_with(&format!("{p}.")))
        })
        .collect();
    (!hit.is_empty()).then_some(hit)
}

/// A whole list: `None` when refused (no item, or an unknown one).
fn list(text: &str, one: impl Fn(&str) -> Option<Vec<usize>>) -> Option<Vec<usize>> {
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return None;
    }
    let mut all = Vec::new();
    for item in items {
        all.extend(one(item)?);
    }
    Some(all)
}

fn kinds_of(indices: &[usize]) -> KindSet {
    indices
        .iter()
        .map(|&k| EventKind::from_name(NAMES[k].0).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2048)
    ))]

    #[test]
    fn server_event_parses_exactly_when_the_rules_hold(g in generated()) {
        let text = g.json().to_string();
        let parsed = serde_json::from_str::<ServerEvent>(&text);
        prop_assert_eq!(parsed.is_ok(), g.parses(), "{} -> {:?}", text, parsed);
        if let Ok(event) = parsed {
            prop_assert_eq!(event.type_name(), NAMES[g.kind].0);
            prop_assert_eq!(event.validate().is_ok(), g.valid(), "{} -> {:?}", text, event);
            // What was given is what was read: the event written back
            // carries every given field with its value.
            let back = serde_json::to_value(&event).unwrap();
            for (name, _, _, case) in &g.fields {
                if let Case::Good(v) = case {
                    prop_assert_eq!(&back[*name], v, "{}: {}", name, text);
                }
            }
        }
    }

    #[test]
    fn cursor_parses_exactly_the_two_id_forms((text, named) in cursor_text()) {
        prop_assert_eq!(Cursor::parse(&text).ok(), named, "{:?}", text);
    }

    #[test]
    fn filter_parses_exactly_when_its_parameters_are_valid(
        events in proptest::option::of(prop::collection::vec(list_item(), 0..4)),
        types in proptest::option::of(prop::collection::vec(list_item(), 0..4)),
        entity in proptest::option::of(prop_oneof![
            any::<u128>().prop_map(|n| (format!(" {} ", uuid::Uuid::from_u128(n)), Some(n))),
            Just(("not-a-uuid".to_owned(), None)),
            Just((String::new(), None)),
        ]),
        memory in proptest::option::of(prop_oneof![
            Just("work".to_owned()),
            Just(" work ".to_owned()),
            Just(String::new()),
            Just("  ".to_owned()),
        ]),
    ) {
        let events = events.map(|v| v.join(","));
        let types = types.map(|v| v.join(","));
        let parsed = EventFilter::parse(FilterParams {
            events: events.as_deref(),
            types: types.as_deref(),
            entity_id: entity.as_ref().map(|(t, _)| t.as_str()),
            memory: memory.as_deref(),
            topics: None,
        });
        // The reference: each given parameter valid; kinds are the
        // intersection of the lists given (all kinds when none is).
        let mut kinds = Some(KindSet::ALL);
        for (given, one) in [
            (&events, events_item as fn(&str) -> Option<Vec<usize>>),
            (&types, types_item),
        ] {
            if let Some(text) = given {
                kinds = match (kinds, list(text, one)) {
                    (Some(k), Some(hit)) => Some(k.intersection(kinds_of(&hit))),
                    _ => None,
                };
            }
        }
        let entity_ok = entity.as_ref().is_none_or(|(_, n)| n.is_some());
        let memory_ok = memory.as_ref().is_none_or(|m| !m.trim().is_empty());
        match (&parsed, kinds) {
            (Ok(filter), Some(kinds)) if entity_ok && memory_ok => {
                prop_assert_eq!(filter.kinds(), kinds);
                prop_assert_eq!(
                    filter.entity_id(),
                    entity.and_then(|(_, n)| n).map(uuid::Uuid::from_u128)
                );
                prop_assert_eq!(filter.memory(), memory.as_deref().map(str::trim));
            }
            (Err(_), kinds) => prop_assert!(
                kinds.is_none() || !entity_ok || !memory_ok,
                "refused a valid filter: {:?}",
                parsed
            ),
            (Ok(filter), _) => prop_assert!(false, "accepted an invalid filter: {:?}", filter),
        }
    }

    #[test]
    fn any_seq_round_trips(seq in any::<u64>()) {
        prop_assert_eq!(Cursor::parse(&seq.to_string()).unwrap(), Cursor::Seq(seq));
    }

    #[test]
    fn any_subset_of_names_parses_to_that_set(mask in 1u8..0x80, dots in any::<bool>()) {
        let set = KindSet::from_bits(mask);
        let names: Vec<&str> = set.iter().map(|k| if dots { k.dot_name() } else { k.type_name() }).collect();
        prop_assert_eq!(KindSet::parse_events(&names.join(",")).unwrap(), set);
        prop_assert_eq!(KindSet::parse_types(&names.join(",").to_uppercase()).unwrap(), set);
    }
}

#[test]
fn every_kind_has_a_prefix_family() {
    assert_eq!(KindSet::parse_types("job").unwrap().iter().count(), 5);
    assert_eq!(
        KindSet::parse_types("queue")
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        vec![EventKind::QueueStatus]
    );
}

/// The reference agrees with the names the library knows.
#[test]
fn the_reference_names_are_the_librarys() {
    for (k, (type_name, dot_name)) in NAMES.iter().enumerate() {
        let kind = EventKind::ALL[k];
        assert_eq!((kind.type_name(), kind.dot_name()), (*type_name, *dot_name));
    }
}
