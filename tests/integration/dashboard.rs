//! The Grafana dashboard the chart ships (helm/orderflow/dashboards/
//! orderflow.json; tests/deploy/check_deployment.py checks that the chart's
//! ConfigMap carries it unchanged): what Grafana's sidecar needs to load it,
//! and that every metric, label and label value its queries read is one the
//! real binary serves. A metric or label renamed in the code, or a typo in a
//! query, leaves a panel saying "No data" in the middle of an incident;
//! here it fails, naming the metric and the panel.
//!
//! The queries are read by a small PromQL reader of our own (selectors of
//! `orderflow_*` metrics with their label matchers, and `by`/`without`
//! groupings), not by a full PromQL parser: it refuses a query it cannot
//! follow rather than guessing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::{self, Cluster, Metrics, TestBroker};

/// Labels Prometheus adds when it scrapes a target (the chart's
/// ServiceMonitors), which a process's own /metrics page never carries.
const TARGET_LABELS: [&str; 3] = ["namespace", "job", "pod"];

/// Grafana's own variables a query may use.
const GRAFANA_VARIABLES: [&str; 4] = ["__rate_interval", "__range", "__interval", "__all"];

/// Every panel's datasource and every query's: the dashboard's variable, so
/// it works in any Grafana whatever its Prometheus is called.
const DATASOURCE_UID: &str = "${datasource}";

fn dashboard() -> Value {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/orderflow/dashboards/orderflow.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel, rows included, and the panels of collapsed rows (Grafana
/// keeps those inside the row).
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

fn is_row(panel: &Value) -> bool {
    panel["type"] == "row"
}

fn title(panel: &Value) -> String {
    panel["title"].as_str().unwrap_or("(untitled)").to_string()
}

/// Every PromQL expression of the dashboard, with where it is: the panels'
/// targets and the query variables.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for panel in panels(dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            found.push((format!("panel \"{}\"", title(panel)), expr.to_string()));
        }
    }
    for variable in variables(dashboard) {
        if variable["type"] == "query" {
            let query = match &variable["query"] {
                Value::String(q) => q.clone(),
                other => other["query"].as_str().unwrap_or_default().to_string(),
            };
            found.push((format!("variable ${}", variable["name"]), query));
        }
    }
    found
}

fn variables(dashboard: &Value) -> Vec<&Value> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .collect()
}

/// A histogram's series (`_bucket`, `_sum`, `_count`) under the name the
/// code records.
fn base_name(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    metric: String,
    matchers: Vec<Matcher>,
}

/// What one expression reads: its selectors of orderflow's metrics and the
/// labels it groups by.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reads {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn skip_space(chars: &[char], mut i: usize) -> usize {
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// The index after the string literal opening at `i`, and its text.
fn string_at(chars: &[char], i: usize) -> Result<(usize, String), String> {
    let quote = chars[i];
    let mut text = String::new();
    let mut j = i + 1;
    loop {
        match chars.get(j) {
            None => return Err(format!("string opened at {i} never closed")),
            Some('\\') => {
                if let Some(c) = chars.get(j + 1) {
                    text.push(*c);
                }
                j += 2;
            }
            Some(c) if *c == quote => return Ok((j + 1, text)),
            Some(c) => {
                text.push(*c);
                j += 1;
            }
        }
    }
}

/// The label matchers of a selector whose `{` is just before `i`; the
/// index after its `}`.
fn matchers_at(chars: &[char], mut i: usize) -> Result<(usize, Vec<Matcher>), String> {
    let mut matchers = Vec::new();
    loop {
        while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
            i += 1;
        }
        match chars.get(i) {
            None => return Err("selector never closed".into()),
            Some('}') => return Ok((i + 1, matchers)),
            Some(_) => {}
        }
        let start = i;
        while chars.get(i).is_some_and(|c| is_word(*c)) {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        i = skip_space(chars, i);
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| {
                op.chars()
                    .enumerate()
                    .all(|(k, c)| chars.get(i + k) == Some(&c))
            })
            .ok_or_else(|| format!("no matcher operator after label {label:?} at {i}"))?;
        i = skip_space(chars, i + op.len());
        if label.is_empty() || !matches!(chars.get(i), Some('"' | '\'')) {
            return Err(format!(
                "a label matcher at {start} this reader cannot follow"
            ));
        }
        let (end, value) = string_at(chars, i)?;
        i = end;
        matchers.push(Matcher {
            label,
            op: op.to_string(),
            value,
        });
    }
}

