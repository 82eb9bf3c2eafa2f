//! PostgreSQL backend: exact NUMERIC money, LISTEN/NOTIFY wake-ups for relays
//! in other processes, and an advisory lock that elects one relay.

use std::sync::Arc;

use rust_decimal::Decimal;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::{mpsc, Mutex, Notify};

use super::group_commit::GroupCommit;

type Db = sqlx::Postgres;

const OUTBOX_CHANNEL: &str = "orderflow_outbox";
/// At most one NOTIFY per this long per process: a relay in another process
/// hears of new rows within it, and 2 ms (one NOTIFY per order under load)
/// cost the API 10–20 % of its throughput (BENCHMARKS.md).
const ANNOUNCE_SPACING: std::time::Duration = std::time::Duration::from_millis(20);
/// The advisory lock key of a lease: every orderflow process derives the
/// same key from the same name (FNV-1a, stable across builds).
fn lease_key(name: &str) -> i64 {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash as i64
}
const MARK_PUBLISHED_SQL: &str = "UPDATE outbox SET published_at = $1 WHERE id = ANY($2)";
const DELETE_PUBLISHED_SQL: &str = "DELETE FROM outbox WHERE id = ANY($1)";
const NOT_IN_ID_LIST: &str = "id <> ALL($6)";

fn money_to_db(amount: rust_decimal::Decimal) -> Decimal {
    amount
}

fn money_from_db(amount: Decimal) -> Result<Decimal, super::StoreError> {
    Ok(amount)
}

fn id_list(ids: &[i64]) -> Vec<i64> {
    ids.to_vec()
}

pub struct PgStore {
    pool: PgPool,
    /// The relay's reads and marks, on connections that never plan a
    /// bitmap scan. The unpublished-outbox index keeps an entry for every
    /// row published since the last vacuum; a bitmap scan visits them all
    /// on every read (7,000 entries for none live, 0.4 ms, at 500 orders/s)
    /// and never learns they are dead, where the ordered index scan marks
    /// them once and skips them after (BENCHMARKS.md). Each statement is
    /// planned for its values: only then does PostgreSQL hash the read-ahead's
    /// list of in-flight ids (`id <> ALL($6)`); the generic plan a prepared
    /// statement settles on after five runs compares every row with every
    /// id, 60 ms instead of 2.4 ms for a read of 4,000 behind 4,000 in flight.
    relay: PgPool,
    local_wakeup: Arc<Notify>,
    /// Asks the announcer task for one NOTIFY; a full channel means one is
    /// already due, which covers this commit too.
    announce: mpsc::Sender<()>,
    listener: Mutex<Option<PgListener>>,
    creates: GroupCommit<OrderWrite, Result<Written, StoreError>>,
    reservations: GroupCommit<Reservation, Result<Option<Applied>, StoreError>>,
    /// The connections of relays standing by, kept between their attempts
    /// at the lease: a new connection each poll (a backend started by
    /// PostgreSQL, a TLS handshake) cost a standby process a fifth of a core
    /// at the bench's 200 ms poll (BENCHMARKS.md).
    standby: Mutex<Vec<PgConnection>>,
}

/// Statements in flight at once for each kind of grouped write: two keep
/// PostgreSQL busy while a lane answers its callers; more would split the
/// same callers into smaller groups (three lanes gave the worker's eight
/// callers groups of 1.8).
pub const WRITE_LANES: usize = 2;
/// The relay marks one batch while it reads the next.
const RELAY_CONNECTIONS: u32 = 2;
/// Orders (or reservations) in one statement at most.
const MAX_GROUP: usize = 64;

