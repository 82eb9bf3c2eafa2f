//! The one way the tests wait: poll a check until it yields a value or the
//! time is up. `eventually` for async checks, `poll` for blocking ones
//! (child processes, log lines, threads outside the runtime).

use std::future::Future;
use std::time::{Duration, Instant};

/// How often a check runs unless the caller says otherwise.
pub const EVERY: Duration = Duration::from_millis(100);

/// Polls `check` every 100 ms until it returns `Some` or `within` elapses.
pub async fn eventually<T, F, Fut>(within: Duration, check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_every(within, EVERY, check).await
}

/// As [`eventually`], checking every `every`.
pub async fn eventually_every<T, F, Fut>(
    within: Duration,
    every: Duration,
    mut check: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Blocking: calls `check` every `every` until it returns `Some` or
/// `within` elapses. A check may panic to give up early (a process that
/// exited, say).
pub fn poll<T>(
    within: Duration,
    every: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}
