//! [`Window`]: what one pool did over one sampling interval, from two stats snapshots.

use std::time::Duration;

use pool_core::PoolStats;

/// One pool's activity over one sampling interval.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Window {
    /// The pool: its id (`backend:name`) when it comes from a [`Sampler`](crate::Sampler).
    pub pool: String,
    /// How long the interval was.
    pub duration: Duration,
    /// `pool_size` at the end of the interval.
    pub pool_size: usize,
    /// `max_overflow` at the end of the interval.
    pub max_overflow: usize,
    /// Successful checkouts during the interval.
    pub checkouts: u64,
    /// Connections given back during the interval (the count of the use-time histogram's
    /// delta). None given back while callers waited means every connection is held by stuck
    /// work.
    pub releases: u64,
    /// Mean time connections were held by their users.
    pub hold_mean: Duration,
    /// 90th percentile of the hold time.
    pub hold_p90: Duration,
    /// Mean wait of checkouts.
    pub wait_mean: Duration,
    /// Median wait.
    pub wait_p50: Duration,
    /// 90th percentile of the wait.
    pub wait_p90: Duration,
    /// 99th percentile of the wait.
    pub wait_p99: Duration,
    /// Acquires that timed out.
    pub timeouts: u64,
    /// Failed connect attempts.
    pub connect_errors: u64,
    /// Open connections beyond `pool_size` at the end of the interval.
    pub overflow: usize,
    /// Open connections at the end of the interval.
    pub open: usize,
    /// The sampler's count of windows taken for this pool, from 1; 0 for a window built by
    /// hand, which the tuner always treats as new.
    pub seq: u64,
}

impl Window {
    /// The window between two snapshots of the same pool taken `elapsed` apart; `None` when
    /// the stats were reset in between ([`PoolStats::resets`] differs, or a counter went
    /// backwards) or no time passed. Its `seq` is 0: the [`Sampler`](crate::Sampler) numbers
    /// the windows it keeps.
    pub fn between(before: &PoolStats, after: &PoolStats, elapsed: Duration) -> Option<Window> {
        if elapsed.is_zero()
            || after.resets != before.resets
            || after.acquires < before.acquires
            || after.timeouts < before.timeouts
        {
            return None;
        }
        let wait = after.wait_time.delta(&before.wait_time);
        let hold = after.use_time.delta(&before.use_time);
        Some(Window {
            pool: after.name.clone(),
            duration: elapsed,
            pool_size: after.pool_size,
            max_overflow: after.max_overflow,
            checkouts: after.acquires - before.acquires,
            releases: hold.count(),
            hold_mean: hold.mean(),
            hold_p90: hold.quantile(0.9),
            wait_mean: wait.mean(),
            wait_p50: wait.quantile(0.5),
            wait_p90: wait.quantile(0.9),
            wait_p99: wait.quantile(0.99),
            timeouts: after.timeouts - before.timeouts,
            connect_errors: after.connect_errors.saturating_sub(before.connect_errors),
            overflow: after.overflow,
            open: after.open_connections,
            seq: 0,
        })
    }

    /// Checkouts per second; 0 for a window of no duration (one built by hand).
    pub fn rate(&self) -> f64 {
        if self.duration.is_zero() {
            return 0.0;
        }
        self.checkouts as f64 / self.duration.as_secs_f64()
    }

    /// Connections busy on average (Little's law): checkouts per second × mean hold time.
    pub fn busy(&self) -> f64 {
        self.rate() * self.hold_mean.as_secs_f64()
    }

    /// The share of open connections that sat idle on average, from 0 to 1.
    pub fn idle_share(&self) -> f64 {
        let open = self.open.max(self.pool_size).max(1) as f64;
        (1.0 - self.busy() / open).clamp(0.0, 1.0)
    }
}
