//! Headless Chromium for browser tests (feature `browser`): Debian's
//! `chromium` and `chromium-driver`, driven over WebDriver with
//! `fantoccini`.
//!
//! [`Driver::start`] runs a `chromedriver` on a free loopback port in its
//! own process group, so dropping the [`Driver`] kills it and every browser
//! it started, even when a test panics. [`missing`] names what is not
//! installed, for a test that skips with a reason.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};

/// Bound on starting the driver and opening a session.
const WAIT: Duration = Duration::from_secs(30);

/// The browser: `EVENT_TEST_CHROMIUM`, else Debian's `/usr/bin/chromium`.
pub fn chromium() -> String {
    std::env::var("EVENT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// The driver: `EVENT_TEST_CHROMEDRIVER`, else `/usr/bin/chromedriver`.
pub fn chromedriver() -> String {
    std::env::var("EVENT_TEST_CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned())
}

/// The browser and driver paths that do not exist (empty when both do).
pub fn missing() -> Vec<String> {
    [chromium(), chromedriver()]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect()
}

/// A chromedriver on a free loopback port; dropping it kills its process
/// group (the driver and the browsers it started).
pub struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts the driver and waits (at most 30 s) until it accepts
    /// connections.
    ///
    /// # Panics
    ///
    /// If it cannot be started or is not ready in time.
    pub async fn start() -> Driver {
        use std::os::unix::process::CommandExt;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
            .port();
        let child = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver()));
        let mut driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            let exited = driver.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "chromedriver exited: {exited:?}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver not listening within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    /// A new headless Chromium session (1280×900) with its profile in
    /// `profile`.
    ///
    /// # Panics
    ///
    /// If no session starts within 30 s.
    pub async fn open(&self, profile: &Path) -> Client {
        let mut caps = fantoccini::wd::Capabilities::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": chromium(),
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        tokio::time::timeout(
            WAIT,
            ClientBuilder::new(connector)
                .capabilities(caps)
                .connect(&self.url),
        )
        .await
        .unwrap_or_else(|_| panic!("no WebDriver session within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browser processes it started.
        let group = format!("-{}", self.child.id());
        let killed = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !killed {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
