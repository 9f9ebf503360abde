//! The AsyncAPI 3.0 document: the WebSocket channel, the SSE channel (both
//! formats) and webhook deliveries, from the server's point of view (it
//! *sends* events and *receives* WebSocket commands).

use event_core::{EventKind, ServerEvent};
use serde_json::{Map, Value, json};

use super::{Mounted, Schemas, event_schema_name};

/// The AsyncAPI 3.0 document of what `mounted` serves.
pub fn asyncapi(mounted: Mounted) -> Value {
    let mut schemas = Schemas::new(true);
    // Generates ServerEvent and, through it, the seven payload structs.
    let server_event = schemas.of::<ServerEvent>();
    let envelope = schemas.of::<event_core::Envelope>();

    let mut extra = Map::new();
    extra.insert(
        "WebhookDelivery".to_owned(),
        webhook_body_schema(&server_event),
    );

    let mut messages = Map::new();
    let mut channels = Map::new();
    let mut operations = Map::new();
    let event_refs = |prefix: &str| -> Vec<Value> {
        EventKind::ALL
            .iter()
            .map(|k| json!({"$ref": format!("#/channels/{prefix}/messages/{}", k.type_name())}))
            .collect()
    };

    for kind in EventKind::ALL {
        messages.insert(
            kind.type_name().to_owned(),
            json!({
                "name": kind.type_name(),
                "title": kind.type_name(),
                "summary": format!("The flat `{}` event (docs/protocol.md §1).", kind.type_name()),
                "contentType": "application/json",
                "payload": {"$ref": format!("#/components/schemas/{}", event_schema_name(kind))},
                "x-sse-event": kind.type_name(),
            }),
        );
        messages.insert(
            kind.dot_name().to_owned(),
            json!({
                "name": kind.dot_name(),
                "title": format!("{} (envelope)", kind.dot_name()),
                "summary": format!("The envelope of a `{}` event (SSE `?format=envelope`).", kind.type_name()),
                "contentType": "application/json",
                "payload": envelope_of(kind, &envelope),
                "x-sse-event": kind.dot_name(),
            }),
        );
    }

    if mounted.ws {
        ws(&mut channels, &mut operations, &mut messages, &event_refs);
    }
    if mounted.sse {
        sse(&mut channels, &mut operations, &mut messages);
    }
    if mounted.webhook {
        webhook(&mut channels, &mut operations, &mut messages);
    }

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "matric real-time events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The messages of the matric event server: events over WebSocket (`/api/v1/ws`) and Server-Sent Events (`/api/v1/events`), and webhook deliveries (Standard Webhooks). Generated from the server's Rust types; the prose contract is docs/protocol.md. The REST routes are in `/api/v1/openapi.json`.",
            "license": {"name": "MIT OR Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas.into_components(extra, false),
            "messages": messages,
        },
    })
}

/// An envelope whose `event_type` and `payload` are those of `kind`.
fn envelope_of(kind: EventKind, envelope: &Value) -> Value {
    json!({
        "allOf": [envelope],
        "type": "object",
        "properties": {
            "event_type": {"type": "string", "const": kind.dot_name()},
            "payload": {"$ref": format!("#/components/schemas/{}", event_schema_name(kind))},
        },
    })
}

/// The webhook request body (`event-webhook`'s `body_for`).
fn webhook_body_schema(server_event: &Value) -> Value {
    let names: Vec<&str> = EventKind::ALL.iter().map(|k| k.type_name()).collect();
    json!({
        "type": "object",
        "description": "The body of a webhook delivery: `{\"id\",\"event\",\"timestamp\",\"data\"}` (docs/protocol.md §4).",
        "properties": {
            "id": {"type": "string", "format": "uuid", "description": "The event id (also `webhook-id`; the same on every retry: deduplicate on it)."},
            "event": {"type": "string", "enum": names, "description": "The PascalCase type (also `X-Matric-Event`)."},
            "timestamp": {"type": "string", "format": "date-time", "description": "When the event occurred (RFC 3339 UTC, milliseconds)."},
            "data": server_event,
        },
        "required": ["id", "event", "timestamp", "data"],
    })
}

