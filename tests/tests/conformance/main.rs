//! End-to-end conformance suite: a real `event-server` on 127.0.0.1:0 driven
//! by real WebSocket, SSE and webhook clients, checked against
//! `docs/protocol.md` and the seed use cases UC-001 … UC-004 (UC-005, which needs
//! process-global metrics and logs, is in the `observability` test binary).
//!
//! One binary with modules, so the suite links once.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod failures;
mod harness;
mod hotm_sse;
mod hotm_ws;
mod postgres;
mod properties;
mod use_cases;
mod webhooks;
mod wire;
