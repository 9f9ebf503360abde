//! Settings of the webhook service. `Default` is docs/protocol.md §4.

use std::time::Duration;

use ipnet::IpNet;

use crate::secret_key::SecretKey;

/// Settings of the webhook API, sink and worker.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The HMAC header (`X-Matric-Signature`; e.g. `X-Fortemi-Signature`).
    pub signature_header: String,
    /// Delays before each retry (default 1 s, 5 s, 25 s, 125 s). A webhook
    /// whose `max_retries` exceeds its length repeats the last delay.
    pub retry_schedule: Vec<Duration>,
    /// Random spread applied to every retry delay (default 0.1 = ±10 %).
    pub jitter: f64,
    /// Longest `Retry-After` honoured (default 1 hour).
    pub retry_after_cap: Duration,
    /// Total time one attempt may take (default 30 s).
    pub request_timeout: Duration,
    /// Time to establish a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Attempts in flight at once, all endpoints together (default 64).
    pub max_concurrency: usize,
    /// Attempts in flight at once to one webhook (default 8).
    pub per_endpoint_concurrency: usize,
    /// Consecutive dead deliveries after which a webhook is disabled
    /// (default 10).
    pub disable_after_dead: u32,
    /// Age after which succeeded deliveries are deleted (default 7 days).
    pub retention: Duration,
    /// How often the pruning runs (default 1 hour).
    pub prune_interval: Duration,
    /// How often the worker looks for due rows it was not told about, e.g.
    /// rows queued by other instances (default 1 s; deliveries queued by
    /// this process and retries it scheduled are picked up at once).
    pub poll_interval: Duration,
    /// How long a claim holds before another worker may take the row
    /// (default 5 minutes; must exceed `request_timeout`).
    pub lease: Duration,
    /// Most rows claimed per query (default 256).
    pub claim_batch: u32,
    /// Rows of one webhook the worker may hold locally (waiting for a slot,
    /// running, or being inserted) when they come straight from this
    /// process's own sink (default 1,024; `WEBHOOK_HANDOFF_HOLD`; 0 turns
    /// the handoff off). Such rows are inserted already claimed by this
    /// worker and need no claim query (while older rows of their webhook
    /// may be due in the store they wait for the claim that takes those,
    /// and go after them); rows beyond it are inserted unclaimed and claimed
    /// in order later. All webhooks together hold at
    /// most this many or `max_concurrency` × 16, whichever is larger. A
    /// larger hold keeps bursts off the claim path; the price is that a
    /// process that dies leaves up to this many rows per webhook claimed
    /// until its lease ends (PostgreSQL; SQLite frees them at start-up).
    pub handoff_hold: usize,
    /// Events the sink holds in memory, waiting for the store, before it
    /// starts dropping them (default 100,000; counted in
    /// `events_dropped_total{consumer="webhook"}` and logged). The publisher
    /// hands events to this queue directly, so a burst cannot outrun the
    /// sink while the database is busy (see
    /// `event_core::EventSink::intake_capacity`); the events are shared, so
    /// an entry costs a pointer.
    pub intake_capacity: usize,
    /// How often the subscriber index is reloaded from the store, to pick up
    /// changes made through other instances (default 30 s).
    pub index_refresh_interval: Duration,
    /// Networks the SSRF guard lets through although they are private,
    /// loopback or otherwise internal (default none; tests allow
    /// `127.0.0.0/8`).
    pub allow_cidrs: Vec<IpNet>,
    /// The `User-Agent` of delivery requests.
    pub user_agent: String,
    /// Keys sealing webhook secrets at rest (`WEBHOOK_SECRET_KEY`, parsed
    /// with [`SecretKey::parse_list`]): the first seals, all open. Default
    /// none: secrets are stored as registered. See
    /// [`secret_key`](crate::secret_key) for the format and the rotation
    /// procedure.
    pub secret_keys: Vec<SecretKey>,
    /// Webhooks that may be registered at once (default 1,000; 0:
    /// unlimited). Beyond it `POST /api/v1/webhooks` answers `409
    /// too_many_webhooks` until one is deleted: every registered webhook
    /// costs a lookup on each event and a queue row per matching event.
    pub max_webhooks: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            signature_header: "X-Matric-Signature".to_owned(),
            retry_schedule: [1, 5, 25, 125].map(Duration::from_secs).to_vec(),
            jitter: 0.1,
            retry_after_cap: Duration::from_secs(3600),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_concurrency: 64,
            per_endpoint_concurrency: 8,
            disable_after_dead: 10,
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(300),
            claim_batch: 256,
            handoff_hold: 1024,
            intake_capacity: 100_000,
            index_refresh_interval: Duration::from_secs(30),
            allow_cidrs: Vec::new(),
            user_agent: concat!("matric-events/", env!("CARGO_PKG_VERSION")).to_owned(),
            secret_keys: Vec::new(),
            max_webhooks: 1_000,
        }
    }
}

impl WebhookConfig {
    /// The default number of retries of a new webhook: the schedule's length.
    pub fn default_max_retries(&self) -> u32 {
        u32::try_from(self.retry_schedule.len()).unwrap_or(u32::MAX)
    }

    /// The delay before retry number `retry` (1-based), without jitter.
    pub fn retry_delay(&self, retry: u32) -> Duration {
        let i = (retry.max(1) - 1) as usize;
        self.retry_schedule
            .get(i)
            .or(self.retry_schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}
