//! Kafka client security: the librdkafka properties each protocol sets; a
//! real TLS peer (`openssl s_server`, demanding a client certificate) that
//! the binary's Kafka clients complete a mutual-TLS handshake with; and
//! SASL_SSL with SCRAM-SHA-512 against the Apache Kafka cluster's TLS
//! listeners: a whole order lifecycle, a wrong password and a wrong CA.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderflow::brokers::Brokers;
use orderflow::config::PropertyValue;

use crate::common::cluster::set_env;
use crate::common::kafka_cluster::{SASL_PASSWORD, SASL_USER};
use crate::common::wait::poll;
use crate::common::{self, tls, Cluster, Process, Role, TestBroker};

const PASSWORD: &str = "kafka-Api-Secret-8d41f0";
const KEY_PASSWORD: &str = "key-Passphrase-77c2";

fn config_for(env: &[(&str, &str)]) -> orderflow::config::Config {
    let mut all = vec![("KafkaConfiguration__ServerUrl", "broker.example.test:9093")];
    all.extend_from_slice(env);
    common::config_from_env(
        all.into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The properties as `key=value` lines, secrets shown as `<secret>`.
fn shown(config: &orderflow::config::Config) -> Vec<String> {
    config
        .kafka
        .security
        .properties()
        .into_iter()
        .map(|(k, v)| match v {
            PropertyValue::Plain(v) => format!("{k}={v}"),
            PropertyValue::Secret(_) => format!("{k}=<secret>"),
        })
        .collect()
}

/// Environment settings of one case.
type Settings<'a> = Vec<(&'a str, &'a str)>;

/// Each protocol's settings and the librdkafka properties they make, with
/// the client files `ca`, `cert` and `key`.
fn protocol_cases<'a>(
    ca: &'a str,
    cert: &'a str,
    key: &'a str,
) -> Vec<(Settings<'a>, Vec<String>)> {
    let sasl = [
        ("KafkaConfiguration__Security__Username", "ABCDEFKEY"),
        ("KafkaConfiguration__Security__Password", PASSWORD),
    ];
    vec![
        (vec![], vec!["security.protocol=plaintext".into()]),
        (
            vec![
                ("KafkaConfiguration__Security__Protocol", "SSL"),
                ("KafkaConfiguration__Security__CaFile", ca),
                ("KafkaConfiguration__Security__CertificateFile", cert),
                ("KafkaConfiguration__Security__KeyFile", key),
                ("KafkaConfiguration__Security__KeyPassword", KEY_PASSWORD),
            ],
            vec![
                "security.protocol=ssl".into(),
                format!("ssl.ca.location={ca}"),
                format!("ssl.certificate.location={cert}"),
                format!("ssl.key.location={key}"),
                "ssl.key.password=<secret>".into(),
                "ssl.endpoint.identification.algorithm=https".into(),
            ],
        ),
        (
            [("KafkaConfiguration__Security__Protocol", "sasl_plaintext")]
                .into_iter()
                .chain(sasl)
                .collect(),
            vec![
                "security.protocol=sasl_plaintext".into(),
                "sasl.mechanism=PLAIN".into(),
                "sasl.username=ABCDEFKEY".into(),
                "sasl.password=<secret>".into(),
            ],
        ),
        (
            // Confluent Cloud's settings: SASL_SSL, PLAIN, API key/secret,
            // the system's CA roots.
            [("KafkaConfiguration__Security__Protocol", "SASL_SSL")]
                .into_iter()
                .chain(sasl)
                .collect(),
            vec![
                "security.protocol=sasl_ssl".into(),
                "sasl.mechanism=PLAIN".into(),
                "sasl.username=ABCDEFKEY".into(),
                "sasl.password=<secret>".into(),
                "ssl.endpoint.identification.algorithm=https".into(),
            ],
        ),
        (
            [
                ("KafkaConfiguration__Security__Protocol", "SASL_SSL"),
                (
                    "KafkaConfiguration__Security__SaslMechanism",
                    "scram-sha-512",
                ),
                ("KafkaConfiguration__Security__CaFile", ca),
            ]
            .into_iter()
            .chain(sasl)
            .collect(),
            vec![
                "security.protocol=sasl_ssl".into(),
                "sasl.mechanism=SCRAM-SHA-512".into(),
                "sasl.username=ABCDEFKEY".into(),
                "sasl.password=<secret>".into(),
                format!("ssl.ca.location={ca}"),
                "ssl.endpoint.identification.algorithm=https".into(),
            ],
        ),
    ]
}

#[test]
fn each_protocol_sets_its_librdkafka_properties() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = tls::make_pki(dir.path(), "kafka test CA");
    let (ca, cert, key) = (
        pki.ca_cert.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string(),
    );
    let cases = protocol_cases(&ca, &cert, &key);
    for (env, expected) in cases {
        let config = config_for(&env);
        let properties = shown(&config);
        println!("{env:?}\n  -> {properties:?}");
        assert_eq!(properties, expected);
        // Every client starts from this configuration, secrets included.
        let brokers = Brokers::configured(&config.kafka).expect("brokers");
        let client = brokers.client_config("orderflow-test");
        assert_eq!(
            client.get("bootstrap.servers"),
            Some("broker.example.test:9093")
        );
        if properties.contains(&"sasl.password=<secret>".to_string()) {
            assert_eq!(client.get("sasl.password"), Some(PASSWORD));
        }
        // ... and librdkafka accepts it (a misspelt or unsupported property,
        // or a build without TLS/SCRAM, fails here).
        let producer: Result<rdkafka::producer::BaseProducer, _> = client.create();
        assert!(producer.is_ok(), "{env:?}: {:?}", producer.err());
    }
}

