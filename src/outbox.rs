//! The outbox relay: delivers committed outbox rows to a sink (Kafka, or the
//! Service Bus queue for fulfilment events) and marks them only after the
//! far side acknowledged them.
//!
//! Ordering across processes: one relay is active at a time, elected with the
//! store's lease (a PostgreSQL advisory lock); the others stand by and take
//! over within one poll interval when the leader's session ends. A single
//! active relay reading rows in id order, through an idempotent producer
//! (which neither reorders nor duplicates within a partition), is the
//! simplest design that keeps each order's events in commit order. Lanes by
//! key hash would scale further but multiply locks and producers; one relay
//! batching hundreds of rows per round trip is far from the bottleneck.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;

use crate::backoff::Backoff;
use crate::config::{Config, FulfilmentSink, OutboxSettings};
use crate::events::{DESTINATION_FULFILMENT, DESTINATION_ORDERS};
use crate::shutdown::Shutdown;
use crate::sink::Sink;
use crate::store::{OutboxFilter, OutboxRecord, RelayLease, SharedStore};

const PURGE_EVERY: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// After this many failed attempts the rows stay unmarked and are published
/// again later: a duplicate the consumer's inbox absorbs, never a loss.
const MARK_ATTEMPTS: u32 = 20;
/// Behind a backlog the batch doubles each full round, up to this many
/// times `Outbox.BatchSize`: a round waits for every acknowledgement of its
/// batch, so larger batches spend less of the catch-up at that barrier,
/// while a relay that keeps up reads what is there, as few rows as that.
const MAX_BATCH_GROWTH: usize = 8;

/// The relay of the orders topic and, with fulfilment on Kafka, of the
/// fulfilment topic; lease name shared by every process.
pub const MAIN_LEASE: &str = "outbox-relay";
/// The relay of the Service Bus fulfilment sink (worker role).
pub const FULFILMENT_LEASE: &str = "fulfilment-sink";

pub struct Relay {
    pub store: SharedStore,
    pub sink: Box<dyn Sink>,
    /// Which rows this relay delivers.
    pub filter: OutboxFilter,
    pub lease: &'static str,
    pub settings: OutboxSettings,
}

/// Where each outbox destination is published by the Kafka relay under
/// `config`: `None` drops the rows (fulfilment "none"); with fulfilment on
/// Service Bus the Kafka relay never reads fulfilment rows at all.
pub fn kafka_destinations(config: &Config) -> HashMap<&'static str, Option<String>> {
    HashMap::from([
        (DESTINATION_ORDERS, Some(config.kafka.orders.name.clone())),
        (
            DESTINATION_FULFILMENT,
            config.fulfilment.kafka_topic().map(String::from),
        ),
    ])
}

/// The rows the Kafka relay delivers under `config`.
pub fn kafka_filter(config: &Config) -> OutboxFilter {
    match config.fulfilment.sink {
        FulfilmentSink::ServiceBus { .. } => OutboxFilter {
            except: Some(DESTINATION_FULFILMENT),
            ..OutboxFilter::default()
        },
        _ => OutboxFilter::default(),
    }
}

/// What one round leaves to the next: rows published but not yet marked,
/// and the batch read ahead.
struct NextRound {
    unmarked: Vec<i64>,
    next: Option<Vec<OutboxRecord>>,
    /// Rows the next read asks for.
    limit: usize,
}

impl NextRound {
    fn new(batch_size: usize) -> Self {
        Self {
            unmarked: Vec::new(),
            next: None,
            limit: batch_size,
        }
    }

    /// A full read means more are waiting: ask for twice as many next time.
    fn read(&mut self, rows: usize, batch_size: usize) {
        self.limit = if rows >= self.limit {
            (self.limit * 2).min(batch_size * MAX_BATCH_GROWTH)
        } else {
            batch_size
        };
    }
}

enum Round {
    /// Published this many rows; look again at once.
    Published(usize),
    Empty,
    Failed,
    LeaseLost,
}

