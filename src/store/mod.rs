//! Storage: PostgreSQL (production) and SQLite (zero-install default) behind
//! one interface. The SQL is shared (`sql.rs`, instantiated per backend);
//! what differs — column types for money, id lists, wake-ups, the relay lock —
//! lives in each backend's file.

mod group_commit;
mod postgres;
mod sql;
mod sqlite;
mod tx_steps;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::{DatabaseSettings, DatabaseUrl};
use crate::domain::{InventoryLevel, NewOrder, Order, OrderId, OrderStatus, OrderSummary};
use crate::events::{EventType, NewEvent};

/// The statements behind PostgreSQL's one-round-trip create and reserve,
/// for one order and for a group, and how many groups are written at once;
/// the benchmark runs them through pgbench as the limits to compare with.
pub use postgres::{
    PgStore, CREATE_ORDERS_SQL, CREATE_ORDER_SQL, RESERVE_MANY_SQL, RESERVE_SQL, WRITE_LANES,
};
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} not found")]
    NotFound(OrderId),
    #[error("order {id} is {current}; it cannot become {target}")]
    Conflict {
        id: OrderId,
        current: OrderStatus,
        target: OrderStatus,
    },
    #[error("the Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    // The cause is in the message, not also a `source`: error chains
    // would print it twice.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
            // A connection cut mid-message surfaces as a protocol error.
            | sqlx::Error::Protocol(_) => Self::Unavailable(e),
            sqlx::Error::Database(ref db) if db.code().is_some_and(|c| lost_connection(&c)) => {
                Self::Unavailable(e)
            }
            other => Self::Database(other),
        }
    }
}

/// SQLSTATEs of a server that is going away or not taking connections:
/// class 08 (connection exception), shutdown (57P01-57P03), too many
/// connections (53300).
fn lost_connection(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

impl StoreError {
    /// Whether retrying later may succeed (the database is down or busy),
    /// as opposed to a request or data that will never work.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            // A violated constraint will be violated again.
            Self::Database(sqlx::Error::Database(e)) => {
                matches!(e.kind(), sqlx::error::ErrorKind::Other)
            }
            // Decoding and type errors are bugs or bad data: retrying
            // cannot help.
            _ => false,
        }
    }
}

/// What a backend's `write_order` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    Created,
    /// The Idempotency-Key belongs to an earlier order: nothing was written.
    KeyTaken,
}

/// `Idempotency-Key` of a POST, with a hash of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub key: String,
    pub request_hash: String,
}

#[derive(Debug, Clone)]
pub struct Created {
    pub order: Order,
    /// The key had been used before with the same request: this is the
    /// original order, nothing new was written.
    pub replayed: bool,
}

/// A state change: the order moves from `to.predecessor()` to `to`, with a
/// timeline note and, optionally, the event it emits.
#[derive(Debug, Clone)]
pub struct Transition {
    pub to: OrderStatus,
    pub note: String,
    pub event: Option<NewEvent>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    pub id: i64,
    pub event_id: Uuid,
    pub destination: String,
    pub key: String,
    pub event_type: String,
    pub payload: String,
    pub traceparent: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxBacklog {
    pub rows: i64,
    pub oldest: Option<DateTime<Utc>>,
}

/// Which outbox rows a relay reads: one destination only, or all but one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxFilter {
    pub only: Option<&'static str>,
    pub except: Option<&'static str>,
}

/// The inbox row that makes a handled event's re-delivery a no-op.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    pub consumer_group: String,
    pub event_id: String,
    pub event_type: String,
    /// The trace context the events this effect emits carry on.
    pub traceparent: Option<String>,
}

/// What a handler's decision writes besides its transition, in the same
/// transaction as the transition and the inbox row. The store executes it;
/// what it means (and what to do when it cannot be done) is the handler's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Take the stock of every tracked product of the order, all or nothing:
    /// if one is short, nothing is written and [`Applied::Short`] says which.
    TakeStock,
    /// A shipment request row for the order.
    RequestShipment { payment_id: String },
    /// A notification row, to be sent after commit; if it is still unsent
    /// at `retry_at` (the process died before sending), the reconciler's
    /// sweep sends it.
    RecordNotification {
        notification: Notification,
        retry_at: DateTime<Utc>,
    },
    /// Only the transition.
    Nothing,
}

/// A message for a customer, recorded with the change that causes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub order_id: OrderId,
    pub recipient: String,
    pub text: String,
}

/// A tracked product without enough stock for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub product: String,
    pub wanted: i64,
    pub on_hand: i64,
}

/// Whom an order belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The effect and transition happened; the order now has this status.
    Done { status: OrderStatus },
    /// The inbox already had the event: nothing was done again.
    Duplicate,
    /// [`Effect::TakeStock`] found these products short: nothing was
    /// written, the inbox row neither.
    Short(Vec<Shortage>),
}

/// An order the pipeline should have moved on and has not: it awaits the
/// event `event_id` (of the type [`EventType::awaited_in`] gives for its
/// status), which is neither handled (no inbox row) nor waiting in the
/// outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckOrder {
    pub order_id: OrderId,
    pub status: OrderStatus,
    /// When the order entered its status.
    pub since: DateTime<Utc>,
    pub event_id: Uuid,
    pub event_type: EventType,
    /// How often this event was re-driven before, and when last.
    pub redrives: u32,
    pub last_redrive: Option<DateTime<Utc>>,
}

/// A notification not yet sent, and how many sends failed so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsentNotification {
    pub notification: Notification,
    pub attempts: u32,
}

