//! PostgreSQL backend: exact NUMERIC money, LISTEN/NOTIFY wake-ups for relays
//! in other processes, and an advisory lock that elects one relay.

use std::sync::Arc;

use rust_decimal::Decimal;
use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::{mpsc, Mutex, Notify};

use super::group_commit::GroupCommit;

mod grouped;
mod statements;

use grouped::{create_orders, reserve_orders, OrderWrite, Reservation};
pub use statements::{CREATE_ORDERS_SQL, CREATE_ORDER_SQL, RESERVE_MANY_SQL, RESERVE_SQL};

type Db = sqlx::Postgres;

const OUTBOX_CHANNEL: &str = "orderflow_outbox";
/// At most one NOTIFY per this long per process: a relay in another process
/// hears of new rows within it, and a NOTIFY per order under load costs the
/// API a good part of its throughput (BENCHMARKS.md, "Figures behind the
/// code").
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
const EVENT_QUEUED: &str = "EXISTS (SELECT 1 FROM outbox q \
     WHERE q.event_id = o.event_id::uuid AND q.published_at IS NULL)";

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
    /// bitmap scan: the unpublished-outbox index keeps an entry for every
    /// row published since the last vacuum, and a bitmap scan visits them
    /// all on every read and never learns they are dead, where the ordered
    /// index scan marks them once and skips them after. Each statement is
    /// planned for its values: only then does PostgreSQL hash the
    /// read-ahead's list of in-flight ids (`id <> ALL($6)`) instead of
    /// comparing every row with every id. Figures: BENCHMARKS.md, "Figures
    /// behind the code".
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
    /// PostgreSQL, a TLS handshake) costs a standby process a large share of
    /// a core (BENCHMARKS.md, "Figures behind the code").
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
