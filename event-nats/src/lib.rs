//! # event-nats
//!
//! Several event-server instances acting as one, over a NATS JetStream
//! stream: a client connected to any instance sees every instance's events,
//! in the same order, under the same ids, and can reconnect to another
//! instance with its `Last-Event-ID` and resume where it was.
//!
//! ## Model: the stream is the sequencer
//!
//! Each instance has its usual in-process [`EventBus`](event_core::EventBus). With NATS enabled,
//! the bus gets an [`Upstream`](event_core::Upstream) (the additive
//! event-core hook this crate uses): `EventBus::publish` no longer numbers
//! the event itself but hands it to the publisher, which publishes it to the
//! stream, subject `matric.events.<dot name>` (e.g.
//! `matric.events.job.progress`), payload the envelope JSON, headers
//! `Nats-Msg-Id: <event id>` and `Matric-Origin: <instance id>`.
//!
//! **Acknowledged publishing and deduplication.** `EventBus::publish_acked`
//! (the host's publish API) goes through the same queue and batches but
//! resolves with JetStream's acknowledgement: the bus sequence the stream
//! gave each event, or, when the stream already had the message id within
//! its duplicate window (`NatsConfig::duplicate_window`), the original's
//! sequence and id with `duplicate: true`. A publisher may name the message
//! id itself (`event_core::DedupKey`, e.g. derived from an
//! `Idempotency-Key`): then `Nats-Msg-Id` is that id, and the event id and
//! a digest of the request travel as [`EVENT_ID_HEADER`] and
//! [`REQUEST_HEADER`] (read back for the original of a repeat). Such awaited
//! events are never delivered locally only: during an outage they are
//! refused, and their publisher answers an error instead.
//!
//! Every instance, **the origin included**, runs one ordered consumer on
//! the stream and injects each event into its bus with
//! `EventBus::publish_event`, keeping the original id and using the stream
//! sequence as the bus sequence. So every bus holds the same events, in
//! stream order, under the same ids and sequence numbers; an event reaches
//! each bus exactly once (there is no separate local path to duplicate it)
//! and injection never publishes again (no echo loop).
//!
//! ```text
//!  producer ─► bus.publish ─► Upstream ─► JetStream stream ─┬─► source A ─► bus A ─► sinks/clients of A
//!  (on A)      (seq = 0)      (queue,       (assigns the     ├─► source B ─► bus B ─► sinks/clients of B
//!                              never blocks) sequence)       └─► …
//! ```
//!
//! **Sequence numbers.** The bus sequence of the event at stream sequence
//! `s` is `s × SEQ_STRIDE` (1,000,000) on every instance, so SSE `v1` ids
//! look like `42000000`. The numbers in between are for events an instance
//! delivers locally only during a NATS outage (below): they slot in without
//! breaking the bus's total order, and any id maps back to its place in the
//! stream with [`stream_seq`]. UUID ids are the producer's original UUIDv7s.
//!
//! **Startup.** [`NatsCluster::connect`] creates or updates the stream,
//! builds the bus with its first sequence taken from the stream, and loads
//! the most recent events (the ring's size, or `NatsConfig::warm_up`) into
//! the replay ring before returning, so a restarted instance can serve
//! resuming clients at once. Register sinks *after* `connect` (they see only
//! new events, not the warm-up). [`NatsCluster::connect_on`] puts the link
//! itself (the NATS connection and the publishing task) on a runtime of the
//! host's choosing, so that acknowledgements are not read behind a
//! saturated fan-out.
//!
//! **Replay.** [`NatsCluster::replay_since`] serves a cursor from the local
//! ring, or from JetStream when it is older than the ring (as far as the
//! stream's retention and `NatsConfig::max_replay` allow); otherwise it
//! returns an error for which the SSE layer sends `resync_required`.
//! `NatsCluster` also implements event-core's
//! [`ReplaySource`](event_core::ReplaySource), so an SSE endpoint asks
//! JetStream by itself whenever its ring misses
//! (`SseEndpoint::with_replay_source(Arc::new(cluster.clone()))`).
//!
//! ## The stream as the event log, shared consumer offsets
//!
//! The stream is also the cluster's event log: [`NatsCluster::log`] gives
//! it as event-core's [`EventLog`](event_core::EventLog)
//! ([`JetStreamLog`]: read by sequence, by time and by id, bounds, a
//! bounded topics listing; the stream applies its own retention, and
//! appending does nothing because every event is in the stream before any
//! bus has it, so never tap a `LogWriter` onto it). Named consumers read
//! it through `Consumers::with_mark(bus, log, offsets, config,
//! cluster.log_mark())`, with their committed offsets in a JetStream
//! key-value bucket ([`NatsCluster::offsets`], [`KvOffsets`],
//! `NatsConfig::consumers_bucket`), so a consumer that reconnects to
//! another instance resumes right after its offset.
//!
//! **Per-topic retention.** A topic's subjects are
//! `<prefix>.*.*.*.<topic>` ([`NatsConfig::topic_subjects`]), so one
//! topic's oldest events can be purged from the stream without touching
//! the others. [`JetStreamLog`] keeps each topic's bounds (`max_events`,
//! `max_age`, `max_bytes`) and its pruning watermark in a
//! key-value bucket every instance shares ([`NatsConfig::topics_bucket`],
//! at most [`MAX_TOPIC_RECORDS`] records), a [`TopicPruner`]
//! ([`JetStreamLog::start_pruning`]) applies them, and every replay from
//! the stream (the `ReplaySource` impl, named consumers) refuses a reader
//! whose filter can match a topic pruned after its cursor, as the
//! single-instance log does. The watermark is stored before each purge,
//! so a reader that checks it after reading never misses a purge silently.
//!
//! ## NATS outages
//!
//! The client reconnects on its own, with exponential backoff (50 ms up to
//! `NatsConfig::max_reconnect_delay`), forever. Meanwhile:
//!
//! * the instance keeps serving: events produced locally are delivered to
//!   its own clients and sinks ("local-only", bus sequences between
//!   two stream sequences) and counted in `matric_nats_published{result="local_only"}`:
//!   at once when the connection has been down for longer than
//!   `NatsConfig::reconnect_grace` (2 s), and those of the first 2 s when
//!   the grace runs out. The grace covers a failover: with several NATS
//!   servers in the URL, the client is on another one within about 100 ms
//!   and those events go through the stream after all;
//! * JetStream answering "no stream found" while connected (a replicated
//!   stream electing a new leader, 4 to 9 s) is retried for about 13 s
//!   (`NatsConfig::publish_retries`) before the events are delivered
//!   locally only. Between retries the first refused event is offered again
//!   every 250 ms, so the events go through about as soon as the new leader
//!   takes publishes, not at the next scheduled retry;
//! * [`NatsCluster::state`] / [`NatsCluster::health`] report
//!   `disconnected`, and the gauge `matric_nats_connected` is 0;
//! * after reconnecting, the consumer resumes from the next stream sequence
//!   it had not injected, so events other instances published through the
//!   stream meanwhile arrive late but complete and in order.
//!
//! **What remote clients miss:** the local-only events. They never enter
//! the stream, so clients of *other* instances never receive them, and a
//! client that resumes on another instance does not get them replayed.
//! Clients of the producing instance get them normally. An event whose
//! publish is in flight when the connection drops is retried (deduplicated
//! by `Nats-Msg-Id`) and then delivered locally only; if it did reach the
//! stream after all, the origin skips its copy and other instances get it.
//! Also, NATS must be reachable when an instance starts, and at most
//! `SEQ_STRIDE - 1` local-only events fit between two stream events (beyond
//! that, later stream events are skipped and counted in
//! `matric_nats_skipped{reason="out_of_order"}`). A gap in the stream (its
//! retention removed events before this instance read them) is marked in
//! the replay ring, so cursors before it resync instead of skipping it.
//!
//! ## Consumer groups across instances
//!
//! [`JetStreamGroups`] is event-core's `GroupBackend` on the cluster's
//! stream: give it to the host's named consumers
//! (`Consumers::with_group_backend(Arc::new(JetStreamGroups::new(&cluster)))`)
//! and a consumer group spans the instances. Each event's subject carries
//! its partition, a hash of its entity ([`partition_of`], among
//! [`NatsConfig::group_partitions`]), and each group is one JetStream
//! durable pull consumer per partition ([`partition_consumer_name`]:
//! `grp_<name>_p<n>`) with explicit acks, the group's `ack_wait` and
//! `max_ack_pending`. The instances with members share the partitions in
//! proportion to their members, agreeing through leases in a key-value
//! bucket ([`NatsConfig::groups_bucket`]; renewed every [`OWNER_RENEW`],
//! taken over after [`OWNER_LEASE`], rebalanced every [`OWNER_BEAT`]), so one partition, and so one entity,
//! is pulled by one instance at a time; each instance pulls its partitions
//! in bounded batches that expire after [`JetStreamGroups::pull_wait`] and
//! hands each event to one local member by the entity hash. One entity's
//! events therefore reach one member in stream order, wherever the members
//! are (a rebalance aside). JetStream redelivers at once what a leaving
//! member gave back (nak) and after `ack_wait` what a crashed instance
//! held. Acks that reach an instance not holding the events are forwarded
//! over core NATS to the others. The crate's `tests/groups.rs`
//! runs these cases against a real NATS.
//!
//! ## Deployment: N instances behind a load balancer
//!
//! ```text
//!                    ┌──────────── load balancer (WS + SSE, no stickiness needed) ───────────┐
//!                    ▼                               ▼                               ▼
//!              event-server A                 event-server B                 event-server C
//!                    │ NATS_URL                      │                               │
//!                    └──────────► NATS JetStream (stream MATRIC_EVENTS) ◄────────────┘
//!                    └──────────► PostgreSQL (webhook registrations + delivery queue) ◄┘
//! ```
//!
//! * Every instance gets the same `NATS_URL` (every NATS node,
//!   comma-separated; and `NATS_STREAM`, `NATS_SUBJECT_PREFIX`,
//!   `NATS_REPLICAS` if changed) and a distinct `NATS_INSTANCE_ID`
//!   (a random one by default); see [`NatsConfig::from_env`]. The
//!   repository's `docs/cluster.md` has the failure drills and sizing.
//! * The load balancer needs no sticky sessions: any instance can resume
//!   any client. Size the stream's retention (`NatsConfig::retention`,
//!   default 24 h / 1 M events / 1 GiB) for the longest disconnection after
//!   which clients should still resume rather than resync.
//! * Webhooks: all instances share the PostgreSQL webhook store and delivery
//!   queue, whose claiming gives each delivery to exactly one instance.
//!   Every instance sees every event, so enqueue each event once: derive
//!   the deliveries through a [`WorkQueue`] ([`NatsCluster::work_queue`]:
//!   one durable consumer all instances share, each event handled by one
//!   live instance and acknowledged once its rows are committed, handed to
//!   another when that instance dies first), and keep the webhook sink only
//!   for the events delivered locally during an outage
//!   ([`NatsCluster::local_only_events`]). The simpler
//!   [`NatsCluster::local_origin_only`] (only the instance where the event
//!   was produced enqueues it) loses the deliveries of an event whose origin
//!   crashes between publishing and enqueueing.
//! * Sinks that fall behind the bus catch up from the stream: give the
//!   host's `SinkRunner` the cluster as its catch-up source
//!   (`runner.set_catch_up(Arc::new(cluster.clone()))`).
//! * With the reference host `event-server`: build it with
//!   `--features nats,postgres` and start every instance with the same
//!   `NATS_URL` (and `NATS_STREAM` / `NATS_SUBJECT_PREFIX`, or the flags
//!   `--nats-stream` / `--nats-subject-prefix`) and the same PostgreSQL
//!   `DATABASE_URL`. It does the wiring below: webhook deliveries through
//!   the work queue `webhooks`, SSE replay and sink catch-up from
//!   JetStream, `nats` in `/health`.
//! * `/health` should include [`NatsCluster::health`]; the metrics
//!   `matric_nats_connected`, `matric_nats_published{result}`,
//!   `matric_nats_received` and `matric_nats_skipped{reason}` are recorded
//!   through the `opentelemetry` API like the other crates'.
//! * Named consumers' offsets live in the key-value bucket
//!   `MATRIC_CONSUMERS` (`NATS_CONSUMERS_BUCKET`), created with the
//!   stream's replicas; every instance must name the same bucket.
//!
//! ## Wiring it into a host
//!
//! Behind a cargo feature (`nats`) and `NATS_URL`:
//!
//! 1. `NatsConfig::from_env()?`; when `Some`, build the bus with
//!    [`NatsCluster::connect`]`(config, bus_config)` and use
//!    `cluster.bus()` everywhere a bus is needed; when `None`,
//!    `EventBus::new(bus_config)` as before.
//! 2. Register sinks on that bus *after* `connect`, with the cluster as the
//!    runner's catch-up source; derive webhook deliveries through a
//!    [`WorkQueue`] and wrap the webhook sink in
//!    [`NatsCluster::local_only_events`].
//! 3. SSE replay: `sse.with_replay_source(Arc::new(cluster.clone()))`: when
//!    the ring cannot serve a `Last-Event-ID`, the endpoint replays from
//!    JetStream (the `ReplaySource` impl), else sends `resync_required`.
//!    Other transports: subscribe first, then [`NatsCluster::replay_since`];
//!    `Ok(events)` → send them, then live events with a higher `seq`;
//!    `Err(_)` → `resync_required`.
//! 4. `/health`: add `cluster.health()` (serializes as
//!    `{"status":"connected",…}`); the instance stays healthy while
//!    disconnected (it still serves its local events), so report it as a
//!    degraded component rather than failing the check.
//! 5. Shutdown: `cluster.shutdown(deadline)` after the transports stopped
//!    producing (and before the runtime given to
//!    [`NatsCluster::connect_on`], if any, is dropped).
//!
//! `EventBus::publish` returns the event with `seq() == 0` under NATS (the
//! stream numbers it a moment later); its `id()` is final. A publisher that
//! must know the stream took the event awaits `EventBus::publish_acked`.
//!
//! ## Example
//!
//! ```
//! use std::time::Duration;
//! use event_core::{BusConfig, JobQueued, Received};
//! use event_nats::{NatsCluster, NatsConfig};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), event_nats::Error> {
//! // In the host: `let Some(config) = NatsConfig::from_env()? else { /* single instance */ };`
//! let Ok(url) = std::env::var("TEST_NATS_URL") else { return Ok(()) }; // doc test needs NATS
//! let config = NatsConfig {
//!     stream: format!("DOC_{}", uuid::Uuid::new_v4().simple()),
//!     subject_prefix: format!("doc.{}", uuid::Uuid::new_v4().simple()),
//!     ..NatsConfig::new(url)
//! };
//! let cluster = NatsCluster::connect(config.clone(), BusConfig::default()).await?;
//! let bus = cluster.bus().clone(); // give this bus to producers and transports
//! let mut sub = bus.subscribe();
//!
//! let sent = bus.publish(JobQueued { job_id: uuid::Uuid::now_v7(), job_type: "Embedding".into(), note_id: None });
//! assert_eq!(sent.seq(), 0); // numbered by the stream, not yet
//! let Ok(Received::Event(ev)) = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await else {
//!     panic!("the event did not come back from the stream");
//! };
//! assert_eq!(ev.id(), sent.id());
//! assert_eq!(ev.seq(), event_nats::bus_seq(1)); // stream sequence 1
//! assert_eq!(cluster.health().status.as_str(), "connected");
//!
//! cluster.shutdown(Duration::from_secs(2)).await;
//! event_nats::delete_stream(&config).await?;
//! # Ok(()) }
//! ```
//!
//! ## Feature `testing`
//!
//! Off by default. Enables `event_nats::testing`: test-stream set-up and tear-down,
//! `TEST_NATS_URL` gating and a private `nats-server` process, for tests
//! against a real NATS (this crate's and the host's cluster tests).

