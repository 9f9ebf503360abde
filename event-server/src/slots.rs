//! Connections as a resource: `POST /api/v1/connections` creates a
//! connection slot — a stream's transport and options, fixed in advance —
//! and answers with a single-use stream URL; the slot's status then follows
//! the real connection until it ends.
//!
//! # The model
//!
//! A slot is created by an authenticated client (any token) and belongs to
//! its principal. Its stream URL, `/api/v1/connections/{id}/stream?ticket=…`,
//! carries a random ticket, kept here only as a digest in a
//! [`OneTimeTokens`] store, valid once within `CONNECTION_TICKET_TTL_SECS`.
//! Whoever holds the URL may open the stream once, with the slot's options
//! and the owner's rights: the URL can be handed to a browser or a process
//! that must never see the token itself.
//!
//! Opening it redeems the ticket and hands the request to the transport's
//! own route with the slot's options as its query and a second, internal
//! one-time token (never shown to a client) as its credentials; that token
//! admits the owner's principal marked with the slot's id
//! ([`Principal::slot`]), so the connection registry records the slot and
//! tells this store, through a [`ConnectionObserver`], when the connection
//! opens and ends. A ticket only ever opens its slot's stream: it is not a
//! credential anywhere else.
//!
//! A slot goes `connecting` → `connected` → `disconnected`, or to `error`
//! when its ticket expired unused or the transport refused the stream. An
//! ended slot stays readable for `CONNECTION_SLOT_RETAIN_SECS`, then is
//! forgotten. Slots are bounded in all (`CONNECTION_SLOTS_MAX`) and per
//! principal (`CONNECTION_SLOTS_PER_PRINCIPAL`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use event_core::{
    ConnectionInfo, ConnectionObserver, ConnectionRegistry, OneTimeTokens, Principal,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::ServerError;

mod options;
pub mod stream;

pub use options::{SlotOptions, StreamKind};

/// How long the internal token a redeemed ticket is exchanged for stays
/// valid: it is used at once, in-process.
const GRANT_TTL: Duration = Duration::from_secs(10);

/// A ticket redeemed whose transport never registered a connection (a
/// WebSocket upgrade the client abandoned) counts as ended after this.
const ADMITTED_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds of the slot store (the `CONNECTION_*` settings).
#[derive(Debug, Clone, Copy)]
pub struct SlotLimits {
    /// Most slots in all.
    pub max: usize,
    /// Most slots per principal.
    pub per_principal: usize,
    /// How long a ticket is valid.
    pub ticket_ttl: Duration,
    /// How long an ended slot stays readable.
    pub retain: Duration,
    /// The bus's event limit (`EVENT_MAX_BYTES`): a `buffer_max_bytes`
    /// holds two such events at least.
    pub max_event_bytes: usize,
}

#[derive(Debug, Clone)]
enum State {
    /// The ticket waits to be used.
    Waiting { expires: Instant },
    /// The ticket was used; the transport has not registered the stream
    /// yet (a WebSocket between its `101` and its first read).
    Admitted { since: Instant },
    /// The stream is open as this registry connection.
    Connected { connection: u64 },
    /// The stream ended (`info`: its final counters) or never opened
    /// (`error`).
    Ended {
        at: Instant,
        info: Option<Box<ConnectionInfo>>,
        error: Option<(String, String)>,
    },
}

struct Slot {
    owner: Principal,
    options: SlotOptions,
    created_at: OffsetDateTime,
    ticket_expires_at: OffsetDateTime,
    state: State,
}

struct Inner {
    slots: Mutex<HashMap<String, Slot>>,
    tickets: OneTimeTokens,
    grants: OneTimeTokens,
    registry: ConnectionRegistry,
    limits: SlotLimits,
    /// The transports this build serves.
    transports: Vec<StreamKind>,
}

/// The connection slots of one server. Cheap to clone.
#[derive(Clone)]
pub struct Slots {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("slots", &self.lock().len())
            .field("limits", &self.inner.limits)
            .finish()
    }
}

