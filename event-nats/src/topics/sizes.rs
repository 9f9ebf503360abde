//! A topic's `max_bytes` on the cluster's stream: where the cut falls,
//! found without reading the whole topic each round.
//!
//! JetStream purges a topic's subjects by count or below a sequence, never
//! by size, and a consumer reads forward only, so the bytes a topic holds
//! after a message are not something the stream can answer. Each instance
//! keeps, per topic with a `max_bytes`, a [`SizeIndex`]: the running total
//! of the sizes of the topic's messages it has read (headers only, the
//! `Nats-Msg-Size` header: the envelope JSON's length, the size the SQL
//! logs count), and a [`Mark`] every [`MARK_EVERY`] messages with the total
//! before it. A round reads only what was stored since the last one.
//!
//! The bytes at and after a mark are `total - mark.before`, so the newest
//! mark whose suffix is over the bound brackets the cut between it and the
//! next mark; reading those (at most [`MARK_EVERY`]) messages gives each
//! one's exact suffix, and the cut is the newest message whose suffix is
//! over the bound. Nothing here depends on which older messages are still
//! stored: another instance's purge (the same rule, no leader) or the
//! stream's own limits only ever remove a topic's oldest messages, and a
//! message missing from the bracket's read only makes a suffix look
//! smaller, so a race prunes too little for a round, never too much.
//! Messages stored after the index's last read are not counted until the
//! next round, with the same effect.
//!
//! Marks wholly below the topic's oldest stored message are dropped each
//! round, so an index holds one [`Mark`] (16 bytes) per [`MARK_EVERY`]
//! stored messages of its topic, and an index is dropped when its topic
//! no longer has a `max_bytes`.

use std::collections::VecDeque;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;

use super::{CALL_TIMEOUT, bounded};
use crate::Error;
use crate::cluster::Shared;
use crate::replay::ordered_on;

/// Messages between two marks: the most a round reads to place the cut.
pub const MARK_EVERY: u64 = 1024;

/// Most new messages of one topic an index reads in one round (a topic
/// written faster than this per round is indexed over several rounds; its
/// bound lags, it is never overshot).
pub const MAX_INDEX_PER_ROUND: usize = 1_000_000;

/// The header JetStream sets on a headers-only message: its payload's size.
const SIZE_HEADER: &str = "Nats-Msg-Size";

/// A message the index starts a stretch at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    /// Its stream sequence.
    seq: u64,
    /// The index's total before it.
    before: u64,
}

/// What one instance knows of one topic's sizes (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct SizeIndex {
    /// The newest stream sequence read (0: none yet).
    through: u64,
    /// Bytes of every message read, from the first.
    total: u64,
    /// Messages read since the newest mark.
    since_mark: u64,
    marks: VecDeque<Mark>,
}

/// One message as a size read sees it.
#[derive(Debug, Clone, Copy)]
struct Sized {
    seq: u64,
    size: u64,
}

impl SizeIndex {
    fn add(&mut self, message: Sized) {
        if self.marks.is_empty() || self.since_mark >= MARK_EVERY {
            self.marks.push_back(Mark {
                seq: message.seq,
                before: self.total,
            });
            self.since_mark = 0;
        }
        self.total = self.total.saturating_add(message.size);
        self.since_mark += 1;
        self.through = message.seq;
    }

    /// Drops the marks whose whole stretch is below `oldest`, the topic's
    /// oldest stored message (`None`: the topic holds nothing).
    fn forget_below(&mut self, oldest: Option<u64>) {
        match oldest {
            Some(oldest) => {
                while self.marks.len() > 1 && self.marks[1].seq <= oldest {
                    self.marks.pop_front();
                }
            }
            None => {
                self.marks.clear();
                self.since_mark = 0;
            }
        }
    }

    /// The stretch the cut falls in, if the indexed bytes exceed `max`:
    /// its first message, and where it ends (the next mark, or past the
    /// newest message read) with the bytes from there on.
    fn bracket(&self, max: u64) -> Option<(u64, u64, u64)> {
        let over = self.marks.partition_point(|m| self.total - m.before > max);
        let start = self.marks.get(over.checked_sub(1)?)?;
        let (end, after) = match self.marks.get(over) {
            Some(next) => (next.seq, self.total - next.before),
            None => (self.through.saturating_add(1), 0),
        };
        Some((start.seq, end, after))
    }
}

/// The cut within a bracket: the newest of `read` (its stored messages in
/// order) whose bytes with everything after it exceed `max`, given
/// `after`, the bytes after the bracket.
fn cut_in(read: &[Sized], after: u64, max: u64) -> Option<u64> {
    let mut suffix = after;
    for message in read.iter().rev() {
        suffix = suffix.saturating_add(message.size);
        if suffix > max {
            return Some(message.seq);
        }
    }
    None
}

