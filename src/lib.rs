//! orderflow: an event-driven order pipeline. The API role takes orders and
//! relays their events from a transactional outbox to Kafka; the worker role
//! consumes them with typed handlers. ARCHITECTURE.md has the full map.
//!
//! - `app`: wires a role; `config`: settings from file and environment.
//! - `domain`: valid-by-construction order types; `events`: the wire format.
//! - `api`: HTTP, one module per resource; `auth`, `scope`: who may do what.
//! - `store`: the database (PostgreSQL, SQLite); executes, decides nothing.
//! - `outbox`, `sink`: the relay and where it delivers.
//! - `reconciler`: re-drives orders whose event was lost; retries
//!   notifications.
//! - `consumer`: the worker role's Kafka consumer and its worker tasks.
//! - `handlers`: one module per event's decision; `dlq`: dead letters.
//! - `brokers`: Kafka clients and topics; `consumption_state`: pause/resume;
//!   `fleet`: each worker's state on the telemetry topic.
//! - `backoff`, `shutdown`, `secret`, `metrics`, `telemetry`, `notifier`:
//!   shared plumbing.

pub mod api;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod brokers;
pub mod config;
pub mod consumer;
pub mod consumption_state;
pub mod dlq;
pub mod domain;
pub mod events;
pub mod fleet;
pub mod handlers;
pub mod metrics;
pub mod notifier;
pub mod outbox;
pub mod reconciler;
pub mod scope;
pub mod secret;
pub mod shutdown;
pub mod sink;
pub mod store;
pub mod telemetry;
