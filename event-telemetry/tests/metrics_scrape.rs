//! Scrapes `/metrics` over real HTTP after recording through the shared
//! instruments, and checks exact names, types, labels and values.
//!
//! One test function: the meter provider is process-global, and the values
//! asserted are cumulative.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, serve, seven_events};
use event_core::metrics::{self as names, LATENCY_BUCKETS_MS};
use event_core::{
    BusConfig, EventBus, EventKind, EventSink, SeqStart, SinkRunner, Transport, TransportMetrics,
    Uuid,
};
use event_telemetry::{PROMETHEUS_CONTENT_TYPE, PrometheusMetrics, TelemetrySink};
use event_test_support::Scrape;
use opentelemetry::KeyValue;

async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let (status, content_type, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, PROMETHEUS_CONTENT_TYPE);
    assert!(!body.contains("otel_scope"), "scope labels leaked:\n{body}");
    assert!(
        !body.contains("target_info"),
        "target_info present:\n{body}"
    );
    Scrape::parse(&body)
}

#[tokio::test(flavor = "current_thread")]
async fn scrape_reports_every_protocol_metric_with_exact_values() {
    let metrics = PrometheusMetrics::install("scrape-test").expect("install");
    let addr = serve(metrics.router()).await;

    // The sink primes a zero series for every event type.
    let sink = TelemetrySink::new();
    let s = scrape(addr).await;
    for kind in EventKind::ALL {
        assert_eq!(
            s.value(
                "matric_events_published_total",
                &[("event_type", kind.type_name())]
            ),
            Some(0.0),
            "{kind:?}"
        );
    }

    // Connections: two WS, one SSE.
    let ws = TransportMetrics::new(Transport::WebSocket);
    let sse = TransportMetrics::new(Transport::Sse);
    ws.connection_opened();
    ws.connection_opened();
    sse.connection_opened();
    let s = scrape(addr).await;
    assert_eq!(
        s.kind("matric_ws_connections_active").unwrap_or("missing"),
        "gauge"
    );
    assert_eq!(
        s.kind("matric_sse_connections_active").unwrap_or("missing"),
        "gauge"
    );
    assert_eq!(s.value("matric_ws_connections_active", &[]), Some(2.0));
    assert_eq!(s.value("matric_sse_connections_active", &[]), Some(1.0));

    // Traffic.
    ws.events_sent(EventKind::JobQueued, 3);
    ws.events_sent(EventKind::NoteUpdated, 1);
    sse.events_sent(EventKind::JobQueued, 2);
    for _ in 0..4 {
        ws.observe_latency(Instant::now());
    }
    for _ in 0..2 {
        sse.observe_latency(Instant::now());
    }
    ws.dropped(5);

    // The webhook crate's instruments, by their shared names.
    let meter = names::meter();
    let deliveries = meter.u64_counter(names::WEBHOOK_DELIVERIES).build();
    for (status, n) in [("success", 2), ("retry", 1), ("failed", 1)] {
        deliveries.add(n, &[KeyValue::new("status", status)]);
    }
    let queue_depth = meter
        .i64_up_down_counter(names::WEBHOOK_QUEUE_DEPTH)
        .build();
    queue_depth.add(3, &[]);
    queue_depth.add(-1, &[]);
    names::latency_histogram(&meter).record(12.0, &[KeyValue::new("transport", "webhook")]);

    // Disconnects: gauges return to 0.
    ws.connection_closed("client_close");
    ws.connection_closed("client_close");
    sse.connection_closed("shutdown");

    // Published events through the real sink on a real bus.
    let bus = EventBus::default();
    let mut runner = SinkRunner::new(&bus);
    runner.register(Arc::new(sink.clone()));
    let (job, note) = (Uuid::now_v7(), Uuid::now_v7());
    for event in seven_events(job, note) {
        bus.publish(event);
    }
    for event in seven_events(job, note).into_iter().skip(1).take(1) {
        bus.publish(event); // a second JobQueued
    }
    let report = runner.shutdown(Duration::from_secs(5)).await;
    assert_eq!(report.finished, vec!["telemetry".to_owned()]);

    // A sink that lags: capacity 4, 10 events published before its task runs
    // (current-thread runtime), so it misses 6.
    let small = EventBus::new(BusConfig {
        capacity: 4,
        replay_size: 0,
        seq_start: SeqStart::At(1),
    });
    let mut lag_runner = SinkRunner::new(&small);
    let lag_stats = lag_runner.register(Arc::new(sink.clone()) as Arc<dyn EventSink>);
    for _ in 0..10 {
        small.publish(event_core::QueueStatus::new(1, 0));
    }
    lag_runner.shutdown(Duration::from_secs(5)).await;
    assert_eq!(lag_stats.snapshot().lagged, 6);
    // Only `bus` is left to report its replay ring (a dropped bus reports
    // nothing): the eight events it retains, and their weight.
    drop(small);

    let s = scrape(addr).await;

    assert_eq!(s.kind("matric_replay_ring_events"), Some("gauge"));
    assert_eq!(s.value("matric_replay_ring_events", &[]), Some(8.0));
    assert_eq!(
        s.value("matric_replay_ring_bytes", &[]),
        Some(bus.retained_bytes() as f64)
    );
    assert!(bus.retained_bytes() > 0);

    // Gauges back to 0, closes counted by reason.
    assert_eq!(s.value("matric_ws_connections_active", &[]), Some(0.0));
    assert_eq!(s.value("matric_sse_connections_active", &[]), Some(0.0));
    assert_eq!(
        s.kind("matric_connections_closed_total")
            .unwrap_or("missing"),
        "counter"
    );
    assert_eq!(
        s.value(
            "matric_connections_closed_total",
            &[("transport", "ws"), ("reason", "client_close")]
        ),
        Some(2.0)
    );
    assert_eq!(
        s.value(
            "matric_connections_closed_total",
            &[("transport", "sse"), ("reason", "shutdown")]
        ),
        Some(1.0)
    );

    // Sent counters.
    assert_eq!(
        s.kind("matric_ws_events_sent_total").unwrap_or("missing"),
        "counter"
    );
    assert_eq!(
        s.kind("matric_sse_events_sent_total").unwrap_or("missing"),
        "counter"
    );
    assert_eq!(
        s.value(
            "matric_ws_events_sent_total",
            &[("event_type", "JobQueued")]
        ),
        Some(3.0)
    );
    assert_eq!(
        s.value(
            "matric_ws_events_sent_total",
            &[("event_type", "NoteUpdated")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value(
            "matric_sse_events_sent_total",
            &[("event_type", "JobQueued")]
        ),
        Some(2.0)
    );
    assert_eq!(s.label_names("matric_ws_events_sent_total"), ["event_type"]);

    // Published: one of each type, two JobQueued, plus the 4 QueueStatus the
    // lagging sink still saw (10 published, 6 missed).
    assert_eq!(
        s.kind("matric_events_published_total").unwrap_or("missing"),
        "counter"
    );
    for kind in EventKind::ALL {
        let want = match kind {
            EventKind::JobQueued => 2.0,
            EventKind::QueueStatus => 1.0 + 4.0,
            _ => 1.0,
        };
        assert_eq!(
            s.value(
                "matric_events_published_total",
                &[("event_type", kind.type_name())]
            ),
            Some(want),
            "{kind:?}"
        );
    }

    // Drops and lag.
    assert_eq!(
        s.kind("matric_events_dropped_total").unwrap_or("missing"),
        "counter"
    );
    assert_eq!(
        s.value("matric_events_dropped_total", &[("consumer", "ws")]),
        Some(5.0)
    );
    assert_eq!(
        s.value("matric_events_dropped_total", &[("consumer", "telemetry")]),
        Some(6.0)
    );
    assert_eq!(
        s.kind("matric_bus_lagged_events_total")
            .unwrap_or("missing"),
        "counter"
    );
    assert_eq!(
        s.value(
            "matric_bus_lagged_events_total",
            &[("consumer", "telemetry")]
        ),
        Some(6.0)
    );

    // Webhooks.
    assert_eq!(
        s.kind("matric_webhook_deliveries_total")
            .unwrap_or("missing"),
        "counter"
    );
    for (status, n) in [("success", 2.0), ("retry", 1.0), ("failed", 1.0)] {
        assert_eq!(
            s.value("matric_webhook_deliveries_total", &[("status", status)]),
            Some(n)
        );
    }
    assert_eq!(
        s.kind("matric_webhook_queue_depth").unwrap_or("missing"),
        "gauge"
    );
    assert_eq!(s.value("matric_webhook_queue_depth", &[]), Some(2.0));

    // Latency histogram: counts per transport, the configured buckets.
    assert_eq!(
        s.kind("matric_event_latency_ms").unwrap_or("missing"),
        "histogram"
    );
    for (transport, n) in [("ws", 4.0), ("sse", 2.0), ("webhook", 1.0)] {
        assert_eq!(
            s.value("matric_event_latency_ms_count", &[("transport", transport)]),
            Some(n),
            "{transport}"
        );
        assert_eq!(
            s.value(
                "matric_event_latency_ms_bucket",
                &[("transport", transport), ("le", "+Inf")]
            ),
            Some(n)
        );
    }
    assert_eq!(
        s.value(
            "matric_event_latency_ms_bucket",
            &[("transport", "webhook"), ("le", "10")]
        ),
        Some(0.0)
    );
    assert_eq!(
        s.value(
            "matric_event_latency_ms_bucket",
            &[("transport", "webhook"), ("le", "25")]
        ),
        Some(1.0)
    );
    assert_eq!(
        s.value("matric_event_latency_ms_sum", &[("transport", "webhook")]),
        Some(12.0)
    );
    let mut bounds: Vec<String> = s
        .samples
        .iter()
        .filter(|x| {
            x.name == "matric_event_latency_ms_bucket"
                && x.labels.get("transport").map(String::as_str) == Some("ws")
        })
        .map(|x| x.labels["le"].clone())
        .collect();
    let want: Vec<String> = LATENCY_BUCKETS_MS
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_owned()])
        .collect();
    bounds.dedup();
    assert_eq!(bounds, want);

    // Every metric's labels are exactly the documented ones.
    for (metric, labels) in [
        ("matric_ws_connections_active", vec![]),
        ("matric_sse_connections_active", vec![]),
        ("matric_events_published_total", vec!["event_type"]),
        ("matric_sse_events_sent_total", vec!["event_type"]),
        ("matric_events_dropped_total", vec!["consumer"]),
        ("matric_webhook_deliveries_total", vec!["status"]),
        ("matric_event_latency_ms_count", vec!["transport"]),
        ("matric_event_latency_ms_bucket", vec!["le", "transport"]),
        ("matric_bus_lagged_events_total", vec!["consumer"]),
    ] {
        assert_eq!(s.label_names(metric), labels, "{metric}");
    }
}
