//! Names and partitions: which durable consumer is which group's
//! partition, and which partition an event is in.

use event_core::Event;

use super::GROUP_CONSUMER_PREFIX;

/// The partition of `event` among `partitions`: a hash of its entity id
/// (FNV-1a of the UUID's bytes), so every event of one job or note is in
/// one partition; events with no entity (`QueueStatus`) are in partition 0.
/// Independent of the hash that picks a member within an instance, so
/// an instance's partitions spread over all its members.
pub fn partition_of(event: &Event, partitions: u16) -> u16 {
    let Some((_, id)) = event.payload().entity() else {
        return 0;
    };
    let hash = id
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    (hash % u64::from(partitions.max(1))) as u16
}

/// The durable consumer name of group `group`: [`GROUP_CONSUMER_PREFIX`]
/// and the name with `_` written `__` and `.` written `_d` (JetStream
/// names may not contain `.`), so distinct groups never share a consumer
/// and the name reads back ([`group_name`]). Each partition's consumer
/// appends `_p<n>` ([`partition_consumer_name`]).
pub fn consumer_name(group: &str) -> String {
    let mut out = String::with_capacity(GROUP_CONSUMER_PREFIX.len() + group.len() * 2);
    out.push_str(GROUP_CONSUMER_PREFIX);
    for c in group.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    out
}

/// The durable consumer of partition `partition` of group `group`.
pub fn partition_consumer_name(group: &str, partition: u16) -> String {
    format!("{}_p{partition}", consumer_name(group))
}

/// The group a durable consumer belongs to, and its partition (`None`: a
/// group consumer from before partitions), if it is a group's.
pub(super) fn parse_consumer(consumer: &str) -> Option<(String, Option<u16>)> {
    let mut chars = consumer.strip_prefix(GROUP_CONSUMER_PREFIX)?.chars();
    let mut out = String::new();
    while let Some(c) = chars.next() {
        match c {
            '_' => match chars.next()? {
                '_' => out.push('_'),
                'd' => out.push('.'),
                'p' => {
                    let digits: String = chars.by_ref().collect();
                    let partition = digits
                        .parse::<u16>()
                        .ok()
                        .filter(|_| digits.bytes().all(|b| b.is_ascii_digit()))?;
                    return (!out.is_empty()).then_some((out, Some(partition)));
                }
                _ => return None,
            },
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some((out, None))
}

/// The group whose durable consumer (of any partition) is `consumer`, if
/// it is one ([`consumer_name`] read back).
pub fn group_name(consumer: &str) -> Option<String> {
    parse_consumer(consumer).map(|(group, _)| group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_core::Cursor;

    use super::super::{MAX_FORWARDED_ACKS, parse_acks};

    #[test]
    fn group_names_map_to_distinct_consumer_names_and_back() {
        for (group, consumer) in [
            ("workers", "grp_workers"),
            ("a.b", "grp_a_db"),
            ("a_d", "grp_a__d"),
            ("a_.-Z9", "grp_a___d-Z9"),
        ] {
            assert_eq!(consumer_name(group), consumer);
            assert_eq!(group_name(consumer).as_deref(), Some(group));
            assert!(!consumer.contains('.'));
        }
        assert_ne!(consumer_name("a.b"), consumer_name("a_db"));
        let id = uuid::Uuid::now_v7();
        assert_eq!(
            parse_acks(format!(r#"["42000000","{id}","x"]"#).as_bytes()),
            [Cursor::Seq(42_000_000), Cursor::Id(id)]
        );
        let many: Vec<String> = (0..MAX_FORWARDED_ACKS + 5).map(|i| i.to_string()).collect();
        assert_eq!(
            parse_acks(&serde_json::to_vec(&many).unwrap()).len(),
            MAX_FORWARDED_ACKS
        );
        assert!(parse_acks(b"not json").is_empty());
        for not_a_group in [
            "workers",
            "grp_",
            "grp_a_x",
            "grp_a_",
            "grp__p1",
            "grp_a_p",
            "grp_a_p1x",
        ] {
            assert_eq!(group_name(not_a_group), None, "{not_a_group}");
        }
    }

    #[test]
    fn partition_consumers_read_back_to_their_group_and_partition() {
        for group in ["workers", "a_p1", "a.b", "x_p"] {
            for partition in [0, 7, 255] {
                let name = partition_consumer_name(group, partition);
                assert!(!name.contains('.'));
                assert_eq!(
                    parse_consumer(&name),
                    Some((group.to_owned(), Some(partition))),
                    "{name}"
                );
            }
            assert_eq!(
                parse_consumer(&consumer_name(group)),
                Some((group.to_owned(), None))
            );
        }
    }

    #[test]
    fn an_entity_s_events_share_a_partition_and_entities_spread() {
        use event_core::{EventMeta, JobProgress, QueueStatus, ServerEvent};
        let event = |payload: ServerEvent| {
            Event::new(
                1,
                uuid::Uuid::now_v7(),
                time::OffsetDateTime::now_utc(),
                EventMeta::default(),
                payload,
            )
        };
        let progress = |job: uuid::Uuid, p: u8| {
            event(ServerEvent::JobProgress(JobProgress {
                job_id: job,
                note_id: None,
                progress: p,
                message: None,
            }))
        };
        let job = uuid::Uuid::now_v7();
        assert_eq!(
            partition_of(&progress(job, 1), 16),
            partition_of(&progress(job, 2), 16)
        );
        let mut used = std::collections::BTreeSet::new();
        for _ in 0..1_000 {
            let p = partition_of(&progress(uuid::Uuid::now_v7(), 0), 16);
            assert!(p < 16);
            used.insert(p);
        }
        assert_eq!(used.len(), 16, "1,000 jobs cover every partition");
        assert_eq!(partition_of(&progress(job, 1), 1), 0);
        assert_eq!(
            partition_of(&event(ServerEvent::QueueStatus(QueueStatus::new(1, 2))), 16),
            0
        );
    }
}
