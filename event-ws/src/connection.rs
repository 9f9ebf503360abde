//! One client connection, from upgrade to close.
//!
//! # Model
//!
//! A connection is one task polling one state machine ([`Conn::poll`]).
//! On every wake-up it looks, in order, at: the close signals (kick,
//! shutdown), the reply to a `refresh` being prepared, the outbox, the
//! socket's write side, the socket's read side and its two timers (ping,
//! idle). Each is cheap to look at when nothing happened — an atomic load
//! or a readiness check — so a wake-up for one event costs one outbox
//! drain and one write of the event's shared frame, little else.
//!
//! The outbox is drained only once everything drained before has been
//! written: while the socket is full, events wait in the outbox. When it
//! fills, the outbox coalesces ([`OverflowPolicy::Coalesce`]): the client
//! gets what was queued, then `events.lagged` with the count of what it
//! missed, then the latest `JobProgress` per job, `QueueStatus` and job
//! ends — so under saturation, when every client looks slow, a client that
//! keeps reading stays connected. Only a client whose socket takes no byte
//! for the write timeout is closed (4008), or, with
//! [`WsConfig::close_on_overflow`](crate::WsConfig::close_on_overflow), one
//! whose outbox overflows. Client messages are read only while little is
//! waiting to be written, so a client that floods requests without reading
//! the answers is held back by TCP rather than buffered.
//!
//! Whatever ends the connection decides the close code; the close
//! handshake is then bounded by the close timeout.
//!
//! The task's future is most of an idle connection's memory, so it keeps
//! little: no read or write buffer while nothing is pending, the set-up
//! that consumes values (registering, subscribing) done before it is
//! created, and the endpoint shared through an `Arc`.

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use event_core::{
    Closed, ConnectionGuard, EventFilter, FilterParams, HubSubscription, KindSet, OutboxLimits,
    Outgoing, OverflowPolicy, Paced, Pacer, Principal, SubscribeOptions, Transport, WireForm,
    current_queue_status,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::futures::Notified;
use tokio::time::{Instant, Sleep, sleep, timeout, timeout_at};
use tracing::{Instrument, Span};

use crate::config::close_code;
use crate::consumer;
use crate::deflate::Framing;
use crate::endpoint::{Slot, WsEndpoint};
use crate::extensions::Agreed;
use crate::frame::{self, Incoming, ReadError};
use crate::protocol::{
    ClientMessage, PONG, Refusal, Selection, Subscribe, lagged_json, queue_status_json,
    subscribed_reply,
};
use crate::scratch;
use crate::socket::{Read, ReadFailure, WsSocket};

/// Client messages are not read while this many bytes wait to be written
/// (or half the outbox budget, if that is less). What a client's messages
/// cause — pongs, `subscribed` replies, queue statuses — is therefore
/// bounded by bytes whatever their number: a client that sends without
/// reading is held back by TCP, not buffered.
const READ_PAUSE_BYTES: usize = 64 * 1024;
/// Rounds of the state machine per poll before the task yields, so that a
/// busy connection cannot hold a worker thread.
const ROUNDS_PER_POLL: usize = 32;

/// What the upgrade handler hands to the connection task.
pub(crate) struct ConnectionContext {
    pub(crate) endpoint: Arc<WsEndpoint>,
    pub(crate) principal: Principal,
    /// The upgrade request's filters, kept for the connection's life;
    /// `subscribe`/`unsubscribe` choose kinds within them.
    pub(crate) filter: EventFilter,
    pub(crate) remote: Option<SocketAddr>,
    /// The connection's place under `max_connections`, released last.
    pub(crate) slot: Slot,
    /// permessage-deflate, if the client offered it and the server took it.
    pub(crate) deflate: Option<Agreed>,
    /// The outbox limits (the server's, or the client's lower byte budget).
    pub(crate) limits: OutboxLimits,
    /// The rate limit it starts with (the upgrade's `max_rate`, else the
    /// server's).
    pub(crate) max_rate: Option<NonZeroU32>,
    /// The consumer `subscribe` the upgrade asked for, handled first.
    /// (Boxed: it is used once, at the start, and the connection's task
    /// would otherwise keep room for it in several places for its life.)
    pub(crate) consumer: Option<Box<Subscribe>>,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame (with this code, if any).
    ClientClosed(Option<u16>),
    /// The socket ended without a close frame, or reading failed.
    ClientGone,
    /// Writing to the socket failed.
    WriteFailed,
    /// Nothing heard from the client within the idle timeout.
    IdleTimeout,
    /// The client sent a frame over the size limit.
    TooBig,
    /// The client's bytes were not valid WebSocket framing.
    ProtocolError(&'static str),
    /// The client sent text that is not UTF-8.
    NotUtf8,
    /// The client sent a compressed message that is not valid DEFLATE.
    BadCompression,
    /// The client sent a request over the protocol's limits (too many
    /// `subscribe` names, or a name too long).
    OverLimit(&'static str),
    /// The client did not keep up (the detail says how).
    SlowConsumer(&'static str),
    /// Server shutdown.
    Shutdown,
    /// An operator removed the connection.
    Kicked,
    /// The named consumer this connection read was taken over by a newer
    /// connection or deleted.
    ConsumerClosed,
}

impl End {
    /// The `reason` label of the closed-connections counter.
    fn label(self) -> &'static str {
        match self {
            End::ClientClosed(_) => "client_close",
            End::ClientGone => "client_gone",
            End::WriteFailed => "write_error",
            End::IdleTimeout => "idle_timeout",
            End::TooBig => "message_too_big",
            End::ProtocolError(_) => "protocol_error",
            End::NotUtf8 | End::BadCompression => "invalid_payload",
            End::OverLimit(_) => "over_limit",
            End::SlowConsumer(_) => "slow_consumer",
            End::Shutdown => "shutdown",
            End::Kicked => "kicked",
            End::ConsumerClosed => "consumer_closed",
        }
    }

    /// The close frame the server sends, if the socket can still take one.
    fn close_frame(self) -> Option<Bytes> {
        let (code, reason) = match self {
            End::ClientGone | End::WriteFailed => return None,
            // The client's code is echoed (RFC 6455 §5.5.1).
            End::ClientClosed(code) => return Some(frame::close(code, "")),
            End::IdleTimeout => (close_code::IDLE_TIMEOUT, "idle timeout"),
            End::TooBig => (close_code::MESSAGE_TOO_BIG, "message too big"),
            End::ProtocolError(why) => (close_code::PROTOCOL_ERROR, why),
            End::NotUtf8 => (close_code::INVALID_PAYLOAD, "text is not UTF-8"),
            End::BadCompression => (
                close_code::INVALID_PAYLOAD,
                "compressed message is not valid DEFLATE data",
            ),
            End::OverLimit(why) => (close_code::POLICY_VIOLATION, why),
            End::SlowConsumer(why) => (close_code::SLOW_CONSUMER, why),
            End::Shutdown => (close_code::GOING_AWAY, "server shutting down"),
            End::Kicked => (close_code::POLICY_VIOLATION, "disconnected by the server"),
            End::ConsumerClosed => (
                close_code::CONSUMER_CLOSED,
                "consumer taken over by another connection, or deleted",
            ),
        };
        Some(frame::close(Some(code), reason))
    }

    /// How the close handshake goes after this end.
    fn closing(self) -> Closing {
        match self {
            End::ClientGone | End::WriteFailed => Closing::Drop,
            End::ClientClosed(_) => Closing::Answer,
            End::TooBig
            | End::ProtocolError(_)
            | End::NotUtf8
            | End::BadCompression
            | End::OverLimit(_) => Closing::Fail,
            End::IdleTimeout
            | End::SlowConsumer(_)
            | End::Shutdown
            | End::Kicked
            | End::ConsumerClosed => Closing::Initiate,
        }
    }
}

/// The close handshake of each kind of end (RFC 6455 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// The socket is gone: nothing to send.
    Drop,
    /// The client closed: what its earlier messages caused (a pong is owed
    /// for a ping before the close), then the close echoed, then TCP.
    Answer,
    /// The client's input failed the connection: the replies to what came
    /// before the bad input, the close frame, then TCP (§7.1.7; nothing it
    /// sends after can be read).
    Fail,
    /// The server closes: frames not yet started are dropped, the close
    /// frame goes out, the client's close is awaited, then TCP.
    Initiate,
}

impl From<ReadError> for End {
    fn from(error: ReadError) -> End {
        match error {
            ReadError::TooBig => End::TooBig,
            ReadError::Protocol(why) => End::ProtocolError(why),
            ReadError::NotUtf8 => End::NotUtf8,
            ReadError::BadCompression => End::BadCompression,
        }
    }
}

/// Registers an upgraded connection and returns the future that runs it to
/// its end.
///
/// `ctx` is taken apart (and its box freed) here, before the future exists:
/// what the future captures, it keeps for the connection's life.
pub(crate) fn serve<IO>(ctx: Box<ConnectionContext>, io: IO) -> impl Future<Output = ()> + Send
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ConnectionContext {
        endpoint: ep,
        principal,
        filter,
        remote,
        slot,
        deflate,
        limits,
        max_rate,
        consumer,
    } = *ctx;
    let base_kinds = filter.kinds();
    // Kept (boxed, and only when it narrows) for a consumer `subscribe`.
    let base_filter = (filter != EventFilter::all()).then(|| Box::new(filter.clone()));
    let guard = ep
        .registry
        .register(Transport::WebSocket, remote, &principal);
    let remote_label = remote.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    // INFO, so trace export (OTLP) records the connection, under the
    // connection-span target, which log layers leave out: a log subscriber
    // would keep the span's formatted fields (~350 bytes) for every open
    // connection. The connection's WARN lines name the connection themselves.
    let span = tracing::info_span!(
        target: event_core::CONNECTION_SPAN_TARGET,
        "ws_connection",
        conn_id = guard.id(),
        remote = %remote_label,
        principal = %principal.id,
    );
    let sub = ep.hub.subscribe(SubscribeOptions {
        filter,
        principal,
        // Whatever the budget, it holds the largest event the bus lets
        // through (twice), so one big event never drops a reader
        // (`OutboxLimits::with_client_budget`).
        limits,
        policy: if ep.config.close_on_overflow {
            OverflowPolicy::Close
        } else {
            OverflowPolicy::Coalesce
        },
        wire: WireForm::Flat,
    });
    let mut socket = WsSocket::new(io, ep.config.max_message_bytes);
    if let Some(agreed) = deflate {
        socket.compress(Framing::compressed(
            ep.config.compress_min_bytes,
            agreed.server_max_window_bits,
        ));
    }
    // The span is entered where the connection logs, not around the whole
    // future: entering and leaving it on every poll (every write) was most
    // of telemetry's share of a fan-out server's CPU.
    async move {
        ep.metrics.connection_opened();
        span.in_scope(|| tracing::debug!(compression = deflate.is_some(), "connected"));
        let end = run(
            &ep,
            &guard,
            &sub,
            Upgraded {
                base_kinds,
                base_filter,
                max_rate,
                consumer,
            },
            &mut socket,
            &span,
        )
        .await;
        // Stop filling the outbox before the (possibly slow) close handshake.
        drop(sub);
        let teardown = async move {
            match end {
                End::SlowConsumer(why) => {
                    let info = guard.info();
                    tracing::warn!(
                        conn_id = info.id,
                        remote = info.remote_addr.as_deref().unwrap_or("unknown"),
                        principal = %info.principal,
                        reason = why,
                        "slow consumer disconnected (4008)"
                    )
                }
                End::ProtocolError(why) => {
                    tracing::debug!(reason = why, "client broke the framing (1002)")
                }
                other => tracing::debug!(reason = other.label(), "disconnected"),
            }
            let deadline = Instant::now() + ep.config.close_timeout;
            let closed = close(&mut socket, end, deadline).await;
            ep.metrics.connection_closed(end.label());
            drop(guard);
            if closed {
                linger(&mut socket, deadline).await;
            }
            drop(slot);
        };
        teardown.instrument(span).await;
    }
}

/// Sends the confirmation, then runs the connection until something ends
/// it.
/// What the upgrade request chose for the connection's life.
struct Upgraded {
    /// The kinds its filters allow (`subscribe` chooses within them).
    base_kinds: KindSet,
    /// Its filter, when it narrows anything (for a consumer `subscribe`).
    base_filter: Option<Box<EventFilter>>,
    /// The rate limit it starts with.
    max_rate: Option<NonZeroU32>,
    /// A consumer `subscribe` to handle before the client's messages.
    consumer: Option<Box<Subscribe>>,
}

async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
    ep: &WsEndpoint,
    guard: &ConnectionGuard,
    sub: &HubSubscription,
    upgraded: Upgraded,
    socket: &mut WsSocket<IO>,
    span: &Span,
) -> End {
    let Upgraded {
        base_kinds,
        base_filter,
        max_rate,
        consumer,
    } = upgraded;
    let framing = socket.framing();
    // The confirmation comes first; events published meanwhile wait in the
    // outbox (the subscription already exists).
    if !ep.echo {
        let initial = queue_status_text(ep).instrument(span.clone()).await;
        socket.queue(framing.text(&initial));
    }
    let cfg = &ep.config;
    let mut closed = pin!(guard.closed());
    let mut stopping = pin!(ep.stopping.closed());
    let mut outbox = pin!(sub.outbox().ready());
    let mut ping = pin!(sleep(cfg.ping_interval));
    let mut idle = pin!(sleep(cfg.idle_timeout));
    let mut conn = Conn {
        ep,
        guard,
        sub,
        socket,
        framing,
        span,
        selection: Selection::default(),
        base_kinds,
        base_filter,
        consumer: None,
        attaching: None,
        acking: None,
        own: None,
        pacer: max_rate
            .map(|rate| Box::new(Pacer::new(rate, sub.outbox().limits(), WireForm::Flat))),
        pace_timer: None,
        batch: Vec::new(),
        incoming: Vec::new(),
        stall: None,
        drained_bytes: 0,
        refresh: None,
        failed: None,
        drain_due: true,
        read_pause: READ_PAUSE_BYTES.min(cfg.outbox.max_bytes / 2).max(1),
    };
    if let Some(mut request) = consumer
        && let Err(refusal) = conn.start_consumer(&mut request)
    {
        let reply = conn.framing.text(refusal.reply().as_bytes());
        if let Err(end) = conn.queue_reply(reply) {
            return end;
        }
    }
    poll_fn(|cx| {
        let waits = Waits {
            closed: closed.as_mut(),
            stopping: stopping.as_mut(),
            outbox: outbox.as_mut(),
            ping: ping.as_mut(),
            idle: idle.as_mut(),
        };
        conn.poll(cx, waits)
    })
    .await
}

