//! Running one message to its outcome: decode, apply with retries, and
//! dead-letter what can never be handled.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use rdkafka::message::{Message, OwnedMessage};

use super::message::{decode, header, type_label, Decoded};
use super::Command;
use crate::backoff::Backoff;
use crate::config::{RetrySettings, UnknownTypes};
use crate::dlq::DeadLetters;
use crate::events;
use crate::metrics;
use crate::notifier::Notifications;
use crate::shutdown::Shutdown;
use crate::store::{Applied, InboxEntry, SharedStore, StoreError};

/// Counters for the operator (the admin page shows them).
#[derive(Debug, Default)]
pub struct HandlerStats {
    pub handled: AtomicU64,
    pub duplicates: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub unknown: AtomicU64,
    /// When the last event was handled (Unix milliseconds; 0: never).
    pub last_handled_ms: AtomicI64,
}

pub struct HandlerContext {
    pub store: SharedStore,
    pub consumer_group: String,
    pub retry: RetrySettings,
    pub unknown_types: UnknownTypes,
    pub dead_letters: DeadLetters,
    pub notifications: Notifications,
    pub stats: HandlerStats,
}

/// How the handling of one message ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The command's effect was applied.
    Handled,
    /// The inbox had the event already: nothing was done again.
    Duplicate,
    /// No handler for its type; skipped as configured.
    Unknown,
    /// Sent to the dead-letter topic with the reason.
    DeadLettered,
    /// Shutdown or the partition's revocation came first; the message
    /// stays uncommitted for the next owner of its partition.
    Abandoned,
}

impl Outcome {
    /// The `outcome` label of the handled-events counter.
    pub fn label(self) -> &'static str {
        match self {
            Self::Handled => "ok",
            Self::Duplicate => "duplicate",
            Self::Unknown => "unknown",
            Self::DeadLettered => "dead_lettered",
            Self::Abandoned => "abandoned",
        }
    }

    /// Whether the message's offset may be stored.
    pub fn is_done(self) -> bool {
        self != Self::Abandoned
    }
}

fn count(event_type: &str, outcome: &'static str) {
    ::metrics::counter!(
        metrics::EVENTS_HANDLED,
        "type" => event_type.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}

/// Handles one message to completion, or until shutdown leaves it
/// [`Outcome::Abandoned`] (the database or the dead-letter topic
/// unreachable).
pub async fn process(ctx: &HandlerContext, message: &OwnedMessage, shutdown: &Shutdown) -> Outcome {
    let started = std::time::Instant::now();
    let type_label = type_label(message).to_string();
    ::metrics::counter!(metrics::EVENTS_CONSUMED, "type" => type_label.clone()).increment(1);
    // The producer's W3C trace continues here: every log line of the
    // handler carries its trace id, and the events it emits carry it on.
    let span = tracing::info_span!(
        "handle",
        otel.name = %format!("{type_label} process"),
        otel.kind = "consumer",
        messaging.destination.name = message.topic(),
        trace_id = tracing::field::Empty,
        event_type = %type_label,
        partition = message.partition(),
        offset = message.offset()
    );
    let traceparent = crate::telemetry::continue_trace(&span, header(message, events::TRACEPARENT));
    let handling = handle(ctx, message, &type_label, traceparent, shutdown);
    let outcome = tracing::Instrument::instrument(handling, span).await;
    count(&type_label, outcome.label());
    ::metrics::histogram!(metrics::HANDLER_DURATION, "type" => type_label)
        .record(started.elapsed().as_secs_f64());
    outcome
}

async fn handle(
    ctx: &HandlerContext,
    message: &OwnedMessage,
    type_label: &str,
    traceparent: String,
    shutdown: &Shutdown,
) -> Outcome {
    let (event_id, event_type, command) = match decode(message) {
        Ok(Decoded::Event {
            event_id,
            event_type,
            command,
        }) => (event_id, event_type, command),
        Ok(Decoded::Unknown { type_name }) => {
            ctx.stats.unknown.fetch_add(1, Ordering::Relaxed);
            return match ctx.unknown_types {
                UnknownTypes::Skip => {
                    tracing::info!(
                        type_name,
                        offset = message.offset(),
                        "no handler for this type; skipped"
                    );
                    Outcome::Unknown
                }
                UnknownTypes::DeadLetter => {
                    let error = format!("no handler for type {type_name}");
                    dead_letter(ctx, message, &error, 1, shutdown).await
                }
            };
        }
        Err(error) => return dead_letter(ctx, message, &error, 1, shutdown).await,
    };
    let inbox = InboxEntry {
        consumer_group: ctx.consumer_group.clone(),
        event_id,
        event_type: event_type.to_string(),
        traceparent: Some(traceparent),
    };
    match apply_with_retries(ctx, &command, &inbox, type_label, shutdown).await {
        Ok(Some(Applied::Done { status })) => {
            ctx.stats.handled.fetch_add(1, Ordering::Relaxed);
            ctx.stats
                .last_handled_ms
                .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
            tracing::info!(event_id = %inbox.event_id, %event_type, %status, "event handled");
            Outcome::Handled
        }
        Ok(Some(Applied::Duplicate)) => {
            ctx.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event_id = %inbox.event_id, "already handled; skipped");
            Outcome::Duplicate
        }
        // Commands settle a shortage themselves; one reaching here is a bug.
        Ok(Some(Applied::Short(short))) => {
            let error = format!("unsettled stock shortage: {short:?}");
            dead_letter(ctx, message, &error, 1, shutdown).await
        }
        Ok(None) => Outcome::Abandoned,
        Err((e, attempts)) => dead_letter(ctx, message, &e.to_string(), attempts, shutdown).await,
    }
}

