-- The API's create transaction (store/sql.rs create_order) for one order of
-- one item, as pgbench runs it: same statements, same rows (the id is
-- derived from a random 63-bit number instead of a UUIDv7). The API's
-- NOTIFY is a separate statement after commit, shared by the commits that
-- finish while one is in flight; it is not part of this transaction.
\set n random(1, 9000000000000000000)
BEGIN;
SELECT request_hash, order_id FROM idempotency_keys WHERE key = 'bench-' || :n || '-' || :client_id;
INSERT INTO orders (id, status, customer_name, customer_email, customer_id, total_amount, created_at, updated_at)
  VALUES (md5(:n::text)::uuid, 'Pending', 'Bench Customer', 'bench@example.test', NULL, 2.50, now(), now());
INSERT INTO order_items (order_id, line, product_name, quantity, unit_price) VALUES (md5(:n::text)::uuid, 0, 'bench-untracked', 1, 2.50);
INSERT INTO order_timeline (order_id, status, note, at) VALUES (md5(:n::text)::uuid, 'Pending', 'order created', now());
INSERT INTO outbox (event_id, destination, message_key, event_type, payload, traceparent, created_at)
  VALUES (gen_random_uuid(), 'orders', md5(:n::text)::uuid, 'OrderCreated',
          '{"orderId":"00000000-0000-0000-0000-000000000000","customerId":null,"customerName":"Bench Customer","customerEmail":"bench@example.test","totalAmount":"2.50","createdAt":"2026-11-25T00:00:00Z","items":[{"productName":"bench-untracked","quantity":1,"unitPrice":"2.50"}]}',
          '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01', now());
INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)
  VALUES ('bench-' || :n || '-' || :client_id, 'hash', md5(:n::text)::uuid, now()) ON CONFLICT DO NOTHING;
COMMIT;
