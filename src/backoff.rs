//! Exponential backoff with "equal jitter": each delay is half the
//! exponential step plus a random part of the other half, so retries of
//! many processes spread out but never collapse to zero. Every retry loop
//! of the crate waits through this module, and every wait ends early on
//! shutdown.

use std::time::Duration;

use crate::shutdown::Shutdown;

/// The delay before retry `attempt` (0-based): `initial · 2^attempt`,
/// capped at `max`, then jittered into its upper half.
pub fn delay(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let step = initial.saturating_mul(1u32 << attempt.min(16)).min(max);
    // uuid's v4 is the random source the crate already has.
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1_000) as u32;
    step.mul_f64(0.5 + f64::from(jitter) / 2_000.0)
}

/// Successive delays for one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let d = delay(self.initial, self.max, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// After a success: the next failure starts from the initial delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Waits the next delay; false if shutdown came first.
    pub async fn wait(&mut self, shutdown: &Shutdown) -> bool {
        Self::sleep(self.next_delay(), shutdown).await
    }

    /// Waits `delay`; false if shutdown came first.
    pub async fn sleep(delay: Duration, shutdown: &Shutdown) -> bool {
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.wait() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_stay_in_the_upper_half() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut b = Backoff::new(initial, max);
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        for (attempt, d) in delays.iter().enumerate() {
            let step = initial.saturating_mul(1 << attempt).min(max);
            assert!(
                *d >= step / 2 && *d <= step,
                "attempt {attempt}: {d:?} of {step:?}"
            );
        }
        assert!(delays[7] >= max / 2);
    }
}
