-- The reconciler: each order keeps the event that should move it on (the
-- last it emitted to the orders topic), so a lost event can be published
-- again with its original id; `redrives` counts how often that was done.
ALTER TABLE orders
    ADD COLUMN event_id          TEXT,
    ADD COLUMN event_payload     TEXT,
    ADD COLUMN event_traceparent TEXT;

-- Orders from before: their latest orders-topic event, where the outbox
-- still has it.
UPDATE orders SET event_id = latest.event_id::text, event_payload = latest.payload,
    event_traceparent = latest.traceparent
FROM (
    SELECT DISTINCT ON (message_key) message_key, event_id, payload, traceparent
    FROM outbox WHERE destination = 'orders' ORDER BY message_key, id DESC
) latest
WHERE orders.id::text = latest.message_key;

CREATE TABLE redrives (
    order_id UUID PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_at  TIMESTAMPTZ NOT NULL
);

-- Notifications are retried until sent or given up.
ALTER TABLE notifications
    ADD COLUMN attempts        INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at TIMESTAMPTZ,
    ADD COLUMN last_error      TEXT,
    ADD COLUMN failed_at       TIMESTAMPTZ;
UPDATE notifications SET next_attempt_at = created_at WHERE sent_at IS NULL;
CREATE INDEX notifications_due ON notifications (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
