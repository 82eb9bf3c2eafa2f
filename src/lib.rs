//! orderflow: an event-driven order pipeline. The API role takes orders and
//! relays their events from a transactional outbox to Kafka; the worker role
//! consumes them with typed handlers.

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
pub mod handlers;
pub mod metrics;
pub mod notifier;
pub mod outbox;
pub mod scope;
pub mod secret;
pub mod shutdown;
pub mod sink;
pub mod store;
pub mod telemetry;
