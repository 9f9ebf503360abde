CREATE TABLE webhooks (
    id                UUID PRIMARY KEY,
    url               TEXT NOT NULL,
    events            TEXT[] NOT NULL,
    secret            TEXT NOT NULL,
    active            BOOLEAN NOT NULL,
    max_retries       INTEGER NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    last_triggered_at TIMESTAMPTZ,
    failure_count     INTEGER NOT NULL DEFAULT 0,
    disabled_reason   TEXT
);

-- The durable queue and the delivery log in one table. A row is due when its
-- status is pending/failed, next_attempt_at has passed and it is not claimed
-- (claimed_until NULL or in the past: the claiming process died). The body is
-- JSON (not JSONB) so the exact bytes that were signed are kept, key order
-- included.
CREATE TABLE deliveries (
    id               UUID PRIMARY KEY,
    webhook_id       UUID NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    event_id         UUID NOT NULL,
    event_type       TEXT NOT NULL,
    body             JSON NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'failed', 'succeeded', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ,
    claimed_until    TIMESTAMPTZ,
    claim_token      UUID,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    delivered_at     TIMESTAMPTZ
);

CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, created_at DESC);
CREATE INDEX deliveries_succeeded ON deliveries (delivered_at) WHERE status = 'succeeded';

CREATE TABLE attempts (
    id           BIGSERIAL PRIMARY KEY,
    delivery_id  UUID NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL,
    duration_ms  BIGINT NOT NULL,
    status_code  INTEGER,
    error        TEXT
);

CREATE INDEX attempts_by_delivery ON attempts (delivery_id);
