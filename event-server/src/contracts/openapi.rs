//! The OpenAPI 3.1 document of the REST routes: one row per operation
//! ([`Op`]), bodies from the Rust types where the server renders them with
//! serde, and by hand where a crate writes its JSON itself (webhooks,
//! deliveries, health).

use event_core::{Envelope, ServerEvent};
use serde_json::{Map, Value, json};

use super::{Mounted, Schemas, error_schema};

mod connection_ops;
mod log_ops;
mod stats_ops;
use crate::publish::PublishResponse;

/// Who may call an operation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// No credentials (the contracts, `/health`, `/metrics`, the dashboard).
    None,
    /// The admin token (or anonymous local mode).
    Admin,
    /// A client token (or anonymous local mode).
    Client,
}

/// One operation of the table.
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    auth: Auth,
    params: Vec<Value>,
    body: Option<Value>,
    /// Status, description, body (`application/json` unless it names its
    /// content), header names.
    responses: Vec<(u16, &'static str, Option<Value>)>,
}

fn json_body(schema: Value) -> Option<Value> {
    Some(json!({"application/json": {"schema": schema}}))
}

fn content(media: &str, schema: Value) -> Option<Value> {
    Some(json!({ media: {"schema": schema} }))
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema})
}

fn filter_params() -> Vec<Value> {
    vec![
        query(
            "events",
            "Exact event names, comma separated (`NoteUpdated,job.completed`).",
            json!({"type": "string"}),
        ),
        query(
            "types",
            "Case-insensitive dot-name prefixes, comma separated (`job,note.updated`).",
            json!({"type": "string"}),
        ),
        query(
            "entity_id",
            "Only events about this job or note.",
            json!({"type": "string", "format": "uuid"}),
        ),
        query(
            "memory",
            "Only events of this memory (or the `X-Fortemi-Memory` header).",
            json!({"type": "string"}),
        ),
        query(
            "topics",
            "Topics, comma separated; a trailing `*` matches a prefix (`gpu.*`).",
            json!({"type": "string"}),
        ),
        query(
            "filter",
            "The same filter as one JSON object (`{\"events\":[…],\"types\":[…],\"entity_id\":\"…\",\"memory\":\"…\"}`), at most 4 KiB, ANDed with the parameters.",
            json!({"type": "string"}),
        ),
    ]
}

fn error_ref() -> Option<Value> {
    json_body(json!({"$ref": "#/components/schemas/Error"}))
}

