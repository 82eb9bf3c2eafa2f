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
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
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
