//! How events travel through JetStream, and how stream sequence numbers
//! become bus sequence numbers.
//!
//! A message is the event's envelope JSON (docs/protocol.md §3, the same bytes the
//! SSE `envelope` format sends) on subject `<prefix>.<dot name>`, with
//! headers `Nats-Msg-Id: <event id>` (the stream deduplicates retried
//! publishes on it) and `Matric-Origin: <instance id>`.

use async_nats::HeaderMap;
use event_core::{DedupKey, Envelope, Event};
use uuid::Uuid;

/// Bus sequence numbers per stream sequence number.
///
/// The bus sequence of the event at stream sequence `s` is
/// `s * SEQ_STRIDE`, on every instance. The numbers in between belong to
/// events an instance had to deliver locally only while NATS was
/// unreachable: they fit between the cluster's events without breaking the
/// bus's total order, and a cursor naming one still maps to the right place
/// in the stream (`bus_seq / SEQ_STRIDE`). An SSE `id:` of `42000000` is
/// stream sequence 42; `42000003` is the third local-only event after it.
pub const SEQ_STRIDE: u64 = 1_000_000;

/// The bus sequence number of stream sequence `stream_seq`.
pub fn bus_seq(stream_seq: u64) -> u64 {
    stream_seq.saturating_mul(SEQ_STRIDE)
}

/// The stream sequence number at or before bus sequence `bus_seq`.
pub fn stream_seq(bus_seq: u64) -> u64 {
    bus_seq / SEQ_STRIDE
}

/// The header naming the instance that published an event.
pub const ORIGIN_HEADER: &str = "Matric-Origin";

/// The header carrying the event id of a message whose `Nats-Msg-Id` is a
/// [`DedupKey`]'s (an `Idempotency-Key` request's) instead.
pub const EVENT_ID_HEADER: &str = "Matric-Event-Id";

/// The header carrying a [`DedupKey::fingerprint`]: a digest of the request
/// the event came from, read back when a retry is answered from the
/// original.
pub const REQUEST_HEADER: &str = "Matric-Request";

/// The headers of a published event: `Nats-Msg-Id` is the event id, or
/// `dedup`'s id (then the event id goes in [`EVENT_ID_HEADER`] and the
/// fingerprint in [`REQUEST_HEADER`]).
pub(crate) fn headers(event: &Event, instance_id: &str, dedup: Option<&DedupKey>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let event_id = event.id().to_string();
    match dedup {
        Some(key) => {
            headers.insert(async_nats::header::NATS_MESSAGE_ID, key.id.as_str());
            headers.insert(EVENT_ID_HEADER, event_id.as_str());
            headers.insert(REQUEST_HEADER, key.fingerprint.as_str());
        }
        None => headers.insert(async_nats::header::NATS_MESSAGE_ID, event_id.as_str()),
    }
    headers.insert(ORIGIN_HEADER, instance_id);
    headers
}

/// The request fingerprint a message was stored with, if any.
pub(crate) fn fingerprint(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(REQUEST_HEADER))
        .map(|v| v.as_str().to_owned())
}

/// A decoded stream message.
pub(crate) struct Decoded {
    pub event: Event,
    pub origin: Option<String>,
}

/// Rebuilds the event at `stream_seq` from a message's payload and headers.
pub(crate) fn decode(
    stream_seq: u64,
    payload: &[u8],
    headers: Option<&HeaderMap>,
) -> Result<Decoded, serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(payload)?;
    let origin = headers
        .and_then(|h| h.get(ORIGIN_HEADER))
        .map(|v| v.as_str().to_owned());
    let meta = envelope.meta();
    Ok(Decoded {
        event: Event::new(
            bus_seq(stream_seq),
            envelope.event_id,
            envelope.occurred_at,
            meta,
            envelope.payload,
        ),
        origin,
    })
}

/// The event id a message carries in its headers ([`EVENT_ID_HEADER`], else
/// `Nats-Msg-Id`), without decoding the payload.
pub(crate) fn message_id(headers: Option<&HeaderMap>) -> Option<Uuid> {
    let h = headers?;
    h.get(EVENT_ID_HEADER)
        .or_else(|| h.get(async_nats::header::NATS_MESSAGE_ID))
        .and_then(|v| Uuid::try_parse(v.as_str()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_core::{EventMeta, JobProgress, ServerEvent};
    use time::OffsetDateTime;

    #[test]
    fn sequence_mapping_round_trips() {
        assert_eq!(bus_seq(42), 42_000_000);
        assert_eq!(stream_seq(42_000_000), 42);
        assert_eq!(stream_seq(42_000_003), 42);
        assert_eq!(stream_seq(0), 0);
        assert_eq!(bus_seq(u64::MAX), u64::MAX);
    }

    #[test]
    fn envelope_round_trip_keeps_identity() {
        let job = Uuid::now_v7();
        let original = Event::new(
            0,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default()
                .tenant("t1")
                .correlation(Uuid::now_v7()),
            ServerEvent::JobProgress(JobProgress {
                job_id: job,
                note_id: None,
                progress: 40,
                message: Some("Embedding chunk 2/5".into()),
            }),
        );
        let headers = headers(&original, "a", None);
        let decoded = decode(7, original.envelope_json(), Some(&headers)).unwrap();
        assert_eq!(decoded.origin.as_deref(), Some("a"));
        assert_eq!(decoded.event.seq(), 7 * SEQ_STRIDE);
        assert_eq!(decoded.event.id(), original.id());
        assert_eq!(decoded.event.meta(), original.meta());
        assert_eq!(decoded.event.json(), original.json());
        assert_eq!(decoded.event.envelope_json(), original.envelope_json());
        assert_eq!(message_id(Some(&headers)), Some(original.id()));
        assert!(decode(1, b"{}", None).is_err());
        assert_eq!(fingerprint(Some(&headers)), None);
    }

    #[test]
    fn a_dedup_key_replaces_the_message_id_and_the_event_id_moves_to_a_header() {
        let event = Event::new(
            0,
            Uuid::now_v7(),
            OffsetDateTime::now_utc(),
            EventMeta::default(),
            ServerEvent::QueueStatus(event_core::QueueStatus::new(1, 0)),
        );
        let key = DedupKey {
            id: "idem-abc".to_owned(),
            fingerprint: "f1".to_owned(),
        };
        let headers = headers(&event, "a", Some(&key));
        assert_eq!(
            headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .map(|v| v.as_str()),
            Some("idem-abc")
        );
        assert_eq!(message_id(Some(&headers)), Some(event.id()));
        assert_eq!(fingerprint(Some(&headers)).as_deref(), Some("f1"));
    }
}
