//! Apache Kafka for the tests: a cluster of KRaft nodes (each a combined
//! broker and controller) on 127.0.0.1, started from the jars that
//! `tests/kafka/fetch.sh` puts in `$ORDERFLOW_KAFKA_HOME/libs` (default
//! `/var/tmp/orderflow-kafka`; `bash .ci/run` fetches them).
//!
//! Every node has a PLAINTEXT listener (clients and replication), a
//! SASL_SSL listener (SCRAM-SHA-512, a certificate from a CA made here) and
//! its controller listener; topics are never auto-created and
//! `min.insync.replicas` is 2, as production clusters run (a single node:
//! replication 1 and `min.insync.replicas` 1). Nodes can be
//! stopped (SIGTERM), killed (SIGKILL) and restarted on the same storage.
//!
//! The nodes die with the test process (see `children`): a test binary that
//! ends, panics or is killed leaves no broker behind.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::children::spawn_bound_to_process;
use super::proxy::TcpProxy;
use super::tls;

/// The SCRAM-SHA-512 user every node knows from the start.
pub const SASL_USER: &str = "orderflow";
pub const SASL_PASSWORD: &str = "orderflow-test-secret";

/// How a cluster is laid out.
#[derive(Debug, Clone, Copy)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Clients reach each node through a [`TcpProxy`] of the test (its
    /// advertised address), so a test can cut one node off the clients
    /// while replication between the nodes goes on. Needs a tokio runtime.
    pub proxied: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            proxied: false,
        }
    }
}

struct Ports {
    plaintext: u16,
    sasl_ssl: u16,
    controller: u16,
    /// The listener behind the node's proxy, when proxied.
    proxied: Option<u16>,
}

struct Node {
    id: i32,
    ports: Ports,
    properties: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

pub struct KafkaCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    proxies: Vec<TcpProxy>,
    pub ca_cert: PathBuf,
}

const DIR_PREFIX: &str = "orderflow-kafka-";

/// The shared cluster lives until the test process exits, which drops no
/// static: its nodes die with the process, its directory stays. Later runs
/// remove directories whose owner is gone.
fn remove_abandoned_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join("owner.pid")).unwrap_or_default();
        let alive = !owner.is_empty() && Path::new("/proc").join(owner.trim()).exists();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Where the jars are; a clear failure when they are not.
fn libs() -> PathBuf {
    let home =
        std::env::var("ORDERFLOW_KAFKA_HOME").unwrap_or_else(|_| "/var/tmp/orderflow-kafka".into());
    let libs = Path::new(&home).join("libs");
    let has_broker = std::fs::read_dir(&libs)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("kafka_2.13-"))
        })
        .unwrap_or(false);
    assert!(
        has_broker,
        "Apache Kafka's jars are not in {} . Fetch them with `tests/kafka/fetch.sh` \
         (Java 17 and Maven needed; `bash .ci/run` does it), or point ORDERFLOW_KAFKA_HOME \
         at a directory whose libs/ holds them.",
        libs.display()
    );
    libs
}

