//! Python clients for the tests: a virtualenv with pinned PyPI packages
//! (`<target>/interop/venv`, the one `tests/tests/interop.rs` uses, made
//! and filled once), and a script's JSON lines read with deadlines.

#![allow(dead_code, reason = "each test file uses its own subset")]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// The Python packages the scripts need, pinned.
const PACKAGES: [(&str, &str); 1] = [("websockets", "15.0.1")];
/// Bound on creating the virtualenv and on `pip install`.
const INSTALL_LIMIT: Duration = Duration::from_secs(300);
/// Bound on each wait for a script's next line.
pub const LINE_WAIT: Duration = Duration::from_secs(30);

fn required() -> bool {
    std::env::var("EVENT_TEST_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// Prints why `test` is skipped, or fails under
/// `EVENT_TEST_REQUIRE_SERVICES=1`.
pub fn skip(test: &str, why: &str) {
    if required() {
        panic!("{test}: {why}, but EVENT_TEST_REQUIRE_SERVICES=1");
    }
    eprintln!("{test} skipped: {why}");
}

/// `<target>/interop/venv`, beside the test binary's profile directory.
fn venv() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // <target>/<profile>/deps/<test>-<hash>
    exe.ancestors()
        .nth(3)
        .expect("the target directory")
        .join("interop")
        .join("venv")
}

/// Runs `command` to its end within [`INSTALL_LIMIT`].
fn run_limited(command: &mut std::process::Command, what: &str) -> Result<(), String> {
    let mut child = command
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + INSTALL_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return Ok(()),
            Ok(Some(status)) => return Err(format!("{what} failed ({status})")),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} took over {INSTALL_LIMIT:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    }
}

/// The virtualenv's python with [`PACKAGES`] installed (once per process;
/// later runs reuse the virtualenv), or why there is none.
pub fn python() -> Result<&'static Path, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = venv();
            let python = venv.join("bin/python");
            let check = PACKAGES
                .iter()
                .map(|(name, version)| format!("m.version('{name}') == '{version}'"))
                .collect::<Vec<_>>()
                .join(" and ");
            let check = format!("import importlib.metadata as m; print({check})");
            let installed = || {
                std::process::Command::new(&python)
                    .args(["-c", &check])
                    .stderr(Stdio::null())
                    .output()
                    .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "True")
            };
            if installed() {
                return Ok(python);
            }
            if !python.exists() {
                let ok = std::process::Command::new("python3")
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !ok {
                    return Err("`python3` is not on PATH".to_owned());
                }
                run_limited(
                    std::process::Command::new("python3")
                        .args(["-m", "venv"])
                        .arg(&venv),
                    "python3 -m venv (Debian: python3-venv)",
                )?;
            }
            let specs: Vec<String> = PACKAGES.iter().map(|(n, v)| format!("{n}=={v}")).collect();
            eprintln!("pip install {} into {}", specs.join(" "), venv.display());
            run_limited(
                std::process::Command::new(&python)
                    .args([
                        "-m",
                        "pip",
                        "install",
                        "--disable-pip-version-check",
                        "--quiet",
                    ])
                    .args(&specs),
                "pip install",
            )?;
            if installed() {
                Ok(python)
            } else {
                Err(format!("pip did not install {specs:?}"))
            }
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// A script under `event-server/tests/clients/`, its stdin for commands
/// and its stdout's JSON lines (killed on drop).
pub struct Script {
    who: String,
    _child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Script {
    /// Runs `clients/<script>` with `python` and `args`.
    pub fn spawn(python: &Path, script: &str, args: &[String]) -> Script {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(script);
        let mut child = Command::new(python)
            .arg(path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {script}: {e}"));
        let stdin = child.stdin.take().expect("the script's stdin");
        let lines = BufReader::new(child.stdout.take().expect("the script's stdout")).lines();
        Script {
            who: format!("{script} {}", args.join(" ")),
            _child: child,
            stdin,
            lines,
        }
    }

    /// The next line, within [`LINE_WAIT`].
    pub async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(LINE_WAIT, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no line within {LINE_WAIT:?}", self.who))
            .unwrap_or_else(|e| panic!("{}: reading its output: {e}", self.who))
            .unwrap_or_else(|| panic!("{}: the script exited", self.who));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {line}", self.who))
    }

    /// The next line of `kind`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let line = self.next().await;
            if line["kind"] == kind {
                return line;
            }
        }
    }

    /// Sends one command line.
    pub async fn command(&mut self, command: &Value) {
        let mut line = command.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{}: writing a command: {e}", self.who));
    }
}
