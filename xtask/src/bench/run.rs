//! Processes of the benchmark: building, servers, load runs, profiles.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Raises the open-file limit to the hard limit, then runs the program.
const WITH_NOFILE: &str = "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"";

/// The Cargo profile the benchmarks build: `release` plus line tables, so
/// `perf` can name functions (the shipped `release` profile has no debug
/// info).
pub const PROFILE: &str = "profiling";

/// Runs `cargo <args>`, echoing it.
/// Builds `loadgen` with the bench profile.
pub fn build_loadgen() -> Result<(), String> {
    build_examples(&["loadgen"])
}

/// Builds these binaries of the `examples` package with the bench profile,
/// in one cargo run.
pub fn build_examples(bins: &[&str]) -> Result<(), String> {
    let mut args = vec!["build", "--profile", PROFILE, "-p", "examples"];
    for bin in bins {
        args.extend(["--bin", bin]);
    }
    cargo_build(&args)
}

pub fn cargo_build(args: &[&str]) -> Result<(), String> {
    println!("==> cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(args)
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The release binaries.
#[derive(Debug, Clone)]
pub struct Bins {
    /// event-server.
    pub server: PathBuf,
    /// raw-floor.
    pub floor: PathBuf,
    /// loadgen.
    pub loadgen: PathBuf,
    /// bench-core.
    pub bench_core: PathBuf,
    /// embed-axum (an axum app served by `event_http::serve`).
    pub embed: PathBuf,
}

impl Bins {
    /// Finds them in the target directory `cargo metadata` names.
    pub fn locate() -> Result<Bins, String> {
        let bins = Bins::paths()?;
        for b in [
            &bins.server,
            &bins.floor,
            &bins.loadgen,
            &bins.bench_core,
            &bins.embed,
        ] {
            if !b.exists() {
                return Err(format!("{} was not built", b.display()));
            }
        }
        Ok(bins)
    }

    /// Like [`locate`](Self::locate), without `bench-core` (the idle
    /// measurement).
    pub fn locate_without_bench_core() -> Result<Bins, String> {
        let bins = Bins::paths()?;
        for b in [&bins.server, &bins.floor, &bins.loadgen, &bins.embed] {
            if !b.exists() {
                return Err(format!("{} was not built", b.display()));
            }
        }
        Ok(bins)
    }

    /// Like [`locate`](Self::locate), requiring only the server and
    /// `loadgen` (the webhook measurement).
    pub fn locate_server_and_loadgen() -> Result<Bins, String> {
        let bins = Bins::paths()?;
        for b in [&bins.server, &bins.loadgen] {
            if !b.exists() {
                return Err(format!("{} was not built", b.display()));
            }
        }
        Ok(bins)
    }

    /// Like [`locate`](Self::locate), requiring only the server (the
    /// compression measurement).
    pub fn locate_server() -> Result<Bins, String> {
        let bins = Bins::paths()?;
        if !bins.server.exists() {
            return Err(format!("{} was not built", bins.server.display()));
        }
        Ok(bins)
    }

    /// The profile's binary directory.
    pub fn dir() -> Result<PathBuf, String> {
        Ok(Bins::paths()?
            .server
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default())
    }

    fn paths() -> Result<Bins, String> {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .output()
            .map_err(|e| format!("cargo metadata: {e}"))?;
        let meta: Value =
            serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
        let dir = PathBuf::from(
            meta["target_directory"]
                .as_str()
                .ok_or("cargo metadata has no target_directory")?,
        )
        .join(PROFILE);
        let bins = Bins {
            server: dir.join("event-server"),
            floor: dir.join("raw-floor"),
            loadgen: dir.join("loadgen"),
            bench_core: dir.join("bench-core"),
            embed: dir.join("embed-axum"),
        };
        Ok(bins)
    }
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// raw-floor.
    Floor,
    /// event-server.
    Ours,
    /// embed-axum: the transports in an axum app, served by `event-http`.
    Embed,
}

/// A running server on a free loopback port; stopped on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:port`.
    pub url: String,
}

fn free_port() -> Result<SocketAddr, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))
}

impl Server {
    /// Starts a server and waits until it accepts connections.
    pub fn start(
        bins: &Bins,
        kind: ServerKind,
        tmp: &Path,
        database_url: Option<&str>,
    ) -> Result<Server, String> {
        Server::start_with(bins, kind, tmp, database_url, &[])
    }