impl Relay {
    pub async fn run(mut self, mut shutdown: Shutdown) {
        // The failure counter at 0 from the start: the first failed batch
        // is an increase that an alert on it sees.
        metrics::counter!(crate::metrics::SINK_FAILURES, "relay" => self.lease).increment(0);
        let mut backoff = Backoff::new(FIRST_BACKOFF, self.settings.max_backoff);
        let mut standing_by_logged = false;
        // A standby reports 0 rather than nothing, so a fleet where nobody
        // leads shows as a maximum of 0, not as a missing series.
        report_leader(self.lease, false);
        while !shutdown.is_triggered() {
            match self.store.try_relay_lease(self.lease).await {
                Ok(Some(lease)) => {
                    tracing::info!(lease = self.lease, "outbox relay active");
                    standing_by_logged = false;
                    report_leader(self.lease, true);
                    self.lead(lease, &mut shutdown).await;
                    // The lease went with `lead` (lost, or given up on shutdown).
                    report_leader(self.lease, false);
                }
                Ok(None) => {
                    if !standing_by_logged {
                        tracing::info!("another process relays the outbox; standing by");
                        standing_by_logged = true;
                    }
                    self.idle(&mut shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the relay lease");
                    backoff.wait(&shutdown).await;
                }
            }
        }
        // Rows not yet marked are re-sent by the next leader (the
        // consumer's inbox absorbs the duplicate).
        self.sink.close().await;
        tracing::info!(lease = self.lease, "outbox relay stopped");
    }

    async fn idle(&self, shutdown: &mut Shutdown) {
        tokio::select! {
            _ = tokio::time::sleep(self.settings.poll_interval) => {}
            _ = shutdown.wait() => {}
        }
    }

    async fn lead(&mut self, mut lease: Box<dyn RelayLease>, shutdown: &mut Shutdown) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, self.settings.max_backoff);
        let mut last_purge = std::time::Instant::now();
        let mut next_round = NextRound::new(self.settings.batch_size);
        while !shutdown.is_triggered() {
            match self.round(lease.as_mut(), &mut next_round).await {
                Round::Published(n) => {
                    tracing::debug!(rows = n, "outbox batch published");
                    backoff.reset();
                }
                Round::Empty => {
                    backoff.reset();
                    if last_purge.elapsed() >= PURGE_EVERY {
                        last_purge = std::time::Instant::now();
                        self.purge().await;
                    }
                    tokio::select! {
                        _ = self.store.wait_for_outbox(self.settings.poll_interval) => {}
                        _ = shutdown.wait() => {}
                    }
                }
                Round::Failed => {
                    backoff.wait(shutdown).await;
                }
                Round::LeaseLost => {
                    tracing::warn!("relay lease lost; standing by");
                    break;
                }
            }
        }
        // Published is published, whoever leads next.
        mark(&self.store, &self.settings, &next_round.unmarked).await;
    }

    /// Delivers one batch. While the sink waits for its acknowledgements,
    /// the previous batch is marked, the lease checked and the next batch
    /// read (skipping the rows in flight), so the producer is rarely idle.
    /// The idempotent producer keeps the batches in order, as it keeps the
    /// rows of one batch.
    async fn round(&mut self, lease: &mut dyn RelayLease, next_round: &mut NextRound) -> Round {
        let Relay {
            store,
            sink,
            filter,
            settings,
            lease: lease_name,
        } = self;
        let limit = next_round.limit;
        let batch = match next_round.next.take() {
            Some(batch) => batch,
            None => {
                // New rows go out first: the rows of the last round are
                // marked while these are delivered (the read skips them),
                // and the lease is checked during the read, so a row that
                // wakes an idle relay waits for two round trips, not four.
                let (held, read) = tokio::join!(
                    lease.still_held(),
                    store.outbox_pending(limit, filter, &next_round.unmarked)
                );
                if !held {
                    return Round::LeaseLost;
                }
                match read {
                    Ok(batch) if batch.is_empty() => {
                        mark(store, settings, &std::mem::take(&mut next_round.unmarked)).await;
                        return Round::Empty;
                    }
                    Ok(batch) => {
                        next_round.read(batch.len(), settings.batch_size);
                        batch
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the outbox");
                        return Round::Failed;
                    }
                }
            }
        };
        let in_flight: Vec<i64> = batch.iter().map(|r| r.id).collect();
        let previous = std::mem::take(&mut next_round.unmarked);
        let ahead_limit = next_round.limit;
        let ahead = async {
            mark(store, settings, &previous).await;
            if !lease.still_held().await {
                return None;
            }
            Some(store.outbox_pending(ahead_limit, filter, &in_flight).await)
        };
        let (delivered, ahead) = tokio::join!(sink.deliver(&batch), ahead);
        count_published(&batch, &delivered.acked);
        let published = delivered.acked.len();
        if let Some(e) = delivered.failure {
            metrics::counter!(crate::metrics::SINK_FAILURES, "relay" => *lease_name).increment(1);
            // The batch read ahead would overtake the rows that failed.
            mark(store, settings, &delivered.acked).await;
            tracing::warn!(
                error = %e,
                published,
                pending = batch.len() - published,
                "the sink did not acknowledge every event; backing off"
            );
            return Round::Failed;
        }
        next_round.unmarked = delivered.acked;
        match ahead {
            None => Round::LeaseLost,
            Some(Ok(next)) => {
                next_round.read(next.len(), settings.batch_size);
                next_round.next = (!next.is_empty()).then_some(next);
                Round::Published(published)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the outbox ahead; reading again");
                Round::Published(published)
            }
        }
    }

    async fn purge(&self) {
        if self.settings.retention.is_zero() {
            return;
        }
        let Ok(retention) = chrono::Duration::from_std(self.settings.retention) else {
            return;
        };
        match self.store.outbox_purge(Utc::now() - retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "purged published outbox rows"),
            Err(e) => tracing::warn!(error = %e, "outbox purge failed"),
        }
    }
}

