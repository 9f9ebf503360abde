//! SSRF guard (to come).

/// The host part of a URL, for logs (never the full URL).
pub fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "<invalid>".to_owned())
}
