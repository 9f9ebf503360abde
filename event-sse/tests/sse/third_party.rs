//! `SseChannel` over a type that has nothing to do with matric.

use std::time::Duration;

use event_core::OutboxLimits;
use event_sse::bytes::Bytes;
use event_sse::{Format, SseChannel, SseConfig, SseEvent, SseId};

use crate::common::{EsClient, RawSse, WAIT};

/// A shop's own events.
enum Shop {
    Ordered {
        seq: u64,
        order: u32,
    },
    Shipped {
        seq: u64,
        order: u32,
        carrier: String,
    },
}

impl SseEvent for Shop {
    fn event_type(&self, format: Format) -> &str {
        match (self, format) {
            (Shop::Ordered { .. }, Format::V1) => "Ordered",
            (Shop::Shipped { .. }, Format::V1) => "Shipped",
            (Shop::Ordered { .. }, Format::Envelope) => "shop.ordered",
            (Shop::Shipped { .. }, Format::Envelope) => "shop.shipped",
        }
    }

    fn sequence(&self) -> u64 {
        match self {
            Shop::Ordered { seq, .. } | Shop::Shipped { seq, .. } => *seq,
        }
    }

    fn id(&self, format: Format) -> SseId<'_> {
        match format {
            Format::V1 => SseId::Seq(self.sequence()),
            Format::Envelope => SseId::Text(match self {
                Shop::Ordered { .. } => "ord",
                Shop::Shipped { .. } => "shp",
            }),
        }
    }

    fn data(&self, _format: Format) -> Bytes {
        match self {
            Shop::Ordered { order, .. } => Bytes::from(format!(r#"{{"order":{order}}}"#)),
            // Pretty JSON with a line break: written as two `data:` lines.
            Shop::Shipped { order, carrier, .. } => {
                Bytes::from(format!("{{\"order\":{order},\n\"carrier\":\"{carrier}\"}}"))
            }
        }
    }
}

async fn serve(
    channel: &SseChannel<Shop>,
) -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let app: axum::Router = axum::Router::new().merge(channel.router("/shop/events"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
    });
    (addr, stop)
}

