//! The dashboard's overview and event inspector in a real browser: headless
//! Chromium driven through ChromeDriver (WebDriver) with `fantoccini`,
//! against a real server on a loopback port. (Connections, webhooks and
//! token mode: `tests/dashboard.rs`.)
//!
//! The test loads `/`, waits for the page to go live over SSE, submits a job
//! with the page's own button, follows the job's progress bar to 100 %,
//! waits for the completion to be listed and counted in the events chart,
//! sees a WebSocket client's and a webhook's deliveries, webhook outcomes
//! and p99 latencies charted (all pushed by the stats stream, with no
//! request to `/api/v1/stats`), opens the event in the inspector (JSON and
//! envelope), pauses the inspector, and saves a screenshot of the overview to
//! `target/screenshots/dashboard.png` (and to `docs/dashboard.png`, which
//! the README shows, when `EVENT_TEST_UPDATE_SCREENSHOT=1`).
//!
//! It needs Debian's `chromium` and `chromium-driver` packages
//! (`/usr/bin/chromium`, `/usr/bin/chromedriver`; other locations through
//! `EVENT_TEST_CHROMIUM` / `EVENT_TEST_CHROMEDRIVER`). Without them it prints
//! why and passes, unless `EVENT_TEST_REQUIRE_SERVICES=1` (CI), where it fails.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

#[path = "common/page.rs"]
mod page;

use std::path::Path;

use event_server::testing::{Server, TempDir, client};
use event_test_support::browser::Driver;
use fantoccini::{Client, Locator};
use futures_util::StreamExt;
use page::{POLL, WAIT, attr, browser_available, click, live, tab, text, until};
use tokio::sync::mpsc;

