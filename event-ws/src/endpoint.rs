//! The endpoint handle, its router and the upgrade handshake.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use event_core::metrics::TransportMetrics;
use event_core::{
    Authenticator, CloseSignal, ConnectionRegistry, Consumers, EventBus, EventFilter, EventSink,
    FanoutHub, FilterParams, OutboxLimits, Principal, QueueSnapshot, Transport,
};
use http::HeaderValue;
use http::request::Parts;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::WsConfig;
use crate::connection::{self, ConnectionContext};
use crate::error::WsError;
use crate::handshake::Upgrade;

/// The WebSocket endpoint `/api/v1/ws`: an [`EventSink`] for the bus and a
/// [`Router`] for the host. Cheap to clone; clones share connections.
///
/// Configure it (`with_*`) before calling [`router`](Self::router).
#[derive(Clone)]
pub struct WsEndpoint {
    pub(crate) bus: EventBus,
    pub(crate) registry: ConnectionRegistry,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) snapshot: Option<Arc<dyn QueueSnapshot>>,
    /// Named consumers and groups (`subscribe` with `consumer`/`group`).
    pub(crate) consumers: Option<Consumers>,
    /// Cancelled to close every connection with 1001 and refuse new ones.
    pub(crate) stop: CancellationToken,
    /// Closed when `stop` is cancelled; what connections wait on (a poll
    /// of it is an atomic load, where a token's takes its lock).
    pub(crate) stopping: Arc<CloseSignal>,
    /// Whether the task that closes `stopping` on `stop` runs already.
    stop_watched: Arc<AtomicBool>,
    pub(crate) config: Arc<WsConfig>,
    pub(crate) hub: FanoutHub,
    pub(crate) metrics: TransportMetrics,
    /// Admitted connections (including ones still completing the upgrade).
    pub(crate) active: Arc<watch::Sender<usize>>,
    /// The most bytes one connection has had waiting to be written.
    peak_queued: Arc<AtomicUsize>,
    /// Echo mode ([`crate::echo_router`]): no initial status, every text
    /// and binary message is sent back instead of being interpreted.
    pub(crate) echo: bool,
}

impl fmt::Debug for WsEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsEndpoint")
            .field("path", &self.config.path)
            .field("connections", &self.connections())
            .field("queue_snapshot", &self.snapshot.is_some())
            .finish()
    }
}

impl WsEndpoint {
    /// An endpoint on `bus`, registering its connections in `registry` and
    /// admitting clients through `auth`.
    ///
    /// Builds its metric instruments from the global meter, so install the
    /// meter provider first.
    pub fn new(
        bus: EventBus,
        registry: ConnectionRegistry,
        auth: Arc<dyn Authenticator>,
        config: WsConfig,
    ) -> Self {
        crate::frame::register_render_key();
        if config.compression {
            crate::deflate::register_render_key();
        }
        let metrics = TransportMetrics::new(Transport::WebSocket)
            .with_connection_limit(config.max_connections);
        WsEndpoint {
            bus,
            registry,
            auth,
            snapshot: None,
            consumers: None,
            stop: CancellationToken::new(),
            stopping: Arc::new(CloseSignal::new()),
            stop_watched: Arc::new(AtomicBool::new(false)),
            config: Arc::new(config),
            hub: FanoutHub::new("ws"),
            metrics,
            active: Arc::new(watch::Sender::new(0)),
            peak_queued: Arc::new(AtomicUsize::new(0)),
            echo: false,
        }
    }

    /// The same endpoint in echo mode (for conformance tests only).
    pub(crate) fn into_echo(mut self) -> Self {
        self.echo = true;
        self
    }

    /// Serves `subscribe` messages with `consumer` or `group` from
    /// `consumers`; without it they are answered with an error
    /// (`consumers_unavailable`).
    pub fn with_consumers(mut self, consumers: Consumers) -> Self {
        self.consumers = Some(consumers);
        self
    }