/// The OpenAPI 3.1 document of what `mounted` serves.
pub fn openapi(mounted: Mounted) -> Value {
    let mut schemas = Schemas::new(false);
    let ops = operations(mounted, &mut schemas);
    let mut paths: Map<String, Value> = Map::new();
    for op in ops {
        let item = paths.entry(op.path.to_owned()).or_insert_with(|| json!({}));
        let mut responses = Map::new();
        for (status, description, body) in op.responses {
            let mut r = json!({"description": description});
            if let Some(body) = body {
                r["content"] = body;
            }
            if status == 429 || status == 503 {
                r["headers"] = json!({"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}});
            }
            responses.insert(status.to_string(), r);
        }
        let mut operation = json!({
            "operationId": op.id,
            "tags": [op.tag],
            "summary": op.summary,
            "responses": responses,
        });
        operation["security"] = match op.auth {
            Auth::None => json!([]),
            Auth::Admin | Auth::Client => json!([{"bearer": []}, {"token": []}]),
        };
        if op.auth == Auth::Admin {
            operation["description"] = json!(
                "Needs the admin token (`AUTH_ADMIN_TOKEN`), decided from the request head before any body byte is read; in anonymous local mode no token."
            );
        } else if op.auth == Auth::Client {
            operation["description"] =
                json!("Needs a client or admin token; in anonymous local mode no token.");
        }
        if !op.params.is_empty() {
            operation["parameters"] = Value::Array(op.params);
        }
        if let Some(body) = op.body {
            operation["requestBody"] = json!({"required": true, "content": body});
        }
        item[op.method] = operation;
    }

    let mut extra = Map::new();
    extra.insert("Error".to_owned(), error_schema());
    extra.insert("Webhook".to_owned(), webhook_schema());
    extra.insert("Delivery".to_owned(), delivery_schema());
    extra.insert("Health".to_owned(), health_schema());
    extra.insert("Stats".to_owned(), stats_ops::stats_schema());
    json!({
        "openapi": "3.1.1",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "matric real-time events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST routes of the matric event server (docs/protocol.md). Every error is JSON `{\"error\",\"message\"}` (docs/protocol.md §8). With neither `AUTH_ADMIN_TOKEN` nor `AUTH_CLIENT_TOKENS` set the server runs in anonymous local mode (loopback only) and needs no token. The WebSocket, SSE and webhook messages are described in `/api/v1/asyncapi.json`; MCP (`/mcp`) describes itself.",
            "license": {"name": "MIT OR Apache-2.0", "identifier": "MIT OR Apache-2.0"},
        },
        "servers": [{"url": "/", "description": "This server."}],
        "tags": [
            {"name": "events", "description": "Publishing, streaming and history."},
            {"name": "webhooks", "description": "Webhook registrations and deliveries."},
            {"name": "operations", "description": "Connections, health, metrics, the contracts."},
            {"name": "demo", "description": "The demo domain (notes, simulated jobs)."},
        ],
        "paths": paths,
        "components": {
            "schemas": schemas.into_components(extra, true),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <token>`."},
                "token": {"type": "apiKey", "in": "query", "name": "token", "description": "`?token=<token>`, for clients that cannot set headers."},
            },
        },
    })
}

fn operations(mounted: Mounted, schemas: &mut Schemas) -> Vec<Op> {
    let server_event = schemas.of::<ServerEvent>();
    let mut ops = vec![
        Op {
            method: "post",
            path: "/api/v1/events",
            id: "publishEvents",
            tag: "events",
            summary: "Publish one event or an array of at most 1,000, in order; all or none.",
            auth: Auth::Admin,
            params: vec![
                query(
                    "memory",
                    "Scope every event to this memory.",
                    json!({"type": "string"}),
                ),
                json!({"name": "Idempotency-Key", "in": "header", "required": false,
                       "description": "1–255 visible ASCII bytes: a repeat within `DEDUP_WINDOW_SECS` gets the first answer with `\"duplicate\": true` and publishes nothing (in cluster mode on any instance). Each event may also carry `event_id` (a UUIDv7; cluster mode only), deduplicated by the stream.",
                       "schema": {"type": "string", "minLength": 1, "maxLength": 255}}),
            ],
            body: json_body(json!({
                "oneOf": [
                    server_event.clone(),
                    {"type": "array", "items": server_event, "minItems": 1, "maxItems": 1000},
                ],
            })),
            responses: vec![
                (
                    202,
                    "Published (or a recognised repeat).",
                    json_body(schemas.of::<PublishResponse>()),
                ),
                (400, "An invalid event, named.", error_ref()),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
                (
                    413,
                    "The body is over `PUBLISH_MAX_BODY_BYTES` or an event over `EVENT_MAX_BYTES`.",
                    error_ref(),
                ),
                (415, "Not `Content-Type: application/json`.", error_ref()),
                (
                    409,
                    "`idempotency_key_in_flight`: a request with this key is still publishing.",
                    error_ref(),
                ),
                (
                    422,
                    "`idempotency_key_reused`: the key came with another body.",
                    error_ref(),
                ),
                (429, "Over `PUBLISH_MAX_RATE`.", error_ref()),
                (
                    503,
                    "`log_unavailable`: the event log did not confirm the commit within `EVENT_LOG_COMMIT_TIMEOUT_MS`. `nats_unavailable` (cluster mode): JetStream did not acknowledge within `NATS_PUBLISH_TIMEOUT_MS`, or NATS is unreachable.",
                    error_ref(),
                ),
            ],
        },
        Op {
            method: "get",
            path: "/health",
            id: "health",
            tag: "operations",
            summary: "Component status and connection counts.",
            auth: Auth::None,
            params: vec![],
            body: None,
            responses: vec![(
                200,
                "The report.",
                json_body(json!({"$ref": "#/components/schemas/Health"})),
            )],
        },
        Op {
            method: "get",
            path: "/",
            id: "dashboard",
            tag: "operations",
            summary: "The live dashboard (HTML).",
            auth: Auth::None,
            params: vec![],
            body: None,
            responses: vec![(
                200,
                "The page.",
                content("text/html", json!({"type": "string"})),
            )],
        },
        Op {
            method: "get",
            path: super::ASYNCAPI_PATH,
            id: "asyncapi",
            tag: "operations",
            summary: "This server's AsyncAPI 3.0 document (WebSocket, SSE, webhook messages).",
            auth: Auth::None,
            params: vec![],
            body: None,
            responses: vec![(200, "The document.", json_body(json!({"type": "object"})))],
        },
        Op {
            method: "get",
            path: super::OPENAPI_PATH,
            id: "openapi",
            tag: "operations",
            summary: "This document.",
            auth: Auth::None,
            params: vec![],
            body: None,
            responses: vec![(200, "The document.", json_body(json!({"type": "object"})))],
        },
    ];
    if mounted.telemetry {
        ops.push(Op {
            method: "get",
            path: "/metrics",
            id: "metrics",
            tag: "operations",
            summary: "Prometheus metrics (docs/protocol.md §6).",
            auth: Auth::None,
            params: vec![],
            body: None,
            responses: vec![(
                200,
                "Prometheus text exposition.",
                content("text/plain", json!({"type": "string"})),
            )],
        });
    }
    if mounted.sse {
        ops.extend(sse_ops(schemas));
    }
    if mounted.ws {
        let mut params = filter_params();
        params.push(query(
            "max_rate",
            "Events per second at most from the start (0 for none; default `STREAM_MAX_RATE`); `subscribe` may change it.",
            json!({"type": "integer", "minimum": 0, "maximum": event_core::MAX_STREAM_RATE}),
        ));
        params.push(query(
            "buffer_max_bytes",
            "This connection's queue budget in bytes, lower than the server's (at least two of the largest events): over it the connection is closed with 4008 sooner.",
            json!({"type": "integer", "minimum": 1}),
        ));
        params.push(query(
            "token",
            "The bearer token (or the subprotocol `bearer.<token>`).",
            json!({"type": "string"}),
        ));
        ops.push(Op {
            method: "get",
            path: "/api/v1/ws",
            id: "websocket",
            tag: "events",
            summary: "WebSocket upgrade; the messages are in the AsyncAPI document.",
            auth: Auth::Client,
            params,
            body: None,
            responses: vec![
                (101, "Switching Protocols.", None),
                (
                    400,
                    "`invalid_filter`, `invalid_parameter` (`max_rate`, `buffer_max_bytes`), or not a WebSocket upgrade.",
                    error_ref(),
                ),
                (401, "No or a bad token.", error_ref()),
                (
                    403,
                    "Origin not allowed, or a memory the token may not see.",
                    error_ref(),
                ),
                (503, "`too_many_connections`.", error_ref()),
            ],
        });
    }
    ops.extend(stats_ops::stats_ops());
    ops.extend(connection_ops::connection_ops(schemas));
    if mounted.log {
        ops.extend(log_ops::log_ops());
    }
    if mounted.webhook {
        ops.extend(webhook_ops());
    }
    if mounted.demo {
        ops.extend(demo_ops(schemas));
    }
    ops
}

