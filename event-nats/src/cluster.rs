//! The cluster handle: connecting, the stream, state, shutdown.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use event_core::{BusConfig, Event, EventBus, EventSink, SeqStart};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::codec::bus_seq;
use crate::config::{NatsConfig, redact_url};
use crate::origin::{LocalOriginOnly, RecentIds};
use crate::publisher::Forwarder;
use crate::state::{ConnectionState, NatsHealth, StateCell, Stats};
use crate::{Error, publisher, source};

/// How many recent ids of locally originated events are remembered.
const ORIGIN_MEMORY: usize = 65_536;

/// Everything the background tasks share.
pub(crate) struct Shared {
    pub config: NatsConfig,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub stream: stream::Stream,
    pub bus: EventBus,
    pub state: Arc<StateCell>,
    pub stats: Stats,
    /// Ids of events this instance originated (recent ones).
    pub origins: Arc<RecentIds>,
    /// Ids of events delivered locally after a failed publish: if the
    /// publish did reach the stream after all, the source skips them.
    pub fallback: Arc<RecentIds>,
    /// Serialises "deliver locally after a failed publish" against "inject
    /// from the stream" for this instance's own events, so neither delivers
    /// an event the other already did.
    pub own_event_lock: Mutex<()>,
    /// The newest stream sequence injected into the bus.
    pub last_injected: watch::Sender<u64>,
    /// The same, as a bus sequence: how far the stream (the cluster's event
    /// log) holds this bus's events, for named consumers.
    pub logged: watch::Sender<u64>,
    /// Slots for concurrent replays from JetStream.
    pub replay_slots: tokio::sync::Semaphore,
    /// Per-topic retentions and watermarks (the topics bucket).
    pub topics: crate::topics::TopicRecords,
}

impl Shared {
    /// Delivers a locally produced event on this instance only: the copy
    /// published, `None` when the stream has it after all (the source
    /// already injected it).
    pub(crate) fn deliver_locally(&self, event: &Event) -> Option<Arc<Event>> {
        let _guard = self
            .own_event_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if self.origins.contains(&event.id()) {
            return None;
        }
        self.fallback.insert(event.id());
        self.origins.insert(event.id());
        self.stats.local_only();
        Some(self.bus.publish_local(event))
    }
}

struct Handle {
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        // The bus outlives the cluster: from now on it sequences locally.
        self.shared.bus.set_upstream(None);
        self.cancel.cancel();
    }
}

/// One instance's link to the cluster: the local [`EventBus`] fed from the
/// JetStream stream, and the upstream that publishes local events into it.
/// Cheap to clone.
#[derive(Clone)]
pub struct NatsCluster {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.handle.shared;
        f.debug_struct("NatsCluster")
            .field("url", &redact_url(&s.config.url))
            .field("stream", &s.config.stream)
            .field("instance_id", &s.config.instance_id)
            .field("state", &s.state.state())
            .finish()
    }
}

fn backoff(attempt: usize, max: Duration) -> Duration {
    let exp = 50u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(exp).min(max)
}

impl NatsCluster {
    /// Connects to NATS, creates or updates the stream, builds the local bus
    /// (from `bus_config`, with its sequence start taken from the stream),
    /// loads the most recent events into the bus's replay ring and starts
    /// the background tasks.
    ///
    /// `bus_config.seq_start` is ignored: with NATS, sequence numbers come
    /// from the stream. NATS must be reachable now (an error otherwise, so
    /// the host can retry or run single-instance); later outages are
    /// survived.
    pub async fn connect(config: NatsConfig, bus_config: BusConfig) -> Result<Self, Error> {
        Self::connect_on(config, bus_config, None).await
    }

