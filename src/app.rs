//! One `build`/`run` entry per role, used by `main` and by the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::guard::Guard;
use crate::api::history::{Recorder, Sampler};
use crate::api::listener::{ClientAddr, LimitedListener};
use crate::api::{self, ApiState, Readiness};
use crate::brokers::{Brokers, EmbeddedKafka, KafkaSetupError, TopicSpec, Topics};
use crate::config::FulfilmentSink;
use crate::config::{Config, ConfigError, Uses};
use crate::consumer::Consumer;
use crate::domain::OrderLimits;
use crate::notifier::Notifications;
use crate::outbox::{self, Relay};
use crate::reconciler::Reconciler;
use crate::shutdown::{self, Shutdown};
use crate::sink::kafka::KafkaSink;
use crate::sink::servicebus::ServiceBusSink;
use crate::store::OutboxFilter;
use crate::store::{self, SharedStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// HTTP API and outbox relay; never a Kafka consumer.
    Api,
    /// Consumer group, handlers, the relay for the events they emit, and
    /// health endpoints on the admin port.
    Worker,
    /// Both in one process.
    All,
}

impl Role {
    /// The parties this role talks to, whose secrets it must have.
    pub fn uses(self) -> Uses {
        match self {
            Role::Api => Uses::API,
            Role::Worker => Uses::WORKER,
            Role::All => Uses::ALL,
        }
    }
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
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A role, built and bound, ready to run.
pub struct Application {
    store: SharedStore,
    /// The order API (API role) or the health endpoints (worker role).
    http: (LimitedListener, axum::Router),
    relays: Vec<Relay>,
    consumer: Option<Consumer>,
    reconciler: Option<Reconciler>,
    /// Records the dashboard's history, where the dashboard is served.
    history: Option<Sampler>,
    /// The topics the relay publishes to, created at start.
    published: PublishedTopics,
    // Kept alive for as long as the clients that connect to it.
    _embedded: Option<EmbeddedKafka>,
}

struct PublishedTopics {
    brokers: Brokers,
    topics: Vec<TopicSpec>,
    timeout: std::time::Duration,
}

/// Why a role stopped on its own; the first reason wins.
#[derive(Clone, Default)]
struct Failure(Arc<std::sync::Mutex<Option<AppError>>>);

impl Failure {
    /// Records `error` and stops the role as SIGTERM would: in-flight work
    /// finishes, offsets are committed, the producer flushes.
    fn stop_with(&self, error: AppError, stop: &shutdown::ShutdownTrigger) {
        tracing::error!(error = %error, "stopping: this role cannot work until an operator acts");
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(error);
        stop.trigger();
    }

    fn take(&self) -> Option<AppError> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Connects to the database and runs the migrations: start-up and
/// `orderflow migrate` share it.
pub async fn migrate(config: &Config) -> Result<SharedStore, AppError> {
    let store = store::connect(&config.database).await?;
    store.migrate().await?;
    Ok(store)
}

async fn bind(addr: SocketAddr, max_connections: usize) -> Result<LimitedListener, AppError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| AppError::Bind { addr, source })?;
    Ok(LimitedListener::new(listener, max_connections))
}