fn report_leader(lease: &'static str, leading: bool) {
    metrics::gauge!(crate::metrics::RELAY_LEADER, "lease" => lease).set(if leading {
        1.0
    } else {
        0.0
    });
}

/// Marks published rows, or deletes them when none are retained (a DELETE
/// costs a sixth of the UPDATE, which rewrites every row and its index
/// entries), retrying until the database takes it: rows left unmarked
/// would be published a second time.
async fn mark(store: &SharedStore, settings: &OutboxSettings, ids: &[i64]) {
    if ids.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(FIRST_BACKOFF, settings.max_backoff);
    let mut attempts = 0u32;
    loop {
        let done = if settings.retention.is_zero() {
            store.outbox_delete(ids).await
        } else {
            store.outbox_mark_published(ids).await
        };
        match done {
            Ok(()) => return,
            Err(e) => {
                attempts += 1;
                tracing::warn!(error = %e, attempts, rows = ids.len(), "cannot mark outbox rows published");
                if attempts >= MARK_ATTEMPTS {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One counter update per event type and destination of the batch, not one
/// per row: the label lookup is the costly part.
fn count_published(batch: &[OutboxRecord], acked: &[i64]) {
    let acked: std::collections::HashSet<i64> = acked.iter().copied().collect();
    let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
    for record in batch.iter().filter(|r| acked.contains(&r.id)) {
        *counts
            .entry((record.event_type.as_str(), record.destination.as_str()))
            .or_default() += 1;
    }
    for ((event_type, destination), n) in counts {
        metrics::counter!(
            crate::metrics::EVENTS_PUBLISHED,
            "type" => event_type.to_string(),
            "destination" => destination.to_string()
        )
        .increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backlog_doubles_the_batch_up_to_its_ceiling_and_a_short_read_resets_it() {
        let mut next_round = NextRound::new(500);
        let mut limits = Vec::new();
        for _ in 0..5 {
            let full = next_round.limit;
            next_round.read(full, 500);
            limits.push(next_round.limit);
        }
        assert_eq!(limits, [1000, 2000, 4000, 4000, 4000]);
        next_round.read(3999, 500);
        assert_eq!(next_round.limit, 500, "caught up: back to Outbox.BatchSize");
    }
}
