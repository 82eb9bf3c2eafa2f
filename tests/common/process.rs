//! The real `orderflow` binary as a child process with JSON logs on stderr,
//! captured line by line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::children;
use super::wait::poll;

/// How often a process's log and exit status are looked at.
const EVERY: Duration = Duration::from_millis(50);

pub struct Process {
    pub child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    raw: Arc<Mutex<Vec<String>>>,
}

/// The binary cargo built, or `ORDERFLOW_BINARY` (the benchmark's A/B runs
/// against an earlier build).
pub fn binary() -> String {
    std::env::var("ORDERFLOW_BINARY")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_orderflow").into())
}

impl Process {
    pub fn spawn(args: &[&str], env: &[(String, String)], dir: &Path) -> Self {
        let mut command = Command::new(binary());
        command
            .args(["--log-format", "json"])
            .args(args)
            // The test's own RUST_LOG, if it sets one, wins.
            .env("RUST_LOG", "info")
            .envs(env.iter().cloned())
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // Bound to the test process: a killed test binary leaves none behind.
        let mut child = children::spawn_bound_to_process(command).expect("spawn orderflow");
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let (l, r) = (lines.clone(), raw.clone());
        // ORDERFLOW_TEST_LOG_DIR keeps every process's log as a file, for a
        // run that hangs or aborts before a test can print them.
        let mut file = std::env::var_os("ORDERFLOW_TEST_LOG_DIR").and_then(|dir| {
            let name = format!("{}-{}.log", args.join("-"), child.id());
            std::fs::create_dir_all(&dir).ok()?;
            std::fs::File::create(Path::new(&dir).join(name)).ok()
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = file.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().expect("log lines").push(v);
                }
                r.lock().expect("raw lines").push(line);
            }
        });
        Self { child, lines, raw }
    }

    /// Waits for a log line whose `message` starts with `prefix`; returns it.
    pub fn wait_for_log(&mut self, prefix: &str, within: Duration) -> Value {
        let found = poll(within, EVERY, || {
            let line = self
                .lines
                .lock()
                .expect("log lines")
                .iter()
                .find(|v| v["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
                .cloned();
            if line.is_none() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "orderflow exited ({status}) before logging {prefix:?}:\n{}",
                        self.log_text()
                    );
                }
            }
            line
        });
        found.unwrap_or_else(|| {
            panic!(
                "no log line {prefix:?} within {within:?}:\n{}",
                self.log_text()
            )
        })
    }

    /// The log lines so far whose `message` is `message`.
    pub fn log_lines(&self, message: &str) -> Vec<Value> {
        self.lines
            .lock()
            .expect("log lines")
            .iter()
            .filter(|v| v["message"] == message)
            .cloned()
            .collect()
    }

    /// Waits until the raw log contains `needle`; false after `within`.
    pub fn logs_within(&self, needle: &str, within: Duration) -> bool {
        poll(within, Duration::from_millis(100), || {
            self.log_text().contains(needle).then_some(())
        })
        .is_some()
    }

    /// The HTTP address (API, or the worker's admin port) the process
    /// logged after binding port 0.
    pub fn http_addr(&mut self) -> SocketAddr {
        let line = self.wait_for_log("HTTP listening", Duration::from_secs(60));
        line["addr"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("addr field")
    }

    pub fn log_text(&self) -> String {
        self.raw.lock().expect("raw lines").join("\n")
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let exited = poll(within, EVERY, || match self.child.try_wait() {
            Ok(Some(status)) => Some(status.code()),
            _ => None,
        });
        exited.unwrap_or_else(|| {
            let _ = self.child.kill();
            panic!(
                "orderflow did not exit within {within:?}:\n{}",
                self.log_text()
            )
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