/// `openssl s_server` on a free port, requiring a client certificate from
/// `ca`; its output is collected.
struct TlsPeer {
    child: Child,
    port: u16,
    output: Arc<Mutex<Vec<u8>>>,
}

impl TlsPeer {
    fn start(pki: &tls::Pki, dir: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut child = Command::new("openssl")
            .args(["s_server", "-accept", &port.to_string(), "-Verify", "1"])
            .arg("-cert")
            .arg(&pki.server_cert)
            .arg("-key")
            .arg(&pki.server_key)
            .arg("-CAfile")
            .arg(&pki.ca_cert)
            .current_dir(dir)
            // An open stdin keeps s_server serving.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the openssl command is needed (apt-get install -y openssl)");
        let output = Arc::new(Mutex::new(Vec::new()));
        for mut stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().expect("output").extend_from_slice(&buf[..n]);
                }
            });
        }
        let peer = Self {
            child,
            port,
            output,
        };
        peer.wait_for("ACCEPT", Duration::from_secs(10));
        peer
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().expect("output")).into_owned()
    }

    fn wait_for(&self, needle: &str, within: Duration) -> bool {
        poll(within, Duration::from_millis(50), || {
            self.text().contains(needle).then_some(())
        })
        .is_some()
    }
}

impl Drop for TlsPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_api_against(peer: &TlsPeer, dir: &Path, security: &[(&str, &str)]) -> Process {
    let mut env: Vec<(String, String)> = vec![
        (
            "Database__Url".into(),
            format!("sqlite://{}", dir.join("orderflow.db").display()),
        ),
        (
            "KafkaConfiguration__ServerUrl".into(),
            format!("localhost:{}", peer.port),
        ),
        ("Api__Listen".into(), "127.0.0.1:0".into()),
        // Everything librdkafka says, to show none of it is a secret.
        ("RUST_LOG".into(), "debug".into()),
    ];
    env.extend(security.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Process::spawn(&["serve-api"], &env, dir)
}

#[test]
fn mutual_tls_handshake_with_a_real_tls_peer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = tls::make_pki(dir.path(), "kafka test CA");
    let foreign_dir = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign_dir).expect("dir");
    let foreign = tls::make_pki(&foreign_dir, "another CA");
    // Leaked: the closure below hands out `'static` settings.
    let leak = |p: &Path| -> &'static str { Box::leak(p.display().to_string().into_boxed_str()) };
    let (ca, cert, key, foreign_ca) = (
        leak(&pki.ca_cert),
        leak(&pki.client_cert),
        leak(&pki.client_key),
        leak(&foreign.ca_cert),
    );
    let security = |ca: &'static str| {
        vec![
            ("KafkaConfiguration__Security__Protocol", "SASL_SSL"),
            (
                "KafkaConfiguration__Security__SaslMechanism",
                "SCRAM-SHA-256",
            ),
            ("KafkaConfiguration__Security__Username", "orderflow"),
            ("KafkaConfiguration__Security__Password", PASSWORD),
            ("KafkaConfiguration__Security__CaFile", ca),
            ("KafkaConfiguration__Security__CertificateFile", cert),
            ("KafkaConfiguration__Security__KeyFile", key),
        ]
    };

    let peer = TlsPeer::start(&pki, dir.path());
    let mut api = serve_api_against(&peer, dir.path(), &security(ca));
    api.http_addr();
    // The handshake completed with our client certificate, and the first
    // Kafka request (ApiVersions, with the client id) came through it.
    let handshake = peer.wait_for("subject=CN = orderflow-client", Duration::from_secs(20))
        && peer.wait_for("orderflow-api", Duration::from_secs(10));
    let text = peer.text();
    assert!(
        handshake,
        "no mutual-TLS handshake seen by the peer:\n{text}\n{}",
        api.log_text()
    );
    assert!(text.contains("CIPHER is TLS_"), "{text}");
    drop(peer);
    api.signal("TERM");
    api.wait_exit(Duration::from_secs(30));
    assert!(
        !api.log_text().contains(PASSWORD),
        "the SASL password reached the logs"
    );

    // Trusting another CA, the client refuses the broker's certificate.
    let peer = TlsPeer::start(&pki, dir.path());
    let mut api = serve_api_against(&peer, dir.path(), &security(foreign_ca));
    api.http_addr();
    api.logs_within("certificate verify failed", Duration::from_secs(20));
    let logs = api.log_text();
    assert!(logs.contains("certificate verify failed"), "{logs}");
    assert!(
        !peer.text().contains("orderflow-api"),
        "a request went to an unverified broker"
    );
    api.signal("TERM");
    api.wait_exit(Duration::from_secs(30));
    assert!(
        !api.log_text().contains(PASSWORD),
        "the SASL password reached the logs"
    );
}

