//! A real axum HTTP receiver on 127.0.0.1:0 that answers with scripted
//! statuses and delays and records every request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

/// One scripted answer.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

/// A recorded request.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

#[derive(Default)]
struct Inner {
    scripts: HashMap<String, VecDeque<Reply>>,
    defaults: HashMap<String, Reply>,
    requests: Vec<Recorded>,
}

/// The receiver handle.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    count: watch::Receiver<usize>,
    tx: Arc<watch::Sender<usize>>,
}

async fn handle(
    State(rx): State<Receiver>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut inner = rx.inner.lock().unwrap();
        inner.requests.push(Recorded {
            path: path.clone(),
            headers,
            body,
            at: Instant::now(),
        });
        let scripted = inner.scripts.get_mut(&path).and_then(VecDeque::pop_front);
        scripted
            .or_else(|| inner.defaults.get(&path).cloned())
            .unwrap_or_else(|| Reply::status(200))
    };
    let n = rx.inner.lock().unwrap().requests.len();
    rx.tx.send_replace(n);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = StatusCode::from_u16(reply.status).unwrap().into_response();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

impl Receiver {
    /// Starts a receiver; every path `/{name}` answers 200 unless scripted.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, count) = watch::channel(0);
        let rx = Receiver {
            addr,
            inner: Arc::default(),
            count,
            tx: Arc::new(tx),
        };
        let app = Router::new()
            .route("/{path}", axum::routing::post(handle))
            .with_state(rx.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        rx
    }

    /// The URL of `path` on this receiver.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// Queues scripted replies for `path`, answered in order.
    pub fn script(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        self.inner
            .lock()
            .unwrap()
            .scripts
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    /// The reply for `path` once its script is used up.
    pub fn default_reply(&self, path: &str, reply: Reply) {
        self.inner
            .lock()
            .unwrap()
            .defaults
            .insert(path.to_owned(), reply);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Requests to `path`.
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until `pred(requests)` holds, at most `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&[Recorded]) -> bool,
    ) -> Vec<Recorded> {
        let mut count = self.count.clone();
        let result = tokio::time::timeout(timeout, async {
            loop {
                // Judge under the lock: cloning every request on every
                // change would make long runs quadratic.
                if pred(&self.inner.lock().unwrap().requests) {
                    return self.requests();
                }
                count.changed().await.unwrap();
            }
        })
        .await;
        match result {
            Ok(reqs) => reqs,
            Err(_) => panic!(
                "receiver condition not met within {timeout:?} ({} requests)",
                self.requests().len()
            ),
        }
    }

    /// Waits until `path` received at least `n` requests.
    pub async fn wait_for(&self, path: &str, n: usize, timeout: Duration) -> Vec<Recorded> {
        self.wait_until(timeout, |r| {
            r.iter().filter(|x| x.path == path).count() >= n
        })
        .await
        .into_iter()
        .filter(|r| r.path == path)
        .collect()
    }
}
