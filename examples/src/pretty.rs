//! How `ws-tail` and `sse-tail` print an event: on a terminal its name in a
//! colour per family (jobs green, notes cyan, queue status blue, the
//! server's own signals such as `resync_required` red) and its JSON
//! indented; anywhere else (a pipe, a file) one plain line, unchanged, for
//! tools to read. A [`Tally`] keeps a count of what was printed and of the
//! reconnections on stderr (a status line on a terminal, a plain line now
//! and then otherwise), across reconnections.

use std::io::{IsTerminal, Write};
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

/// How many events a tail has printed and how often it reconnected, on
/// stderr: on a terminal one status line redrawn at most four times a
/// second (cleared before each event or diagnostic is printed, so they never
/// mix on one line); anywhere else a plain line every ten seconds.
pub struct Tally {
    name: &'static str,
    count: u64,
    reconnects: u64,
    started: Instant,
    last: Instant,
    terminal: bool,
    shown: bool,
    out: Box<dyn Write + Send>,
}

impl Tally {
    /// A tally for the tool `name` on stderr (a status line if stderr is a
    /// terminal).
    pub fn new(name: &'static str) -> Tally {
        Tally::to(
            name,
            std::io::stderr().is_terminal(),
            Box::new(std::io::stderr()),
        )
    }

    /// A tally written to `out`, drawn as on a terminal or not.
    pub fn to(name: &'static str, terminal: bool, out: Box<dyn Write + Send>) -> Tally {
        let now = Instant::now();
        Tally {
            name,
            count: 0,
            reconnects: 0,
            started: now,
            last: now,
            terminal,
            shown: false,
            out,
        }
    }

    /// Call before printing an event or a diagnostic: clears the status
    /// line.
    pub fn before_print(&mut self) {
        if self.terminal && self.shown {
            // Best effort: a closed stderr is no reason to stop tailing.
            let _ = write!(self.out, "\r\x1b[2K");
            let _ = self.out.flush();
            self.shown = false;
        }
    }

    /// Call after printing an event: counts it and redraws when due.
    pub fn printed(&mut self) {
        self.count += 1;
        self.redraw(false);
    }

    /// Call when the connection is lost and will be opened again: counts it
    /// and, on a terminal, redraws at once (after the caller's diagnostic,
    /// which [`before_print`] made room for); elsewhere the next plain line
    /// carries it.
    ///
    /// [`before_print`]: Tally::before_print
    pub fn reconnecting(&mut self) {
        self.reconnects += 1;
        self.redraw(self.terminal);
    }

    fn redraw(&mut self, now: bool) {
        let every = if self.terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if !now && self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let line = status_text(
            self.name,
            self.count,
            self.reconnects,
            self.started.elapsed(),
        );
        if self.terminal {
            let _ = write!(self.out, "{line}");
            self.shown = true;
        } else {
            let _ = writeln!(self.out, "{line}");
        }
        let _ = self.out.flush();
    }
}

/// `[name 12.3s] 1234 events (100/s)`, then `, 2 reconnects` once there
/// were any (attempts: a refused one counts too).
///
/// ```
/// use std::time::Duration;
/// use examples::pretty::status_text;
/// let line = status_text("ws-tail", 250, 0, Duration::from_secs(5));
/// assert_eq!(line, "[ws-tail 5.0s] 250 events (50/s)");
/// let line = status_text("sse-tail", 250, 1, Duration::from_secs(5));
/// assert_eq!(line, "[sse-tail 5.0s] 250 events (50/s), 1 reconnect");
/// ```
pub fn status_text(name: &str, count: u64, reconnects: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 { count as f64 / secs } else { 0.0 };
    let mut line = format!("[{name} {secs:.1}s] {count} events ({rate:.0}/s)");
    match reconnects {
        0 => {}
        1 => line.push_str(", 1 reconnect"),
        n => line.push_str(&format!(", {n} reconnects")),
    }
    line
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn families_have_their_colours() {
        assert_eq!(colour("JobProgress"), colour("job.progress"));
        assert_eq!(colour("note.updated"), "36");
        assert_eq!(colour("resync_required"), "31");
        assert_eq!(colour("events.lagged"), "31");
        assert_ne!(colour("QueueStatus"), colour("JobQueued"));
    }

    /// A `Write` whose bytes the test reads afterwards.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn on_a_terminal_a_reconnection_redraws_the_status_line_at_once() {
        let out = Captured::default();
        let mut tally = Tally::to("ws-tail", true, Box::new(out.clone()));
        tally.printed();
        tally.printed();
        tally.before_print();
        tally.reconnecting();
        let text = out.text();
        let line = text.rsplit("\r\x1b[2K").next().unwrap();
        assert!(line.starts_with("[ws-tail "), "{text:?}");
        assert!(
            line.contains(" 2 events (") && line.ends_with("), 1 reconnect"),
            "{text:?}"
        );
        // Cleared (not left half-overwritten) before the next line.
        tally.before_print();
        assert!(out.text().ends_with("\r\x1b[2K"));
    }

    #[test]
    fn elsewhere_a_reconnection_waits_for_the_next_plain_line() {
        let out = Captured::default();
        let mut tally = Tally::to("sse-tail", false, Box::new(out.clone()));
        tally.printed();
        tally.before_print();
        tally.reconnecting();
        // No escape codes and no extra line per reconnection.
        assert!(!out.text().contains('\x1b'), "{:?}", out.text());
        assert!(!out.text().contains("reconnect"), "{:?}", out.text());
    }

    #[test]
    fn data_that_is_not_json_is_kept() {
        assert_eq!(
            format_event("", "x", "not json", true),
            "\x1b[35mx\x1b[0m\nnot json"
        );
    }
}
