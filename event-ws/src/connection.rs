//! One client connection, from upgrade to close.
//!
//! A connection is two halves polled by one task: the *reader* handles what
//! the client sends (and notices silence), the *writer* drains the
//! connection's outbox and writes every pending frame with one flush. They
//! talk through a small control queue (replies to `refresh`, `ping`,
//! `subscribe`) kept in the task itself. Whichever half ends first — or a
//! kick or shutdown — decides the close code; the close handshake is then
//! bounded by the close timeout.
//!
//! That task's future is most of an idle connection's memory, so it keeps
//! little: the set-up that consumes values (registering, subscribing,
//! splitting the socket) runs before it is created, and the endpoint is
//! shared through an `Arc`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use event_core::{
    ConnectionGuard, EventFilter, HubSubscription, Outbox, Outgoing, OverflowPolicy, Principal,
    SubscribeOptions, Transport, WireForm, current_queue_status,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{Instrument, Span};

use crate::config::close_code;
use crate::control::ControlQueue;
use crate::endpoint::{Slot, WsEndpoint};
use crate::protocol::{ClientMessage, PONG, Selection, queue_status_json, subscribed_reply};

/// A batch buffer larger than this is released after use, so a burst does
/// not pin memory on an idle connection.
const KEEP_BATCH_CAPACITY: usize = 64;

type WsSink = SplitSink<WebSocket, Message>;
type WsStream = SplitStream<WebSocket>;

/// What the upgrade handler hands to the connection task.
pub(crate) struct ConnectionContext {
    pub(crate) endpoint: Arc<WsEndpoint>,
    pub(crate) principal: Principal,
    pub(crate) remote: Option<SocketAddr>,
    /// The connection's place under `max_connections`, released last.
    pub(crate) slot: Slot,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client sent a close frame.
    ClientClosed,
    /// The socket ended without a close frame, or reading failed.
    ClientGone,
    /// Writing to the socket failed.
    WriteFailed,
    /// Nothing heard from the client within the idle timeout.
    IdleTimeout,
    /// The client sent a frame over the size limit.
    TooBig,
    /// The client did not keep up (the detail says how).
    SlowConsumer(&'static str),
    /// Server shutdown.
    Shutdown,
    /// An operator removed the connection.
    Kicked,
}

impl End {
    /// The `reason` label of the closed-connections counter.
    fn label(self) -> &'static str {
        match self {
            End::ClientClosed => "client_close",
            End::ClientGone => "client_gone",
            End::WriteFailed => "write_error",
            End::IdleTimeout => "idle_timeout",
            End::TooBig => "message_too_big",
            End::SlowConsumer(_) => "slow_consumer",
            End::Shutdown => "shutdown",
            End::Kicked => "kicked",
        }
    }

    /// The close frame the server sends, if the socket can still take one.
    fn close_frame(self) -> Option<(u16, &'static str)> {
        match self {
            End::ClientClosed | End::ClientGone | End::WriteFailed => None,
            End::IdleTimeout => Some((close_code::IDLE_TIMEOUT, "idle timeout")),
            End::TooBig => Some((close_code::MESSAGE_TOO_BIG, "message too big")),
            End::SlowConsumer(why) => Some((close_code::SLOW_CONSUMER, why)),
            End::Shutdown => Some((close_code::GOING_AWAY, "server shutting down")),
            End::Kicked => Some((close_code::POLICY_VIOLATION, "disconnected by the server")),
        }
    }
}

/// Registers an upgraded connection and returns the future that runs it to
/// its end.
pub(crate) fn serve(ctx: ConnectionContext, socket: WebSocket) -> impl Future<Output = ()> + Send {
    let ConnectionContext {
        endpoint: ep,
        principal,
        remote,
        slot,
    } = ctx;
    let guard = ep
        .registry
        .register(Transport::WebSocket, remote, &principal);
    let remote_label = remote.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
    let span = tracing::info_span!(
        "ws_connection",
        conn_id = guard.id(),
        remote = %remote_label,
        principal = %principal.id,
    );
    let sub = ep.hub.subscribe(SubscribeOptions {
        filter: EventFilter::all(),
        principal,
        limits: ep.config.outbox,
        policy: OverflowPolicy::Close,
        wire: WireForm::Flat,
    });
    let (mut sink, mut stream) = socket.split();
    // The span is entered where the connection logs, not around the whole
    // future: entering and leaving it on every poll (every write) was most
    // of telemetry's share of a fan-out server's CPU.
    async move {
        ep.metrics.connection_opened();
        span.in_scope(|| tracing::debug!("connected"));
        let end = run(&ep, &guard, &sub, &mut sink, &mut stream, &span).await;
        // Stop filling the outbox before the (possibly slow) close handshake.
        drop(sub);
        let teardown = async move {
            match end {
                End::SlowConsumer(why) => {
                    tracing::warn!(reason = why, "slow consumer disconnected (4008)")
                }
                other => tracing::debug!(reason = other.label(), "disconnected"),
            }
            let close_timeout = ep.config.close_timeout;
            if let Some((code, reason)) = end.close_frame() {
                close(&mut sink, &mut stream, code, reason, close_timeout).await;
            } else if end == End::ClientClosed {
                // Sends the close reply tungstenite queued.
                let _ = timeout(close_timeout, sink.close()).await;
            }
            ep.metrics.connection_closed(end.label());
            drop(guard);
            drop(slot);
        };
        teardown.instrument(span).await;
    }
}