#[tokio::test]
async fn a_third_party_enum_streams_with_exact_frames_replay_and_filters() {
    let channel = SseChannel::<Shop>::new(100, SseConfig::default());
    let (addr, _stop) = serve(&channel).await;
    channel.publish(|seq| Shop::Ordered { seq, order: 10 });
    channel.publish(|seq| Shop::Shipped {
        seq,
        order: 10,
        carrier: "ups".into(),
    });

    let mut all = RawSse::connect(addr, "/shop/events", &[("Last-Event-ID", "0")]).await;
    assert_eq!(all.status, 200);
    assert_eq!(
        all.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(all.frame().await.raw, "retry: 3000\n\n");
    assert_eq!(
        all.frame().await.raw,
        "id: 1\nevent: Ordered\ndata: {\"order\":10}\n\n"
    );
    assert_eq!(
        all.frame().await.raw,
        "id: 2\nevent: Shipped\ndata: {\"order\":10,\ndata: \"carrier\":\"ups\"}\n\n"
    );

    let mut shipped = RawSse::connect(
        addr,
        "/shop/events?format=envelope&events=shop.shipped",
        &[],
    )
    .await;
    assert_eq!(shipped.frame().await.raw, "retry: 3000\n\n");
    let mut es =
        EsClient::connect(&format!("http://{addr}/shop/events?last_event_id=1"), &[]).await;
    let replayed = es.next().await;
    assert_eq!(
        (replayed.event.as_str(), replayed.id.as_str()),
        ("Shipped", "2")
    );
    assert_eq!(replayed.data, "{\"order\":10,\n\"carrier\":\"ups\"}");

    channel.publish(|seq| Shop::Ordered { seq, order: 11 });
    channel.publish(|seq| Shop::Shipped {
        seq,
        order: 11,
        carrier: "dhl".into(),
    });
    assert_eq!(all.frame().await.seq(), 3);
    assert_eq!(all.frame().await.seq(), 4);
    assert_eq!(
        shipped.frame().await.raw,
        "event: shop.shipped\nid: shp\ndata: {\"order\":11,\ndata: \"carrier\":\"dhl\"}\n\n"
    );
    assert_eq!(es.next().await.id, "3");
    assert_eq!(channel.connections(), 3);

    // A cursor that is not retained: resync first.
    let mut stale = RawSse::connect(addr, "/shop/events?last_event_id=999", &[]).await;
    stale.frame().await;
    assert_eq!(
        stale.frame().await.event.as_deref(),
        Some("resync_required")
    );
    let (status, body) =
        crate::common::get_json(&format!("http://{addr}/shop/events?events="), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_filter"))
    );
}

#[tokio::test]
async fn third_party_lag_and_shutdown() {
    let channel = SseChannel::<Shop>::new(
        8,
        SseConfig {
            outbox: OutboxLimits {
                max_messages: 4,
                max_bytes: 1 << 20,
            },
            ..SseConfig::default()
        },
    );
    let (addr, stop) = serve(&channel).await;
    let mut client = RawSse::connect(addr, "/shop/events", &[]).await;
    client.frame().await;
    // Ten events at once into a queue of four: four written, six counted.
    for _ in 1..=10 {
        channel.publish(|seq| Shop::Ordered { seq, order: 1 });
    }
    for seq in 1..=4 {
        assert_eq!(client.frame().await.seq(), seq);
    }
    let lag = client.frame().await;
    assert_eq!(
        lag.raw,
        "event: events.lagged\ndata: {\"type\":\"events.lagged\",\"dropped_count\":6}\n\n"
    );
    channel.publish(|seq| Shop::Ordered { seq, order: 1 });
    assert_eq!(client.frame().await.seq(), 11);

    stop.cancel();
    channel.shutdown();
    tokio::time::timeout(Duration::from_secs(1), client.wait_end())
        .await
        .expect("stream still open");
    let _ = WAIT;
}

#[tokio::test]
async fn publish_numbers_events_and_last_event_id_resumes_from_the_ring() {
    // A ring of three: what a resuming client gets comes from it.
    let channel = SseChannel::<Shop>::new(3, SseConfig::default());
    let (addr, _stop) = serve(&channel).await;
    assert_eq!(channel.last_seq(), 0);
    // The channel numbers events in publish order and hands the number to
    // the event it builds.
    let seqs: Vec<u64> = (0..5)
        .map(|i| channel.publish(|seq| Shop::Ordered { seq, order: i }))
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert_eq!((channel.last_seq(), channel.retained()), (5, 3));

    // Resuming after 3: the retained 4 and 5, then live from 6 on.
    let mut resumed = RawSse::connect(addr, "/shop/events", &[("Last-Event-ID", "3")]).await;
    assert_eq!(resumed.frame().await.raw, "retry: 3000\n\n");
    assert_eq!(
        resumed.frame().await.raw,
        "id: 4\nevent: Ordered\ndata: {\"order\":3}\n\n"
    );
    assert_eq!(resumed.frame().await.seq(), 5);
    assert_eq!(channel.publish(|seq| Shop::Ordered { seq, order: 9 }), 6);
    assert_eq!(resumed.frame().await.seq(), 6);

    // After 1, event 2 is no longer in the ring: resync, then live.
    let mut stale = RawSse::connect(addr, "/shop/events", &[("Last-Event-ID", "1")]).await;
    stale.frame().await;
    assert_eq!(
        stale.frame().await.event.as_deref(),
        Some("resync_required")
    );
    channel.publish(|seq| Shop::Ordered { seq, order: 10 });
    assert_eq!(stale.frame().await.seq(), 7);
    // The newest event as cursor: nothing to replay, live at once.
    let mut current = RawSse::connect(addr, "/shop/events", &[("Last-Event-ID", "7")]).await;
    current.frame().await;
    channel.publish(|seq| Shop::Ordered { seq, order: 11 });
    assert_eq!(current.frame().await.seq(), 8);
}

/// An event that ignores the number it is handed still goes out with the
/// channel's: `Last-Event-ID` keeps working.
#[tokio::test]
async fn the_channel_number_is_the_id_whatever_the_event_says() {
    let channel = SseChannel::<Shop>::new(8, SseConfig::default());
    let (addr, _stop) = serve(&channel).await;
    channel.publish(|_| Shop::Ordered { seq: 40, order: 1 });
    channel.publish(|_| Shop::Ordered { seq: 41, order: 2 });
    let mut client = RawSse::connect(addr, "/shop/events", &[("Last-Event-ID", "1")]).await;
    client.frame().await;
    assert_eq!(
        client.frame().await.raw,
        "id: 2\nevent: Ordered\ndata: {\"order\":2}\n\n"
    );
}
