//! The dashboard's recent past: a background task samples the pipeline
//! every `Admin.HistoryIntervalMs` into a ring buffer of the last
//! `Admin.HistorySeconds`, which `GET /admin/api/history` returns and the
//! page draws. It lives in memory in the serving process, so a restart
//! starts it afresh, and each API replica keeps its own.
//!
//! Every figure is fleet-wide, so replicas behind one load balancer draw
//! the same curves: orders created from the database (all API processes
//! write there), events handled and consumer lag from the workers'
//! telemetry (`fleet`, as `GET /admin/api/instances` lists it), the outbox
//! from the database. None is read from this process's metrics, whose
//! series belong to one process and may appear, change or go.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};

use crate::brokers::Brokers;
use crate::fleet::{self, Instance};
use crate::shutdown::Shutdown;
use crate::store::SharedStore;

/// Orders are counted by the time in their ids, which is taken just
/// before their transaction commits. Counting since this long before the
/// previous sample catches an order whose commit outlasted the sample by up
/// to this much; the cost is a key range of this many seconds of orders.
const LOOKBACK: Duration = Duration::from_secs(10);

/// One sample. A figure whose source could not be read is `null` (a gap in
/// the chart), not zero.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPoint {
    /// When it was taken; strictly increasing along the series.
    pub at: DateTime<Utc>,
    /// Orders created since the previous point, by every API process.
    pub orders_created: Option<i64>,
    pub orders_created_per_second: Option<f64>,
    /// The sum of the worker instances' own rates over their last
    /// telemetry interval; 0 when no instance is up.
    pub events_handled_per_second: Option<f64>,
    /// Messages not yet handled on the orders topic, summed over the
    /// partitions the instances that are up hold; `null` when none is up.
    pub consumer_lag: Option<i64>,
    /// Unpublished outbox rows, and how long the oldest has waited.
    pub outbox_backlog: Option<i64>,
    pub outbox_oldest_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    /// Time between points (`Admin.HistoryIntervalMs`).
    pub interval_seconds: f64,
    /// The most points kept; older ones are dropped.
    pub capacity: usize,
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
}

/// The ring buffer the sampler writes and the admin API reads.
pub struct Recorder {
    interval: Duration,
    capacity: usize,
    points: Mutex<VecDeque<HistoryPoint>>,
}

impl Recorder {
    pub fn new(interval: Duration, capacity: usize) -> Self {
        Self {
            interval,
            capacity: capacity.max(1),
            points: Mutex::new(VecDeque::with_capacity(capacity.max(1))),
        }
    }

    fn push(&self, point: HistoryPoint) {
        let mut points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        if points.len() == self.capacity {
            points.pop_front();
        }
        points.push_back(point);
    }

    pub fn snapshot(&self) -> History {
        let points = self.points.lock().unwrap_or_else(|e| e.into_inner());
        History {
            interval_seconds: self.interval.as_secs_f64(),
            capacity: self.capacity,
            points: points.iter().cloned().collect(),
        }
    }
}

/// The orders counted at the previous sample: how many had ids minted
/// since `lower`, as of `taken`.
struct Baseline {
    lower: DateTime<Utc>,
    count: i64,
    taken: Instant,
}

/// The background task that fills a [`Recorder`].
pub struct Sampler {
    pub recorder: Arc<Recorder>,
    pub store: SharedStore,
    pub brokers: Brokers,
    pub telemetry_topic: String,
    pub telemetry_interval: Duration,
}

impl Sampler {
    /// Samples every interval until shutdown. The first tick only counts
    /// the orders (a rate needs two counts): the first point comes one
    /// interval after the start.
    pub async fn run(self, mut shutdown: Shutdown) {
        // Wall time read once, then advanced on the monotonic clock: a
        // clock step never reorders the series.
        let (wall_start, start) = (Utc::now(), Instant::now());
        let mut baseline = None;
        let mut first = true;
        let mut tick = tokio::time::interval(self.recorder.interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            let at = wall_start + (Instant::now() - start);
            let work = async {
                if first {
                    self.orders_created(&mut baseline).await;
                    None
                } else {
                    Some(self.sample(at, &mut baseline).await)
                }
            };
            tokio::select! {
                point = work => if let Some(point) = point {
                    self.recorder.push(point);
                },
                _ = shutdown.wait() => break,
            }
            first = false;
        }
    }