async fn run(
    ep: &WsEndpoint,
    guard: &ConnectionGuard,
    sub: &HubSubscription,
    sink: &mut WsSink,
    stream: &mut WsStream,
    span: &Span,
) -> End {
    // The confirmation comes first; events published meanwhile wait in the
    // outbox (the subscription already exists).
    let initial = queue_status_text(ep).instrument(span.clone()).await;
    match timeout(ep.config.write_timeout, sink.send(Message::Text(initial))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return End::WriteFailed,
        Err(_) => return End::SlowConsumer("write stalled"),
    }
    let control = ControlQueue::default();
    // The select polls every branch on every wake-up (every write): a token
    // of this connection's own keeps that check off the endpoint token's
    // lock, which every connection would otherwise take each time.
    let stop = ep.stop.child_token();
    tokio::select! {
        biased;
        () = guard.closed() => {
            if ep.registry.is_shutting_down() { End::Shutdown } else { End::Kicked }
        }
        () = stop.cancelled() => End::Shutdown,
        end = read_loop(ep, stream, sub, &control, span) => end,
        end = write_loop(ep, guard, sink, sub.outbox(), &control, span) => end,
    }
}

/// A fresh queue status as flat JSON: the host's snapshot if it answers in
/// time, else the last published one.
async fn queue_status_text(ep: &WsEndpoint) -> Utf8Bytes {
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
    Utf8Bytes::from(queue_status_json(status))
}

/// Whether a read error is tungstenite refusing an oversized frame/message.
fn is_too_big(error: axum::Error) -> bool {
    error
        .into_inner()
        .downcast::<tokio_tungstenite::tungstenite::Error>()
        .is_ok_and(|e| matches!(*e, tokio_tungstenite::tungstenite::Error::Capacity(_)))
}

async fn read_loop(
    ep: &WsEndpoint,
    stream: &mut WsStream,
    sub: &HubSubscription,
    control: &ControlQueue,
    span: &Span,
) -> End {
    let idle = ep.config.idle_timeout;
    let deadline = sleep(idle);
    tokio::pin!(deadline);
    let mut selection = Selection::default();
    loop {
        let received = tokio::select! {
            m = stream.next() => m,
            () = &mut deadline => return End::IdleTimeout,
        };
        // Any frame, pongs included, proves the client is alive.
        deadline.as_mut().reset(Instant::now() + idle);
        let text = match received {
            None => return End::ClientGone,
            Some(Err(error)) => {
                return if is_too_big(error) {
                    End::TooBig
                } else {
                    End::ClientGone
                };
            }
            Some(Ok(Message::Close(_))) => return End::ClientClosed,
            Some(Ok(Message::Text(text))) => text,
            // Binary frames are not part of the protocol; pings are answered
            // by tungstenite; pongs only refresh the deadline.
            Some(Ok(_)) => continue,
        };
        let reply = match ClientMessage::parse(text.as_str()) {
            None => continue,
            Some(ClientMessage::Refresh) => queue_status_text(ep).instrument(span.clone()).await,
            Some(ClientMessage::Ping) => Utf8Bytes::from_static(PONG),
            Some(ClientMessage::Subscribe(names)) => {
                let unknown = selection.subscribe(&names);
                sub.set_kinds(selection.kinds());
                Utf8Bytes::from(subscribed_reply(selection.kinds(), &unknown))
            }
            Some(ClientMessage::Unsubscribe(names)) => {
                let unknown = selection.unsubscribe(&names);
                sub.set_kinds(selection.kinds());
                Utf8Bytes::from(subscribed_reply(selection.kinds(), &unknown))
            }
        };
        control.push(Message::Text(reply)).await;
    }
}

/// Resolves once the outbox has overflowed (it refuses everything after).
async fn overflowed(outbox: &Outbox) {
    loop {
        if outbox.is_overflowed() {
            return;
        }
        outbox.ready().await;
    }
}

