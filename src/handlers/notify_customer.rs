//! OrderShipped → tell the customer, fulfil the order, and emit
//! OrderFulfilled for the systems downstream.

use crate::domain::{OrderId, OrderStatus};
use crate::events::{self, NewEvent, OrderShipped};
use crate::notifier::Notifications;
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
        notifications: &Notifications,
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
        let effect = Effect::RecordNotification {
            notification: notification.clone(),
            retry_at: Notifications::unsent_by(),
        };
        let applied = store.apply(inbox, self.order_id, &effect, &change).await?;
        // After commit: a failed send is retried by the reconciler's sweep
        // rather than undoing the fulfilment.
        if matches!(applied, Applied::Done { .. }) {
            notifications.deliver(store, &notification, 0).await;
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
