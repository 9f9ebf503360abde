//! # event-server
//!
//! The reference host: it builds one [`event_core::EventBus`], registers the
//! sinks its Cargo features select, mounts their routers and serves them.
//!
//! Serving is one call to `event_http::serve` (crate `event-http`, the
//! serving edge: the listener with `TCP_NODELAY` and connection caps, the
//! direct event-stream path, head and write-stall timeouts, graceful
//! shutdown): what BENCHMARKS.md measures about connections is that crate,
//! and an application embedding the transports gets the same by calling it
//! (`examples/src/bin/embed-axum.rs`). This crate adds the assembly
//! ([`app::App`]), configuration, auth, the request guards, the publish and
//! connection routes, and the demo domain.
//!
//! Feature `testing` (off by default, not for production builds) adds
//! `event_server::testing`: the host started in-process on a loopback port
//! with a temporary SQLite database, for tests here and in other crates.
#![doc = "Docs filled in with the assembly."]

pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connections;
#[cfg(feature = "log")]
pub mod consumers;
#[cfg(feature = "contracts")]
pub mod contracts;
pub mod cors;
pub mod dashboard;
pub mod db;
pub mod dedup;
#[cfg(feature = "demo")]
pub mod demo;
#[cfg(feature = "log")]
pub mod durable;
pub mod error;
pub mod guard;
#[cfg(not(feature = "telemetry"))]
pub mod health;
pub mod logging;
pub mod memory;
pub mod publish;
pub mod rate;
pub mod runtimes;
pub mod slots;
#[cfg(feature = "telemetry")]
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "log")]
pub mod topics;

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
