//! The integration tests, one binary: each module is one area (run one with
//! `cargo test --test integration relay::`). They share the harness in
//! `tests/common` (also used by the proof suite, `tests/proof.rs`), and with
//! it one Apache Kafka cluster for the whole run (`KafkaCluster::shared`);
//! tests that stop or cut nodes start their own.
//!
//! Tests run side by side in this one process, so none may rely on being
//! alone in it: no test sets an environment variable of the process
//! (settings go to the processes a test starts, or into the configuration it
//! builds), and the process-wide statics (the shared cluster, the child
//! spawner, the metrics recorder of the in-process API) are safe to share.
//! What is shared beyond the process is said where a test touches it
//! (`postgres_tls` reconfigures the PostgreSQL server's TLS).

#[path = "../common/root.rs"]
mod common;

mod admin;
mod alerts;
mod api;
mod api_fuzz;
mod api_security;
mod cli_config;
mod dashboard;
mod deployment;
mod e2e_embedded;
mod e2e_kafka;
mod fleet;
mod harness;
mod image_build;
mod interop;
mod kafka_security;
mod openapi;
mod otlp;
mod postgres_tls;
mod rebalance;
mod reconcile;
mod relay;
mod secret_hygiene;
mod servicebus;
mod worker;
