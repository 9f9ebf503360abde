//! event-sse against a real server on 127.0.0.1:0.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::type_complexity,
    dead_code
)]

mod common;
mod connections;
mod cors;
mod filters;
mod framing;
mod history;
mod limits;
mod replay;
mod replay_source;
mod third_party;
