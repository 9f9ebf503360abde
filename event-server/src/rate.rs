//! Per-producer rate limits on the write routes: `PUBLISH_MAX_RATE` on
//! `POST /api/v1/events` and `WEBHOOK_CREATE_MAX_RATE` on
//! `POST /api/v1/webhooks`.
//!
//! Each producer has its own token bucket (`governor`'s GCRA): a producer
//! is its token's principal id, or its IP address when it has no token
//! (anonymous local mode). The bucket holds one second's worth of requests,
//! so a producer may burst up to the rate and then keeps to it. Over the
//! rate it gets `429 too_many_requests` with `Retry-After` (whole seconds,
//! at least 1) naming the setting; the request's body is never read, and
//! other producers are unaffected.
//!
//! The check runs after the route's auth (so an unauthenticated flood gets
//! `401`s, not a bucket) and before its body. Buckets of producers that
//! went quiet are dropped once more than [`MAX_TRACKED`] are kept, at most
//! once a second, so a spray of source addresses cannot grow memory
//! without bound.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use event_core::{Credentials, Principal};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ServerError;

/// Producers whose buckets are kept before quiet ones are dropped.
pub const MAX_TRACKED: usize = 10_000;

/// Which requests of a route count against its limit.
pub type Counts = fn(&Method, &str) -> bool;

/// One route's limit (the state of [`limit`]).
#[derive(Clone)]
pub struct RateGuard {
    inner: Arc<Inner>,
}

struct Inner {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
    setting: &'static str,
    per_second: u32,
    counts: Counts,
    started: Instant,
    /// Milliseconds since `started` of the last sweep of quiet buckets.
    last_sweep_ms: AtomicU64,
}

impl std::fmt::Debug for RateGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateGuard")
            .field("setting", &self.inner.setting)
            .field("per_second", &self.inner.per_second)
            .finish_non_exhaustive()
    }
}

impl RateGuard {
    /// `per_second` requests per producer for the requests `counts`
    /// selects, named `setting` in refusals; `None` when `per_second` is 0
    /// (unlimited).
    pub fn per_second(setting: &'static str, per_second: u32, counts: Counts) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        Some(RateGuard {
            inner: Arc::new(Inner {
                limiter: RateLimiter::keyed(Quota::per_second(rate)),
                clock: DefaultClock::default(),
                setting,
                per_second,
                counts,
                started: Instant::now(),
                last_sweep_ms: AtomicU64::new(0),
            }),
        })
    }

    /// Takes one request of `producer` from its bucket, or says how long
    /// until it may send again.
    fn take(&self, producer: &str) -> Result<(), Duration> {
        let inner = &self.inner;
        let taken = inner
            .limiter
            .check_key(&producer.to_owned())
            .map_err(|not_until| not_until.wait_time_from(inner.clock.now()));
        if inner.limiter.len() > MAX_TRACKED {
            let now_ms = inner.started.elapsed().as_millis() as u64;
            let last = inner.last_sweep_ms.load(Ordering::Relaxed);
            if now_ms.saturating_sub(last) >= 1_000
                && inner
                    .last_sweep_ms
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                inner.limiter.retain_recent();
            }
        }
        taken
    }
}

/// The producer a request counts for: the principal its token names, or
/// its IP address when it presented no token (anonymous local mode, where
/// one principal stands for every client).
fn producer(request: &Request) -> String {
    let token = crate::guard::query_token(request.uri().query());
    let presented = Credentials::from_headers(request.headers(), token.as_deref())
        .token
        .is_some();
    match request.extensions().get::<Principal>() {
        Some(p) if presented => format!("principal:{}", p.id),
        _ => match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(addr)) => format!("ip:{}", addr.ip()),
            None => "unknown".to_owned(),
        },
    }
}

/// Middleware: `429` with `Retry-After` for a producer over the route's
/// rate; see the [module docs](self).
pub async fn limit(State(guard): State<RateGuard>, request: Request, next: Next) -> Response {
    if !(guard.inner.counts)(request.method(), request.uri().path()) {
        return next.run(request).await;
    }
    match guard.take(&producer(&request)) {
        Ok(()) => next.run(request).await,
        Err(wait) => {
            let retry_after_secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            ServerError::TooManyRequests {
                message: format!(
                    "over {}={} requests per second for this producer; retry in {retry_after_secs} s",
                    guard.inner.setting, guard.inner.per_second
                ),
                retry_after_secs,
            }
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &Method, _: &str) -> bool {
        true
    }

    #[test]
    fn zero_is_unlimited() {
        assert!(RateGuard::per_second("X", 0, any).is_none());
    }

    #[test]
    fn each_producer_has_its_own_bucket() {
        let guard = RateGuard::per_second("X", 1, any).expect("a limit");
        assert!(guard.take("a").is_ok());
        let wait = guard.take("a").expect_err("the second in the same second");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(guard.take("b").is_ok(), "another producer is not limited");
    }
}
