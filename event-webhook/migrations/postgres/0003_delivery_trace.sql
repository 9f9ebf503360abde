-- The W3C trace context a delivery sends on (`traceparent`, then
-- `tracestate` after a newline when there is one); NULL without.
ALTER TABLE deliveries ADD COLUMN trace TEXT;
