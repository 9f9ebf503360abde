//! The loom model tests of event-core's hand-written concurrency (issue 24;
//! see `event-core/src/sync.rs`), a step of `cargo xtask ci`
//! (`--only loom` alone).
//!
//! They need `RUSTFLAGS="--cfg loom"`, which changes every crate's build, so
//! they build in their own target directory (`<target>/loom`) and leave the
//! normal build as it was. Release mode: loom runs each model thousands of
//! times.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Runs `cargo test -p event-core --release --lib loom_model` under
/// `--cfg loom`.
pub fn run() -> Result<(), String> {
    let started = Instant::now();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| PathBuf::from("target"), PathBuf::from)
        .join("loom");
    let rustflags = match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} --cfg loom"),
        _ => "--cfg loom".to_owned(),
    };
    let args = [
        "test",
        "--locked",
        "-p",
        "event-core",
        "--release",
        "--lib",
        "loom_model",
    ];
    println!(
        "\n==> RUSTFLAGS=\"{rustflags}\" CARGO_TARGET_DIR={} cargo {}",
        target.display(),
        args.join(" ")
    );
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(args)
        .env("RUSTFLAGS", &rustflags)
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    println!("<== {:.1}s", started.elapsed().as_secs_f64());
    if status.success() {
        Ok(())
    } else {
        Err(format!("the loom models failed ({status})"))
    }
}