/// The futures a connection waits on besides its socket (pinned in the
/// connection's task).
struct Waits<'p, 'a> {
    /// Kick or registry shutdown.
    closed: Pin<&'p mut Closed<'a>>,
    /// The endpoint's shutdown.
    stopping: Pin<&'p mut Closed<'a>>,
    /// Something was pushed to the outbox.
    outbox: Pin<&'p mut Notified<'a>>,
    /// Time to ping the client.
    ping: Pin<&'p mut Sleep>,
    /// The client has been silent for too long.
    idle: Pin<&'p mut Sleep>,
}

type Refresh<'a> = Pin<Box<dyn Future<Output = Bytes> + Send + 'a>>;

/// A connection's state between wake-ups.
struct Conn<'a, IO> {
    ep: &'a WsEndpoint,
    guard: &'a ConnectionGuard,
    sub: &'a HubSubscription,
    socket: &'a mut WsSocket<IO>,
    /// Plain or compressed data frames (permessage-deflate).
    framing: Framing,
    span: &'a Span,
    selection: Selection,
    /// The kinds the upgrade request's filters allow.
    base_kinds: KindSet,
    /// The upgrade request's filter, when it narrows (for a consumer).
    base_filter: Option<Box<EventFilter>>,
    /// The named consumer this connection reads instead of the live
    /// stream, once attached.
    consumer: Option<Box<consumer::Attached>>,
    /// A consumer `subscribe` waiting for the dispatcher's answer (the
    /// client's next messages wait behind it, as behind a `refresh`).
    attaching: Option<consumer::Attaching>,
    /// An `ack` message the dispatcher has not applied yet.
    acking: Option<consumer::Acking>,
    /// The `topics` and `filter` of the client's `subscribe` messages.
    /// (Boxed, and absent until the client sets one: an idle connection's
    /// task keeps little.)
    own: Option<Box<OwnFilter>>,
    /// The rate limit (`max_rate`), if the connection has one: what the
    /// outbox gives passes through it on the way to the socket.
    pacer: Option<Box<Pacer>>,
    /// When the pacer's held events may go next.
    pace_timer: Option<Pin<Box<Sleep>>>,
    /// Events queued on the socket and not yet completely written (their
    /// metrics are recorded once they are). The thread's list
    /// ([`scratch::lend_batch`]) while a drain is written, given back once
    /// it is: an idle connection keeps no buffer here.
    batch: Vec<Outgoing>,
    /// Client messages read but not handled yet (waiting behind a
    /// `refresh`, whose reply must come first). Like `batch`, the thread's
    /// list while in use ([`scratch::lend_incoming`]).
    incoming: Vec<Incoming>,
    /// The write-stall deadline, only while a write waits for room; pushed
    /// back whenever the socket takes bytes, so only a client that stops
    /// reading reaches it.
    stall: Option<Pin<Box<Sleep>>>,
    /// The bytes the last drain queued on the socket (events and lag
    /// signals), until they are written: replies get their own budget
    /// beside them.
    drained_bytes: usize,
    /// The reply to a `refresh`, while the host's snapshot is awaited.
    refresh: Option<Refresh<'a>>,
    /// The client's input failed the connection; it ends with this once
    /// the messages read before the bad bytes are handled.
    failed: Option<End>,
    /// The outbox signalled since it was last drained.
    drain_due: bool,
    /// Reading pauses while this many bytes wait to be written.
    read_pause: usize,
}