/// The role's HTTP server: the API (with the admin dashboard and its
/// history sampler when enabled) or, for a worker alone, the operations
/// endpoints on its admin port.
async fn http_server(
    config: &Config,
    role: Role,
    store: &SharedStore,
    brokers: &Brokers,
    producer: &rdkafka::producer::FutureProducer,
    readiness: Arc<Readiness>,
) -> Result<((LimitedListener, axum::Router), Option<Sampler>), AppError> {
    if role == Role::Worker {
        let listener = bind(config.worker.admin_listen, config.api.max_connections).await?;
        return Ok(((listener, api::operations_router(readiness)), None));
    }
    let state = ApiState {
        store: store.clone(),
        limits: OrderLimits {
            max_items: config.api.max_items_per_order,
        },
        max_body_bytes: config.api.max_body_bytes,
    };
    let sampler = config.admin.enabled.then(|| Sampler {
        recorder: Arc::new(Recorder::new(
            config.admin.history_interval,
            config.admin.history_points,
        )),
        store: store.clone(),
        brokers: brokers.clone(),
        telemetry_topic: config.admin.telemetry_topic.clone(),
        telemetry_interval: config.admin.telemetry_interval,
    });
    let admin = sampler.as_ref().map(|sampler| {
        Arc::new(api::admin::AdminState {
            store: store.clone(),
            brokers: brokers.clone(),
            producer: producer.clone(),
            topic: config.kafka.orders.name.clone(),
            group: config.kafka.orders.consumer_group.clone(),
            dead_letter_topic: config.worker.dead_letter_topic.clone(),
            control_topic: config.admin.control_topic.clone(),
            telemetry_topic: config.admin.telemetry_topic.clone(),
            telemetry_interval: config.admin.telemetry_interval,
            worker_bounds: (config.worker.min_workers, config.worker.max_workers),
            reconcile: (config.reconcile.stuck_after, config.reconcile.batch_size),
            timeout: config.kafka.message_timeout,
            max_body_bytes: config.api.max_body_bytes,
            history: sampler.recorder.clone(),
        })
    });
    let guard = Guard::new(&config.api).await?;
    let listener = bind(config.api.listen, config.api.max_connections).await?;
    Ok((
        (listener, api::router(state, readiness, admin, guard)),
        sampler,
    ))
}

/// The outbox relays this role runs: the Kafka relay always (only the
/// lease holder across the processes delivers), and the Service Bus
/// fulfilment relay in the role that emits fulfilment events, the worker.
fn relays(config: &Config, role: Role, store: &SharedStore, kafka: KafkaSink) -> Vec<Relay> {
    let mut relays = vec![Relay {
        store: store.clone(),
        sink: Box::new(kafka),
        filter: outbox::kafka_filter(config),
        lease: outbox::MAIN_LEASE,
        settings: config.outbox.clone(),
    }];
    // Without a connection string `Config::ready_for` stops the worker
    // before it gets here.
    if let (
        FulfilmentSink::ServiceBus {
            connection: Some(connection),
            queue,
        },
        Role::Worker | Role::All,
    ) = (&config.fulfilment.sink, role)
    {
        relays.push(Relay {
            store: store.clone(),
            sink: Box::new(ServiceBusSink::new(
                connection.clone(),
                queue.clone(),
                config.events.clone(),
            )),
            filter: OutboxFilter {
                only: Some(crate::events::DESTINATION_FULFILMENT),
                ..OutboxFilter::default()
            },
            lease: outbox::FULFILMENT_LEASE,
            settings: config.outbox.clone(),
        });
    }
    relays
}

impl Application {
    pub async fn build(config: &Config, role: Role) -> Result<Self, AppError> {
        config.ready_for(role.uses())?;
        // Installed before anything records, so no early figure is lost.
        crate::metrics::handle();
        let store = migrate(config).await?;
        let topics = Topics::of(config);
        let (brokers, embedded) = Brokers::resolve(&config.kafka, &topics.all())?;
        let client_id = match role {
            Role::Api => "orderflow-api",
            Role::Worker => "orderflow-worker",
            Role::All => "orderflow",
        };
        let producer = brokers.producer(client_id, config.kafka.message_timeout)?;
        let readiness = Arc::new(Readiness {
            store: store.clone(),
            producer: producer.clone(),
            topic: config.kafka.orders.name.clone(),
        });
        let (http, history) =
            http_server(config, role, &store, &brokers, &producer, readiness).await?;
        let consumer = match role {
            Role::Api => None,
            Role::Worker | Role::All => Some(Consumer::build(
                config,
                &brokers,
                store.clone(),
                topics.consumed.clone(),
            )?),
        };
        let published = PublishedTopics {
            brokers: brokers.clone(),
            topics: topics.published.clone(),
            timeout: config.kafka.message_timeout,
        };
        let kafka_sink = KafkaSink {
            producer,
            brokers,
            client_id: format!("{client_id}-relay"),
            topics: topics.published,
            topics_ready: false,
            destinations: outbox::kafka_destinations(config),
            timeout: config.kafka.message_timeout,
            format: config.events.clone(),
        };
        let relays = relays(config, role, &store, kafka_sink);
        // With the workers: they send the notifications it retries.
        let reconciler = (role != Role::Api && config.reconcile.enabled).then(|| Reconciler {
            store: store.clone(),
            consumer_group: config.kafka.orders.consumer_group.clone(),
            settings: config.reconcile.clone(),
            notifications: Notifications::new(&config.worker),
            broker_forgets: embedded.is_some(),
        });
        Ok(Self {
            store,
            http,
            relays,
            consumer,
            reconciler,
            history,
            published,
            _embedded: embedded,
        })
    }

