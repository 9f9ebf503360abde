//! The dashboard's connections and webhooks tabs, its token mode and the
//! charts' stats stream (and its polling fallback), in headless Chromium
//! (see `tests/browser.rs` for the overview, the inspector and what the
//! browser test needs).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "common/page.rs"]
mod page;

use axum::Router;
use axum::http::HeaderMap;
use event_server::testing::{Server, TempDir, client};
use event_test_support::browser::Driver;
use fantoccini::Locator;
use futures_util::StreamExt;
use page::{attr, browser_available, click, live, tab, text, type_into, until};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// A webhook receiver on loopback answering 200; yields each request's
/// `webhook-id` header.
async fn receiver() -> (String, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let tx = tx.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(id);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test]
async fn a_connection_is_listed_and_disconnected() {
    if !browser_available() {
        return;
    }
    let _one = page::one_browser_at_a_time().await;
    let mut server = Server::start(&[]).await;
    let driver = Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;
    browser.goto(&server.url("/")).await.unwrap();
    live(&browser).await;

    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws"))
        .await
        .unwrap();
    tab(&browser, "connections").await;
    let row = "#conn-table tr[data-transport=ws]";
    until("the WebSocket in the table", || async {
        browser.find(Locator::Css(row)).await.ok()
    })
    .await;
    let id = attr(&browser, row, "data-conn-id").await.unwrap();
    let cells = text(&browser, row).await.unwrap();
    assert!(cells.contains("127.0.0.1"), "{cells}");
    // The page's own SSE stream is listed too.
    assert!(
        browser
            .find(Locator::Css("#conn-table tr[data-transport=sse]"))
            .await
            .is_ok()
    );

    click(&browser, &format!("{row} button.disconnect")).await;
    let close = tokio::time::timeout(page::WAIT, async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("no close frame after the disconnect");
    assert_eq!(
        close,
        Some(1008),
        "an operator's disconnect closes with 1008"
    );
    until("the status line", || async {
        text(&browser, "#conn-status")
            .await
            .filter(|t| *t == format!("connection {id} disconnected"))
    })
    .await;
    until("the row to go", || async {
        browser.find(Locator::Css(row)).await.is_err().then_some(())
    })
    .await;

    browser.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_webhook_is_created_tested_and_redelivered() {
    if !browser_available() {
        return;
    }
    let _one = page::one_browser_at_a_time().await;
    let (url, mut received) = receiver().await;
    let mut server = Server::start(&[]).await;
    let driver = Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;
    browser.goto(&server.url("/#webhooks")).await.unwrap();
    live(&browser).await;

    type_into(&browser, "#wh-url", &url).await;
    type_into(&browser, "#wh-events", "JobCompleted").await;
    click(&browser, "#wh-create").await;
    let secret = until("the secret, shown once", || async {
        text(&browser, "#wh-secret").await.filter(|t| !t.is_empty())
    })
    .await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let id = text(&browser, "#wh-secret-id").await.unwrap();
    let row = format!("#wh-table tr[data-webhook-id=\"{id}\"]");
    let cells = until("the webhook in the list", || text(&browser, &row)).await;
    assert!(
        cells.contains(&url) && cells.contains("JobCompleted"),
        "{cells}"
    );
    // The list never shows the secret.
    let listed = text(&browser, "#wh-table").await.unwrap();
    assert!(!listed.contains(&secret));

    click(&browser, &format!("{row} button.wh-test")).await;
    let first = tokio::time::timeout(page::WAIT, received.recv())
        .await
        .unwrap()
        .unwrap();
    let status = until("the test's outcome", || async {
        text(&browser, "#wh-status")
            .await
            .filter(|t| t.starts_with("test delivery"))
    })
    .await;
    assert_eq!(status, "test delivery succeeded (HTTP 200)");
    let delivery = "#wh-deliveries tr[data-status=succeeded]";
    until("the delivery in the list", || async {
        text(&browser, &format!("{delivery} td.code"))
            .await
            .filter(|t| t == "200")
    })
    .await;
    let cells = text(&browser, delivery).await.unwrap();
    assert!(cells.contains("QueueStatus"), "{cells}");

    click(&browser, &format!("{delivery} button.wh-redeliver")).await;
    let again = tokio::time::timeout(page::WAIT, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, first, "a redelivery keeps its webhook-id");
    until("the redelivery's confirmation", || async {
        text(&browser, "#wh-status")
            .await
            .filter(|t| t.ends_with("queued again"))
    })
    .await;

    // The secret is shown once: hidden, it is gone from the page, and a
    // reload lists the webhook without it.
    click(&browser, "#wh-secret-hide").await;
    assert!(attr(&browser, "#wh-secret-box", "hidden").await.is_some());
    assert!(!browser.source().await.unwrap().contains(&secret));
    browser.refresh().await.unwrap();
    live(&browser).await;
    until("the webhook listed again", || text(&browser, &row)).await;
    assert!(attr(&browser, "#wh-secret-box", "hidden").await.is_some());
    assert!(!browser.source().await.unwrap().contains(&secret));

    browser.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn token_mode_asks_for_the_token_once_and_keeps_it_out_of_urls() {
    if !browser_available() {
        return;
    }
    let _one = page::one_browser_at_a_time().await;
    let token = "dashboard-admin-token-0123456789";
    let mut server = Server::start(&["--auth-admin-token", token]).await;
    // The page and its assets need no token; the API does.
    let res = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = client()
        .get(server.url("/api/v1/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);

    let driver = Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;
    browser.goto(&server.url("/")).await.unwrap();
    until("the token dialog", || async {
        attr(&browser, "#token-dialog", "open").await
    })
    .await;
    // Escape does not dismiss it (everything on the page waits for it).
    browser
        .find(Locator::Css("#token-input"))
        .await
        .unwrap()
        .send_keys(&fantoccini::key::Key::Escape.to_string())
        .await
        .unwrap();
    until("the token dialog after Escape", || async {
        attr(&browser, "#token-dialog", "open").await
    })
    .await;
    // A wrong token is refused and asked for again.
    type_into(&browser, "#token-input", "not-the-token").await;
    click(&browser, "#token-submit").await;
    until("the refusal", || async {
        text(&browser, "#token-error")
            .await
            .filter(|t| t == "That token was refused.")
    })
    .await;
    type_into(&browser, "#token-input", token).await;
    click(&browser, "#token-submit").await;
    live(&browser).await;
    assert!(attr(&browser, "#token-dialog", "open").await.is_none());

    // Admin actions work with it.
    click(&browser, "#submit-job").await;
    until("the job to be accepted", || async {
        text(&browser, "#action-status")
            .await
            .filter(|t| t.ends_with(" submitted"))
    })
    .await;
    tab(&browser, "connections").await;
    until("the page's stream in the table", || async {
        browser
            .find(Locator::Css("#conn-table tr[data-transport=sse]"))
            .await
            .ok()
    })
    .await;

    // Kept for the tab's session (a reload does not ask again), never in a URL.
    let kept = browser
        .execute(
            "return sessionStorage.getItem('matric-events.token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, serde_json::json!(token));
    browser.refresh().await.unwrap();
    live(&browser).await;
    assert!(attr(&browser, "#token-dialog", "open").await.is_none());
    let urls = browser
        .execute(
            "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))",
            vec![],
        )
        .await
        .unwrap();
    let urls = urls.as_array().unwrap();
    assert!(urls.len() > 3, "{urls:?}");
    for url in urls {
        let url = url.as_str().unwrap();
        assert!(!url.contains(token) && !url.contains("token="), "{url}");
    }

    browser.close().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_token_sees_the_stream_and_charts_but_not_the_admin_pages() {
    if !browser_available() {
        return;
    }
    let _one = page::one_browser_at_a_time().await;
    let client_token = "dashboard-client-token-0123456789";
    let mut server = Server::start(&[
        "--auth-admin-token",
        "dashboard-admin-token-0123456789",
        "--auth-client-tokens",
        client_token,
    ])
    .await;
    let driver = Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;
    browser.goto(&server.url("/")).await.unwrap();
    until("the token dialog", || async {
        attr(&browser, "#token-dialog", "open").await
    })
    .await;
    type_into(&browser, "#token-input", client_token).await;
    click(&browser, "#token-submit").await;
    live(&browser).await;
    // The counters need only a client token: the page's stream is charted.
    until("this page's SSE connection in the chart", || async {
        attr(
            &browser,
            "#chart-connections .now [data-series=sse]",
            "data-total",
        )
        .await
        .filter(|n| n == "1")
    })
    .await;
    // Through the stats stream, opened with the token in its header.
    until("the charts on the stats stream", || async {
        (attr(&browser, "#stats-source", "data-source")
            .await
            .as_deref()
            == Some("stream"))
        .then_some(())
    })
    .await;

    // The admin pages say what is missing (the API answered 403).
    tab(&browser, "connections").await;
    until("the connections page's refusal", || async {
        text(&browser, "#conn-status")
            .await
            .filter(|t| t == "listing connections needs the admin token")
    })
    .await;
    assert!(
        browser
            .find(Locator::Css("#conn-table tbody tr"))
            .await
            .is_err()
    );
    tab(&browser, "webhooks").await;
    until("the webhooks page's refusal", || async {
        text(&browser, "#wh-status")
            .await
            .filter(|t| t == "webhooks need the admin token")
    })
    .await;

    // "Forget token" drops it from the session and asks again.
    click(&browser, "#forget-token").await;
    until("the token dialog again", || async {
        attr(&browser, "#token-dialog", "open").await
    })
    .await;
    let kept = browser
        .execute(
            "return sessionStorage.getItem('matric-events.token')",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(kept, serde_json::Value::Null);

    browser.close().await.unwrap();
    server.shutdown().await;
}

/// Requests the page made to `GET /api/v1/stats` (completed ones: the
/// browser records a fetch when its body has been read).
async fn stats_polls(browser: &fantoccini::Client) -> u64 {
    browser
        .execute(
            "return performance.getEntriesByType('resource')\
               .filter(e => new URL(e.name).pathname === '/api/v1/stats').length",
            vec![],
        )
        .await
        .unwrap()
        .as_u64()
        .unwrap()
}

/// Readings of the counters the charts were given (stream frames or polls).
async fn stats_readings(browser: &fantoccini::Client) -> u64 {
    attr(browser, "#stats-source", "data-readings")
        .await
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A chart series' number (`data-total`).
async fn series_total(browser: &fantoccini::Client, chart: &str, series: &str) -> f64 {
    attr(
        browser,
        &format!("#{chart} .now [data-series={series}]"),
        "data-total",
    )
    .await
    .and_then(|v| v.parse().ok())
    .unwrap_or(0.0)
}

#[tokio::test]
async fn the_charts_are_fed_by_the_stats_stream_and_poll_only_without_it() {
    if !browser_available() {
        return;
    }
    let _one = page::one_browser_at_a_time().await;
    let mut server = Server::start(&[
        "--stats-stream-max",
        "1",
        "--stats-stream-interval-ms",
        "250",
    ])
    .await;
    let stream = || async {
        client()
            .get(server.url("/api/v1/stats/stream"))
            .send()
            .await
            .unwrap()
    };
    // The one stats stream allowed is taken before the page opens.
    let held = stream().await;
    assert_eq!(held.status(), 200);

    let driver = Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;
    browser.goto(&server.url("/")).await.unwrap();
    // Room for every request the page makes (the default is 250 entries).
    browser
        .execute("performance.setResourceTimingBufferSize(100000)", vec![])
        .await
        .unwrap();
    live(&browser).await;

    // Refused, the page polls and says so; the charts still move.
    let note = until("the page to say it polls", || async {
        let source = attr(&browser, "#stats-source", "data-source").await?;
        let note = text(&browser, "#stats-source").await?;
        (source == "poll").then_some(note)
    })
    .await;
    assert!(
        note.contains("/api/v1/stats") && note.contains("503 too_many_connections"),
        "{note}"
    );
    until(
        "this page's SSE connection in the chart (polled)",
        || async {
            (series_total(&browser, "chart-connections", "sse").await == 1.0).then_some(())
        },
    )
    .await;
    assert!(stats_polls(&browser).await > 0);

    // The place freed, the page takes the stream by itself…
    drop(held);
    until("the page on the stats stream", || async {
        (attr(&browser, "#stats-source", "data-source")
            .await
            .as_deref()
            == Some("stream"))
        .then_some(())
    })
    .await;
    // …and holds it: the only place is the page's.
    let refused = stream().await;
    assert_eq!(refused.status(), 503);
    drop(refused);

    // From now on no request to /api/v1/stats, while the charts follow
    // what is published and take readings for a while (eight at 250 ms:
    // longer than the 1 s a poll would take to show).
    let polls = stats_polls(&browser).await;
    let readings = stats_readings(&browser).await;
    let before = series_total(&browser, "chart-events", "NoteUpdated").await;
    assert_eq!(before, 0.0);
    for _ in 0..3 {
        server
            .publish(&serde_json::json!({"type": "NoteUpdated",
                "note_id": uuid::Uuid::now_v7(), "tags": [],
                "has_ai_content": false, "has_links": false}))
            .await;
    }
    until("the publishes in the events/s chart", || async {
        (series_total(&browser, "chart-events", "NoteUpdated").await > 0.0).then_some(())
    })
    .await;
    until("this page's SSE connection in the chart", || async {
        (series_total(&browser, "chart-connections", "sse").await == 1.0).then_some(())
    })
    .await;
    until("eight more readings", || async {
        (stats_readings(&browser).await >= readings + 8).then_some(())
    })
    .await;
    assert_eq!(
        stats_polls(&browser).await,
        polls,
        "the page polled /api/v1/stats while its stats stream was open"
    );
    assert_eq!(
        attr(&browser, "#stats-source", "data-source")
            .await
            .as_deref(),
        Some("stream")
    );

    browser.close().await.unwrap();
    server.shutdown().await;
}
