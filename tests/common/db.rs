//! A database of its own for each test: a fresh SQLite file, or a fresh
//! PostgreSQL database on the test server.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The SQLite file lives in a temporary directory; the PostgreSQL database
/// is created fresh on the test server and dropped with this value.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    /// The PostgreSQL database this test made.
    pg_name: Option<String>,
}

/// The server where tests create their PostgreSQL databases.
pub fn pg_admin_url() -> String {
    std::env::var("ORDERFLOW_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1/test".into())
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("orderflow.db").display());
                Self {
                    url,
                    _dir: Some(dir),
                    pg_name: None,
                }
            }
            Backend::Postgres => {
                use sqlx::Connection;
                let admin = pg_admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is not reachable at {admin} ({e}). Start it with \
                         `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, \
                         or point ORDERFLOW_TEST_DATABASE_URL at a server where this user may \
                         CREATE DATABASE."
                    )
                });
                let name = format!("orderflow_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                Self {
                    url: format!("{base}/{name}"),
                    _dir: None,
                    pg_name: Some(name),
                }
            }
        }
    }

    /// A pool on this database (PostgreSQL only).
    pub async fn pg_pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.expect("pool")
    }
}

/// A test's PostgreSQL database goes with it (left behind, they piled up
/// by the dozen and kept autovacuum and the checkpointer busy in later
/// runs), unless the test failed: then it stays for a look.
impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.as_deref() else {
            return;
        };
        if std::thread::panicking() {
            return;
        }
        let _ = std::process::Command::new("psql")
            .arg(pg_admin_url())
            .args([
                "-qc",
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
