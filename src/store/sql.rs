//! The SQL both backends share, written once and instantiated per backend by
//! `impl_store!`. sqlx has no backend-generic query API that stays readable
//! (every call would need a wall of trait bounds), so the shared code is a
//! macro whose body resolves these names in the backend's module:
//!
//! - `Db`: the sqlx database type;
//! - `MoneyCol`, `money_to_db`, `money_from_db`: how exact decimals are stored;
//! - `IdList`, `id_list`, `MARK_PUBLISHED_SQL`, `DELETE_PUBLISHED_SQL`,
//!   `NOT_IN_ID_LIST`: how a list of ids is bound and tested;
//! - `EVENT_QUEUED`: whether an order's awaited event (`o.event_id`) has an
//!   unpublished outbox row;
//! - inherent `run_migrations`, `wait_outbox`, `relay_lease`, `relay_pool`
//!   (the connections the relay reads and marks the outbox on) methods, and
//!   `outbox_written`, called after a commit that wrote outbox rows;
//! - inherent `write_order` (an order, its items, first timeline entry,
//!   event and idempotency key, atomically) and `take_stock_at_once` (the
//!   common case of a reservation in one statement, or `None` to take the
//!   general path): PostgreSQL does each in one statement with
//!   data-modifying CTEs, which SQLite does not have.
//!
//! Placeholders are `$n` in both: sqlx's SQLite driver binds them by number.

