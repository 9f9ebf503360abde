//! A service unrelated to matric — a greenhouse sensor hub — streaming its
//! own event enum over SSE through `event_sse::SseChannel`.
//!
//! ```text
//! cargo run -p examples --bin third-party-sse -- 127.0.0.1:3001
//! curl -N localhost:3001/greenhouse/events
//! curl -N 'localhost:3001/greenhouse/events?format=envelope&events=alarm'
//! curl -N -H 'Last-Event-ID: 3' localhost:3001/greenhouse/events
//! curl -X POST localhost:3001/greenhouse/readings -H 'content-type: application/json' \
//!      -d '{"sensor":"north","celsius":41.5}'
//! ```
//!
//! The service owns its types, routes and state; event-sse only frames,
//! fans out, replays, filters and signals lag.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use event_sse::bytes::Bytes;
use event_sse::{Format, SseChannel, SseConfig, SseEvent};
use serde::{Deserialize, Serialize};

/// The greenhouse's own events.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Greenhouse {
    /// A temperature reading.
    Reading { sensor: String, celsius: f64 },
    /// A reading above the alarm threshold.
    Alarm { sensor: String, message: String },
}

/// An event with its position in the stream and its JSON, rendered once.
struct Stamped {
    seq: u64,
    event: Greenhouse,
    json: Bytes,
    envelope: Bytes,
}

impl Stamped {
    fn new(seq: u64, event: Greenhouse) -> Self {
        let json = serde_json::to_vec(&event).unwrap_or_default();
        let envelope = serde_json::to_vec(&serde_json::json!({ "seq": seq, "event": event }))
            .unwrap_or_default();
        Stamped {
            seq,
            event,
            json: Bytes::from(json),
            envelope: Bytes::from(envelope),
        }
    }
}

impl SseEvent for Stamped {
    fn event_type(&self, format: Format) -> &str {
        match (&self.event, format) {
            (Greenhouse::Reading { .. }, Format::V1) => "reading",
            (Greenhouse::Alarm { .. }, Format::V1) => "alarm",
            (Greenhouse::Reading { .. }, Format::Envelope) => "greenhouse.reading",
            (Greenhouse::Alarm { .. }, Format::Envelope) => "greenhouse.alarm",
        }
    }

    fn sequence(&self) -> u64 {
        self.seq
    }

    fn data(&self, format: Format) -> Bytes {
        match format {
            Format::V1 => self.json.clone(),
            Format::Envelope => self.envelope.clone(),
        }
    }
}

/// The service's state.
#[derive(Clone)]
struct Sensors {
    channel: SseChannel<Stamped>,
    alarm_above: f64,
}

impl Sensors {
    fn new() -> Self {
        Sensors {
            channel: SseChannel::new(256, SseConfig::default()),
            alarm_above: 35.0,
        }
    }

    /// Publishes `event`; returns its sequence number. The channel numbers
    /// events in publish order and hands the number over to be kept in
    /// the event (its envelope JSON carries it).
    fn publish(&self, event: Greenhouse) -> u64 {
        self.channel.publish(|seq| Stamped::new(seq, event))
    }
}

#[derive(Deserialize)]
struct ReadingIn {
    sensor: String,
    celsius: f64,
}

async fn post_reading(
    State(sensors): State<Sensors>,
    Json(r): Json<ReadingIn>,
) -> (StatusCode, Json<serde_json::Value>) {
    let seq = sensors.publish(Greenhouse::Reading {
        sensor: r.sensor.clone(),
        celsius: r.celsius,
    });
    if r.celsius > sensors.alarm_above {
        sensors.publish(Greenhouse::Alarm {
            message: format!("{} is at {:.1} °C", r.sensor, r.celsius),
            sensor: r.sensor,
        });
    }
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "seq": seq })),
    )
}

