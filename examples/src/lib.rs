//! Demo clients (WS/SSE tail, webhook receiver, third-party SSE service, load generator).
