//! Property tests: parsers of outside input never panic, and accept what they should.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use event_core::{Cursor, EventFilter, EventKind, FilterParams, KindSet};
use proptest::prelude::*;

proptest! {
    #[test]
    fn filter_parse_never_panics(
        events in proptest::option::of(".{0,40}"),
        types in proptest::option::of(".{0,40}"),
        entity in proptest::option::of(".{0,40}"),
        memory in proptest::option::of(".{0,20}"),
    ) {
        let _ = EventFilter::parse(FilterParams {
            events: events.as_deref(),
            types: types.as_deref(),
            entity_id: entity.as_deref(),
            memory: memory.as_deref(),
        });
    }

    #[test]
    fn cursor_parse_never_panics(text in ".{0,60}") {
        let _ = Cursor::parse(&text);
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

    #[test]
    fn server_event_json_never_panics(text in "\\{.{0,80}\\}") {
        let _ = serde_json::from_str::<event_core::ServerEvent>(&text);
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
