//! PostgreSQL's one-statement writes: an order's creation and the common
//! case of its reservation, each for one order and for a group. Each runs as
//! one transaction in one round trip; the benchmark runs the same text
//! through pgbench as the limit to compare with.

/// An order (with the event that should move it on, for the reconciler),
/// its items, first timeline entry, event and idempotency key in one
/// statement, which PostgreSQL runs as one transaction: one round
/// trip instead of nine (BENCHMARKS.md). The key is inserted first; if it
/// exists (`ON CONFLICT` waits for a concurrent insert of the same key to
/// commit or roll back), the order is not written and the statement
/// returns false. The foreign keys are checked at the end of the
/// statement, when the order exists.
pub const CREATE_ORDER_SQL: &str = "\
WITH key AS (
    INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)
    SELECT $9, $10, $1, $7 WHERE $9::text IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING 1
), new_order AS (
    INSERT INTO orders (id, status, customer_name, customer_email, customer_id, total_amount, created_at, updated_at,
        event_id, event_payload, event_traceparent)
    SELECT $1, $6, $2, $3, $4, $5, $7, $7, $15::text, $19, $20
    WHERE $9::text IS NULL OR EXISTS (SELECT 1 FROM key)
    RETURNING id
), items AS (
    INSERT INTO order_items (order_id, line, product_name, quantity, unit_price)
    SELECT new_order.id, item.line, item.product_name, item.quantity, item.unit_price
    FROM new_order, UNNEST($11::int4[], $12::text[], $13::int8[], $14::numeric[])
        AS item (line, product_name, quantity, unit_price)
), first_entry AS (
    INSERT INTO order_timeline (order_id, status, note, at) SELECT id, $6, $8, $7 FROM new_order
), event AS (
    INSERT INTO outbox (event_id, destination, message_key, event_type, payload, traceparent, created_at)
    SELECT $15, $16, $17, $18, $19, $20, $7 FROM new_order
)
SELECT EXISTS (SELECT 1 FROM new_order)";

/// The common case of OrderCreated in one statement, which PostgreSQL runs
/// as one transaction (one round trip instead of eight): the order, if it
/// is Pending, and the stock rows of its tracked products are locked first
/// (stock in product order, so concurrent reservations cannot deadlock;
/// a locked row reads its latest committed version). Only if the order is
/// Pending and every tracked product has enough does anything get written:
/// the inbox row, the stock taken, the move to Reserved and its timeline
/// entry. Otherwise nothing is written and the caller takes the general
/// path, which finds out what happened (duplicate, short stock, another
/// status) and records it. An inbox conflict (a re-delivery) writes
/// nothing either.
pub const RESERVE_SQL: &str = "\
WITH target AS MATERIALIZED (
    SELECT id FROM orders WHERE id = $1 AND status = $7 FOR UPDATE
), wanted AS (
    SELECT product_name, CAST(SUM(quantity) AS BIGINT) AS quantity FROM order_items
    WHERE order_id = $1 AND EXISTS (SELECT 1 FROM target)
    GROUP BY product_name
), locked AS MATERIALIZED (
    SELECT stock.product_name, stock.on_hand, wanted.quantity
    FROM inventory stock JOIN wanted ON wanted.product_name = stock.product_name
    ORDER BY stock.product_name
    FOR UPDATE OF stock
), ready AS MATERIALIZED (
    SELECT EXISTS (SELECT 1 FROM target)
        AND NOT EXISTS (SELECT 1 FROM locked WHERE on_hand < quantity) AS ok
), fresh AS (
    INSERT INTO inbox (consumer_group, event_id, event_type, handled_at)
    SELECT $2, $3, $4, $5 WHERE (SELECT ok FROM ready)
    ON CONFLICT (consumer_group, event_id) DO NOTHING
    RETURNING 1
), taken AS (
    UPDATE inventory SET on_hand = inventory.on_hand - locked.quantity,
        reserved = inventory.reserved + locked.quantity, updated_at = $5
    FROM locked
    WHERE inventory.product_name = locked.product_name AND EXISTS (SELECT 1 FROM fresh)
), moved AS (
    UPDATE orders SET status = $6, updated_at = $5
    WHERE id = $1 AND status = $7 AND EXISTS (SELECT 1 FROM fresh)
    RETURNING id
), entry AS (
    INSERT INTO order_timeline (order_id, status, note, at) SELECT id, $6, $8, $5 FROM moved
)
SELECT (SELECT ok FROM ready), EXISTS (SELECT 1 FROM fresh)";

