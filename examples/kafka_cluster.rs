//! The tests' Apache Kafka cluster, started by hand: three KRaft nodes on
//! 127.0.0.1 with PLAINTEXT and SASL_SSL (SCRAM-SHA-512) listeners, no topic
//! auto-creation, `min.insync.replicas = 2`. It runs until Ctrl-C; the
//! nodes go with it.
//!
//! ```sh
//! tests/kafka/fetch.sh                      # the jars, once (Maven)
//! cargo run --example kafka_cluster
//! ```

// The harness's modules refer to each other through `super::`, which is
// the crate root here.
#[allow(dead_code)]
#[path = "../tests/common/children.rs"]
mod children;
#[allow(dead_code)]
#[path = "../tests/common/kafka_cluster.rs"]
mod kafka_cluster;
#[allow(dead_code)]
#[path = "../tests/common/proxy.rs"]
mod proxy;
#[allow(dead_code)]
#[path = "../tests/common/tls.rs"]
mod tls;

use kafka_cluster::{ClusterOptions, KafkaCluster, SASL_PASSWORD, SASL_USER};

fn main() {
    let cluster = KafkaCluster::start(ClusterOptions::default());
    println!(
        "\nApache Kafka, 3 nodes:\n  \
         KafkaConfiguration__ServerUrl={plain}\n\n\
         SASL_SSL:\n  \
         KafkaConfiguration__ServerUrl={sasl}\n  \
         KafkaConfiguration__Security__Protocol=SASL_SSL\n  \
         KafkaConfiguration__Security__SaslMechanism=SCRAM-SHA-512\n  \
         KafkaConfiguration__Security__Username={SASL_USER}\n  \
         KafkaConfiguration__Security__Password={SASL_PASSWORD}\n  \
         KafkaConfiguration__Security__CaFile={ca}\n\n\
         Topics are not auto-created; orderflow creates its own (set \
         KafkaConfiguration__Orders__ReplicationFactor=3). Ctrl-C stops the cluster.",
        plain = cluster.bootstrap_servers(),
        sasl = cluster.sasl_ssl_bootstrap_servers(),
        ca = cluster.ca_cert.display(),
    );
    loop {
        std::thread::park();
    }
}
