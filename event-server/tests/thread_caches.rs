//! The server re-executes itself in place with smaller malloc thread
//! caches (`event_server::memory`): the process that serves is the one
//! started (same id), the environment it was loaded with carries the
//! tunable, and glibc's loader reads that value as 2 chunks per size. An
//! operator's own tcache size, or `MEMORY_TRIM_CLOSED=0`, leaves the
//! environment as it was.

#![cfg(all(target_os = "linux", target_env = "gnu"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/host.rs"]
#[allow(dead_code)]
mod host;

use std::process::Command;

use event_server::memory::{REEXEC_MARKER, TCACHE_TUNABLE};
use event_server::testing::TempDir;
use host::Host;

/// The environment the process `pid` was loaded with (its last
/// `execve`'s, which glibc read its tunables from), as raw bytes.
fn environ(pid: u32) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/environ")).unwrap()
}

/// Whether `environ` has `name=value`. glibc's loader may end each
/// tunable of `GLIBC_TUNABLES` in place with a NUL as it parses them (2.36
/// does), so a `:` of `value` also matches a NUL there.
fn has(environ: &[u8], name: &str, value: &str) -> bool {
    let want = format!("{name}={value}\0").into_bytes();
    (0..environ.len())
        .filter(|&i| i == 0 || environ[i - 1] == 0)
        .any(|i| {
            let got = &environ[i..];
            got.len() >= want.len()
                && got
                    .iter()
                    .zip(&want)
                    .all(|(g, w)| g == w || (*w == b':' && *g == 0))
        })
}

/// Whether `environ` has a variable `name` at all.
fn is_set(environ: &[u8], name: &str) -> bool {
    environ
        .split(|b| *b == 0)
        .any(|v| v.starts_with(format!("{name}=").as_bytes()))
}

/// What the dynamic loader of process `pid` makes of `tunables`: its
/// `--list-tunables` line for `name` (e.g. `0x2` for a value of 2).
fn read_by_glibc(pid: u32, tunables: &str, name: &str) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let loader = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.contains("/ld-linux"))
        .expect("the server's dynamic loader in its memory map");
    let out = Command::new(loader)
        .arg("--list-tunables")
        .env_clear()
        .env("GLIBC_TUNABLES", tunables)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{loader} --list-tunables (glibc 2.33 or later): {out:?}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .unwrap_or_else(|| panic!("{name} not listed:\n{text}"));
    line.split_whitespace().next().unwrap().to_owned()
}

/// Starts the binary with `env` (plus a temporary database) and returns
/// it with the environment it was loaded with.
async fn start(dir: &TempDir, env: &[(&str, &str)]) -> (Host, Vec<u8>) {
    let mut all = vec![("DATABASE_URL", dir.sqlite_url())];
    all.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let host = Host::start(&all).await;
    let environ = environ(host.pid());
    (host, environ)
}

#[tokio::test]
async fn the_server_runs_with_two_cached_chunks_per_size() {
    let dir = TempDir::new();
    let (host, env) = start(&dir, &[]).await;
    assert!(has(&env, "GLIBC_TUNABLES", TCACHE_TUNABLE));
    assert!(has(&env, REEXEC_MARKER, "1"));
    assert_eq!(
        read_by_glibc(host.pid(), TCACHE_TUNABLE, "glibc.malloc.tcache_count"),
        "0x2"
    );
    // The re-executed process is the one that serves and stops cleanly.
    assert_eq!(host.status("/health").await, 200);
    let (status, _) = host.terminate().await;
    assert!(status.success(), "{status}");

    // The operator's other tunables are kept beside it.
    let (host, env) = start(&dir, &[("GLIBC_TUNABLES", "glibc.malloc.arena_max=3")]).await;
    let tunables = format!("glibc.malloc.arena_max=3:{TCACHE_TUNABLE}");
    assert!(has(&env, "GLIBC_TUNABLES", &tunables));
    assert_eq!(
        read_by_glibc(host.pid(), &tunables, "glibc.malloc.tcache_count"),
        "0x2"
    );
    assert_eq!(
        read_by_glibc(host.pid(), &tunables, "glibc.malloc.arena_max"),
        "0x3"
    );
}

#[tokio::test]
async fn an_operator_s_tcache_size_or_no_trimming_is_left_alone() {
    let dir = TempDir::new();
    let chosen = "glibc.malloc.tcache_count=5";
    let (host, env) = start(&dir, &[("GLIBC_TUNABLES", chosen)]).await;
    assert!(has(&env, "GLIBC_TUNABLES", chosen));
    assert!(!is_set(&env, REEXEC_MARKER), "re-executed");
    assert_eq!(
        read_by_glibc(host.pid(), chosen, "glibc.malloc.tcache_count"),
        "0x5"
    );
    assert_eq!(host.status("/health").await, 200);
    let (status, _) = host.terminate().await;
    assert!(status.success(), "{status}");

    let (host, env) = start(&dir, &[("MEMORY_TRIM_CLOSED", "0")]).await;
    assert!(!is_set(&env, "GLIBC_TUNABLES"));
    assert!(!is_set(&env, REEXEC_MARKER), "re-executed");
    assert_eq!(host.status("/health").await, 200);
}
