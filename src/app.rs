//! One `build`/`run` entry per role, used by `main` and by the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, ApiState, Readiness};
use crate::config::Config;
use crate::domain::OrderLimits;
use crate::kafka::{Brokers, EmbeddedKafka, KafkaSetupError};
use crate::outbox::Relay;
use crate::shutdown::Shutdown;
use crate::store::{self, SharedStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// HTTP API and outbox relay; never a Kafka consumer.
    Api,
    /// Consumer group and handlers.
    Worker,
    /// Both in one process.
    All,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kafka(#[from] KafkaSetupError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("run-worker is not built yet: the consumer side (issue #3) has not landed")]
    WorkerNotBuilt,
}

/// A role, built and bound, ready to run.
pub struct Application {
    store: SharedStore,
    api: Option<(TcpListener, axum::Router)>,
    relay: Relay,
    // Kept alive for as long as the clients that connect to it.
    _embedded: Option<EmbeddedKafka>,
}

/// Connects to the database and runs the migrations: start-up and
/// `orderflow migrate` share it.
pub async fn migrate(config: &Config) -> Result<SharedStore, AppError> {
    let store = store::connect(&config.database).await?;
    store.migrate().await?;
    Ok(store)
}

impl Application {
    pub async fn build(config: &Config, role: Role) -> Result<Self, AppError> {
        if role == Role::Worker {
            return Err(AppError::WorkerNotBuilt);
        }
        if role == Role::All {
            tracing::warn!(
                "the worker half of `all` is not built yet (issue #3): orders stay Pending"
            );
        }
        let store = migrate(config).await?;
        let (brokers, embedded) = Brokers::resolve(&config.kafka)?;
        let producer = brokers.producer("orderflow-api", config.kafka.message_timeout)?;
        let addr = config.api.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        let state = ApiState {
            store: store.clone(),
            limits: OrderLimits {
                max_items: config.api.max_items_per_order,
            },
            max_body_bytes: config.api.max_body_bytes,
            readiness: Arc::new(Readiness {
                producer: producer.clone(),
                topic: config.kafka.orders.name.clone(),
            }),
        };
        let relay = Relay {
            store: store.clone(),
            producer,
            brokers,
            topic: config.kafka.orders.clone(),
            settings: config.outbox.clone(),
            kafka_timeout: config.kafka.message_timeout,
        };
        Ok(Self {
            store,
            api: Some((listener, api::router(state))),
            relay,
            _embedded: embedded,
        })
    }

    /// The bound API address (port 0 in the config picks a free port).
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Runs until `shutdown`: stops taking requests, lets in-flight ones
    /// finish, then stops the relay after its current batch.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), AppError> {
        let relay = tokio::spawn(self.relay.run(shutdown.clone()));
        let served = match self.api {
            Some((listener, router)) => {
                if let Ok(addr) = listener.local_addr() {
                    tracing::info!(%addr, "order API listening");
                }
                let mut stop = shutdown.clone();
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.wait().await })
                    .await
                    .map_err(AppError::Serve)
            }
            None => Ok(()),
        };
        let _ = relay.await;
        served
    }
}