fn sse_ops(schemas: &mut Schemas) -> Vec<Op> {
    let stream = |path: &'static str, id: &'static str, summary: &'static str| {
        let mut params = filter_params();
        params.extend([
            query(
                "format",
                "`v1` (flat events) or `envelope`; the default is `SSE_DEFAULT_FORMAT`.",
                json!({"type": "string", "enum": ["v1", "envelope"]}),
            ),
            query(
                "last_event_id",
                "Resume after this event (sequence number or UUID); or the `Last-Event-ID` header.",
                json!({"type": "string"}),
            ),
            query(
                "heartbeat",
                "Seconds between keepalive comments (5–300, default 15).",
                json!({"type": "integer", "minimum": 5, "maximum": 300}),
            ),
            query(
                "consumer",
                "Read as the named durable consumer (resumes after its committed offset; a new connection takes over). Needs the event log.",
                json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}),
            ),
            query(
                "group",
                "Read as a member of the named consumer group (each event reaches one member, by entity). Needs the event log.",
                json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}),
            ),
            query(
                "ack",
                "With `consumer` or `group`: `auto` (default; at most once) or `explicit` (acknowledge with `POST /api/v1/consumers/{name}/ack`; at least once).",
                json!({"type": "string", "enum": ["auto", "explicit"]}),
            ),
            query(
                "ack_wait",
                "With `ack=explicit`: seconds before an unacknowledged event is delivered again (1–3600; default `CONSUMER_ACK_WAIT_SECS`).",
                json!({"type": "integer", "minimum": 1, "maximum": 3600}),
            ),
            query(
                "start",
                "Where a new consumer starts: `latest` (default) or `earliest`.",
                json!({"type": "string", "enum": ["latest", "earliest"]}),
            ),
            query(
                "max_rate",
                "Live events per second at most (0 for no limit; default `STREAM_MAX_RATE`). Over it `JobProgress` per job and `QueueStatus` are coalesced to the latest and the rest is counted in `events.lagged`; the stream is never ended for it.",
                json!({"type": "integer", "minimum": 0, "maximum": event_core::MAX_STREAM_RATE}),
            ),
            query(
                "buffer_max_bytes",
                "This connection's queue budget in bytes, lower than the server's (at least two of the largest events, `EVENT_MAX_BYTES`): a client that would rather hear of lag sooner.",
                json!({"type": "integer", "minimum": 1}),
            ),
            query(
                "compression",
                "`false` for a plain stream whatever `Accept-Encoding` says; `true` (default) sends the stream in the best encoding the client accepts among those the server offers (`SSE_COMPRESSION`: gzip, br, zstd), with `Content-Encoding`.",
                json!({"type": "boolean"}),
            ),
            query(
                "token",
                "The bearer token, for clients that cannot set headers.",
                json!({"type": "string"}),
            ),
        ]);
        Op {
            method: "get",
            path,
            id,
            tag: "events",
            summary,
            auth: Auth::Client,
            params,
            body: None,
            responses: vec![
                (
                    200,
                    "The stream; its frames are in the AsyncAPI document (channel `sse`).",
                    content("text/event-stream", json!({"type": "string"})),
                ),
                (400, "A bad filter or parameter, named.", error_ref()),
                (401, "No or a bad token.", error_ref()),
                (403, "A memory the token may not see.", error_ref()),
                (
                    409,
                    "`consumer_conflict` (in use with other settings), `consumer_limit` (`CONSUMER_MAX`), `group_full` (`CONSUMER_MAX_MEMBERS`).",
                    error_ref(),
                ),
                (
                    410,
                    "`consumers_unavailable`: a consumer or group without the event log.",
                    error_ref(),
                ),
                (503, "`too_many_connections`.", error_ref()),
            ],
        }
    };
    let mut history_params = filter_params();
    history_params.extend([
        query(
            "since",
            "Events after this one (sequence number or UUID).",
            json!({"type": "string"}),
        ),
        query(
            "until",
            "Up to and including this one (sequence number or UUID).",
            json!({"type": "string"}),
        ),
        query(
            "offset",
            "Matching events to skip.",
            json!({"type": "integer", "minimum": 0}),
        ),
        query(
            "limit",
            "At most this many (1–1000).",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        ),
        query(
            "token",
            "The bearer token, for clients that cannot set headers.",
            json!({"type": "string"}),
        ),
    ]);
    vec![
        stream(
            "/api/v1/events",
            "streamEvents",
            "Server-Sent Events: replay after a cursor, then live.",
        ),
        stream(
            "/api/v1/events/stream",
            "streamEventsAlias",
            "The same stream as `GET /api/v1/events`.",
        ),
        Op {
            method: "get",
            path: "/api/v1/events/history",
            id: "eventHistory",
            tag: "events",
            summary: "The retained events (envelopes), oldest first.",
            auth: Auth::Client,
            params: history_params,
            body: None,
            responses: vec![
                (
                    200,
                    "The matching events.",
                    json_body(json!({"type": "array", "items": schemas.of::<Envelope>()})),
                ),
                (400, "A bad filter or parameter, named.", error_ref()),
                (401, "No or a bad token.", error_ref()),
                (403, "A memory the token may not see.", error_ref()),
                (
                    410,
                    "`since` is older than the retained events.",
                    error_ref(),
                ),
            ],
        },
    ]
}

