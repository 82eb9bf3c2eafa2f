//! The admin dashboard (`/admin`) and its JSON endpoints: orders by status,
//! outbox backlog, the consumer group's committed offsets and lag per
//! partition, dead letters with replay, and pause/resume of consumption on
//! every worker (through the control topic), and the recent past the
//! page's charts draw (`history`). Off unless `Admin.Enabled`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::error::Problem;
use super::history::{History, Recorder};
use super::{json, ApiError};
use crate::auth::Principal;
use crate::brokers::Brokers;
use crate::consumption_state::{
    self, ConsumptionState, MoveOffsets, OffsetTarget, Restart, WorkerCount,
};
use crate::dlq::{self, DeadLetter};
use crate::domain::OrderId;
use crate::fleet::{self, Instance};
use crate::reconciler::{self, Finding, Redrive};
use crate::store::SharedStore;

pub struct AdminState {
    pub store: SharedStore,
    pub brokers: Brokers,
    pub producer: FutureProducer,
    pub topic: String,
    pub group: String,
    pub dead_letter_topic: String,
    pub control_topic: String,
    pub telemetry_topic: String,
    pub telemetry_interval: Duration,
    /// `Worker.MinWorkers` and `Worker.MaxWorkers`: the bounds of a count
    /// set here.
    pub worker_bounds: (usize, usize),
    /// `Reconcile.StuckAfterSeconds` and `BatchSize`, for the stuck orders.
    pub reconcile: (Duration, usize),
    pub timeout: Duration,
    pub max_body_bytes: usize,
    /// What the history sampler recorded.
    pub history: Arc<Recorder>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/admin", get(page))
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/instances", get(instances))
        .route("/admin/api/history", get(history))
        .route("/admin/api/workers", post(workers))
        .route("/admin/api/restart", post(restart))
        .route("/admin/api/offsets", post(offsets))
        .route("/admin/api/stuck", get(stuck))
        .route("/admin/api/stuck/redrive", post(redrive))
        .route("/admin/api/pause", post(pause))
        .route("/admin/api/resume", post(resume))
        .route("/admin/api/dlq/replay", post(replay))
        .with_state(state)
}

