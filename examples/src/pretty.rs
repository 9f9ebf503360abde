//! How `ws-tail` and `sse-tail` print an event: on a terminal its name in a
//! colour per family (jobs green, notes cyan, queue status blue, the
//! server's own signals such as `resync_required` red) and its JSON
//! indented; anywhere else (a pipe, a file) one plain line, unchanged, for
//! tools to read.

use std::io::IsTerminal;

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