fn names_schema() -> Value {
    json!({
        "type": "array",
        "maxItems": 64,
        "items": {"type": "string", "maxLength": 128},
        "description": "Event names (`JobProgress` or `job.progress`) or type prefixes (`job`), as SSE `types=`. More than 64 names, or one over 128 bytes, closes the connection with 1008.",
    })
}

fn ws(
    channels: &mut Map<String, Value>,
    operations: &mut Map<String, Value>,
    messages: &mut Map<String, Value>,
    event_refs: &dyn Fn(&str) -> Vec<Value>,
) {
    let type_names: Vec<&str> = EventKind::ALL.iter().map(|k| k.type_name()).collect();
    let commands = [
        (
            "subscribe",
            "The first `subscribe` with `events` narrows the stream to these kinds, later ones add to it. `topics` and `filter` (each replacing the previous one) and the kinds are combined by AND with the upgrade's filters; `max_rate` sets the connection's rate limit. Every field is optional, but one without `events`, `topics`, `filter` and `max_rate` is ignored. Answered with `subscribed`, or with `error` (nothing applied) for a bad `topics`, `filter` or `max_rate`. With `consumer` or `group` (docs/protocol.md §11.1) the connection reads that named consumer instead of the live stream: `delivery` messages, acknowledged with `ack` in `ack=explicit` mode.",
            json!({
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "subscribe"},
                    "events": names_schema(),
                    "topics": {
                        "oneOf": [
                            {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 129}},
                            {"type": "string"},
                        ],
                        "description": "Topic patterns as SSE `topics=`: exact names, or prefixes with a trailing `*` (at most 64 of at most 128 bytes).",
                    },
                    "filter": {"type": "object", "description": "The SSE `filter=` object: `events`, `types`, `topics`, `entity_id`, `memory` (at most 4 KiB)."},
                    "max_rate": {"type": "integer", "minimum": 0, "maximum": event_core::MAX_STREAM_RATE, "description": "Events per second this connection receives at most; `0` lifts the limit. Over it `JobProgress` per job and `QueueStatus` are coalesced to the latest, and the rest is counted in `events.lagged`."},
                    "consumer": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "description": "Read as this named durable consumer (a newer connection under the name takes over: close 4009)."},
                    "group": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "description": "Read as a member of this consumer group."},
                    "ack": {"type": "string", "enum": ["auto", "explicit"]},
                    "ack_wait": {"type": "integer", "minimum": 1, "maximum": 3600},
                    "start": {"type": "string", "enum": ["latest", "earliest"]},
                },
                "required": ["type"],
            }),
        ),
        (
            "unsubscribe",
            "Removes kinds from the selection. Answered with `subscribed` (what remains).",
            json!({
                "type": "object",
                "properties": {"type": {"type": "string", "const": "unsubscribe"}, "events": names_schema()},
                "required": ["type", "events"],
            }),
        ),
        (
            "ack",
            "A consumer's acknowledgements (`ack=explicit`): by `seq`/`seqs` or `event_id`/`event_ids`, at most 1,000. Not answered; a bad one is answered with `error` (`invalid_ack`).",
            json!({
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "ack"},
                    "seq": {"type": "integer", "minimum": 0},
                    "seqs": {"type": "array", "maxItems": 1000, "items": {"type": "integer", "minimum": 0}},
                    "event_id": {"type": "string", "format": "uuid"},
                    "event_ids": {"type": "array", "maxItems": 1000, "items": {"type": "string", "format": "uuid"}},
                },
                "required": ["type"],
            }),
        ),
        (
            "ping",
            "Answered with `pong`.",
            json!({
                "type": "object",
                "properties": {"type": {"type": "string", "const": "ping"}},
                "required": ["type"],
            }),
        ),
    ];
    for (name, summary, payload) in commands {
        messages.insert(
            name.to_owned(),
            json!({"name": name, "title": name, "summary": summary, "contentType": "application/json", "payload": payload}),
        );
    }
    messages.insert(
        "refresh".to_owned(),
        json!({
            "name": "refresh",
            "title": "refresh",
            "summary": "The plain text `refresh` (or `{\"type\":\"refresh\"}`): a fresh `QueueStatus` to this client within 1 s.",
            "contentType": "text/plain",
            "payload": {"type": "string", "const": "refresh"},
        }),
    );
    messages.insert(
        "subscribed".to_owned(),
        json!({
            "name": "subscribed",
            "title": "subscribed",
            "summary": "The answer to `subscribe` and `unsubscribe`: the kinds now selected, and the names that matched nothing; for a consumer `subscribe`, the consumer or group and its ack mode.",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "subscribed"},
                    "events": {"type": "array", "items": {"type": "string", "enum": type_names}},
                    "unknown": {"type": "array", "items": {"type": "string"}},
                    "max_rate": {"type": "integer", "minimum": 1, "description": "The connection's rate limit, while it has one."},
                    "consumer": {"type": "string"},
                    "group": {"type": "string"},
                    "ack": {"type": "string", "enum": ["auto", "explicit"]},
                },
                "required": ["type"],
            },
        }),
    );
    messages.insert(
        "error".to_owned(),
        json!({
            "name": "error",
            "title": "error",
            "summary": "The answer to a `subscribe` whose `topics`, `filter` or `max_rate` cannot be used: nothing of it was applied. `error` is the code an HTTP request would get (`invalid_filter`, `invalid_parameter`, `forbidden`).",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "error"},
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                },
                "required": ["type", "error", "message"],
            },
        }),
    );
    messages.insert(
        "delivery".to_owned(),
        json!({
            "name": "delivery",
            "title": "delivery",
            "summary": "An event of the named consumer this connection reads: its sequence number (what `ack` names), how many times it was delivered before without an ack, and the event in the envelope form.",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "delivery"},
                    "seq": {"type": "integer", "minimum": 0},
                    "redelivered": {"type": "integer", "minimum": 0},
                    "event": {"type": "object", "description": "The §1 envelope (as SSE `format=envelope` sends it)."},
                },
                "required": ["type", "seq", "redelivered", "event"],
            },
        }),
    );
    messages.insert(
        "pong".to_owned(),
        json!({
            "name": "pong",
            "title": "pong",
            "summary": "The answer to `ping`.",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "properties": {"type": {"type": "string", "const": "pong"}},
                "required": ["type"],
            },
        }),
    );

    let mut channel_messages = Map::new();
    for name in EventKind::ALL.iter().map(|k| k.type_name()).chain([
        "subscribed",
        "pong",
        "error",
        "events.lagged",
        "delivery",
        "resync_required",
        "subscribe",
        "unsubscribe",
        "ack",
        "ping",
        "refresh",
    ]) {
        channel_messages.insert(
            name.to_owned(),
            json!({"$ref": format!("#/components/messages/{name}")}),
        );
    }
    channels.insert(
        "websocket".to_owned(),
        json!({
            "address": "/api/v1/ws",
            "title": "WebSocket",
            "description": "A plain WebSocket upgrade (docs/protocol.md §2). Server to client: one event per text frame, the first a `QueueStatus` snapshot. With auth on, the token goes in `?token=`, `Authorization: Bearer` or the subprotocol `bearer.<token>`. The upgrade may carry the SSE filters, which hold for the connection's life.",
            "messages": channel_messages,
            "bindings": {
                "ws": {
                    "bindingVersion": "0.1.0",
                    "method": "GET",
                    "query": filter_query(),
                },
            },
        }),
    );
    let mut sent = event_refs("websocket");
    sent.extend(
        [
            "subscribed",
            "pong",
            "error",
            "events.lagged",
            "delivery",
            "resync_required",
        ]
        .map(|m| json!({"$ref": format!("#/channels/websocket/messages/{m}")})),
    );
    operations.insert(
        "sendWebSocketMessages".to_owned(),
        json!({
            "action": "send",
            "channel": {"$ref": "#/channels/websocket"},
            "title": "Events and answers to a WebSocket client",
            "summary": "Every event the client may see, as flat §1 objects, and the answers to its commands.",
            "messages": sent,
        }),
    );
    let commands: Vec<Value> = ["subscribe", "unsubscribe", "ack", "ping", "refresh"]
        .iter()
        .map(|m| json!({"$ref": format!("#/channels/websocket/messages/{m}")}))
        .collect();
    operations.insert(
        "receiveWebSocketCommands".to_owned(),
        json!({
            "action": "receive",
            "channel": {"$ref": "#/channels/websocket"},
            "title": "Commands from a WebSocket client",
            "summary": "Anything else is ignored and the connection stays open.",
            "messages": commands,
        }),
    );
}

