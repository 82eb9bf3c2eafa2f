//! The lag-based worker count (KafkaFlow's WithConsumerLagWorkerBalancer):
//! one worker per `LagThreshold` messages of lag, within [MinWorkers,
//! MaxWorkers].

pub fn desired_workers(total_lag: i64, lag_threshold: i64, min: usize, max: usize) -> usize {
    let threshold = lag_threshold.max(1);
    let wanted = if total_lag <= 0 {
        0
    } else {
        ((total_lag + threshold - 1) / threshold) as usize
    };
    wanted.clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::desired_workers;

    #[test]
    fn follows_lag_within_bounds() {
        assert_eq!(desired_workers(0, 100, 1, 8), 1);
        assert_eq!(desired_workers(1, 100, 1, 8), 1);
        assert_eq!(desired_workers(100, 100, 1, 8), 1);
        assert_eq!(desired_workers(101, 100, 1, 8), 2);
        assert_eq!(desired_workers(450, 100, 1, 8), 5);
        assert_eq!(desired_workers(1_000_000, 100, 1, 8), 8);
        assert_eq!(desired_workers(0, 100, 2, 8), 2);
        assert_eq!(
            desired_workers(-5, 100, 2, 8),
            2,
            "unknown lag keeps the floor"
        );
        assert_eq!(
            desired_workers(50, 0, 1, 4),
            4,
            "a zero threshold acts as 1"
        );
    }
}
