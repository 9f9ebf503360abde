//! The one HTTP client deliveries share.

use std::sync::{Arc, Once};

use crate::config::WebhookConfig;
use crate::error::{Result, WebhookError};
use crate::ssrf::{GuardedResolver, SsrfGuard};

static PROVIDER: Once = Once::new();

/// Installs rustls' ring crypto provider as the process default, once.
/// A provider the host installed first is kept.
pub fn install_crypto_provider() {
    PROVIDER.call_once(|| {
        // Err means another provider is already installed: keep it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Builds the delivery client: rustls (ring), no redirects (a 3xx is a
/// failed attempt), no proxies (a proxy would resolve names past the SSRF
/// guard), connect and total timeouts from `config`, and DNS through the
/// SSRF guard so only checked addresses are connected to. Build one and
/// share it: it pools connections.
pub fn http_client(config: &WebhookConfig) -> Result<reqwest::Client> {
    install_crypto_provider();
    let guard = SsrfGuard::new(config.allow_cidrs.clone());
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .dns_resolver(Arc::new(GuardedResolver::new(guard)))
        .user_agent(config.user_agent.clone())
        .pool_max_idle_per_host(config.per_endpoint_concurrency.max(1))
        .build()
        .map_err(|e| WebhookError::Client(e.to_string()))
}
