//! Where the log skips sequence numbers ahead of a consumer: retention
//! (the log's, or a topic's own) removed events it never read, and its
//! members are told once (a [`Delivery::Gap`]).

use super::Dispatcher;
use crate::consumer::member::Delivery;

impl Dispatcher {
    /// The next sequence a gapless log holds after `seq` (one stride on: the
    /// numbers in between never reach a JetStream log).
    pub(super) fn next_after(&self, seq: u64) -> u64 {
        let stride = self.mark.as_ref().map_or(1, |m| m.stride.max(1));
        (seq / stride + 1).saturating_mul(stride)
    }

    /// The first stored event after the cursor is not the next one: if the
    /// log's oldest event is above the cursor, retention removed events the
    /// consumer never read; else a topic's own retention may have.
    pub(super) async fn check_gap(&mut self, next: u64) {
        if let Ok(first) = self.log.first_seq().await
            && first == next
        {
            tracing::warn!(consumer = %self.record.name, after = self.cursor, first, "consumer fell behind the log's retention");
            self.gap(self.cursor);
            return;
        }
        self.check_topics(self.cursor).await;
    }

    /// The log skipped sequence numbers after `after`: if a topic the
    /// members' filter can match was pruned past it, they missed its events.
    /// Asked after the read, so a prune that raced the read is seen (every
    /// log raises a topic's watermark before it removes the events,
    /// `EventLog::prune_topic`).
    pub(super) async fn check_topics(&mut self, after: u64) {
        // The members were told already: every pruned event up to there is
        // one gap, not one per event skipped.
        if after < self.told_through {
            return;
        }
        match self.log.topic_retentions().await {
            Ok(retentions) => {
                let through = retentions
                    .iter()
                    .filter(|r| {
                        crate::log::pruned_for(std::slice::from_ref(r), Some(&self.filter), after)
                    })
                    .map(|r| r.pruned_through)
                    .max();
                if let Some(through) = through {
                    tracing::warn!(consumer = %self.record.name, after, through, "consumer fell behind a topic's retention");
                    self.told_through = through;
                    self.gap(after);
                }
            }
            Err(error) => {
                // Cannot tell: say so rather than risk a silent gap.
                tracing::warn!(consumer = %self.record.name, after, %error, "topic retentions unreadable at a gap in the log");
                self.gap(after);
            }
        }
    }

    fn gap(&self, after: u64) {
        for m in &self.members {
            m.queue.push(Delivery::Gap { after });
        }
    }
}
