//! `cargo xtask conformance`: the Autobahn|Testsuite against `event-ws`'s
//! own WebSocket implementation (issue 16): cases 1–10 run by kosoku, the
//! permessage-deflate cases 12.* and 13.* replayed with PyPI `websockets`.
//!
//! 1. A virtualenv under `<target>/conformance/venv` gets the PyPI packages
//!    `kosoku` (0.1.0), which runs Autobahn's case files as a fuzzing
//!    client, and `websockets` (15.0.1).
//! 2. `event-ws/examples/autobahn-echo` is built and started on a free
//!    loopback port, with the message limit raised to 16 MiB for the 9.*
//!    cases. The dev profile by default — inside `cargo xtask ci` its
//!    dependencies are already built, and the suite takes seconds either
//!    way — or `--release`.
//! 3. `kosoku ws://127.0.0.1:PORT/ -x '12.*' -x '13.*'` writes Autobahn's
//!    `index.json` (and per-case reports) to `<target>/conformance/report`.
//! 4. `xtask/scripts/pmd_replay.py` replays cases 12.* and 13.* against the
//!    same server with `websockets` as the client: kosoku 0.1.0 negotiates
//!    the extension, but its copy of those cases fails inside the client,
//!    before connecting, for most of them (`Strings must be encoded before
//!    hashing`). Autobahn's offers, test files, sizes and fragmentations;
//!    100 messages per case instead of 1,000 (`--pmd-count N` changes it).
//! 5. The verdicts are printed by case group; any `FAILED` or
//!    `UNIMPLEMENTED` case fails the step, and so does a `NON-STRICT` one
//!    not listed, with its reason, in the allow-list of
//!    `docs/conformance.md`.
//!
//! Without python3, its `venv` module or the package index, the step prints
//! why and is skipped — unless `EVENT_TEST_REQUIRE_SERVICES=1`, as in CI,
//! where that is a failure. Every command runs under a time limit, and the
//! echo server is killed however the step ends.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The fuzzing client and its pinned version.
const KOSOKU: &str = "kosoku";
const KOSOKU_VERSION: &str = "0.1.0";
/// The client of the permessage-deflate replay, pinned.
const WEBSOCKETS_VERSION: &str = "15.0.1";
/// Cases 12 and 13 (permessage-deflate) are replayed with `websockets`
/// instead: kosoku 0.1.0's copy of them fails in the client.
const EXCLUDED: [&str; 2] = ["12.*", "13.*"];
/// Messages per replayed compression case (Autobahn sends 1,000).
const PMD_COUNT: usize = 100;
/// The largest message of the 9.* cases (16 MiB).
const MAX_MESSAGE_BYTES: &str = "16777216";
/// The document holding the NON-STRICT allow-list, from the workspace root.
const DOC: &str = "docs/conformance.md";
/// The allow-list is the table between these two lines of [`DOC`].
const ALLOW_START: &str = "<!-- non-strict allow-list: start -->";
const ALLOW_END: &str = "<!-- non-strict allow-list: end -->";

const VENV_LIMIT: Duration = Duration::from_secs(120);
const PIP_LIMIT: Duration = Duration::from_secs(300);
const BUILD_LIMIT: Duration = Duration::from_secs(3600);
const START_LIMIT: Duration = Duration::from_secs(30);
const SUITE_LIMIT: Duration = Duration::from_secs(900);

/// The Autobahn verdicts, worst last.
const VERDICTS: [&str; 5] = [
    "OK",
    "INFORMATIONAL",
    "NON-STRICT",
    "UNIMPLEMENTED",
    "FAILED",
];

