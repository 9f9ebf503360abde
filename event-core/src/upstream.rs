//! Acknowledged publishing through an [`Upstream`](crate::Upstream): a publisher that
//! answers someone (the publish API's `202`) waits until the upstream's log
//! stored its events, learns the sequence number each got there, and learns
//! when the upstream recognised one as a repeat of an event it already had.
//!
//! [`EventBus::publish`] stays synchronous and never waits: only
//! [`EventBus::publish_acked`] does, and it waits on what
//! [`Upstream::forward_acked`](crate::Upstream::forward_acked) hands back, while the upstream keeps sending
//! many publishers' events together (it is not one round trip per event).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::Error;
use crate::bus::EventBus;
use crate::event::{Event, EventMeta};
use crate::payload::ServerEvent;

/// How a retrying publisher names an event to the upstream, when the
/// event's own id is not what a retry would repeat (an `Idempotency-Key`
/// request gets new event ids each time it is sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupKey {
    /// What the upstream deduplicates on instead of the event id (for
    /// JetStream, `Nats-Msg-Id`). The same on every retry of the event.
    pub id: String,
    /// A digest of the request the event came from, stored with it and
    /// reported back for the original of a repeat ([`Stored::fingerprint`]),
    /// so a publisher can tell a retry from a key reused for something else.
    pub fingerprint: String,
}

/// What the upstream stored for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The bus sequence number the event has (or, for a repeat, the
    /// original has) on every process of the upstream; `0` when the
    /// upstream does not report one.
    pub seq: u64,
    /// The id of the stored event: the one published now, or for a repeat
    /// the original's.
    pub event_id: Uuid,
    /// The upstream already had this event (same id or [`DedupKey::id`]
    /// within its deduplication window) and stored nothing now.
    pub duplicate: bool,
    /// For a repeat: the [`DedupKey::fingerprint`] the original was stored
    /// with, if any.
    pub fingerprint: Option<String>,
    /// The upstream could not store the event (unreachable) and it was
    /// published on this bus only, under `seq`: no other process sees it,
    /// and no other process recognises a retry of it.
    pub local_only: bool,
}

/// An upstream's acknowledgement of one event, to be awaited.
pub type PendingAck = Pin<Box<dyn Future<Output = Result<Stored, Error>> + Send>>;

/// One event for [`EventBus::publish_acked`].
#[derive(Debug, Clone)]
pub struct AckedEvent {
    /// The event.
    pub payload: ServerEvent,
    /// Its id, when the producer chose it (a UUIDv7: it is also what the
    /// upstream deduplicates on); `None`: a new UUIDv7.
    pub id: Option<Uuid>,
    /// What the upstream deduplicates on instead of the id.
    pub dedup: Option<DedupKey>,
}

impl AckedEvent {
    /// An event with a new id and no dedup key.
    pub fn new(payload: impl Into<ServerEvent>) -> Self {
        AckedEvent {
            payload: payload.into(),
            id: None,
            dedup: None,
        }
    }
}