/// The `topics` and `filter` a client chose with `subscribe` (each
/// replaced by the next `subscribe` that carries it), as the texts of the
/// SSE parameters, and the kinds the `filter` allows.
struct OwnFilter {
    topics: Option<String>,
    filter: Option<String>,
    kinds: KindSet,
}

impl<'a, IO: AsyncRead + AsyncWrite + Unpin> Conn<'a, IO> {
    /// Delivers the selected kinds the upgrade request's filters and the
    /// client's own `filter` allow; returns them (what the `subscribed`
    /// reply lists).
    fn apply_selection(&self) -> KindSet {
        let kinds = self
            .selection
            .kinds()
            .intersection(self.base_kinds)
            .intersection(self.own.as_ref().map_or(KindSet::ALL, |own| own.kinds));
        self.sub.set_kinds(kinds);
        kinds
    }

    /// Whether a reply is being prepared that the client's next messages
    /// must wait behind.
    fn waiting(&self) -> bool {
        self.refresh.is_some() || self.attaching.is_some() || self.acking.is_some()
    }

    /// Starts attaching the consumer a `subscribe` names.
    fn start_consumer(&mut self, request: &mut Subscribe) -> Result<(), Refusal> {
        let Some(ask) = request.consumer.take() else {
            return Ok(());
        };
        if self.consumer.is_some() {
            return Err(Refusal::new(
                "invalid_parameter",
                "this connection already reads a consumer; open another one",
            ));
        }
        let Some(consumers) = self.ep.consumers.as_ref() else {
            return Err(Refusal::new(
                "consumers_unavailable",
                "named consumers need the event log, which this server runs without",
            ));
        };
        let base = self
            .base_filter
            .as_deref()
            .cloned()
            .unwrap_or_else(EventFilter::all);
        let attach = consumer::request(ask, request, &base, self.sub.principal())?;
        self.attaching = Some(consumer::attach(consumers, attach));
        Ok(())
    }

