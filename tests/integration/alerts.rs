//! The chart's alerts (helm/orderflow/files/alerts.yaml, rendered into a
//! PrometheusRule), checked with Prometheus's own promtool: `check rules`
//! on the rules exactly as the chart renders them, and `test rules` on the
//! unit tests in tests/alerts/, where every alert fires on the series an
//! outage leaves, with its exact labels and annotations, and keeps quiet on
//! a healthy fleet, a blip, or another release.
//!
//! Needs promtool (Debian: `apt-get install prometheus`) and the chart
//! renderer (`pip install -r tests/deploy/requirements.txt`); `.ci/run`
//! installs both. Without them this test fails and says so; it never passes
//! by skipping.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

const PROMTOOL_HINT: &str = "apt-get install prometheus";
const RENDER_HINT: &str = "pip install -r tests/deploy/requirements.txt";
/// What render_rules.py exits with when one of its tools is missing.
const EXIT_MISSING_TOOL: i32 = 3;
/// The rule files render_rules.py writes (default values, and the workers as
/// a StatefulSet) and the promtool unit tests of each.
const RULES_AND_TESTS: [(&str, &str); 2] = [
    ("orderflow.rules.yaml", "orderflow.test.yaml"),
    ("orderflow-static.rules.yaml", "orderflow-static.test.yaml"),
];

fn run(command: &mut Command, what: &str, hint: &str) -> Output {
    command.output().unwrap_or_else(|e| {
        panic!("cannot run {what} ({e}): install it with `{hint}`");
    })
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Per alert of a unit-test file: how many evaluations expect it firing,
/// and how many expect silence. Reads the shape the files are written in:
/// `alertname: X` followed by `exp_alerts: []` or by `exp_alerts:` and a list.
fn cases(tests: &str) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut lines = tests.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(alert) = line.strip_prefix("alertname: ") else {
            continue;
        };
        let entry = out.entry(alert.to_string()).or_default();
        match lines.next() {
            Some("exp_alerts: []") => entry.1 += 1,
            Some("exp_alerts:") => entry.0 += 1,
            other => panic!("alertname: {alert} is not followed by exp_alerts, but {other:?}"),
        }
    }
    out
}

#[test]
fn the_charts_alerts_pass_promtool_and_fire_exactly_when_their_unit_tests_say() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("temp dir");

    let python = std::env::var("ORDERFLOW_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let rendered = run(
        Command::new(&python)
            .arg(root.join("tests/alerts/render_rules.py"))
            .arg(dir.path()),
        &python,
        RENDER_HINT,
    );
    match rendered.status.code() {
        Some(0) => {}
        Some(EXIT_MISSING_TOOL) => panic!(
            "the chart renderer is not installed: run `{RENDER_HINT}`\n{}",
            text(&rendered)
        ),
        code => panic!(
            "rendering the chart's alerts failed (exit {code:?}):\n{}",
            text(&rendered)
        ),
    }

    let promtool = std::env::var("ORDERFLOW_PROMTOOL").unwrap_or_else(|_| "promtool".to_string());
    let version = run(
        Command::new(&promtool).arg("--version"),
        &promtool,
        PROMTOOL_HINT,
    );
    assert!(
        version.status.success(),
        "`{promtool} --version` failed: install promtool with `{PROMTOOL_HINT}`\n{}",
        text(&version)
    );
    println!("{}", text(&version).lines().next().unwrap_or_default());

    let rule_files: Vec<_> = RULES_AND_TESTS
        .iter()
        .map(|(rules, _)| dir.path().join(rules))
        .collect();
    let checked = run(
        Command::new(&promtool)
            .arg("check")
            .arg("rules")
            .args(&rule_files),
        &promtool,
        PROMTOOL_HINT,
    );
    println!("{}", text(&checked));
    assert!(
        checked.status.success(),
        "promtool check rules rejects the chart's rules"
    );

    // The unit tests name their rule file relative to themselves.
    let mut test_files = Vec::new();
    for (rules, tests) in RULES_AND_TESTS {
        let source = std::fs::read_to_string(root.join("tests/alerts").join(tests))
            .unwrap_or_else(|e| panic!("tests/alerts/{tests}: {e}"));
        let rendered_rules =
            std::fs::read_to_string(dir.path().join(rules)).expect("rendered rules");
        // Every alert of the rules has a case where it fires and one where
        // it keeps quiet (the StatefulSet render only adds a term to one).
        let alerts: Vec<&str> = rendered_rules
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
            .collect();
        assert!(!alerts.is_empty(), "no alert in {rules}:\n{rendered_rules}");
        let tested = cases(&source);
        for alert in &alerts {
            if rules != RULES_AND_TESTS[0].0 && !tested.contains_key(*alert) {
                continue;
            }
            let (firing, quiet) = tested.get(*alert).copied().unwrap_or_default();
            assert!(
                firing > 0 && quiet > 0,
                "tests/alerts/{tests}: {alert} needs a case where it fires ({firing}) \
                 and one where it keeps quiet ({quiet})"
            );
        }
        std::fs::write(dir.path().join(tests), source).expect("copy unit tests");
        test_files.push(dir.path().join(tests));
    }
    let tested = run(
        Command::new(&promtool)
            .arg("test")
            .arg("rules")
            .args(&test_files)
            .current_dir(dir.path()),
        &promtool,
        PROMTOOL_HINT,
    );
    println!("{}", text(&tested));
    assert!(
        tested.status.success(),
        "promtool test rules: an alert fired, or kept quiet, against its unit test (see above)"
    );
}

/// Every alert's `runbook_url` ends in `#<its name in lower case>`: the
/// README must have that section, or the link an on-call engineer follows
/// at night lands at the top of the page.
#[test]
fn every_alert_has_its_runbook_section_in_the_readme() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("helm/orderflow/files/alerts.yaml"))
        .expect("helm/orderflow/files/alerts.yaml");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(str::trim)
        .collect();
    assert!(alerts.len() >= 7, "alerts found: {alerts:?}");
    let missing: Vec<&&str> = alerts
        .iter()
        .filter(|a| !readme.lines().any(|l| l.trim() == format!("### {a}")))
        .collect();
    assert!(
        missing.is_empty(),
        "alerts without a `### <name>` runbook section in README.md: {missing:?}"
    );
}
