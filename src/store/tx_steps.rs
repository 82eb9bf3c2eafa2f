//! The steps write transactions are made of (a guarded status change with
//! its timeline entry and event, an inbox row, taking stock), shared by both
//! backends like the rest of `sql.rs`, and instantiated inside
//! `impl_store!` so that they see the backend's `Db` and imports.

macro_rules! tx_steps {
    () => {
        fn status_from_db(s: &str) -> Result<OrderStatus, StoreError> {
            s.parse().map_err(StoreError::Corrupt)
        }

        /// A counter column, never negative.
        fn count_from_db(n: i64) -> u32 {
            u32::try_from(n.max(0)).unwrap_or(u32::MAX)
        }

        async fn insert_timeline(
            tx: &mut Tx<'_>,
            id: OrderId,
            status: OrderStatus,
            note: &str,
            at: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO order_timeline (order_id, status, note, at) VALUES ($1, $2, $3, $4)",
            )
            .bind(id.0)
            .bind(status.as_str())
            .bind(note)
            .bind(at)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// Binds an event's outbox columns (event_id, destination,
        /// message_key, event_type, payload, traceparent), in that order.
        fn bind_event<'q>(
            query: sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>>,
            event: &'q NewEvent,
        ) -> sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments<'q>> {
            query
                .bind(event.id)
                .bind(event.destination)
                .bind(event.order_id.to_string())
                .bind(event.event_type.as_str())
                .bind(event.payload.to_string())
                .bind(event.traceparent.as_deref())
        }

        async fn insert_event(tx: &mut Tx<'_>, event: &NewEvent) -> Result<(), StoreError> {
            let insert = sqlx::query(
                "INSERT INTO outbox (event_id, destination, message_key, event_type, payload, \
                 traceparent, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            );
            bind_event(insert, event)
                .bind(event.occurred_at)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        /// The guarded update of one order's status, its timeline entry and
        /// event. The guard in the WHERE clause is the whole concurrency
        /// story: the row lock it takes serialises changes of one order, so
        /// its events enter the outbox in commit order.
        async fn transition_in_tx(
            tx: &mut Tx<'_>,
            id: OrderId,
            change: &Transition,
        ) -> Result<(), StoreError> {
            let Some(from) = change.to.predecessor() else {
                return Err(StoreError::Corrupt(format!("{} is not a target", change.to)));
            };
            let now = Utc::now();
            // An event for the orders topic is what moves the order on:
            // the order keeps it for the reconciler.
            let next = change
                .event
                .as_ref()
                .filter(|e| e.destination == crate::events::DESTINATION_ORDERS);
            let moved = sqlx::query(
                "UPDATE orders SET status = $1, updated_at = $2, \
                 event_id = COALESCE($5, event_id), event_payload = COALESCE($6, event_payload), \
                 event_traceparent = CASE WHEN $5 IS NULL THEN event_traceparent ELSE $7 END \
                 WHERE id = $3 AND status = $4",
            )
            .bind(change.to.as_str())
            .bind(now)
            .bind(id.0)
            .bind(from.as_str())
            .bind(next.map(|e| e.id.to_string()))
            .bind(next.map(|e| e.payload.to_string()))
            .bind(next.and_then(|e| e.traceparent.clone()))
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if moved == 0 {
                let current: Option<String> =
                    sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
                        .bind(id.0)
                        .fetch_optional(&mut **tx)
                        .await?;
                return Err(match current {
                    None => StoreError::NotFound(id),
                    Some(s) => StoreError::Conflict {
                        id,
                        current: status_from_db(&s)?,
                        target: change.to,
                    },
                });
            }
            insert_timeline(tx, id, change.to, &change.note, now).await?;
            if let Some(event) = &change.event {
                insert_event(tx, event).await?;
            }
            Ok(())
        }

        /// False if the event was handled before (the row exists).
        async fn insert_inbox(tx: &mut Tx<'_>, inbox: &InboxEntry) -> Result<bool, StoreError> {
            Ok(sqlx::query(
                "INSERT INTO inbox (consumer_group, event_id, event_type, handled_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (consumer_group, event_id) DO NOTHING",
            )
            .bind(&inbox.consumer_group)
            .bind(&inbox.event_id)
            .bind(&inbox.event_type)
            .bind(Utc::now())
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1)
        }

        /// Takes stock for every product of the order, in product order so
        /// concurrent reservations lock rows in one order and cannot
        /// deadlock. Each decrement is conditional (`on_hand >= wanted`), so
        /// stock never goes negative. Returns what was short, if anything.
        async fn take_stock(tx: &mut Tx<'_>, id: OrderId) -> Result<Vec<Shortage>, StoreError> {
            let wanted: Vec<(String, i64)> = sqlx::query_as(
                "SELECT product_name, CAST(SUM(quantity) AS BIGINT) FROM order_items WHERE order_id = $1 \
                 GROUP BY product_name ORDER BY product_name",
            )
            .bind(id.0)
            .fetch_all(&mut **tx)
            .await?;
            let now = Utc::now();
            let mut short = Vec::new();
            for (product, quantity) in wanted {
                let taken = sqlx::query(
                    "UPDATE inventory SET on_hand = on_hand - $2, reserved = reserved + $2, \
                     updated_at = $3 WHERE product_name = $1 AND on_hand >= $2",
                )
                .bind(&product)
                .bind(quantity)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if taken == 0 {
                    let on_hand: Option<i64> =
                        sqlx::query_scalar("SELECT on_hand FROM inventory WHERE product_name = $1")
                            .bind(&product)
                            .fetch_optional(&mut **tx)
                            .await?;
                    // No row: the product is untracked, always available.
                    if let Some(on_hand) = on_hand {
                        short.push(Shortage {
                            product,
                            wanted: quantity,
                            on_hand,
                        });
                    }
                }
            }
            Ok(short)
        }
    };
}

pub(crate) use tx_steps;