/// The filters of docs/protocol.md §3 (also accepted by the WebSocket
/// upgrade), as a query schema.
fn filter_query() -> Value {
    json!({
        "type": "object",
        "properties": {
            "events": {"type": "string", "description": "Exact names, comma separated (`NoteUpdated,job.completed`)."},
            "types": {"type": "string", "description": "Case-insensitive dot-name prefixes, comma separated (`job,note.updated`)."},
            "entity_id": {"type": "string", "format": "uuid"},
            "memory": {"type": "string"},
            "filter": {"type": "string", "description": "The same filter as one JSON object (URL-encoded, at most 4 KiB)."},
            "token": {"type": "string", "description": "The bearer token, for clients that cannot set headers."},
        },
    })
}

fn sse(
    channels: &mut Map<String, Value>,
    operations: &mut Map<String, Value>,
    messages: &mut Map<String, Value>,
) {
    messages.insert(
        "resync_required".to_owned(),
        json!({
            "name": "resync_required",
            "title": "resync_required",
            "summary": "The cursor cannot be served (too old, unknown, malformed) or a slow reader fell behind the ring: re-fetch your state. No `id:` line; never filtered.",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "resync_required"},
                    "reason": {"type": "string", "const": "cursor_expired"},
                    "last_event_id": {"type": "string"},
                },
                "required": ["type", "reason", "last_event_id"],
            },
            "x-sse-event": "resync_required",
        }),
    );
    messages.insert(
        "events.lagged".to_owned(),
        json!({
            "name": "events.lagged",
            "title": "events.lagged",
            "summary": "The client fell behind, or over its `max_rate`, and missed events; the stream goes on. No `id:` line; never filtered. On the WebSocket only a rate-limited connection gets it (as a text frame).",
            "contentType": "application/json",
            "payload": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "const": "events.lagged"},
                    "dropped_count": {"type": "integer", "minimum": 1},
                },
                "required": ["type", "dropped_count"],
            },
            "x-sse-event": "events.lagged",
        }),
    );
    let synthetic = ["resync_required", "events.lagged"];
    let mut channel_messages = Map::new();
    for name in EventKind::ALL
        .iter()
        .flat_map(|k| [k.type_name(), k.dot_name()])
        .chain(synthetic)
    {
        channel_messages.insert(
            name.to_owned(),
            json!({"$ref": format!("#/components/messages/{name}")}),
        );
    }
    channels.insert(
        "sse".to_owned(),
        json!({
            "address": "/api/v1/events",
            "title": "Server-Sent Events",
            "description": "`GET /api/v1/events` (alias `/api/v1/events/stream`), `text/event-stream` (docs/protocol.md §3). Each message is one frame's `data:`; its `event:` name is the message's `x-sse-event`. `?format=v1` (the usual default): `id:` is the sequence number and `data:` the flat §1 object. `?format=envelope`: `id:` is the event UUID and `data:` the envelope. The stream opens with `retry:`, then `resync_required` when a cursor cannot be served, then a `QueueStatus` (no `id:`), then replayed and live events. Resume with `Last-Event-ID` or `?last_event_id=`. Filters: `events`, `types`, `entity_id`, `memory`, `topics`, `filter`. `?max_rate=N` (0 to 10,000; default the server's `STREAM_MAX_RATE`) limits live events to N per second: over it `JobProgress` per job and `QueueStatus` are coalesced to the latest and the rest is counted in `events.lagged`. The stream is sent in the best `Content-Encoding` (gzip, br, zstd) the request's `Accept-Encoding` accepts among those the server offers (`SSE_COMPRESSION`), plain with `?compression=false`; every written batch decodes on arrival.",
            "messages": channel_messages,
        }),
    );
    let refs = |names: Vec<&str>| -> Vec<Value> {
        names
            .into_iter()
            .map(|m| json!({"$ref": format!("#/channels/sse/messages/{m}")}))
            .collect()
    };
    let v1: Vec<&str> = EventKind::ALL
        .iter()
        .map(|k| k.type_name())
        .chain(synthetic)
        .collect();
    let envelope: Vec<&str> = EventKind::ALL
        .iter()
        .map(|k| k.dot_name())
        .chain(synthetic)
        .collect();
    operations.insert(
        "sendSseV1".to_owned(),
        json!({
            "action": "send",
            "channel": {"$ref": "#/channels/sse"},
            "title": "SSE, format v1",
            "summary": "`?format=v1`: `event:` the PascalCase type, `id:` the sequence number, `data:` the flat object.",
            "messages": refs(v1),
        }),
    );
    operations.insert(
        "sendSseEnvelope".to_owned(),
        json!({
            "action": "send",
            "channel": {"$ref": "#/channels/sse"},
            "title": "SSE, format envelope",
            "summary": "`?format=envelope`: `event:` the dot name, `id:` the event UUID, `data:` the envelope.",
            "messages": refs(envelope),
        }),
    );
}

