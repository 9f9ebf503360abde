//! An SSE client that keeps every frame's exact bytes.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::{WAIT, stream_client};

/// One SSE frame, with its exact bytes.
#[derive(Debug, Clone)]
pub struct Frame {
    pub raw: String,
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub retry: Option<String>,
    pub comment: bool,
    pub at: Instant,
}

impl Frame {
    fn parse(raw: String) -> Frame {
        let mut f = Frame {
            raw: raw.clone(),
            id: None,
            event: None,
            data: None,
            retry: None,
            comment: false,
            at: Instant::now(),
        };
        for line in raw.trim_end_matches('\n').split('\n') {
            if line.starts_with(':') {
                f.comment = true;
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
            match field {
                "id" => f.id = Some(value),
                "event" => f.event = Some(value),
                "data" => {
                    f.data = Some(match f.data.take() {
                        Some(d) => format!("{d}\n{value}"),
                        None => value,
                    })
                }
                "retry" => f.retry = Some(value),
                _ => {}
            }
        }
        f
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("frame without data")).unwrap()
    }

    /// Whether this frame carries an event (not a comment or `retry`).
    pub fn is_event(&self) -> bool {
        self.data.is_some()
    }
}

/// An SSE client reading frames off a real HTTP response.
pub struct SseClient {
    pub response: reqwest::Response,
    buf: Vec<u8>,
    /// Every byte received so far (for the LF-only check).
    pub all: Vec<u8>,
    ended: bool,
}

impl SseClient {
    /// Connects; panics unless the answer is 200.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> SseClient {
        let res = SseClient::request(url, headers).await;
        assert_eq!(res.status(), 200, "GET {url}");
        SseClient::from_response(res)
    }

    pub async fn request(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = stream_client().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        tokio::time::timeout(WAIT, req.send())
            .await
            .expect("SSE request timed out")
            .unwrap()
    }

    pub fn from_response(response: reqwest::Response) -> SseClient {
        SseClient {
            response,
            buf: Vec::new(),
            all: Vec::new(),
            ended: false,
        }
    }

    /// The next frame within `timeout`; `None` on timeout or end of stream.
    pub async fn frame_within(&mut self, timeout: Duration) -> Option<Frame> {
        self.frame_by(tokio::time::Instant::now() + timeout).await
    }

    /// The next frame before `deadline`; `None` after it or at the end of
    /// the stream: for waits bounded in all, across several frames.
    pub async fn frame_by(&mut self, deadline: tokio::time::Instant) -> Option<Frame> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Some(Frame::parse(String::from_utf8(raw).expect("SSE is UTF-8")));
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Err(_) => return None,
                Ok(Ok(Some(chunk))) => {
                    self.buf.extend_from_slice(&chunk);
                    self.all.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) | Ok(Err(_)) => self.ended = true,
            }
        }
    }

    /// The next frame; panics on timeout or end.
    pub async fn next_frame(&mut self) -> Frame {
        self.frame_within(WAIT)
            .await
            .expect("no SSE frame in time (or the stream ended)")
    }

    /// The next frame `want` accepts, skipping others, within [`WAIT`] in
    /// all (SSE keep-alives and the periodic `QueueStatus` must not keep a
    /// missing frame waited for forever).
    pub async fn next_where(&mut self, want: impl Fn(&Frame) -> bool) -> Frame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let f = self
                .frame_by(deadline)
                .await
                .expect("no matching SSE frame in time (or the stream ended)");
            if want(&f) {
                return f;
            }
        }
    }

    /// The next event frame that is not a `QueueStatus` (the bridge sends
    /// those on its own schedule).
    pub async fn next_non_queue(&mut self) -> Frame {
        self.next_where(|f| {
            f.is_event()
                && f.event.as_deref() != Some("QueueStatus")
                && f.event.as_deref() != Some("queue.status")
        })
        .await
    }

    /// Whether the stream ends within `timeout`.
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            if self.frame_by(deadline).await.is_none() {
                return self.ended;
            }
        }
    }
}
