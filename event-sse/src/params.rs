//! Request parsing shared by the endpoints.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::{HeaderMap, Uri};

use crate::compress::{Compression, Encoding};
use crate::config::{MAX_HEARTBEAT_SECS, MIN_HEARTBEAT_SECS};
use crate::error::SseError;
use crate::event::Format;

/// The header a G2 client scopes its stream to a memory with.
pub const MEMORY_HEADER: &str = "x-fortemi-memory";

/// The query string as a map (the last value of a repeated key wins).
pub(crate) struct Query(HashMap<String, String>);

impl Query {
    pub(crate) fn parse(uri: &Uri) -> Result<Query, SseError> {
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
            .map(|q| Query(q.0))
            .map_err(|e| SseError::MalformedQuery(e.body_text()))
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub(crate) fn format(&self, default: Format) -> Result<Format, SseError> {
        match self.get("format") {
            None => Ok(default),
            Some(v) => Format::parse(v.trim())
                .ok_or_else(|| SseError::param("format", v, "expected `v1` or `envelope`")),
        }
    }

    pub(crate) fn heartbeat(&self, default: Duration) -> Result<Duration, SseError> {
        let Some(raw) = self.get("heartbeat") else {
            return Ok(default);
        };
        match raw.trim().parse::<u64>() {
            Ok(s) if (MIN_HEARTBEAT_SECS..=MAX_HEARTBEAT_SECS).contains(&s) => {
                Ok(Duration::from_secs(s))
            }
            _ => Err(SseError::param(
                "heartbeat",
                raw,
                format!("expected whole seconds from {MIN_HEARTBEAT_SECS} to {MAX_HEARTBEAT_SECS}"),
            )),
        }
    }

    /// The stream's `Content-Encoding`: negotiated from `Accept-Encoding`
    /// among what `offered` holds, unless `compression=false` (or `0`,
    /// `off`, `no`) asks for plain; `compression=true` (`1`, `on`, `yes`)
    /// is the default.
    pub(crate) fn encoding(
        &self,
        headers: &HeaderMap,
        offered: Compression,
    ) -> Result<Option<Encoding>, SseError> {
        let wanted = match self.get("compression").map(str::trim) {
            None => true,
            Some(v)
                if ["true", "1", "on", "yes"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                true
            }
            Some(v)
                if ["false", "0", "off", "no"]
                    .iter()
                    .any(|t| v.eq_ignore_ascii_case(t)) =>
            {
                false
            }
            Some(v) => {
                return Err(SseError::param(
                    "compression",
                    v,
                    "expected `true` or `false`",
                ));
            }
        };
        Ok(wanted.then(|| offered.negotiate(headers)).flatten())
    }

    /// `max_rate=` (events per second, `0`: none), else `default`.
    pub(crate) fn max_rate(
        &self,
        default: Option<NonZeroU32>,
    ) -> Result<Option<NonZeroU32>, SseError> {
        match self.get("max_rate") {
            None => Ok(default),
            Some(raw) => event_core::pace::parse_max_rate(raw)
                .map_err(|why| SseError::param("max_rate", raw, why)),
        }
    }

    /// The outbox limits with `buffer_max_bytes=`, if given, as the byte
    /// budget ([`OutboxLimits::with_client_budget`]).
    pub(crate) fn outbox(
        &self,
        server: event_core::OutboxLimits,
        max_event_bytes: usize,
    ) -> Result<event_core::OutboxLimits, SseError> {
        let raw = self.get("buffer_max_bytes");
        let requested = match raw {
            None => None,
            Some(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                SseError::param("buffer_max_bytes", v, "expected a whole number of bytes")
            })?),
        };
        server
            .with_client_budget(requested, max_event_bytes)
            .map_err(|why| SseError::param("buffer_max_bytes", raw.unwrap_or_default(), why))
    }

    /// `memory=` first, else the `X-Fortemi-Memory` header.
    pub(crate) fn memory<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> Result<Option<&'a str>, SseError> {
        if let Some(m) = self.get("memory") {
            return Ok(Some(m));
        }
        match headers.get(MEMORY_HEADER) {
            None => Ok(None),
            Some(v) => v.to_str().map(Some).map_err(|_| SseError::InvalidFilter {
                param: "memory",
                value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                reason: "the X-Fortemi-Memory header is not visible ASCII".to_owned(),
            }),
        }
    }

    /// The replay cursor: the `Last-Event-ID` header (precedence), else the
    /// `last_event_id` query parameter. Blank values count as absent.
    pub(crate) fn last_event_id<'a>(&'a self, headers: &'a HeaderMap) -> Option<String> {
        let header = headers
            .get("last-event-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        header
            .or_else(|| self.get("last_event_id").map(str::to_owned))
            .filter(|v| !v.trim().is_empty())
    }
}
