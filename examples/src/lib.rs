//! Demo clients (WS/SSE tail, webhook receiver, third-party SSE service, an axum app embedding the transports, load generator).

pub mod pretty;
