//! The workspace's one reader for the Prometheus text format, for tests and
//! tools that check what `GET /metrics` serves (the crates' tests, the
//! end-to-end tests, the load generator).
//!
//! It understands what the exporter writes: `# TYPE` lines and samples
//! `name{label="value",…} number`, with `\\`, `\"` and `\n` escapes in label
//! values. Lines it cannot read are skipped, not fatal.

use std::collections::BTreeMap;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name (`matric_event_latency_ms_bucket`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed scrape.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Metric family name → type (`counter`, `gauge`, `histogram`, …).
    pub types: BTreeMap<String, String>,
    /// Every sample, in order.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// Parses Prometheus text.
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                if let Some((name, kind)) = rest.split_once(' ') {
                    scrape.types.insert(name.to_owned(), kind.trim().to_owned());
                }
            } else if !line.starts_with('#')
                && let Some(sample) = parse_sample(line)
            {
                scrape.samples.push(sample);
            }
        }
        scrape
    }

    /// The family type of `name` (`counter`, `gauge`, `histogram`).
    pub fn kind(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }

    /// The value of the series `name` with exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// The first series `name` whose labels include `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels).map(|s| s.value).next()
    }

    /// The sum of the series `name` whose labels include `labels` (a
    /// family total across the other labels); `None` when there is no such
    /// series.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.matching(name, labels)
            .map(|s| s.value)
            .fold(None, |total, v| Some(total.unwrap_or(0.0) + v))
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// Every label name used by samples of `name`, sorted.
    pub fn label_names(&self, name: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .flat_map(|s| s.labels.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, rest) = if line.contains('{') {
        let close = line.rfind('}')?;
        (&line[..close + 1], &line[close + 1..])
    } else {
        line.split_at(line.find(' ')?)
    };
    // A sample may carry a timestamp after the value; the exporter does not.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        Some((name, body)) => (name, parse_labels(body.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(body: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Some(labels);
        }
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut value = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        }
        labels.insert(key.trim().to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_types_samples_and_escaped_labels() {
        let text = "# HELP x_total Things\n# TYPE x_total counter\n\
                    x_total{a=\"1\",b=\"q\\\"u,o=te\"} 3\n\
                    # TYPE g gauge\ng 0\n\
                    h_bucket{le=\"+Inf\"} 2\nbroken{a=\"1\" 5\n";
        let s = Scrape::parse(text);
        assert_eq!(s.kind("x_total"), Some("counter"));
        assert_eq!(s.kind("g"), Some("gauge"));
        assert_eq!(
            s.value("x_total", &[("a", "1"), ("b", "q\"u,o=te")]),
            Some(3.0)
        );
        assert_eq!(s.value("x_total", &[("a", "1")]), None);
        assert_eq!(s.value("g", &[]), Some(0.0));
        assert_eq!(s.value("h_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(s.samples.len(), 3, "the broken line is skipped");
        assert_eq!(s.label_names("x_total"), ["a", "b"]);
        assert_eq!(s.sum("x_total", &[("a", "1")]), Some(3.0));
        assert_eq!(s.sum("x_total", &[("a", "2")]), None);
        assert_eq!(s.sum("g", &[]), Some(0.0), "a zero series is not missing");
    }
}