fn webhook_ref() -> Value {
    json!({"$ref": "#/components/schemas/Webhook"})
}

fn webhook_input(create: bool) -> Value {
    let names: Vec<&str> = event_core::EventKind::ALL
        .iter()
        .flat_map(|k| [k.type_name(), k.dot_name()])
        .collect();
    let mut schema = json!({
        "type": "object",
        "properties": {
            "url": {"type": "string", "maxLength": 2048, "description": "http(s) URL; private, loopback and similar targets are refused unless `WEBHOOK_ALLOW_CIDRS` allows them."},
            "events": {"type": ["array", "null"], "items": {"type": "string", "enum": names}, "description": "The kinds to deliver; empty or null: all."},
            "secret": {"type": ["string", "null"], "minLength": 16, "maxLength": 128, "description": "The signing secret (`whsec_<base64>` or raw); generated when absent. May not start with `enc:`."},
            "active": {"type": "boolean"},
            "is_active": {"type": "boolean", "description": "Alias of `active`."},
            "max_retries": {"type": "integer", "minimum": 0, "maximum": 20},
        },
        "additionalProperties": false,
    });
    if create {
        schema["required"] = json!(["url"]);
    }
    schema
}

fn id_param(name: &'static str, what: &str) -> Value {
    path_param(name, what, json!({"type": "string", "format": "uuid"}))
}

