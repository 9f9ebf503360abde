//! How `ws-tail` and `sse-tail` print an event: on a terminal its name in a
//! colour per family (jobs green, notes cyan, queue status blue, the
//! server's own signals such as `resync_required` red) and its JSON
//! indented; anywhere else (a pipe, a file) one plain line, unchanged, for
//! tools to read. A [`Tally`] keeps a count of what was printed on stderr
//! (a status line on a terminal, a plain line now and then otherwise).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Whether stdout is a terminal (then [`format_event`] pretty-prints).
pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// The ANSI colour of an event name (`JobProgress`, `job.progress`,
/// `resync_required`, …).
fn colour(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("job") {
        "32"
    } else if lower.starts_with("note") {
        "36"
    } else if lower.starts_with("queue") {
        "34"
    } else if lower.contains("resync") || lower.contains("lagged") || lower.contains("error") {
        "31"
    } else {
        "35"
    }
}

/// `prefix name data` as one line, or (with `pretty`) the prefix and the
/// coloured name on one line and the indented JSON below it. Data that is
/// not JSON is printed as it is.
///
/// ```
/// let plain = examples::pretty::format_event("7", "JobQueued", r#"{"a":1}"#, false);
/// assert_eq!(plain, r#"7 JobQueued {"a":1}"#);
/// let pretty = examples::pretty::format_event("7", "JobQueued", r#"{"a":1}"#, true);
/// assert!(pretty.starts_with("7 \x1b[32mJobQueued\x1b[0m\n{\n  \"a\": 1\n}"));
/// ```
pub fn format_event(prefix: &str, name: &str, data: &str, pretty: bool) -> String {
    let head = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix} ")
    };
    if !pretty {
        return format!("{head}{name} {data}");
    }
    let body = serde_json::from_str::<serde_json::Value>(data)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| data.to_owned());
    format!("{head}\x1b[{}m{name}\x1b[0m\n{body}", colour(name))
}

/// How many events a tail has printed, on stderr: on a terminal one
/// status line redrawn at most four times a second (cleared before each
/// event is printed, so the two never mix on one screen); anywhere else a
/// plain line every ten seconds.
pub struct Tally {
    name: &'static str,
    count: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
    shown: bool,
}

impl Tally {
    /// A tally for the tool `name`.
    pub fn new(name: &'static str) -> Tally {
        let now = Instant::now();
        Tally {
            name,
            count: 0,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    /// Call before printing an event: clears the status line.
    pub fn before_print(&mut self) {
        if self.terminal && self.shown {
            eprint!("\r\x1b[2K");
            self.shown = false;
        }
    }

    /// Call after printing an event: counts it and redraws when due.
    pub fn printed(&mut self) {
        self.count += 1;
        let every = if self.terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let line = status_text(self.name, self.count, self.started.elapsed());
        if self.terminal {
            eprint!("{line}");
            self.shown = true;
        } else {
            eprintln!("{line}");
        }
    }
}

/// `[name 12.3s] 1234 events (100/s)`.
///
/// ```
/// let line = examples::pretty::status_text("ws-tail", 250, std::time::Duration::from_secs(5));
/// assert_eq!(line, "[ws-tail 5.0s] 250 events (50/s)");
/// ```
pub fn status_text(name: &str, count: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { count as f64 / secs } else { 0.0 };
    format!("[{name} {secs:.1}s] {count} events ({rate:.0}/s)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_their_colours() {
        assert_eq!(colour("JobProgress"), colour("job.progress"));
        assert_eq!(colour("note.updated"), "36");
        assert_eq!(colour("resync_required"), "31");
        assert_eq!(colour("events.lagged"), "31");
        assert_ne!(colour("QueueStatus"), colour("JobQueued"));
    }

    #[test]
    fn data_that_is_not_json_is_kept() {
        assert_eq!(
            format_event("", "x", "not json", true),
            "\x1b[35mx\x1b[0m\nnot json"
        );
    }
}