/// Reads one expression: brackets balanced, strings closed, every selector
/// one of orderflow's metrics (`{` anywhere else is refused).
fn read_expression(expr: &str) -> Result<Reads, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut reads = Reads::default();
    let mut open = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = string_at(&chars, i)?.0,
            '(' | '[' => {
                open.push(c);
                i += 1;
            }
            ')' | ']' => {
                let opening = if c == ')' { '(' } else { '[' };
                if open.pop() != Some(opening) {
                    return Err(format!("unbalanced {c} at {i}"));
                }
                i += 1;
            }
            '$' => {
                // A Grafana variable: `$name` or `${name}`.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while chars.get(i).is_some_and(|c| *c != '}') {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while chars.get(i).is_some_and(|c| is_word(*c)) {
                        i += 1;
                    }
                }
            }
            '{' | '}' => {
                return Err(format!(
                    "{c} at {i} outside a selector of an orderflow metric"
                ))
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while chars.get(i).is_some_and(|c| is_word(*c)) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = skip_space(&chars, i);
                if word.starts_with("orderflow_") {
                    let mut matchers = Vec::new();
                    if chars.get(next) == Some(&'{') {
                        (i, matchers) = matchers_at(&chars, next + 1)?;
                    }
                    reads.selectors.push(Selector {
                        metric: word,
                        matchers,
                    });
                } else if (word == "by" || word == "without") && chars.get(next) == Some(&'(') {
                    let close = chars[next..]
                        .iter()
                        .position(|c| *c == ')')
                        .ok_or_else(|| format!("{word} ( never closed"))?
                        + next;
                    let labels: String = chars[next + 1..close].iter().collect();
                    reads.grouping.extend(
                        labels
                            .split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = close + 1;
                }
            }
            _ => i += 1,
        }
    }
    match open.last() {
        Some(c) => Err(format!("{c} never closed")),
        None => Ok(reads),
    }
}

/// The Grafana variables `text` refers to (`$name`, `${name}`).
fn variable_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| is_word(*c))
            .collect();
        if !name.is_empty() {
            refs.insert(name);
        }
    }
    refs
}

#[test]
fn the_query_reader_finds_metrics_labels_values_and_groupings() {
    let reads = read_expression(
        "histogram_quantile(0.95, sum by (le, route) (rate(orderflow_x_bucket{job=~\"$job\", \
         route=\"/api/orders/{id}\", status!~\"5..\"}[$__rate_interval]))) \
         / sum(orderflow_y) without (pod)",
    )
    .expect("a query it can read");
    assert_eq!(
        reads.selectors,
        [
            Selector {
                metric: "orderflow_x_bucket".into(),
                matchers: vec![
                    Matcher {
                        label: "job".into(),
                        op: "=~".into(),
                        value: "$job".into()
                    },
                    Matcher {
                        label: "route".into(),
                        op: "=".into(),
                        value: "/api/orders/{id}".into()
                    },
                    Matcher {
                        label: "status".into(),
                        op: "!~".into(),
                        value: "5..".into()
                    },
                ]
            },
            Selector {
                metric: "orderflow_y".into(),
                matchers: vec![]
            },
        ]
    );
    assert_eq!(reads.grouping, ["le", "route", "pod"]);
    assert_eq!(base_name("orderflow_x_bucket"), "orderflow_x");
    assert_eq!(base_name("orderflow_x_total"), "orderflow_x_total");
    // What it cannot follow it refuses, rather than reading less.
    for bad in [
        "sum(rate(orderflow_x[5m])",
        "orderflow_x{route=\"/a\"",
        "up{job=\"x\"}",
        "orderflow_x{route=/a}",
        "orderflow_x{route=\"/a}",
    ] {
        assert!(read_expression(bad).is_err(), "{bad} was read");
    }
    assert_eq!(
        variable_refs("rate(x{a=~\"$namespace\"}[$__rate_interval]) ${datasource}"),
        BTreeSet::from([
            "namespace".into(),
            "__rate_interval".into(),
            "datasource".into()
        ])
    );
}