/// How long a handler's database call may go on once its message is
/// cancelled (its partition revoked, or shutdown): a healthy call takes
/// milliseconds.
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves `grace` after `signal` fired.
async fn cancelled_for(signal: &Shutdown, grace: std::time::Duration) {
    let mut signal = signal.clone();
    signal.wait().await;
    tokio::time::sleep(grace).await;
}

/// The command applied; `None` if its message was cancelled (shutdown, or
/// its partition revoked) while it waited to retry or while a database call
/// hung past [`IN_FLIGHT_GRACE`]; or the error that dead-letters the message with the number
/// of attempts made.
async fn apply_with_retries(
    ctx: &HandlerContext,
    command: &Command,
    inbox: &InboxEntry,
    type_label: &str,
    shutdown: &Shutdown,
) -> Result<Option<Applied>, (StoreError, u32)> {
    let mut backoff = Backoff::new(ctx.retry.initial_backoff, ctx.retry.max_backoff);
    let mut attempt = 1;
    loop {
        // A database call hanging on an unreachable server would hold a
        // revocation (or shutdown) until its own timeout: past a grace it
        // is dropped, its transaction rolled back, and the message left
        // uncommitted for the next owner (a commit that made it is a
        // duplicate there).
        let applied = tokio::select! {
            applied = command.apply(ctx, inbox) => applied,
            () = cancelled_for(shutdown, IN_FLIGHT_GRACE) => return Ok(None),
        };
        let e = match applied {
            Ok(applied) => return Ok(Some(applied)),
            Err(e) => e,
        };
        // An unreachable database is an outage, not a bad message:
        // dead-lettering would lose the event of an order that is fine.
        // Retry until it is back (every partition needs it anyway). With
        // retries used up on another transient error, dead-letter only if
        // the database answers a ping.
        let outage = matches!(e, StoreError::Unavailable(_))
            || (e.is_transient()
                && attempt >= ctx.retry.max_attempts
                && ctx.store.ping().await.is_err());
        let retry = outage || (e.is_transient() && attempt < ctx.retry.max_attempts);
        if !retry {
            return Err((e, attempt));
        }
        ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
        count(type_label, metrics::RETRIED);
        let delay = backoff.next_delay();
        if outage {
            tracing::warn!(error = %e, attempt, ?delay, event_id = %inbox.event_id, "database unreachable; retrying until it is back");
        } else {
            tracing::warn!(error = %e, attempt, ?delay, event_id = %inbox.event_id, "handler failed; retrying");
        }
        if !Backoff::sleep(delay, shutdown).await {
            return Ok(None);
        }
        attempt = attempt.saturating_add(1);
    }
}

/// [`Outcome::DeadLettered`], or [`Outcome::Abandoned`] when shutdown came
/// while the dead-letter topic was unreachable (the message stays
/// uncommitted and its partition's next owner dead-letters it).
async fn dead_letter(
    ctx: &HandlerContext,
    message: &OwnedMessage,
    error: &str,
    attempts: u32,
    shutdown: &Shutdown,
) -> Outcome {
    if !ctx
        .dead_letters
        .send(message, error, attempts, shutdown)
        .await
    {
        return Outcome::Abandoned;
    }
    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    Outcome::DeadLettered
}
