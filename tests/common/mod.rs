//! The test harness, shared by the integration tests (`tests/integration`,
//! one binary), the proof suite (`tests/proof.rs`) and the benchmark
//! (`benches/pipeline.rs`): real databases (a fresh SQLite file or
//! PostgreSQL database per test, `db`), brokers (librdkafka's mock cluster
//! hosted by the test, or a 3-node Apache Kafka cluster: `broker`,
//! `kafka_cluster`), the application started in-process on port 0 with a
//! database and a broker of its own (`app`), the real binary as separate
//! processes (`process`) and the one harness for a cluster of them
//! (`cluster`), what is on the topics (`topics`), an order's life over the
//! API (`orders`), the `/metrics` reader (`metrics`), the waits (`wait`) and
//! a notification webhook served by the test (`webhook`).
//!
//! The items are in `root.rs`, which the integration binary includes as its
//! `common` module: it uses all of the harness, so dead code there is a
//! warning. This file is the module root for the proof suite and the
//! benchmark, which use a part of it (so the lints for unused items are off
//! here, and only here), plus the re-exports only they use.
#![allow(dead_code, unused_imports)]

include!("root.rs");

pub use broker::start_broker_partitioned;
pub use topics::read_topic;
