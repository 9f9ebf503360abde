//! The fan-out's publisher, offering load the way an independent client
//! does.
//!
//! Every `--batch-ms` it posts the events due at `--rate` (a fixed batch:
//! `rate × batch_ms` events) to `POST /api/v1/events`, on one of
//! `--publish-connections` keep-alive connections, **without waiting for
//! earlier answers**: requests are pipelined, so a slow answer does not
//! lower the offered rate or grow the next batch (which would hide a
//! starved intake: one big batch per slow answer keeps "published/s" at the
//! rate while the server answers a request every 100 ms). Each request's
//! latency runs from when it was due to its answer.
//!
//! What becomes of the offered events:
//! * **accepted**: answered `2xx` within `--publish-timeout`; only these are
//!   expected at the subscribers;
//! * **late**: answered `2xx` after the timeout (a client with that timeout
//!   gave up on them);
//! * **refused**: any other status;
//! * **timed out**: never answered before the run ended (and the timeout
//!   passed);
//! * **failed**: on a connection that broke before the answer;
//! * **backlogged**: never sent, because every connection already had
//!   `--publish-window` requests waiting for an answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::client::unix_nanos;
use crate::hist::Histogram;
use crate::http::{Target, read_response};
use crate::{MAX_BATCH, MAX_BODY_BYTES, Pad, probe_batch};

/// How the publisher offers its load.
#[derive(Debug, Clone)]
pub struct PublishPlan {
    /// Events offered per second.
    pub rate: f64,
    /// Seconds of offering.
    pub duration: f64,
    /// Milliseconds between requests.
    pub batch_ms: u64,
    /// Bytes per event.
    pub payload: usize,
    /// What pads each event.
    pub pad: Pad,
    /// Keep-alive connections per server.
    pub connections: usize,
    /// Requests a connection may have waiting for an answer.
    pub window: usize,
    /// An answer later than this does not acknowledge its events.
    pub timeout: Duration,
    /// `Authorization` header value.
    pub auth: Option<String>,
}

/// What the publisher offered and what the servers made of it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Events offered (`rate × duration`).
    pub offered: u64,
    /// Events in `2xx` answers within the timeout.
    pub accepted: u64,
    /// Events in `2xx` answers after the timeout.
    pub late: u64,
    /// Events in other answers.
    pub refused: u64,
    /// Events never answered.
    pub timed_out: u64,
    /// Events on connections that broke before their answer.
    pub failed: u64,
    /// Events never sent: every connection's window was full.
    pub backlogged: u64,
    /// Requests sent.
    pub requests: u64,
    /// Per answered request, from when it was due to its answer (ns).
    pub latency: Histogram,
    /// Seconds from the first request to the last one.
    pub elapsed: f64,
    /// The first refusal or connection error.
    pub error: Option<String>,
    /// The accepted events' counters, one bit each.
    pub acked: Vec<u64>,
    /// The highest accepted counter.
    pub last_acked: Option<u64>,
}

/// A request on its way: when it was due and which counters it carries.
struct Flight {
    due: Instant,
    first: u64,
    n: u64,
}

/// Answers, tallied by the connections' readers.
struct Tally {
    timeout: Duration,
    outcome: Outcome,
}

