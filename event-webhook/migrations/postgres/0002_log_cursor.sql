-- Where the webhook sink's catch-up from the event log resumes: the
-- sequence of the last event whose deliveries are queued (one row, id 1).
CREATE TABLE webhook_log_cursor (
    id  INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL
);