/// What becomes of a notification whose send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotificationRetry {
    /// Try again at this time.
    At(DateTime<Utc>),
    /// Give up: the order's timeline gets this note.
    GiveUp { note: String },
}

/// Proof that this process may relay the outbox now. Held for as long as the
/// relay runs; dropping it gives the role up.
#[async_trait]
pub trait RelayLease: Send {
    /// False once the lease is lost (its database session ended).
    async fn still_held(&mut self) -> bool;
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn migrate(&self) -> Result<(), StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_order(
        &self,
        order: &NewOrder,
        idempotency: Option<&IdempotencyKey>,
        traceparent: Option<String>,
    ) -> Result<Created, StoreError>;
    async fn get_order(&self, id: OrderId) -> Result<Option<Order>, StoreError>;
    /// How many orders are in each status (statuses without orders absent).
    async fn count_by_status(&self) -> Result<Vec<(OrderStatus, i64)>, StoreError>;
    /// Newest first; `after` is the last id of the previous page.
    async fn list_orders(
        &self,
        status: Option<OrderStatus>,
        after: Option<OrderId>,
        limit: u32,
    ) -> Result<Vec<OrderSummary>, StoreError>;
    /// How many orders were created since each of two instants (by the
    /// time in their ids, [`OrderId::minted_from`]), counted in one
    /// snapshot: a range of the primary key, as cheap as the orders since
    /// the earlier instant are few.
    async fn orders_created_since(&self, since: [DateTime<Utc>; 2])
        -> Result<[i64; 2], StoreError>;
    async fn transition(&self, id: OrderId, change: Transition) -> Result<Order, StoreError>;
    /// A handler's effect, its transition (with any event it emits) and its
    /// inbox row, atomically.
    async fn apply(
        &self,
        inbox: &InboxEntry,
        order_id: OrderId,
        effect: &Effect,
        change: &Transition,
    ) -> Result<Applied, StoreError>;
    async fn customer(&self, id: OrderId) -> Result<Option<Customer>, StoreError>;
    async fn mark_notification_sent(&self, order_id: OrderId) -> Result<(), StoreError>;
    /// Records a failed send of the order's notification: one attempt more,
    /// and when to try again or that it was given up.
    async fn mark_notification_failed(
        &self,
        order_id: OrderId,
        error: &str,
        retry: &NotificationRetry,
    ) -> Result<(), StoreError>;
    /// Unsent notifications due by `now`, oldest due first.
    async fn notifications_due(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<UnsentNotification>, StoreError>;

    /// Orders in a status a handler moves them out of, unchanged since
    /// before `unchanged_since`, whose awaited event has no inbox row for
    /// `consumer_group` and no unpublished outbox row; longest stuck first
    /// (then by id), after `after` (the last of the previous page).
    async fn stuck_orders(
        &self,
        consumer_group: &str,
        unchanged_since: DateTime<Utc>,
        after: Option<&StuckOrder>,
        limit: usize,
    ) -> Result<Vec<StuckOrder>, StoreError>;
    /// Writes the stuck order's event to the outbox again, with its
    /// original id, and counts the re-drive; false (nothing written) if the
    /// order has moved on or the event was handled meanwhile.
    async fn redrive(&self, consumer_group: &str, order: &StuckOrder) -> Result<bool, StoreError>;

    async fn put_inventory(
        &self,
        product: &str,
        on_hand: i64,
    ) -> Result<InventoryLevel, StoreError>;
    async fn get_inventory(&self, product: &str) -> Result<Option<InventoryLevel>, StoreError>;
    /// Tracked products in the order of their names (the database's text
    /// order, the primary key's); `after` is the last name of the previous
    /// page.
    async fn list_inventory(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<InventoryLevel>, StoreError>;

    /// Unpublished rows in commit order of each order's events, but for
    /// the rows in `skip` (the batch still being delivered while the next
    /// is read ahead). Exactly those: a row whose id lies between two of
    /// them committed later, and an event of its order may follow it.
    async fn outbox_pending(
        &self,
        limit: usize,
        filter: &OutboxFilter,
        skip: &[i64],
    ) -> Result<Vec<OutboxRecord>, StoreError>;
    async fn outbox_mark_published(&self, ids: &[i64]) -> Result<(), StoreError>;
    /// Deletes published rows (nothing is retained).
    async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError>;
    async fn outbox_purge(&self, published_before: DateTime<Utc>) -> Result<u64, StoreError>;
    async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError>;
    /// Returns when new outbox rows may be waiting, or after `timeout`.
    async fn wait_for_outbox(&self, timeout: Duration);
    /// The relay lease called `name`, if no other process holds it.
    async fn try_relay_lease(&self, name: &str) -> Result<Option<Box<dyn RelayLease>>, StoreError>;
}

pub type SharedStore = Arc<dyn Store>;

/// Connects to the configured backend. Migrations are run separately
/// ([`Store::migrate`]) so `orderflow migrate` and start-up share them.
pub async fn connect(settings: &DatabaseSettings) -> Result<SharedStore, StoreError> {
    Ok(match &settings.url {
        DatabaseUrl::Postgres(url) => {
            let mut options: sqlx::postgres::PgConnectOptions = url.parse()?;
            // Config keys win over the URL's sslmode/sslrootcert, so a
            // secret URL and a mounted CA file can come from separate places.
            if let Some(mode) = settings.ssl_mode {
                options = options.ssl_mode(mode);
            }
            if let Some(root) = &settings.ssl_root_cert {
                options = options.ssl_root_cert(root);
            }
            Arc::new(PgStore::connect(options, settings.max_connections).await?)
        }
        DatabaseUrl::Sqlite(url) => Arc::new(SqliteStore::connect(url).await?),
    })
}
