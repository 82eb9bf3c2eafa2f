//! The reconciler: no accepted order is left behind. Every order waits for
//! at most one event a handler moves it on with (OrderCreated while
//! Pending, OrderPaid while Paid, OrderShipped while Shipped), and keeps
//! that event. A sweep finds the orders that have waited longer than
//! `Reconcile.StuckAfterSeconds` while their event is neither handled (no
//! inbox row) nor queued (no unpublished outbox row): the broker lost it
//! (topic deleted, retention, unclean election, a group reset past it, or
//! the embedded broker's memory at a crash). It writes the event to the
//! outbox again with its original id: if the original was merely late, the
//! inbox drops the copy. Order holds: the re-driven event is the order's
//! latest on the orders topic, and only the relay publishes.
//!
//! The same sweep sends notifications whose send failed (or never
//! happened), until sent or given up on the order's timeline.
//!
//! One process sweeps at a time, elected with a lease like the relay.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::config::ReconcileSettings;
use crate::domain::{OrderId, OrderStatus};
use crate::events::EventType;
use crate::notifier::Notifications;
use crate::shutdown::Shutdown;
use crate::store::{RelayLease, SharedStore, StoreError, StuckOrder};

/// The lease name shared by every process.
pub const LEASE: &str = "reconciler";
/// Re-drives of one order are at most this far apart.
const MAX_REDRIVE_GAP: Duration = Duration::from_secs(6 * 3600);

/// A stuck order and what the pass did about it; `orderflow reconcile
/// --json` prints these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub order_id: OrderId,
    pub status: OrderStatus,
    /// When the order entered its status.
    pub since: DateTime<Utc>,
    #[schema(value_type = String, format = Uuid)]
    pub event_id: Uuid,
    pub event_type: EventType,
    /// Re-drives of this event before this pass.
    pub redrives: u32,
    /// Whether this pass published the event again.
    pub redriven: bool,
}

/// Which of the stuck orders a pass re-drives.
#[derive(Debug, Clone, Copy)]
pub enum Redrive {
    /// None: only list them.
    Nothing,
    /// Those due: never re-driven, or last re-driven longer ago than
    /// `stuck_after` doubled per earlier re-drive, and fewer than `max`
    /// times.
    Due { stuck_after: Duration, max: u32 },
    /// Every one, now (an operator's command, or a broker that forgot
    /// everything).
    All,
    /// This order only, now (the dashboard's button).
    Only(OrderId),
}

impl Redrive {
    fn wants(self, order: &StuckOrder, now: DateTime<Utc>) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Only(id) => order.order_id == id,
            Self::Due { stuck_after, max } => {
                if order.redrives >= max {
                    return false;
                }
                let Some(last) = order.last_redrive else {
                    return true;
                };
                let gap = stuck_after
                    .saturating_mul(1 << order.redrives.saturating_sub(1).min(20))
                    .min(MAX_REDRIVE_GAP);
                chrono::Duration::from_std(gap).is_ok_and(|gap| now - last >= gap)
            }
        }
    }
}

/// One pass: every order stuck since before `unchanged_since`, longest
/// stuck first, read `page` at a time, each re-driven as `redrive` says.
pub async fn pass(
    store: &SharedStore,
    consumer_group: &str,
    unchanged_since: DateTime<Utc>,
    page: usize,
    redrive: Redrive,
) -> Result<Vec<Finding>, StoreError> {
    let now = Utc::now();
    let mut findings = Vec::new();
    let mut after: Option<StuckOrder> = None;
    loop {
        let stuck = store
            .stuck_orders(consumer_group, unchanged_since, after.as_ref(), page)
            .await?;
        let full = stuck.len() >= page;
        after = stuck.last().cloned();
        findings.extend(redrive_page(store, consumer_group, stuck, redrive, now).await?);
        if !full {
            return Ok(findings);
        }
    }
}

async fn redrive_page(
    store: &SharedStore,
    consumer_group: &str,
    stuck: Vec<StuckOrder>,
    redrive: Redrive,
    now: DateTime<Utc>,
) -> Result<Vec<Finding>, StoreError> {
    let mut findings = Vec::with_capacity(stuck.len());
    for order in stuck {
        let redriven = redrive.wants(&order, now) && store.redrive(consumer_group, &order).await?;
        if redriven {
            ::metrics::counter!(crate::metrics::ORDERS_REDRIVEN, "status" => order.status.as_str())
                .increment(1);
            tracing::warn!(
                order_id = %order.order_id,
                status = %order.status,
                event_id = %order.event_id,
                event_type = %order.event_type,
                redrives = order.redrives + 1,
                "order re-driven"
            );
        }
        findings.push(Finding {
            order_id: order.order_id,
            status: order.status,
            since: order.since,
            event_id: order.event_id,
            event_type: order.event_type,
            redrives: order.redrives,
            redriven,
        });
    }
    Ok(findings)
}

