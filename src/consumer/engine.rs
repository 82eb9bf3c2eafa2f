//! The consumer engine: one poll thread feeding a pool of worker tasks.
//!
//! The poll thread owns the librdkafka consumer (its rebalance callbacks run
//! there and may block). Each worker has a bounded queue; when the chosen
//! worker's queue is full the poll thread blocks, so it stops polling:
//! memory stays bounded and the broker keeps the backlog. Offsets are
//! committed from the contiguous-offset tracker on an interval, and
//! synchronously when partitions are revoked and at shutdown.
//!
//! Rebalances stop only what moves. Each assigned partition has an owner
//! signal that its messages carry; a revocation fires it (a message waiting
//! to retry gives up, one not started is left to the next owner), waits
//! for the few still running, commits the partition's position and forgets
//! it, while the other partitions' messages keep running. With the
//! cooperative assignor or the consumer protocol (KIP-848) a rebalance
//! revokes only the partitions that move; with an eager assignor, all.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::balancer::desired_workers;
use super::offsets::OffsetTracker;
use super::worker_task::{self, Delivery};
use crate::brokers::{Brokers, KafkaSetupError};
use crate::config::{Distribution, GroupProtocol, WorkerSettings};
use crate::consumption_state::{Controls, MoveOffsets, OffsetTarget};
use crate::handlers::{self, HandlerContext};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};

/// How long a revocation waits for the revoked partitions' messages still
/// running (a database call; one waiting to retry gives up at once, a
/// dead letter waits at most 5 s); past it their offsets stay uncommitted
/// and the new owner re-delivers them (the inbox turns that into a no-op).
const REVOKE_DRAIN: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);
/// The consumer's read-ahead, per partition (messages) and in all (KiB).
const PREFETCH_MESSAGES: u32 = 2_000;
const PREFETCH_KBYTES: u32 = 8_192;
/// When a partition's read-ahead is full, librdkafka fetches it again only
/// after this long (its default, 1 s, idled a worker catching up on a
/// backlog: each partition fetched once a second, and the handlers waited
/// for messages 80 % of the time).
const FETCH_QUEUE_BACKOFF_MS: u32 = 10;

pub struct EngineSettings {
    pub topic: String,
    pub group: String,
    pub client_id: String,
    pub worker: WorkerSettings,
    pub session_timeout: Duration,
    /// Set by the control topic: stop fetching (the group membership and
    /// the assignment stay; in-flight messages finish).
    pub controls: Arc<Controls>,
    /// Refreshed every balance interval.
    pub status: Arc<Mutex<EngineStatus>>,
}

/// The tracker and the signal workers give when they finish a message.
#[derive(Default)]
struct Progress {
    tracker: Mutex<OffsetTracker>,
    finished: Condvar,
}

impl Progress {
    fn lock(&self) -> MutexGuard<'_, OffsetTracker> {
        // A panicking worker must not wedge offset tracking for the rest.
        self.tracker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until `done(tracker)` holds or `timeout` passes.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&OffsetTracker) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut tracker = self.lock();
        while !done(&tracker) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tracker = match self.finished.wait_timeout(tracker, deadline - now) {
                Ok((t, _)) => t,
                Err(e) => e.into_inner().0,
            };
        }
        true
    }
}

/// The owner signal of each assigned partition.
#[derive(Default)]
struct Owners {
    current: Mutex<HashMap<i32, (ShutdownTrigger, Shutdown)>>,
    /// Shutdown began: every signal fires, new ones at once.
    stopping: AtomicBool,
}

impl Owners {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, (ShutdownTrigger, Shutdown)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The signal of the partition's current ownership.
    fn of(&self, partition: i32) -> Shutdown {
        let mut current = self.lock();
        let (trigger, signal) = current.entry(partition).or_insert_with(shutdown::channel);
        if self.stopping.load(Ordering::SeqCst) {
            trigger.trigger();
        }
        signal.clone()
    }

