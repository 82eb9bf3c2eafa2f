//! SQLite backend, the zero-install default: money as exact decimal text,
//! one connection (SQLite has one writer; queuing in the pool beats
//! SQLITE_BUSY retries), in-process wake-ups.
//!
//! It serves one process (`orderflow all`); several processes relaying from
//! one SQLite file is not supported, use PostgreSQL for that.

use std::str::FromStr;
use std::sync::Arc;

use rust_decimal::Decimal;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Notify;

type Db = sqlx::Sqlite;

const MARK_PUBLISHED_SQL: &str =
    "UPDATE outbox SET published_at = $1 WHERE id IN (SELECT value FROM json_each($2))";
const DELETE_PUBLISHED_SQL: &str =
    "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each($1))";
const NOT_IN_ID_LIST: &str = "id NOT IN (SELECT value FROM json_each($6))";
/// Event ids are 16-byte blobs in the outbox and hyphenated text on the
/// order; the unpublished rows are few and indexed.
const EVENT_QUEUED: &str = "EXISTS (SELECT 1 FROM outbox q WHERE q.published_at IS NULL \
     AND lower(hex(q.event_id)) = replace(o.event_id, '-', ''))";

fn money_to_db(amount: Decimal) -> String {
    amount.to_string()
}

fn money_from_db(text: String) -> Result<Decimal, super::StoreError> {
    Decimal::from_str(&text)
        .map_err(|e| super::StoreError::Corrupt(format!("amount {text:?}: {e}")))
}

fn id_list(ids: &[i64]) -> String {
    let parts: Vec<String> = ids.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(","))
}

pub struct SqliteStore {
    pool: SqlitePool,
    local_wakeup: Arc<Notify>,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, super::StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            local_wakeup: Arc::new(Notify::new()),
        })
    }

    fn relay_pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Called after a commit that wrote outbox rows: the relay is in this
    /// process (one process per database file).
    fn outbox_written(&self) {
        self.local_wakeup.notify_one();
    }

    async fn run_migrations(&self) -> Result<(), super::StoreError> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn wait_outbox(&self, timeout: std::time::Duration) {
        tokio::select! {
            _ = self.local_wakeup.notified() => {}
            _ = tokio::time::sleep(timeout) => {}
        }
    }

    async fn relay_lease(
        &self,
        _name: &str,
    ) -> Result<Option<Box<dyn super::RelayLease>>, super::StoreError> {
        Ok(Some(Box::new(LocalLease)))
    }
}

impl SqliteStore {
    /// The order's rows in one transaction, statement by statement (SQLite
    /// has no data-modifying CTEs). One connection serialises writers, so
    /// the key checked first cannot be taken before the insert below.
    async fn write_order(
        &self,
        id: OrderId,
        order: &NewOrder,
        event: &NewEvent,
        idempotency: Option<&IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> Result<Written, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = idempotency {
            let taken = sqlx::query("SELECT 1 FROM idempotency_keys WHERE key = $1")
                .bind(&key.key)
                .fetch_optional(&mut *tx)
                .await?;
            if taken.is_some() {
                tx.rollback().await?;
                return Ok(Written::KeyTaken);
            }
        }
        sqlx::query(
            "INSERT INTO orders (id, status, customer_name, customer_email, customer_id, \
             total_amount, created_at, updated_at, event_id, event_payload, event_traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10)",
        )
        .bind(id.0)
        .bind(OrderStatus::Pending.as_str())
        .bind(&order.customer_name)
        .bind(&order.customer_email)
        .bind(order.customer_id.as_deref())
        .bind(money_to_db(order.total()))
        .bind(now)
        .bind(event.id.to_string())
        .bind(event.payload.to_string())
        .bind(event.traceparent.as_deref())
        .execute(&mut *tx)
        .await?;
        for (line, item) in order.items.iter().enumerate() {
            sqlx::query(
                "INSERT INTO order_items (order_id, line, product_name, quantity, unit_price) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.0)
            .bind(line as i32)
            .bind(&item.product_name)
            .bind(item.quantity)
            .bind(money_to_db(item.unit_price))
            .execute(&mut *tx)
            .await?;
        }
        insert_timeline(&mut tx, id, OrderStatus::Pending, CREATED_NOTE, now).await?;
        insert_event(&mut tx, event).await?;
        if let Some(key) = idempotency {
            sqlx::query(
                "INSERT INTO idempotency_keys (key, request_hash, order_id, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(&key.key)
            .bind(&key.request_hash)
            .bind(id.0)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Written::Created)
    }

    /// SQLite takes the general path of a reservation, statement by
    /// statement: it cannot do it in one.
    async fn take_stock_at_once(
        &self,
        _inbox: &InboxEntry,
        _order_id: OrderId,
        _change: &Transition,
    ) -> Result<Option<Applied>, StoreError> {
        Ok(None)
    }
}

/// The one process using the file always holds the lease.
struct LocalLease;

#[async_trait::async_trait]
impl super::RelayLease for LocalLease {
    async fn still_held(&mut self) -> bool {
        true
    }
}

super::sql::impl_store!(SqliteStore);