/// Runs the suite; `--release` builds the echo server with the release
/// profile, `--pmd-count N` sends N messages per compression case.
pub fn run(args: &[String]) -> Result<(), String> {
    let (mut release, mut pmd_count) = (false, PMD_COUNT);
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--release" => release = true,
            "--pmd-count" => {
                pmd_count = rest
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n > 0)
                    .ok_or("conformance: --pmd-count needs a positive number")?;
            }
            _ => {
                return Err(format!(
                    "conformance: unknown arguments {args:?} (try `--release`, `--pmd-count N`)"
                ));
            }
        }
    }
    let started = Instant::now();
    let require = std::env::var("EVENT_TEST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
    let root = workspace_root()?;
    let allowed = allow_list(&root.join(DOC))?;
    let target = target_dir()?;
    let dir = target.join("conformance");
    let kosoku = match install_kosoku(&dir.join("venv")) {
        Ok(path) => path,
        Err(reason) if require => {
            return Err(format!(
                "conformance: {reason} (required: EVENT_TEST_REQUIRE_SERVICES=1)"
            ));
        }
        Err(reason) => {
            println!("\nconformance: SKIPPED — {reason}");
            return Ok(());
        }
    };

    let profile = if release { "release" } else { "debug" };
    println!("\n==> building the echo server ({profile})");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut build = Command::new(&cargo);
    build.args([
        "build",
        "--locked",
        "-p",
        "event-ws",
        "--example",
        "autobahn-echo",
    ]);
    if release {
        build.arg("--release");
    }
    run_limited(&mut build, BUILD_LIMIT, "cargo build of autobahn-echo")?;
    let echo_bin = target.join(profile).join("examples/autobahn-echo");
    let server = EchoServer::start(&echo_bin)?;
    println!("==> echo server at {}", server.url);

    let report = dir.join("report");
    if report.exists() {
        std::fs::remove_dir_all(&report)
            .map_err(|e| format!("cannot clear {}: {e}", report.display()))?;
    }
    println!(
        "==> {KOSOKU} {} {}-o {}",
        server.url,
        EXCLUDED.map(|x| format!("-x '{x}' ")).concat(),
        report.display()
    );
    let mut suite = Command::new(&kosoku);
    suite.arg(&server.url);
    for pattern in EXCLUDED {
        suite.args(["-x", pattern]);
    }
    suite.arg("-o").arg(&report).stdout(Stdio::null());
    // kosoku exits non-zero when a case fails; the verdicts come from the
    // report either way.
    let status = run_limited_status(&mut suite, SUITE_LIMIT, "kosoku")?;

    let index = report.join("index.json");
    let text = std::fs::read_to_string(&index)
        .map_err(|e| format!("kosoku ({status}) wrote no {}: {e}", index.display()))?;
    let mut verdicts = parse_index(&text)?;
    let replay = replay_compression(&dir.join("venv"), &root, &server.url, pmd_count, &report);
    drop(server);
    verdicts.extend(replay?);
    verdicts.sort_by_key(|v| case_key(&v.case));
    println!("\n{}", summary_table(&verdicts));
    let problems = judge(&verdicts, &allowed);
    println!(
        "conformance: {} cases in {:.0}s; reports in {}",
        verdicts.len(),
        started.elapsed().as_secs_f64(),
        report.display()
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("conformance: {}", problems.join("; ")))
    }
}

/// The workspace root (where `docs/` is), from `cargo locate-project`.
pub(crate) fn workspace_root() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["locate-project", "--workspace", "--message-format", "plain"])
        .output()
        .map_err(|e| format!("could not run cargo locate-project: {e}"))?;
    let manifest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&manifest)
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "cargo locate-project found no workspace".to_owned())
}

/// The target directory (honours `CARGO_TARGET_DIR`), from `cargo metadata`.
pub(crate) fn target_dir() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .map_err(|e| format!("could not run cargo metadata: {e}"))?;
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad cargo metadata: {e}"))?;
    meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata has no target_directory".to_owned())
}