/// A slot's status, as `GET /api/v1/connections/{id}/status` answers it
/// (and `POST` with its `stream_url`).
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
pub struct SlotStatus {
    /// The slot's id (`conn_…`), or a direct connection's number.
    pub id: String,
    /// `sse` or `ws`.
    pub transport: &'static str,
    /// `connecting`, `connected`, `disconnected` or `error`.
    pub status: &'static str,
    /// The single-use URL that opens the stream (only in the answer to
    /// `POST`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_url: Option<String>,
    /// When the slot was created (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Until when the stream URL may be used (RFC 3339), while connecting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_expires_at: Option<String>,
    /// The connection's id in `GET /api/v1/connections`, once it opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<u64>,
    /// When the connection opened (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connected_at: Option<String>,
    /// When an event was last written to it (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<String>,
    /// Events written to it.
    pub events_delivered: u64,
    /// Events it missed (lag, coalescing).
    pub dropped: u64,
    /// Wire bytes waiting in its queue when it last wrote.
    pub queued_bytes: u64,
    /// Why it is in `error`: `{"error","message"}` as the transport or this
    /// store said it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StatusError>,
    /// The options it was created with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub options: Option<SlotOptions>,
}

/// The `error` of a [`SlotStatus`].
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "contracts", derive(schemars::JsonSchema))]
pub struct StatusError {
    /// Machine-readable code.
    pub error: String,
    /// What happened.
    pub message: String,
}

impl SlotStatus {
    /// The status of a connection opened directly (not through a slot).
    pub fn of_connection(info: &ConnectionInfo) -> SlotStatus {
        SlotStatus {
            id: info.id.to_string(),
            transport: info.transport.as_str(),
            status: "connected",
            stream_url: None,
            created_at: None,
            ticket_expires_at: None,
            connection_id: Some(info.id),
            connected_at: Some(info.connected_at.clone()),
            last_event_time: info.last_event_at.clone(),
            events_delivered: info.events_sent,
            dropped: info.dropped,
            queued_bytes: info.queued_bytes,
            error: None,
            options: None,
        }
    }
}

/// What [`Slots::admit`] hands the stream route: the transport, its query
/// and the internal token to open it with.
pub struct Admission {
    /// The slot's transport.
    pub transport: StreamKind,
    /// The transport's query (the slot's options).
    pub query: String,
    /// `false` when the slot turned compression off.
    pub compression: bool,
    /// The internal one-time token the transport admits the owner with.
    pub grant: String,
}

impl Slots {
    /// A store within `limits`, following connections through `registry`
    /// (it installs itself as the registry's observer).
    pub fn new(
        registry: ConnectionRegistry,
        limits: SlotLimits,
        transports: Vec<StreamKind>,
    ) -> Slots {
        let slots = Slots {
            inner: Arc::new(Inner {
                slots: Mutex::default(),
                tickets: OneTimeTokens::new(limits.max),
                grants: OneTimeTokens::new(limits.max),
                registry: registry.clone(),
                limits,
                transports,
            }),
        };
        if !registry.set_observer(Arc::new(slots.clone())) {
            tracing::warn!(
                "the connection registry has another observer; slot statuses will not follow their connections"
            );
        }
        slots
    }