/// Wakes relays in other processes after outbox rows were committed. The
/// NOTIFY is its own statement, outside the writing transaction: a
/// transaction that notifies takes a database-wide lock at commit, which
/// would serialise every order's commit behind one WAL flush at a time.
/// Requests that arrive while one NOTIFY is in flight, or within
/// `ANNOUNCE_SPACING` of the last, share the next one: under load a relay
/// elsewhere is busy reading anyway, and a NOTIFY per commit would cost a
/// round trip per order.
async fn announce(pool: PgPool, mut requests: mpsc::Receiver<()>) {
    while requests.recv().await.is_some() {
        tokio::time::sleep(ANNOUNCE_SPACING).await;
        if let Err(e) = sqlx::query("SELECT pg_notify($1, '')")
            .bind(OUTBOX_CHANNEL)
            .execute(&pool)
            .await
        {
            // Relays elsewhere fall back to their poll interval.
            tracing::debug!(error = %e, "outbox NOTIFY failed");
        }
    }
}

impl PgStore {
    pub async fn connect(
        options: sqlx::postgres::PgConnectOptions,
        max_connections: u32,
    ) -> Result<Self, super::StoreError> {
        // One direct connection first: the pool would report a refused or
        // rejected connection only as "timed out".
        PgConnection::connect_with(&options).await?.close().await?;
        // No ping before each acquire: it was a second round trip for every
        // one-statement create or reservation. A connection that died while
        // idle fails its next query with a connection error, which every
        // caller treats as an outage and retries (or answers 503).
        let relay = PgPoolOptions::new()
            .max_connections(RELAY_CONNECTIONS)
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(options.clone().options([
                ("enable_bitmapscan", "off"),
                ("plan_cache_mode", "force_custom_plan"),
            ]));
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let (announce_tx, requests) = mpsc::channel(1);
        tokio::spawn(announce(pool.clone(), requests));
        let writer = pool.clone();
        let creates = GroupCommit::start("create_order", WRITE_LANES, MAX_GROUP, move |batch| {
            create_orders(writer.clone(), batch)
        });
        let writer = pool.clone();
        let reservations = GroupCommit::start("reserve", WRITE_LANES, MAX_GROUP, move |batch| {
            reserve_orders(writer.clone(), batch)
        });
        Ok(Self {
            pool,
            relay,
            local_wakeup: Arc::new(Notify::new()),
            announce: announce_tx,
            listener: Mutex::new(None),
            creates,
            reservations,
            standby: Mutex::new(Vec::new()),
        })
    }

    /// Called after a commit that wrote outbox rows.
    fn outbox_written(&self) {
        self.local_wakeup.notify_one();
        let _ = self.announce.try_send(());
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn relay_pool(&self) -> &PgPool {
        &self.relay
    }

    async fn run_migrations(&self) -> Result<(), super::StoreError> {
        // sqlx serialises concurrent migrators with an advisory lock, so
        // several pods starting at once is safe.
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn wait_outbox(&self, timeout: std::time::Duration) {
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect_with(&self.pool).await {
                Ok(mut listener) => match listener.listen(OUTBOX_CHANNEL).await {
                    Ok(()) => *guard = Some(listener),
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; polling the outbox"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot open LISTEN connection; polling"),
            }
        }
        let Some(listener) = guard.as_mut() else {
            tokio::select! {
                _ = self.local_wakeup.notified() => {}
                _ = tokio::time::sleep(timeout) => {}
            }
            return;
        };
        let lost = tokio::select! {
            _ = self.local_wakeup.notified() => false,
            received = listener.recv() => received.is_err(),
            _ = tokio::time::sleep(timeout) => false,
        };
        if lost {
            *guard = None;
        } else {
            // One fetch serves every notification that arrived meanwhile.
            while listener.next_buffered().is_some() {}
        }
    }

    async fn relay_lease(
        &self,
        name: &str,
    ) -> Result<Option<Box<dyn super::RelayLease>>, super::StoreError> {
        // A session-level advisory lock on a connection of its own: the lock
        // lives exactly as long as that session, so a crashed or partitioned
        // leader loses it and another process takes over within one poll.
        let key = lease_key(name);
        let spare = self.standby.lock().await.pop();
        let (conn, acquired) = match spare {
            Some(mut conn) => match try_advisory_lock(&mut conn, key).await {
                Ok(acquired) => (conn, acquired),
                // Closed while it waited (idle timeout, restart): a new one.
                Err(_) => self.lease_attempt(key).await?,
            },
            None => self.lease_attempt(key).await?,
        };
        if acquired {
            Ok(Some(Box::new(PgLease { conn })))
        } else {
            self.standby.lock().await.push(conn);
            Ok(None)
        }
    }

    async fn lease_attempt(&self, key: i64) -> Result<(PgConnection, bool), super::StoreError> {
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let acquired = try_advisory_lock(&mut conn, key).await?;
        Ok((conn, acquired))
    }
}

async fn try_advisory_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await
}

