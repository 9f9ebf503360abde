//! The API's machine-readable contracts (feature `contracts`, on by
//! default): `GET /api/v1/asyncapi.json`, an AsyncAPI 3.0 document of the
//! WebSocket, SSE and webhook messages, and `GET /api/v1/openapi.json`, an
//! OpenAPI 3.1 document of the REST routes.
//!
//! Both are generated from the code when the app is built: the JSON Schemas
//! of the events, the envelope and the REST bodies come from the Rust types
//! that render them (`schemars`, with the serialize contract: what the
//! server *sends*; event-core's `schema` feature); the frames that the
//! transports write by hand (`subscribed`, `pong`, `resync_required`,
//! `events.lagged`, the webhook body, the webhook objects) are described
//! here next to the route table. `event-server/tests/contracts.rs` keeps
//! them honest: it validates every message a live server sends, over each
//! transport, against the served schemas.
//!
//! Each document describes what this build mounts: a host without `ws` has
//! no WebSocket channel, one without `webhook` no webhook routes.
//!
//! The routes need no credentials (they describe the API and carry no
//! data); the site guard (`Host`, `Origin`) still applies.

mod asyncapi;
mod openapi;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use event_core::EventKind;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

pub use asyncapi::asyncapi;
pub use openapi::openapi;

/// Where the AsyncAPI document is served.
pub const ASYNCAPI_PATH: &str = "/api/v1/asyncapi.json";
/// Where the OpenAPI document is served.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";

/// What a build mounts, and so what its documents describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mounted {
    /// WebSocket `/api/v1/ws`.
    pub ws: bool,
    /// SSE `/api/v1/events` and history.
    pub sse: bool,
    /// Webhook routes and deliveries.
    pub webhook: bool,
    /// `/metrics`.
    pub telemetry: bool,
    /// Demo notes and jobs.
    pub demo: bool,
    /// The event log's topics and consumers routes.
    pub log: bool,
}

impl Mounted {
    /// The parts this build has, from its Cargo features.
    pub const fn this_build() -> Mounted {
        Mounted {
            ws: cfg!(feature = "ws"),
            sse: cfg!(feature = "sse"),
            webhook: cfg!(feature = "webhook"),
            telemetry: cfg!(feature = "telemetry"),
            demo: cfg!(feature = "demo"),
            log: cfg!(feature = "log"),
        }
    }
}

/// The two routes, with both documents rendered once.
pub(crate) fn router(mounted: Mounted) -> Router {
    let asyncapi = render(&asyncapi(mounted));
    let openapi = render(&openapi(mounted));
    Router::new()
        .route(ASYNCAPI_PATH, get(move || serve(asyncapi.clone())))
        .route(OPENAPI_PATH, get(move || serve(openapi.clone())))
}

fn render(doc: &Value) -> Bytes {
    // A `Value` always serializes (its map keys are strings).
    Bytes::from(serde_json::to_vec_pretty(doc).unwrap_or_default())
}