impl EventBus {
    /// Publishes the events in order, all with a copy of `meta`, and
    /// resolves with what the [`Upstream`](crate::Upstream) stored for each (in order), once
    /// it acknowledged all of them; for publishers that acknowledge to
    /// someone in cluster mode (the publish API's `202`).
    ///
    /// All or nothing up front: an event over
    /// [`max_event_bytes`](Self::max_event_bytes) refuses the call
    /// ([`Error::EventTooLarge`]) before anything is published.
    ///
    /// An event the upstream cannot take now (refused by
    /// [`Upstream::forward_acked`](crate::Upstream::forward_acked)) is published on this bus only, as
    /// [`EventBus::publish`] does, and reported [`Stored::local_only`]; so
    /// is one the upstream gave up on and delivered locally.
    /// [`Error::Unstored`] when the upstream reports it could not store an
    /// event otherwise, and [`Error::AckTimeout`] when the acknowledgements
    /// did not all come within `timeout` (the events may still be stored,
    /// or delivered locally, later). A retry of the same events with the
    /// same ids or [`DedupKey`]s is recognised by the upstream within its
    /// window, so retrying after either is safe.
    ///
    /// Without an upstream the events are published on this bus at once
    /// and reported with their sequence numbers (never as duplicates).
    pub async fn publish_acked(
        &self,
        events: Vec<AckedEvent>,
        meta: &EventMeta,
        timeout: Duration,
    ) -> Result<Vec<Stored>, Error> {
        let checked = events
            .into_iter()
            .map(|e| {
                let (payload, json) = self.checked(e.payload).map_err(|(_, error)| error)?;
                Ok((payload, json, e.id, e.dedup))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let Some(upstream) = self.upstream() else {
            return Ok(checked
                .into_iter()
                .map(|(payload, json, id, _)| {
                    let event = self.sequence_local(payload, json, self.with_trace(meta), id);
                    Stored {
                        seq: event.seq(),
                        event_id: event.id(),
                        duplicate: false,
                        fingerprint: None,
                        local_only: false,
                    }
                })
                .collect());
        };
        let mut acks: Vec<PendingAck> = Vec::with_capacity(checked.len());
        for (payload, json, id, dedup) in checked {
            let event = Arc::new(
                Event::new(
                    0,
                    id.unwrap_or_else(Uuid::now_v7),
                    OffsetDateTime::now_utc(),
                    self.with_trace(meta),
                    payload,
                )
                .with_json(json),
            );
            match upstream.forward_acked(event, dedup) {
                Ok(ack) => acks.push(ack),
                // As `publish` does: delivered here at least.
                Err(refused) => {
                    let local = self.publish_local(&refused);
                    acks.push(Box::pin(std::future::ready(Ok(Stored {
                        seq: local.seq(),
                        event_id: local.id(),
                        duplicate: false,
                        fingerprint: None,
                        local_only: true,
                    }))));
                }
            }
        }
        // The acknowledgements come in publishing order, batch by batch:
        // waiting on each in turn waits as long as for the last.
        let all = async {
            let mut stored = Vec::with_capacity(acks.len());
            for ack in acks {
                stored.push(ack.await?);
            }
            Ok(stored)
        };
        tokio::time::timeout(timeout, all)
            .await
            .unwrap_or(Err(Error::AckTimeout(timeout)))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bus::{BusConfig, SeqStart, Upstream};
    use crate::payload::QueueStatus;

    fn bus() -> EventBus {
        EventBus::new(BusConfig {
            seq_start: SeqStart::At(1),
            ..BusConfig::default()
        })
    }

    /// An upstream with only `forward`: the default `forward_acked`.
    struct Plain(Mutex<Vec<Arc<Event>>>);

    impl Upstream for Plain {
        fn forward(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
            self.0.lock().unwrap().push(event);
            Ok(())
        }
    }

    /// An upstream that never acknowledges.
    struct Silent;

    impl Upstream for Silent {
        fn forward(&self, event: Arc<Event>) -> Result<(), Arc<Event>> {
            Err(event)
        }

        fn forward_acked(
            &self,
            _event: Arc<Event>,
            _dedup: Option<DedupKey>,
        ) -> Result<PendingAck, Arc<Event>> {
            Ok(Box::pin(std::future::pending()))
        }
    }

    #[tokio::test]
    async fn without_an_upstream_the_bus_sequences_and_keeps_a_producer_id() {
        let bus = bus();
        let mut sub = bus.subscribe();
        let id = Uuid::now_v7();
        let events = vec![
            AckedEvent {
                id: Some(id),
                ..AckedEvent::new(QueueStatus::new(1, 0))
            },
            AckedEvent::new(QueueStatus::new(2, 0)),
        ];
        let stored = bus
            .publish_acked(events, &EventMeta::default(), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(stored.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(stored[0].event_id, id);
        assert!(stored.iter().all(|s| !s.duplicate));
        match sub.try_recv() {
            Some(crate::Received::Event(e)) => assert_eq!((e.seq(), e.id()), (1, id)),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_default_forward_acked_forwards_and_reports_no_sequence() {
        let bus = bus();
        let up = Arc::new(Plain(Mutex::new(Vec::new())));
        bus.set_upstream(Some(up.clone()));
        let stored = bus
            .publish_acked(
                vec![AckedEvent::new(QueueStatus::new(1, 0))],
                &EventMeta::default(),
                Duration::from_secs(1),
            )
            .await
            .unwrap();
        assert_eq!(stored[0].seq, 0);
        assert_eq!(up.0.lock().unwrap()[0].id(), stored[0].event_id);
    }

    #[tokio::test]
    async fn an_unacknowledged_publish_times_out_and_a_too_large_one_is_refused_whole() {
        let bus = bus();
        bus.set_upstream(Some(Arc::new(Silent)));
        let timeout = Duration::from_millis(20);
        let answer = bus
            .publish_acked(
                vec![AckedEvent::new(QueueStatus::new(1, 0))],
                &EventMeta::default(),
                timeout,
            )
            .await;
        assert_eq!(answer, Err(Error::AckTimeout(timeout)));

        bus.set_max_event_bytes(crate::bus::MIN_MAX_EVENT_BYTES)
            .unwrap();
        let huge = crate::payload::JobProgress {
            job_id: Uuid::now_v7(),
            note_id: None,
            progress: 1,
            message: Some("x".repeat(4096)),
        };
        let answer = bus
            .publish_acked(
                vec![
                    AckedEvent::new(QueueStatus::new(1, 0)),
                    AckedEvent::new(huge),
                ],
                &EventMeta::default(),
                timeout,
            )
            .await;
        assert!(
            matches!(answer, Err(Error::EventTooLarge { .. })),
            "{answer:?}"
        );
    }
}
