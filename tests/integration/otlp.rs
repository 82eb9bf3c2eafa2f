//! OTLP span export: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a `serve-api`
//! and a `run-worker` process export one trace per client request, from
//! the API's server span to the worker's handler span, to a local OTLP/HTTP
//! receiver (what an OpenTelemetry Collector would be).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use crate::common::{self, Cluster, TestBroker};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[derive(Debug, Clone)]
struct ExportedSpan {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent: String,
}

type Spans = Arc<Mutex<Vec<ExportedSpan>>>;

async fn receive(State(spans): State<Spans>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf body");
    let mut spans = spans.lock().expect("spans");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
            spans.push(ExportedSpan {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
            });
        }
    }
    ""
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn start_receiver() -> (String, Spans) {
    let spans = Spans::default();
    let app = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let addr = listener.local_addr().expect("receiver address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_api_request_to_the_worker_handler() {
    let (endpoint, spans) = start_receiver().await;
    let mut cluster = Cluster::builder(TestBroker::mock())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_SERVICE_NAME", "orderflow-test")
        .env("OTEL_BSP_SCHEDULE_DELAY", "200")
        .apis(1)
        .workers(1)
        .start()
        .await;
    let (http, base) = (cluster.http.clone(), cluster.base());
    let response = http
        .post(format!("{base}/api/orders"))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .json(&common::order_body("otlp", "untracked-gadget", 1))
        .send()
        .await
        .expect("POST /api/orders");
    assert_eq!(response.status(), 201);
    // The response names the API's own span in the client's trace.
    let returned = response.headers()["traceparent"]
        .to_str()
        .expect("ascii")
        .to_string();
    let parts: Vec<&str> = returned.split('-').collect();
    assert_eq!(parts[1], TRACE_ID, "{returned}");
    assert_ne!(parts[2], CLIENT_SPAN, "{returned}");
    let api_span = parts[2].to_string();
    let order: serde_json::Value = response.json().await.expect("order");
    let id = order["id"].as_str().expect("id").to_string();
    common::wait_for_status(&http, &base, &id, "Reserved", Duration::from_secs(60)).await;

    let found = common::eventually(Duration::from_secs(20), || {
        let spans = spans.clone();
        async move {
            let spans = spans.lock().expect("spans").clone();
            let server = spans
                .iter()
                .find(|s| s.trace_id == TRACE_ID && s.name == "POST /api/orders")?
                .clone();
            let handler = spans
                .iter()
                .find(|s| s.trace_id == TRACE_ID && s.name == "OrderCreated process")?
                .clone();
            Some((server, handler))
        }
    })
    .await;
    let all = spans.lock().expect("spans").clone();
    let (server, handler) =
        found.unwrap_or_else(|| panic!("no API and handler spans in trace {TRACE_ID}: {all:#?}"));
    assert_eq!(server.service, "orderflow-test");
    assert_eq!(server.kind, SpanKind::Server as i32);
    assert_eq!(
        server.parent, CLIENT_SPAN,
        "API span continues the client's"
    );
    assert_eq!(server.span_id, api_span);
    assert_eq!(handler.kind, SpanKind::Consumer as i32);
    assert_eq!(
        handler.parent, server.span_id,
        "the worker's handler span is a child of the API request that wrote the event"
    );
    // Health probes and other traces do not leak into the client's trace.
    let in_trace: Vec<&str> = all
        .iter()
        .filter(|s| s.trace_id == TRACE_ID)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        in_trace.len(),
        2,
        "exactly the API and handler spans: {in_trace:?}"
    );

    for i in 0..cluster.members.len() {
        cluster.stop_within(i, Duration::from_secs(30));
    }
}