async fn write_loop(
    ep: &WsEndpoint,
    guard: &ConnectionGuard,
    sink: &mut WsSink,
    outbox: &Outbox,
    control_queue: &ControlQueue,
    span: &Span,
) -> End {
    let cfg = &ep.config;
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut control: Vec<Message> = Vec::new();
    let mut next_ping = Instant::now() + cfg.ping_interval;
    // One timer for the loop's life, reset when a ping goes out: a fresh
    // `sleep_until` per wait registered and cleared a timer-wheel entry for
    // every write.
    let mut ping_due = pin!(sleep_until(next_ping));
    loop {
        if outbox.drain_into(&mut batch).overflowed {
            // At least the event that did not fit, plus what is discarded here.
            let lost = batch.len() as u64 + 1;
            ep.metrics.dropped(lost);
            guard.record_dropped(lost);
            return End::SlowConsumer("outbox overflow");
        }
        if batch.iter().any(|o| matches!(o, Outgoing::Lagged(_))) {
            // The whole endpoint fell behind the bus: this client missed
            // events and the protocol has no way to say so, so it must
            // reconnect and resynchronise.
            let missed = batch
                .iter()
                .map(|o| match o {
                    Outgoing::Lagged(n) => *n,
                    Outgoing::Event(_) => 0,
                })
                .sum();
            ep.metrics.dropped(missed);
            guard.record_dropped(missed);
            return End::SlowConsumer("missed events");
        }
        control_queue.drain_into(&mut control);
        let now = Instant::now();
        if now >= next_ping {
            control.push(Message::Ping(Bytes::new()));
            next_ping = now + cfg.ping_interval;
            ping_due.as_mut().reset(next_ping);
        }
        if batch.is_empty() && control.is_empty() {
            tokio::select! {
                () = outbox.ready() => {}
                () = control_queue.ready() => {}
                () = ping_due.as_mut() => {}
            }
            continue;
        }
        let written = {
            let mut write = pin!(write_frames(sink, &batch, &mut control, span));
            // Most writes complete at once (the socket has room): only one
            // that has to wait gets a timer (a timer per write was a visible
            // share of fan-out CPU: registering and clearing it in the wheel).
            match write.as_mut().now_or_never() {
                Some(result) => Ok(result),
                None => tokio::select! {
                    biased;
                    written = timeout(cfg.write_timeout, write) => written,
                    // A blocked write must not hide an overflow: the client
                    // is dropped as soon as it exceeds its budget.
                    () = overflowed(outbox) => {
                        let lost = batch.len() as u64 + 1;
                        ep.metrics.dropped(lost);
                        guard.record_dropped(lost);
                        return End::SlowConsumer("outbox overflow");
                    }
                },
            }
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return End::WriteFailed,
            Err(_) => return End::SlowConsumer("write stalled"),
        }
        record_written(ep, guard, &batch);
        batch.clear();
        control.clear();
        if batch.capacity() > KEEP_BATCH_CAPACITY {
            batch = Vec::new();
        }
    }
}

/// Feeds every frame, then flushes once: one batch, few syscalls.
async fn write_frames(
    sink: &mut WsSink,
    batch: &[Outgoing],
    control: &mut Vec<Message>,
    span: &Span,
) -> Result<(), axum::Error> {
    for item in batch {
        if let Outgoing::Event(event) = item {
            // The bytes are shared with every other connection; the
            // conversion only checks they are UTF-8 (serde_json output is).
            match Utf8Bytes::try_from(event.json().clone()) {
                Ok(text) => sink.feed(Message::Text(text)).await?,
                Err(error) => {
                    tracing::error!(parent: span, seq = event.seq(), %error, "event JSON is not UTF-8; skipped")
                }
            }
        }
    }
    for message in control.drain(..) {
        sink.feed(message).await?;
    }
    sink.flush().await
}

/// Records a written batch: events sent per kind and one latency sample
/// for its oldest event, once per batch rather than per event (a clock read
/// and a histogram update per event per connection dominated fan-out).
fn record_written(ep: &WsEndpoint, guard: &ConnectionGuard, batch: &[Outgoing]) {
    let mut written = event_core::metrics::WrittenBatch::new();
    for item in batch {
        if let Outgoing::Event(event) = item {
            written.event(event.kind(), event.published_at());
        }
    }
    let total = written.total();
    if total > 0 {
        ep.metrics.record_write(&written);
        guard.record_sent(total);
    }
}

/// Sends a close frame and waits (bounded) for the client's reply, so the
/// client reads the code before the TCP connection goes away.
async fn close(
    sink: &mut WsSink,
    stream: &mut WsStream,
    code: u16,
    reason: &'static str,
    limit: Duration,
) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let handshake = async {
        if sink.send(Message::Close(Some(frame))).await.is_err() {
            return;
        }
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Close(_) = message {
                break;
            }
        }
    };
    if timeout(limit, handshake).await.is_err() {
        tracing::debug!(code, "close handshake timed out; dropping the socket");
    }
}
