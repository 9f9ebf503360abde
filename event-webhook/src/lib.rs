//! event-webhook (docs to come).

pub mod error;
pub mod model;
pub mod ssrf;
pub mod store;

pub use error::{Result, WebhookError};