impl Tally {
    fn answered(&mut self, flight: &Flight, status: Result<u16, String>, body: &[u8]) {
        let took = flight.due.elapsed();
        let o = &mut self.outcome;
        match status {
            Ok(status) if (200..300).contains(&status) => {
                o.latency.record(took.as_nanos() as u64);
                if took > self.timeout {
                    o.late += flight.n;
                    return;
                }
                o.accepted += flight.n;
                for n in flight.first..flight.first + flight.n {
                    let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
                    if let Some(w) = o.acked.get_mut(word) {
                        *w |= bit;
                    }
                }
                let last = flight.first + flight.n - 1;
                o.last_acked = Some(o.last_acked.map_or(last, |l| l.max(last)));
            }
            Ok(status) => {
                o.latency.record(took.as_nanos() as u64);
                o.refused += flight.n;
                o.error.get_or_insert_with(|| {
                    format!(
                        "publish answered {status}: {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )
                });
            }
            Err(e) => {
                o.failed += flight.n;
                o.error.get_or_insert(e);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One pipelined keep-alive connection: a writer sending what it is given,
/// a reader matching answers to requests in order.
struct Conn {
    /// Index of its server (cluster mode tags events with it).
    server: usize,
    requests: mpsc::Sender<Vec<u8>>,
    flights: Arc<Mutex<VecDeque<Flight>>>,
    dead: Arc<AtomicBool>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Conn {
    async fn open(
        target: &Target,
        server: usize,
        window: usize,
        tally: Arc<Mutex<Tally>>,
        accepted: Arc<AtomicU64>,
    ) -> Result<Conn, String> {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("publisher connect {}: {e}", target.addr))?;
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let (requests, mut queue) = mpsc::channel::<Vec<u8>>(window.max(1));
        let flights: Arc<Mutex<VecDeque<Flight>>> = Arc::default();
        let dead = Arc::new(AtomicBool::new(false));
        let writer = tokio::spawn({
            let dead = dead.clone();
            async move {
                while let Some(request) = queue.recv().await {
                    if write.write_all(&request).await.is_err() {
                        break;
                    }
                }
                dead.store(true, Ordering::Relaxed);
            }
        });
        let reader = tokio::spawn({
            let (flights, dead) = (flights.clone(), dead.clone());
            async move {
                let mut buf = Vec::with_capacity(8192);
                loop {
                    let answer = read_response(&mut read, &mut buf).await;
                    let Some(flight) = lock(&flights).pop_front() else {
                        // An answer to nothing (or the server closing an idle connection).
                        break;
                    };
                    let mut tally = lock(&tally);
                    match answer {
                        Ok(resp) => {
                            tally.answered(&flight, Ok(resp.status), &resp.body);
                            accepted.store(tally.outcome.accepted, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tally.answered(&flight, Err(format!("publish connection: {e}")), b"");
                            break;
                        }
                    }
                }
                dead.store(true, Ordering::Relaxed);
            }
        });
        Ok(Conn {
            server,
            requests,
            flights,
            dead,
            tasks: [writer, reader],
        })
    }

    fn waiting(&self) -> usize {
        lock(&self.flights).len()
    }
}

/// The request bytes of one batch.
fn request(target: &Target, auth: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "POST /api/v1/events HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        target.authority,
        body.len()
    );
    if let Some(auth) = auth {
        head.push_str("authorization: ");
        head.push_str(auth);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Offers `rate × duration` probe events to `targets` (in turn); `accepted`
/// follows the accepted count for the progress line.
pub async fn publish(plan: PublishPlan, targets: Vec<Target>, accepted: Arc<AtomicU64>) -> Outcome {
    let total = (plan.rate * plan.duration).round().max(0.0) as u64;
    let tally = Arc::new(Mutex::new(Tally {
        timeout: plan.timeout,
        outcome: Outcome {
            acked: vec![0; (total / 64 + 1) as usize],
            ..Outcome::default()
        },
    }));
    let cluster = targets.len() > 1;
    let mut conns = Vec::new();
    for (server, target) in targets.iter().enumerate() {
        for _ in 0..plan.connections.max(1) {
            match Conn::open(target, server, plan.window, tally.clone(), accepted.clone()).await {
                Ok(c) => conns.push(c),
                Err(e) => {
                    let mut t = lock(&tally);
                    t.outcome.error = Some(e);
                    t.outcome.offered = total;
                    t.outcome.failed = total;
                    return std::mem::take(&mut t.outcome);
                }
            }
        }
    }
    // Within the server's default body limit whatever the payload.
    let fits = (MAX_BODY_BYTES * 9 / 10 / (plan.payload as u64 + 512)).max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(plan.batch_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let deadline = Duration::from_secs_f64((plan.duration * 2.0 + 5.0).clamp(0.0, 86_400.0));
    let (mut offered, mut requests, mut backlogged, mut turn) = (0u64, 0u64, 0u64, 0usize);
    let mut body = Vec::new();
    let started = Instant::now();
    while offered < total && started.elapsed() < deadline {
        ticker.tick().await;
        let due = ((plan.rate * started.elapsed().as_secs_f64()).ceil() as u64).min(total);
        while offered < due {
            let n = (due - offered).min(MAX_BATCH).min(fits);
            let due_at = Instant::now();
            // The next connection in turn with room in its window.
            let pick = (0..conns.len())
                .map(|i| (turn + i) % conns.len())
                .find(|&i| {
                    !conns[i].dead.load(Ordering::Relaxed) && conns[i].waiting() < plan.window
                });
            turn += 1;
            let Some(at) = pick else {
                backlogged += n;
                offered += n;
                continue;
            };
            let conn = &conns[at];
            let t = unix_nanos();
            let origin = cluster.then_some(conn.server);
            probe_batch(&mut body, t, offered, n, origin, plan.payload, plan.pad);
            let bytes = request(&targets[conn.server], plan.auth.as_deref(), &body);
            lock(&conn.flights).push_back(Flight {
                due: due_at,
                first: offered,
                n,
            });
            if conn.requests.try_send(bytes).is_err() {
                lock(&conn.flights).pop_back();
                backlogged += n;
            } else {
                requests += 1;
            }
            offered += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Answers still due: until each request waiting has had its timeout.
    let drain_deadline = Instant::now() + plan.timeout + Duration::from_millis(100);
    while Instant::now() < drain_deadline
        && conns
            .iter()
            .any(|c| !c.dead.load(Ordering::Relaxed) && c.waiting() > 0)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for conn in &conns {
        for task in &conn.tasks {
            task.abort();
        }
    }
    let mut t = lock(&tally);
    for conn in &conns {
        let left: u64 = lock(&conn.flights).iter().map(|f| f.n).sum();
        if conn.dead.load(Ordering::Relaxed) {
            t.outcome.failed += left;
        } else {
            t.outcome.timed_out += left;
        }
    }
    let mut outcome = std::mem::take(&mut t.outcome);
    outcome.offered = offered;
    outcome.requests = requests;
    outcome.backlogged = backlogged;
    outcome.elapsed = elapsed;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(first: u64, n: u64, ago: Duration) -> Flight {
        Flight {
            due: Instant::now() - ago,
            first,
            n,
        }
    }

    #[test]
    fn answers_are_tallied_by_status_and_timeout() {
        let mut tally = Tally {
            timeout: Duration::from_secs(1),
            outcome: Outcome {
                acked: vec![0; 2],
                ..Outcome::default()
            },
        };
        tally.answered(&flight(0, 50, Duration::ZERO), Ok(202), b"");
        tally.answered(&flight(50, 10, Duration::from_secs(2)), Ok(202), b"");
        tally.answered(&flight(60, 5, Duration::ZERO), Ok(503), b"busy");
        tally.answered(&flight(65, 5, Duration::ZERO), Err("reset".into()), b"");
        let o = &tally.outcome;
        assert_eq!((o.accepted, o.late, o.refused, o.failed), (50, 10, 5, 5));
        assert_eq!(o.last_acked, Some(49));
        assert_eq!(o.acked[0].count_ones(), 50);
        assert_eq!(o.acked[1], 0);
        assert_eq!(o.latency.count(), 3);
        assert!(o.error.as_deref().is_some_and(|e| e.contains("503")));
    }
}
