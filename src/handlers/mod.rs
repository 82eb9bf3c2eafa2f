//! The worker's typed handlers. A Kafka message is decoded into a
//! [`Command`] (by `ce_type`, or a KafkaFlow `Message-Type` header); each
//! command lives in its own module, reads its typed payload and decides what
//! happens to the order; the store executes that decision. [`process`] runs
//! a message to its [`Outcome`]: retries, duplicates, unknown types and the
//! dead-letter topic.

mod message;
mod notify_customer;
mod process;
mod reserve_stock;
mod start_shipping;

pub use message::{decode, Decoded, MESSAGE_TYPE};
pub use notify_customer::NotifyCustomer;
pub use process::{process, HandlerContext, HandlerStats, Outcome};
pub use reserve_stock::{ReserveStock, RESERVED_NOTE};
pub use start_shipping::StartShipping;

use crate::events::EventType;
use crate::store::{Applied, InboxEntry, StoreError};

/// What an event asks the worker to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    ReserveStock(ReserveStock),
    StartShipping(StartShipping),
    NotifyCustomer(NotifyCustomer),
}

impl Command {
    /// The command for an event of `event_type`, `None` if the worker has no
    /// handler for that type; an error if the payload cannot be read (it
    /// never will be).
    pub fn from_event(event_type: EventType, payload: &[u8]) -> Option<Result<Self, String>> {
        Some(match event_type {
            EventType::OrderCreated => ReserveStock::parse(payload).map(Self::ReserveStock),
            EventType::OrderPaid => StartShipping::parse(payload).map(Self::StartShipping),
            EventType::OrderShipped => NotifyCustomer::parse(payload).map(Self::NotifyCustomer),
            EventType::OrderRejected | EventType::OrderFulfilled => return None,
        })
    }

    pub async fn apply(
        &self,
        ctx: &HandlerContext,
        inbox: &InboxEntry,
    ) -> Result<Applied, StoreError> {
        let store = ctx.store.as_ref();
        match self {
            Self::ReserveStock(cmd) => cmd.apply(store, inbox).await,
            Self::StartShipping(cmd) => cmd.apply(store, inbox).await,
            Self::NotifyCustomer(cmd) => cmd.apply(store, &ctx.notifications, inbox).await,
        }
    }
}
