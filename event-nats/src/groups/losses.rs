//! Telling a group that a topic's retention purged events it had not
//! settled.
//!
//! A JetStream consumer skips purged messages without a trace, and after
//! a purge the server moves the consumer's floors past them, so the loss
//! can only be seen *before* the purge. The pruning instance (whichever
//! one it is, [`crate::topics`]) therefore looks at every group
//! partition's consumer first: one that has not yet been handed every
//! message up to the cut (`num_pending > 0` with its delivered sequence
//! below the cut) or holds unacknowledged ones below it
//! (`num_ack_pending > 0` with its ack floor below the cut) may lose
//! events of the topic.
//! For each such group it writes the key `<consumer>.gap` of the groups
//! bucket: `"<after> <through>"`, the bus sequence of the lowest such
//! floor and the cut. Every instance with members of the group watches
//! its keys ([`owners`](super::owners)) and tells its members
//! ([`GroupFeed::gaps`](event_core::GroupFeed::gaps)), so each gets one
//! resync signal per purge that may have cut into what the group had not
//! settled.
//!
//! The check is conservative: a partition's consumer covers every topic,
//! so a consumer behind the cut is flagged even when none of the events it
//! has yet to read were the pruned topic's; the members' own filter is not
//! consulted either. A notice may be a resync too many, never one too few
//! (short of the check itself failing, which is logged).

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer;
use async_nats::jetstream::context::GetStreamErrorKind;
use futures_util::StreamExt;

use super::consumer_name;
use super::names::parse_consumer;
use crate::Error;
use crate::cluster::Shared;
use crate::codec::bus_seq;

/// The key (under `<consumer>.`) of a group's last loss notice.
pub(super) const GAP_KEY: &str = "gap";

/// The bus sequence after which a notice says events may be missing.
pub(super) fn after_of(notice: &str) -> Option<u64> {
    notice.split(' ').next()?.parse().ok()
}

/// Whether `info`'s consumer may lose events at or below stream sequence
/// `through` when they are purged: the stream sequence of its floor then.
fn floor_behind(info: &consumer::Info, through: u64) -> Option<u64> {
    let unread = info.num_pending > 0 && info.delivered.stream_sequence < through;
    let unacked = info.num_ack_pending > 0 && info.ack_floor.stream_sequence < through;
    let floor = if unacked {
        info.ack_floor.stream_sequence
    } else {
        info.delivered.stream_sequence
    };
    (unread || unacked).then_some(floor)
}

/// Before a purge through stream sequence `through`: writes a loss notice
/// for every group that may lose events to it (see the module docs).
/// Nothing to do when no group was ever opened in the cluster.
pub(crate) async fn note_purge(shared: &Shared, through: u64) -> Result<(), Error> {
    let bucket = shared.config.groups_bucket();
    let failed = |e: &dyn std::fmt::Display| Error::Group(format!("loss check: {e}"));
    match shared.js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            return Ok(());
        }
        Err(e) => return Err(failed(&e)),
    }
    let mut behind: std::collections::BTreeMap<String, u64> = Default::default();
    let mut consumers = shared.stream.consumers();
    while let Some(info) = consumers.next().await {
        let info = info.map_err(|e| failed(&e))?;
        let Some((group, Some(_))) = parse_consumer(&info.name) else {
            continue;
        };
        if let Some(floor) = floor_behind(&info, through) {
            let lowest = behind.entry(group).or_insert(floor);
            *lowest = (*lowest).min(floor);
        }
    }
    if behind.is_empty() {
        return Ok(());
    }
    let kv = shared
        .js
        .get_key_value(&bucket)
        .await
        .map_err(|e| failed(&e))?;
    for (group, floor) in behind {
        let notice = format!("{} {}", bus_seq(floor), bus_seq(through));
        tracing::warn!(%group, after = bus_seq(floor), through = bus_seq(through), "a topic's retention purges events the group has not settled; its members are told");
        kv.put(
            format!("{}.{GAP_KEY}", consumer_name(&group)),
            notice.into(),
        )
        .await
        .map_err(|e| failed(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_reads_back_its_floor() {
        assert_eq!(after_of("42000000 57000000"), Some(42_000_000));
        assert_eq!(after_of(""), None);
        assert_eq!(after_of("x 1"), None);
    }
}
