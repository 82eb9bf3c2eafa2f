//! What the worker role runs: a Kafka consumer whose engine feeds a pool of
//! worker tasks (KafkaFlow's "workers"), which drive the typed handlers;
//! the dead-letter producer they share; the lag-based worker count and the
//! committable-offset tracker.

pub mod balancer;
mod engine;
pub use engine::EngineStatus;
pub mod offsets;
mod worker_task;

use std::sync::Arc;

use crate::brokers::{Brokers, KafkaSetupError, TopicSpec};
use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::handlers::{HandlerContext, HandlerStats};
use crate::shutdown::Shutdown;
use crate::store::SharedStore;

/// Everything the consumer needs, built before the role starts running.
pub struct Consumer {
    brokers: Brokers,
    control_topic: String,
    /// The orders, dead-letter and control topics, created before the
    /// consumer joins the group.
    topics: Vec<TopicSpec>,
    kafka_timeout: std::time::Duration,
    settings: engine::EngineSettings,
    handlers: Arc<HandlerContext>,
    /// The fleet telemetry: topic, interval, this instance's id.
    telemetry: (String, std::time::Duration, String),
}

impl Consumer {
    pub fn build(
        config: &Config,
        brokers: &Brokers,
        store: SharedStore,
        topics: Vec<TopicSpec>,
    ) -> Result<Self, KafkaSetupError> {
        let orders = &config.kafka.orders;
        crate::dlq::register_metrics();
        let dead_letters = DeadLetters {
            producer: brokers.producer("orderflow-dlq", config.kafka.message_timeout)?,
            topic: config.worker.dead_letter_topic.clone(),
            timeout: config.kafka.message_timeout,
        };
        let handlers = Arc::new(HandlerContext {
            store,
            consumer_group: orders.consumer_group.clone(),
            retry: config.worker.retry.clone(),
            unknown_types: config.worker.unknown_types,
            dead_letters,
            notifications: crate::notifier::Notifications::new(&config.worker),
            stats: HandlerStats::default(),
        });
        Ok(Self {
            brokers: brokers.clone(),
            control_topic: config.admin.control_topic.clone(),
            topics,
            kafka_timeout: config.kafka.message_timeout,
            settings: engine::EngineSettings {
                topic: orders.name.clone(),
                group: orders.consumer_group.clone(),
                client_id: orders.consumer_name.clone(),
                worker: config.worker.clone(),
                session_timeout: config.worker.session_timeout,
                controls: Arc::default(),
                status: Arc::default(),
            },
            handlers,
            telemetry: (
                config.admin.telemetry_topic.clone(),
                config.admin.telemetry_interval,
                crate::fleet::instance_id(config.worker.instance_id.as_deref()),
            ),
        })
    }

    /// Consumes until `shutdown`, then drains, commits and leaves the group.
    /// Its topics are created first: subscribed to a topic that does not
    /// exist yet, a consumer would notice it only at a later metadata
    /// refresh, and the first orders would wait that long.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), KafkaSetupError> {
        let handlers = self.handlers.clone();
        let mut waiting = shutdown.clone();
        self.brokers
            .ensure_topics_until_ready(&self.topics, self.kafka_timeout, &mut waiting)
            .await?;
        if shutdown.is_triggered() {
            return Ok(());
        }
        let control = crate::consumption_state::follow(
            &self.brokers,
            &self.control_topic,
            self.telemetry.2.clone(),
            self.settings.controls.clone(),
            shutdown.clone(),
        )?;
        let (topic, interval, instance) = self.telemetry;
        let telemetry = tokio::spawn(crate::fleet::publish(
            self.brokers
                .producer("orderflow-telemetry", self.kafka_timeout)?,
            topic,
            interval,
            crate::fleet::Source {
                instance,
                started_at: chrono::Utc::now(),
                status: self.settings.status.clone(),
                handlers: self.handlers.clone(),
            },
            shutdown.clone(),
        ));
        let stopping = shutdown.clone();
        let thread = engine::start(&self.brokers, self.settings, self.handlers, shutdown)?;
        let consumed = tokio::task::spawn_blocking(move || {
            let consumed = thread.join();
            let _ = control.join();
            consumed
        })
        .await;
        let s = &handlers.stats;
        use std::sync::atomic::Ordering::Relaxed;
        tracing::info!(
            handled = s.handled.load(Relaxed),
            duplicates = s.duplicates.load(Relaxed),
            retried = s.retried.load(Relaxed),
            dead_lettered = s.dead_lettered.load(Relaxed),
            unknown = s.unknown.load(Relaxed),
            "worker stopped"
        );
        // After a shutdown it ends with a tombstone; after a failure of the
        // consumer (no shutdown yet) it stops here, and the instance shows
        // as gone.
        if stopping.is_triggered() {
            let _ = telemetry.await;
        } else {
            telemetry.abort();
        }
        match consumed {
            Ok(Ok(consumed)) => consumed,
            // The poll thread panicked: its messages are uncommitted and
            // delivered again; the role stops.
            _ => Err(KafkaSetupError::GroupFailed(
                "the consumer thread panicked".into(),
            )),
        }
    }
}
