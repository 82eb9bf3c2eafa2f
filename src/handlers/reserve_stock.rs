//! OrderCreated → reserve the order's stock, or reject the order when a
//! tracked product is short.

use crate::domain::{OrderId, OrderStatus};
use crate::events::{self, NewEvent, OrderSubject};
use crate::store::{Applied, Effect, InboxEntry, Shortage, Store, StoreError, Transition};

pub const RESERVED_NOTE: &str = "stock reserved";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveStock {
    pub order_id: OrderId,
}

impl ReserveStock {
    /// The items are read from the database, the order's source of truth,
    /// not from the payload: only the order id is needed.
    pub fn parse(payload: &[u8]) -> Result<Self, String> {
        let subject: OrderSubject = events::read_payload(payload)?;
        Ok(Self {
            order_id: subject.order_id,
        })
    }

    pub async fn apply(
        &self,
        store: &dyn Store,
        inbox: &InboxEntry,
    ) -> Result<Applied, StoreError> {
        let reserve = Transition {
            to: OrderStatus::Reserved,
            note: RESERVED_NOTE.into(),
            event: None,
        };
        match store
            .apply(inbox, self.order_id, &Effect::TakeStock, &reserve)
            .await?
        {
            // Nothing was taken: the rejection is written on its own, with
            // the inbox row, so a re-delivery finds the event handled.
            Applied::Short(short) => {
                let reason = rejection_reason(&short);
                let reject = Transition {
                    to: OrderStatus::Rejected,
                    note: reason.clone(),
                    event: Some(
                        NewEvent::order_rejected(self.order_id, reason)
                            .with_traceparent(inbox.traceparent.clone()),
                    ),
                };
                store
                    .apply(inbox, self.order_id, &Effect::Nothing, &reject)
                    .await
            }
            applied => Ok(applied),
        }
    }
}

fn rejection_reason(short: &[Shortage]) -> String {
    let products: Vec<String> = short
        .iter()
        .map(|s| format!("{}: {} wanted, {} on hand", s.product, s.wanted, s.on_hand))
        .collect();
    format!("out of stock: {}", products.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rejection_names_every_short_product() {
        let short = [
            Shortage {
                product: "lamp".into(),
                wanted: 3,
                on_hand: 1,
            },
            Shortage {
                product: "desk".into(),
                wanted: 1,
                on_hand: 0,
            },
        ];
        assert_eq!(
            rejection_reason(&short),
            "out of stock: lamp: 3 wanted, 1 on hand; desk: 1 wanted, 0 on hand"
        );
    }
}