/// With `Admin.Enabled = false` the documented admin routes still exist and
/// answer a problem document saying so, rather than falling through to the
/// generic 404: a client learns why, and other methods get 405 with
/// `Allow` as on every route.
pub fn disabled_router() -> Router {
    async fn disabled() -> ApiError {
        ApiError::NotFound("the admin dashboard is disabled (Admin.Enabled = false)".into())
    }
    Router::new()
        .route("/admin", get(disabled))
        .route("/admin/api/overview", get(disabled))
        .route("/admin/api/instances", get(disabled))
        .route("/admin/api/history", get(disabled))
        .route("/admin/api/workers", post(disabled))
        .route("/admin/api/restart", post(disabled))
        .route("/admin/api/offsets", post(disabled))
        .route("/admin/api/stuck", get(disabled))
        .route("/admin/api/stuck/redrive", post(disabled))
        .route("/admin/api/pause", post(disabled))
        .route("/admin/api/resume", post(disabled))
        .route("/admin/api/dlq/replay", post(disabled))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCount {
    status: String,
    orders: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionView {
    partition: i32,
    committed: Option<i64>,
    high_watermark: i64,
    lag: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterView {
    partition: i32,
    offset: i64,
    event_id: Option<String>,
    event_type: Option<String>,
    error: Option<String>,
    attempts: Option<String>,
    failed_at: Option<String>,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(d: &DeadLetter) -> Self {
        Self {
            partition: d.partition,
            offset: d.offset,
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            error: d.error.clone(),
            attempts: d.attempts.clone(),
            failed_at: d.failed_at.clone(),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    orders_by_status: Vec<StatusCount>,
    outbox_backlog: i64,
    outbox_oldest_age_seconds: f64,
    consumer_group: String,
    partitions: Vec<PartitionView>,
    paused: bool,
    dead_letters: Vec<DeadLetterView>,
}

/// Who made an admin call, for its audit line: the token's name.
fn caller(principal: &Option<Extension<Principal>>) -> &str {
    principal.as_ref().map_or("anonymous", |p| p.name.as_str())
}

fn kafka_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("Kafka: {e}"))
}

/// The group's committed offset and the log end of every partition.
fn partitions(brokers: &Brokers, topic: &str, group: &str) -> Result<Vec<PartitionView>, String> {
    let timeout = Duration::from_secs(5);
    let consumer: BaseConsumer = brokers
        .consumer_config("orderflow-admin")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| e.to_string())?;
    let mut list = TopicPartitionList::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        list.add_partition(topic, p.id());
    }
    let committed = consumer
        .committed_offsets(list, timeout)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for e in committed.elements() {
        let (low, high) = consumer
            .fetch_watermarks(topic, e.partition(), timeout)
            .map_err(|e| e.to_string())?;
        let committed = match e.offset() {
            Offset::Offset(n) => Some(n),
            _ => None,
        };
        out.push(PartitionView {
            partition: e.partition(),
            committed,
            high_watermark: high,
            lag: (high - committed.unwrap_or(low)).max(0),
        });
    }
    out.sort_by_key(|p| p.partition);
    Ok(out)
}

#[utoipa::path(get, path = "/admin/api/overview", operation_id = "adminOverview", tag = "admin",
    responses(
        (status = 200, description = "Pipeline state at a glance", body = Overview),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database or Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn overview(State(admin): State<Arc<AdminState>>) -> Result<Json<Overview>, ApiError> {
    let orders_by_status = admin
        .store
        .count_by_status()
        .await?
        .into_iter()
        .map(|(s, n)| StatusCount {
            status: s.to_string(),
            orders: n,
        })
        .collect();
    let backlog = admin.store.outbox_backlog().await?;
    let (brokers, topic, group) = (
        admin.brokers.clone(),
        admin.topic.clone(),
        admin.group.clone(),
    );
    let partitions = tokio::task::spawn_blocking(move || partitions(&brokers, &topic, &group))
        .await
        .map_err(kafka_error)?
        .map_err(|e| kafka_error(format!("consumer group offsets: {e}")))?;
    let paused = consumption_state::current(&admin.brokers, &admin.control_topic)
        .await
        .map_err(|e| kafka_error(format!("control topic: {e}")))?
        .is_some_and(|s| s.paused);
    let dead_letters = dlq::read_all(&admin.brokers, &admin.dead_letter_topic)
        .await
        .map_err(|e| kafka_error(format!("dead-letter topic: {e}")))?
        .iter()
        .map(DeadLetterView::from)
        .collect();
    Ok(Json(Overview {
        orders_by_status,
        outbox_backlog: backlog.rows,
        outbox_oldest_age_seconds: backlog
            .oldest
            .map(|t| (chrono::Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0),
        consumer_group: admin.group.clone(),
        partitions,
        paused,
        dead_letters,
    }))
}

#[utoipa::path(get, path = "/admin/api/instances", operation_id = "adminInstances", tag = "admin",
    responses(
        (status = 200, description = "Every worker instance with its partitions, from the telemetry topic", body = [Instance]),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn instances(
    State(admin): State<Arc<AdminState>>,
) -> Result<Json<Vec<Instance>>, ApiError> {
    fleet::instances(
        &admin.brokers,
        &admin.telemetry_topic,
        admin.telemetry_interval,
    )
    .await
    .map(Json)
    .map_err(|e| kafka_error(format!("telemetry topic: {e}")))
}

#[utoipa::path(get, path = "/admin/api/history", operation_id = "adminHistory", tag = "admin",
    responses(
        (status = 200, description = "The last Admin.HistorySeconds of throughput, consumer lag and outbox, one point every Admin.HistoryIntervalMs, oldest first", body = History),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn history(State(admin): State<Arc<AdminState>>) -> Json<History> {
    Json(admin.history.snapshot())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkersRequest {
    /// Worker tasks per instance, within Worker.MinWorkers..=MaxWorkers;
    /// `null` gives the count back to the lag balancer.
    count: Option<usize>,
}

#[utoipa::path(post, path = "/admin/api/workers", operation_id = "adminWorkers", tag = "admin",
    request_body = WorkersRequest,
    responses(
        (status = 200, description = "Every instance runs this many workers from its next balance tick", body = WorkerCount),
        (status = 400, description = "Invalid body, or a count outside the configured bounds", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn workers(
    State(admin): State<Arc<AdminState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WorkerCount>, ApiError> {
    let request: WorkersRequest = json::parse(&headers, body, admin.max_body_bytes)?;
    let (min, max) = admin.worker_bounds;
    if let Some(n) = request.count {
        if n < min || n > max {
            return Err(ApiError::field(
                "count",
                format!("is {n}, must be {min}..={max} (Worker.MinWorkers..=Worker.MaxWorkers)"),
            ));
        }
    }
    let state = consumption_state::publish_workers(
        &admin.producer,
        &admin.control_topic,
        request.count,
        admin.timeout,
    )
    .await
    .map_err(kafka_error)?;
    tracing::warn!(
        by = caller(&principal),
        count = ?request.count,
        "admin: worker count set for every instance"
    );
    Ok(Json(state))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestartRequest {
    /// One instance (as `GET /admin/api/instances` names it); absent: all.
    #[serde(default)]
    instance: Option<String>,
}

#[utoipa::path(post, path = "/admin/api/restart", operation_id = "adminRestart", tag = "admin",
    request_body = RestartRequest,
    responses(
        (status = 200, description = "The instance (or every one) leaves the group and rejoins", body = Restart),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn restart(
    State(admin): State<Arc<AdminState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Restart>, ApiError> {
    let request: RestartRequest = match &body {
        Ok(bytes) if bytes.is_empty() => RestartRequest::default(),
        _ => json::parse(&headers, body, admin.max_body_bytes)?,
    };
    let sent = consumption_state::publish_restart(
        &admin.producer,
        &admin.control_topic,
        request.instance,
        admin.timeout,
    )
    .await
    .map_err(kafka_error)?;
    tracing::warn!(
        by = caller(&principal),
        instance = sent.instance.as_deref().unwrap_or("all"),
        "admin: consumption restart requested"
    );
    Ok(Json(sent))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OffsetsRequest {
    /// `earliest`, `latest` or an RFC 3339 time (not in the future).
    to: String,
    /// Partitions of the orders topic; absent: all.
    #[serde(default)]
    partitions: Option<Vec<i32>>,
    /// Required with `latest`, which skips every event not yet handled.
    #[serde(default)]
    confirm: bool,
}

impl OffsetsRequest {
    fn target(&self) -> Result<OffsetTarget, ApiError> {
        match self.to.trim() {
            "earliest" => Ok(OffsetTarget::Earliest),
            "latest" if self.confirm => Ok(OffsetTarget::Latest),
            "latest" => Err(ApiError::field(
                "confirm",
                "must be true with \"latest\": every event not yet handled is skipped for good",
            )),
            time => match chrono::DateTime::parse_from_rfc3339(time) {
                Ok(at) if at <= chrono::Utc::now() => Ok(OffsetTarget::Time(at.to_utc())),
                Ok(_) => Err(ApiError::field("to", "is in the future")),
                Err(_) => Err(ApiError::field(
                    "to",
                    "is neither \"earliest\", \"latest\" nor an RFC 3339 time",
                )),
            },
        }
    }
}

#[utoipa::path(post, path = "/admin/api/offsets", operation_id = "adminOffsets", tag = "admin",
    request_body = OffsetsRequest,
    responses(
        (status = 200, description = "Each instance moves the offsets of the partitions it holds", body = MoveOffsets),
        (status = 400, description = "Invalid body, an unknown target, or latest without confirm", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn offsets(
    State(admin): State<Arc<AdminState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<MoveOffsets>, ApiError> {
    let request: OffsetsRequest = json::parse(&headers, body, admin.max_body_bytes)?;
    let to = request.target()?;
    let sent = consumption_state::publish_offsets(
        &admin.producer,
        &admin.control_topic,
        to,
        request.partitions,
        admin.timeout,
    )
    .await
    .map_err(kafka_error)?;
    tracing::warn!(
        by = caller(&principal),
        to = ?sent.to,
        partitions = ?sent.partitions,
        "admin: consumer group offsets move requested"
    );
    Ok(Json(sent))
}

async fn stuck_pass(admin: &AdminState, redrive: Redrive) -> Result<Vec<Finding>, ApiError> {
    let (stuck_after, page) = admin.reconcile;
    Ok(reconciler::pass(
        &admin.store,
        &admin.group,
        reconciler::unchanged_since(stuck_after),
        page,
        redrive,
    )
    .await?)
}

#[utoipa::path(get, path = "/admin/api/stuck", operation_id = "adminStuck", tag = "admin",
    responses(
        (status = 200, description = "Orders waiting longer than Reconcile.StuckAfterSeconds for an event that is neither handled nor queued", body = [Finding]),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn stuck(State(admin): State<Arc<AdminState>>) -> Result<Json<Vec<Finding>>, ApiError> {
    stuck_pass(&admin, Redrive::Nothing).await.map(Json)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedriveRequest {
    /// One stuck order; absent: every stuck order.
    #[serde(default)]
    order_id: Option<OrderId>,
}

#[utoipa::path(post, path = "/admin/api/stuck/redrive", operation_id = "adminRedrive", tag = "admin",
    request_body = RedriveRequest,
    responses(
        (status = 200, description = "The stuck orders, those re-driven now marked", body = [Finding]),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Database unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn redrive(
    State(admin): State<Arc<AdminState>>,
    principal: Option<Extension<Principal>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<Finding>>, ApiError> {
    let request: RedriveRequest = json::parse(&headers, body, admin.max_body_bytes)?;
    let redrive = request.order_id.map_or(Redrive::All, Redrive::Only);
    let findings = stuck_pass(&admin, redrive).await?;
    tracing::warn!(
        by = caller(&principal),
        order_id = ?request.order_id,
        redriven = findings.iter().filter(|f| f.redriven).count(),
        "admin: stuck orders re-driven"
    );
    Ok(Json(findings))
}

async fn switch(
    admin: &AdminState,
    paused: bool,
    principal: Option<Extension<Principal>>,
) -> Result<Json<ConsumptionState>, ApiError> {
    let state =
        consumption_state::publish(&admin.producer, &admin.control_topic, paused, admin.timeout)
            .await
            .map_err(kafka_error)?;
    tracing::warn!(
        by = caller(&principal),
        paused,
        "admin: consumption switched"
    );
    Ok(Json(state))
}

#[utoipa::path(post, path = "/admin/api/pause", operation_id = "adminPause", tag = "admin",
    responses(
        (status = 200, description = "Every worker stops fetching", body = ConsumptionState),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn pause(
    State(admin): State<Arc<AdminState>>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<ConsumptionState>, ApiError> {
    switch(&admin, true, principal).await
}

#[utoipa::path(post, path = "/admin/api/resume", operation_id = "adminResume", tag = "admin",
    responses(
        (status = 200, description = "Every worker fetches again", body = ConsumptionState),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn resume(
    State(admin): State<Arc<AdminState>>,
    principal: Option<Extension<Principal>>,
) -> Result<Json<ConsumptionState>, ApiError> {
    switch(&admin, false, principal).await
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayRequest {
    /// The ce_id of the dead letter to re-publish.
    event_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    replayed: usize,
}

#[utoipa::path(post, path = "/admin/api/dlq/replay", operation_id = "adminReplay", tag = "admin",
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "Re-published to the orders topic", body = Replayed),
        (status = 400, description = "Invalid body", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No dead letter with that event id, or Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Kafka unreachable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay(
    State(admin): State<Arc<AdminState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Replayed>, ApiError> {
    // Parsed like every other body, so bad input is a problem document
    // naming the field, not axum's plain-text rejection.
    let request: ReplayRequest = json::parse(&headers, body, admin.max_body_bytes)?;
    let letters: Vec<DeadLetter> = dlq::read_all(&admin.brokers, &admin.dead_letter_topic)
        .await
        .map_err(kafka_error)?
        .into_iter()
        .filter(|l| l.event_id.as_deref() == Some(request.event_id.as_str()))
        .collect();
    if letters.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no dead letter with event id {:?}",
            request.event_id
        )));
    }
    let replayed = dlq::replay(&admin.producer, &letters, &admin.topic, admin.timeout)
        .await
        .map_err(kafka_error)?;
    Ok(Json(Replayed { replayed }))
}

#[utoipa::path(get, path = "/admin", operation_id = "adminDashboard", tag = "admin",
    responses(
        (status = 200, description = "The dashboard page", content_type = "text/html"),
        (status = 404, description = "Admin.Enabled is false", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn page() -> Html<&'static str> {
    Html(include_str!("admin.html"))
}