async fn serve(body: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// A schema generator whose definitions go under `#/components/schemas/`,
/// describing what the server sends (`for_serialize`: a field skipped
/// when `None` is optional; `JobProgress` has both progress fields).
pub(crate) struct Schemas(SchemaGenerator);

impl Schemas {
    /// JSON Schema draft 2020-12 (OpenAPI 3.1) or draft 07 (the AsyncAPI
    /// 3.0 schema format is a superset of it).
    pub(crate) fn new(draft07: bool) -> Schemas {
        let mut settings = if draft07 {
            SchemaSettings::draft07()
        } else {
            SchemaSettings::draft2020_12()
        };
        settings.definitions_path = "/components/schemas/".into();
        Schemas(settings.for_serialize().into_generator())
    }

    /// A `$ref` to `T`'s schema (or `T`'s schema itself, for simple types).
    pub(crate) fn of<T: schemars::JsonSchema>(&mut self) -> Value {
        self.0.subschema_for::<T>().to_value()
    }

    /// Every schema referred to so far, the seven flat events
    /// ([`event_schema`]) with `ServerEvent` as their union (with a
    /// `discriminator` for OpenAPI), and `extra`.
    ///
    /// A field the server omits when it has no value is optional and never
    /// `null` (docs/protocol.md §1), so `null` is taken out of the types of
    /// optional properties.
    pub(crate) fn into_components(
        mut self,
        extra: Map<String, Value>,
        openapi: bool,
    ) -> Map<String, Value> {
        let mut defs = self.0.take_definitions(true);
        if defs.contains_key("ServerEvent") {
            for kind in EventKind::ALL {
                defs.insert(event_schema_name(kind), event_schema(kind));
            }
            defs.insert("ServerEvent".to_owned(), union_schema(openapi));
        }
        defs.extend(extra);
        for schema in defs.values_mut() {
            omit_null_when_optional(schema);
        }
        defs
    }
}

/// `ServerEvent`: one of the seven flat events, tagged by `type`.
fn union_schema(openapi: bool) -> Value {
    let one_of: Vec<Value> = EventKind::ALL
        .iter()
        .map(|k| json!({"$ref": format!("#/components/schemas/{}", event_schema_name(*k))}))
        .collect();
    let mut schema = json!({
        "description": "One of the seven events, exactly as docs/protocol.md §1 puts it on the wire: one object tagged by `type`, optional fields omitted (never `null`).",
        "oneOf": one_of,
    });
    if openapi {
        let mapping: Map<String, Value> = EventKind::ALL
            .iter()
            .map(|k| {
                (
                    k.type_name().to_owned(),
                    json!(format!("#/components/schemas/{}", event_schema_name(*k))),
                )
            })
            .collect();
        schema["discriminator"] = json!({"propertyName": "type", "mapping": mapping});
    }
    schema
}

/// Takes `null` out of the type of every property that is not `required`
/// (recursively): the server omits such a field instead of sending `null`.
fn omit_null_when_optional(schema: &mut Value) {
    let Some(obj) = schema.as_object_mut() else {
        if let Some(items) = schema.as_array_mut() {
            items.iter_mut().for_each(omit_null_when_optional);
        }
        return;
    };
    let required: Vec<String> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for (name, prop) in props.iter_mut() {
            if !required.contains(name) {
                strip_null(prop);
            }
        }
    }
    obj.values_mut().for_each(omit_null_when_optional);
}

fn strip_null(prop: &mut Value) {
    let Some(p) = prop.as_object_mut() else {
        return;
    };
    if let Some(Value::Array(types)) = p.get("type") {
        let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        let replacement = match rest.as_slice() {
            [one] => one.clone(),
            _ => Value::Array(rest),
        };
        p.insert("type".to_owned(), replacement);
    }
    if let Some(Value::Array(any)) = p.get("anyOf") {
        let rest: Vec<Value> = any
            .iter()
            .filter(|s| s.get("type").is_none_or(|t| t != "null"))
            .cloned()
            .collect();
        if rest.len() == 1 {
            p.remove("anyOf");
            p.insert("allOf".to_owned(), Value::Array(rest));
        } else {
            p.insert("anyOf".to_owned(), Value::Array(rest));
        }
    }
}

/// `T`'s schema inline, as the server *accepts* it (request bodies: a
/// field with a default is optional).
pub(crate) fn request_schema<T: schemars::JsonSchema>() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.inline_subschemas = true;
    let mut schema = settings
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("$schema");
    }
    schema
}

/// The flat §1 object of one kind, `type` included: the kind's struct plus
/// its tag.
fn event_schema(kind: EventKind) -> Value {
    json!({
        "description": format!("`{}` (`{}`), docs/protocol.md §1.", kind.type_name(), kind.dot_name()),
        "allOf": [{"$ref": format!("#/components/schemas/{}", kind.type_name())}],
        "type": "object",
        "properties": {"type": {"type": "string", "const": kind.type_name()}},
        "required": ["type"],
    })
}

/// The name under `#/components/schemas/` of [`event_schema`].
pub(crate) fn event_schema_name(kind: EventKind) -> String {
    format!("{}Event", kind.type_name())
}

/// The error body every HTTP error has (docs/protocol.md §8).
pub(crate) fn error_schema() -> Value {
    json!({
        "type": "object",
        "description": "Every HTTP error (docs/protocol.md §8). A server fault's message names a request id, never the detail.",
        "properties": {
            "error": {"type": "string", "description": "A stable machine-readable code (`not_found`, `validation_error`, `too_many_requests`, …)."},
            "message": {"type": "string", "description": "What is wrong, naming the field or value."}
        },
        "required": ["error", "message"]
    })
}