/// An order, its items, first timeline entry, event and idempotency key
/// in one statement, which PostgreSQL runs as one transaction: one round
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
    INSERT INTO orders (id, status, customer_name, customer_email, customer_id, total_amount, created_at, updated_at)
    SELECT $1, $6, $2, $3, $4, $5, $7, $7 WHERE $9::text IS NULL OR EXISTS (SELECT 1 FROM key)
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
), new_order AS (
    INSERT INTO orders (id, status, customer_name, customer_email, customer_id, total_amount, created_at, updated_at)
    SELECT id, $9, customer_name, customer_email, customer_id, total_amount, at, at FROM input
    WHERE key IS NULL OR id IN (SELECT order_id FROM key)
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
    FROM UNNEST($16::uuid[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])
        WITH ORDINALITY AS e (event_id, destination, message_key, event_type, payload, traceparent, n)
    JOIN input ON input.n = e.n
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
/// never a HOT update): ~2,400 entries for two orders after 20 s at 500/s,
/// growing with the table until a vacuum (BENCHMARKS.md). The update needs
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

/// One order for the grouped create.
struct OrderWrite {
    id: OrderId,
    order: NewOrder,
    event: NewEvent,
    idempotency: Option<IdempotencyKey>,
    now: DateTime<Utc>,
}

/// One OrderCreated for the grouped reservation.
struct Reservation {
    inbox: InboxEntry,
    order_id: OrderId,
    /// The timeline note of the move to Reserved.
    note: String,
}

/// What every request of a batch is told when the batch's statement could
/// not reach the database: its own attempt would fail the same way (and
/// one by one, each would wait for the pool's timeout in turn).
fn shared_outage(e: &StoreError) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(e.to_string())))
}

/// Writes a batch of orders: one statement for several, the one-order
/// statement for one. If the shared statement fails for another reason than
/// an outage, each order is written on its own, so one bad order fails
/// alone.
async fn create_orders(pool: PgPool, batch: Vec<OrderWrite>) -> Vec<Result<Written, StoreError>> {
    if batch.len() > 1 {
        match create_many(&pool, &batch).await {
            Ok(created) => {
                return batch
                    .iter()
                    .map(|w| {
                        Ok(if created.contains(&w.id.0) {
                            Written::Created
                        } else {
                            Written::KeyTaken
                        })
                    })
                    .collect()
            }
            Err(e @ StoreError::Unavailable(_)) => {
                return batch.iter().map(|_| Err(shared_outage(&e))).collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, orders = batch.len(), "grouped create failed; writing the orders one by one");
            }
        }
    }
    let mut answers = Vec::with_capacity(batch.len());
    for write in &batch {
        answers.push(create_one(&pool, write).await);
    }
    answers
}