    /// As [`connect`](Self::connect), with the connection to NATS (its
    /// reads, writes and reconnects, every acknowledgement and reply) and
    /// the task that publishes local events on `io`'s runtime instead of
    /// the caller's; `None` is the caller's.
    ///
    /// A host whose main runtime writes events to many connections gives
    /// the link a runtime of its own (event-server: the intake runtime), so
    /// that an awaited publish ([`EventBus::publish_acked`]) is answered as
    /// soon as JetStream acknowledges it, not once the saturated workers
    /// get to the socket: with 100,000 connections on two cores, 13 of 500
    /// publishes were answered within 2 s with the link on the main runtime
    /// (BENCHMARKS.md, scale). The task that injects the stream's events
    /// into the bus stays on the caller's runtime, with the fan-out it
    /// feeds. The link ends with `io`'s runtime: keep that runtime until
    /// [`shutdown`](Self::shutdown) returned.
    pub async fn connect_on(
        config: NatsConfig,
        bus_config: BusConfig,
        io: Option<tokio::runtime::Handle>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let state = Arc::new(StateCell::new());
        let callback_state = state.clone();
        let max_delay = config.max_reconnect_delay;
        let client = async_nats::ConnectOptions::new()
            .name(&config.instance_id)
            .connection_timeout(config.connect_timeout)
            .max_reconnects(None)
            .reconnect_delay_callback(move |attempt| backoff(attempt, max_delay))
            .event_callback(move |event| {
                let state = callback_state.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            if !state.is_connected() {
                                tracing::info!("NATS connection (re)established");
                            }
                            state.set_connected(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            if state.is_connected() {
                                tracing::warn!(
                                    "NATS connection lost; serving local events only while reconnecting"
                                );
                            }
                            state.set_connected(false);
                        }
                        other => tracing::debug!(event = %other, "NATS client event"),
                    }
                }
            })
            .connect(
                config
                    .server_urls()
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>(),
            );
        // async-nats spawns its connection task where it connects.
        let client = match &io {
            Some(io) => io
                .spawn(client)
                .await
                .map_err(|e| Error::Connect(format!("the NATS runtime stopped ({e})")))?,
            None => client.await,
        }
        .map_err(|e| Error::Connect(format!("{} ({e})", redact_url(&config.url))))?;
        state.set_connected(client.connection_state() == async_nats::connection::State::Connected);

        let js = jetstream::ContextBuilder::new()
            .timeout(config.connect_timeout)
            .ack_timeout(config.publish_ack_timeout)
            .build(client.clone());
        let stream_error = |e: &dyn std::fmt::Display| Error::Stream {
            stream: config.stream.clone(),
            message: e.to_string(),
        };
        let info = js
            .create_or_update_stream(stream_config(&config))
            .await
            .map_err(|e| stream_error(&e))?;
        let stream = js
            .get_stream(&config.stream)
            .await
            .map_err(|e| stream_error(&e))?;

        // Start early enough to fill the replay ring with recent history.
        let warm_up = config.warm_up.unwrap_or(bus_config.replay_size) as u64;
        let last = info.state.last_sequence;
        let first = info.state.first_sequence.max(1);
        let start = last.saturating_sub(warm_up).saturating_add(1).max(first);
        // The ring then knows it holds everything after stream seq `start - 1`
        // (older cursors are expired there and go to JetStream), and local-only
        // events before the first injected one fit below `bus_seq(start)`.
        let bus = EventBus::new(BusConfig {
            seq_start: SeqStart::At(bus_seq(start.saturating_sub(1)).saturating_add(1)),
            ..bus_config
        });

        let stats = Stats::new(&state);
        let shared = Arc::new(Shared {
            client,
            js,
            stream,
            bus: bus.clone(),
            state,
            stats,
            origins: Arc::new(RecentIds::new(ORIGIN_MEMORY)),
            fallback: Arc::new(RecentIds::new(ORIGIN_MEMORY)),
            own_event_lock: Mutex::new(()),
            last_injected: watch::channel(start.saturating_sub(1)).0,
            logged: watch::channel(bus_seq(start.saturating_sub(1))).0,
            replay_slots: tokio::sync::Semaphore::new(config.max_concurrent_replays),
            topics: crate::topics::TopicRecords::default(),
            config,
        });
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(shared.config.publish_queue);
        let publishing = publisher::run(shared.clone(), rx, cancel.clone());
        let tasks = vec![
            tokio::spawn(source::run(shared.clone(), start, cancel.clone())),
            match &io {
                Some(io) => io.spawn(publishing),
                None => tokio::spawn(publishing),
            },
        ];
        let cluster = NatsCluster {
            handle: Arc::new(Handle {
                shared: shared.clone(),
                cancel,
                tasks: Mutex::new(tasks),
            }),
        };

        if last >= start {
            let caught_up = cluster.wait_for_stream_seq(last, shared.config.replay_timeout);
            if !caught_up.await {
                tracing::warn!(
                    stream = %shared.config.stream,
                    "warm-up did not finish in time; the replay ring starts partly empty"
                );
            }
        }
        bus.set_upstream(Some(Arc::new(Forwarder::new(shared.clone(), tx))));
        tracing::info!(
            url = %redact_url(&shared.config.url),
            stream = %shared.config.stream,
            instance = %shared.config.instance_id,
            first_stream_seq = start,
            "joined the event cluster"
        );
        Ok(cluster)
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.handle.shared
    }

    /// The local bus. Hand it to producers and transports as usual: its
    /// `publish` goes through JetStream, its subscribers see the cluster's
    /// events in the cluster's order.
    pub fn bus(&self) -> &EventBus {
        &self.handle.shared.bus
    }

    /// The configuration in use.
    pub fn config(&self) -> &NatsConfig {
        &self.handle.shared.config
    }

    /// Connected or not, right now.
    pub fn state(&self) -> ConnectionState {
        self.handle.shared.state.state()
    }

    /// A receiver that sees every change of [`state`](Self::state).
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.handle.shared.state.subscribe()
    }

    /// The newest stream sequence injected into the local bus.
    pub fn last_stream_seq(&self) -> u64 {
        *self.handle.shared.last_injected.borrow()
    }

    /// Waits until the bus has every stream event up to `stream_seq`;
    /// `false` on timeout.
    pub async fn wait_for_stream_seq(&self, stream_seq: u64, timeout: Duration) -> bool {
        let mut rx = self.handle.shared.last_injected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s >= stream_seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The state for `/health`.
    pub fn health(&self) -> NatsHealth {
        let s = &self.handle.shared;
        NatsHealth {
            status: s.state.state(),
            instance_id: s.config.instance_id.clone(),
            stream: s.config.stream.clone(),
            consumer_running: s.state.source_running(),
            last_stream_seq: self.last_stream_seq(),
            published: s.stats.published.load(Ordering::Relaxed),
            local_only: s.stats.local_only.load(Ordering::Relaxed),
            received: s.stats.received.load(Ordering::Relaxed),
            skipped: s.stats.skipped.load(Ordering::Relaxed),
            reconnects: s.state.reconnects(),
        }
    }

    /// Whether this instance originated `event` (among the last 65,536 of
    /// its own events).
    pub fn originated_here(&self, event: &Event) -> bool {
        self.handle.shared.origins.contains(&event.id())
    }

    /// Wraps a sink so it receives only the events this instance
    /// originated. Every instance sees every event; use this for side
    /// effects that must happen once per event in the whole cluster, such as
    /// enqueueing webhook deliveries.
    pub fn local_origin_only(&self, sink: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
        Arc::new(LocalOriginOnly::new(
            sink,
            self.handle.shared.origins.clone(),
        ))
    }

    /// Wraps a sink so it receives only the events this instance delivered
    /// locally only (NATS unreachable, see the crate docs): events that
    /// never entered the stream, so a [`WorkQueue`](crate::WorkQueue) on
    /// the stream never sees them. With a work queue for a once-per-event
    /// effect, register the same effect's sink behind this wrapper to keep
    /// it for the events of an outage too.
    pub fn local_only_events(&self, sink: Arc<dyn EventSink>) -> Arc<dyn EventSink> {
        Arc::new(LocalOriginOnly::new(
            sink,
            self.handle.shared.fallback.clone(),
        ))
    }

    /// Leaves the cluster: the bus goes back to sequencing locally, queued
    /// events are published (or, if that fails, delivered locally) within
    /// `deadline`, the tasks stop and the connection is flushed.
    pub async fn shutdown(&self, deadline: Duration) {
        let shared = &self.handle.shared;
        shared.bus.set_upstream(None);
        self.handle.cancel.cancel();
        let tasks =
            std::mem::take(&mut *self.handle.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let until = tokio::time::Instant::now() + deadline;
        for mut task in tasks {
            if tokio::time::timeout_at(until, &mut task).await.is_err() {
                task.abort();
            }
        }
        let _ = tokio::time::timeout_at(until, shared.client.flush()).await;
    }
}

/// The stream configuration for `config`.
pub(crate) fn stream_config(config: &NatsConfig) -> stream::Config {
    stream::Config {
        name: config.stream.clone(),
        description: Some("matric real-time events".to_owned()),
        subjects: vec![config.stream_subjects()],
        max_age: config.retention.max_age,
        max_messages: config.retention.max_messages,
        max_bytes: config.retention.max_bytes,
        discard: stream::DiscardPolicy::Old,
        retention: stream::RetentionPolicy::Limits,
        storage: if config.memory_storage {
            stream::StorageType::Memory
        } else {
            stream::StorageType::File
        },
        num_replicas: config.replicas.max(1),
        duplicate_window: config.duplicate_window,
        allow_direct: true,
        ..Default::default()
    }
}

/// Deletes the configured stream and everything in it (tests,
/// decommissioning). `Ok(false)` when it did not exist.
pub async fn delete_stream(config: &NatsConfig) -> Result<bool, Error> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(config.connect_timeout)
        .connect(config.server_urls())
        .await
        .map_err(|e| Error::Connect(format!("{} ({e})", redact_url(&config.url))))?;
    let js = jetstream::new(client);
    match js.delete_stream(&config.stream).await {
        Ok(status) => Ok(status.success),
        Err(e) if e.to_string().contains("not found") => Ok(false),
        Err(e) => Err(Error::Stream {
            stream: config.stream.clone(),
            message: e.to_string(),
        }),
    }
}
