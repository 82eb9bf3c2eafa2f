//! Group commit of creations and reservations: the batches the lanes hand
//! over, written with the statements of `statements.rs`, one statement per
//! batch, the one-order statement for a batch of one, and one by one when a
//! shared statement fails for another reason than an outage.

use super::statements::{CREATE_ORDERS_SQL, CREATE_ORDER_SQL, RESERVE_MANY_SQL, RESERVE_SQL};
use super::*;

/// One order for the grouped create.
pub(super) struct OrderWrite {
    id: OrderId,
    order: NewOrder,
    event: NewEvent,
    idempotency: Option<IdempotencyKey>,
    now: DateTime<Utc>,
}

/// One OrderCreated for the grouped reservation.
pub(super) struct Reservation {
    inbox: InboxEntry,
    order_id: OrderId,
    /// The timeline note of the move to Reserved.
    note: String,
}

/// What every request of a batch is told when the batch's statement could
/// not reach the database: its own attempt would fail the same way (and
/// one by one, each would wait for the pool's timeout in turn).
fn shared_outage(e: &StoreError) -> StoreError {
    StoreError::Unavailable(sqlx::Error::Io(std::io::Error::other(e.to_string())))
}

/// Writes a batch of orders: one statement for several, the one-order
/// statement for one. If the shared statement fails for another reason than
/// an outage, each order is written on its own, so one bad order fails
/// alone.
pub(super) async fn create_orders(
    pool: PgPool,
    batch: Vec<OrderWrite>,
) -> Vec<Result<Written, StoreError>> {
    if batch.len() > 1 {
        match create_many(&pool, &batch).await {
            Ok(created) => {
                return batch
                    .iter()
                    .map(|w| {
                        Ok(if created.contains(&w.id.0) {
                            Written::Created
                        } else {
                            Written::KeyTaken
                        })
                    })
                    .collect()
            }
            Err(e @ StoreError::Unavailable(_)) => {
                return batch.iter().map(|_| Err(shared_outage(&e))).collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, orders = batch.len(), "grouped create failed; writing the orders one by one");
            }
        }
    }
    let mut answers = Vec::with_capacity(batch.len());
    for write in &batch {
        answers.push(create_one(&pool, write).await);
    }
    answers
}

async fn create_one(pool: &PgPool, w: &OrderWrite) -> Result<Written, StoreError> {
    let order = &w.order;
    let lines: Vec<i32> = (0..order.items.len() as i32).collect();
    let products: Vec<&str> = order
        .items
        .iter()
        .map(|i| i.product_name.as_str())
        .collect();
    let quantities: Vec<i64> = order.items.iter().map(|i| i.quantity).collect();
    let prices: Vec<Decimal> = order
        .items
        .iter()
        .map(|i| money_to_db(i.unit_price))
        .collect();
    let create = sqlx::query(CREATE_ORDER_SQL)
        .bind(w.id.0)
        .bind(&order.customer_name)
        .bind(&order.customer_email)
        .bind(order.customer_id.as_deref())
        .bind(money_to_db(order.total()))
        .bind(OrderStatus::Pending.as_str())
        .bind(w.now)
        .bind(CREATED_NOTE)
        .bind(w.idempotency.as_ref().map(|k| k.key.as_str()))
        .bind(w.idempotency.as_ref().map(|k| k.request_hash.as_str()))
        .bind(lines)
        .bind(products)
        .bind(quantities)
        .bind(prices);
    let created: bool = bind_event(create, &w.event)
        .fetch_one(pool)
        .await?
        .try_get(0)?;
    Ok(if created {
        Written::Created
    } else {
        Written::KeyTaken
    })
}