/// A free port below Linux's ephemeral range (32768-60999). A node's port
/// must still be free when the node restarts, and one from the ephemeral
/// range is not: while the node is down, a client reconnecting to it can be
/// given that very port as its source port and connect to itself (TCP
/// simultaneous open), holding it; the restarted node then fails to bind.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    // Start from a point that differs between runs, so that a stale node of
    // an earlier run rarely sits on the ports probed first.
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new(std::process::id()));
    for _ in 0..12_000 {
        let port = 20_000 + (next.fetch_add(1, Ordering::Relaxed) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in 20000-31999")
}

/// JVM settings for a test node: a small heap, and the C1 compiler only,
/// which starts a node in a third of the time on two cores. A benchmark
/// wants the full JIT: `ORDERFLOW_KAFKA_JVM_OPTS` replaces these.
fn jvm_options() -> Vec<String> {
    std::env::var("ORDERFLOW_KAFKA_JVM_OPTS")
        .unwrap_or_else(|_| {
            "-Xms128m -Xmx768m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k".into()
        })
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// A Kafka cluster id: 16 random bytes in URL-safe base64, as
/// `kafka-storage.sh random-uuid` prints (without paying a JVM start).
fn cluster_id() -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

const LOG4J2: &str = "Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: \"[%d] %p %m (%c)%n\"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.storage
        level: WARN
      - name: kafka.log
        level: WARN
";

/// What every node's properties share.
struct Layout<'a> {
    dir: &'a Path,
    voters: &'a str,
    keystore: &'a Path,
    replication: usize,
}

impl Layout<'_> {
    /// Writes node `id`'s properties file; the node, not started. `proxy`
    /// is where clients reach it, when proxied.
    fn node(&self, id: i32, ports: Ports, proxy: Option<SocketAddr>) -> Node {
        // As `log_dir` finds it.
        let data = self.dir.join(format!("node-{id}"));
        let mut listeners = vec![
            format!("PLAINTEXT://127.0.0.1:{}", ports.plaintext),
            format!("SASL_SSL://127.0.0.1:{}", ports.sasl_ssl),
            format!("CONTROLLER://127.0.0.1:{}", ports.controller),
        ];
        let mut advertised = vec![
            format!("PLAINTEXT://127.0.0.1:{}", ports.plaintext),
            format!("SASL_SSL://127.0.0.1:{}", ports.sasl_ssl),
        ];
        if let (Some(port), Some(proxy)) = (ports.proxied, proxy) {
            listeners.push(format!("PROXIED://127.0.0.1:{port}"));
            advertised.push(format!("PROXIED://{proxy}"));
        }
        let properties = format!(
            "process.roles=broker,controller
node.id={id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners={listeners}
advertised.listeners={advertised}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT,PROXIED:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
log.dirs={data}
auto.create.topics.enable=false
min.insync.replicas={min_isr}
default.replication.factor={replication}
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
share.coordinator.state.topic.replication.factor={replication}
share.coordinator.state.topic.min.isr={min_isr}
group.initial.rebalance.delay.ms=0
# KIP-848 groups get the session the tests give classic ones
# (Worker.SessionTimeoutMs = 6000): the broker sets it for them.
group.consumer.min.session.timeout.ms=1000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=2000
num.network.threads=2
num.io.threads=4
",
            listeners = listeners.join(","),
            advertised = advertised.join(","),
            keystore = self.keystore.display(),
            data = data.display(),
            min_isr = self.replication.min(2),
            voters = self.voters,
            replication = self.replication,
        );
        let path = self.dir.join(format!("node-{id}.properties"));
        std::fs::write(&path, properties).expect("write node properties");
        Node {
            id,
            ports,
            properties: path,
            log: self.dir.join(format!("node-{id}.log")),
            child: Mutex::new(None),
        }
    }
}

impl KafkaCluster {
    /// The cluster the tests of this process share (started on first use).
    /// Tests on it use topic and group names of their own.
    pub fn shared() -> Arc<KafkaCluster> {
        static SHARED: OnceLock<Arc<KafkaCluster>> = OnceLock::new();
        SHARED
            .get_or_init(|| Arc::new(Self::start(ClusterOptions::default())))
            .clone()
    }

    /// A cluster of its own, for a test that stops or cuts nodes.
    pub fn start(options: ClusterOptions) -> Self {
        let begun = Instant::now();
        let libs = libs();
        remove_abandoned_clusters();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("temp dir");
        std::fs::write(dir.path().join("owner.pid"), std::process::id().to_string())
            .expect("write owner.pid");
        let pki = tls::make_pki(dir.path(), "orderflow Kafka test CA");
        // Kafka reads a PEM key store as the private key and its chain in
        // one file.
        let keystore = dir.path().join("node-keystore.pem");
        let key = std::fs::read_to_string(&pki.server_key).expect("server key");
        let cert = std::fs::read_to_string(&pki.server_cert).expect("server certificate");
        std::fs::write(&keystore, format!("{key}{cert}")).expect("write key store");
        std::fs::write(dir.path().join("log4j2.yaml"), LOG4J2).expect("write log4j2.yaml");

        let ports: Vec<Ports> = (0..options.nodes)
            .map(|_| Ports {
                plaintext: free_port(),
                sasl_ssl: free_port(),
                controller: free_port(),
                proxied: options.proxied.then(free_port),
            })
            .collect();
        let proxies: Vec<TcpProxy> = ports
            .iter()
            .filter_map(|p| p.proxied)
            .map(|port| TcpProxy::start(SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{}", i + 1, p.controller))
            .collect::<Vec<_>>()
            .join(",");
        let replication = options.nodes.min(3);
        let nodes: Vec<Node> = ports
            .into_iter()
            .enumerate()
            .map(|(i, ports)| {
                let layout = Layout {
                    dir: dir.path(),
                    voters: &voters,
                    keystore: &keystore,
                    replication,
                };
                layout.node(i as i32 + 1, ports, proxies.get(i).map(|p| p.addr))
            })
            .collect();

        let cluster = Self {
            ca_cert: pki.ca_cert.clone(),
            dir,
            nodes,
            proxies,
        };
        cluster.format(&libs);
        for node in &cluster.nodes {
            cluster.launch(node);
        }
        cluster.wait_for_brokers(options.nodes, Duration::from_secs(120));
        eprintln!(
            "Apache Kafka: {} nodes ready in {:.1} s at {} (SASL_SSL {}; logs in {})",
            options.nodes,
            begun.elapsed().as_secs_f64(),
            cluster.bootstrap_servers(),
            cluster.sasl_ssl_bootstrap_servers(),
            cluster.dir.path().display()
        );
        cluster
    }

    fn java(&self, libs: &Path) -> Command {
        let mut command = Command::new("java");
        command
            .args(jvm_options())
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.dir.path().join("log4j2.yaml").display()
            ))
            .arg("-cp")
            .arg(format!("{}/*", libs.display()));
        command
    }

    /// Formats every node's storage with one cluster id and the SCRAM user,
    /// the nodes in parallel (each is a JVM start).
    fn format(&self, libs: &Path) {
        let id = cluster_id();
        let scram = format!("SCRAM-SHA-512=[name={SASL_USER},password={SASL_PASSWORD}]");
        let formats: Vec<_> = self
            .nodes
            .iter()
            .map(|node| {
                let mut command = self.java(libs);
                command
                    // `=`: an id may begin with '-', which a separate
                    // argument would read as an option.
                    .args(["kafka.tools.StorageTool", "format"])
                    .arg(format!("--cluster-id={id}"))
                    .arg("-c")
                    .arg(&node.properties)
                    .args(["--add-scram", &scram]);
                command.output()
            })
            .collect();
        for (node, output) in self.nodes.iter().zip(formats) {
            let output = output.unwrap_or_else(|e| {
                panic!("cannot run java (Java 17 is needed: apt-get install openjdk-17-jre-headless): {e}")
            });
            assert!(
                output.status.success(),
                "formatting node {}'s storage failed:\n{}{}",
                node.id,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    fn launch(&self, node: &Node) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("node log file");
        let mut command = self.java(&libs());
        command
            .arg("kafka.Kafka")
            .arg(&node.properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file handle"))
            .stderr(log);
        let child = spawn_bound_to_process(command).expect("start a Kafka node");
        *node.child.lock().expect("node") = Some(child);
    }

    fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Where node `id` keeps its partitions (`<topic>-<partition>/`).
    pub fn log_dir(&self, id: i32) -> PathBuf {
        self.dir.path().join(format!("node-{}", self.node(id).id))
    }

    /// The replication factor of the cluster's topics: 3, or every node of
    /// a smaller cluster (a single node takes replication 1 and
    /// `min.insync.replicas` 1).
    pub fn replication(&self) -> i32 {
        self.nodes.len().min(3) as i32
    }

    /// The bootstrap list clients use (the proxies when proxied).
    pub fn bootstrap_servers(&self) -> String {
        if self.proxies.is_empty() {
            self.list(|n| Some(n.ports.plaintext))
        } else {
            self.proxies
                .iter()
                .map(|p| p.addr.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    }

    /// The SASL_SSL (SCRAM-SHA-512) listeners.
    pub fn sasl_ssl_bootstrap_servers(&self) -> String {
        self.list(|n| Some(n.ports.sasl_ssl))
    }

    fn list(&self, port: impl Fn(&Node) -> Option<u16>) -> String {
        self.nodes
            .iter()
            .filter_map(|n| port(n).map(|p| format!("127.0.0.1:{p}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn metadata_client(&self) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", self.list(|n| Some(n.ports.plaintext)))
            .set("log_level", "0")
            .create()
            .expect("metadata client")
    }

    fn live_brokers(&self) -> Vec<i32> {
        self.metadata_client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|m| m.brokers().iter().map(|b| b.id()).collect())
            .unwrap_or_default()
    }

    fn wait_for(&self, what: &str, within: Duration, done: impl Fn(&[i32]) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live_brokers();
            if done(&live) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "Apache Kafka: {what} not within {within:?} (live: {live:?}).\n{}",
                    self.log_tails()
                );
            }
            for node in &self.nodes {
                let mut child = node.child.lock().expect("node");
                if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
                    panic!(
                        "Apache Kafka node {} exited ({status}).\n{}",
                        node.id,
                        self.log_tails()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_for_brokers(&self, count: usize, within: Duration) {
        self.wait_for(&format!("{count} brokers"), within, |live| {
            live.len() >= count
        });
    }

    /// The last lines of every node's log, for a failure message.
    pub fn log_tails(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                format!("--- node {} ({})\n{tail}", n.id, n.log.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Faults: nodes stopped, killed, cut off and started again. The proof
/// suite's scenarios use them; the integration tests only share a cluster.
#[allow(
    dead_code,
    reason = "the proof suite and examples/kafka_cluster.rs use these; the integration binary does not"
)]
impl KafkaCluster {
    /// Node ids, 1-based.
    pub fn node_ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The proxy between the clients and node `id` (proxied clusters).
    pub fn proxy(&self, id: i32) -> &TcpProxy {
        let index = self
            .nodes
            .iter()
            .position(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"));
        self.proxies
            .get(index)
            .expect("the cluster was started with proxied = true")
    }

    fn signal(&self, id: i32, signal: i32) -> Option<Child> {
        let child = self.node(id).child.lock().expect("node").take()?;
        // SAFETY: kill(2) on a pid this process owns and has not reaped.
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        Some(child)
    }

    /// SIGTERM: a controlled shutdown (leadership moves first); waits for
    /// the node to exit.
    pub fn stop(&self, id: i32) {
        if let Some(mut child) = self.signal(id, libc::SIGTERM) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.wait();
        }
    }

    /// SIGKILL: the node vanishes mid-request.
    pub fn kill(&self, id: i32) {
        if let Some(mut child) = self.signal(id, libc::SIGKILL) {
            let _ = child.wait();
        }
    }

    /// Starts a stopped or killed node again on its storage and waits until
    /// the cluster lists it.
    pub fn restart(&self, id: i32) {
        self.restart_nodes(&[id]);
    }

    /// Starts several nodes at once, then waits for all of them: one by one
    /// would wait forever for a node that needs the others for a quorum.
    pub fn restart_nodes(&self, ids: &[i32]) {
        for id in ids {
            let node = self.node(*id);
            assert!(
                node.child.lock().expect("node").is_none(),
                "node {id} is running"
            );
            self.launch(node);
        }
        self.wait_for(
            &format!("brokers {ids:?}"),
            Duration::from_secs(120),
            |live| ids.iter().all(|id| live.contains(id)),
        );
    }

    /// The node that leads `topic`'s `partition`.
    pub fn leader_of(&self, topic: &str, partition: i32) -> i32 {
        let consumer = self.metadata_client();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions())
            .find(|p| p.id() == partition)
            .map(|p| p.leader())
            .unwrap_or_else(|| panic!("{topic} has no partition {partition}"))
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            // A panic while a node's lock was held poisons it; the node
            // must still be stopped, and a second panic here would abort.
            let mut slot = node.child.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
