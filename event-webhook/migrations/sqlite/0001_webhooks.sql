-- SQLite has no timestamp or UUID types: times are INTEGER unix milliseconds
-- (ordered, cheap to compare), ids are 16-byte BLOBs, lists are JSON text.
CREATE TABLE webhooks (
    id                BLOB PRIMARY KEY NOT NULL,
    url               TEXT NOT NULL,
    events            TEXT NOT NULL,
    secret            TEXT NOT NULL,
    active            INTEGER NOT NULL,
    max_retries       INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    last_triggered_at INTEGER,
    failure_count     INTEGER NOT NULL DEFAULT 0,
    disabled_reason   TEXT
) STRICT;

-- The durable queue and the delivery log in one table. A row is due when its
-- status is pending/failed, next_attempt_at has passed and it is not claimed
-- (claimed_until NULL or in the past: the claiming process died).
CREATE TABLE deliveries (
    id               BLOB PRIMARY KEY NOT NULL,
    webhook_id       BLOB NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id         BLOB NOT NULL,
    event_type       TEXT NOT NULL,
    body             TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'failed', 'succeeded', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER,
    claimed_until    INTEGER,
    claim_token      BLOB,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER
) STRICT;

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, created_at DESC);
CREATE INDEX deliveries_succeeded ON deliveries (delivered_at) WHERE status = 'succeeded';

CREATE TABLE attempts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id  BLOB NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    started_at   INTEGER NOT NULL,
    duration_ms  INTEGER NOT NULL,
    status_code  INTEGER,
    error        TEXT
) STRICT;

CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