    /// Applies a `subscribe`: all of it, or — when its `topics` or
    /// `filter` is refused — none of it.
    fn subscribe(&mut self, request: Subscribe) -> Result<String, Refusal> {
        if request.topics.is_some() || request.filter.is_some() {
            let own = self.own.as_deref();
            let topics = request
                .topics
                .or_else(|| own.and_then(|o| o.topics.clone()));
            let filter = request
                .filter
                .or_else(|| own.and_then(|o| o.filter.clone()));
            // The SSE parameters' parser: the same rules, limits and errors.
            let parsed = EventFilter::parse_with_json(
                FilterParams {
                    topics: topics.as_deref(),
                    ..FilterParams::default()
                },
                filter.as_deref(),
            )
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
            if let Some(memory) = parsed.memory()
                && !self.sub.principal().memories.allows(memory)
            {
                return Err(Refusal::new(
                    "forbidden",
                    format!("no access to memory {memory:?}"),
                ));
            }
            let narrows = parsed.entity_id().is_some()
                || parsed.memory().is_some()
                || !parsed.topics().is_empty();
            self.own = Some(Box::new(OwnFilter {
                topics,
                filter,
                kinds: parsed.kinds(),
            }));
            self.sub.set_filter(narrows.then_some(parsed));
        }
        let unknown = match &request.events {
            Some(names) => self.selection.subscribe(names),
            None => Vec::new(),
        };
        if let Some(rate) = request.max_rate {
            match (&mut self.pacer, rate) {
                (Some(pacer), rate) => pacer.set_rate(rate),
                (None, Some(rate)) => {
                    self.pacer = Some(Box::new(Pacer::new(
                        rate,
                        self.sub.outbox().limits(),
                        WireForm::Flat,
                    )));
                }
                (None, None) => {}
            }
            // Held events go (or wait) by the new rate.
            self.drain_due = true;
        }
        Ok(subscribed_reply(
            self.apply_selection(),
            &unknown,
            self.pacer.as_ref().and_then(|p| p.rate()),
        ))
    }