/// The whole app: the service's own routes plus the SSE stream.
fn app(sensors: &Sensors) -> Router {
    Router::new()
        .route("/greenhouse/readings", post(post_reading))
        .with_state(sensors.clone())
        .merge(sensors.channel.router("/greenhouse/events"))
        .layer(event_sse::cors_layer(["*"]))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3001".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let sensors = Sensors::new();
    let simulated = sensors.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        for i in 0u32.. {
            tick.tick().await;
            simulated.publish(Greenhouse::Reading {
                sensor: "simulated".to_owned(),
                celsius: 20.0 + f64::from(i % 20),
            });
        }
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!(
        "greenhouse events on http://{}/greenhouse/events",
        listener.local_addr()?
    );
    let channel = sensors.channel.clone();
    // Events are small writes that must leave at once: without TCP_NODELAY,
    // Nagle's algorithm and the client's delayed ACK hold one back ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    // A client that stops reading is cut off after 30 s instead of holding
    // its connection (and the graceful shutdown) forever.
    let listener = event_sse::write_timeout(listener, Duration::from_secs(30));
    axum::serve(listener, app(&sensors))
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            // Ends every open stream, so the graceful shutdown completes.
            channel.shutdown();
        })
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    const WAIT: Duration = Duration::from_secs(20);

    async fn start() -> (Sensors, SocketAddr) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let sensors = Sensors::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = app(&sensors);
        tokio::spawn(async move { axum::serve(listener, router).await });
        (sensors, addr)
    }

    async fn post(addr: SocketAddr, sensor: &str, celsius: f64) -> u64 {
        let resp = reqwest::Client::new()
            .post(format!("http://{addr}/greenhouse/readings"))
            .json(&serde_json::json!({ "sensor": sensor, "celsius": celsius }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        resp.json::<serde_json::Value>().await.unwrap()["seq"]
            .as_u64()
            .unwrap()
    }

    async fn events(
        url: String,
        headers: &[(&str, &str)],
    ) -> impl futures_util::Stream<Item = eventsource_stream::Event> + Unpin + use<> {
        let mut req = reqwest::Client::new().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Box::pin(resp.bytes_stream().eventsource().map(|e| e.unwrap()))
    }

    async fn next(
        s: &mut (impl futures_util::Stream<Item = eventsource_stream::Event> + Unpin),
    ) -> eventsource_stream::Event {
        tokio::time::timeout(WAIT, s.next()).await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn the_greenhouse_streams_its_own_events() {
        let (sensors, addr) = start().await;
        let mut all = events(format!("http://{addr}/greenhouse/events"), &[]).await;
        let mut alarms = events(
            format!("http://{addr}/greenhouse/events?format=envelope&events=alarm"),
            &[],
        )
        .await;
        assert_eq!(sensors.channel.connections(), 2);

        let first = post(addr, "north", 21.0).await;
        post(addr, "south", 41.5).await;

        let e = next(&mut all).await;
        assert_eq!(
            (e.event.as_str(), e.id.clone()),
            ("reading", first.to_string())
        );
        assert_eq!(
            e.data,
            r#"{"kind":"reading","sensor":"north","celsius":21.0}"#
        );
        assert_eq!(next(&mut all).await.event, "reading");
        let alarm = next(&mut all).await;
        assert_eq!(alarm.event, "alarm");
        assert_eq!(alarm.id, (first + 2).to_string());

        let a = next(&mut alarms).await;
        assert_eq!(a.event, "greenhouse.alarm");
        let json: serde_json::Value = serde_json::from_str(&a.data).unwrap();
        assert_eq!(json["seq"], first + 2);
        assert_eq!(json["event"]["message"], "south is at 41.5 °C");

        // A reconnecting client resumes after the last id it saw.
        let mut resumed = events(
            format!("http://{addr}/greenhouse/events"),
            &[("Last-Event-ID", &first.to_string())],
        )
        .await;
        assert_eq!(next(&mut resumed).await.id, (first + 1).to_string());
        assert_eq!(next(&mut resumed).await.id, (first + 2).to_string());
    }
}