/// Stuck means unchanged since this time.
pub fn unchanged_since(stuck_after: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(stuck_after)
        .ok()
        .and_then(|d| Utc::now().checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The background task of the worker role (and `all`).
pub struct Reconciler {
    pub store: SharedStore,
    pub consumer_group: String,
    pub settings: ReconcileSettings,
    pub notifications: Notifications,
    /// The broker forgets everything when the process stops (the embedded
    /// broker): the first sweep re-drives every stuck order at once, with
    /// no wait.
    pub broker_forgets: bool,
}

impl Reconciler {
    pub async fn run(self, mut shutdown: Shutdown) {
        // At 0 per status from the start in every process that may take
        // the lease: the first re-drive is then an increase that a panel
        // and an alert see, not a series appearing out of nothing.
        for status in stuck_statuses() {
            ::metrics::counter!(crate::metrics::ORDERS_REDRIVEN, "status" => status).increment(0);
        }
        let mut first = self.broker_forgets;
        let mut standing_by_logged = false;
        while !shutdown.is_triggered() {
            match self.store.try_relay_lease(LEASE).await {
                Ok(Some(mut lease)) => {
                    tracing::info!("reconciler active");
                    standing_by_logged = false;
                    while !shutdown.is_triggered() && lease.still_held().await {
                        self.sweep(std::mem::take(&mut first), lease.as_mut()).await;
                        self.idle(&mut shutdown).await;
                    }
                    // No longer the one sweeping: its last figures would
                    // stand beside the new holder's, and an alert on the
                    // max across pods would see orders long moved on.
                    report_stuck(&[]);
                }
                Ok(None) => {
                    if !standing_by_logged {
                        tracing::info!("another process reconciles; standing by");
                        standing_by_logged = true;
                    }
                    self.idle(&mut shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the reconciler lease");
                    self.idle(&mut shutdown).await;
                }
            }
        }
    }

    async fn idle(&self, shutdown: &mut Shutdown) {
        tokio::select! {
            _ = tokio::time::sleep(self.settings.interval) => {}
            _ = shutdown.wait() => {}
        }
    }

    /// Re-drives what is due and retries the notifications that are; a
    /// failure is logged and the next sweep tries again.
    async fn sweep(&self, first_after_restart: bool, lease: &mut dyn RelayLease) {
        let (unchanged_since, redrive) = if first_after_restart {
            (Utc::now(), Redrive::All)
        } else {
            (
                unchanged_since(self.settings.stuck_after),
                Redrive::Due {
                    stuck_after: self.settings.stuck_after,
                    max: self.settings.max_redrives,
                },
            )
        };
        match pass(
            &self.store,
            &self.consumer_group,
            unchanged_since,
            self.settings.batch_size,
            redrive,
        )
        .await
        {
            Ok(findings) => report_stuck(&findings),
            Err(e) => tracing::warn!(error = %e, "reconciler sweep failed"),
        }
        self.retry_notifications(lease).await;
    }

    /// Sends the notifications due, as long as the lease holds: a slow
    /// webhook (10 s a send) must not let two processes send the same.
    async fn retry_notifications(&self, lease: &mut dyn RelayLease) {
        let due = match self
            .store
            .notifications_due(Utc::now(), self.settings.batch_size)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the notifications due");
                return;
            }
        };
        for unsent in due {
            if !lease.still_held().await {
                return;
            }
            self.notifications
                .deliver(self.store.as_ref(), &unsent.notification, unsent.attempts)
                .await;
        }
    }
}

/// The statuses an order can be stuck in: those a handler's event moves it
/// out of.
fn stuck_statuses() -> impl Iterator<Item = &'static str> {
    OrderStatus::ALL
        .into_iter()
        .filter(|s| EventType::awaited_in(*s).is_some())
        .map(|s| s.as_str())
}

/// The stuck gauge, per status: every status a handler moves orders out
/// of, zero included, so a cleared backlog shows as 0 rather than as the
/// last figure.
fn report_stuck(findings: &[Finding]) {
    let mut counts: BTreeMap<&'static str, usize> = stuck_statuses().map(|s| (s, 0)).collect();
    for f in findings {
        *counts.entry(f.status.as_str()).or_default() += 1;
    }
    for (status, n) in counts {
        ::metrics::gauge!(crate::metrics::ORDERS_STUCK, "status" => status).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuck(redrives: u32, last_redrive: Option<DateTime<Utc>>) -> StuckOrder {
        StuckOrder {
            order_id: OrderId::new(),
            status: OrderStatus::Paid,
            since: Utc::now() - chrono::Duration::hours(1),
            event_id: Uuid::now_v7(),
            event_type: EventType::OrderPaid,
            redrives,
            last_redrive,
        }
    }

    #[test]
    fn re_drives_are_spaced_by_stuck_after_doubling_and_capped_in_number() {
        let now = Utc::now();
        let due = Redrive::Due {
            stuck_after: Duration::from_secs(60),
            max: 3,
        };
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert!(due.wants(&stuck(0, None), now), "never re-driven: at once");
        assert!(!due.wants(&stuck(1, ago(59)), now));
        assert!(due.wants(&stuck(1, ago(60)), now));
        assert!(!due.wants(&stuck(2, ago(119)), now), "second gap doubles");
        assert!(due.wants(&stuck(2, ago(120)), now));
        assert!(!due.wants(&stuck(3, ago(10_000)), now), "max reached");
        assert!(Redrive::All.wants(&stuck(3, ago(1)), now));
        assert!(!Redrive::Nothing.wants(&stuck(0, None), now));
    }
}