    fn poll(&mut self, cx: &mut Context<'_>, mut w: Waits<'_, 'a>) -> Poll<End> {
        let cfg = &self.ep.config;
        for _ in 0..ROUNDS_PER_POLL {
            if w.closed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(if self.ep.registry.is_shutting_down() {
                    End::Shutdown
                } else {
                    End::Kicked
                });
            }
            if w.stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Shutdown);
            }
            let mut again = false;
            if let Some(refresh) = self.refresh.as_mut()
                && let Poll::Ready(text) = refresh.as_mut().poll(cx)
            {
                self.refresh = None;
                if let Err(end) = self.queue_reply(self.framing.text(&text)) {
                    return Poll::Ready(end);
                }
                again = true;
            }
            if let Some(attaching) = self.attaching.as_mut()
                && let Poll::Ready(result) = consumer::poll_attach(attaching, cx)
            {
                self.attaching = None;
                let reply = match result {
                    Ok(member) => {
                        // From now on the consumer feeds this connection,
                        // not the live fan-out.
                        self.sub.set_kinds(KindSet::EMPTY);
                        self.pacer = None;
                        self.pace_timer = None;
                        let reply = consumer::subscribed_reply(&member);
                        self.consumer = Some(Box::new(consumer::Attached::new(member)));
                        reply
                    }
                    Err(e) => Refusal::new(e.code(), e.to_string()).reply(),
                };
                if let Err(end) = self.queue_reply(self.framing.text(reply.as_bytes())) {
                    return Poll::Ready(end);
                }
                again = true;
            }
            if let Some(acking) = self.acking.as_mut()
                && acking.as_mut().poll(cx).is_ready()
            {
                self.acking = None;
                again = true;
            }
            if let Some(c) = self.consumer.as_mut() {
                if c.poll_closed(cx) {
                    return Poll::Ready(End::ConsumerClosed);
                }
                if c.stalled_for().is_some_and(|d| d >= cfg.write_timeout) {
                    return Poll::Ready(End::SlowConsumer("consumer deliveries not read"));
                }
                // Drained only once the socket wrote what came before: a
                // client that stops reading holds back its own deliveries.
                if c.poll_ready(cx) && self.socket.pending() == 0 {
                    let socket = &mut *self.socket;
                    let events = c.drain(self.framing, |frame| socket.queue(frame));
                    if events > 0 {
                        self.guard.record_sent(events);
                    }
                    again = true;
                }
            }
            // A fresh `Notified` is polled at once, so it is registered
            // (or takes the permit of a push made meanwhile).
            while w.outbox.as_mut().poll(cx).is_ready() {
                w.outbox.set(self.sub.outbox().ready());
                self.drain_due = true;
                if !self.batch.is_empty() && self.sub.outbox().is_overflowed() {
                    // A blocked write must not hide an overflow: the client
                    // is dropped as soon as it exceeds its budget.
                    return Poll::Ready(self.overflowed());
                }
            }
            if let Err(end) = self.poll_write(cx) {
                return Poll::Ready(end);
            }
            // Polled after the write (whose drain may have set it), so a
            // new deadline is registered before the task sleeps.
            if let Some(timer) = self.pace_timer.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                // The pacer may release what it holds.
                self.pace_timer = None;
                self.drain_due = true;
                again = true;
            }
            if self.failed.is_none()
                && !self.waiting()
                && self.incoming.is_empty()
                && self.socket.queued_bytes() < self.read_pause
            {
                if self.incoming.capacity() == 0 {
                    self.incoming = scratch::lend_incoming();
                }
                let read = self.socket.poll_read_messages(cx, &mut self.incoming);
                if self.incoming.is_empty() {
                    // Nothing to handle (the usual case): the list goes
                    // back to the thread at once.
                    scratch::give_back_incoming(std::mem::take(&mut self.incoming));
                }
                match read {
                    Poll::Ready(Ok(Read::Data)) => {
                        // Any frame, pongs included, proves the client is alive.
                        w.idle.as_mut().reset(Instant::now() + cfg.idle_timeout);
                        again = true;
                    }
                    Poll::Ready(Ok(Read::Eof) | Err(ReadFailure::Io)) => {
                        return Poll::Ready(End::ClientGone);
                    }
                    Poll::Ready(Err(ReadFailure::Frames(error))) => {
                        // What was read before the bad bytes is handled
                        // first (its replies are owed).
                        self.failed = Some(End::from(error));
                        again = true;
                    }
                    Poll::Pending => {}
                }
            }
            if !self.waiting() && !self.incoming.is_empty() {
                if let Some(end) = self.handle_incoming() {
                    return Poll::Ready(end);
                }
                again = true;
            }
            if let Some(end) = self.failed
                && !self.waiting()
                && self.incoming.is_empty()
            {
                return Poll::Ready(end);
            }
            if w.ping.as_mut().poll(cx).is_ready() {
                self.socket.queue(frame::ping());
                w.ping.as_mut().reset(Instant::now() + cfg.ping_interval);
                again = true;
            }
            if w.idle.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::IdleTimeout);
            }
            if !again {
                return Poll::Pending;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes what is queued, then what the outbox holds, until the socket
    /// is full or nothing is left. The batch list goes back to the thread
    /// unless a write of it is still pending.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        let result = self.poll_write_batches(cx);
        if self.batch.is_empty() && self.batch.capacity() > 0 {
            scratch::give_back_batch(std::mem::take(&mut self.batch));
        }
        result
    }

    fn poll_write_batches(&mut self, cx: &mut Context<'_>) -> Result<(), End> {
        loop {
            if self.socket.pending() > 0 {
                let before = self.socket.queued_bytes();
                match self.socket.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => {
                        self.stall = None;
                        self.record_written();
                    }
                    Poll::Ready(Err(_)) => return Err(End::WriteFailed),
                    Poll::Pending => {
                        let limit = self.ep.config.write_timeout;
                        if self.socket.queued_bytes() < before
                            && let Some(stall) = self.stall.as_mut()
                        {
                            // The client reads, however slowly: the stall
                            // counts from its last progress.
                            stall.as_mut().reset(Instant::now() + limit);
                        }
                        let stall = self.stall.get_or_insert_with(|| Box::pin(sleep(limit)));
                        if stall.as_mut().poll(cx).is_ready() {
                            return Err(End::SlowConsumer("write stalled"));
                        }
                        return Ok(());
                    }
                }
            }
            if !(self.drain_due && self.batch.is_empty()) {
                return Ok(());
            }
            self.drain_due = false;
            self.drain()?;
            if self.socket.pending() == 0 {
                return Ok(());
            }
        }
    }

    /// Moves the outbox into the socket's queue (each event as its shared
    /// frame), through the pacer if the connection has a rate limit.
    fn drain(&mut self) -> Result<(), End> {
        if self.batch.capacity() == 0 {
            // Empty (drains wait for the batch before to be written).
            self.batch = scratch::lend_batch();
        }
        let status = self.sub.outbox().drain_into(&mut self.batch);
        if status.overflowed {
            return Err(self.overflowed());
        }
        let missed: u64 = self
            .batch
            .iter()
            .map(|item| match item {
                Outgoing::Lagged(n) => *n,
                Outgoing::Event(_) => 0,
            })
            .sum();
        // What the outbox itself dropped while coalescing is said with
        // `events.lagged` below, followed by the state it kept.
        if missed > status.dropped {
            // The whole endpoint fell behind the bus: this client missed
            // events it did not choose to miss, so it must reconnect and
            // resynchronise.
            self.ep.metrics.dropped(missed);
            self.guard.record_dropped(missed);
            return Err(End::SlowConsumer("missed events"));
        }
        let (mut paced, mut lost) = (0, 0);
        let framing = self.framing;
        let before = self.socket.queued_bytes();
        if let Some(pacer) = self.pacer.as_mut() {
            // The batch goes through the pacer and holds, after, what it
            // lets through (the events written, for `record_written`).
            let mut batch = std::mem::take(&mut self.batch);
            for item in pacer.pace(&mut batch, Instant::now()) {
                match item {
                    Paced::Event(event) => {
                        self.socket.queue(framing.event(&event));
                        batch.push(Outgoing::Event(event));
                    }
                    // What the pacer dropped, at its place in the stream.
                    Paced::Dropped(n) => {
                        paced += n;
                        self.socket.queue(framing.text(lagged_json(n).as_bytes()));
                    }
                    // What the outbox dropped while coalescing (losses
                    // upstream ended the connection above).
                    Paced::Lagged(n) => {
                        lost += n;
                        self.socket.queue(framing.text(lagged_json(n).as_bytes()));
                    }
                }
            }
            self.batch = batch;
            match pacer.next_release() {
                Some(at) => match self.pace_timer.as_mut() {
                    Some(timer) => timer.as_mut().reset(at),
                    None => self.pace_timer = Some(Box::pin(tokio::time::sleep_until(at))),
                },
                None => {
                    self.pace_timer = None;
                    if pacer.rate().is_none() {
                        // The limit was lifted and nothing is held.
                        self.pacer = None;
                    }
                }
            }
        } else {
            for item in &self.batch {
                match item {
                    Outgoing::Event(event) => self.socket.queue(framing.event(event)),
                    Outgoing::Lagged(n) => {
                        lost += n;
                        self.socket.queue(framing.text(lagged_json(*n).as_bytes()));
                    }
                }
            }
        }
        self.drained_bytes = self.socket.queued_bytes().saturating_sub(before);
        if paced + lost > 0 {
            // The consumer's own limit is not a loss to alert on.
            self.ep.metrics.paced(paced);
            self.ep.metrics.dropped(lost);
            self.guard.record_dropped(paced + lost);
        }
        self.ep.note_queued(self.socket.queued_bytes());
        Ok(())
    }

    /// Counts what overflowed the outbox: at least the event that did not
    /// fit, plus what is discarded with the connection.
    fn overflowed(&mut self) -> End {
        let lost = self.batch.len() as u64 + 1;
        self.ep.metrics.dropped(lost);
        self.guard.record_dropped(lost);
        End::SlowConsumer("outbox overflow")
    }

    /// Records a written batch: events sent per kind and one latency sample
    /// for its oldest event, once per batch rather than per event (a clock
    /// read and a histogram update per event per connection dominated
    /// fan-out).
    fn record_written(&mut self) {
        self.drained_bytes = 0;
        if self.batch.is_empty() {
            return;
        }
        let mut written = event_core::metrics::WrittenBatch::new();
        for item in &self.batch {
            if let Outgoing::Event(event) = item {
                written.event(event.kind(), event.published_at());
            }
        }
        let total = written.total();
        if total > 0 {
            self.ep.metrics.record_write(&written);
            self.guard.record_sent(total);
            let queued = self.sub.outbox().queued_bytes() + self.socket.queued_bytes();
            self.guard.record_queued(queued as u64);
        }
        // Written: the list goes back to the thread (`poll_write`).
        self.batch.clear();
    }

    /// Queues a reply to the client inside the connection's byte budget
    /// (the outbox's `max_bytes`, beside the events of the last drain, which
    /// a coalescing outbox may fill up to twice the budget): a client that
    /// makes the server owe it more is a slow consumer.
    fn queue_reply(&mut self, frame: Bytes) -> Result<(), End> {
        let budget = self.ep.config.outbox.max_bytes + self.drained_bytes;
        if self.socket.queued_bytes() + frame.len() > budget {
            return Err(End::SlowConsumer("replies over the outbox budget"));
        }
        self.socket.queue(frame);
        self.ep.note_queued(self.socket.queued_bytes());
        Ok(())
    }

    /// Handles the client's messages in order, stopping behind a `refresh`
    /// (its reply is prepared asynchronously and must come first).
    fn handle_incoming(&mut self) -> Option<End> {
        let mut messages = std::mem::take(&mut self.incoming);
        let mut handled = 0;
        let mut end = None;
        for message in &messages {
            handled += 1;
            match self.handle(message) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    end = Some(e);
                    break;
                }
            }
        }
        messages.drain(..handled);
        if messages.is_empty() {
            scratch::give_back_incoming(messages);
        } else {
            // Behind a `refresh`: kept until its reply is queued.
            self.incoming = messages;
        }
        end
    }

    /// Handles one client message: `Ok(false)` when the next ones must
    /// wait (behind a `refresh`).
    fn handle(&mut self, message: &Incoming) -> Result<bool, End> {
        let text = match message {
            Incoming::Close(code) => return Err(End::ClientClosed(*code)),
            Incoming::Ping(payload) => {
                self.queue_reply(frame::pong(payload))?;
                return Ok(true);
            }
            // Pongs only refresh the idle deadline.
            Incoming::Pong => return Ok(true),
            Incoming::Binary(data) => {
                // Binary frames are not part of the protocol.
                if self.ep.echo {
                    self.queue_reply(self.framing.binary(data))?;
                }
                return Ok(true);
            }
            Incoming::Text(text) if self.ep.echo => {
                self.queue_reply(self.framing.text(text.as_bytes()))?;
                return Ok(true);
            }
            Incoming::Text(text) => text,
        };
        let reply = match ClientMessage::parse(text) {
            None => return Ok(true),
            Some(ClientMessage::Refresh) => {
                let ep = self.ep;
                self.refresh = Some(Box::pin(
                    queue_status_text(ep).instrument(self.span.clone()),
                ));
                return Ok(false);
            }
            Some(ClientMessage::Ping) => Bytes::from_static(PONG.as_bytes()),
            Some(ClientMessage::Subscribe(mut request)) if request.consumer.is_some() => {
                match self.start_consumer(&mut request) {
                    Ok(()) => return Ok(false),
                    Err(refusal) => Bytes::from(refusal.reply()),
                }
            }
            Some(ClientMessage::Ack(acks)) => match &self.consumer {
                Some(c) => {
                    // The next messages wait until the dispatcher took these
                    // acks: a client cannot queue acks faster than they are
                    // applied.
                    self.acking = Some(c.ack_applied(acks));
                    return Ok(false);
                }
                None => Bytes::from(
                    Refusal::new(
                        "invalid_ack",
                        "`ack` needs a `subscribe` with `consumer` or `group` first",
                    )
                    .reply(),
                ),
            },
            Some(ClientMessage::Subscribe(_) | ClientMessage::Unsubscribe(_))
                if self.consumer.is_some() =>
            {
                Bytes::from(
                    Refusal::new(
                        "invalid_parameter",
                        "this connection reads a consumer; its selection is fixed (open another connection)",
                    )
                    .reply(),
                )
            }
            Some(ClientMessage::Subscribe(request)) => match self.subscribe(request) {
                Ok(reply) => Bytes::from(reply),
                Err(refusal) => Bytes::from(refusal.reply()),
            },
            Some(ClientMessage::Refused(refusal)) => Bytes::from(refusal.reply()),
            Some(ClientMessage::Unsubscribe(names)) => {
                let unknown = self.selection.unsubscribe(&names);
                Bytes::from(subscribed_reply(
                    self.apply_selection(),
                    &unknown,
                    self.pacer.as_ref().and_then(|p| p.rate()),
                ))
            }
            Some(ClientMessage::OverLimit) => {
                return Err(End::OverLimit(
                    "subscribe over 64 names or with a name over 128 bytes",
                ));
            }
        };
        self.queue_reply(self.framing.text(&reply))?;
        Ok(true)
    }
}