/// Replays cases 12.* and 13.* with `xtask/scripts/pmd_replay.py` against
/// `url`, `count` messages per case, on Autobahn's test files as kosoku
/// ships them; its lines go to `report/pmd_replay.jsonl`.
fn replay_compression(
    venv: &Path,
    root: &Path,
    url: &str,
    count: usize,
    report: &Path,
) -> Result<Vec<Verdict>, String> {
    let python = venv.join("bin/python");
    let data = Command::new(&python)
        .args([
            "-c",
            "import kosoku, os; print(os.path.join(os.path.dirname(kosoku.__file__), \
             'shim', 'autobahntestsuite', 'testdata'))",
        ])
        .output()
        .map_err(|e| format!("cannot find kosoku's test files: {e}"))?;
    let data = String::from_utf8_lossy(&data.stdout).trim().to_owned();
    let script = root.join("xtask/scripts/pmd_replay.py");
    println!(
        "==> python {} {url} {data} --count {count} --case '12.*' --case '13.*'",
        script.display()
    );
    let lines = report.join("pmd_replay.jsonl");
    let out = std::fs::File::create(&lines)
        .map_err(|e| format!("cannot write {}: {e}", lines.display()))?;
    let mut replay = Command::new(&python);
    replay
        .arg(&script)
        .args([url, &data, "--count", &count.to_string()])
        .args(["--case", "12.*", "--case", "13.*"])
        .stdout(out);
    // Exits non-zero when a case fails; the verdicts come from its lines.
    let status = run_limited_status(&mut replay, SUITE_LIMIT, "the permessage-deflate replay")?;
    let text = std::fs::read_to_string(&lines)
        .map_err(|e| format!("cannot read {}: {e}", lines.display()))?;
    let verdicts = parse_replay(&text);
    if verdicts.is_empty() {
        return Err(format!(
            "the permessage-deflate replay ({status}) reported no case"
        ));
    }
    for v in verdicts.iter().filter(|v| v.verdict != "OK") {
        println!("    {} {}", v.case, v.verdict);
    }
    Ok(verdicts)
}

/// The verdicts of the replay's JSON lines (`{"case", "verdict", …}`).
fn parse_replay(text: &str) -> Vec<Verdict> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|v| {
            Some(Verdict {
                case: v["case"].as_str()?.to_owned(),
                verdict: v["verdict"].as_str().unwrap_or("FAILED").to_owned(),
            })
        })
        .collect()
}

/// Makes sure `venv` holds kosoku at the pinned version; returns its
/// command, or why it cannot be had.
fn install_kosoku(venv: &Path) -> Result<PathBuf, String> {
    let python = venv.join("bin/python");
    let kosoku = venv.join("bin").join(KOSOKU);
    let installed = |python: &Path| {
        Command::new(python)
            .args([
                "-c",
                &format!(
                    "import importlib.metadata as m; \
                     print(m.version('{KOSOKU}'), m.version('websockets'))"
                ),
            ])
            .stderr(Stdio::null())
            .output()
            .is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).trim()
                    == format!("{KOSOKU_VERSION} {WEBSOCKETS_VERSION}")
            })
    };
    if kosoku.exists() && installed(&python) {
        return Ok(kosoku);
    }
    let version = Command::new("python3")
        .arg("--version")
        .output()
        .map_err(|e| format!("python3 is not available ({e})"))?;
    if !version.status.success() {
        return Err("python3 is not available".to_owned());
    }
    if !python.exists() {
        println!("\n==> python3 -m venv {}", venv.display());
        run_limited(
            Command::new("python3").arg("-m").arg("venv").arg(venv),
            VENV_LIMIT,
            "python3 -m venv",
        )
        .map_err(|e| format!("{e} (on Debian the venv module is the package python3-venv)"))?;
    }
    println!("==> pip install {KOSOKU}=={KOSOKU_VERSION} websockets=={WEBSOCKETS_VERSION}");
    run_limited(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
            &format!("{KOSOKU}=={KOSOKU_VERSION}"),
            &format!("websockets=={WEBSOCKETS_VERSION}"),
        ]),
        PIP_LIMIT,
        "pip install",
    )
    .map_err(|e| format!("{e} (is the package index reachable?)"))?;
    if kosoku.exists() && installed(&python) {
        Ok(kosoku)
    } else {
        Err(format!(
            "{KOSOKU} {KOSOKU_VERSION} did not install into {}",
            venv.display()
        ))
    }
}