async fn create_one(pool: &PgPool, w: &OrderWrite) -> Result<Written, StoreError> {
    let order = &w.order;
    let lines: Vec<i32> = (0..order.items.len() as i32).collect();
    let products: Vec<&str> = order
        .items
        .iter()
        .map(|i| i.product_name.as_str())
        .collect();
    let quantities: Vec<i64> = order.items.iter().map(|i| i.quantity).collect();
    let prices: Vec<Decimal> = order
        .items
        .iter()
        .map(|i| money_to_db(i.unit_price))
        .collect();
    let create = sqlx::query(CREATE_ORDER_SQL)
        .bind(w.id.0)
        .bind(&order.customer_name)
        .bind(&order.customer_email)
        .bind(order.customer_id.as_deref())
        .bind(money_to_db(order.total()))
        .bind(OrderStatus::Pending.as_str())
        .bind(w.now)
        .bind(CREATED_NOTE)
        .bind(w.idempotency.as_ref().map(|k| k.key.as_str()))
        .bind(w.idempotency.as_ref().map(|k| k.request_hash.as_str()))
        .bind(lines)
        .bind(products)
        .bind(quantities)
        .bind(prices);
    let created: bool = bind_event(create, &w.event)
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    Ok(if created {
        Written::Created
    } else {
        Written::KeyTaken
    })
}