/// A webhook receiver on loopback answering 200; counts the requests.
async fn receiver() -> (String, mpsc::UnboundedReceiver<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

/// Submits a job with the page's button and returns its id.
async fn submit_job(browser: &Client) -> String {
    let before = text(browser, "#action-status").await.unwrap_or_default();
    click(browser, "#submit-job").await;
    let status = until("the submission to be confirmed", || async {
        text(browser, "#action-status")
            .await
            .filter(|t| t.ends_with(" submitted") && *t != before)
    })
    .await;
    status
        .strip_prefix("job ")
        .and_then(|s| s.strip_suffix(" submitted"))
        .unwrap_or_else(|| panic!("unexpected status {status:?}"))
        .to_owned()
}

/// A chart series' number (`data-total`: its sum over the window for a
/// rate, else its current value).
async fn series_total(browser: &Client, chart: &str, series: &str) -> f64 {
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
async fn dashboard_charts_a_job_and_inspects_its_events() {
    if !browser_available() {
        return;
    }
    let mut server = Server::start(&[]).await;
    // Traffic besides the page's own stream: a webhook for every event and
    // a WebSocket client (read, so it keeps up).
    let (hook, mut hooked) = receiver().await;
    let res = client()
        .post(server.url("/api/v1/webhooks"))
        .json(&serde_json::json!({"url": hook, "events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("/api/v1/ws"))
        .await
        .unwrap();
    let reading = tokio::spawn(ws.for_each(|_| async {}));

    let driver = Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;

    browser.goto(&server.url("/")).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "matric events — live");
    // Room for every request the page makes (the default is 250 entries).
    browser
        .execute("performance.setResourceTimingBufferSize(100000)", vec![])
        .await
        .unwrap();
    // Live over SSE (read with fetch), with the queue snapshot received.
    live(&browser).await;
    until("the queue snapshot in the event log", || async {
        browser
            .find(Locator::Css("#log li[data-type=QueueStatus]"))
            .await
            .ok()
    })
    .await;
    // The charts are drawn (uPlot's canvas) and count this page's stream.
    until("five charts", || async {
        let n = browser
            .find_all(Locator::Css(".chart canvas"))
            .await
            .ok()?
            .len();
        (n >= 5).then_some(())
    })
    .await;
    until("this page's SSE connection in the chart", || async {
        (series_total(&browser, "chart-connections", "sse").await >= 1.0).then_some(())
    })
    .await;
    until("the WebSocket client in the chart", || async {
        (series_total(&browser, "chart-connections", "ws").await >= 1.0).then_some(())
    })
    .await;

    let job_id = submit_job(&browser).await;
    // Follow the bar: its value only grows, and reaches 100.
    let bar = format!(".job[data-job-id=\"{job_id}\"] .bar[role=progressbar]");
    let mut seen: Vec<u32> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.last() != Some(&100) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the progress bar did not reach 100 within {WAIT:?}: {seen:?}"
        );
        let now = attr(&browser, &bar, "aria-valuenow").await;
        if let Some(now) = now.and_then(|v| v.parse::<u32>().ok())
            && seen.last() != Some(&now)
        {
            seen.push(now);
        } else {
            tokio::time::sleep(POLL).await;
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went backwards: {seen:?}"
    );
    let done = format!("#done li[data-job-id=\"{job_id}\"]");
    let line = until("the completion in #done", || text(&browser, &done)).await;
    assert_eq!(attr(&browser, &done, "class").await.as_deref(), Some("ok"));
    assert!(line.starts_with("✓ Embedding "), "{line}");
    // The job's events are counted in the events/s chart (from the host's
    // counters) and its deliveries in the deliveries/s chart.
    until("JobCompleted in the events/s chart", || async {
        (series_total(&browser, "chart-events", "JobCompleted").await > 0.0).then_some(())
    })
    .await;
    until("SSE deliveries in the deliveries/s chart", || async {
        (series_total(&browser, "chart-deliveries", "sse").await > 0.0).then_some(())
    })
    .await;
    tokio::time::timeout(WAIT, hooked.recv())
        .await
        .expect("no webhook delivery")
        .unwrap();
    // More jobs: traffic for the charts below and the screenshot.
    for _ in 0..3 {
        submit_job(&browser).await;
    }
    until("WebSocket deliveries in the deliveries/s chart", || async {
        (series_total(&browser, "chart-deliveries", "ws").await > 0.0).then_some(())
    })
    .await;
    until(
        "successful deliveries in the webhook outcomes chart",
        || async {
            (series_total(&browser, "chart-webhooks", "success").await > 0.0).then_some(())
        },
    )
    .await;
    // A p99 is shown (the latest second had samples) for each kind of
    // delivery while the jobs run.
    for series in ["sse", "ws", "webhook"] {
        until(&format!("a p99 latency for {series}"), || async {
            (series_total(&browser, "chart-latency", series).await > 0.0).then_some(())
        })
        .await;
    }
    // All of it pushed by the server's stats stream: the page never polled.
    assert_eq!(
        attr(&browser, "#stats-source", "data-source")
            .await
            .as_deref(),
        Some("stream")
    );
    let polls = browser
        .execute(
            "return performance.getEntriesByType('resource')\
               .filter(e => new URL(e.name).pathname === '/api/v1/stats').length",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(polls, serde_json::json!(0), "the page polled /api/v1/stats");
    // The screenshot once every job is done: the charts have their traffic.
    until("the four completions", || async {
        let n = browser
            .find_all(Locator::Css("#done li.ok"))
            .await
            .ok()?
            .len();
        (n >= 4).then_some(())
    })
    .await;
    let png = browser.screenshot().await.unwrap();
    save_screenshot(&png);

    // The inspector: the completion's JSON and envelope.
    tab(&browser, "inspector").await;
    browser
        .find(Locator::Css("#log-filter"))
        .await
        .unwrap()
        .select_by_value("JobCompleted")
        .await
        .unwrap();
    let entry = format!("#log li[data-type=JobCompleted][data-search*=\"{job_id}\"]");
    until("the completion in the inspector", || async {
        browser.find(Locator::Css(&entry)).await.ok()
    })
    .await;
    let others = browser
        .find_all(Locator::Css("#log li[data-type=JobQueued]"))
        .await
        .unwrap();
    for li in others {
        assert_eq!(li.attr("hidden").await.unwrap().as_deref(), Some("true"));
    }
    click(&browser, &entry).await;
    let json = until("the event's JSON", || async {
        text(&browser, "#inspect-json")
            .await
            .filter(|t| !t.is_empty())
    })
    .await;
    let event: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(event["type"], "JobCompleted");
    assert_eq!(event["job_id"], job_id.as_str());
    let envelope: serde_json::Value =
        serde_json::from_str(&text(&browser, "#inspect-envelope").await.unwrap()).unwrap();
    assert_eq!(envelope["event_type"], "job.completed");
    assert_eq!(envelope["entity_id"], job_id.as_str());

    // Paused, new events are held back (and counted), then shown.
    click(&browser, "#pause").await;
    let held = until("the pause", || async {
        text(&browser, "#paused-count")
            .await
            .filter(|t| t.starts_with("paused"))
    })
    .await;
    // Whatever the host published since (a queue status) is held too.
    let held_count = |t: &str| -> u64 {
        t.strip_prefix("paused · ")
            .and_then(|t| t.strip_suffix(" new"))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("the pause line: {t:?}"))
    };
    let before = held_count(&held);
    let late: serde_json::Value = event_server::testing::client()
        .post(server.url("/api/v1/jobs"))
        .json(&serde_json::json!({"job_type": "Linking"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let late = late["job_id"].as_str().unwrap().to_owned();
    let late_entry = format!("#log li[data-search*=\"{late}\"]");
    until("events held while paused", || async {
        text(&browser, "#paused-count")
            .await
            .filter(|t| held_count(t) > before)
    })
    .await;
    assert!(browser.find(Locator::Css(&late_entry)).await.is_err());
    click(&browser, "#pause").await;
    until("the held events after resuming", || async {
        browser.find(Locator::Css(&late_entry)).await.ok()
    })
    .await;

    browser.close().await.unwrap();
    reading.abort();
    server.shutdown().await;
}

/// Saves the overview to `target/screenshots/dashboard.png`, and to
/// `docs/dashboard.png` with `EVENT_TEST_UPDATE_SCREENSHOT=1`.
fn save_screenshot(png: &[u8]) {
    let dir = page::screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
    if std::env::var("EVENT_TEST_UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
        std::fs::write(&docs, png).unwrap();
        eprintln!("screenshot: {}", docs.display());
    }
}
