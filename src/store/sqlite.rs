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

/// The one process using the file always holds the lease.
struct LocalLease;

#[async_trait::async_trait]
impl super::RelayLease for LocalLease {
    async fn still_held(&mut self) -> bool {
        true
    }
}

super::sql::impl_store!(SqliteStore);
