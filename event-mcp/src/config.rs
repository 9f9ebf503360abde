//! The endpoint's settings and limits.

use std::time::Duration;

/// Settings of the MCP endpoint. Every field has a host setting; the
/// defaults are the host's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpConfig {
    /// At most one `notifications/resources/updated` per subscribed resource
    /// per this interval, per session (`MCP_UPDATE_INTERVAL_MS`, default
    /// 500 ms). Changes in between are coalesced into the next one.
    pub update_interval: Duration,
    /// Open sessions at most (`MCP_MAX_SESSIONS`, default 1,000); an
    /// `initialize` beyond it is answered `503` with a JSON body.
    pub max_sessions: usize,
    /// A session with no request from its client for this long is closed
    /// (`MCP_SESSION_IDLE_SECS`, default 600 s); the client's next request
    /// gets `404` and it initializes again.
    pub session_idle: Duration,
    /// Messages queued for one of a session's streams (`MCP_SESSION_QUEUE`,
    /// default 16). A client that does not read its stream holds up its own
    /// session only.
    pub session_queue: usize,
    /// Resources one session may subscribe to (default 64).
    pub max_subscriptions: usize,
    /// `wait_for_job` calls one session may have running at once (default 8).
    pub max_waits: usize,
    /// Largest request body, in bytes (default 1 MiB; `413` beyond).
    pub max_body_bytes: usize,
    /// Time a client has to send a whole request body (default 10 s; `408`).
    pub body_timeout: Duration,
    /// Largest total size of the events one `events_recent` call or
    /// `events://recent` read returns (default 1 MiB); a larger page is cut
    /// short and says so (`truncated`), with the cursor to continue from.
    pub max_result_bytes: usize,
    /// The longest `wait_for_job` timeout a client may ask for (default 600 s).
    pub max_wait: Duration,
    /// `Host` names the endpoint answers to (DNS-rebinding protection of the
    /// SDK). `None` turns the check off, for a host that checks `Host`
    /// itself. Default: loopback names only.
    pub allowed_hosts: Option<Vec<String>>,
    /// Interval of the keep-alive comments on open event streams (default
    /// 15 s).
    pub keep_alive: Duration,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            update_interval: Duration::from_millis(500),
            max_sessions: 1000,
            session_idle: Duration::from_secs(600),
            session_queue: 16,
            max_subscriptions: 64,
            max_waits: 8,
            max_body_bytes: 1024 * 1024,
            body_timeout: Duration::from_secs(10),
            max_result_bytes: 1024 * 1024,
            max_wait: Duration::from_secs(600),
            allowed_hosts: Some(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ]),
            keep_alive: Duration::from_secs(15),
        }
    }
}