/// The stream sequence through which `topic` (stored on `subject`) must be
/// purged for its stored messages to hold at most `max` bytes, by the
/// instance's index of it (updated first); `None` when they already fit.
pub(crate) async fn cut(
    shared: &Shared,
    topic: &str,
    subject: &str,
    max: u64,
) -> Result<Option<u64>, Error> {
    // One round per topic at a time on this instance; the topic's lock is
    // held across the reads so the index and its reads stay consistent,
    // while other topics' rounds go on.
    let index = shared.topics.size_index(topic);
    let mut index = index.lock().await;
    let mut oldest = None;
    read(shared, subject, DeliverPolicy::All, 1, |m| {
        oldest = Some(m.seq)
    })
    .await?;
    if oldest.is_some_and(|o| o <= index.through && index.marks.front().is_none_or(|m| o < m.seq)) {
        // A message older than the index knows: the stream was made again.
        *index = SizeIndex::default();
    }
    index.forget_below(oldest);
    let from = if index.through == 0 {
        DeliverPolicy::All
    } else {
        DeliverPolicy::ByStartSequence {
            start_sequence: index.through + 1,
        }
    };
    read(shared, subject, from, MAX_INDEX_PER_ROUND, |m| index.add(m)).await?;
    let Some((start, end, after)) = index.bracket(max) else {
        return Ok(None);
    };
    let mut stretch = Vec::new();
    read(
        shared,
        subject,
        DeliverPolicy::ByStartSequence {
            start_sequence: start,
        },
        MARK_EVERY as usize,
        |m| {
            if m.seq < end {
                stretch.push(m);
            }
        },
    )
    .await?;
    let through = cut_in(&stretch, after, max);
    if let Some(through) = through {
        index.forget_below(Some(through.saturating_add(1)));
    }
    Ok(through)
}

/// Hands `each` up to `limit` of `subject`'s messages from `from`, in
/// order, headers only, with their sizes: until the newest stored when the
/// read began.
async fn read(
    shared: &Shared,
    subject: &str,
    from: DeliverPolicy,
    limit: usize,
    mut each: impl FnMut(Sized),
) -> Result<(), Error> {
    let (mut messages, _guard, pending) = bounded(
        shared,
        "read a topic's sizes",
        ordered_on(
            &shared.stream,
            pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: from,
                headers_only: true,
                ..Default::default()
            },
        ),
    )
    .await?;
    if pending == 0 {
        return Ok(());
    }
    for _ in 0..limit {
        let message = match tokio::time::timeout(CALL_TIMEOUT, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(e))) => return Err(Error::Replay(e.to_string())),
            // Counted but purged meanwhile: what was read stands.
            Ok(None) | Err(_) => break,
        };
        let info = message.info().map_err(|e| Error::Replay(e.to_string()))?;
        let size = message
            .headers
            .as_ref()
            .and_then(|h| h.get(SIZE_HEADER))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .ok_or_else(|| {
                Error::Replay(format!(
                    "message {} of {subject} has no {SIZE_HEADER} header",
                    info.stream_sequence
                ))
            })?;
        let seq = info.stream_sequence;
        let last = info.pending == 0;
        each(Sized { seq, size });
        if last {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages at stream sequences `seqs` (other topics' in between),
    /// each of `size` bytes.
    fn indexed(seqs: impl IntoIterator<Item = u64>, size: u64) -> SizeIndex {
        let mut index = SizeIndex::default();
        for seq in seqs {
            index.add(Sized { seq, size });
        }
        index
    }

    #[test]
    fn a_mark_every_stretch_and_the_total_of_all() {
        let index = indexed((1..=3000).map(|i| 2 * i), 10);
        assert_eq!(index.total, 30_000);
        assert_eq!(index.through, 6000);
        let marks: Vec<_> = index.marks.iter().map(|m| (m.seq, m.before)).collect();
        assert_eq!(marks, vec![(2, 0), (2050, 10_240), (4098, 20_480)]);
    }

    #[test]
    fn the_bracket_holds_the_cut() {
        let index = indexed(1..=3000, 10);
        // Everything fits.
        assert_eq!(index.bracket(30_000), None);
        // 29,990 bytes may stay: the first message goes, in the first stretch.
        assert_eq!(index.bracket(29_990), Some((1, 1025, 30_000 - 10_240)));
        // 5,000 may stay: the cut is in the last stretch (from 2049 on).
        assert_eq!(index.bracket(5_000), Some((2049, 3001, 0)));
        let stretch: Vec<Sized> = (2049..=3000).map(|seq| Sized { seq, size: 10 }).collect();
        // 500 newest messages stay: the newest removed is 2500.
        assert_eq!(cut_in(&stretch, 0, 5_000), Some(2500));
    }

    #[test]
    fn a_message_missing_from_the_read_only_cuts_less() {
        let index = indexed(1..=2048, 10);
        let (start, end, after) = index.bracket(20_470).unwrap();
        assert_eq!((start, end, after), (1, 1025, 10_240));
        let all: Vec<Sized> = (start..end).map(|seq| Sized { seq, size: 10 }).collect();
        assert_eq!(cut_in(&all, after, 20_470), Some(1));
        // Another instance purged the first ten meanwhile: nothing more to do.
        assert_eq!(cut_in(&all[10..], after, 20_470), None);
    }

    #[test]
    fn marks_below_the_oldest_stored_are_dropped() {
        let mut index = indexed(1..=5000, 1);
        assert_eq!(index.marks.len(), 5);
        index.forget_below(Some(2049));
        assert_eq!(index.marks.front().map(|m| m.seq), Some(2049));
        index.forget_below(Some(2050));
        assert_eq!(index.marks.front().map(|m| m.seq), Some(2049));
        index.forget_below(None);
        assert!(index.marks.is_empty());
        // The next message read starts a mark again.
        index.add(Sized { seq: 5001, size: 1 });
        assert_eq!(
            index.marks.front(),
            Some(&Mark {
                seq: 5001,
                before: 5000
            })
        );
    }
}