fn webhook(
    channels: &mut Map<String, Value>,
    operations: &mut Map<String, Value>,
    messages: &mut Map<String, Value>,
) {
    messages.insert(
        "webhook".to_owned(),
        json!({
            "name": "webhook",
            "title": "Webhook delivery",
            "summary": "One event POSTed to a registered URL, signed (Standard Webhooks). Answer 2xx to acknowledge; anything else is retried.",
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "description": "HTTP header names are case-insensitive; they are listed in lower case.",
                "properties": {
                    "webhook-id": {"type": "string", "description": "The event id, the same on every retry: deduplicate on it."},
                    "webhook-timestamp": {"type": "string", "pattern": "^[0-9]+$", "description": "Unix seconds of this attempt."},
                    "webhook-signature": {"type": "string", "pattern": "^v1,", "description": "Space-separated `v1,<base64 HMAC-SHA256(key, \"{webhook-id}.{webhook-timestamp}.{body}\")>` entries."},
                    "x-matric-event": {"type": "string", "description": "The PascalCase type."},
                    "x-matric-delivery": {"type": "string", "format": "uuid", "description": "This delivery's id."},
                    "x-matric-signature": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$", "description": "HMAC of the body alone (the header name is configurable). No replay protection: never accept it alone."},
                },
                "required": ["webhook-id", "webhook-timestamp", "webhook-signature", "x-matric-event", "x-matric-delivery"],
            },
            "payload": {"$ref": "#/components/schemas/WebhookDelivery"},
        }),
    );
    channels.insert(
        "webhook".to_owned(),
        json!({
            "address": null,
            "title": "Webhook target",
            "description": "The URL a webhook was registered with (`POST /api/v1/webhooks`, see the OpenAPI document): each matching event is POSTed to it, retried after 1 s, 5 s, 25 s and 125 s, at least once (docs/protocol.md §4).",
            "messages": {"webhook": {"$ref": "#/components/messages/webhook"}},
        }),
    );
    operations.insert(
        "sendWebhook".to_owned(),
        json!({
            "action": "send",
            "channel": {"$ref": "#/channels/webhook"},
            "title": "Deliver an event to a webhook",
            "bindings": {"http": {"bindingVersion": "0.3.0", "method": "POST"}},
            "messages": [{"$ref": "#/channels/webhook/messages/webhook"}],
        }),
    );
}
