//! The JSON log line format of UC-005.
//!
//! One object per line, shaped for log pipelines (Loki, Elasticsearch):
//!
//! ```json
//! {"timestamp":"2026-02-05T10:30:45.123456Z","level":"INFO","target":"matric::events",
//!  "fields":{"event.type":"JobCompleted","event.seq":7,"event.duration_ms":1234},
//!  "message":"Job completed successfully"}
//! ```
//!
//! Unlike `tracing-subscriber`'s own JSON format the message sits beside
//! `fields` rather than inside it, as in UC-005's example. When the event
//! happens inside spans, `spans` lists them root first, each with its name
//! and fields (so a webhook attempt's log lines carry the event's seq and
//! correlation id).

use std::fmt;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// The UC-005 JSON event format (use with [`JsonFields`] for span fields).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLogFormat;

/// Collects an event's fields into a JSON map, keeping the message apart.
#[derive(Default)]
struct FieldCollector {
    fields: Map<String, Value>,
    message: Option<String>,
}

impl Visit for FieldCollector {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.fields.insert(field.name().to_owned(), value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_owned(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.fields.insert(field.name().to_owned(), value.into());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = Some(text);
        } else {
            self.fields.insert(field.name().to_owned(), text.into());
        }
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLogFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut collector = FieldCollector::default();
        event.record(&mut collector);

        let mut line = Map::with_capacity(6);
        let timestamp = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(|_| fmt::Error)?;
        line.insert("timestamp".into(), timestamp.into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        line.insert("fields".into(), Value::Object(collector.fields));
        if let Some(message) = collector.message {
            line.insert("message".into(), message.into());
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut fields = span
                        .extensions()
                        .get::<FormattedFields<JsonFields>>()
                        .and_then(|f| serde_json::from_str::<Map<String, Value>>(f).ok())
                        .unwrap_or_default();
                    fields.insert("name".into(), span.name().into());
                    Value::Object(fields)
                })
                .collect();
            if !spans.is_empty() {
                line.insert("spans".into(), Value::Array(spans));
            }
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writer.write_str(&text)?;
        writer.write_char('\n')
    }
}
