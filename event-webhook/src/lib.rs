//! Signed, retried, durable outbound webhooks with a REST API.