/// The ids of the orders [`CREATE_ORDERS_SQL`] wrote.
async fn create_many(pool: &PgPool, batch: &[OrderWrite]) -> Result<Vec<Uuid>, StoreError> {
    let orders = || batch.iter().map(|w| &w.order);
    let items = || {
        batch.iter().flat_map(|w| {
            w.order
                .items
                .iter()
                .enumerate()
                .map(move |(line, item)| (w.id.0, line, item))
        })
    };
    let events = || batch.iter().map(|w| &w.event);
    let rows = sqlx::query(CREATE_ORDERS_SQL)
        .bind(batch.iter().map(|w| w.id.0).collect::<Vec<_>>())
        .bind(
            orders()
                .map(|o| o.customer_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            orders()
                .map(|o| o.customer_email.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            orders()
                .map(|o| o.customer_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(orders().map(|o| money_to_db(o.total())).collect::<Vec<_>>())
        .bind(batch.iter().map(|w| w.now).collect::<Vec<_>>())
        .bind(
            batch
                .iter()
                .map(|w| w.idempotency.as_ref().map(|k| k.key.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            batch
                .iter()
                .map(|w| w.idempotency.as_ref().map(|k| k.request_hash.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(OrderStatus::Pending.as_str())
        .bind(CREATED_NOTE)
        .bind(items().map(|(id, _, _)| id).collect::<Vec<_>>())
        .bind(items().map(|(_, line, _)| line as i32).collect::<Vec<_>>())
        .bind(
            items()
                .map(|(_, _, i)| i.product_name.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(items().map(|(_, _, i)| i.quantity).collect::<Vec<_>>())
        .bind(
            items()
                .map(|(_, _, i)| money_to_db(i.unit_price))
                .collect::<Vec<_>>(),
        )
        .bind(events().map(|e| e.id).collect::<Vec<_>>())
        .bind(events().map(|e| e.destination).collect::<Vec<_>>())
        .bind(events().map(|e| e.order_id.to_string()).collect::<Vec<_>>())
        .bind(events().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
        .bind(events().map(|e| e.payload.to_string()).collect::<Vec<_>>())
        .bind(
            events()
                .map(|e| e.traceparent.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Reserves a batch: one statement for the first event of each order, the
/// one-order statement for a lone event and for an order's later events in
/// the batch (after the shared statement, so an order's events keep their
/// order). Other failures than an outage fall back to one by one as well.
pub(super) async fn reserve_orders(
    pool: PgPool,
    batch: Vec<Reservation>,
) -> Vec<Result<Option<Applied>, StoreError>> {
    let mut answers: Vec<Option<Result<Option<Applied>, StoreError>>> =
        batch.iter().map(|_| None).collect();
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<usize> = (0..batch.len())
        .filter(|&i| seen.insert(batch[i].order_id))
        .collect();
    if firsts.len() > 1 {
        let group: Vec<&Reservation> = firsts.iter().map(|&i| &batch[i]).collect();
        match reserve_many(&pool, &group).await {
            Ok(applied) => {
                for (&i, answer) in firsts.iter().zip(applied) {
                    answers[i] = Some(Ok(answer));
                }
            }
            Err(e @ StoreError::Unavailable(_)) => {
                return batch.iter().map(|_| Err(shared_outage(&e))).collect();
            }
            Err(e) => {
                tracing::debug!(error = %e, events = group.len(), "grouped reservation failed; reserving one by one");
            }
        }
    }
    let mut out = Vec::with_capacity(batch.len());
    for (reservation, answer) in batch.iter().zip(answers) {
        out.push(match answer {
            Some(answer) => answer,
            None => reserve_one(&pool, reservation).await,
        });
    }
    out
}

fn reserve_answer(ready: bool, fresh: bool) -> Option<Applied> {
    match (ready, fresh) {
        (true, true) => Some(Applied::Done {
            status: OrderStatus::Reserved,
        }),
        (true, false) => Some(Applied::Duplicate),
        (false, _) => None,
    }
}

async fn reserve_one(pool: &PgPool, r: &Reservation) -> Result<Option<Applied>, StoreError> {
    let (ready, fresh): (bool, bool) = sqlx::query_as(RESERVE_SQL)
        .bind(r.order_id.0)
        .bind(&r.inbox.consumer_group)
        .bind(&r.inbox.event_id)
        .bind(&r.inbox.event_type)
        .bind(Utc::now())
        .bind(OrderStatus::Reserved.as_str())
        .bind(OrderStatus::Pending.as_str())
        .bind(&r.note)
        .fetch_one(pool)
        .await?;
    Ok(reserve_answer(ready, fresh))
}

async fn reserve_many(
    pool: &PgPool,
    group: &[&Reservation],
) -> Result<Vec<Option<Applied>>, StoreError> {
    let rows: Vec<(bool, bool)> = sqlx::query_as(RESERVE_MANY_SQL)
        .bind(group.iter().map(|r| r.order_id.0).collect::<Vec<_>>())
        .bind(
            group
                .iter()
                .map(|r| r.inbox.consumer_group.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            group
                .iter()
                .map(|r| r.inbox.event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            group
                .iter()
                .map(|r| r.inbox.event_type.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(Utc::now())
        .bind(OrderStatus::Reserved.as_str())
        .bind(OrderStatus::Pending.as_str())
        .bind(group.iter().map(|r| r.note.as_str()).collect::<Vec<_>>())
        .fetch_all(pool)
        .await?;
    if rows.len() != group.len() {
        return Err(StoreError::Corrupt(format!(
            "grouped reservation answered {} rows for {} events",
            rows.len(),
            group.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|(ready, fresh)| reserve_answer(ready, fresh))
        .collect())
}

/// No answer from a group-commit lane: the runtime is shutting down.
fn lanes_gone() -> StoreError {
    StoreError::Unavailable(sqlx::Error::PoolClosed)
}

impl PgStore {
    pub(super) async fn write_order(
        &self,
        id: OrderId,
        order: &NewOrder,
        event: &NewEvent,
        idempotency: Option<&IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> Result<Written, StoreError> {
        let write = OrderWrite {
            id,
            order: order.clone(),
            event: event.clone(),
            idempotency: idempotency.cloned(),
            now,
        };
        self.creates
            .submit(write)
            .await
            .unwrap_or_else(|| Err(lanes_gone()))
    }

    pub(super) async fn take_stock_at_once(
        &self,
        inbox: &InboxEntry,
        order_id: OrderId,
        change: &Transition,
    ) -> Result<Option<Applied>, StoreError> {
        // The statements move Pending to Reserved; any other change takes
        // the general path.
        if change.to != OrderStatus::Reserved || change.event.is_some() {
            return Ok(None);
        }
        let reservation = Reservation {
            inbox: inbox.clone(),
            order_id,
            note: change.note.clone(),
        };
        self.reservations
            .submit(reservation)
            .await
            .unwrap_or_else(|| Err(lanes_gone()))
    }
}
