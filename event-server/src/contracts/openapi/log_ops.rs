//! The operations of the event log (feature `log`): topics and named
//! consumers. Without a log at run time they answer `410 log_off`.

use serde_json::{Value, json};

use super::{Auth, Op, error_ref, json_body, path_param};

fn consumer_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name", "kind", "ack", "ack_wait_ms", "committed_seq", "lag", "pending", "members", "last_seen"],
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["consumer", "group"]},
            "ack": {"type": "string", "enum": ["auto", "explicit"]},
            "ack_wait_ms": {"type": "integer", "minimum": 0},
            "committed_seq": {"type": "integer", "minimum": 0, "description": "Every event at or below it is done with."},
            "lag": {"type": "integer", "minimum": 0, "description": "Logged events after the committed offset."},
            "pending": {"type": "integer", "minimum": 0, "description": "Delivered, not yet acknowledged."},
            "members": {"type": "integer", "minimum": 0},
            "last_seen": {"type": "string", "format": "date-time"},
        },
    })
}

fn name_param() -> Value {
    path_param(
        "name",
        "The consumer or group (1–64 of `A-Z a-z 0-9 . _ -`).",
        json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}),
    )
}

fn log_off() -> (u16, &'static str, Option<Value>) {
    (
        410,
        "`log_off`: the event log is off (`EVENT_LOG=off`, or cluster mode).",
        error_ref(),
    )
}

fn topic_param() -> Value {
    path_param(
        "name",
        "The topic (1–128 of `a-z 0-9 . _ -`, starting with a letter or digit).",
        json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,127}$"}),
    )
}

fn topic_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name", "events", "bytes", "first_seq", "last_seq", "retention", "pruned_through"],
        "properties": {
            "name": {"type": "string"},
            "events": {"type": "integer", "minimum": 0},
            "bytes": {"type": "integer", "minimum": 0},
            "first_seq": {"type": "integer", "minimum": 0},
            "last_seq": {"type": "integer", "minimum": 0},
            "retention": {"oneOf": [{"type": "null"}, retention_schema()]},
            "pruned_through": {"type": "integer", "minimum": 0, "description": "The newest of the topic's events its own retention removed; older cursors of readers that may see the topic get `resync_required`."},
        },
    })
}

fn retention_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "max_age_secs": {"type": ["integer", "null"], "minimum": 1},
            "max_events": {"type": ["integer", "null"], "minimum": 1},
            "max_bytes": {"type": ["integer", "null"], "minimum": 1},
        },
    })
}

pub(super) fn log_ops() -> Vec<Op> {
    vec![
        Op {
            method: "get",
            path: "/api/v1/topics",
            id: "listTopics",
            tag: "events",
            summary: "Every topic in the event log with its size.",
            auth: Auth::Admin,
            params: vec![],
            body: None,
            responses: vec![
                (
                    200,
                    "The topics.",
                    json_body(json!({
                        "type": "object",
                        "required": ["topics"],
                        "properties": {"topics": {"type": "array", "items": topic_schema()}},
                    })),
                ),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
                log_off(),
                (503, "The event log cannot be read.", error_ref()),
            ],
        },
        Op {
            method: "get",
            path: "/api/v1/topics/{name}",
            id: "getTopic",
            tag: "events",
            summary: "One topic: its size, its own retention and pruning mark.",
            auth: Auth::Admin,
            params: vec![topic_param()],
            body: None,
            responses: vec![
                (200, "The topic.", json_body(topic_schema())),
                (400, "`invalid_topic`.", error_ref()),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
                (404, "No events and no retention of its own.", error_ref()),
                log_off(),
            ],
        },
        Op {
            method: "put",
            path: "/api/v1/topics/{name}",
            id: "setTopicRetention",
            tag: "events",
            summary: "Give a topic its own retention (applied besides the log's; the stricter wins), pruned in the background every `EVENT_LOG_PRUNE_INTERVAL_SECS`.",
            auth: Auth::Admin,
            params: vec![topic_param()],
            body: json_body(retention_schema()),
            responses: vec![
                (200, "Set.", json_body(topic_schema())),
                (400, "`invalid_topic`, `invalid_retention`.", error_ref()),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
                (
                    409,
                    "`topic_limit`: 1,000 topics have a retention of their own.",
                    error_ref(),
                ),
                log_off(),
                (413, "The body is over 4 KiB.", error_ref()),
            ],
        },
        Op {
            method: "delete",
            path: "/api/v1/topics/{name}",
            id: "removeTopicRetention",
            tag: "events",
            summary: "Remove a topic's own retention (its pruning mark stays).",
            auth: Auth::Admin,
            params: vec![topic_param()],
            body: None,
            responses: vec![
                (204, "Removed.", None),
                (400, "`invalid_topic`.", error_ref()),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
                (404, "The topic has no retention of its own.", error_ref()),
                log_off(),
            ],
        },
        Op {
            method: "get",
            path: "/api/v1/consumers",
            id: "listConsumers",
            tag: "events",
            summary: "Named consumers and groups: mode, committed offset, lag, members.",
            auth: Auth::Admin,
            params: vec![],
            body: None,
            responses: vec![
                (
                    200,
                    "The consumers, by name.",
                    json_body(json!({
                        "type": "object",
                        "required": ["consumers"],
                        "properties": {"consumers": {"type": "array", "items": consumer_schema()}},
                    })),
                ),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
                log_off(),
                (
                    503,
                    "`log_unavailable`: the offsets cannot be read.",
                    error_ref(),
                ),
            ],
        },
        Op {
            method: "delete",
            path: "/api/v1/consumers/{name}",
            id: "deleteConsumer",
            tag: "events",
            summary: "Delete a consumer or group: its connections close, its offset is forgotten.",
            auth: Auth::Admin,
            params: vec![name_param()],
            body: None,
            responses: vec![
                (204, "Deleted.", None),
                (
                    400,
                    "`invalid_parameter`: not a consumer name.",
                    error_ref(),
                ),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
                (404, "`consumer_not_found`.", error_ref()),
                log_off(),
            ],
        },
        Op {
            method: "post",
            path: "/api/v1/consumers/{name}/ack",
            id: "ackConsumer",
            tag: "events",
            summary: "Acknowledge events delivered to an `ack=explicit` consumer (the SSE way; WebSocket clients send `ack` messages).",
            auth: Auth::Client,
            params: vec![name_param()],
            body: json_body(json!({
                "type": "object",
                "additionalProperties": false,
                "minProperties": 1,
                "properties": {
                    "seq": {"type": "integer", "minimum": 0},
                    "seqs": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 1000},
                    "event_id": {"type": "string", "format": "uuid"},
                    "event_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}, "maxItems": 1000},
                },
            })),
            responses: vec![
                (
                    200,
                    "How many of the named events were pending (the others were acknowledged already, or never delivered).",
                    json_body(json!({
                        "type": "object",
                        "required": ["acked"],
                        "properties": {"acked": {"type": "integer", "minimum": 0}},
                    })),
                ),
                (
                    400,
                    "`invalid_json`, `invalid_ack`, `too_many_acks`.",
                    error_ref(),
                ),
                (401, "No or a bad token.", error_ref()),
                (404, "`consumer_not_found`.", error_ref()),
                log_off(),
                (413, "The body is over 64 KiB.", error_ref()),
            ],
        },
    ]
}
