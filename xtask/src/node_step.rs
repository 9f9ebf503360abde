//! What the npm-based checks (`contracts`, `mcp-conformance`) share: the
//! Node/npm preflight with its skip-or-fail rule, pinned npm installs, and
//! the host binary built and started on `127.0.0.1:0`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::conformance::{run_limited_status, target_dir, workspace_root};

const NPM_LIMIT: Duration = Duration::from_secs(600);
const BUILD_LIMIT: Duration = Duration::from_secs(3600);
const START_LIMIT: Duration = Duration::from_secs(60);

/// One npm-based step, by name (for its messages).
pub struct Step(pub &'static str);

impl Step {
    /// A missing tool: skipped with the reason printed, or — under
    /// `EVENT_TEST_REQUIRE_SERVICES=1`, as in CI — a failure.
    pub fn skip(&self, reason: String) -> Result<(), String> {
        if std::env::var("EVENT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1") {
            Err(format!(
                "{}: {reason} (required: EVENT_TEST_REQUIRE_SERVICES=1)",
                self.0
            ))
        } else {
            println!("{}: skipped: {reason}", self.0);
            Ok(())
        }
    }

    /// Why the step cannot run here (no `node` or `npm`), if so.
    pub fn missing_node(&self) -> Option<String> {
        ["node", "npm"].into_iter().find_map(|tool| {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            (!found).then(|| format!("`{tool}` is not installed"))
        })
    }

    /// Installs `packages` (name, pinned version) under `dir` unless each is
    /// there at its version and `ready` holds; `run_scripts: false` skips
    /// the packages' install scripts.
    pub fn npm_install(
        &self,
        dir: &Path,
        packages: &[(&str, &str)],
        run_scripts: bool,
        ready: impl Fn() -> bool,
    ) -> Result<(), String> {
        let installed = packages.iter().all(|(name, version)| {
            std::fs::read_to_string(dir.join(format!("node_modules/{name}/package.json")))
                .is_ok_and(|text| text.contains(&format!("\"version\": \"{version}\"")))
        });
        if installed && ready() {
            return Ok(());
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let status = run_limited_status(
            Command::new("npm")
                .arg("install")
                .arg("--prefix")
                .arg(dir)
                .args(["--no-audit", "--no-fund"])
                .args((!run_scripts).then_some("--ignore-scripts"))
                .args(
                    packages
                        .iter()
                        .map(|(name, version)| format!("{name}@{version}")),
                )
                .env("SCARF_ANALYTICS", "false"),
            NPM_LIMIT,
            "npm install",
        )?;
        if !status.success() || !ready() {
            return Err(format!("npm could not install {packages:?} ({status})"));
        }
        Ok(())
    }
}

/// Builds the host binary (default features) and returns its path.
pub fn build_server() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let built = run_limited_status(
        Command::new(&cargo).current_dir(workspace_root()?).args([
            "build",
            "--locked",
            "-p",
            "event-server",
            "--bin",
            "event-server",
        ]),
        BUILD_LIMIT,
        "cargo build -p event-server",
    )?;
    if !built.success() {
        return Err(format!("building event-server failed ({built})"));
    }
    Ok(target_dir()?.join("debug/event-server"))
}

/// The host, killed however the step ends.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Server {
    /// Starts `bin` on `127.0.0.1:0` in anonymous local mode with a SQLite
    /// database under `data`; returns it with the address it logged.
    pub fn start(bin: &Path, data: &Path) -> Result<(Server, String), String> {
        let mut child = Command::new(bin)
            .env_remove("AUTH_ADMIN_TOKEN")
            .env_remove("AUTH_CLIENT_TOKENS")
            .env_remove("NATS_URL")
            .env("EVENT_SERVER_ADDR", "127.0.0.1:0")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}/events.db", data.display()),
            )
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("could not start event-server: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout from event-server")?;
        let server = Server(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let addr = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["fields"]["addr"].as_str().map(str::to_owned));
                if let Some(addr) = addr {
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(START_LIMIT)
            .map_err(|_| "event-server did not log its address in time".to_owned())?;
        Ok((server, addr))
    }
}