/// Runs `command` to its end within `limit`; an error unless it succeeds.
fn run_limited(command: &mut Command, limit: Duration, what: &str) -> Result<(), String> {
    let status = run_limited_status(command, limit, what)?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Runs `command` within `limit` (killed when it runs over) and returns
/// its exit status.
pub(crate) fn run_limited_status(
    command: &mut Command,
    limit: Duration,
    what: &str,
) -> Result<std::process::ExitStatus, String> {
    let mut child = command
        .spawn()
        .map_err(|e| format!("could not start {what}: {e}"))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{what} took over {}s and was killed",
                    limit.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    }
}

/// The running echo example; killed when dropped.
struct EchoServer {
    child: Child,
    url: String,
}

impl EchoServer {
    /// Starts `bin` on a free loopback port and waits for its
    /// `listening on ws://…/` line.
    fn start(bin: &Path) -> Result<EchoServer, String> {
        let mut child = Command::new(bin)
            .args(["127.0.0.1:0", "--max-message-bytes", MAX_MESSAGE_BYTES])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("could not start {}: {e}", bin.display()))?;
        let stdout = child.stdout.take();
        // From here on, the server is killed however this ends.
        let mut server = EchoServer {
            child,
            url: String::new(),
        };
        let stdout = stdout.ok_or("the echo server has no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START_LIMIT)
            .map_err(|_| "the echo server did not start listening in time".to_owned())?;
        server.url = line
            .trim()
            .strip_prefix("listening on ")
            .filter(|url| url.starts_with("ws://"))
            .ok_or_else(|| format!("unexpected first line from the echo server: {line:?}"))?
            .to_owned();
        Ok(server)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One case's verdict: the worse of Autobahn's `behavior` and
/// `behaviorClose`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    case: String,
    verdict: String,
}

/// The verdicts of an Autobahn `index.json` (`{agent: {case: {behavior,
/// behaviorClose, …}}}`), in case order.
fn parse_index(text: &str) -> Result<Vec<Verdict>, String> {
    let index: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("index.json is not JSON: {e}"))?;
    let agents = index.as_object().ok_or("index.json is not an object")?;
    let mut verdicts = Vec::new();
    for cases in agents.values() {
        let cases = cases
            .as_object()
            .ok_or("index.json: an agent is not an object")?;
        for (case, result) in cases {
            let of = |key: &str| result[key].as_str().unwrap_or("FAILED").to_owned();
            let (behavior, close) = (of("behavior"), of("behaviorClose"));
            let rank = |v: &str| {
                VERDICTS
                    .iter()
                    .position(|k| *k == v)
                    .unwrap_or(VERDICTS.len())
            };
            let verdict = if rank(&close) > rank(&behavior) {
                close
            } else {
                behavior
            };
            verdicts.push(Verdict {
                case: case.clone(),
                verdict,
            });
        }
    }
    if verdicts.is_empty() {
        return Err("index.json lists no cases".to_owned());
    }
    verdicts.sort_by_key(|v| case_key(&v.case));
    Ok(verdicts)
}

/// `"9.10.2"` → `[9, 10, 2]`, for numeric order.
fn case_key(case: &str) -> Vec<u32> {
    case.split('.')
        .map(|n| n.parse().unwrap_or(u32::MAX))
        .collect()
}

/// The Autobahn|Testsuite's name of a case group.
fn group_name(group: &str) -> &'static str {
    match group {
        "1" => "Framing",
        "2" => "Pings/Pongs",
        "3" => "Reserved Bits",
        "4" => "Opcodes",
        "5" => "Fragmentation",
        "6" => "UTF-8 Handling",
        "7" => "Close Handling",
        "9" => "Limits/Performance",
        "10" => "Misc",
        "12" | "13" => "WebSocket Compression",
        _ => "",
    }
}

