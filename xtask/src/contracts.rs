//! `cargo xtask contracts`: the host's API documents through external
//! validators (issue 20).
//!
//! 1. `@asyncapi/parser` and `@redocly/cli` are installed with npm under
//!    `<target>/contracts` (pinned; both run on Node 20).
//! 2. `event-server` is built (default features, `contracts` among them)
//!    and started on `127.0.0.1:0` in anonymous local mode with a temporary
//!    SQLite database; its address comes from its "listening" log line.
//! 3. A small Node script ([`SCRIPT`]) fetches `GET /api/v1/asyncapi.json`
//!    and `GET /api/v1/openapi.json`, writes them to
//!    `<target>/contracts/asyncapi.json` and `openapi.json`, and validates
//!    the AsyncAPI document with the official parser (schema and semantic
//!    rules; any error fails).
//! 4. `redocly lint` checks the OpenAPI document with its recommended
//!    rules (any error fails; warnings are printed).
//!
//! Without Node or npm the step prints why and is skipped — unless
//! `EVENT_TEST_REQUIRE_SERVICES=1`, as in CI, where that is a failure.
//! Every command runs under a time limit and the server is killed however
//! the step ends.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::conformance::{run_limited_status, target_dir};
use crate::node_step::{Server, Step, build_server};

/// The validators and their pinned versions (`@redocly/cli` 2.x needs
/// Node 20.19 or 22.12+).
const PACKAGES: [(&str, &str); 2] = [("@asyncapi/parser", "3.6.6"), ("@redocly/cli", "2.77.0")];

const CHECK_LIMIT: Duration = Duration::from_secs(180);

/// Fetches both documents from `argv[2]` (the server's base URL), writes
/// them into `argv[3]`, and validates the AsyncAPI one.
const SCRIPT: &str = r#"import { Parser } from '@asyncapi/parser';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [base, dir] = process.argv.slice(2);
let text = '';
for (const name of ['asyncapi', 'openapi']) {
  const res = await fetch(`${base}/api/v1/${name}.json`);
  if (res.status !== 200) {
    console.error(`GET /api/v1/${name}.json answered ${res.status}`);
    process.exit(1);
  }
  const body = await res.text();
  JSON.parse(body);
  writeFileSync(join(dir, `${name}.json`), body);
  console.log(`wrote ${join(dir, `${name}.json`)} (${body.length} bytes)`);
  if (name === 'asyncapi') text = body;
}
const { document, diagnostics } = await new Parser().parse(text);
const severity = ['error', 'warning', 'info', 'hint'];
for (const d of diagnostics) {
  console.log(`  ${severity[d.severity]} ${d.code} at ${d.path.join('.')}: ${d.message}`);
}
const errors = diagnostics.filter((d) => d.severity === 0).length;
console.log(`asyncapi: ${errors} errors, ${diagnostics.length - errors} other diagnostics`);
process.exit(errors === 0 && document ? 0 : 1);
"#;

/// Runs the validators.
pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(format!("contracts: unknown arguments {args:?}"));
    }
    let started = Instant::now();
    let step = Step("contracts");
    if let Some(reason) = step.missing_node() {
        return step.skip(reason);
    }
    let dir = target_dir()?.join("contracts");
    let redocly = dir.join("node_modules/.bin/redocly");
    if let Err(e) = step.npm_install(&dir, &PACKAGES, false, || redocly.exists()) {
        return step.skip(e);
    }
    let server_bin = build_server()?;
    let data = dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&data).map_err(|e| format!("create {}: {e}", data.display()))?;
    let result = check(&server_bin, &data, &dir);
    let _ = std::fs::remove_dir_all(&data);
    result?;
    println!(
        "contracts: AsyncAPI and OpenAPI documents valid ({:.0}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn check(server_bin: &Path, data: &Path, dir: &Path) -> Result<(), String> {
    let (server, addr) = Server::start(server_bin, data)?;
    let script = dir.join("validate.mjs");
    std::fs::write(&script, SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
    println!("contracts: @asyncapi/parser against http://{addr}/api/v1/asyncapi.json");
    let parsed = run_limited_status(
        Command::new("node")
            .arg(&script)
            .arg(format!("http://{addr}"))
            .arg(dir),
        CHECK_LIMIT,
        "the AsyncAPI parser",
    )?;
    drop(server);
    if !parsed.success() {
        return Err(format!(
            "the AsyncAPI document is invalid or could not be fetched ({parsed})"
        ));
    }
    let openapi = dir.join("openapi.json");
    println!("contracts: redocly lint {}", openapi.display());
    let linted = run_limited_status(
        Command::new(dir.join("node_modules/.bin/redocly"))
            .arg("lint")
            .arg(&openapi)
            .args(["--format", "stylish"])
            .env("NO_COLOR", "1")
            .env("REDOCLY_TELEMETRY", "off")
            .env("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true"),
        CHECK_LIMIT,
        "redocly lint",
    )?;
    if !linted.success() {
        return Err(format!("the OpenAPI document has errors ({linted})"));
    }
    Ok(())
}
