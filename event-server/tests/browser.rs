//! The live dashboard in a real browser: headless Chromium driven through
//! ChromeDriver (WebDriver) with `fantoccini`, against a real server on a
//! loopback port.
//!
//! The test loads `/`, waits for the page to go live over SSE, submits a job
//! with the page's own button, follows the job's progress bar to 100 % and
//! waits for the completion to be listed, then saves a screenshot to
//! `target/screenshots/dashboard.png`.
//!
//! It needs Debian's `chromium` and `chromium-driver` packages
//! (`/usr/bin/chromium`, `/usr/bin/chromedriver`; other locations through
//! `EVENT_TEST_CHROMIUM` / `EVENT_TEST_CHROMEDRIVER`). Without them it prints
//! why and passes, unless `EVENT_TEST_REQUIRE_SERVICES=1` (CI), where it fails.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use event_server::testing::{Server, TempDir};
use event_test_support::browser::{self, Driver};
use fantoccini::{Client, Locator};

/// Bound on every wait (the simulated job itself takes about 2 s).
const WAIT: Duration = Duration::from_secs(30);
/// How often a condition is re-checked inside a deadline.
const POLL: Duration = Duration::from_millis(50);

/// Whether the browser is there; if not, says why (and fails in CI).
fn browser_available() -> bool {
    let missing = browser::missing();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "browser test skipped: {} not found (install Debian's `chromium` and `chromium-driver`)",
        missing.join(" and ")
    );
    if std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{why}, but EVENT_TEST_REQUIRE_SERVICES=1");
    }
    eprintln!("{why}");
    false
}

/// Polls `check` every [`POLL`] until it yields a value; panics after [`WAIT`].
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(value)) = tokio::time::timeout_at(deadline, check()).await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

async fn attr(browser: &Client, css: &str, name: &str) -> Option<String> {
    let element = browser.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

async fn text(browser: &Client, css: &str) -> Option<String> {
    let element = browser.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

/// `target/screenshots/`, next to the test binary's own target directory.
fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/browser-<hash>
    let target = exe.ancestors().nth(3).unwrap();
    target.join("screenshots")
}

#[tokio::test]
async fn dashboard_shows_a_submitted_job_progressing_to_completion() {
    if !browser_available() {
        return;
    }
    let mut server = Server::start(&[]).await;
    let driver = Driver::start().await;
    let profile = TempDir::new();
    let browser = driver.open(profile.path()).await;

    browser.goto(&server.url("/")).await.unwrap();
    assert_eq!(browser.title().await.unwrap(), "matric events — live");
    // Live over SSE, the primary transport, with the queue snapshot shown.
    until("the page to go live over SSE", || async {
        (attr(&browser, "#conn", "data-state").await.as_deref() == Some("sse")).then_some(())
    })
    .await;
    until("the queue snapshot in the event log", || {
        text(&browser, "#log li[data-type=QueueStatus]")
    })
    .await;

    browser
        .find(Locator::Css("#submit-job"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let status = until("the submission to be confirmed", || async {
        text(&browser, "#action-status")
            .await
            .filter(|t| t.ends_with(" submitted"))
    })
    .await;
    let job_id = status
        .strip_prefix("job ")
        .and_then(|s| s.strip_suffix(" submitted"))
        .unwrap_or_else(|| panic!("unexpected status {status:?}"))
        .to_owned();

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
    let pct = text(&browser, &format!(".job[data-job-id=\"{job_id}\"] .pct")).await;
    assert_eq!(pct.as_deref(), Some("100%"));

    let done = format!("#done li[data-job-id=\"{job_id}\"]");
    let line = until("the completion in #done", || text(&browser, &done)).await;
    assert_eq!(attr(&browser, &done, "class").await.as_deref(), Some("ok"));
    assert!(line.starts_with("✓ Embedding "), "{line}");
    assert!(line.contains(&job_id[job_id.len() - 6..]), "{line}");
    for kind in ["JobQueued", "JobStarted", "JobCompleted"] {
        let css = format!("#log li[data-type={kind}]");
        assert!(text(&browser, &css).await.is_some(), "no {kind} in the log");
    }

    // Taken while the finished bar is still shown (the page keeps it 4 s).
    let png = browser.screenshot().await.unwrap();
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());

    browser.close().await.unwrap();
    server.shutdown().await;
}
