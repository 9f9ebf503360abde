//! Failure codes: raw backend error text → a stable, short code.
//!
//! `JobFailed.error` goes to browsers, agents and webhook receivers. Raw
//! backend text may contain internal host names, URLs with credentials or
//! prompt fragments, and it changes with every library upgrade, so the bridge
//! publishes only a code from a small fixed vocabulary. A host with better
//! knowledge (structured errors from its worker) plugs in its own
//! [`ErrorClassifier`].

/// The codes the default classifier produces.
pub mod codes {
    /// The job or a call it made ran out of time.
    pub const TIMED_OUT: &str = "timed_out";
    /// An upstream refused because of rate limits or quota.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// A network or connection problem.
    pub const CONNECTION: &str = "connection";
    /// The input or an upstream answer was invalid.
    pub const VALIDATION: &str = "validation";
    /// Something the job needed does not exist.
    pub const NOT_FOUND: &str = "not_found";
    /// Credentials were missing, wrong or insufficient.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// An upstream service is unavailable or overloaded.
    pub const UNAVAILABLE: &str = "unavailable";
    /// The job was cancelled (including by shutdown).
    pub const CANCELLED: &str = "cancelled";
    /// Anything else.
    pub const INTERNAL: &str = "internal";

    /// Every code, for validation and documentation.
    pub const ALL: [&str; 9] = [
        TIMED_OUT,
        RATE_LIMITED,
        CONNECTION,
        VALIDATION,
        NOT_FOUND,
        UNAUTHORIZED,
        UNAVAILABLE,
        CANCELLED,
        INTERNAL,
    ];
}

/// Turns a worker's raw failure into a stable short code.
pub trait ErrorClassifier: Send + Sync + 'static {
    /// The code for `error` raised by a job of `job_type`.
    fn classify(&self, job_type: &str, error: &str) -> &'static str;
}

/// The default classifier: keyword and status-code matching over the raw
/// text, first match wins, `internal` when nothing matches. Text that already
/// is one of [`codes::ALL`] passes through unchanged.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl ErrorClassifier for DefaultClassifier {
    fn classify(&self, _job_type: &str, error: &str) -> &'static str {
        classify_error(error)
    }
}

/// The default classification of a raw error (see [`DefaultClassifier`]).
///
/// ```
/// use event_bridge_jobs::classify_error;
/// assert_eq!(classify_error("operation timed out after 30s"), "timed_out");
/// assert_eq!(classify_error("HTTP 429 Too Many Requests"), "rate_limited");
/// assert_eq!(classify_error("connection refused (os error 111)"), "connection");
/// assert_eq!(classify_error("segfault in tokenizer"), "internal");
/// ```
pub fn classify_error(error: &str) -> &'static str {
    let trimmed = error.trim();
    if let Some(code) = codes::ALL.iter().find(|c| **c == trimmed) {
        return code;
    }
    let text = trimmed.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    // Status codes only as whole tokens, so ids and sizes do not match.
    let status = |codes: &[&str]| {
        text.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|tok| codes.contains(&tok))
    };
    // Order matters: "connection timed out" is a timeout, "invalid token" is
    // an authorization problem.
    if has(&["timed out", "timeout", "deadline exceeded", "elapsed"]) || status(&["408", "504"]) {
        codes::TIMED_OUT
    } else if has(&[
        "rate limit",
        "ratelimit",
        "too many requests",
        "quota",
        "throttl",
    ]) || status(&["429"])
    {
        codes::RATE_LIMITED
    } else if has(&[
        "unauthorized",
        "unauthenticated",
        "forbidden",
        "permission denied",
        "access denied",
        "authentication",
        "api key",
        "invalid token",
    ]) || status(&["401", "403"])
    {
        codes::UNAUTHORIZED
    } else if has(&["cancel", "aborted", "shutting down", "shutdown"]) {
        codes::CANCELLED
    } else if has(&["unavailable", "overloaded", "bad gateway"]) || status(&["502", "503"]) {
        codes::UNAVAILABLE
    } else if has(&[
        "connection",
        "connect",
        "network",
        "dns",
        "broken pipe",
        "reset by peer",
        "unreachable",
        "refused",
        "tls",
        "eof",
    ]) {
        codes::CONNECTION
    } else if has(&["not found", "no such", "does not exist"]) || status(&["404", "410"]) {
        codes::NOT_FOUND
    } else if has(&[
        "invalid",
        "validation",
        "malformed",
        "parse",
        "missing field",
        "bad request",
        "unprocessable",
        "too long",
        "too large",
    ]) || status(&["400", "413", "422"])
    {
        codes::VALIDATION
    } else {
        codes::INTERNAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_common_failures() {
        let cases = [
            ("request timed out", codes::TIMED_OUT),
            ("connection timed out", codes::TIMED_OUT),
            ("deadline exceeded", codes::TIMED_OUT),
            ("status 429", codes::RATE_LIMITED),
            ("Rate limit reached for gpt-4", codes::RATE_LIMITED),
            (
                "error sending request: connection refused",
                codes::CONNECTION,
            ),
            ("dns error: failed to lookup address", codes::CONNECTION),
            ("HTTP 401 Unauthorized", codes::UNAUTHORIZED),
            ("503 Service Unavailable", codes::UNAVAILABLE),
            ("note 42 not found", codes::NOT_FOUND),
            ("invalid JSON at line 1", codes::VALIDATION),
            ("job cancelled", codes::CANCELLED),
            ("index out of bounds", codes::INTERNAL),
            ("", codes::INTERNAL),
            ("rate_limited", codes::RATE_LIMITED),
        ];
        for (raw, code) in cases {
            assert_eq!(classify_error(raw), code, "{raw:?}");
        }
    }

    #[test]
    fn status_codes_match_only_as_tokens() {
        assert_eq!(classify_error("chunk 14290 overflowed"), codes::INTERNAL);
        assert_eq!(classify_error("upstream said 404"), codes::NOT_FOUND);
    }
}
