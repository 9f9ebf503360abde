//! SSE endpoint `/api/v1/events` with replay, filters and lag signalling.