/// A Markdown table: per case group, the cases of each verdict.
fn summary_table(verdicts: &[Verdict]) -> String {
    let mut groups: BTreeMap<u32, (String, BTreeMap<&str, usize>)> = BTreeMap::new();
    for v in verdicts {
        let group = v.case.split('.').next().unwrap_or_default().to_owned();
        let key = group.parse().unwrap_or(u32::MAX);
        let entry = groups
            .entry(key)
            .or_insert_with(|| (group, BTreeMap::new()));
        *entry.1.entry(v.verdict.as_str()).or_default() += 1;
    }
    let columns = [
        "OK",
        "NON-STRICT",
        "INFORMATIONAL",
        "UNIMPLEMENTED",
        "FAILED",
    ];
    let mut out = format!("| group | cases | {} |\n", columns.join(" | "));
    out.push_str(&format!("|---|---:|{}\n", "---:|".repeat(columns.len())));
    let mut totals = [0usize; 5];
    for (group, counts) in groups.values() {
        let cases: usize = counts.values().sum();
        out.push_str(&format!("| {group} {} | {cases} |", group_name(group)));
        for (i, column) in columns.iter().enumerate() {
            let n = counts.get(column).copied().unwrap_or(0);
            totals[i] += n;
            out.push_str(&format!(" {n} |"));
        }
        out.push('\n');
    }
    out.push_str(&format!("| **all** | {} |", verdicts.len()));
    for n in totals {
        out.push_str(&format!(" {n} |"));
    }
    out.push('\n');
    out
}

/// What fails the step: FAILED and UNIMPLEMENTED cases, NON-STRICT ones
/// not in `allowed`, and verdicts Autobahn does not define.
fn judge(verdicts: &[Verdict], allowed: &BTreeMap<String, String>) -> Vec<String> {
    let ids = |verdict: &str| -> Vec<&str> {
        verdicts
            .iter()
            .filter(|v| v.verdict == verdict)
            .map(|v| v.case.as_str())
            .collect()
    };
    let mut problems = Vec::new();
    for verdict in ["FAILED", "UNIMPLEMENTED"] {
        let cases = ids(verdict);
        if !cases.is_empty() {
            problems.push(format!("{verdict}: {}", cases.join(", ")));
        }
    }
    let unlisted: Vec<&str> = ids("NON-STRICT")
        .into_iter()
        .filter(|case| !allowed.contains_key(*case))
        .collect();
    if !unlisted.is_empty() {
        problems.push(format!(
            "NON-STRICT and not in the allow-list of {DOC}: {}",
            unlisted.join(", ")
        ));
    }
    let unknown: Vec<String> = verdicts
        .iter()
        .filter(|v| !VERDICTS.contains(&v.verdict.as_str()))
        .map(|v| format!("{} ({})", v.case, v.verdict))
        .collect();
    if !unknown.is_empty() {
        problems.push(format!("unknown verdicts: {}", unknown.join(", ")));
    }
    problems
}

/// The NON-STRICT allow-list of `doc`: case id → reason, from the table
/// rows between [`ALLOW_START`] and [`ALLOW_END`] (`| 6.4.3 | reason |`;
/// rows whose first cell is not a case id are headers or placeholders).
fn allow_list(doc: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(doc)
        .map_err(|e| format!("cannot read the allow-list in {}: {e}", doc.display()))?;
    parse_allow_list(&text).map_err(|e| format!("{}: {e}", doc.display()))
}

