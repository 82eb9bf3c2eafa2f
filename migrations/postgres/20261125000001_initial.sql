-- Orders, their items and timeline, the transactional outbox, idempotency
-- keys for POST /api/orders, inventory and the consumer inbox.
CREATE TABLE orders (
    id             UUID PRIMARY KEY,
    status         TEXT NOT NULL,
    customer_name  TEXT NOT NULL,
    customer_email TEXT NOT NULL,
    customer_id    TEXT,
    total_amount   NUMERIC(20, 2) NOT NULL CHECK (total_amount >= 0),
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
-- Keyset pagination filtered by status.
CREATE INDEX orders_status_id ON orders (status, id);

CREATE TABLE order_items (
    order_id     UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line         INTEGER NOT NULL,
    product_name TEXT NOT NULL,
    quantity     BIGINT NOT NULL CHECK (quantity > 0),
    unit_price   NUMERIC(20, 2) NOT NULL CHECK (unit_price >= 0),
    PRIMARY KEY (order_id, line)
);

CREATE TABLE order_timeline (
    id       BIGSERIAL PRIMARY KEY,
    order_id UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status   TEXT NOT NULL,
    note     TEXT NOT NULL,
    at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX order_timeline_order ON order_timeline (order_id, id);

CREATE TABLE outbox (
    id           BIGSERIAL PRIMARY KEY,
    event_id     UUID NOT NULL UNIQUE,
    destination  TEXT NOT NULL,
    message_key  TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    traceparent  TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    published_at TIMESTAMPTZ
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    order_id     UUID NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE inventory (
    product_name TEXT PRIMARY KEY,
    on_hand      BIGINT NOT NULL CHECK (on_hand >= 0),
    reserved     BIGINT NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    updated_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE inbox (
    consumer_group TEXT NOT NULL,
    -- ce_id, or topic/partition/offset for producers that send none.
    event_id       TEXT NOT NULL,
    event_type     TEXT NOT NULL,
    handled_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_group, event_id)
);

-- Effects of the worker's handlers; one row per order at most, so a
-- re-delivered event can never apply twice even past the inbox.
CREATE TABLE shipment_requests (
    order_id     UUID PRIMARY KEY REFERENCES orders (id) ON DELETE CASCADE,
    payment_id   TEXT NOT NULL,
    requested_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE notifications (
    id         BIGSERIAL PRIMARY KEY,
    order_id   UUID NOT NULL UNIQUE REFERENCES orders (id) ON DELETE CASCADE,
    recipient  TEXT NOT NULL,
    text       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    sent_at    TIMESTAMPTZ
);
