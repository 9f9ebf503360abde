//! # tests — the end-to-end conformance suite
//!
//! This crate has no code of its own: its integration tests drive a real
//! `event-server` (built in-process with every feature, served on
//! 127.0.0.1:0, SQLite in a temporary directory or PostgreSQL in a fresh
//! schema) with real clients — WebSocket (`tokio-tungstenite`), SSE (a raw
//! HTTP stream whose frames are compared byte for byte), and a real axum
//! webhook receiver — and checks them against `docs/protocol.md` and the seed use
//! cases.
//!
//! ## Binaries
//!
//! * `conformance` (`tests/conformance/`, one binary so the suite links once):
//!   * `wire` — one publish of each of the 7 types reaches a WebSocket
//!     client, an SSE `v1` client, an SSE `envelope` client and a webhook
//!     receiver with the same flat JSON, byte-exact against docs/protocol.md §1.
//!   * `use_cases` — UC-001 … UC-004 with their success criteria.
//!   * `hotm_ws`, `hotm_sse` — one test per bullet of docs/protocol.md §2 and §3,
//!     written as a client that behaves like the HotM UI (sends `refresh` on
//!     open, ignores unknown types, reconnects on any close but 1000).
//!   * `webhooks` — docs/protocol.md §4 through the host (API, test delivery,
//!     signature header, SSRF refusal).
//!   * `failures` — abrupt disconnects, failing and `410` endpoints, bus
//!     overflow with a tiny `--event-bus-capacity`.
//!   * `properties` — proptest properties for every parser of outside input
//!     (SSE and history query strings, `Last-Event-ID`, WebSocket client messages,
//!     webhook and publish bodies): no panic, no 5xx, refusals are the
//!     documented 4xx JSON. `PROPTEST_CASES=500` runs a longer search.
//!   * `postgres` — UC-002 and UC-004 on PostgreSQL.
//!   * `auth` — optional authentication: anonymous mode, client and admin tokens.
//! * `observability` — UC-005: exact `/metrics` values after scripted
//!   WebSocket, SSE and webhook traffic, gauges back to 0, the JSON log line
//!   of each type, and no secret or personal data in the captured logs. Its
//!   own process, because the meter provider and the log subscriber are
//!   process-global.
//!
//! ## Timing rules
//!
//! A test asserts order and counts, or runs in virtual time
//! (`#[tokio::test(start_paused = true)]`); a wall-clock bound is kept only
//! where the bound is the requirement itself and has a margin a loaded
//! 2-core machine cannot eat. The five wall-clock assertions issue 24
//! listed, and what became of them:
//!
//! * UC-001 "each event within 500 ms of its publication"
//!   (`use_cases::uc001_…`) — **stays**: it is the use case's latency
//!   criterion over real sockets, which virtual time cannot measure.
//!   Delivery takes about a millisecond, a margin of two orders of
//!   magnitude; the lower bound is order (nothing received before it is
//!   published).
//! * UC-001 "progress at least every 5 s" — the bridge's re-send interval,
//!   now checked in virtual time with the host's defaults
//!   (event-bridge-jobs `with_the_defaults_progress_is_repeated_every_5_s`);
//!   UC-001 checks the count and order of the job's events.
//! * §2 "refresh answered within 1 s" (`hotm_ws`) — now an order: the answer
//!   is the only frame before the pong of a ping sent right behind the
//!   refresh. The bound is event-ws's snapshot timeout (800 ms, the host
//!   keeps the default; asserted in event-ws's `protocol` tests).
//! * event-webhook "20 deliveries within 3 s while another endpoint is slow"
//!   (`delivery::a_failing_endpoint_does_not_delay_another`) — now an
//!   order: the slow endpoint answers after 60 s, longer than the whole
//!   wait, so all 20 arrive while it still holds both its slots.
//! * event-sse "keep-alive before 14 s" (`framing::heartbeat_parameter_…`)
//!   — now in virtual time with both bounds: exactly 5 s after the last
//!   chunk, and 5 s between keep-alives.
//!
//! Other time checks met while doing this are one-sided lower bounds (a
//! retry not before its backoff), which a slow machine cannot break, or
//! waits with a deadline; the suite was not audited beyond that.
//!
//! ## Running
//!
//! ```text
//! TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo test -p tests --all-targets
//! ```
//!
//! Without `TEST_POSTGRES_URL` the PostgreSQL tests print a reason and pass,
//! unless `EVENT_TEST_REQUIRE_SERVICES=1`.