/// The ids of the orders [`CREATE_ORDERS_SQL`] wrote.
async fn create_many(pool: &PgPool, batch: &[OrderWrite]) -> Result<Vec<Uuid>, StoreError> {
    let orders = || batch.iter().map(|w| &w.order);
    let items = || {
        batch.iter().flat_map(|w| {
            w.order
                .items
                .iter()
                .enumerate()
                .map(move |(line, item)| (w.id.0, line, item))
        })
    };
    let events = || batch.iter().map(|w| &w.event);
    let rows = sqlx::query(CREATE_ORDERS_SQL)
        .bind(batch.iter().map(|w| w.id.0).collect::<Vec<_>>())
        .bind(
            orders()
                .map(|o| o.customer_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            orders()
                .map(|o| o.customer_email.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            orders()
                .map(|o| o.customer_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(orders().map(|o| money_to_db(o.total())).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.now).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|w| w.idempotency.as_ref().map(|k| k.key.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|w| w.idempotency.as_ref().map(|k| k.request_hash.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(OrderStatus::Pending.as_str())
        .bind(CREATED_NOTE)
        .bind(items().map(|(id, _, _)| id).collect::<Vec<_>>())
        .bind(items().map(|(_, line, _)| line as i32).collect::<Vec<_>>())
        .bind(
            items()
                .map(|(_, _, i)| i.product_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(items().map(|(_, _, i)| i.quantity).collect::<Vec<_>>())
        .bind(
            items()
                .map(|(_, _, i)| money_to_db(i.unit_price))
                .collect::<Vec<_>>(),
        )
        .bind(events().map(|e| e.id).collect::<Vec<_>>())
        .bind(events().map(|e| e.destination).collect::<Vec<_>>())
        .bind(events().map(|e| e.order_id.to_string()).collect::<Vec<_>>())
        .bind(events().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(events().map(|e| e.payload.to_string()).collect::<Vec<_>>())
        .bind(
            events()
                .map(|e| e.traceparent.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Reserves a batch: one statement for the first event of each order, the
/// one-order statement for a lone event and for an order's later events in
/// the batch (after the shared statement, so an order's events keep their
/// order). Other failures than an outage fall back to one by one as well.
async fn reserve_orders(
    pool: PgPool,
    batch: Vec<Reservation>,
) -> Vec<Result<Option<Applied>, StoreError>> {
    let mut answers: Vec<Option<Result<Option<Applied>, StoreError>>> =
        batch.iter().map(|_| None).collect();
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<usize> = (0..batch.len())
        .filter(|&i| seen.insert(batch[i].order_id))
        .collect();
    if firsts.len() > 1 {
        let group: Vec<&Reservation> = firsts.iter().map(|&i| &batch[i]).collect();
        match reserve_many(&pool, &group).await {
            Ok(applied) => {
                for (&i, answer) in firsts.iter().zip(applied) {
                    answers[i] = Some(Ok(answer));
                }
            }
            Err(e @ StoreError::Unavailable(_)) => {
                return batch.iter().map(|_| Err(shared_outage(&e))).collect();
            }
            Err(e) => {
                tracing::debug!(error = %e, events = group.len(), "grouped reservation failed; reserving one by one");
            }
        }
    }
    let mut out = Vec::with_capacity(batch.len());
    for (reservation, answer) in batch.iter().zip(answers) {
        out.push(match answer {
            Some(answer) => answer,
            None => reserve_one(&pool, reservation).await,
        });
    }
    out
}

fn reserve_answer(ready: bool, fresh: bool) -> Option<Applied> {
    match (ready, fresh) {
        (true, true) => Some(Applied::Done {
            status: OrderStatus::Reserved,
        }),
        (true, false) => Some(Applied::Duplicate),
        (false, _) => None,
    }
}

async fn reserve_one(pool: &PgPool, r: &Reservation) -> Result<Option<Applied>, StoreError> {
    let (ready, fresh): (bool, bool) = sqlx::query_as(RESERVE_SQL)
        .bind(r.order_id.0)
        .bind(&r.inbox.consumer_group)
        .bind(&r.inbox.event_id)
        .bind(&r.inbox.event_type)
        .bind(Utc::now())
        .bind(OrderStatus::Reserved.as_str())
        .bind(OrderStatus::Pending.as_str())
        .bind(&r.note)
        .fetch_one(pool)
        .await?;
    Ok(reserve_answer(ready, fresh))
}

async fn reserve_many(
    pool: &PgPool,
    group: &[&Reservation],
) -> Result<Vec<Option<Applied>>, StoreError> {
    let rows: Vec<(bool, bool)> = sqlx::query_as(RESERVE_MANY_SQL)
        .bind(group.iter().map(|r| r.order_id.0).collect::<Vec<_>>())
        .bind(
            group
                .iter()
                .map(|r| r.inbox.consumer_group.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            group
                .iter()
                .map(|r| r.inbox.event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            group
                .iter()
                .map(|r| r.inbox.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(Utc::now())
        .bind(OrderStatus::Reserved.as_str())
        .bind(OrderStatus::Pending.as_str())
        .bind(group.iter().map(|r| r.note.as_str()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    if rows.len() != group.len() {
        return Err(StoreError::Corrupt(format!(
            "grouped reservation answered {} rows for {} events",
            rows.len(),
            group.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|(ready, fresh)| reserve_answer(ready, fresh))
        .collect())
}

/// No answer from a group-commit lane: the runtime is shutting down.
fn lanes_gone() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

impl PgStore {
    async fn write_order(
        &self,
        id: OrderId,
        order: &NewOrder,
        event: &NewEvent,
        idempotency: Option<&IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> Result<Written, StoreError> {
        let write = OrderWrite {
            id,
            order: order.clone(),
            event: event.clone(),
            idempotency: idempotency.cloned(),
            now,
        };
        self.creates
            .submit(write)
            .await
            .unwrap_or_else(|| Err(lanes_gone()))
    }

    async fn take_stock_at_once(
        &self,
        inbox: &InboxEntry,
        order_id: OrderId,
        change: &Transition,
    ) -> Result<Option<Applied>, StoreError> {
        // The statements move Pending to Reserved; any other change takes
        // the general path.
        if change.to != OrderStatus::Reserved || change.event.is_some() {
            return Ok(None);
        }
        let reservation = Reservation {
            inbox: inbox.clone(),
            order_id,
            note: change.note.clone(),
        };
        self.reservations
            .submit(reservation)
            .await
            .unwrap_or_else(|| Err(lanes_gone()))
    }
}

struct PgLease {
    conn: PgConnection,
}

#[async_trait::async_trait]
impl super::RelayLease for PgLease {
    async fn still_held(&mut self) -> bool {
        let probe = sqlx::query("SELECT 1").execute(&mut self.conn);
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(5), probe).await,
            Ok(Ok(_))
        )
    }
}

super::sql::impl_store!(PgStore);
