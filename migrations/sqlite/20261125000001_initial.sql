-- SQLite twin of the PostgreSQL schema: UUIDs as 16-byte blobs, money as
-- exact decimal text (never REAL), timestamps as RFC 3339 text.
-- Orders, their items and timeline, the transactional outbox, idempotency
-- keys for POST /api/orders, inventory and the consumer inbox.
CREATE TABLE orders (
    id             BLOB PRIMARY KEY,
    status         TEXT NOT NULL,
    customer_name  TEXT NOT NULL,
    customer_email TEXT NOT NULL,
    customer_id    TEXT,
    total_amount   TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
-- Keyset pagination filtered by status.
CREATE INDEX orders_status_id ON orders (status, id);

CREATE TABLE order_items (
    order_id     BLOB NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line         INTEGER NOT NULL,
    product_name TEXT NOT NULL,
    quantity     INTEGER NOT NULL CHECK (quantity > 0),
    unit_price   TEXT NOT NULL,
    PRIMARY KEY (order_id, line)
);

CREATE TABLE order_timeline (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id BLOB NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status   TEXT NOT NULL,
    note     TEXT NOT NULL,
    at       TEXT NOT NULL
);
CREATE INDEX order_timeline_order ON order_timeline (order_id, id);

CREATE TABLE outbox (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id     BLOB NOT NULL UNIQUE,
    destination  TEXT NOT NULL,
    message_key  TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    traceparent  TEXT,
    created_at   TEXT NOT NULL,
    published_at TEXT
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    order_id     BLOB NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    created_at   TEXT NOT NULL
);

CREATE TABLE inventory (
    product_name TEXT PRIMARY KEY,
    on_hand      INTEGER NOT NULL CHECK (on_hand >= 0),
    reserved     INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at   TEXT NOT NULL
);

CREATE TABLE inbox (
    consumer_group TEXT NOT NULL,
    -- ce_id, or topic/partition/offset for producers that send none.
    event_id       TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    handled_at     TEXT NOT NULL,
    PRIMARY KEY (consumer_group, event_id)
);

-- Effects of the worker's handlers; one row per order at most, so a
-- re-delivered event can never apply twice even past the inbox.
CREATE TABLE shipment_requests (
    order_id     BLOB PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    payment_id   TEXT NOT NULL,
    requested_at TEXT NOT NULL
);

CREATE TABLE notifications (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id   BLOB NOT NULL UNIQUE REFERENCES orders (id) ON DELETE CASCADE,
    recipient  TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at    TEXT
);
