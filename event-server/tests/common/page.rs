//! Helpers for the tests that drive the dashboard in headless Chromium:
//! whether the browser is there, polling a condition, reading elements.

#![allow(dead_code, reason = "each test file uses its own subset")]

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, Locator};

/// Bound on every wait (a simulated job itself takes about 2 s).
pub const WAIT: Duration = Duration::from_secs(30);
/// How often a condition is re-checked inside a deadline.
pub const POLL: Duration = Duration::from_millis(50);

/// Held by each browser test of a binary while it runs: one Chromium at a
/// time (the tests of one binary run in parallel, on a small machine).
pub async fn one_browser_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Whether the browser is there; if not, says why (and fails in CI).
pub fn browser_available() -> bool {
    let missing = event_test_support::browser::missing();
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
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
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

/// An attribute of the first element matching `css`.
pub async fn attr(browser: &Client, css: &str, name: &str) -> Option<String> {
    let element = browser.find(Locator::Css(css)).await.ok()?;
    element.attr(name).await.ok().flatten()
}

/// The rendered text of the first element matching `css` (empty when hidden).
pub async fn text(browser: &Client, css: &str) -> Option<String> {
    let element = browser.find(Locator::Css(css)).await.ok()?;
    element.text().await.ok()
}

/// Clicks the first element matching `css`.
pub async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("cannot click {css}: {e}"));
}

/// Types `keys` into the input matching `css` after clearing it.
pub async fn type_into(browser: &Client, css: &str, keys: &str) {
    let input = browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"));
    input.clear().await.unwrap();
    input.send_keys(keys).await.unwrap();
}

/// Shows one of the dashboard's tabs with its button.
pub async fn tab(browser: &Client, name: &str) {
    click(browser, &format!("#tabs button[data-tab={name}]")).await;
    until(&format!("the {name} tab"), || async {
        let hidden = attr(browser, &format!("#page-{name}"), "hidden").await;
        hidden.is_none().then_some(())
    })
    .await;
}

/// Waits for the page to be live over SSE.
pub async fn live(browser: &Client) {
    until("the page to go live over SSE", || async {
        (attr(browser, "#conn", "data-state").await.as_deref() == Some("sse")).then_some(())
    })
    .await;
}

/// `target/screenshots/`, next to the test binary's own target directory.
pub fn screenshot_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let target = exe.ancestors().nth(3).unwrap();
    target.join("screenshots")
}
