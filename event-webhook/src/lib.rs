//! # event-webhook
//!
//! Signed, retried, durable outbound webhooks for matric's event bus, with
//! the REST API of docs/protocol.md §4 and a SQL store (SQLite by default,
//! PostgreSQL with the `postgres` feature). Modelled on Svix and the
//! Standard Webhooks specification.
//!
//! ## How it works
//!
//! ```text
//!  EventBus ─► WebhookSink ──(one transaction per batch)──► deliveries table
//!               │ in-memory subscriber index                    │ claim (lease)
//!  REST API ────┘ (reloaded on every change)                    ▼
//!                                                   DeliveryWorker ─► HTTP POST
//!                                                   retries, 410, dead, prune
//! ```
//!
//! * **Registration** (`/api/v1/webhooks`): the URL must be `http(s)`, at
//!   most 2,048 characters, and pass the [SSRF guard](ssrf); the secret is
//!   returned once, at creation (generated as `whsec_` + 32 random bytes
//!   base64 when absent) and is never listed or logged; neither are full
//!   URLs (logs carry the host only). Every route needs an admin principal
//!   from the host's [`Authenticator`](event_core::Authenticator).
//! * **Queueing**: the [sink](WebhookSink) takes events from the publisher
//!   into an intake queue of its own (so a burst or a slow database cannot
//!   make it lag behind the bus), finds subscribers in memory (no query per
//!   event), renders each event's body once, and writes one row per (event,
//!   webhook) in a single transaction per batch (a few batches in flight at
//!   once); the worker gets the rows only once they are committed, and a
//!   crash after that loses nothing. Rows for this process's own worker
//!   are inserted already claimed by it, up to
//!   [`WebhookConfig::handoff_hold`] per webhook (`WEBHOOK_HANDOFF_HOLD`,
//!   1,024), and handed over without a claim query; the rest, and later
//!   rows of their webhook until those are claimed, wait for a claim, in
//!   order. [`Webhooks::queue_stats`] counts both ways.
//! * **Recording**: attempt results are written in batches; on PostgreSQL
//!   these transactions commit without waiting for the WAL flush (a
//!   database crash can only make a delivery be sent again, never lose it:
//!   see `store/postgres/record.rs`).
//! * **Delivery**: the [worker](DeliveryWorker) claims due rows under a
//!   lease (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so several instances share
//!   one queue; SQLite: one worker process per database), with a global and
//!   a per-endpoint concurrency limit. 2xx succeeds; 3xx fails (redirects
//!   are not followed); 410 disables the webhook; anything else, and
//!   timeouts, retry after 1 s, 5 s, 25 s, 125 s (±10 % jitter,
//!   `Retry-After` honoured up to a cap), then the delivery is `dead`. Ten
//!   dead deliveries in a row disable the webhook. Claims of a dead process
//!   are recovered at start-up; succeeded rows are pruned after 7 days.
//! * **Secrets at rest** ([`secret_key`]): the SQLite file is owner-only
//!   (0600); with [`WebhookConfig::secret_keys`] (`WEBHOOK_SECRET_KEY`)
//!   secrets are sealed with XChaCha20-Poly1305 in either engine, keys
//!   rotate, and plaintext rows from before are sealed at start-up.
//! * **Request guard**: the API authenticates from the request head before
//!   reading any body, and caps bodies at [`api::MAX_BODY_BYTES`].
//! * **Signing** ([`signing`]): `X-Matric-Signature: sha256=<hex>` (header
//!   name configurable) and the Standard Webhooks headers `webhook-id`,
//!   `webhook-timestamp`, `webhook-signature`. Receivers check the Standard
//!   Webhooks signature, timestamp included, with [`verify`] (the body-only
//!   HMAC alone can be replayed, so it is never enough there).
//!
//! ## Host wiring
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use event_core::{AllowAnonymous, EventBus, JobQueued, SinkRunner};
//! use event_webhook::{WebhookConfig, Webhooks};
//! use tokio_util::sync::CancellationToken;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // `DATABASE_URL` picks the engine: `sqlite://…` or `postgres://…`.
//! let webhooks = Webhooks::connect(
//!     "sqlite::memory:",
//!     Arc::new(AllowAnonymous),
//!     WebhookConfig::default(),
//! )
//! .await?;
//!
//! // The REST API, merged into the host's router.
//! let app: axum::Router = axum::Router::new().merge(webhooks.router());
//!
//! // The sink on the bus, and the worker sending what it queues.
//! let bus = EventBus::default();
//! let mut runner = SinkRunner::new(&bus);
//! runner.register(webhooks.sink());
//! let shutdown = CancellationToken::new();
//! let worker = webhooks.start_worker(shutdown.clone());
//!
//! bus.publish(JobQueued {
//!     job_id: uuid::Uuid::now_v7(),
//!     job_type: "Embedding".into(),
//!     note_id: None,
//! }); // no webhook registered yet: nothing is queued
//!
//! # drop(app);
//! // Graceful shutdown: drain the sink, then stop the worker.
//! runner.shutdown(Duration::from_secs(5)).await;
//! shutdown.cancel();
//! assert!(worker.shutdown(Duration::from_secs(5)).await);
//! # Ok(())
//! # }
//! ```
//!
//! ## Verifying a delivery (receiver side)
//!
//! ```
//! use event_webhook::signing::{matric_signature, standard_signature};
//!
//! let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
//! let body = br#"{"id":"e1","event":"JobQueued","timestamp":"2026-01-01T00:00:00.000Z","data":{}}"#;
//! let now = time::OffsetDateTime::now_utc().unix_timestamp();
//!
//! // What a delivery carries…
//! let mut headers = http::HeaderMap::new();
//! headers.insert("webhook-id", "e1".parse()?);
//! headers.insert("webhook-timestamp", now.to_string().parse()?);
//! headers.insert("webhook-signature", standard_signature(secret, "e1", now, body).parse()?);
//! headers.insert("x-matric-signature", matric_signature(secret, body).parse()?);
//!
//! // …and the check a receiver makes (Standard Webhooks, 5-minute tolerance).
//! event_webhook::verify(secret, &headers, body)?;
//! assert!(event_webhook::verify(secret, &headers, b"tampered").is_err());
//! // The body-only HMAC with a fresh timestamp is a replay, not a delivery.
//! headers.remove("webhook-signature");
//! assert!(event_webhook::verify(secret, &headers, body).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Configuration
//!
//! [`WebhookConfig`]'s `Default` is docs/protocol.md §4. Tests and local setups that
//! deliver to loopback must allow it explicitly
//! (`allow_cidrs: vec!["127.0.0.0/8".parse()?]`). The process-wide rustls
//! provider (ring) is installed by [`http_client`] if the host has not
//! installed one.

pub mod api;
pub mod client;
pub mod config;
mod deliver;
pub mod derive;
pub mod error;
pub mod index;
pub mod metrics;
pub mod model;
pub mod secret_key;
mod service;
pub mod signing;
pub mod sink;
pub mod ssrf;
pub mod store;
pub mod worker;

pub use client::http_client;
pub use config::WebhookConfig;
pub use derive::Deriver;
pub use error::{Result, WebhookError};
pub use secret_key::SecretKey;
pub use service::Webhooks;
pub use signing::verify;
pub use sink::WebhookSink;
pub use store::{WebhookStore, connect};
pub use worker::DeliveryWorker;
