//! The standard `OTEL_*` variables, read into a [`TelemetryConfig`].
//!
//! A host that exports traces lets operators configure it the way every
//! OpenTelemetry SDK is configured. [`TelemetryConfig::with_otel_env`]
//! reads:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the traces URL, used as given |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | the collector's base URL; traces go to `<it>/v1/traces` |
//! | `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (the only one this build speaks; `grpc` and `http/json` are refused) |
//! | `OTEL_SERVICE_NAME` | `service.name` |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (the default), `parentbased_always_off`, `parentbased_traceidratio`; the ratio in `[0, 1]`, default 1 |
//! | `OTEL_SDK_DISABLED` | `true`: export nothing |
//!
//! With no endpoint set nothing is exported. An unusable value is an error
//! naming the variable, so a host can refuse to start with one clear line
//! instead of silently exporting nothing.

use crate::{TelemetryConfig, TelemetryError};

/// Which traces are kept (`OTEL_TRACES_SAMPLER`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum TraceSampler {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This fraction of traces, by trace id.
    TraceIdRatio(f64),
    /// A child follows its parent's decision; a root is kept.
    #[default]
    ParentBasedAlwaysOn,
    /// A child follows its parent's decision; a root is dropped.
    ParentBasedAlwaysOff,
    /// A child follows its parent's decision; this fraction of roots is kept.
    ParentBasedTraceIdRatio(f64),
}

impl TraceSampler {
    /// The sampler `OTEL_TRACES_SAMPLER` = `name` and `OTEL_TRACES_SAMPLER_ARG`
    /// = `arg` select (`None`: the default).
    pub fn from_otel(name: Option<&str>, arg: Option<&str>) -> Result<Self, TelemetryError> {
        let ratio = || -> Result<f64, TelemetryError> {
            let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
                return Ok(1.0);
            };
            match arg.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(invalid(
                    "OTEL_TRACES_SAMPLER_ARG",
                    arg,
                    "a ratio between 0 and 1",
                )),
            }
        };
        Ok(match name.map(str::trim).filter(|n| !n.is_empty()) {
            None | Some("parentbased_always_on") => TraceSampler::ParentBasedAlwaysOn,
            Some("always_on") => TraceSampler::AlwaysOn,
            Some("always_off") => TraceSampler::AlwaysOff,
            Some("traceidratio") => TraceSampler::TraceIdRatio(ratio()?),
            Some("parentbased_always_off") => TraceSampler::ParentBasedAlwaysOff,
            Some("parentbased_traceidratio") => TraceSampler::ParentBasedTraceIdRatio(ratio()?),
            Some(other) => {
                return Err(invalid(
                    "OTEL_TRACES_SAMPLER",
                    other,
                    "always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio",
                ));
            }
        })
    }
}

fn invalid(variable: &str, value: &str, expected: &str) -> TelemetryError {
    TelemetryError::Otlp(format!(
        "{variable}={value:?} is not usable: expected {expected}"
    ))
}

impl TelemetryConfig {
    /// This configuration with the `OTEL_*` variables `lookup` returns
    /// applied (the `OTEL_*` variables the README lists); `lookup` is usually
    /// `|name| std::env::var(name).ok()`.
    ///
    /// ```
    /// use event_telemetry::{TelemetryConfig, TraceSampler};
    ///
    /// let env = |name: &str| match name {
    ///     "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4318/".to_owned()),
    ///     "OTEL_SERVICE_NAME" => Some("events-eu-1".to_owned()),
    ///     "OTEL_TRACES_SAMPLER" => Some("traceidratio".to_owned()),
    ///     "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".to_owned()),
    ///     _ => None,
    /// };
    /// let config = TelemetryConfig::default().with_otel_env(env).unwrap();
    /// assert_eq!(config.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318/v1/traces"));
    /// assert_eq!(config.service_name, "events-eu-1");
    /// assert_eq!(config.sampler, TraceSampler::TraceIdRatio(0.25));
    /// ```
    pub fn with_otel_env(
        mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, TelemetryError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        if let Some(name) = get("OTEL_SERVICE_NAME") {
            self.service_name = name;
        }
        self.sampler = TraceSampler::from_otel(
            get("OTEL_TRACES_SAMPLER").as_deref(),
            get("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        for variable in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = get(variable) {
                if protocol.trim() != "http/protobuf" {
                    return Err(invalid(
                        variable,
                        &protocol,
                        "http/protobuf (grpc and http/json are not built in)",
                    ));
                }
                break;
            }
        }
        let endpoint = match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => Some(url.trim().to_owned()),
            None => get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim().trim_end_matches('/'))),
        };
        if let Some(url) = &endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                url,
                "an http:// or https:// URL",
            ));
        }
        let disabled =
            get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if endpoint.is_some() {
            self.otlp_endpoint = if disabled { None } else { endpoint };
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<TelemetryConfig, TelemetryError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        TelemetryConfig::default()
            .with_otel_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn nothing_set_exports_nothing_and_samples_by_parent() {
        let c = config(&[]).unwrap();
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.sampler, TraceSampler::ParentBasedAlwaysOn);
        assert_eq!(c.service_name, "matric-events");
    }

    #[test]
    fn the_traces_endpoint_wins_over_the_base_one() {
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9999/traces"),
        ])
        .unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://b:9999/traces"));
        let c = config(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318")]).unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://a:4318/v1/traces"));
    }

    #[test]
    fn unusable_values_name_their_variable() {
        for (vars, variable) in [
            (
                vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
                "OTEL_EXPORTER_OTLP_PROTOCOL",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "sometimes")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            ),
        ] {
            let err = config(&vars).expect_err(variable).to_string();
            assert!(err.contains(variable), "{err}");
        }
    }

    #[test]
    fn samplers_and_the_off_switch() {
        let c = config(&[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(c.sampler, TraceSampler::ParentBasedTraceIdRatio(0.5));
        let c = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ])
        .unwrap();
        assert_eq!(c.otlp_endpoint, None);
    }
}
