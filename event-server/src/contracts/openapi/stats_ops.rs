//! The dashboard's counters: `GET /api/v1/stats` and the same object pushed
//! by `GET /api/v1/stats/stream` (event-server/src/dashboard/stats*.rs).

use serde_json::{Value, json};

use super::{Auth, Op, content, error_ref, json_body};

fn stats_ref() -> Value {
    json!({"$ref": "#/components/schemas/Stats"})
}

pub(super) fn stats_ops() -> Vec<Op> {
    vec![
        Op {
            method: "get",
            path: "/api/v1/stats",
            id: "stats",
            tag: "operations",
            summary: "The host's counters as JSON: cumulative since start, connections current. (The dashboard reads `GET /api/v1/stats/stream` and polls this only when that cannot be opened.)",
            auth: Auth::Client,
            params: vec![],
            body: None,
            responses: vec![
                (200, "The counters.", json_body(stats_ref())),
                (401, "No or a bad token.", error_ref()),
            ],
        },
        Op {
            method: "get",
            path: "/api/v1/stats/stream",
            id: "statsStream",
            tag: "operations",
            summary: "The same counters pushed as Server-Sent Events (the dashboard's charts): one `stats` frame every `STATS_STREAM_INTERVAL_MS`, collected once per interval for all readers.",
            auth: Auth::Client,
            params: vec![],
            body: None,
            responses: vec![
                (
                    200,
                    "The stream: frames `id: <collection number>`, `event: stats`, `data: <Stats>` (one line of JSON, the schema `Stats`); the latest at once, then one per interval (a reader that falls behind skips intervals). It ends when the server shuts down.",
                    content("text/event-stream", json!({"type": "string"})),
                ),
                (401, "No or a bad token.", error_ref()),
                (
                    503,
                    "`too_many_connections`: `STATS_STREAM_MAX` streams are open; `shutting_down`.",
                    error_ref(),
                ),
            ],
        },
    ]
}

/// The body of `GET /api/v1/stats` and each frame's `data` of the stream.
pub(super) fn stats_schema() -> Value {
    let counts =
        json!({"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}});
    json!({
        "type": "object",
        "properties": {
            "connections": counts,
            "counters": {"type": "boolean", "description": "Whether the counters below are present (a build with telemetry)."},
            "published": counts,
            "delivered": counts,
            "dropped": {"type": "integer", "minimum": 0},
            "webhooks": counts,
            "webhook_queue_depth": {"type": "integer", "minimum": 0},
            "latency_ms": {
                "type": "object",
                "description": "`bounds`: the histogram's bucket bounds (ms); per transport the cumulative count of each bucket, then of all samples.",
                "additionalProperties": {"type": "array", "items": {"type": "number", "minimum": 0}},
            },
        },
        "required": ["connections", "counters"],
    })
}