fn webhook_ops() -> Vec<Op> {
    let denied = || {
        vec![
            (401, "No or a bad token.", error_ref()),
            (403, "Not an admin token.", error_ref()),
        ]
    };
    let with = |mut list: Vec<(u16, &'static str, Option<Value>)>| {
        list.extend(denied());
        list
    };
    vec![
        Op {
            method: "post",
            path: "/api/v1/webhooks",
            id: "createWebhook",
            tag: "webhooks",
            summary: "Register a webhook; the secret is shown this once.",
            auth: Auth::Admin,
            params: vec![],
            body: json_body(webhook_input(true)),
            responses: with(vec![
                (
                    201,
                    "Registered; `secret` is included this once.",
                    json_body(webhook_ref()),
                ),
                (400, "Not a JSON object.", error_ref()),
                (
                    409,
                    "`too_many_webhooks` (`WEBHOOK_MAX_COUNT`).",
                    error_ref(),
                ),
                (413, "The body is over 64 KiB.", error_ref()),
                (422, "`validation_error` naming the field.", error_ref()),
                (429, "Over `WEBHOOK_CREATE_MAX_RATE`.", error_ref()),
            ]),
        },
        Op {
            method: "get",
            path: "/api/v1/webhooks",
            id: "listWebhooks",
            tag: "webhooks",
            summary: "Every webhook (never the secret).",
            auth: Auth::Admin,
            params: vec![],
            body: None,
            responses: with(vec![(
                200,
                "The webhooks.",
                json_body(json!({"type": "array", "items": webhook_ref()})),
            )]),
        },
        Op {
            method: "get",
            path: "/api/v1/webhooks/{id}",
            id: "getWebhook",
            tag: "webhooks",
            summary: "One webhook.",
            auth: Auth::Admin,
            params: vec![id_param("id", "The webhook id.")],
            body: None,
            responses: with(vec![
                (200, "The webhook.", json_body(webhook_ref())),
                (404, "No such webhook.", error_ref()),
            ]),
        },
        Op {
            method: "patch",
            path: "/api/v1/webhooks/{id}",
            id: "updateWebhook",
            tag: "webhooks",
            summary: "Change any of `url`, `events`, `secret`, `active`, `max_retries`.",
            auth: Auth::Admin,
            params: vec![id_param("id", "The webhook id.")],
            body: json_body(webhook_input(false)),
            responses: with(vec![
                (200, "The webhook as changed.", json_body(webhook_ref())),
                (400, "Not a JSON object.", error_ref()),
                (404, "No such webhook.", error_ref()),
                (413, "The body is over 64 KiB.", error_ref()),
                (422, "`validation_error` naming the field.", error_ref()),
            ]),
        },
        Op {
            method: "delete",
            path: "/api/v1/webhooks/{id}",
            id: "deleteWebhook",
            tag: "webhooks",
            summary: "Remove a webhook.",
            auth: Auth::Admin,
            params: vec![id_param("id", "The webhook id.")],
            body: None,
            responses: with(vec![
                (204, "Removed.", None),
                (404, "No such webhook.", error_ref()),
            ]),
        },
        Op {
            method: "get",
            path: "/api/v1/webhooks/{id}/deliveries",
            id: "listDeliveries",
            tag: "webhooks",
            summary: "A webhook's deliveries, newest first.",
            auth: Auth::Admin,
            params: vec![
                id_param("id", "The webhook id."),
                query(
                    "limit",
                    "At most this many (default 50, at most 1000).",
                    json!({"type": "integer", "minimum": 1, "maximum": 1000}),
                ),
                query(
                    "status",
                    "Only deliveries in this state.",
                    json!({"type": "string", "enum": ["pending", "failed", "succeeded", "dead"]}),
                ),
            ],
            body: None,
            responses: with(vec![
                (
                    200,
                    "The deliveries.",
                    json_body(
                        json!({"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}}),
                    ),
                ),
                (404, "No such webhook.", error_ref()),
                (422, "A bad `limit` or `status`.", error_ref()),
            ]),
        },
        Op {
            method: "post",
            path: "/api/v1/webhooks/{id}/test",
            id: "testWebhook",
            tag: "webhooks",
            summary: "A real signed test delivery, answered with its honest outcome.",
            auth: Auth::Admin,
            params: vec![id_param("id", "The webhook id.")],
            body: None,
            responses: with(vec![
                (
                    200,
                    "The test delivery as recorded; `success` is its honest outcome.",
                    json_body(json!({"$ref": "#/components/schemas/Delivery"})),
                ),
                (404, "No such webhook.", error_ref()),
            ]),
        },
        Op {
            method: "post",
            path: "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            id: "redeliver",
            tag: "webhooks",
            summary: "Queue a delivery again.",
            auth: Auth::Admin,
            params: vec![
                id_param("id", "The webhook id."),
                id_param("delivery_id", "The delivery id."),
            ],
            body: None,
            responses: with(vec![
                (
                    202,
                    "Queued again.",
                    json_body(json!({"$ref": "#/components/schemas/Delivery"})),
                ),
                (404, "No such webhook or delivery.", error_ref()),
            ]),
        },
    ]
}

#[cfg(feature = "demo")]
fn demo_ops(schemas: &mut Schemas) -> Vec<Op> {
    use crate::demo::jobs::{NewJob, Submitted};
    use crate::demo::notes::NewNote;
    use crate::demo::store::Note;
    let note = schemas.of::<Note>();
    let id = || {
        path_param(
            "id",
            "The note id.",
            json!({"type": "string", "format": "uuid"}),
        )
    };
    let write = |mut list: Vec<(u16, &'static str, Option<Value>)>| {
        list.extend([
            (401, "No or a bad token.", error_ref()),
            (403, "Not an admin token.", error_ref()),
        ]);
        list
    };
    vec![
        Op {
            method: "get",
            path: "/api/v1/notes",
            id: "listNotes",
            tag: "demo",
            summary: "Every note.",
            auth: Auth::Client,
            params: vec![],
            body: None,
            responses: vec![(
                200,
                "The notes.",
                json_body(json!({"type": "array", "items": note.clone()})),
            )],
        },
        Op {
            method: "post",
            path: "/api/v1/notes",
            id: "createNote",
            tag: "demo",
            summary: "Create a note (publishes `NoteUpdated` after the commit).",
            auth: Auth::Admin,
            params: vec![],
            body: json_body(super::request_schema::<NewNote>()),
            responses: write(vec![
                (201, "Created.", json_body(note.clone())),
                (400, "A bad body, named.", error_ref()),
            ]),
        },
        Op {
            method: "get",
            path: "/api/v1/notes/{id}",
            id: "getNote",
            tag: "demo",
            summary: "One note.",
            auth: Auth::Client,
            params: vec![id()],
            body: None,
            responses: vec![
                (200, "The note.", json_body(note.clone())),
                (404, "No such note.", error_ref()),
            ],
        },
        Op {
            method: "patch",
            path: "/api/v1/notes/{id}",
            id: "updateNote",
            tag: "demo",
            summary: "Change a note's title, content or tags.",
            auth: Auth::Admin,
            params: vec![id()],
            body: json_body(json!({
                "type": "object",
                "properties": {
                    "title": {"type": "string"},
                    "content": {"type": "string"},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
            })),
            responses: write(vec![
                (200, "The note as changed.", json_body(note)),
                (400, "A bad body, named.", error_ref()),
                (404, "No such note.", error_ref()),
            ]),
        },
        Op {
            method: "delete",
            path: "/api/v1/notes/{id}",
            id: "deleteNote",
            tag: "demo",
            summary: "Delete a note.",
            auth: Auth::Admin,
            params: vec![id()],
            body: None,
            responses: write(vec![
                (204, "Deleted.", None),
                (404, "No such note.", error_ref()),
            ]),
        },
        Op {
            method: "post",
            path: "/api/v1/jobs",
            id: "submitJob",
            tag: "demo",
            summary: "Submit a simulated job (queued → started → progress → completed or failed).",
            auth: Auth::Admin,
            params: vec![],
            body: json_body(super::request_schema::<NewJob>()),
            responses: write(vec![
                (202, "Queued.", json_body(schemas.of::<Submitted>())),
                (400, "A bad body, named.", error_ref()),
                (429, "`DEMO_MAX_QUEUED_JOBS` are waiting.", error_ref()),
            ]),
        },
        Op {
            method: "get",
            path: "/api/v1/jobs/status",
            id: "jobQueueStatus",
            tag: "demo",
            summary: "The simulated queue's depth.",
            auth: Auth::Client,
            params: vec![],
            body: None,
            responses: vec![(
                200,
                "The status.",
                json_body(schemas.of::<event_core::QueueStatus>()),
            )],
        },
    ]
}

#[cfg(not(feature = "demo"))]
fn demo_ops(_schemas: &mut Schemas) -> Vec<Op> {
    Vec::new()
}

fn time_schema(nullable: bool) -> Value {
    if nullable {
        json!({"type": ["string", "null"], "format": "date-time"})
    } else {
        json!({"type": "string", "format": "date-time"})
    }
}

/// `event-webhook`'s `WebhookJson` (written field by field there).
fn webhook_schema() -> Value {
    json!({
        "type": "object",
        "description": "A registered webhook (docs/protocol.md §4).",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string"}, "description": "PascalCase kinds; empty: all."},
            "active": {"type": "boolean"},
            "is_active": {"type": "boolean", "description": "The same as `active`."},
            "max_retries": {"type": "integer", "minimum": 0},
            "created_at": time_schema(false),
            "updated_at": time_schema(false),
            "last_triggered_at": time_schema(true),
            "failure_count": {"type": "integer", "minimum": 0, "description": "Dead deliveries in a row (10 disable the webhook)."},
            "disabled_reason": {"type": "string", "description": "Why it was disabled automatically."},
            "secret": {"type": "string", "description": "Only in the answer to its creation (and to a change of it)."},
        },
        "required": ["id", "url", "events", "active", "is_active", "max_retries", "created_at", "updated_at", "last_triggered_at", "failure_count"],
    })
}

/// `event-webhook`'s `Delivery`.
fn delivery_schema() -> Value {
    json!({
        "type": "object",
        "description": "One delivery of one event to one webhook.",
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "`X-Matric-Delivery`."},
            "webhook_id": {"type": "string", "format": "uuid"},
            "event_id": {"type": "string", "format": "uuid", "description": "`webhook-id`, constant across retries."},
            "event_type": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "failed", "succeeded", "dead"]},
            "attempts": {"type": "integer", "minimum": 0},
            "next_attempt_at": time_schema(true),
            "last_status_code": {"type": ["integer", "null"]},
            "last_error": {"type": ["string", "null"]},
            "created_at": time_schema(false),
            "delivered_at": time_schema(true),
            "success": {"type": "boolean"},
        },
        "required": ["id", "webhook_id", "event_id", "event_type", "status", "attempts", "next_attempt_at", "last_status_code", "last_error", "created_at", "delivered_at", "success"],
    })
}

/// The body of `GET /health` (`event-telemetry`'s report, or the plain one
/// without telemetry).
fn health_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
            "components": {"type": "object", "additionalProperties": true, "description": "Each component's status, by name."},
            "connections": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}},
            "uptime_secs": {"type": "integer", "minimum": 0},
        },
        "required": ["status", "connections"],
    })
}
