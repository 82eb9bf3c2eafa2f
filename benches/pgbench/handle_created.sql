-- The worker's OrderCreated transaction (store/sql.rs apply with
-- Effect::Reserve) on one of the pre-filled orders: inbox row, the items,
-- the guarded status change and its timeline entry. `backlog` (pgbench -D)
-- is the number of pre-filled orders.
\set n random(1, :backlog)
BEGIN;
INSERT INTO inbox (consumer_group, event_id, event_type, handled_at)
  VALUES ('pgbench', gen_random_uuid()::text, 'OrderCreated', now()) ON CONFLICT DO NOTHING;
SELECT product_name, CAST(SUM(quantity) AS BIGINT) FROM order_items WHERE order_id = md5(:n::text)::uuid GROUP BY product_name ORDER BY product_name;
UPDATE orders SET status = 'Pending', updated_at = now() WHERE id = md5(:n::text)::uuid AND status = 'Pending';
INSERT INTO order_timeline (order_id, status, note, at) VALUES (md5(:n::text)::uuid, 'Reserved', 'stock reserved', now());
COMMIT;
