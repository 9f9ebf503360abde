-- Events whose deliveries were queued by `Webhooks::derive` (in cluster mode:
-- from the stream, through the instances' shared work queue). The same
-- transaction that queues an event's deliveries records it here, so an event
-- handed out again (its acknowledgement lost with a killed instance) queues
-- nothing twice. Pruned after the stream's retention.
CREATE TABLE webhook_derived (
    event_id   UUID PRIMARY KEY,
    derived_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX webhook_derived_at ON webhook_derived (derived_at);