/// [`CREATE_ORDER_SQL`] for several orders at once (group commit): the
/// orders come as parallel arrays (`$1`–`$8`, one element per order), their
/// items as arrays with the order's id on each (`$11`–`$15`), their events
/// as arrays in the orders' order (`$16`–`$22`). An order whose key is taken,
/// by an earlier order or by one before it in the same batch, is not
/// written. Returns the ids of the orders written.
pub const CREATE_ORDERS_SQL: &str = "\
WITH input AS MATERIALIZED (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::numeric[],
        $6::timestamptz[], $7::text[], $8::text[]) WITH ORDINALITY
        AS o (id, customer_name, customer_email, customer_id, total_amount, at, key, request_hash, n)
), key AS (
    INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)
    SELECT key, request_hash, id, at FROM input WHERE key IS NOT NULL ORDER BY n
    ON CONFLICT (key) DO NOTHING
    RETURNING order_id
), events AS MATERIALIZED (
    SELECT * FROM UNNEST($16::uuid[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])
        WITH ORDINALITY AS e (event_id, destination, message_key, event_type, payload, traceparent, n)
), new_order AS (
    INSERT INTO orders (id, status, customer_name, customer_email, customer_id, total_amount, created_at, updated_at,
        event_id, event_payload, event_traceparent)
    SELECT input.id, $9, input.customer_name, input.customer_email, input.customer_id, input.total_amount,
        input.at, input.at, e.event_id::text, e.payload, e.traceparent
    FROM input JOIN events e ON e.n = input.n
    WHERE input.key IS NULL OR input.id IN (SELECT order_id FROM key)
    RETURNING id, created_at
), items AS (
    INSERT INTO order_items (order_id, line, product_name, quantity, unit_price)
    SELECT item.order_id, item.line, item.product_name, item.quantity, item.unit_price
    FROM UNNEST($11::uuid[], $12::int4[], $13::text[], $14::int8[], $15::numeric[])
        AS item (order_id, line, product_name, quantity, unit_price)
    WHERE item.order_id IN (SELECT id FROM new_order)
), first_entry AS (
    INSERT INTO order_timeline (order_id, status, note, at) SELECT id, $9, $10, created_at FROM new_order
), event AS (
    INSERT INTO outbox (event_id, destination, message_key, event_type, payload, traceparent, created_at)
    SELECT e.event_id, e.destination, e.message_key, e.event_type, e.payload, e.traceparent, input.at
    FROM events e JOIN input ON input.n = e.n
    WHERE input.id IN (SELECT id FROM new_order)
    ORDER BY e.n
)
SELECT id FROM new_order";

/// [`RESERVE_SQL`] for several OrderCreated events of distinct orders at
/// once (group commit), one element per event in `$1`–`$4` and `$8`. The orders
/// still Pending are locked in id order, then the stock of their tracked
/// products in product order. An order is ready when it is Pending and none
/// of its products is short for the whole batch (the sum every ready order
/// wants); ready orders whose inbox row is new are reserved exactly as the
/// one-order statement does. Returns, per event in input order, whether its
/// order was ready and whether this statement reserved it: not ready takes
/// the general path, ready but not reserved is a re-delivery.
///
/// The orders are locked by primary key alone and their status tested on
/// the locked rows (which are their latest versions). With the status in
/// the lookup, the generic plan a prepared statement settles on, not
/// knowing the array, walked the (status, id) index through every Pending
/// entry, dead ones of long-reserved orders included (a status change is
/// never a HOT update), growing with the table until a vacuum (BENCHMARKS.md,
/// "Figures behind the code"). The update needs
/// no status test: its rows are the ones locked above, as Pending.
pub const RESERVE_MANY_SQL: &str = "\
WITH input AS MATERIALIZED (
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $8::text[])
        WITH ORDINALITY AS i (order_id, consumer_group, event_id, event_type, note, n)
), locked_orders AS MATERIALIZED (
    SELECT id, status FROM orders WHERE id = ANY($1::uuid[])
    ORDER BY id FOR UPDATE
), target AS MATERIALIZED (
    SELECT id FROM locked_orders WHERE status = $7
), wanted AS MATERIALIZED (
    SELECT order_id, product_name, CAST(SUM(quantity) AS BIGINT) AS quantity FROM order_items
    WHERE order_id IN (SELECT id FROM target)
    GROUP BY order_id, product_name
), locked AS MATERIALIZED (
    SELECT product_name, on_hand FROM inventory
    WHERE product_name IN (SELECT product_name FROM wanted)
    ORDER BY product_name
    FOR UPDATE
), short AS MATERIALIZED (
    SELECT locked.product_name FROM locked JOIN wanted USING (product_name)
    GROUP BY locked.product_name, locked.on_hand
    HAVING SUM(wanted.quantity) > locked.on_hand
), ready AS MATERIALIZED (
    SELECT input.* FROM input JOIN target ON target.id = input.order_id
    WHERE NOT EXISTS (
        SELECT 1 FROM wanted JOIN short USING (product_name) WHERE wanted.order_id = input.order_id
    )
), fresh AS (
    INSERT INTO inbox (consumer_group, event_id, event_type, handled_at)
    SELECT consumer_group, event_id, event_type, $5 FROM ready
    ON CONFLICT (consumer_group, event_id) DO NOTHING
    RETURNING consumer_group, event_id
), done AS MATERIALIZED (
    SELECT ready.order_id FROM ready JOIN fresh USING (consumer_group, event_id)
), taken AS (
    UPDATE inventory SET on_hand = inventory.on_hand - total.quantity,
        reserved = inventory.reserved + total.quantity, updated_at = $5
    FROM (
        SELECT product_name, CAST(SUM(quantity) AS BIGINT) AS quantity FROM wanted
        WHERE order_id IN (SELECT order_id FROM done) GROUP BY product_name
    ) total
    WHERE inventory.product_name = total.product_name
), moved AS (
    UPDATE orders SET status = $6, updated_at = $5
    WHERE id IN (SELECT order_id FROM done)
    RETURNING id
), entry AS (
    INSERT INTO order_timeline (order_id, status, note, at)
    SELECT moved.id, $6, input.note, $5 FROM moved JOIN input ON input.order_id = moved.id
)
SELECT EXISTS (SELECT 1 FROM ready WHERE ready.n = input.n),
    EXISTS (SELECT 1 FROM done WHERE done.order_id = input.order_id)
FROM input ORDER BY n";