fn parse_allow_list(text: &str) -> Result<BTreeMap<String, String>, String> {
    let start = text
        .find(ALLOW_START)
        .ok_or_else(|| format!("no `{ALLOW_START}` line"))?;
    let end = text[start..]
        .find(ALLOW_END)
        .ok_or_else(|| format!("no `{ALLOW_END}` line"))?;
    let mut allowed = BTreeMap::new();
    for line in text[start..start + end].lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        let [case, reason, ..] = cells[..] else {
            continue;
        };
        let is_case = !case.is_empty()
            && case
                .split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if !is_case {
            continue;
        }
        if reason.is_empty() {
            return Err(format!("allow-listed case {case} gives no reason"));
        }
        allowed.insert(case.to_owned(), reason.to_owned());
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = r#"{"127.0.0.1:9001": {
        "9.10.1": {"behavior": "OK", "behaviorClose": "OK"},
        "1.1.1": {"behavior": "OK", "behaviorClose": "OK"},
        "6.4.3": {"behavior": "NON-STRICT", "behaviorClose": "OK"},
        "7.9.1": {"behavior": "OK", "behaviorClose": "FAILED"},
        "7.13.1": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL"},
        "9.2.1": {"behavior": "UNIMPLEMENTED", "behaviorClose": "OK"}
    }}"#;

    #[test]
    fn verdicts_are_the_worse_of_behavior_and_close_in_case_order() {
        let verdicts = parse_index(INDEX).unwrap();
        let got: Vec<(&str, &str)> = verdicts
            .iter()
            .map(|v| (v.case.as_str(), v.verdict.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("1.1.1", "OK"),
                ("6.4.3", "NON-STRICT"),
                ("7.9.1", "FAILED"),
                ("7.13.1", "INFORMATIONAL"),
                ("9.2.1", "UNIMPLEMENTED"),
                ("9.10.1", "OK"),
            ]
        );
        let table = summary_table(&verdicts);
        assert!(
            table.contains("| 7 Close Handling | 2 | 0 | 0 | 1 | 0 | 1 |"),
            "{table}"
        );
        assert!(
            table.contains("| **all** | 6 | 2 | 1 | 1 | 1 | 1 |"),
            "{table}"
        );
    }

    #[test]
    fn the_replays_lines_are_verdicts() {
        let text = concat!(
            r#"{"case": "12.1.1", "verdict": "OK", "result": "100 echoes identical"}"#,
            "\n",
            r#"{"case": "13.7.18", "verdict": "FAILED", "result": "the echo differs"}"#,
            "\nTraceback (most recent call last):\n",
            r#"{"case": "13.1.1"}"#,
            "\n",
        );
        let got = parse_replay(text);
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|v| (v.case.as_str(), v.verdict.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("12.1.1", "OK"),
                ("13.7.18", "FAILED"),
                ("13.1.1", "FAILED")
            ]
        );
    }

    #[test]
    fn failures_and_unlisted_non_strict_cases_are_named() {
        let verdicts = parse_index(INDEX).unwrap();
        let none = BTreeMap::new();
        assert_eq!(
            judge(&verdicts, &none),
            [
                "FAILED: 7.9.1".to_owned(),
                "UNIMPLEMENTED: 9.2.1".to_owned(),
                format!("NON-STRICT and not in the allow-list of {DOC}: 6.4.3"),
            ]
        );
        let allowed = BTreeMap::from([("6.4.3".to_owned(), "why".to_owned())]);
        assert_eq!(judge(&verdicts, &allowed).len(), 2);
    }

    #[test]
    fn the_allow_list_is_the_table_between_the_markers() {
        let doc = format!(
            "| 1.1.1 | outside |\n{ALLOW_START}\n| case | reason |\n|---|---|\n\
             | 6.4.3 | fail-fast is checked per read |\n| — | none |\n{ALLOW_END}\n| 2.1 | outside |"
        );
        let allowed = parse_allow_list(&doc).unwrap();
        assert_eq!(
            allowed,
            BTreeMap::from([(
                "6.4.3".to_owned(),
                "fail-fast is checked per read".to_owned()
            )])
        );
        let no_reason = format!("{ALLOW_START}\n| 6.4.3 |  |\n{ALLOW_END}");
        assert!(parse_allow_list(&no_reason).is_err());
        assert!(parse_allow_list("no markers").is_err());
    }

    #[test]
    fn the_documents_allow_list_parses() {
        let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DOC);
        allow_list(&doc).unwrap();
    }
}
