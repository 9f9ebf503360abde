//! One delivery attempt: build the signed request, send it, classify the
//! answer, decide what happens next.

use std::time::{Duration, Instant};

use http::HeaderValue;
use rand::Rng;
use time::OffsetDateTime;

use crate::config::WebhookConfig;
use crate::model::{AttemptOutcome, Webhook};
use crate::service::Shared;
use crate::signing::{matric_signature, standard_signature};

/// What one HTTP exchange produced.
#[derive(Debug, Clone)]
pub(crate) struct Exchange {
    pub started_at: OffsetDateTime,
    pub duration: Duration,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
}

impl Exchange {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The request body: `{"id","event","timestamp","data"}` with the event's
/// cached flat JSON spliced in as `data`.
pub(crate) fn body_for(event: &event_core::Event) -> bytes::Bytes {
    let data = event.json();
    let ts = event_core::event::format_rfc3339_millis(event.occurred_at());
    let mut v = Vec::with_capacity(data.len() + 128);
    v.extend_from_slice(b"{\"id\":\"");
    v.extend_from_slice(event.id().to_string().as_bytes());
    v.extend_from_slice(b"\",\"event\":\"");
    v.extend_from_slice(event.kind().type_name().as_bytes());
    v.extend_from_slice(b"\",\"timestamp\":\"");
    v.extend_from_slice(ts.as_bytes());
    v.extend_from_slice(b"\",\"data\":");
    v.extend_from_slice(data);
    v.push(b'}');
    v.into()
}

/// Most response body read (and thrown away) so the connection can be reused.
const MAX_DRAIN: usize = 64 * 1024;

/// Sends one signed attempt.
pub(crate) async fn send(
    shared: &Shared,
    webhook: &Webhook,
    delivery_id: uuid::Uuid,
    event_id: uuid::Uuid,
    event_type: &str,
    body: String,
    trace: Option<&event_core::TraceContext>,
) -> Exchange {
    let started_at = OffsetDateTime::now_utc();
    let clock = Instant::now();
    let done = |status: Option<u16>, error: Option<String>, retry_after| Exchange {
        started_at,
        duration: clock.elapsed(),
        status,
        error,
        retry_after,
    };
    // Literal IP hosts never reach the resolver: check them here. Names are
    // checked by the client's resolver, at connect time.
    if let Err(e) = shared.guard.check_literal(&webhook.url) {
        return done(None, Some(format!("refused: {e}")), None);
    }
    let ts = started_at.unix_timestamp();
    let msg_id = event_id.to_string();
    let matric = matric_signature(&webhook.secret, body.as_bytes());
    let standard = standard_signature(&webhook.secret, &msg_id, ts, body.as_bytes());
    let header = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    let request = shared
        .client
        .post(&webhook.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("X-Matric-Event", header(event_type))
        .header("X-Matric-Delivery", header(&delivery_id.to_string()))
        .header(shared.signature_header.clone(), header(&matric))
        .header("webhook-id", header(&msg_id))
        .header("webhook-timestamp", header(&ts.to_string()))
        .header("webhook-signature", header(&standard));
    // W3C trace context: the receiver's work joins the event's trace.
    let request = match trace {
        Some(t) => {
            let request = request.header("traceparent", header(t.traceparent()));
            match t.tracestate() {
                Some(state) => request.header("tracestate", header(state)),
                None => request,
            }
        }
        None => request,
    };
    let request = request.body(body);
    match request.send().await {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let mut drained = 0;
            while drained < MAX_DRAIN {
                match response.chunk().await {
                    Ok(Some(c)) => drained += c.len(),
                    _ => break,
                }
            }
            let error = (!(200..300).contains(&status)).then(|| {
                if (300..400).contains(&status) {
                    format!("http_{status}: redirects are not followed")
                } else {
                    format!("http_{status}")
                }
            });
            done(Some(status), error, retry_after)
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect_error"
            } else {
                "request_error"
            };
            // The error's Display can contain the URL: log only its kind and
            // the innermost cause.
            let cause = std::error::Error::source(&e)
                .map(|s| {
                    let mut s: &dyn std::error::Error = s;
                    while let Some(inner) = s.source() {
                        s = inner;
                    }
                    s.to_string()
                })
                .unwrap_or_default();
            let msg = if cause.is_empty() {
                kind.to_owned()
            } else {
                format!("{kind}: {cause}")
            };
            done(None, Some(msg), None)
        }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let fmt = time::format_description::well_known::Rfc2822;
    let at = OffsetDateTime::parse(v, &fmt).ok()?;
    let now = OffsetDateTime::now_utc();
    Some(Duration::try_from(at - now).unwrap_or(Duration::ZERO))
}

/// What follows an attempt.
pub(crate) fn decide(
    config: &WebhookConfig,
    exchange: &Exchange,
    attempt: u32,
    max_retries: u32,
) -> AttemptOutcome {
    if exchange.succeeded() {
        return AttemptOutcome::Succeeded;
    }
    if exchange.status == Some(410) {
        return AttemptOutcome::Gone;
    }
    let retries_used = attempt.saturating_sub(1);
    if retries_used >= max_retries {
        return AttemptOutcome::Dead;
    }
    let delay = match exchange.retry_after {
        Some(d) => d.min(config.retry_after_cap),
        None => jittered(config.retry_delay(attempt), config.jitter),
    };
    let now = OffsetDateTime::now_utc();
    AttemptOutcome::Retry(now + delay)
}

fn jittered(d: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return d;
    }
    let f = rand::rng().random_range((1.0 - jitter)..=(1.0 + jitter));
    d.mul_f64(f.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(status: Option<u16>, retry_after: Option<Duration>) -> Exchange {
        Exchange {
            started_at: OffsetDateTime::now_utc(),
            duration: Duration::ZERO,
            status,
            error: None,
            retry_after,
        }
    }

    #[test]
    fn decisions() {
        let c = WebhookConfig::default();
        assert_eq!(
            decide(&c, &ex(Some(204), None), 1, 4),
            AttemptOutcome::Succeeded
        );
        assert_eq!(decide(&c, &ex(Some(410), None), 1, 4), AttemptOutcome::Gone);
        assert!(matches!(
            decide(&c, &ex(Some(301), None), 1, 4),
            AttemptOutcome::Retry(_)
        ));
        assert!(matches!(
            decide(&c, &ex(None, None), 4, 4),
            AttemptOutcome::Retry(_)
        ));
        assert_eq!(decide(&c, &ex(Some(500), None), 5, 4), AttemptOutcome::Dead);
        assert_eq!(decide(&c, &ex(Some(500), None), 1, 0), AttemptOutcome::Dead);
    }

    #[test]
    fn retry_delays_follow_schedule_with_jitter_and_cap() {
        let c = WebhookConfig::default();
        for (attempt, base) in [(1, 1.0), (2, 5.0), (3, 25.0), (4, 125.0), (9, 125.0)] {
            let before = OffsetDateTime::now_utc();
            let AttemptOutcome::Retry(at) = decide(&c, &ex(Some(500), None), attempt, 10) else {
                panic!("retry expected");
            };
            let secs = (at - before).as_seconds_f64();
            assert!(
                secs >= base * 0.9 - 0.01 && secs <= base * 1.1 + 0.05,
                "{attempt}: {secs}"
            );
        }
        let AttemptOutcome::Retry(at) =
            decide(&c, &ex(Some(503), Some(Duration::from_secs(7200))), 1, 4)
        else {
            panic!()
        };
        let secs = (at - OffsetDateTime::now_utc()).as_seconds_f64();
        assert!((3590.0..=3600.5).contains(&secs), "capped at 1 h: {secs}");
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