    /// Uses `provider` for the `QueueStatus` sent on connect and on
    /// `refresh` (otherwise the last published one is used).
    pub fn with_queue_snapshot(mut self, provider: Arc<dyn QueueSnapshot>) -> Self {
        self.snapshot = Some(provider);
        self
    }

    /// Closes every connection with 1001 when `token` is cancelled and
    /// refuses new ones (in addition to `registry.shutdown()`, which does the
    /// same). The endpoint watches a child of `token`, so
    /// [`shutdown`](Self::shutdown) never cancels the host's token.
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.stop = token.child_token();
        // A signal of this token's own: clones made before keep theirs.
        self.stopping = Arc::new(CloseSignal::new());
        self.stop_watched = Arc::new(AtomicBool::new(false));
        self
    }

    /// Starts (once) the task that closes every connection when the stop
    /// token is cancelled. Called from the first upgrade, inside the
    /// runtime.
    fn watch_stop(&self) {
        if self.stop_watched.swap(true, Ordering::AcqRel) {
            return;
        }
        let (stop, stopping) = (self.stop.clone(), self.stopping.clone());
        tokio::spawn(async move {
            stop.cancelled().await;
            stopping.close();
        });
    }

    /// Closes every connection with 1001, refuses new ones, and waits up to
    /// `deadline` for the last one to finish. Returns whether all did.
    ///
    /// Each close handshake is itself bounded by
    /// [`WsConfig::close_timeout`], so a deadline above it always suffices.
    pub async fn shutdown(&self, deadline: Duration) -> bool {
        self.stop.cancel();
        self.stopping.close();
        let mut open = self.active.subscribe();
        tokio::time::timeout(deadline, open.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The sink to register on the host's `SinkRunner`: the fan-out hub that
    /// feeds every connection's outbox.
    pub fn sink(&self) -> Arc<dyn EventSink> {
        Arc::new(self.hub.clone())
    }

    /// The fan-out hub (subscriber count, delivered/dropped counters).
    pub fn hub(&self) -> &FanoutHub {
        &self.hub
    }

    /// The settings.
    pub fn config(&self) -> &WsConfig {
        &self.config
    }

    /// Open connections of this endpoint.
    pub fn connections(&self) -> usize {
        *self.active.borrow()
    }

    /// Watches the number of open connections (e.g. to wait for the last
    /// one to close during shutdown).
    pub fn watch_connections(&self) -> watch::Receiver<usize> {
        self.active.subscribe()
    }

    /// The most bytes any one connection of this endpoint has had waiting
    /// to be written at once (events taken from its outbox and replies to
    /// its requests), since the endpoint was created. Events taken at once
    /// are at most twice the outbox budget ([`WsConfig::outbox`]`.max_bytes`:
    /// the queue and the state coalesced beside it), and replies have a
    /// budget of that size of their own, whatever the client sends without
    /// reading (a client over it is closed with 4008).
    pub fn peak_queued_bytes(&self) -> usize {
        self.peak_queued.load(Ordering::Relaxed)
    }

    /// Records that a connection has `bytes` waiting to be written.
    pub(crate) fn note_queued(&self, bytes: usize) {
        if bytes > self.peak_queued.load(Ordering::Relaxed) {
            self.peak_queued.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    /// Whether new connections are refused because of shutdown.
    pub fn is_shutting_down(&self) -> bool {
        self.stop.is_cancelled() || self.registry.is_shutting_down()
    }

    /// The router serving `GET <config.path>` (`/api/v1/ws`). Merge it into
    /// the host's router; serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so connections
    /// know their peer address.
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route(&self.config.path, get(upgrade))
            .with_state(Arc::new(self.clone()))
    }

    /// Takes one connection slot, or says why not.
    fn admit_slot(&self) -> Result<Slot, WsError> {
        let max = self.config.max_connections;
        let taken = self.active.send_if_modified(|n| {
            if *n < max {
                *n += 1;
                true
            } else {
                false
            }
        });
        if taken {
            Ok(Slot {
                active: self.active.clone(),
            })
        } else {
            Err(WsError::OverCapacity(max))
        }
    }

    async fn handshake(self: &Arc<Self>, parts: &mut Parts) -> Result<Response, WsError> {
        if self.is_shutting_down() {
            return Err(WsError::ShuttingDown);
        }
        let upgrade = Upgrade::from_request(parts)?;
        let origin = parts
            .headers
            .get(http::header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if !self.config.origin_allowed(origin) {
            return Err(WsError::Forbidden("origin not allowed".to_owned()));
        }
        let query = Query::<ConnectQuery>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .map_err(|e| WsError::InvalidFilter(e.body_text()))?;
        let credentials = crate::auth::credentials(&parts.headers, query.token.as_deref());
        let principal = self.auth.authenticate(&credentials).await?;
        let filter = query.filter(&principal)?;
        let (limits, max_rate) = query.stream_options(&self.config, self.bus.max_event_bytes())?;
        let consumer = query.consumer_subscribe()?.map(Box::new);
        let slot = self.admit_slot()?;

        let remote = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        // A browser that offered `bearer.<token>` fails the handshake unless
        // the server picks one of its protocols, so echo it back.
        let bearer_protocol = crate::auth::bearer_protocol(&parts.headers)
            .and_then(|(protocol, _)| HeaderValue::from_str(protocol).ok());
        let deflate = self
            .config
            .compression
            .then(|| crate::extensions::negotiate(&parts.headers))
            .flatten();
        let ctx = ConnectionContext {
            endpoint: self.clone(),
            principal,
            filter,
            remote,
            slot,
            deflate,
            limits,
            max_rate,
            consumer,
        };
        self.watch_stop();
        let (response, on_upgrade) =
            upgrade.accept(bearer_protocol, deflate.map(|agreed| agreed.response()));
        // The connection is handed over once hyper has sent the 101.
        tokio::spawn(connection_task(Box::new(ctx), on_upgrade));
        Ok(response)
    }
}

/// The task of one upgraded connection, for its whole life.
///
/// `ctx` is boxed and freed before the connection runs (by
/// [`connection::serve`]), and the upgrade's result is taken apart before the
/// connection's future is awaited: what the task captures stays in it for
/// the connection's life, however early it is used up (see the size test).
async fn connection_task(ctx: Box<ConnectionContext>, on_upgrade: OnUpgrade) {
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => {
            tracing::debug!(%error, "websocket upgrade failed");
            return;
        }
    };
    connection::serve(ctx, TokioIo::new(upgraded)).await;
}

/// The upgrade request's query: the token, and the filters the connection
/// keeps for its life (those of the SSE endpoint, `filter=` included).
#[derive(Deserialize)]
struct ConnectQuery {
    token: Option<String>,
    events: Option<String>,
    types: Option<String>,
    entity_id: Option<String>,
    memory: Option<String>,
    topics: Option<String>,
    filter: Option<String>,
    max_rate: Option<String>,
    buffer_max_bytes: Option<String>,
    consumer: Option<String>,
    group: Option<String>,
    ack: Option<String>,
    ack_wait: Option<String>,
    start: Option<String>,
}

impl ConnectQuery {
    /// A consumer the upgrade names (`consumer=` or `group=`, with `ack`,
    /// `ack_wait`, `start`): the `subscribe` the connection starts with, as
    /// if the client had sent it first (how a connection slot opens a
    /// consumer). Checked here, so a bad one refuses the upgrade.
    fn consumer_subscribe(&self) -> Result<Option<crate::protocol::Subscribe>, WsError> {
        let bad =
            |param: &'static str, message: String| WsError::InvalidParameter { param, message };
        let (key, name) = match (&self.consumer, &self.group) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "group",
                    "give either `consumer` or `group`, not both".to_owned(),
                ));
            }
            (Some(n), None) => ("consumer", n),
            (None, Some(n)) => ("group", n),
            (None, None) => {
                return match [
                    ("ack", &self.ack),
                    ("ack_wait", &self.ack_wait),
                    ("start", &self.start),
                ]
                .into_iter()
                .find(|(_, v)| v.is_some())
                {
                    Some((param, _)) => Err(bad(
                        param,
                        "applies only with `consumer` or `group`".to_owned(),
                    )),
                    None => Ok(None),
                };
            }
        };
        let mut message = serde_json::json!({"type": "subscribe", key: name});
        if let Some(ack) = &self.ack {
            message["ack"] = ack.as_str().into();
        }
        if let Some(start) = &self.start {
            message["start"] = start.as_str().into();
        }
        if let Some(wait) = &self.ack_wait {
            let secs: u64 = wait
                .trim()
                .parse()
                .map_err(|_| bad("ack_wait", format!("{wait:?} is not whole seconds")))?;
            message["ack_wait"] = secs.into();
        }
        match crate::protocol::ClientMessage::parse(&message.to_string()) {
            Some(crate::protocol::ClientMessage::Subscribe(request)) => Ok(Some(request)),
            Some(crate::protocol::ClientMessage::Refused(refusal)) => {
                Err(bad(key, refusal.message))
            }
            _ => Err(bad(key, "not a consumer subscription".to_owned())),
        }
    }

    /// The connection's outbox limits (`buffer_max_bytes=` may lower the
    /// byte budget) and its rate limit (`max_rate=`, else the server's;
    /// `subscribe` may change it later).
    fn stream_options(
        &self,
        config: &crate::WsConfig,
        max_event_bytes: usize,
    ) -> Result<(OutboxLimits, Option<NonZeroU32>), WsError> {
        let requested = match &self.buffer_max_bytes {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| WsError::InvalidParameter {
                        param: "buffer_max_bytes",
                        message: format!("{v:?} is not a whole number of bytes"),
                    })?,
            ),
        };
        let limits = config
            .outbox
            .with_client_budget(requested, max_event_bytes)
            .map_err(|message| WsError::InvalidParameter {
                param: "buffer_max_bytes",
                message,
            })?;
        let max_rate = match &self.max_rate {
            None => config.max_rate,
            Some(raw) => event_core::pace::parse_max_rate(raw).map_err(|message| {
                WsError::InvalidParameter {
                    param: "max_rate",
                    message,
                }
            })?,
        };
        Ok((limits, max_rate))
    }

    /// The connection's filter; `403` for a memory `principal` may not see.
    fn filter(&self, principal: &Principal) -> Result<EventFilter, WsError> {
        let filter = EventFilter::parse_with_json(
            FilterParams {
                events: self.events.as_deref(),
                types: self.types.as_deref(),
                entity_id: self.entity_id.as_deref(),
                memory: self.memory.as_deref(),
                topics: self.topics.as_deref(),
            },
            self.filter.as_deref(),
        )
        .map_err(|e| WsError::InvalidFilter(e.to_string()))?;
        if let Some(memory) = filter.memory()
            && !principal.memories.allows(memory)
        {
            return Err(WsError::Forbidden(format!(
                "no access to memory {memory:?}"
            )));
        }
        Ok(filter)
    }
}

/// One admitted connection's place under `max_connections`; released on
/// drop, including when the upgrade never completes.
pub(crate) struct Slot {
    active: Arc<watch::Sender<usize>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}

async fn upgrade(State(endpoint): State<Arc<WsEndpoint>>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    match endpoint.handshake(&mut parts).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%error, status = %error.status(), "websocket upgrade refused");
            error.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic)]

    use super::*;

    /// The size of what `f` returns (its future, for an `async`-style
    /// function), without calling it.
    fn returned_size<A, B, R>(_: fn(A, B) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An open WebSocket's task is most of what an idle connection costs:
    /// its state machine, its outbox and two timers. It once kept the
    /// upgrade's context (~400 bytes) and the consumer request (~130 bytes,
    /// three times over) for the connection's life: 1,952 bytes in all.
    #[test]
    fn an_idle_connection_task_stays_small() {
        let size = returned_size(connection_task);
        println!("connection task: {size} bytes");
        assert!(size <= 1_300, "the connection task grew to {size} bytes");
    }
}
