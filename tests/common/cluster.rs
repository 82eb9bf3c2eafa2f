//! The one harness for tests that run the real binary as separate
//! processes: a fresh PostgreSQL database (optionally behind a TCP proxy
//! that can cut it off), the test's broker, the environment that points
//! `serve-api`, `run-worker` and `all` processes at both, the processes
//! themselves (started, SIGKILLed, SIGTERMed, replaced), and the waits on
//! what they do. The worker, admin and proof tests, and every other test of
//! separate processes, use it.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use orderflow::domain::OrderId;
use serde_json::Value;

use super::orders::{create_order_at, post_json, status_within};
use super::proxy::TcpProxy;
use super::{binary, config_from_env, env_for, tokio_aware, Backend, Process, TestBroker, TestDb};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
    /// `orderflow all`: both roles in one process.
    All,
}

impl Role {
    fn command(self) -> &'static str {
        match self {
            Role::Api => "serve-api",
            Role::Worker => "run-worker",
            Role::All => "all",
        }
    }

    /// Whether the process serves the order API (a worker's HTTP port is
    /// its admin port).
    fn serves_api(self) -> bool {
        self != Role::Worker
    }
}

pub struct Member {
    pub role: Role,
    pub process: Process,
    /// `http://host:port` the process serves: the API, or a worker's admin
    /// port.
    pub base: String,
    pub alive: bool,
}

pub struct Cluster {
    pub db: TestDb,
    pub broker: TestBroker,
    /// Between the processes and PostgreSQL, when started with
    /// [`ClusterBuilder::pg_proxy`].
    pub pg_proxy: Option<TcpProxy>,
    /// What every process of the cluster is started with.
    pub env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub members: Vec<Member>,
    /// The live API addresses, as a load balancer has them: processes come
    /// and go.
    pub bases: Arc<RwLock<Vec<String>>>,
    pub http: reqwest::Client,
}

/// Replaces `key`'s value in `env`, or adds it.
pub fn set_env(env: &mut Vec<(String, String)>, key: &str, value: &str) {
    env.retain(|(k, _)| k != key);
    env.push((key.to_string(), value.to_string()));
}

pub struct ClusterBuilder {
    broker: TestBroker,
    env: Vec<(String, String)>,
    pg_proxy: bool,
    apis: usize,
    workers: usize,
}

impl ClusterBuilder {
    /// A setting on top of the test environment (`env_for`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        set_env(&mut self.env, key, value);
        self
    }

    /// The processes reach PostgreSQL through a proxy that can cut it.
    pub fn pg_proxy(mut self) -> Self {
        self.pg_proxy = true;
        self
    }

    /// `serve-api` processes started with the cluster.
    pub fn apis(mut self, n: usize) -> Self {
        self.apis = n;
        self
    }

    /// `run-worker` processes started with the cluster, after the APIs.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// A fresh PostgreSQL database, then the processes, each serving HTTP.
    pub async fn start(self) -> Cluster {
        let db = TestDb::new(Backend::Postgres).await;
        let mut env = env_for(&db, &self.broker);
        let pg_proxy = self.pg_proxy.then(|| {
            let proxy = TcpProxy::start(upstream_of(&db.url));
            let proxied = db
                .url
                .replacen(host_of(&db.url), &proxy.addr.to_string(), 1);
            set_env(&mut env, "Database__Url", &proxied);
            proxy
        });
        for (k, v) in &self.env {
            set_env(&mut env, k, v);
        }
        let mut cluster = Cluster {
            db,
            broker: self.broker,
            pg_proxy,
            env,
            dir: tempfile::tempdir().expect("temp dir"),
            members: Vec::new(),
            bases: Arc::new(RwLock::new(Vec::new())),
            http: reqwest::Client::new(),
        };
        for _ in 0..self.apis {
            cluster.spawn(Role::Api);
        }
        for _ in 0..self.workers {
            cluster.spawn(Role::Worker);
        }
        cluster
    }
}

/// `host[:port]` of `postgres://user[:pw]@host[:port]/db`.
fn host_of(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.rsplit('@').next())
        .expect("PostgreSQL URL with a host")
}

fn upstream_of(url: &str) -> SocketAddr {
    let authority = host_of(url);
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:5432")
    };
    with_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("PostgreSQL host:port")
}

impl Cluster {
    /// A cluster on `broker` and a fresh PostgreSQL database; no process
    /// runs until [`ClusterBuilder::apis`], [`ClusterBuilder::workers`] or
    /// [`Cluster::spawn`] says so.
    pub fn builder(broker: TestBroker) -> ClusterBuilder {
        ClusterBuilder {
            broker,
            env: Vec::new(),
            pg_proxy: false,
            apis: 0,
            workers: 0,
        }
    }

    /// Changes a setting for the processes started from now on.
    pub fn set_env(&mut self, key: &str, value: &str) {
        set_env(&mut self.env, key, value);
    }

    /// Starts a process of `role` and waits until it serves HTTP; returns
    /// its index in `members`.
    pub fn spawn(&mut self, role: Role) -> usize {
        let mut process = self.launch(&[role.command()], &self.env);
        let base = tokio_aware(|| format!("http://{}", process.http_addr()));
        if role.serves_api() {
            self.bases.write().expect("bases").push(base.clone());
        }
        self.members.push(Member {
            role,
            process,
            base,
            alive: true,
        });
        self.members.len() - 1
    }

    /// A process of the binary in the cluster's directory with `env`,
    /// neither waited for nor a member (one expected to fail, say).
    pub fn launch(&self, args: &[&str], env: &[(String, String)]) -> Process {
        Process::spawn(args, env, self.dir.path())
    }