macro_rules! impl_store {
    ($store:ty) => {
        use async_trait::async_trait;
        use chrono::{DateTime, SubsecRound, Utc};
        use sqlx::Row;
        use std::time::Duration;
        use uuid::Uuid;

        use crate::domain::{
            InventoryLevel, NewOrder, Order, OrderId, OrderItem, OrderStatus, OrderSummary,
            TimelineEntry, CREATED_NOTE,
        };
        use crate::events::NewEvent;
        use crate::store::{
            Applied, Created, Customer, Effect, IdempotencyKey, InboxEntry, Notification,
            NotificationRetry, OutboxBacklog, OutboxFilter, OutboxRecord, RelayLease, Shortage,
            Store, StoreError, StuckOrder, Transition, UnsentNotification, Written,
        };

        type Tx<'a> = sqlx::Transaction<'a, Db>;

        /// A row of `product_name, on_hand, reserved, updated_at`.
        fn inventory_level(row: &<Db as sqlx::Database>::Row) -> Result<InventoryLevel, StoreError> {
            Ok(InventoryLevel {
                product_name: row.try_get("product_name")?,
                on_hand: row.try_get("on_hand")?,
                reserved: row.try_get("reserved")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        /// `$6` is the list of ids to skip, `NOT_IN_ID_LIST` the backend's
        /// way of saying `id` is not in it.
        static PENDING_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT id, event_id, destination, message_key, event_type, payload, \
                 traceparent, created_at FROM outbox WHERE published_at IS NULL \
                 AND ($2 IS NULL OR destination = $2) AND ($3 IS NULL OR destination <> $3) \
                 AND ($4 IS NULL OR id < $4 OR id > $5 OR {NOT_IN_ID_LIST}) \
                 ORDER BY id LIMIT $1"
            )
        });

        /// Orders waiting for a handler's event that is neither handled
        /// nor queued (`EVENT_QUEUED`: the backend's test for an
        /// unpublished outbox row of `o.event_id`).
        static STUCK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            let awaiting: Vec<String> = OrderStatus::ALL
                .into_iter()
                .filter(|s| crate::events::EventType::awaited_in(*s).is_some())
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            format!(
                "SELECT o.id, o.status, o.updated_at, o.event_id, \
                 CAST(COALESCE(r.attempts, 0) AS BIGINT) AS redrives, r.last_at \
                 FROM orders o LEFT JOIN redrives r ON r.order_id = o.id AND r.event_id = o.event_id \
                 WHERE o.status IN ({}) AND o.updated_at < $2 AND o.event_id IS NOT NULL \
                 AND NOT EXISTS (SELECT 1 FROM inbox i \
                     WHERE i.consumer_group = $1 AND i.event_id = o.event_id) \
                 AND NOT {EVENT_QUEUED} \
                 AND ($4 IS NULL OR o.updated_at > $4 OR (o.updated_at = $4 AND o.id > $5)) \
                 ORDER BY o.updated_at, o.id LIMIT $3",
                awaiting.join(", ")
            )
        });

        crate::store::tx_steps::tx_steps!();

        impl $store {
            async fn find_idempotency(
                &self,
                key: &str,
            ) -> Result<Option<(String, OrderId)>, StoreError> {
                let row = sqlx::query(
                    "SELECT request_hash, order_id FROM idempotency_keys WHERE key = $1",
                )
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| Ok((r.try_get("request_hash")?, OrderId(r.try_get("order_id")?))))
                    .transpose()
            }

            async fn replay(
                &self,
                key: &IdempotencyKey,
                stored_hash: String,
                order_id: OrderId,
            ) -> Result<Created, StoreError> {
                if stored_hash != key.request_hash {
                    return Err(StoreError::IdempotencyMismatch);
                }
                let order = self
                    .get_order(order_id)
                    .await?
                    .ok_or(StoreError::NotFound(order_id))?;
                Ok(Created {
                    order,
                    replayed: true,
                })
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn migrate(&self) -> Result<(), StoreError> {
                self.run_migrations().await
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn create_order(
                &self,
                order: &NewOrder,
                idempotency: Option<&IdempotencyKey>,
                traceparent: Option<String>,
            ) -> Result<Created, StoreError> {
                let id = OrderId::new();
                // The databases keep microseconds: the answer built here must
                // say exactly what a later read says.
                let now = Utc::now().trunc_subsecs(6);
                let event = NewEvent::order_created(id, order, now).with_traceparent(traceparent);
                match self.write_order(id, order, &event, idempotency, now).await? {
                    Written::Created => {}
                    Written::KeyTaken => {
                        let key = idempotency.ok_or_else(|| {
                            StoreError::Corrupt("a key was taken without a key".into())
                        })?;
                        let (hash, other) = self.find_idempotency(&key.key).await?.ok_or_else(|| {
                            StoreError::Corrupt("idempotency key vanished".into())
                        })?;
                        return self.replay(key, hash, other).await;
                    }
                }
                self.outbox_written();
                Ok(Created {
                    order: Order::pending(id, order, now, CREATED_NOTE),
                    replayed: false,
                })
            }

            async fn get_order(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
                let Some(row) = sqlx::query(
                    "SELECT id, status, customer_name, customer_email, customer_id, total_amount, \
                     created_at, updated_at FROM orders WHERE id = $1",
                )
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?
                else {
                    return Ok(None);
                };
                let items = sqlx::query(
                    "SELECT product_name, quantity, unit_price FROM order_items \
                     WHERE order_id = $1 ORDER BY line",
                )
                .bind(id.0)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(OrderItem {
                        product_name: r.try_get("product_name")?,
                        quantity: r.try_get("quantity")?,
                        unit_price: money_from_db(r.try_get("unit_price")?)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
                let timeline = sqlx::query(
                    "SELECT status, note, at FROM order_timeline WHERE order_id = $1 ORDER BY id",
                )
                .bind(id.0)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(TimelineEntry {
                        status: status_from_db(r.try_get("status")?)?,
                        note: r.try_get("note")?,
                        at: r.try_get("at")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(Some(Order {
                    id: OrderId(row.try_get("id")?),
                    status: status_from_db(row.try_get("status")?)?,
                    customer_name: row.try_get("customer_name")?,
                    customer_email: row.try_get("customer_email")?,
                    customer_id: row.try_get("customer_id")?,
                    total_amount: money_from_db(row.try_get("total_amount")?)?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                    items,
                    timeline,
                }))
            }

            async fn count_by_status(&self) -> Result<Vec<(OrderStatus, i64)>, StoreError> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT status, COUNT(*) FROM orders GROUP BY status ORDER BY status",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map(|(s, n)| Ok((status_from_db(&s)?, n)))
                    .collect()
            }

            async fn list_orders(
                &self,
                status: Option<OrderStatus>,
                after: Option<OrderId>,
                limit: u32,
            ) -> Result<Vec<OrderSummary>, StoreError> {
                sqlx::query(
                    "SELECT id, status, customer_name, customer_email, total_amount, created_at, \
                     updated_at FROM orders \
                     WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR id < $2) \
                     ORDER BY id DESC LIMIT $3",
                )
                .bind(status.map(OrderStatus::as_str))
                .bind(after.map(|a| a.0))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(OrderSummary {
                        id: OrderId(r.try_get("id")?),
                        status: status_from_db(r.try_get("status")?)?,
                        customer_name: r.try_get("customer_name")?,
                        customer_email: r.try_get("customer_email")?,
                        total_amount: money_from_db(r.try_get("total_amount")?)?,
                        created_at: r.try_get("created_at")?,
                        updated_at: r.try_get("updated_at")?,
                    })
                })
                .collect()
            }

            async fn orders_created_since(
                &self,
                since: [DateTime<Utc>; 2],
            ) -> Result<[i64; 2], StoreError> {
                let [a, b] = since.map(|t| OrderId::minted_from(t).0);
                let (a_count, b_count): (i64, i64) = sqlx::query_as(
                    "SELECT COUNT(CASE WHEN id >= $1 THEN 1 END), \
                     COUNT(CASE WHEN id >= $2 THEN 1 END) FROM orders WHERE id >= $3",
                )
                .bind(a)
                .bind(b)
                .bind(a.min(b))
                .fetch_one(&self.pool)
                .await?;
                Ok([a_count, b_count])
            }

            async fn transition(
                &self,
                id: OrderId,
                change: Transition,
            ) -> Result<Order, StoreError> {
                let mut tx = self.pool.begin().await?;
                transition_in_tx(&mut tx, id, &change).await?;
                tx.commit().await?;
                if change.event.is_some() {
                    self.outbox_written();
                }
                self.get_order(id).await?.ok_or(StoreError::NotFound(id))
            }

            async fn apply(
                &self,
                inbox: &InboxEntry,
                order_id: OrderId,
                effect: &Effect,
                change: &Transition,
            ) -> Result<Applied, StoreError> {
                if *effect == Effect::TakeStock {
                    if let Some(applied) = self.take_stock_at_once(inbox, order_id, change).await? {
                        return Ok(applied);
                    }
                }
                let mut tx = self.pool.begin().await?;
                if !insert_inbox(&mut tx, inbox).await? {
                    tx.rollback().await?;
                    return Ok(Applied::Duplicate);
                }
                match effect {
                    Effect::TakeStock => {
                        let short = take_stock(&mut tx, order_id).await?;
                        if !short.is_empty() {
                            // Undoes the partial reservation and the inbox row.
                            tx.rollback().await?;
                            return Ok(Applied::Short(short));
                        }
                    }
                    Effect::RequestShipment { payment_id } => {
                        sqlx::query(
                            "INSERT INTO shipment_requests (order_id, payment_id, requested_at) \
                             VALUES ($1, $2, $3)",
                        )
                        .bind(order_id.0)
                        .bind(payment_id)
                        .bind(Utc::now())
                        .execute(&mut *tx)
                        .await?;
                    }
                    // Written before the guarded transition: if that is
                    // refused, the rollback takes this row with it.
                    Effect::RecordNotification {
                        notification: n,
                        retry_at,
                    } => {
                        sqlx::query(
                            "INSERT INTO notifications (order_id, recipient, text, created_at, \
                             next_attempt_at) VALUES ($1, $2, $3, $4, $5)",
                        )
                        .bind(n.order_id.0)
                        .bind(&n.recipient)
                        .bind(&n.text)
                        .bind(Utc::now())
                        .bind(retry_at)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Effect::Nothing => {}
                }
                transition_in_tx(&mut tx, order_id, change).await?;
                tx.commit().await?;
                if change.event.is_some() {
                    self.outbox_written();
                }
                Ok(Applied::Done { status: change.to })
            }

            async fn customer(&self, id: OrderId) -> Result<Option<Customer>, StoreError> {
                let row: Option<(String, String)> = sqlx::query_as(
                    "SELECT customer_name, customer_email FROM orders WHERE id = $1",
                )
                .bind(id.0)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.map(|(name, email)| Customer { name, email }))
            }

            async fn mark_notification_sent(&self, order_id: OrderId) -> Result<(), StoreError> {
                sqlx::query("UPDATE notifications SET sent_at = $1 WHERE order_id = $2")
                    .bind(Utc::now())
                    .bind(order_id.0)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn mark_notification_failed(
                &self,
                order_id: OrderId,
                error: &str,
                retry: &NotificationRetry,
            ) -> Result<(), StoreError> {
                let now = Utc::now();
                let (retry_at, failed_at) = match retry {
                    NotificationRetry::At(at) => (Some(*at), None),
                    NotificationRetry::GiveUp { .. } => (None, Some(now)),
                };
                let mut tx = self.pool.begin().await?;
                sqlx::query(
                    "UPDATE notifications SET attempts = attempts + 1, last_error = $2, \
                     next_attempt_at = $3, failed_at = $4 WHERE order_id = $1 AND sent_at IS NULL",
                )
                .bind(order_id.0)
                .bind(error)
                .bind(retry_at)
                .bind(failed_at)
                .execute(&mut *tx)
                .await?;
                if let NotificationRetry::GiveUp { note } = retry {
                    sqlx::query(
                        "INSERT INTO order_timeline (order_id, status, note, at) \
                         SELECT id, status, $2, $3 FROM orders WHERE id = $1",
                    )
                    .bind(order_id.0)
                    .bind(note)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn notifications_due(
                &self,
                now: DateTime<Utc>,
                limit: usize,
            ) -> Result<Vec<UnsentNotification>, StoreError> {
                sqlx::query(
                    "SELECT order_id, recipient, text, CAST(attempts AS BIGINT) AS attempts \
                     FROM notifications WHERE sent_at IS NULL AND failed_at IS NULL \
                     AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2",
                )
                .bind(now)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| {
                    Ok(UnsentNotification {
                        notification: Notification {
                            order_id: OrderId(r.try_get("order_id")?),
                            recipient: r.try_get("recipient")?,
                            text: r.try_get("text")?,
                        },
                        attempts: count_from_db(r.try_get("attempts")?),
                    })
                })
                .collect()
            }

            async fn stuck_orders(
                &self,
                consumer_group: &str,
                unchanged_since: DateTime<Utc>,
                after: Option<&StuckOrder>,
                limit: usize,
            ) -> Result<Vec<StuckOrder>, StoreError> {
                sqlx::query(&STUCK_SQL)
                    .bind(consumer_group)
                    .bind(unchanged_since)
                    .bind(limit as i64)
                    .bind(after.map(|a| a.since))
                    .bind(after.map(|a| a.order_id.0))
                    .fetch_all(&self.pool)
                    .await?
                    .iter()
                    .map(|r| {
                        let status = status_from_db(r.try_get("status")?)?;
                        let event_id: String = r.try_get("event_id")?;
                        Ok(StuckOrder {
                            order_id: OrderId(r.try_get("id")?),
                            status,
                            since: r.try_get("updated_at")?,
                            event_id: Uuid::parse_str(&event_id).map_err(|e| {
                                StoreError::Corrupt(format!("event id {event_id:?}: {e}"))
                            })?,
                            event_type: crate::events::EventType::awaited_in(status).ok_or_else(
                                || StoreError::Corrupt(format!("{status} awaits no event")),
                            )?,
                            redrives: count_from_db(r.try_get("redrives")?),
                            last_redrive: r.try_get("last_at")?,
                        })
                    })
                    .collect()
            }

            async fn redrive(
                &self,
                consumer_group: &str,
                order: &StuckOrder,
            ) -> Result<bool, StoreError> {
                let event_id = order.event_id.to_string();
                let mut tx = self.pool.begin().await?;
                let awaited: Option<(String, Option<String>)> = sqlx::query_as(
                    "SELECT event_payload, event_traceparent FROM orders o \
                     WHERE o.id = $1 AND o.status = $2 AND o.event_id = $3 AND NOT EXISTS \
                     (SELECT 1 FROM inbox i WHERE i.consumer_group = $4 AND i.event_id = $3)",
                )
                .bind(order.order_id.0)
                .bind(order.status.as_str())
                .bind(&event_id)
                .bind(consumer_group)
                .fetch_optional(&mut *tx)
                .await?;
                let Some((payload, traceparent)) = awaited else {
                    tx.rollback().await?;
                    return Ok(false);
                };
                // A retained copy (published) gives way to the new row,
                // which the relay reads after everything queued before it.
                sqlx::query("DELETE FROM outbox WHERE event_id = $1")
                    .bind(order.event_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO outbox (event_id, destination, message_key, event_type, payload, \
                     traceparent, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(order.event_id)
                .bind(crate::events::DESTINATION_ORDERS)
                .bind(order.order_id.to_string())
                .bind(order.event_type.as_str())
                .bind(payload)
                .bind(traceparent)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO redrives (order_id, event_id, attempts, last_at) \
                     VALUES ($1, $2, 1, $3) ON CONFLICT (order_id) DO UPDATE SET \
                     attempts = CASE WHEN redrives.event_id = excluded.event_id \
                         THEN redrives.attempts + 1 ELSE 1 END, \
                     event_id = excluded.event_id, last_at = excluded.last_at",
                )
                .bind(order.order_id.0)
                .bind(&event_id)
                .bind(Utc::now())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                self.outbox_written();
                Ok(true)
            }

            async fn put_inventory(
                &self,
                product: &str,
                on_hand: i64,
            ) -> Result<InventoryLevel, StoreError> {
                let row = sqlx::query(
                    "INSERT INTO inventory (product_name, on_hand, reserved, updated_at) \
                     VALUES ($1, $2, 0, $3) ON CONFLICT (product_name) DO UPDATE \
                     SET on_hand = excluded.on_hand, updated_at = excluded.updated_at \
                     RETURNING product_name, on_hand, reserved, updated_at",
                )
                .bind(product)
                .bind(on_hand)
                .bind(Utc::now())
                .fetch_one(&self.pool)
                .await?;
                inventory_level(&row)
            }

            async fn get_inventory(
                &self,
                product: &str,
            ) -> Result<Option<InventoryLevel>, StoreError> {
                sqlx::query(
                    "SELECT product_name, on_hand, reserved, updated_at FROM inventory \
                     WHERE product_name = $1",
                )
                .bind(product)
                .fetch_optional(&self.pool)
                .await?
                .map(|row| inventory_level(&row))
                .transpose()
            }

            async fn list_inventory(
                &self,
                after: Option<&str>,
                limit: u32,
            ) -> Result<Vec<InventoryLevel>, StoreError> {
                sqlx::query(
                    "SELECT product_name, on_hand, reserved, updated_at FROM inventory \
                     WHERE ($1 IS NULL OR product_name > $1) ORDER BY product_name LIMIT $2",
                )
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(inventory_level)
                .collect()
            }

            async fn outbox_pending(
                &self,
                limit: usize,
                filter: &OutboxFilter,
                skip: &[i64],
            ) -> Result<Vec<OutboxRecord>, StoreError> {
                // The id range lets rows outside it pass without a look at
                // the list.
                let first = skip.iter().min().copied();
                let last = skip.iter().max().copied();
                sqlx::query(&PENDING_SQL)
                    .bind(limit as i64)
                    .bind(filter.only)
                    .bind(filter.except)
                    .bind(first)
                    .bind(last)
                    .bind(id_list(skip))
                    .fetch_all(self.relay_pool())
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(OutboxRecord {
                            id: r.try_get("id")?,
                            event_id: r.try_get::<Uuid, _>("event_id")?,
                            destination: r.try_get("destination")?,
                            key: r.try_get("message_key")?,
                            event_type: r.try_get("event_type")?,
                            payload: r.try_get("payload")?,
                            traceparent: r.try_get("traceparent")?,
                            created_at: r.try_get("created_at")?,
                        })
                    })
                    .collect()
            }

            async fn outbox_delete(&self, ids: &[i64]) -> Result<(), StoreError> {
                if ids.is_empty() {
                    return Ok(());
                }
                sqlx::query(DELETE_PUBLISHED_SQL)
                    .bind(id_list(ids))
                    .execute(self.relay_pool())
                    .await?;
                Ok(())
            }

            async fn outbox_mark_published(&self, ids: &[i64]) -> Result<(), StoreError> {
                if ids.is_empty() {
                    return Ok(());
                }
                sqlx::query(MARK_PUBLISHED_SQL)
                    .bind(Utc::now())
                    .bind(id_list(ids))
                    .execute(self.relay_pool())
                    .await?;
                Ok(())
            }

            async fn outbox_purge(
                &self,
                published_before: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                Ok(sqlx::query(
                    "DELETE FROM outbox WHERE published_at IS NOT NULL AND published_at < $1",
                )
                .bind(published_before)
                .execute(&self.pool)
                .await?
                .rows_affected())
            }

            async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
                let rows: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
                        .fetch_one(&self.pool)
                        .await?;
                let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1",
                )
                .fetch_optional(&self.pool)
                .await?;
                Ok(OutboxBacklog { rows, oldest })
            }

            async fn wait_for_outbox(&self, timeout: Duration) {
                self.wait_outbox(timeout).await
            }

            async fn try_relay_lease(
                &self,
                name: &str,
            ) -> Result<Option<Box<dyn RelayLease>>, StoreError> {
                self.relay_lease(name).await
            }
        }
    };
}

pub(crate) use impl_store;
