//! The stored objects: webhooks, deliveries and attempts, and their JSON
//! forms (docs/protocol.md §4).

use std::fmt;

use event_core::EventKind;
use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::WebhookError;

fn rfc3339<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&event_core::event::format_rfc3339_millis(*t))
}

fn rfc3339_opt<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

/// A registered webhook endpoint.
///
/// The secret is part of the struct (the worker signs with it) but is never
/// serialized and never printed by `Debug`; the API shows it once, at
/// creation, through [`WebhookJson::with_secret`].
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The webhook's id.
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The subscribed kinds (PascalCase names on the wire); empty = all.
    pub events: Vec<EventKind>,
    /// The signing secret.
    pub secret: String,
    /// Whether deliveries are made.
    pub active: bool,
    /// How many retries after the first attempt.
    pub max_retries: u32,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
    /// Last delivery attempt.
    pub last_triggered_at: Option<OffsetDateTime>,
    /// Consecutive dead deliveries (reset by a success).
    pub failure_count: u32,
    /// Why the webhook was disabled automatically, if it was.
    pub disabled_reason: Option<String>,
}

impl Serialize for WebhookJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let w = self.webhook;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &w.id)?;
        m.serialize_entry("url", &w.url)?;
        m.serialize_entry("events", &KindNames(&w.events))?;
        m.serialize_entry("active", &w.active)?;
        m.serialize_entry("is_active", &w.active)?;
        m.serialize_entry("max_retries", &w.max_retries)?;
        m.serialize_entry("created_at", &Rfc(Some(w.created_at)))?;
        m.serialize_entry("updated_at", &Rfc(Some(w.updated_at)))?;
        m.serialize_entry("last_triggered_at", &Rfc(w.last_triggered_at))?;
        m.serialize_entry("failure_count", &w.failure_count)?;
        if let Some(reason) = &w.disabled_reason {
            m.serialize_entry("disabled_reason", reason)?;
        }
        if let Some(secret) = self.secret {
            m.serialize_entry("secret", secret)?;
        }
        m.end()
    }
}

/// The JSON form of a webhook: the docs/protocol.md §4 object (with `is_active`
/// mirroring `active`), and the secret only when explicitly included.
pub struct WebhookJson<'a> {
    webhook: &'a Webhook,
    secret: Option<&'a str>,
}

impl<'a> WebhookJson<'a> {
    /// The listed form: never the secret.
    pub fn public(webhook: &'a Webhook) -> Self {
        WebhookJson {
            webhook,
            secret: None,
        }
    }

    /// The creation response: the secret, shown once.
    pub fn with_secret(webhook: &'a Webhook) -> Self {
        WebhookJson {
            webhook,
            secret: Some(&webhook.secret),
        }
    }
}

struct KindNames<'a>(&'a [EventKind]);

impl Serialize for KindNames<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|k| k.type_name()))
    }
}

struct Rfc(Option<OffsetDateTime>);

impl Serialize for Rfc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        rfc3339_opt(&self.0, s)
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("host", &crate::ssrf::host_of(&self.url))
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("active", &self.active)
            .field("max_retries", &self.max_retries)
            .field("failure_count", &self.failure_count)
            .field("disabled_reason", &self.disabled_reason)
            .finish()
    }
}

impl Webhook {
    /// Whether this webhook wants events of `kind` (empty list = all).
    pub fn subscribes_to(&self, kind: EventKind) -> bool {
        self.events.is_empty() || self.events.contains(&kind)
    }
}

/// Kinds as stored: PascalCase names.
pub(crate) fn kinds_to_names(kinds: &[EventKind]) -> Vec<String> {
    kinds.iter().map(|k| k.type_name().to_owned()).collect()
}

/// Kinds from stored names.
pub(crate) fn kinds_from_names(names: &[String]) -> Result<Vec<EventKind>, WebhookError> {
    names
        .iter()
        .map(|n| {
            EventKind::from_name(n)
                .ok_or_else(|| WebhookError::Corrupt(format!("unknown event name {n:?}")))
        })
        .collect()
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not attempted yet.
    Pending,
    /// The last attempt failed; a retry is scheduled when `next_attempt_at`
    /// is set.
    Failed,
    /// Delivered (2xx).
    Succeeded,
    /// Given up on (retries exhausted, or 410 Gone).
    Dead,
}

impl DeliveryStatus {
    /// The stored and wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// Parses the stored or wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "failed" => Some(DeliveryStatus::Failed),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// One delivery of one event to one webhook: the durable queue entry and the
/// delivery log in one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    /// The delivery id (`X-Matric-Delivery`).
    pub id: Uuid,
    /// The webhook.
    pub webhook_id: Uuid,
    /// The event id (`webhook-id`, constant across retries).
    pub event_id: Uuid,
    /// PascalCase event type.
    pub event_type: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (`None` = not scheduled).
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_attempt_at: Option<OffsetDateTime>,
    /// HTTP status of the last attempt.
    pub last_status_code: Option<u16>,
    /// A short description of the last failure.
    pub last_error: Option<String>,
    /// When the delivery was queued.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it succeeded.
    #[serde(serialize_with = "rfc3339_opt")]
    pub delivered_at: Option<OffsetDateTime>,
    /// `status == succeeded`.
    pub success: bool,
}