    /// The first live API's address.
    pub fn base(&self) -> String {
        self.bases
            .read()
            .expect("bases")
            .first()
            .cloned()
            .expect("an API process is running")
    }

    /// The running members of `role`, oldest first.
    pub fn live(&self, role: Role) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].role == role && self.members[*i].alive)
            .collect()
    }

    /// The admin addresses of the running workers.
    pub fn worker_admins(&self) -> Vec<String> {
        self.live(Role::Worker)
            .into_iter()
            .map(|i| self.members[i].base.clone())
            .collect()
    }

    /// Waits until every running worker has been assigned partitions.
    pub fn wait_until_assigned(&mut self) {
        for i in self.live(Role::Worker) {
            let process = &mut self.members[i].process;
            tokio_aware(|| process.wait_for_log("partitions assigned", Duration::from_secs(60)));
        }
    }

    /// Waits until every running worker owns partitions: the group has
    /// formed and spread them (for fewer workers than partitions), so what
    /// follows is not the group's forming.
    #[allow(
        dead_code,
        reason = "the proof suite's rebalancing scenario waits for it"
    )]
    pub fn wait_until_each_worker_owns_partitions(&mut self) {
        for i in self.live(Role::Worker) {
            let process = &self.members[i].process;
            let owns = tokio_aware(|| {
                super::wait::poll(Duration::from_secs(60), Duration::from_millis(100), || {
                    process
                        .log_lines("partitions assigned")
                        .iter()
                        .any(|l| l["partitions"] != "[]")
                        .then_some(())
                })
            });
            assert!(
                owns.is_some(),
                "worker {i} owns no partition after 60 s:\n{}",
                process.log_text()
            );
        }
    }

    /// Takes the member out of the load balancer, as a terminating pod is.
    fn retire(&mut self, i: usize) {
        let member = &mut self.members[i];
        member.alive = false;
        if member.role.serves_api() {
            self.bases
                .write()
                .expect("bases")
                .retain(|b| b != &member.base);
        }
    }

    /// SIGKILL: no drain, no commit, no goodbye.
    #[allow(dead_code, reason = "the proof suite's faults")]
    pub fn kill(&mut self, i: usize) {
        self.retire(i);
        let process = &mut self.members[i].process;
        tokio_aware(|| {
            process.signal("KILL");
            process.wait_exit(Duration::from_secs(10));
        });
    }

    /// SIGTERM, as Kubernetes sends; the process must drain and exit 0
    /// within 60 s.
    pub fn stop(&mut self, i: usize) {
        self.stop_within(i, Duration::from_secs(60));
    }

    /// As [`Self::stop`], the exit due within `within`.
    pub fn stop_within(&mut self, i: usize, within: Duration) {
        self.retire(i);
        let process = &mut self.members[i].process;
        let code = tokio_aware(|| {
            process.signal("TERM");
            process.wait_exit(within)
        });
        assert_eq!(code, Some(0), "graceful exit:\n{}", process.log_text());
    }

    /// Everything the members of `role` logged.
    pub fn logs(&self, role: Role) -> String {
        self.members
            .iter()
            .filter(|m| m.role == role)
            .map(|m| m.process.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// `POST /api/orders` on the first live API, expecting 201.
    pub async fn create_order(&self, body: &Value) -> OrderId {
        create_order_at(&self.http, &self.base(), body).await
    }

    /// `GET /api/orders/{id}` on the first live API: the order.
    pub async fn order(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/api/orders/{id}", self.base()))
            .send()
            .await
            .expect("GET order")
            .json()
            .await
            .expect("order")
    }

    /// `POST path` on the first live API; the status code.
    pub async fn post(&self, path: &str, body: Value) -> u16 {
        post_json(&self.http, &self.base(), path, &body).await
    }

    /// Polls the order until it has `status`; fails with the workers' logs.
    pub async fn wait_for_status(&self, id: OrderId, status: &str, within: Duration) -> Value {
        let id = id.to_string();
        let order = status_within(&self.http, &self.base(), &id, status, within).await;
        order.unwrap_or_else(|| {
            panic!(
                "order {id} never reached {status}; worker logs:\n{}",
                self.logs(Role::Worker)
            )
        })
    }

    /// A command of the binary (`dlq list`, say) with the cluster's
    /// environment; its standard output.
    pub fn orderflow(&self, args: &[&str]) -> String {
        let output = Command::new(binary())
            .args(args)
            .envs(self.env.iter().cloned())
            .current_dir(self.dir.path())
            .stderr(Stdio::inherit())
            .output()
            .expect("run orderflow");
        assert!(output.status.success(), "orderflow {args:?} failed");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A proxy of the test's own to the cluster's database, and the URL
    /// through it: give it to one process (`set_env` before `spawn`) to cut
    /// that process off alone.
    #[allow(dead_code, reason = "the integration tests' rebalance cases")]
    pub fn db_proxy(&self) -> (TcpProxy, String) {
        let proxy = TcpProxy::start(upstream_of(&self.db.url));
        let url = self
            .db
            .url
            .replacen(host_of(&self.db.url), &proxy.addr.to_string(), 1);
        (proxy, url)
    }

    /// The store on the cluster's database, straight (not through the
    /// proxy), as an operator's tool would reach it.
    pub async fn store(&self) -> orderflow::store::SharedStore {
        let config = config_from_env(env_for(&self.db, &self.broker));
        orderflow::store::connect(&config.database)
            .await
            .expect("store")
    }
}