    async fn sample(&self, at: DateTime<Utc>, baseline: &mut Option<Baseline>) -> HistoryPoint {
        let (created, backlog, instances) = tokio::join!(
            self.orders_created(baseline),
            self.store.outbox_backlog(),
            fleet::instances(
                &self.brokers,
                &self.telemetry_topic,
                self.telemetry_interval
            ),
        );
        let (handled, lag) = match instances {
            Ok(instances) => {
                let (handled, lag) = fleet_figures(&instances);
                (Some(handled), lag)
            }
            Err(e) => {
                tracing::debug!(error = %e, "history: telemetry not read");
                (None, None)
            }
        };
        let (outbox_backlog, outbox_oldest_age_seconds) = match backlog {
            Ok(b) => (
                Some(b.rows),
                Some(b.oldest.map_or(0.0, |t| {
                    (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
                })),
            ),
            Err(e) => {
                tracing::debug!(error = %e, "history: outbox not read");
                (None, None)
            }
        };
        HistoryPoint {
            at,
            orders_created: created.map(|(n, _)| n),
            orders_created_per_second: created.map(|(n, secs)| n as f64 / secs.max(0.001)),
            events_handled_per_second: handled,
            consumer_lag: lag,
            outbox_backlog,
            outbox_oldest_age_seconds,
        }
    }

    /// Orders created since the previous sample and the seconds between
    /// the two (`None` without a baseline: at the start, after a failed
    /// count), and the baseline for the next sample: both counts in one
    /// snapshot, so an order committing between them is counted once.
    async fn orders_created(&self, baseline: &mut Option<Baseline>) -> Option<(i64, f64)> {
        let now = Utc::now();
        let next_lower = now - LOOKBACK;
        let lower = baseline.as_ref().map_or(next_lower, |b| b.lower);
        let taken = Instant::now();
        match self.store.orders_created_since([lower, next_lower]).await {
            Ok([since_lower, since_next]) => {
                let created = baseline.as_ref().map(|b| {
                    (
                        (since_lower - b.count).max(0),
                        (taken - b.taken).as_secs_f64(),
                    )
                });
                *baseline = Some(Baseline {
                    lower: next_lower,
                    count: since_next,
                    taken,
                });
                created
            }
            Err(e) => {
                tracing::debug!(error = %e, "history: orders not counted");
                // The next count starts afresh: a rate across the gap
                // would be averaged over time nobody saw.
                *baseline = None;
                None
            }
        }
    }
}

/// Events handled per second and the consumer lag over the instances that
/// are up. While partitions move, two instances may both report one for a
/// moment: the newer report counts.
fn fleet_figures(instances: &[Instance]) -> (f64, Option<i64>) {
    let up: Vec<&Instance> = instances.iter().filter(|i| i.state == "up").collect();
    // Folded from +0.0: an empty float sum is -0.0, which JSON would show.
    let handled = up
        .iter()
        .fold(0.0, |sum, i| sum + i.report.handled_per_second);
    let mut lag: BTreeMap<i32, (DateTime<Utc>, i64)> = BTreeMap::new();
    for instance in &up {
        let seen = instance.report.last_seen;
        for (&partition, &n) in &instance.report.lag {
            let entry = lag.entry(partition).or_insert((seen, n));
            if seen > entry.0 {
                *entry = (seen, n);
            }
        }
    }
    let total = (!up.is_empty()).then(|| lag.values().map(|(_, n)| n).sum());
    (handled, total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::InstanceReport;

    fn point(second: i64) -> HistoryPoint {
        HistoryPoint {
            at: DateTime::from_timestamp(second, 0).unwrap_or_default(),
            orders_created: Some(second),
            orders_created_per_second: None,
            events_handled_per_second: None,
            consumer_lag: None,
            outbox_backlog: None,
            outbox_oldest_age_seconds: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_points_in_order() {
        let recorder = Recorder::new(Duration::from_secs(5), 3);
        for s in 0..5 {
            recorder.push(point(s));
        }
        let history = recorder.snapshot();
        let kept: Vec<Option<i64>> = history.points.iter().map(|p| p.orders_created).collect();
        assert_eq!(kept, [Some(2), Some(3), Some(4)]);
        assert_eq!((history.capacity, history.interval_seconds), (3, 5.0));
    }

    fn instance(
        name: &str,
        state: &'static str,
        seen: i64,
        lag: &[(i32, i64)],
        rate: f64,
    ) -> Instance {
        Instance {
            report: InstanceReport {
                instance: name.into(),
                version: "0".into(),
                started_at: DateTime::from_timestamp(0, 0).unwrap_or_default(),
                partitions: lag.iter().map(|(p, _)| *p).collect(),
                workers: 1,
                paused: false,
                lag: lag.iter().copied().collect(),
                handled: 0,
                handled_per_second: rate,
                last_handled_at: None,
                last_seen: DateTime::from_timestamp(seen, 0).unwrap_or_default(),
            },
            state,
        }
    }

    #[test]
    fn fleet_figures_count_up_instances_and_each_partition_once() {
        let instances = [
            instance("a", "up", 100, &[(0, 5), (1, 7)], 10.0),
            // Took partition 1 over after a's last report.
            instance("b", "up", 101, &[(1, 2), (2, 3)], 2.5),
            instance("c", "gone", 50, &[(3, 1000)], 99.0),
        ];
        assert_eq!(fleet_figures(&instances), (12.5, Some(5 + 2 + 3)));
        assert_eq!(fleet_figures(&instances[2..]), (0.0, None));
        assert_eq!(fleet_figures(&[]), (0.0, None));
    }
}
