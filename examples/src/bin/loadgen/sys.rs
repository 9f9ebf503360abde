//! Process readings from `/proc`: CPU time and resident memory.

use std::time::Instant;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of a process (`"self"` or a pid).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU use of a process over an interval, in percent of one core.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pid: String,
    start_cpu: Option<f64>,
    start: Instant,
}

impl CpuMeter {
    /// Starts measuring `pid` (`"self"` for this process).
    pub fn start(pid: &str) -> Self {
        CpuMeter {
            pid: pid.to_owned(),
            start_cpu: cpu_seconds(pid),
            start: Instant::now(),
        }
    }

    /// CPU seconds used since `start`.
    pub fn seconds(&self) -> Option<f64> {
        Some(cpu_seconds(&self.pid)? - self.start_cpu?)
    }

    /// Percent of one core used since `start` (200 = both cores of two).
    pub fn percent(&self) -> Option<f64> {
        let used = cpu_seconds(&self.pid)? - self.start_cpu?;
        let wall = self.start.elapsed().as_secs_f64();
        (wall > 0.0).then(|| used / wall * 100.0)
    }
}
