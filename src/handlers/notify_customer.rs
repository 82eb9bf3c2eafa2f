//! OrderShipped → tell the customer, fulfil the order, and emit
//! OrderFulfilled for the systems downstream.

use crate::domain::{OrderId, OrderStatus};
use crate::events::{self, NewEvent, OrderShipped};
use crate::notifier::Notifier;
use crate::store::{
    Applied, Customer, Effect, InboxEntry, Notification, Store, StoreError, Transition,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyCustomer {
    pub order_id: OrderId,
    pub tracking_number: Option<String>,
}

impl NotifyCustomer {
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let shipped: OrderShipped = events::read_payload(payload)?;
        Ok(Self {
            order_id: shipped.order_id,
            tracking_number: shipped
                .tracking_number
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
        })
    }

    pub async fn apply(
        &self,
        store: &dyn Store,
        notifier: &dyn Notifier,
        inbox: &InboxEntry,
    ) -> Result<Applied, StoreError> {
        let customer = store
            .customer(self.order_id)
            .await?
            .ok_or(StoreError::NotFound(self.order_id))?;
        let notification = Notification {
            order_id: self.order_id,
            recipient: customer.email.clone(),
            text: self.text(&customer),
        };
        let change = Transition {
            to: OrderStatus::Fulfilled,
            note: "customer notified".into(),
            event: Some(
                NewEvent::order_fulfilled(
                    self.order_id,
                    customer.email,
                    self.tracking_number.clone(),
                )
                .with_traceparent(inbox.traceparent.clone()),
            ),
        };
        let effect = Effect::RecordNotification(notification.clone());
        let applied = store.apply(inbox, self.order_id, &effect, &change).await?;
        if matches!(applied, Applied::Done { .. }) {
            send(store, notifier, &notification).await;
        }
        Ok(applied)
    }

    fn text(&self, customer: &Customer) -> String {
        let (name, id) = (&customer.name, self.order_id);
        match &self.tracking_number {
            Some(t) => format!("Hello {name}, your order {id} is on its way (tracking {t})."),
            None => format!("Hello {name}, your order {id} is on its way."),
        }
    }
}

/// After commit: a failed send leaves the row unsent for a later sweep
/// rather than undoing the fulfilment.
async fn send(store: &dyn Store, notifier: &dyn Notifier, notification: &Notification) {
    match notifier.notify(notification).await {
        Ok(()) => {
            if let Err(e) = store.mark_notification_sent(notification.order_id).await {
                tracing::warn!(error = %e, "cannot mark notification sent");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, order_id = %notification.order_id, "notification not sent")
        }
    }
}