/// The cluster's environment for SASL_SSL/SCRAM-SHA-512 on the Apache
/// Kafka nodes' TLS listeners, with `password` and the CA file `ca`.
fn sasl_ssl_env(cluster: &Cluster, password: &str, ca: &Path) -> Vec<(String, String)> {
    let mut env = cluster.env.clone();
    for (k, v) in [
        (
            "KafkaConfiguration__ServerUrl",
            cluster
                .broker
                .cluster()
                .sasl_ssl_bootstrap_servers()
                .as_str(),
        ),
        ("KafkaConfiguration__Security__Protocol", "SASL_SSL"),
        (
            "KafkaConfiguration__Security__SaslMechanism",
            "SCRAM-SHA-512",
        ),
        ("KafkaConfiguration__Security__Username", SASL_USER),
        ("KafkaConfiguration__Security__Password", password),
        (
            "KafkaConfiguration__Security__CaFile",
            &ca.display().to_string(),
        ),
    ] {
        set_env(&mut env, k, v);
    }
    env
}

/// The whole lifecycle with every client on SASL_SSL.
async fn lifecycle_over_sasl_ssl(cluster: &mut Cluster, ca: &Path) {
    cluster.env = sasl_ssl_env(cluster, SASL_PASSWORD, ca);
    let api = cluster.spawn(Role::Api);
    let worker = cluster.spawn(Role::Worker);
    cluster.wait_until_assigned();
    let id = common::run_order_to_fulfilment(&cluster.http, &cluster.base(), "Scram Sam").await;
    let fulfilled = common::read_topic_async(
        cluster.broker.bootstrap_servers(),
        &cluster.broker.names.fulfilment,
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(fulfilled.len(), 1, "{fulfilled:?}");
    assert_eq!(fulfilled[0].key, id);
    cluster.stop_within(api, Duration::from_secs(30));
    cluster.stop(worker);
}

/// A wrong password: the broker refuses the login, the role says so and
/// stops (exit 1) rather than run without Kafka.
fn a_wrong_password_stops_the_role(cluster: &Cluster, ca: &Path) {
    let wrong = sasl_ssl_env(cluster, "not-the-password", ca);
    let mut refused = cluster.launch(&["run-worker"], &wrong);
    let code = tokio::task::block_in_place(|| refused.wait_exit(Duration::from_secs(60)));
    let log = refused.log_text();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("Authentication failed"), "{log}");
    assert!(
        !log.contains("not-the-password"),
        "the password reached the logs"
    );
}

/// A CA that did not sign the brokers' certificate: nothing is sent.
fn an_unknown_ca_is_refused(cluster: &Cluster) {
    let other = tempfile::tempdir().expect("temp dir");
    let foreign = tls::make_pki(other.path(), "another CA");
    let untrusting = sasl_ssl_env(cluster, SASL_PASSWORD, &foreign.ca_cert);
    let mut api = cluster.launch(&["serve-api"], &untrusting);
    tokio::task::block_in_place(|| api.http_addr());
    let refused = tokio::task::block_in_place(|| {
        api.logs_within("certificate verify failed", Duration::from_secs(30))
    });
    assert!(refused, "{}", api.log_text());
    api.signal("TERM");
    assert_eq!(
        tokio::task::block_in_place(|| api.wait_exit(Duration::from_secs(30))),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_with_scram_sha_512_on_apache_kafka() {
    let mut cluster = Cluster::builder(TestBroker::apache()).start().await;
    let ca = cluster.broker.cluster().ca_cert.clone();
    lifecycle_over_sasl_ssl(&mut cluster, &ca).await;
    a_wrong_password_stops_the_role(&cluster, &ca);
    an_unknown_ca_is_refused(&cluster);
}