mod bucket;
mod cluster;
mod codec;
mod config;
mod error;
mod groups;
mod log;
mod offsets;
mod origin;
mod publisher;
mod relay;
mod replay;
mod source;
mod state;
#[cfg(feature = "testing")]
pub mod testing;
mod topics;
mod work;

pub use cluster::{NatsCluster, delete_stream};
pub use codec::{EVENT_ID_HEADER, ORIGIN_HEADER, REQUEST_HEADER, SEQ_STRIDE, bus_seq, stream_seq};
pub use config::{
    DEFAULT_CONSUMERS_BUCKET, DEFAULT_DUPLICATE_WINDOW, DEFAULT_GROUP_PARTITIONS, DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX, DEFAULT_TOPIC_SCAN, DEFAULT_URL, MAX_GROUP_PARTITIONS,
    MAX_PUBLISH_RETRIES, MAX_RECONNECT_GRACE, MAX_REPLICAS, MAX_TOPIC_SCAN, NatsConfig, Retention,
};
pub use error::Error;
pub use groups::{
    DEFAULT_PULL_WAIT, GROUP_CONSUMER_PREFIX, IN_USE_WINDOW, JetStreamGroups, MAX_FORWARDED_ACKS,
    OWNER_BEAT, OWNER_LEASE, OWNER_RENEW, PULL_WAIT_RANGE, consumer_name, group_name,
    partition_consumer_name, partition_of,
};
pub use log::{JetStreamLog, TopicPruner};
pub use offsets::{KvOffsets, MAX_VALUE_BYTES};
pub use origin::LocalOriginOnly;
pub use relay::NatsAckRelay;
pub use state::{
    ConnectionState, NATS_CONNECTED, NATS_PUBLISHED, NATS_RECEIVED, NATS_SKIPPED, NatsHealth,
};
pub use topics::{
    MARK_EVERY, MAX_INDEX_PER_ROUND, MAX_PRUNE_PER_ROUND, MAX_TOPIC_RECORD_BYTES,
    MAX_TOPIC_RECORDS, PRUNE_CHUNK,
};
pub use work::{
    WORK_ACK_WAIT_RANGE, WORK_CONSUMER_PREFIX, WorkConfig, WorkError, WorkHandler, WorkQueue,
};
