//! The connections API: direct connections (admin) and connection slots
//! (`POST /api/v1/connections`, any token, each principal its own).

use event_core::ConnectionInfo;
use serde_json::{Value, json};

use super::{Auth, Op, error_ref, json_body, path_param, query};
use crate::contracts::Schemas;
use crate::slots::{SlotOptions, SlotStatus};

fn id_param() -> Value {
    path_param(
        "id",
        "A direct connection's number, or a slot's id (`conn_…`).",
        json!({"type": "string", "pattern": "^([0-9]+|conn_[0-9a-f]{32})$"}),
    )
}

pub(super) fn connection_ops(schemas: &mut Schemas) -> Vec<Op> {
    let status = schemas.of::<SlotStatus>();
    vec![
        Op {
            method: "get",
            path: "/api/v1/connections",
            id: "listConnections",
            tag: "operations",
            summary: "Open WebSocket, SSE and MCP clients, those opened through a slot among them (with its `slot`).",
            auth: Auth::Admin,
            params: vec![],
            body: None,
            responses: vec![
                (
                    200,
                    "The open connections.",
                    json_body(json!({"type": "array", "items": schemas.of::<ConnectionInfo>()})),
                ),
                (401, "No or a bad token.", error_ref()),
                (403, "Not an admin token.", error_ref()),
            ],
        },
        Op {
            method: "post",
            path: "/api/v1/connections",
            id: "createConnection",
            tag: "operations",
            summary: "Create a connection slot: a stream's transport and options, fixed now, and a single-use `stream_url` (valid `CONNECTION_TICKET_TTL_SECS`) that opens it with this token's rights.",
            auth: Auth::Client,
            params: vec![],
            body: json_body(super::super::request_schema::<SlotOptions>()),
            responses: vec![
                (
                    201,
                    "The slot, `connecting`, with its `stream_url`.",
                    json_body(status.clone()),
                ),
                (
                    400,
                    "An invalid option, named (`invalid_filter`, `invalid_parameter`, `unsupported_option`, `transport_unavailable`, `invalid_json`).",
                    error_ref(),
                ),
                (401, "No or a bad token.", error_ref()),
                (403, "A filter memory the token may not see.", error_ref()),
                (
                    409,
                    "`slot_limit`: `CONNECTION_SLOTS_MAX` or `CONNECTION_SLOTS_PER_PRINCIPAL` reached.",
                    error_ref(),
                ),
                (413, "The body is over 8 KiB.", error_ref()),
                (415, "Not `Content-Type: application/json`.", error_ref()),
            ],
        },
        Op {
            method: "get",
            path: "/api/v1/connections/{id}/status",
            id: "connectionStatus",
            tag: "operations",
            summary: "A slot's status (its creator or an admin), or a direct connection's (admin): `connecting`, `connected`, `disconnected` or `error`, with its counters.",
            auth: Auth::Client,
            params: vec![id_param()],
            body: None,
            responses: vec![
                (200, "The status.", json_body(status)),
                (401, "No or a bad token.", error_ref()),
                (
                    403,
                    "A direct connection's status needs the admin token.",
                    error_ref(),
                ),
                (
                    404,
                    "No such slot (or not this token's), no such open connection.",
                    error_ref(),
                ),
            ],
        },
        Op {
            method: "delete",
            path: "/api/v1/connections/{id}",
            id: "disconnect",
            tag: "operations",
            summary: "Close a connection (WebSocket close 1008): a direct one by number (admin), or a slot (its creator or an admin), which is deleted with its ticket.",
            auth: Auth::Client,
            params: vec![id_param()],
            body: None,
            responses: vec![
                (204, "Asked to close.", None),
                (400, "Not a connection or slot id.", error_ref()),
                (401, "No or a bad token.", error_ref()),
                (
                    403,
                    "Closing a direct connection needs the admin token.",
                    error_ref(),
                ),
                (404, "No such open connection or slot.", error_ref()),
            ],
        },
        Op {
            method: "get",
            path: "/api/v1/connections/{id}/stream",
            id: "openConnection",
            tag: "operations",
            summary: "Open a slot's stream, once: SSE with a plain GET, a WebSocket with an upgrade. The ticket is the credential; the slot's options apply and cannot be changed here.",
            auth: Auth::None,
            params: vec![
                id_param(),
                query(
                    "ticket",
                    "The slot's single-use ticket (part of its `stream_url`).",
                    json!({"type": "string"}),
                ),
            ],
            body: None,
            responses: vec![
                (101, "Switching Protocols (a WebSocket slot).", None),
                (200, "The event stream (an SSE slot).", None),
                (
                    400,
                    "`wrong_transport` (a plain GET for a WebSocket slot or the reverse); the ticket stays valid.",
                    error_ref(),
                ),
                (
                    401,
                    "No ticket, or one used, expired or of another slot.",
                    error_ref(),
                ),
                (404, "No such slot.", error_ref()),
                (
                    503,
                    "`too_many_connections` (the slot ends in `error`).",
                    error_ref(),
                ),
            ],
        },
    ]
}
