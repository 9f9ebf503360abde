//! Job worker bridge (`WorkerEvent` → `ServerEvent`), queue status, and note-change emission after commit.