    /// The bound HTTP address: the API, or the worker's admin port (port 0
    /// in the config picks a free one).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        axum::serve::Listener::local_addr(&self.http.0).ok()
    }

    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Runs until `shutdown`: stops taking requests and messages, finishes
    /// in-flight ones, commits, then lets the relay publish what they
    /// emitted before it stops too.
    ///
    /// A broker that refuses the role's topics (replication factor, ACLs,
    /// authentication) stops it the same way, and the error is returned:
    /// the process exits non-zero with the reason, as a .NET host whose
    /// `CreateTopicIfNotExists` fails does.
    pub async fn run(self, outer: Shutdown) -> Result<(), AppError> {
        let (stop, shutdown) = shutdown::channel();
        let failure = Failure::default();
        {
            let (stop, mut outer) = (stop.clone(), outer);
            tokio::spawn(async move {
                outer.wait().await;
                stop.trigger();
            });
        }
        {
            let (stop, failure, mut waiting) = (stop.clone(), failure.clone(), shutdown.clone());
            let PublishedTopics {
                brokers,
                topics,
                timeout,
            } = self.published;
            tokio::spawn(async move {
                if let Err(e) = brokers
                    .ensure_topics_until_ready(&topics, timeout, &mut waiting)
                    .await
                {
                    failure.stop_with(e.into(), &stop);
                }
            });
        }
        let (relay_stop, relay_shutdown) = shutdown::channel();
        let relays: Vec<_> = self
            .relays
            .into_iter()
            .map(|r| tokio::spawn(r.run(relay_shutdown.clone())))
            .collect();
        let reconciler = self
            .reconciler
            .map(|r| tokio::spawn(r.run(shutdown.clone())));
        let history = self.history.map(|h| tokio::spawn(h.run(shutdown.clone())));
        let consumer = self.consumer.map(|c| {
            let (stop, failure, shutdown) = (stop.clone(), failure.clone(), shutdown.clone());
            tokio::spawn(async move {
                if let Err(e) = c.run(shutdown).await {
                    failure.stop_with(e.into(), &stop);
                }
            })
        });
        let (listener, router) = self.http;
        let router = router
            .layer(axum::middleware::from_fn(crate::telemetry::trace_http))
            .layer(axum::middleware::from_fn(crate::api::track_http));
        if let Ok(addr) = axum::serve::Listener::local_addr(&listener) {
            tracing::info!(%addr, "HTTP listening");
        }
        let mut stop = shutdown.clone();
        let router = router.into_make_service_with_connect_info::<ClientAddr>();
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.wait().await })
            .await
            .map_err(AppError::Serve);
        if let Some(consumer) = consumer {
            let _ = consumer.await;
        }
        if let Some(reconciler) = reconciler {
            let _ = reconciler.await;
        }
        if let Some(history) = history {
            let _ = history.await;
        }
        relay_stop.trigger();
        for relay in relays {
            let _ = relay.await;
        }
        served?;
        failure.take().map_or(Ok(()), Err)
    }
}
