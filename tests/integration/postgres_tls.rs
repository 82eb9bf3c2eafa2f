//! PostgreSQL over TLS with `sslmode=verify-full`: the test gives the local
//! server a certificate from a CA it creates, then runs the real binary
//! against it; every connection it opens is encrypted, and a server whose
//! certificate another CA signed is refused without the password showing.
//!
//! Shared beyond this process: the test turns TLS on for the whole
//! PostgreSQL server (and back off when it ends), while other tests run
//! beside it in this binary. They are unaffected: their clients (sqlx,
//! psql, and orderflow with no `Database.SslMode`) connect with `sslmode`
//! prefer, which takes TLS when the server offers it without verifying the
//! certificate, and plain TCP when it does not. No other test may depend on
//! the server's TLS being on or off.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sqlx::{Connection, PgConnection, Row};

use crate::common::{self, tls, Cluster, Role, TestBroker};

const PASSWORD: &str = "pg-Secret-Do-Not-Print-4711";

/// Restores the server's own certificate settings when the test ends,
/// however it ends.
struct ServerCertificate {
    admin_url: String,
}

impl ServerCertificate {
    async fn install(admin_url: &str, pki: &tls::Pki) -> Self {
        let mut admin = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url} ({e}); start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`"));
        let data_dir: String = sqlx::query("SHOW data_directory")
            .fetch_one(&mut admin)
            .await
            .expect(
                "SHOW data_directory needs a superuser (the test reconfigures the server's TLS)",
            )
            .get(0);
        // Inside the data directory, owned by the server's user: the key
        // must be private to it, and the files outlive this test's temp dir
        // so a later restart still finds them.
        let dir = Path::new(&data_dir).join("orderflow-test-tls");
        std::fs::create_dir_all(&dir)
            .expect("create the certificate directory (run as root or the postgres user)");
        let owner = std::fs::metadata(&data_dir).expect("data directory");
        let install = |from: &Path, name: &str| -> PathBuf {
            let to = dir.join(name);
            std::fs::copy(from, &to).expect("copy certificate file");
            std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid()))
                .expect("give the file to the server's user");
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))
                .expect("chmod 600");
            to
        };
        let cert = install(&pki.server_cert, "server.pem");
        let key = install(&pki.server_key, "server.key");
        for statement in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "ALTER SYSTEM SET ssl = on".into(),
            "SELECT pg_reload_conf()".into(),
        ] {
            sqlx::query(&statement)
                .execute(&mut admin)
                .await
                .unwrap_or_else(|e| panic!("{statement}: {e}"));
        }
        // The reload is asynchronous: wait until new sessions see it.
        let expected = cert.display().to_string();
        let seen = common::eventually(Duration::from_secs(10), || {
            let url = admin_url.to_string();
            let expected = expected.clone();
            async move {
                let mut c = PgConnection::connect(&url).await.ok()?;
                let file: String = sqlx::query("SHOW ssl_cert_file")
                    .fetch_one(&mut c)
                    .await
                    .ok()?
                    .get(0);
                (file == expected).then_some(())
            }
        })
        .await;
        assert!(
            seen.is_some(),
            "the server did not load the test certificate"
        );
        Self {
            admin_url: admin_url.to_string(),
        }
    }
}

impl Drop for ServerCertificate {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                "ALTER SYSTEM RESET ssl_cert_file",
                "-c",
                "ALTER SYSTEM RESET ssl_key_file",
                "-c",
                "ALTER SYSTEM RESET ssl",
                "-c",
                "SELECT pg_reload_conf()",
            ])
            .output();
    }
}

fn with_password(url: &str) -> String {
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{PASSWORD}@"),
        1,
    )
}

/// Connections of `database` on the server, by encryption: (encrypted,
/// plain, the lowest TLS version).
async fn connections_by_encryption(admin_url: &str, database: &str) -> (i64, i64, Option<String>) {
    let mut admin = PgConnection::connect(admin_url).await.expect("admin");
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl), \
         min(s.version) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.datname = $1",
    )
    .bind(database)
    .fetch_one(&mut admin)
    .await
    .expect("pg_stat_ssl");
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_over_tls_and_refuses_an_unknown_ca() {
    let admin_url = common::pg_admin_url();
    let dir = tempfile::tempdir().expect("temp dir");
    let trusted = dir.path().join("trusted");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&trusted).expect("dir");
    std::fs::create_dir_all(&other).expect("dir");
    let pki = tls::make_pki(&trusted, "orderflow test CA");
    let foreign = tls::make_pki(&other, "some other CA");
    let _server = ServerCertificate::install(&admin_url, &pki).await;

    let mut cluster = Cluster::builder(TestBroker::mock()).start().await;
    let url = cluster.db.url.clone();
    assert!(
        url.contains("@127.0.0.1"),
        "verify-full checks the host: {url}"
    );
    let database = url.rsplit('/').next().expect("database name").to_string();
    let ca = pki.ca_cert.display().to_string();
    // trust auth ignores the password; it is here to be not printed.
    cluster.set_env("Database__Url", &with_password(&url));
    cluster.set_env("Database__SslMode", "verify-full");
    cluster.set_env("Database__SslRootCert", &ca);

    let api = cluster.spawn(Role::Api);
    cluster
        .create_order(&common::order_body("Tls", "untracked-gadget", 1))
        .await;
    let (encrypted, plain, version) = connections_by_encryption(&admin_url, &database).await;
    println!("connections of serve-api: encrypted={encrypted} plain={plain} tls={version:?}");
    assert!(encrypted >= 1, "serve-api holds encrypted connections");
    assert_eq!(plain, 0, "no connection of serve-api is unencrypted");
    cluster.stop_within(api, Duration::from_secs(30));
    assert!(!cluster.members[api].process.log_text().contains(PASSWORD));

    // The same server, but the client trusts another CA: refused.
    let foreign_ca = foreign.ca_cert.display().to_string();
    let output = Command::new(common::binary())
        .arg("migrate")
        .envs(cluster.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("Database__SslRootCert", &foreign_ca)
        .current_dir(cluster.dir.path())
        .output()
        .expect("run orderflow migrate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "verify-full accepted a certificate from an unknown CA"
    );
    assert!(
        stderr.to_lowercase().contains("certificate"),
        "the error names the certificate problem: {stderr}"
    );
    assert!(!stderr.contains(PASSWORD), "the password leaked: {stderr}");
}
