//! WebSocket endpoint `/api/v1/ws` (HotM protocol) with connection management.