#[test]
fn the_dashboard_is_one_grafanas_sidecar_can_load_and_every_panel_queries_prometheus() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    if dashboard["uid"].as_str().is_none_or(str::is_empty) || dashboard["title"].as_str().is_none()
    {
        problems
            .push("a uid and a title (links and the sidecar's updates need a stable uid)".into());
    }
    if dashboard["schemaVersion"].as_i64().is_none_or(|v| v < 36) {
        problems.push(format!(
            "schemaVersion {} (36 or later)",
            dashboard["schemaVersion"]
        ));
    }
    // An export "for sharing externally" asks for its datasource on import;
    // the sidecar provisions without asking, so such a dashboard breaks.
    if dashboard.get("__inputs").is_some() {
        problems.push("__inputs: the sidecar cannot answer an import prompt".into());
    }
    let vars = variables(&dashboard);
    let datasource = vars.iter().find(|v| v["name"] == "datasource");
    if !datasource.is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus") {
        problems.push("a variable `datasource` of type datasource, query prometheus".into());
    }
    let defined: BTreeSet<String> = vars
        .iter()
        .filter_map(|v| v["name"].as_str().map(String::from))
        .chain(GRAFANA_VARIABLES.iter().map(|v| v.to_string()))
        .collect();
    for variable in vars.iter().filter(|v| v["type"] == "query") {
        if variable["datasource"]["uid"] != DATASOURCE_UID {
            problems.push(format!(
                "variable {}: datasource {}",
                variable["name"], variable["datasource"]
            ));
        }
    }

    let all = panels(&dashboard);
    let mut ids = BTreeMap::new();
    for panel in &all {
        let name = title(panel);
        match panel["id"].as_i64() {
            Some(id) => {
                if let Some(other) = ids.insert(id, name.clone()) {
                    problems.push(format!("panels \"{other}\" and \"{name}\" share id {id}"));
                }
            }
            None => problems.push(format!("panel \"{name}\" has no id")),
        }
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_i64(), grid["w"].as_i64());
        if !x
            .zip(w)
            .is_some_and(|(x, w)| x >= 0 && w > 0 && x + w <= 24)
            || grid["h"].as_i64().is_none()
        {
            problems.push(format!(
                "panel \"{name}\": gridPos {grid} outside the 24 columns"
            ));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if is_row(panel) {
            if !targets.is_empty() {
                problems.push(format!("row \"{name}\" has queries"));
            }
            continue;
        }
        if panel["datasource"]["uid"] != DATASOURCE_UID
            || panel["datasource"]["type"] != "prometheus"
        {
            problems.push(format!(
                "panel \"{name}\": datasource {}",
                panel["datasource"]
            ));
        }
        if targets.is_empty() {
            problems.push(format!("panel \"{name}\" has no query"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            if target["datasource"]["uid"] != DATASOURCE_UID {
                problems.push(format!(
                    "panel \"{name}\": a query's datasource {}",
                    target["datasource"]
                ));
            }
            if !ref_ids.insert(target["refId"].to_string()) {
                problems.push(format!("panel \"{name}\": refId {} twice", target["refId"]));
            }
        }
    }
    if !all.iter().any(|p| !is_row(p)) {
        problems.push("no panel at all".into());
    }

    for (place, expr) in expressions(&dashboard) {
        if expr.trim().is_empty() {
            problems.push(format!("{place}: an empty query"));
            continue;
        }
        match read_expression(&expr) {
            Ok(reads) if reads.selectors.is_empty() => {
                problems.push(format!("{place}: reads no orderflow metric: {expr}"));
            }
            Ok(_) => {}
            Err(e) => problems.push(format!("{place}: {e}: {expr}")),
        }
        for name in variable_refs(&expr) {
            if !defined.contains(&name) {
                problems.push(format!("{place}: ${name} is no variable of the dashboard"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard:\n  {}",
        problems.join("\n  ")
    );
}

/// What the scraped pages serve: each metric (histograms under their base
/// name) with the label values seen on its samples.
type Served = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn served(pages: &[Metrics]) -> Served {
    let mut served = Served::new();
    for sample in pages.iter().flat_map(|m| &m.samples) {
        let labels = served
            .entry(base_name(&sample.name).to_string())
            .or_default();
        for (k, v) in &sample.labels {
            labels.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    served
}

/// Everything the dashboard reads that `served` lacks, one line each,
/// naming the panel.
fn missing(dashboard: &Value, served: &Served) -> Vec<String> {
    let mut problems = BTreeSet::new();
    for (place, expr) in expressions(dashboard) {
        let Ok(reads) = read_expression(&expr) else {
            problems.insert(format!("{place}: a query this test cannot read: {expr}"));
            continue;
        };
        let mut carried = BTreeSet::new();
        let mut all_served = true;
        for selector in &reads.selectors {
            let metric = base_name(&selector.metric);
            let Some(labels) = served.get(metric) else {
                problems.insert(format!("{place}: metric {metric} is not served"));
                all_served = false;
                continue;
            };
            carried.extend(labels.keys().cloned());
            for m in &selector.matchers {
                if TARGET_LABELS.contains(&m.label.as_str()) {
                    continue;
                }
                match labels.get(&m.label) {
                    None => {
                        problems.insert(format!("{place}: {metric} has no label {}", m.label));
                    }
                    // An exact value must be one the code records; patterns
                    // and variables match whatever there is.
                    Some(values)
                        if m.op == "=" && !m.value.contains('$') && !values.contains(&m.value) =>
                    {
                        problems.insert(format!(
                            "{place}: {metric} has no sample with {}=\"{}\" (seen: {values:?})",
                            m.label, m.value
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        // A missing metric takes its labels with it: said once, above.
        for label in reads.grouping.iter().filter(|_| all_served) {
            if !TARGET_LABELS.contains(&label.as_str()) && !carried.contains(label) {
                problems.insert(format!(
                    "{place}: groups by {label}, which none of its metrics carries"
                ));
            }
        }
    }
    problems.into_iter().collect()
}

async fn scrape(http: &reqwest::Client, bases: &[&str]) -> Vec<Metrics> {
    let mut pages = Vec::new();
    for base in bases {
        pages.push(Metrics::scrape(http, base).await);
    }
    pages
}

/// One series of one page.
struct Series<'a> {
    page: &'a str,
    metric: &'static str,
    labels: Vec<(&'static str, &'static str)>,
}

/// The series an alert or a panel needs before anything happened, which
/// must be there at 0.
fn zero_at_start<'a>(api: &'a str, worker: &'a str) -> Vec<Series<'a>> {
    let series = |page, metric, labels| Series {
        page,
        metric,
        labels,
    };
    let relay = vec![("relay", "outbox-relay")];
    let mut expected = vec![
        series(api, "orderflow_sink_failures_total", relay.clone()),
        series(worker, "orderflow_sink_failures_total", relay),
        series(worker, "orderflow_dead_letters_total", vec![]),
        series(worker, "orderflow_notifications_retried_total", vec![]),
        series(worker, "orderflow_notifications_failed_total", vec![]),
        series(worker, "orderflow_consumption_paused", vec![]),
    ];
    for status in ["Pending", "Paid", "Shipped"] {
        expected.push(series(
            worker,
            "orderflow_orders_redriven_total",
            vec![("status", status)],
        ));
    }
    expected
}

/// Those of `expected` their page does not show at 0.
async fn not_at_zero(http: &reqwest::Client, expected: &[Series<'_>]) -> Vec<String> {
    let mut absent = Vec::new();
    for s in expected {
        let value = Metrics::scrape(http, s.page)
            .await
            .sample(s.metric, &s.labels);
        if value != Some(0.0) {
            absent.push(format!(
                "{} {:?} on {}: {value:?}",
                s.metric, s.labels, s.page
            ));
        }
    }
    absent
}

/// `serve-api` and `run-worker` as separate processes (PostgreSQL, a mock
/// Kafka cluster of the test's): before the first order, the counters an
/// alert watches are there at 0; after one order's whole life through the
/// public API, every metric, label and label value the dashboard's queries
/// name is on the two roles' /metrics pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_reads_is_served_by_the_roles() {
    let dashboard = dashboard();
    let mut cluster = Cluster::builder(TestBroker::mock())
        .apis(1)
        .workers(1)
        .start()
        .await;
    cluster.wait_until_assigned();
    let api = cluster.base();
    let worker = cluster.worker_admins().remove(0);
    let http = cluster.http.clone();

    let expected = zero_at_start(&api, &worker);
    let at_start = common::eventually(Duration::from_secs(10), || async {
        not_at_zero(&http, &expected).await.is_empty().then_some(())
    })
    .await;
    if at_start.is_none() {
        let absent = not_at_zero(&http, &expected).await;
        panic!(
            "not at 0 before the first order:\n  {}",
            absent.join("\n  ")
        );
    }

    common::run_order_to_fulfilment(&http, &api, "Grace Hopper").await;

    // The consumer's lag comes with librdkafka's statistics, the outbox
    // figures at scrape time: poll until nothing is missing.
    let bases = [api.as_str(), worker.as_str()];
    let complete = common::eventually(Duration::from_secs(30), || async {
        missing(&dashboard, &served(&scrape(&http, &bases).await))
            .is_empty()
            .then_some(())
    })
    .await;
    if complete.is_none() {
        let served = served(&scrape(&http, &bases).await);
        let problems = missing(&dashboard, &served);
        panic!(
            "the dashboard reads what the roles do not serve:\n  {}\nserved: {:?}",
            problems.join("\n  "),
            served.keys().collect::<Vec<_>>()
        );
    }
    // Prometheus adds these when it scrapes; a page carrying them itself
    // would have them renamed (exported_pod) and the dashboard's filters
    // would miss it.
    let served = served(&scrape(&http, &bases).await);
    let clashing: Vec<String> = served
        .iter()
        .flat_map(|(metric, labels)| {
            TARGET_LABELS
                .iter()
                .filter(|l| labels.contains_key(**l))
                .map(move |l| format!("{metric} carries {l}"))
        })
        .collect();
    assert!(clashing.is_empty(), "{clashing:?}");
}
