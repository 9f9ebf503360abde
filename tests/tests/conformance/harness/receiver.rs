//! A real webhook receiver (axum on 127.0.0.1:0) with scripted answers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::sync::watch;

use super::{Server, WAIT, client};

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub status: u16,
}

impl Recorded {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    script: VecDeque<u16>,
    requests: Vec<Recorded>,
}

/// A webhook receiver on 127.0.0.1:0: answers scripted statuses (then 200)
/// and records every request.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<ReceiverState>>,
    count: watch::Receiver<usize>,
}

type RecvState = (Arc<Mutex<ReceiverState>>, Arc<watch::Sender<usize>>);

async fn receive(
    State((state, tx)): State<RecvState>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let n = {
        let mut s = state.lock().unwrap();
        let status = s.script.pop_front().unwrap_or(200);
        s.requests.push(Recorded {
            headers,
            body,
            at: Instant::now(),
            status,
        });
        (s.requests.len(), status)
    };
    tx.send_replace(n.0);
    StatusCode::from_u16(n.1).unwrap()
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let (tx, count) = watch::channel(0);
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state((state.clone(), Arc::new(tx)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state, count }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next requests are answered with `statuses`, in order.
    pub fn script(&self, statuses: &[u16]) {
        self.state.lock().unwrap().script.extend(statuses);
    }

    /// Waits until `n` requests arrived and returns all of them.
    pub async fn wait_for(&self, n: usize) -> Vec<Recorded> {
        let mut count = self.count.clone();
        tokio::time::timeout(WAIT, count.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("the receiver did not get {n} requests in time"))
            .unwrap();
        self.requests()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }
}

/// Registers a webhook and returns its JSON.
pub async fn register_webhook(server: &Server, body: &Value) -> Value {
    let res = client()
        .post(server.url("/api/v1/webhooks"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "webhook registration refused: {answer}");
    answer
}

/// Asserts that `res` is a documented JSON error with `status`.
pub async fn assert_json_error(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status);
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(ct.starts_with("application/json"), "content-type {ct:?}");
    let err: Value = res.json().await.unwrap();
    assert!(
        err["error"].as_str().is_some_and(|c| !c.is_empty()),
        "{err}"
    );
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{err}"
    );
    err
}
