//! # tests — the end-to-end conformance suite
//!
//! This crate has no code of its own: its integration tests drive a real
//! `event-server` (built in-process with every feature, served on
//! 127.0.0.1:0, SQLite in a temporary directory or PostgreSQL in a fresh
//! schema) with real clients — WebSocket (`tokio-tungstenite`), SSE (a raw
//! HTTP stream whose frames are compared byte for byte), and a real axum
//! webhook receiver — and checks them against `PROTOCOL.md` and the seed use
//! cases.
//!
//! ## Binaries
//!
//! * `conformance` (`tests/conformance/`, one binary so the suite links once):
//!   * `wire` — one publish of each of the 7 types reaches a WebSocket
//!     client, an SSE `v1` client, an SSE `envelope` client and a webhook
//!     receiver with the same flat JSON, byte-exact against PROTOCOL §1.
//!   * `use_cases` — UC-001 … UC-004 with their success criteria (UC-001's
//!     500 ms publish → receive bound is the only wall-clock assertion
//!     besides §2's own "refresh answered within 1 s").
//!   * `hotm_ws`, `hotm_sse` — one test per bullet of PROTOCOL §2 and §3,
//!     written as a client that behaves like the HotM UI (sends `refresh` on
//!     open, ignores unknown types, reconnects on any close but 1000).
//!   * `webhooks` — PROTOCOL §4 through the host (API, test delivery,
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
//! ## Running
//!
//! ```text
//! TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo test -p tests --all-targets
//! ```
//!
//! Without `TEST_POSTGRES_URL` the PostgreSQL tests print a reason and pass,
//! unless `EVENT_TEST_REQUIRE_SERVICES=1`.