/// A fresh queue status as flat JSON: the host's snapshot if it answers in
/// time, else the last published one.
async fn queue_status_text(ep: &WsEndpoint) -> Bytes {
    let provider = ep.snapshot.as_deref();
    let status = match timeout(
        ep.config.snapshot_timeout,
        current_queue_status(&ep.bus, provider),
    )
    .await
    {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!("queue snapshot timed out; using the last published status");
            current_queue_status(&ep.bus, None).await
        }
    };
    Bytes::from(queue_status_json(status))
}

/// Ends the connection as `end` requires ([`Closing`]): the close frame
/// (after what must precede it), the client's close reply if awaited, then
/// the end of the server's side of the TCP connection (the server closes
/// it first, RFC 6455 §7.1.1) — all by `deadline`. Returns whether the
/// server's side was ended cleanly.
async fn close<IO: AsyncRead + AsyncWrite + Unpin>(
    socket: &mut WsSocket<IO>,
    end: End,
    deadline: Instant,
) -> bool {
    let Some(close_frame) = end.close_frame() else {
        return false;
    };
    let closing = end.closing();
    let handshake = async {
        if closing == Closing::Initiate {
            socket.discard_unstarted();
        }
        socket.queue(close_frame);
        if poll_fn(|cx| socket.poll_write_out(cx)).await.is_err() {
            return false;
        }
        if closing == Closing::Initiate {
            let mut messages = Vec::new();
            while let Ok(Read::Data) =
                poll_fn(|cx| socket.poll_read_messages(cx, &mut messages)).await
            {
                if messages.iter().any(|m| matches!(m, Incoming::Close(_))) {
                    break;
                }
                messages.clear();
            }
        }
        poll_fn(|cx| socket.poll_shutdown(cx)).await.is_ok()
    };
    match timeout_at(deadline, handshake).await {
        Ok(closed) => closed,
        Err(_) => {
            tracing::debug!(
                reason = end.label(),
                "close handshake timed out; dropping the socket"
            );
            false
        }
    }
}

/// After the server ended its side, reads (and drops) whatever the client
/// still sends until it closes its side too, at most until `deadline`:
/// closing a socket with unread input resets the connection, and a reset
/// can destroy the close frame on its way to the client — who would then
/// see 1006 instead of the code it was sent (a client sending a message
/// over the limit is typically still sending when the server closes).
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(socket: &mut WsSocket<IO>, deadline: Instant) {
    let drain = async { while let Ok(false) = poll_fn(|cx| socket.poll_discard(cx)).await {} };
    let _ = timeout_at(deadline, drain).await;
}