/// A delivery to queue.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// The delivery id.
    pub id: Uuid,
    /// The webhook.
    pub webhook_id: Uuid,
    /// The event id.
    pub event_id: Uuid,
    /// PascalCase event type.
    pub event_type: &'static str,
    /// The exact request body.
    pub body: bytes::Bytes,
    /// Queue time.
    pub created_at: OffsetDateTime,
    /// When it is due (`None`: never picked up by the worker).
    pub next_attempt_at: Option<OffsetDateTime>,
    /// The event's W3C trace context, stored as [`encode_trace`] writes it.
    pub trace: Option<String>,
}

/// Deliveries queued already claimed by the caller: the first `count` of a
/// batch given to [`WebhookStore::enqueue_claiming`](crate::WebhookStore::enqueue_claiming).
#[derive(Debug, Clone, Copy)]
pub struct BatchClaim {
    /// How many rows, from the start of the batch, are claimed.
    pub count: usize,
    /// The claim token.
    pub token: Uuid,
    /// The end of the lease.
    pub lease_until: OffsetDateTime,
}

/// A delivery the worker has claimed.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    /// The delivery id.
    pub id: Uuid,
    /// The webhook.
    pub webhook_id: Uuid,
    /// The event id.
    pub event_id: Uuid,
    /// PascalCase event type.
    pub event_type: String,
    /// The exact request body.
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
    /// When the delivery was queued.
    pub created_at: OffsetDateTime,
    /// The claim this worker holds (needed to record the result).
    pub claim_token: Uuid,
    /// The event's W3C trace context, as stored ([`decode_trace`]).
    pub trace: Option<String>,
}

/// A trace context as a delivery stores it: `traceparent`, then
/// `tracestate` after a newline when there is one.
pub fn encode_trace(context: &event_core::TraceContext) -> String {
    match context.tracestate() {
        Some(state) => format!("{}\n{state}", context.traceparent()),
        None => context.traceparent().to_owned(),
    }
}

/// The trace context a delivery stored, if it is still valid.
pub fn decode_trace(stored: &str) -> Option<event_core::TraceContext> {
    let (parent, state) = match stored.split_once('\n') {
        Some((parent, state)) => (parent, Some(state)),
        None => (stored, None),
    };
    event_core::TraceContext::parse(parent, state)
}

/// What to claim.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Deliveries due at or before this time.
    pub now: OffsetDateTime,
    /// Most rows.
    pub limit: u32,
    /// Most rows of one webhook.
    pub per_webhook: u32,
    /// Webhooks to skip (already at their concurrency limit here).
    pub exclude: Vec<Uuid>,
    /// The lease: the claim expires (and another worker may take the row)
    /// at this time.
    pub lease_until: OffsetDateTime,
    /// Identifies this claim.
    pub token: Uuid,
}

/// What an attempt decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// 2xx.
    Succeeded,
    /// Failed; try again at the given time.
    Retry(OffsetDateTime),
    /// Failed; retries exhausted.
    Dead,
    /// 410 Gone: the delivery is dead and the webhook is disabled.
    Gone,
    /// Failed, and not to be retried automatically (test deliveries).
    FailedOnce,
}

/// One attempt's result, recorded atomically with the delivery's new state.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: Uuid,
    /// Its webhook.
    pub webhook_id: Uuid,
    /// The claim under which the attempt was made.
    pub claim_token: Uuid,
    /// 1-based attempt number.
    pub attempt: u32,
    /// When the attempt started.
    pub started_at: OffsetDateTime,
    /// How long it took.
    pub duration_ms: u64,
    /// The HTTP status, if a response arrived.
    pub status_code: Option<u16>,
    /// A short failure description.
    pub error: Option<String>,
    /// The decision.
    pub outcome: AttemptOutcome,
    /// Disable the webhook when its consecutive dead count reaches this.
    pub disable_after_dead: u32,
}

/// What recording an attempt changed beyond the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptEffect {
    /// The claim had expired and another worker owns the row: nothing was
    /// recorded.
    pub lost_claim: bool,
    /// The webhook was disabled by this attempt.
    pub webhook_disabled: bool,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attempt {
    /// 1-based attempt number.
    pub attempt: u32,
    /// When it started.
    #[serde(serialize_with = "rfc3339")]
    pub started_at: OffsetDateTime,
    /// How long it took.
    pub duration_ms: u64,
    /// HTTP status, if any.
    pub status_code: Option<u16>,
    /// Failure description, if any.
    pub error: Option<String>,
}
