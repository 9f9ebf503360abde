-- Events whose deliveries were queued by `Webhooks::derive` (see the
-- PostgreSQL migration of the same name): a repeat queues nothing twice.
CREATE TABLE webhook_derived (
    event_id   BLOB PRIMARY KEY NOT NULL,
    derived_at INTEGER NOT NULL
) STRICT;

CREATE INDEX webhook_derived_at ON webhook_derived (derived_at);