    fn release(&self, partitions: &[i32]) {
        let mut current = self.lock();
        for p in partitions {
            if let Some((trigger, _)) = current.remove(p) {
                trigger.trigger();
            }
        }
    }

    fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for (trigger, _) in self.lock().values() {
            trigger.trigger();
        }
    }
}

struct EngineContext {
    progress: Arc<Progress>,
    owners: Arc<Owners>,
    topic: String,
    controls: Arc<Controls>,
    /// Per assigned partition: messages on the broker not yet handed to
    /// the application, from librdkafka's statistics.
    broker_lag: Mutex<HashMap<i32, i64>>,
    /// The assignment changed since the last status: the next loop
    /// publishes it, rather than a balance interval later (the fleet's
    /// view of who holds what).
    rebalanced: AtomicBool,
}

impl ClientContext for EngineContext {
    /// librdkafka's statistics carry the high watermarks its fetches saw:
    /// the lag without a request to the broker from the poll thread, whose
    /// every pause delays the messages behind it.
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let lag = topic
            .partitions
            .values()
            .filter(|p| p.partition >= 0 && p.desired && p.hi_offset >= 0)
            .map(|p| {
                // Nothing handed out yet: from the committed offset, or the
                // whole partition.
                let from = [p.app_offset, p.committed_offset, p.lo_offset]
                    .into_iter()
                    .find(|o| *o >= 0)
                    .unwrap_or(0);
                (p.partition, (p.hi_offset - from).max(0))
            })
            .collect();
        *self.broker_lag.lock().unwrap_or_else(|e| e.into_inner()) = lag;
    }
}

