//! OrderPaid → request the shipment; the order awaits it.

use crate::domain::{OrderId, OrderStatus};
use crate::events::{self, OrderPaid};
use crate::store::{Applied, Effect, InboxEntry, Store, StoreError, Transition};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartShipping {
    pub order_id: OrderId,
    pub payment_id: String,
}

impl StartShipping {
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let paid: OrderPaid = events::read_payload(payload)?;
        let payment_id = paid.payment_id.trim();
        if payment_id.is_empty() {
            return Err("has no paymentId".into());
        }
        Ok(Self {
            order_id: paid.order_id,
            payment_id: payment_id.to_string(),
        })
    }

    pub async fn apply(
        &self,
        store: &dyn Store,
        inbox: &InboxEntry,
    ) -> Result<Applied, StoreError> {
        let effect = Effect::RequestShipment {
            payment_id: self.payment_id.clone(),
        };
        let change = Transition {
            to: OrderStatus::AwaitingShipment,
            note: format!("shipping requested (payment {})", self.payment_id),
            event: None,
        };
        store.apply(inbox, self.order_id, &effect, &change).await
    }
}
