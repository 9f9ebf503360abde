//! event-webhook (docs to come).

pub mod api;
pub mod client;
pub mod config;
mod deliver;
pub mod error;
pub mod index;
pub mod metrics;
pub mod model;
mod service;
pub mod signing;
pub mod sink;
pub mod ssrf;
pub mod store;
pub mod worker;

pub use client::http_client;
pub use config::WebhookConfig;
pub use error::{Result, WebhookError};
pub use service::Webhooks;
pub use signing::verify;
pub use sink::WebhookSink;
pub use store::{WebhookStore, connect};
pub use worker::DeliveryWorker;