impl EngineContext {
    /// Lets the partitions go, as a revocation does: their owner signal
    /// fires (retry waits end, messages not started are left), the few
    /// running finish (bounded), their positions are committed and their
    /// tracking forgotten; the other partitions keep flowing.
    fn release(&self, consumer: &BaseConsumer<Self>, partitions: &[i32]) {
        self.owners.release(partitions);
        {
            let mut tracker = self.progress.lock();
            for p in partitions {
                tracker.revoking(*p);
            }
        }
        {
            // This process's figure for them would stand beside the new
            // owner's.
            let mut lag = self.broker_lag.lock().unwrap_or_else(|e| e.into_inner());
            for p in partitions {
                lag.remove(p);
                set_lag_gauge(*p, 0);
            }
        }
        let drained = self.progress.wait_until(REVOKE_DRAIN, |t| {
            partitions.iter().all(|p| t.running(*p) == 0)
        });
        if !drained {
            tracing::warn!(
                ?partitions,
                "revoked partitions still busy; their new owner re-delivers"
            );
        }
        let mut commits = TopicPartitionList::new();
        {
            let mut tracker = self.progress.lock();
            for p in partitions {
                if let Some(position) = tracker.position(*p) {
                    let _ = commits.add_partition_offset(&self.topic, *p, Offset::Offset(position));
                }
                tracker.forget(*p);
            }
        }
        if commits.count() > 0 {
            if let Err(e) = consumer.commit(&commits, CommitMode::Sync) {
                tracing::warn!(error = %e, "commit on revocation failed");
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        self.release(consumer, &partitions);
        tracing::info!(?partitions, "partitions revoked");
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Commits sent before the rebalance may have been refused (stale
        // generation): the partitions kept are committed again.
        self.progress.lock().recommit_all();
        self.rebalanced.store(true, Ordering::SeqCst);
        if let Rebalance::Assign(assigned) = rebalance {
            // Their messages carry a signal of this ownership. Their lag is
            // on /metrics from now, not from the next statistics (as much
            // as the balance interval later): what they show until then.
            let known = self
                .broker_lag
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            for e in assigned.elements() {
                self.owners.of(e.partition());
                set_lag_gauge(
                    e.partition(),
                    known.get(&e.partition()).copied().unwrap_or(0),
                );
            }
            // Partitions gained while paused stay paused.
            if self.controls.paused.load(Ordering::SeqCst) {
                if let Err(e) = consumer.pause(assigned) {
                    tracing::warn!(error = %e, "cannot pause newly assigned partitions");
                }
            }
            let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(?partitions, "partitions assigned");
        }
    }
}

/// The worker tasks and their bounded queues.
struct Pool {
    runtime: Handle,
    handlers: Arc<HandlerContext>,
    progress: Arc<Progress>,
    buffer: usize,
    distribution: Distribution,
    queues: Vec<mpsc::Sender<Delivery>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    next: usize,
}

impl Pool {
    fn spawn_workers(&mut self, count: usize) {
        for _ in 0..count {
            let (tx, rx) = mpsc::channel::<Delivery>(self.buffer);
            let (handlers, progress) = (self.handlers.clone(), self.progress.clone());
            self.tasks
                .push(self.runtime.spawn(worker_task::run(rx, move |delivery| {
                    let (handlers, progress) = (handlers.clone(), progress.clone());
                    async move {
                        let Delivery {
                            message,
                            generation,
                            cancel,
                        } = delivery;
                        let (partition, offset) = (message.partition(), message.offset());
                        // Revoked before it started: the next owner of its
                        // partition handles it. An abandoned message
                        // (shutdown or revocation while the database was
                        // down) is not handled either: its offset is not
                        // committed, so it is delivered again.
                        let started = progress.lock().start(partition, generation);
                        let handled = started
                            && handlers::process(&handlers, &message, &cancel)
                                .await
                                .is_done();
                        progress
                            .lock()
                            .settled(partition, generation, offset, started, handled);
                        progress.finished.notify_all();
                    }
                })));
            self.queues.push(tx);
        }
        metrics::gauge!(crate::metrics::WORKERS_ACTIVE).set(self.queues.len() as f64);
    }

    fn len(&self) -> usize {
        self.queues.len()
    }

    /// By key: every message of one key goes to the same worker, so one
    /// order's events are handled in order. Free: the next worker with room.
    fn choose(&mut self, message: &OwnedMessage) -> usize {
        let n = self.queues.len();
        match self.distribution {
            Distribution::ByKey => {
                let mut hasher = DefaultHasher::new();
                message.key().hash(&mut hasher);
                (hasher.finish() % n as u64) as usize
            }
            Distribution::Free => {
                let start = self.next;
                self.next = (self.next + 1) % n;
                (0..n)
                    .map(|i| (start + i) % n)
                    .find(|i| self.queues[*i].capacity() > 0)
                    .unwrap_or(start)
            }
        }
    }

    /// Blocks while the chosen worker's queue is full: back-pressure.
    fn dispatch(&mut self, delivery: Delivery) -> bool {
        let i = self.choose(&delivery.message);
        self.queues[i].blocking_send(delivery).is_ok()
    }

    /// Closes the queues and waits until every worker finished its queue.
    fn close(&mut self) {
        self.queues.clear();
        let tasks = std::mem::take(&mut self.tasks);
        self.runtime.block_on(async {
            for task in tasks {
                let _ = task.await;
            }
        });
    }

    fn resize(&mut self, count: usize) {
        self.close();
        self.spawn_workers(count);
    }
}

/// Starts the poll thread; it returns after shutdown, once in-flight
/// messages are finished, offsets committed and the group left.
pub fn start(
    brokers: &Brokers,
    settings: EngineSettings,
    handlers: Arc<HandlerContext>,
    shutdown: Shutdown,
) -> Result<std::thread::JoinHandle<Result<(), KafkaSetupError>>, KafkaSetupError> {
    let progress = Arc::new(Progress::default());
    let owners = Arc::new(Owners::default());
    // Shutdown ends every handler's retry wait at once, whether or not the
    // poll thread (maybe blocked on a full queue) is there to see it.
    {
        let (owners, mut shutdown) = (owners.clone(), shutdown.clone());
        Handle::current().spawn(async move {
            shutdown.wait().await;
            owners.stop_all();
        });
    }
    let context = EngineContext {
        progress: progress.clone(),
        owners: owners.clone(),
        topic: settings.topic.clone(),
        controls: settings.controls.clone(),
        broker_lag: Mutex::default(),
        // The first status goes out at once: until then telemetry would
        // show an instance with no workers.
        rebalanced: AtomicBool::new(true),
    };
    let mut config = brokers.consumer_config(&settings.client_id);
    // librdkafka prefetches up to 100,000 messages or 64 MB by default:
    // most of a worker's memory on a backlog. The worker pool holds
    // BufferSize messages per worker; a few thousand more keep the
    // fetches large enough. Defaults only: the Consumer or Client table
    // may tune them.
    for (key, value) in [
        ("queued.min.messages", PREFETCH_MESSAGES),
        ("queued.max.messages.kbytes", PREFETCH_KBYTES),
        ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
    ] {
        if config.get(key).is_none() {
            config.set(key, value.to_string());
        }
    }
    config
        .set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "statistics.interval.ms",
            settings.worker.balance_interval.as_millis().to_string(),
        )
        .set(
            "fetch.wait.max.ms",
            settings.worker.fetch_wait_max.as_millis().to_string(),
        );
    match settings.worker.group_protocol {
        GroupProtocol::Classic(assignor) => {
            config
                .set("partition.assignment.strategy", assignor.as_str())
                .set(
                    "session.timeout.ms",
                    settings.session_timeout.as_millis().to_string(),
                )
                .set(
                    "heartbeat.interval.ms",
                    heartbeat_interval(settings.session_timeout)
                        .as_millis()
                        .to_string(),
                );
        }
        // The session timeout and heartbeat are the broker's
        // (group.consumer.session.timeout.ms); librdkafka refuses them here.
        GroupProtocol::Consumer => {
            config.set("group.protocol", "consumer");
        }
    }
    if let Some(id) = &settings.worker.instance_id {
        config.set("group.instance.id", id);
    }
    let consumer: BaseConsumer<EngineContext> = config.create_with_context(context)?;
    consumer.subscribe(&[&settings.topic])?;
    let pool = Pool {
        runtime: Handle::current(),
        handlers,
        progress: progress.clone(),
        buffer: settings.worker.buffer_size,
        distribution: settings.worker.distribution,
        queues: Vec::new(),
        tasks: Vec::new(),
        next: 0,
    };
    std::thread::Builder::new()
        .name("kafka-consumer".into())
        .spawn(move || run(consumer, pool, progress, owners, settings, shutdown))
        .map_err(|e| KafkaSetupError::Embedded(e.to_string()))
}

/// A classic member learns of a rebalance at its next heartbeat, and a
/// cooperative rebalance takes two rounds, each waiting for every member:
/// a tenth of the session (not the usual third: 15 s for the default 45 s
/// session), at most Kafka's own default of 3 s.
fn heartbeat_interval(session_timeout: Duration) -> Duration {
    (session_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(3))
}

fn commit(
    consumer: &BaseConsumer<EngineContext>,
    progress: &Progress,
    topic: &str,
    mode: CommitMode,
) {
    let positions = progress.lock().take_commits();
    if positions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for (partition, offset) in positions {
        let _ = list.add_partition_offset(topic, partition, Offset::Offset(offset));
    }
    if let Err(e) = consumer.commit(&list, mode) {
        tracing::warn!(error = %e, "offset commit failed; retried at the next interval");
    }
}

/// Leaves the group and joins it again, as an operator asked: the
/// revocation drains and commits as in any rebalance; the partitions come
/// back (here or elsewhere) from their committed offsets.
fn restart(consumer: &BaseConsumer<EngineContext>, progress: &Progress, topic: &str) {
    commit(consumer, progress, topic, CommitMode::Sync);
    consumer.unsubscribe();
    match consumer.subscribe(&[topic]) {
        Ok(()) => tracing::warn!("consumption restarted: left the group, rejoining"),
        Err(e) => tracing::error!(error = %e, "cannot rejoin the group after a restart"),
    }
}

/// Moves the committed offsets of the partitions this instance holds (of
/// those asked for): they are let go as in a revocation (the messages in
/// hand finish or are left, their positions committed), then the consumer
/// seeks to the target and commits it; fetching goes on from there.
fn move_offsets(consumer: &BaseConsumer<EngineContext>, request: &MoveOffsets, topic: &str) {
    let held: Vec<i32> = consumer
        .assignment()
        .map(|a| a.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default();
    let partitions: Vec<i32> = held
        .into_iter()
        .filter(|p| {
            request
                .partitions
                .as_ref()
                .is_none_or(|asked| asked.contains(p))
        })
        .collect();
    if partitions.is_empty() {
        return;
    }
    consumer.context().release(consumer, &partitions);
    let targets = match offset_targets(consumer, topic, &partitions, request.to) {
        Ok(targets) => targets,
        Err(e) => {
            tracing::error!(error = %e, ?partitions, "offsets not moved: cannot find the targets");
            return;
        }
    };
    let moved = consumer
        .seek_partitions(targets.clone(), Duration::from_secs(10))
        .and_then(|_| consumer.commit(&targets, CommitMode::Sync));
    match moved {
        Ok(()) => {
            let at: Vec<(i32, i64)> = targets
                .elements()
                .iter()
                .filter_map(|e| e.offset().to_raw().map(|o| (e.partition(), o)))
                .collect();
            tracing::warn!(to = ?request.to, offsets = ?at, "offsets moved");
        }
        Err(e) => tracing::error!(error = %e, ?partitions, "offsets not moved"),
    }
}

/// The offset of each partition that `to` names.
fn offset_targets(
    consumer: &BaseConsumer<EngineContext>,
    topic: &str,
    partitions: &[i32],
    to: OffsetTarget,
) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
    let timeout = Duration::from_secs(10);
    let mut targets = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        let offset = match to {
            OffsetTarget::Earliest => low,
            OffsetTarget::Latest => high,
            OffsetTarget::Time(at) => {
                let mut asked = TopicPartitionList::new();
                asked.add_partition_offset(topic, *p, Offset::Offset(at.timestamp_millis()))?;
                let found = consumer.offsets_for_times(asked, timeout)?;
                // No event at or after the time: the end.
                found
                    .find_partition(topic, *p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
                    .unwrap_or(high)
            }
        };
        targets.add_partition_offset(topic, *p, Offset::Offset(offset))?;
    }
    Ok(targets)
}

/// What the poll thread last saw, for the fleet telemetry.
#[derive(Debug, Clone, Default)]
pub struct EngineStatus {
    pub partitions: Vec<i32>,
    pub workers: usize,
    pub paused: bool,
    pub lag: BTreeMap<i32, i64>,
}

/// Messages not yet handled, per partition: on the broker beyond what was
/// handed out (as of librdkafka's last statistics), plus those handed out
/// and still queued or running. Published per partition as a gauge.
fn partition_lag(
    consumer: &BaseConsumer<EngineContext>,
    progress: &Progress,
) -> BTreeMap<i32, i64> {
    let broker_lag = consumer
        .context()
        .broker_lag
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let tracker = progress.lock();
    broker_lag
        .into_iter()
        .map(|(partition, lag)| {
            let lag = lag + tracker.in_flight(partition) as i64;
            set_lag_gauge(partition, lag);
            (partition, lag)
        })
        .collect()
}

fn set_lag_gauge(partition: i32, lag: i64) {
    metrics::gauge!(crate::metrics::CONSUMER_LAG, "partition" => partition.to_string())
        .set(lag as f64);
}

fn run(
    consumer: BaseConsumer<EngineContext>,
    mut pool: Pool,
    progress: Arc<Progress>,
    owners: Arc<Owners>,
    settings: EngineSettings,
    shutdown: Shutdown,
) -> Result<(), KafkaSetupError> {
    let w = &settings.worker;
    pool.spawn_workers(w.min_workers);
    tracing::info!(
        topic = %settings.topic, group = %settings.group, workers = pool.len(),
        "consumer started"
    );
    let mut last_commit = Instant::now();
    let mut last_balance = Instant::now();
    let mut paused = false;
    // Published from the start: "not paused" is a figure too, and a panel
    // or alert needs it before the first pause.
    metrics::gauge!(crate::metrics::CONSUMPTION_PAUSED).set(0.0);
    let mut fatal = None;
    while !shutdown.is_triggered() {
        let want_paused = settings.controls.paused.load(Ordering::SeqCst);
        if want_paused != paused {
            if let Ok(assignment) = consumer.assignment() {
                let switched = if want_paused {
                    consumer.pause(&assignment)
                } else {
                    consumer.resume(&assignment)
                };
                match switched {
                    Ok(()) => {
                        paused = want_paused;
                        metrics::gauge!(crate::metrics::CONSUMPTION_PAUSED).set(if paused {
                            1.0
                        } else {
                            0.0
                        });
                        tracing::info!(paused, "consumption switched");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot switch consumption"),
                }
            }
        }
        if settings.controls.restart.swap(false, Ordering::SeqCst) {
            restart(&consumer, &progress, &settings.topic);
        }
        if let Some(request) = settings.controls.take_offsets() {
            move_offsets(&consumer, &request, &settings.topic);
        }
        if last_commit.elapsed() >= w.commit_interval {
            commit(&consumer, &progress, &settings.topic, CommitMode::Async);
            last_commit = Instant::now();
        }
        let rebalanced = consumer.context().rebalanced.swap(false, Ordering::SeqCst);
        if rebalanced || last_balance.elapsed() >= w.balance_interval {
            last_balance = Instant::now();
            let lags = partition_lag(&consumer, &progress);
            let lag = lags.values().sum();
            // An operator's count (the control topic) overrides the lag.
            let wanted = match settings.controls.workers.load(Ordering::SeqCst) {
                0 => desired_workers(lag, w.lag_threshold, w.min_workers, w.max_workers),
                set => set.clamp(w.min_workers, w.max_workers),
            };
            if wanted != pool.len() {
                // Changing the count re-maps keys to workers: let every
                // queued message finish first so no key is handled by two
                // workers at once, which would reorder its events.
                pool.resize(wanted);
                tracing::info!(workers = wanted, lag, "worker count changed");
            }
            let mut partitions: Vec<i32> = consumer
                .assignment()
                .map(|a| a.elements().iter().map(|e| e.partition()).collect())
                .unwrap_or_default();
            partitions.sort_unstable();
            *settings.status.lock().unwrap_or_else(|e| e.into_inner()) = EngineStatus {
                partitions,
                workers: pool.len(),
                paused,
                lag: lags,
            };
        }
        match consumer.poll(POLL) {
            None => {}
            Some(Err(e)) => {
                // A fatal error (the broker refused the group protocol, a
                // static member fenced by another with its instance id)
                // ends the consumer for good: stop the role and say why.
                if let Some((_, reason)) = consumer.client().fatal_error() {
                    fatal = Some(reason);
                    break;
                }
                tracing::warn!(error = %e, "consumer error");
            }
            Some(Ok(message)) => {
                let message = message.detach();
                let partition = message.partition();
                let generation = progress.lock().dispatched(partition, message.offset());
                let delivery = Delivery {
                    message,
                    generation,
                    cancel: owners.of(partition),
                };
                if !pool.dispatch(delivery) {
                    tracing::error!("worker queue closed unexpectedly");
                }
            }
        }
    }
    tracing::info!("consumer stopping: finishing in-flight messages");
    owners.stop_all();
    pool.close();
    commit(&consumer, &progress, &settings.topic, CommitMode::Sync);
    consumer.unsubscribe();
    drop(consumer); // closes the consumer: leaves the group
    tracing::info!("consumer stopped");
    fatal.map_or(Ok(()), |reason| Err(KafkaSetupError::GroupFailed(reason)))
}
