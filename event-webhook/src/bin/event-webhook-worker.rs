//! A stand-alone delivery worker: sends the deliveries queued in the
//! database named by `DATABASE_URL` until it receives Ctrl-C / SIGTERM.
//!
//! Useful to run delivery in its own process (several against one
//! PostgreSQL database); the crash-recovery test kills it with SIGKILL.
//!
//! Environment: `DATABASE_URL` (required), `WEBHOOK_ALLOW_CIDRS`
//! (comma-separated CIDRs the SSRF guard lets through),
//! `WEBHOOK_RETRY_SCHEDULE_MS` (comma-separated delays), `WEBHOOK_POLL_MS`,
//! `WEBHOOK_LEASE_MS`, `WEBHOOK_TIMEOUT_MS` (per attempt),
//! `WEBHOOK_PER_ENDPOINT` (per-endpoint concurrency), `WEBHOOK_SECRET_KEY`
//! (the keys webhook secrets are sealed with, comma-separated base64, first
//! one sealing; see `event_webhook::secret_key` — the same value as the
//! server's).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use event_core::AllowAnonymous;
use event_webhook::{SecretKey, WebhookConfig, Webhooks};
use tokio_util::sync::CancellationToken;

fn millis(name: &str) -> Result<Option<Duration>, String> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| format!("{name} must be a number of milliseconds")),
        Err(_) => Ok(None),
    }
}

fn config_from_env() -> Result<WebhookConfig, String> {
    let mut config = WebhookConfig::default();
    if let Ok(v) = std::env::var("WEBHOOK_ALLOW_CIDRS") {
        config.allow_cidrs = v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().map_err(|_| format!("bad CIDR {s:?}")))
            .collect::<Result<_, _>>()?;
    }
    if let Ok(v) = std::env::var("WEBHOOK_RETRY_SCHEDULE_MS") {
        config.retry_schedule = v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| format!("bad delay {s:?}"))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(d) = millis("WEBHOOK_POLL_MS")? {
        config.poll_interval = d;
    }
    if let Some(d) = millis("WEBHOOK_LEASE_MS")? {
        config.lease = d;
    }
    if let Some(d) = millis("WEBHOOK_TIMEOUT_MS")? {
        config.request_timeout = d;
    }
    if let Ok(v) = std::env::var("WEBHOOK_PER_ENDPOINT") {
        config.per_endpoint_concurrency = v
            .trim()
            .parse()
            .map_err(|_| "WEBHOOK_PER_ENDPOINT must be a number".to_owned())?;
    }
    if let Ok(v) = std::env::var("WEBHOOK_SECRET_KEY") {
        // The error names the entry's position, never the key.
        config.secret_keys =
            SecretKey::parse_list(&v).map_err(|e| format!("WEBHOOK_SECRET_KEY: {e}"))?;
    }
    Ok(config)
}

#[tokio::main]
async fn main() -> ExitCode {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("DATABASE_URL is required");
        return ExitCode::from(2);
    };
    let config = match config_from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let webhooks = match Webhooks::connect(&url, Arc::new(AllowAnonymous), config).await {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot open the webhook store: {e}");
            return ExitCode::from(1);
        }
    };
    let stop = CancellationToken::new();
    let worker = webhooks.start_worker(stop.clone());
    println!("ready");
    let _ = tokio::signal::ctrl_c().await;
    stop.cancel();
    worker.shutdown(Duration::from_secs(30)).await;
    ExitCode::SUCCESS
}