    /// The internal one-time tokens the transports must admit
    /// (wrap their authenticator in [`event_core::WithOneTimeTokens`]).
    pub fn grants(&self) -> OneTimeTokens {
        self.inner.grants.clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Slot>> {
        // Map operations cannot leave it inconsistent; ignore poisoning.
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a slot for `owner`: its status with the stream URL.
    pub fn create(
        &self,
        owner: &Principal,
        options: SlotOptions,
    ) -> Result<SlotStatus, ServerError> {
        if !self.inner.transports.contains(&options.transport) {
            return Err(ServerError::bad_request(
                "transport_unavailable",
                format!(
                    "this server was built without the `{}` transport",
                    options.transport.as_str()
                ),
            ));
        }
        options.check(owner, self.inner.limits.max_event_bytes)?;
        let limits = self.inner.limits;
        let now = Instant::now();
        let mut slots = self.lock();
        prune(&mut slots, now, limits.retain);
        if slots.len() >= limits.max {
            return Err(slot_limit(format!(
                "{} connection slots exist, the most this server keeps (CONNECTION_SLOTS_MAX)",
                limits.max
            )));
        }
        let owned = slots.values().filter(|s| s.owner.id == owner.id).count();
        if owned >= limits.per_principal {
            return Err(slot_limit(format!(
                "this principal holds {owned} connection slots, the most one may (CONNECTION_SLOTS_PER_PRINCIPAL); \
                 delete one or wait for ended ones to expire"
            )));
        }
        let id = format!("conn_{}", uuid::Uuid::new_v4().simple());
        let principal = Principal {
            slot: Some(id.clone()),
            ..owner.clone()
        };
        let ticket = self
            .inner
            .tickets
            .issue(principal, limits.ticket_ttl)
            .map_err(|e| slot_limit(e.to_string()))?;
        let created_at = OffsetDateTime::now_utc();
        let slot = Slot {
            owner: owner.clone(),
            options,
            created_at,
            ticket_expires_at: created_at + limits.ticket_ttl,
            state: State::Waiting {
                expires: now + limits.ticket_ttl,
            },
        };
        let mut status = self.status_of(&id, &slot);
        status.stream_url = Some(format!("/api/v1/connections/{id}/stream?ticket={ticket}"));
        slots.insert(id, slot);
        Ok(status)
    }

    /// The status of slot `id` as `viewer` may see it (its owner or an
    /// admin; `None` otherwise, as for no such slot).
    pub fn status(&self, id: &str, viewer: &Principal) -> Option<SlotStatus> {
        let mut slots = self.lock();
        prune(&mut slots, Instant::now(), self.inner.limits.retain);
        let slot = slots.get(id).filter(|s| may_see(s, viewer))?;
        Some(self.status_of(id, slot))
    }

    fn status_of(&self, id: &str, slot: &Slot) -> SlotStatus {
        let mut status = SlotStatus {
            id: id.to_owned(),
            transport: slot.options.transport.as_str(),
            status: "connecting",
            stream_url: None,
            created_at: Some(rfc3339(slot.created_at)),
            ticket_expires_at: None,
            connection_id: None,
            connected_at: None,
            last_event_time: None,
            events_delivered: 0,
            dropped: 0,
            queued_bytes: 0,
            error: None,
            options: Some(slot.options.clone()),
        };
        let counters = |status: &mut SlotStatus, info: &ConnectionInfo| {
            status.connection_id = Some(info.id);
            status.connected_at = Some(info.connected_at.clone());
            status.last_event_time = info.last_event_at.clone();
            status.events_delivered = info.events_sent;
            status.dropped = info.dropped;
            status.queued_bytes = info.queued_bytes;
        };
        match &slot.state {
            State::Waiting { .. } => {
                status.ticket_expires_at = Some(rfc3339(slot.ticket_expires_at));
            }
            State::Admitted { .. } => {}
            State::Connected { connection } => {
                status.status = "connected";
                status.connection_id = Some(*connection);
                if let Some(info) = self.inner.registry.get(*connection) {
                    counters(&mut status, &info);
                }
            }
            State::Ended { info, error, .. } => {
                status.status = if error.is_some() {
                    "error"
                } else {
                    "disconnected"
                };
                if let Some(info) = info {
                    counters(&mut status, info);
                }
                status.error = error.as_ref().map(|(code, message)| StatusError {
                    error: code.clone(),
                    message: message.clone(),
                });
            }
        }
        status
    }

    /// Deletes slot `id` if `viewer` may: its ticket stops working and its
    /// connection, if open, is asked to close. `false`: no such slot (for
    /// this viewer).
    pub fn delete(&self, id: &str, viewer: &Principal) -> bool {
        let slot = {
            let mut slots = self.lock();
            match slots.get(id) {
                Some(s) if may_see(s, viewer) => slots.remove(id),
                _ => None,
            }
        };
        let Some(slot) = slot else { return false };
        self.inner
            .tickets
            .revoke_where(|p| p.slot.as_deref() == Some(id));
        if let State::Connected { connection } = slot.state {
            self.inner.registry.disconnect(connection);
        }
        true
    }

    /// Redeems `ticket` for slot `id`: what the stream route needs to open
    /// the stream, or why not (`404` no such slot, `401` a ticket that is
    /// not this slot's or was used or expired).
    /// `upgrade`: whether the request asks for a WebSocket; a request for
    /// the other transport is refused (`400 wrong_transport`) before the
    /// ticket is spent.
    pub fn admit(&self, id: &str, ticket: &str, upgrade: bool) -> Result<Admission, ServerError> {
        let invalid = || {
            ServerError::Unauthorized(
                "the stream URL's ticket is not valid: it was used, it expired or it belongs to another slot; create a new slot"
                    .to_owned(),
            )
        };
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(id) else {
            return Err(ServerError::NotFound(format!("no connection slot {id:?}")));
        };
        // Checked before it is redeemed: another slot's ticket stays usable.
        match self.inner.tickets.peek(ticket) {
            Some(p) if p.slot.as_deref() == Some(id) => {}
            _ => return Err(invalid()),
        }
        if upgrade != (slot.options.transport == StreamKind::Ws) {
            return Err(ServerError::bad_request(
                "wrong_transport",
                format!(
                    "this slot's stream is `{}`: open it {}",
                    slot.options.transport.as_str(),
                    match slot.options.transport {
                        StreamKind::Ws => "with a WebSocket handshake",
                        StreamKind::Sse => "with a plain GET (no Upgrade)",
                    }
                ),
            ));
        }
        let principal = self.inner.tickets.redeem(ticket).ok_or_else(invalid)?;
        let grant = self
            .inner
            .grants
            .issue(principal, GRANT_TTL)
            .map_err(|e| slot_limit(e.to_string()))?;
        slot.state = State::Admitted {
            since: Instant::now(),
        };
        Ok(Admission {
            transport: slot.options.transport,
            query: slot.options.to_query(),
            compression: slot.options.compression != Some(false),
            grant,
        })
    }

    /// After the transport answered: a refusal (`error` from its JSON
    /// body) ends the slot unless its connection registered meanwhile; the
    /// grant is dropped either way.
    pub fn answered(&self, id: &str, grant: &str, refusal: Option<StatusError>) {
        self.inner.grants.revoke(grant);
        let Some(refusal) = refusal else { return };
        if let Some(slot) = self.lock().get_mut(id)
            && matches!(slot.state, State::Admitted { .. })
        {
            slot.state = State::Ended {
                at: Instant::now(),
                info: None,
                error: Some((refusal.error, refusal.message)),
            };
        }
    }
}

impl ConnectionObserver for Slots {
    fn opened(&self, info: &ConnectionInfo) {
        let Some(id) = &info.slot else { return };
        if let Some(slot) = self.lock().get_mut(id) {
            slot.state = State::Connected {
                connection: info.id,
            };
        }
    }

    fn closed(&self, info: &ConnectionInfo) {
        let Some(id) = &info.slot else { return };
        if let Some(slot) = self.lock().get_mut(id) {
            slot.state = State::Ended {
                at: Instant::now(),
                info: Some(Box::new(info.clone())),
                error: None,
            };
        }
    }
}

fn may_see(slot: &Slot, viewer: &Principal) -> bool {
    viewer.is_admin() || slot.owner.id == viewer.id
}

/// Ends slots whose ticket expired unused or whose admitted stream never
/// registered, and forgets ended slots older than `retain`.
fn prune(slots: &mut HashMap<String, Slot>, now: Instant, retain: Duration) {
    for slot in slots.values_mut() {
        let ended = match slot.state {
            State::Waiting { expires } if expires <= now => Some((
                expires,
                "ticket_expired",
                "the stream URL was not used before its ticket expired (CONNECTION_TICKET_TTL_SECS)",
            )),
            State::Admitted { since } if now.duration_since(since) >= ADMITTED_TIMEOUT => Some((
                now,
                "never_connected",
                "the transport admitted the stream but it never opened",
            )),
            _ => None,
        };
        if let Some((at, code, message)) = ended {
            slot.state = State::Ended {
                at,
                info: None,
                error: Some((code.to_owned(), message.to_owned())),
            };
        }
    }
    slots.retain(|_, s| match s.state {
        State::Ended { at, .. } => now.duration_since(at) < retain,
        _ => true,
    });
}

fn slot_limit(message: String) -> ServerError {
    ServerError::Conflict {
        code: "slot_limit",
        message,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    event_core::event::format_rfc3339_millis(t)
}