    /// [`start`](Server::start) with more environment variables (cluster
    /// settings).
    pub fn start_with(
        bins: &Bins,
        kind: ServerKind,
        tmp: &Path,
        database_url: Option<&str>,
        env: &[(&str, String)],
    ) -> Result<Server, String> {
        let addr = free_port()?;
        let (bin, name) = match kind {
            ServerKind::Floor => (&bins.floor, "raw-floor"),
            ServerKind::Ours => (&bins.server, "event-server"),
            ServerKind::Embed => (&bins.embed, "embed-axum"),
        };
        let log = std::fs::File::create(tmp.join(format!("{name}-{}.log", addr.port())))
            .map_err(|e| format!("log file: {e}"))?;
        let log_err = log.try_clone().map_err(|e| format!("log file: {e}"))?;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", WITH_NOFILE])
            .arg(bin)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        match kind {
            ServerKind::Floor => {
                cmd.args(["--addr", &addr.to_string()]);
            }
            ServerKind::Ours => {
                cmd.env("EVENT_SERVER_ADDR", addr.to_string())
                    .env("DATABASE_URL", database_url.unwrap_or("sqlite::memory:"))
                    .env("WEBHOOK_ALLOW_CIDRS", "127.0.0.0/8")
                    .env("MAX_CONNECTIONS", "20000")
                    // Every load client connects from 127.0.0.1.
                    .env("MAX_CONNECTIONS_PER_IP", "0")
                    .env_remove("AUTH_ADMIN_TOKEN")
                    .env_remove("AUTH_CLIENT_TOKENS")
                    .env_remove("RUST_LOG");
            }
            ServerKind::Embed => {
                // Its data directory (the webhook SQLite store); loadgen
                // publishes through the bench-only publish route.
                cmd.arg(addr.to_string())
                    .arg(tmp.join(format!("embed-axum-{}", addr.port())))
                    .env("EMBED_AXUM_PUBLISH", "1")
                    .env_remove("RUST_LOG");
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        let mut server = Server {
            child,
            url: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{name} exited at start ({status}); see its log in {}",
                    tmp.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not listen on {addr} within 30 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    /// The server's process id (the shell `exec`s into it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Runs a program (with the open-file limit raised), kills it after
/// `limit_secs`, and parses every stdout line that is a JSON object.
pub fn run_json(bin: &Path, args: &[&str], limit_secs: u64) -> Result<Vec<Value>, String> {
    let name = bin
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!("==> {name} {}", args.join(" "));
    let mut child = Command::new("sh")
        .args(["-c", WITH_NOFILE])
        .arg(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("start {name}: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(limit_secs);
    // loadgen draws its own progress; the in-process benches get a ticker.
    let mut ticker = (name != "loadgen").then(|| Ticker::new(&name, limit_secs));
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            if let Some(t) = ticker.take() {
                t.finish();
            }
            break Some(status);
        }
        if let Some(t) = ticker.as_mut() {
            t.tick();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = reader.join().unwrap_or_default();
    match status {
        None => return Err(format!("{name} did not finish within {limit_secs} s")),
        Some(s) if !s.success() => return Err(format!("{name} failed ({s})")),
        Some(_) => {}
    }
    let values: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(Value::is_object)
        .collect();
    if values.is_empty() {
        return Err(format!("{name} printed no result"));
    }
    for v in &values {
        println!("    {v}");
    }
    Ok(values)
}

/// One loadgen run against `server`; its last JSON line.
pub fn loadgen(
    bins: &Bins,
    server: &Server,
    args: &[String],
    limit_secs: u64,
) -> Result<Value, String> {
    let mut all: Vec<&str> = vec!["--url", &server.url];
    all.extend(args.iter().map(String::as_str));
    run_json(&bins.loadgen, &all, limit_secs).map(|mut v| v.pop().unwrap_or(Value::Null))
}

/// The webhook run on a fresh server with the given database.
pub fn webhook_run(bins: &Bins, tmp: &Path, database_url: &str, args: &[String]) -> Value {
    let result = Server::start(bins, ServerKind::Ours, tmp, Some(database_url)).and_then(|s| {
        let mut args = args.to_vec();
        args.extend(["--server-pid".to_owned(), s.pid().to_string()]);
        let r = loadgen(bins, &s, &args, 200);
        s.stop();
        r
    });
    result.unwrap_or_else(|e| json!({"error": e}))
}

/// A throw-away PostgreSQL database.
pub struct PgDb {
    /// Its URL.
    pub url: String,
    name: String,
}

const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/test";

fn psql(sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args([PG_ADMIN, "-v", "ON_ERROR_STOP=1", "-qc", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// Creates a fresh database on the local PostgreSQL.
pub fn postgres_db() -> Result<PgDb, String> {
    let name = format!("matric_bench_{}", std::process::id());
    psql(&format!("DROP DATABASE IF EXISTS {name}"))?;
    psql(&format!("CREATE DATABASE {name}"))?;
    Ok(PgDb {
        url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
        name,
    })
}

impl PgDb {
    /// Drops the database.
    pub fn drop_db(self) {
        let _ = psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// `perf record` attached to a process.
pub struct Perf {
    child: Child,
    data: PathBuf,
}

impl Perf {
    /// Starts sampling `pid` at 499 Hz with call graphs (None when perf is
    /// missing or refuses).
    pub fn start(pid: u32, tmp: &Path) -> Option<Perf> {
        Perf::start_with(pid, tmp, &["-F", "499", "-g"])
    }

    /// Starts sampling `pid` at 1,999 Hz without call graphs: for shares
    /// of self time, where more samples mean less noise.
    pub fn start_dense(pid: u32, tmp: &Path) -> Option<Perf> {
        Perf::start_with(pid, tmp, &["-F", "1999"])
    }

    fn start_with(pid: u32, tmp: &Path, options: &[&str]) -> Option<Perf> {
        let data = tmp.join(format!("perf-{pid}.data"));
        let child = Command::new("perf")
            .arg("record")
            .args(options)
            .arg("-o")
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Some(Perf { child, data })
    }

    /// Stops sampling; the top symbols by self time.
    pub fn finish(self) -> Option<String> {
        let report = self.finish_report()?;
        let top: Vec<&str> = report.lines().take(25).collect();
        (!top.is_empty()).then(|| top.join("\n"))
    }

    /// Stops sampling; every symbol's line (`  12.34%  [.] name`), by self
    /// time.
    pub fn finish_report(mut self) -> Option<String> {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let out = Command::new("perf")
            .args([
                "report",
                "--no-children",
                "--stdio",
                "--sort",
                "symbol",
                "-g",
                "none",
                "-i",
            ])
            .arg(&self.data)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.trim_end().trim_end_matches([' ', '-']))
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
    }
}

/// What of a profile is telemetry's: the mirror and log formatting
/// (`event_telemetry`, `tracing*`: spans included), metrics recording and
/// export (`opentelemetry*`, `prometheus`, `event_core::metrics`).
const TELEMETRY_SYMBOLS: [&str; 6] = [
    "event_telemetry::",
    "tracing",
    "opentelemetry",
    "prometheus::",
    "event_core::metrics::",
    "TransportMetrics",
];

/// The share of samples (self time) in telemetry's symbols, and those
/// symbols with their shares, largest first.
pub fn telemetry_share(report: &str) -> (f64, Vec<(f64, String)>) {
    let mut symbols: Vec<(f64, String)> = report
        .lines()
        .filter_map(|line| {
            let (pct, name) = line.trim().split_once('%')?;
            let pct: f64 = pct.trim().parse().ok()?;
            let name = name.trim().trim_start_matches("[.]").trim().to_owned();
            TELEMETRY_SYMBOLS
                .iter()
                .any(|t| name.contains(t))
                .then_some((pct, name))
        })
        .collect();
    symbols.sort_by(|a, b| b.0.total_cmp(&a.0));
    (symbols.iter().map(|(p, _)| p).sum(), symbols)
}

/// How long a measurement has run: on a terminal one line on stderr
/// redrawn in place twice a second; otherwise a plain line every 30 s.
struct Ticker {
    name: String,
    limit_secs: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
}

impl Ticker {
    fn new(name: &str, limit_secs: u64) -> Ticker {
        use std::io::IsTerminal;
        Ticker {
            name: name.to_owned(),
            limit_secs,
            started: Instant::now(),
            last: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self) {
        let every = if self.terminal {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(30)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let elapsed = self.started.elapsed().as_secs();
        if self.terminal {
            eprint!(
                "\r\x1b[2K    {} running {elapsed} s (stops by {} s)",
                self.name, self.limit_secs
            );
        } else {
            eprintln!("    {} still running after {elapsed} s", self.name);
        }
    }

    fn finish(self) {
        if self.terminal {
            eprintln!(
                "\r\x1b[2K    {} done in {:.1} s",
                self.name,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}
