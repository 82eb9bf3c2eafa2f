//! PostgreSQL backend: exact NUMERIC money, LISTEN/NOTIFY wake-ups for relays
//! in other processes, and an advisory lock that elects one relay.

use std::sync::Arc;

use rust_decimal::Decimal;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::{mpsc, Mutex, Notify};

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
    local_wakeup: Arc<Notify>,
    /// Asks the announcer task for one NOTIFY; a full channel means one is
    /// already due, which covers this commit too.
    announce: mpsc::Sender<()>,
    listener: Mutex<Option<PgListener>>,
}

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
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let (announce_tx, requests) = mpsc::channel(1);
        tokio::spawn(announce(pool.clone(), requests));
        Ok(Self {
            pool,
            local_wakeup: Arc::new(Notify::new()),
            announce: announce_tx,
            listener: Mutex::new(None),
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
        let mut conn = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lease_key(name))
            .fetch_one(&mut conn)
            .await?;
        if acquired {
            Ok(Some(Box::new(PgLease { conn })))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
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

impl PgStore {
    async fn write_order(
        &self,
        id: OrderId,
        order: &NewOrder,
        event: &NewEvent,
        idempotency: Option<&IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> Result<Written, StoreError> {
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
            .bind(id.0)
            .bind(&order.customer_name)
            .bind(&order.customer_email)
            .bind(order.customer_id.as_deref())
            .bind(money_to_db(order.total()))
            .bind(OrderStatus::Pending.as_str())
            .bind(now)
            .bind(NOTE_CREATED)
            .bind(idempotency.map(|k| k.key.as_str()))
            .bind(idempotency.map(|k| k.request_hash.as_str()))
            .bind(lines)
            .bind(products)
            .bind(quantities)
            .bind(prices);
        let created: bool = bind_event(create, event)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        Ok(if created {
            Written::Created
        } else {
            Written::KeyTaken
        })
    }

    async fn reserve_at_once(
        &self,
        inbox: &InboxEntry,
        order_id: OrderId,
    ) -> Result<Option<Applied>, StoreError> {
        let (ready, fresh): (bool, bool) = sqlx::query_as(RESERVE_SQL)
            .bind(order_id.0)
            .bind(&inbox.consumer_group)
            .bind(&inbox.event_id)
            .bind(&inbox.event_type)
            .bind(Utc::now())
            .bind(OrderStatus::Reserved.as_str())
            .bind(OrderStatus::Pending.as_str())
            .bind(NOTE_RESERVED)
            .fetch_one(&self.pool)
            .await?;
        Ok(match (ready, fresh) {
            (true, true) => Some(Applied::Done {
                status: OrderStatus::Reserved,
                notification: None,
            }),
            (true, false) => Some(Applied::Duplicate),
            (false, _) => None,
        })
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
