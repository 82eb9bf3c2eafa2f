-- SQLite twin of the PostgreSQL migration: the event that should move each
-- order on, re-drive bookkeeping, notification retries. Orders from before
-- are not backfilled (a development database).
ALTER TABLE orders ADD COLUMN event_id TEXT;
ALTER TABLE orders ADD COLUMN event_payload TEXT;
ALTER TABLE orders ADD COLUMN event_traceparent TEXT;

CREATE TABLE redrives (
    order_id BLOB PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    event_id TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_at  TEXT NOT NULL
);

ALTER TABLE notifications ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE notifications ADD COLUMN next_attempt_at TEXT;
ALTER TABLE notifications ADD COLUMN last_error TEXT;
ALTER TABLE notifications ADD COLUMN failed_at TEXT;
UPDATE notifications SET next_attempt_at = created_at WHERE sent_at IS NULL;
CREATE INDEX notifications_due ON notifications (next_attempt_at)
    WHERE sent_at IS NULL AND failed_at IS NULL;
