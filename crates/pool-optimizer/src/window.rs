//! [`Window`]: what one pool did over one sampling interval, from two stats snapshots, and
//! [`BusyBasis`], what its busy connections are read from.

use std::fmt;
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
    /// Mean time connections were held by their users, over the holds that ended in the
    /// interval (a hold that began long before it counts whole).
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
    /// Connection-time in use during the interval (the increase of
    /// [`PoolStats::in_use_time`]): only the part of each hold that fell inside it. `None` in a
    /// window built by hand without it, whose busy connections then come from Little's law.
    pub in_use_time: Option<Duration>,
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
            || after.in_use_time < before.in_use_time
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
            open: after.open,
            in_use_time: Some(after.in_use_time - before.in_use_time),
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

    /// Connections busy on average, and what that is read from (see [`BusyBasis`]): the
    /// connection-time in use inside the window when it has it, else Little's law.
    pub fn busy_basis(&self) -> BusyBasis {
        match self.in_use_time {
            Some(in_use) if !self.duration.is_zero() => {
                BusyBasis::InUseTime { in_use, window: self.duration }
            }
            _ => BusyBasis::LittlesLaw { rate: self.rate(), hold_mean: self.hold_mean },
        }
    }

    /// Connections busy on average over the window (see [`busy_basis`](Self::busy_basis)).
    pub fn busy(&self) -> f64 {
        self.busy_basis().busy()
    }

    /// How long a checkout kept its connection, for comparing windows: the connection-time in
    /// use inside the window per checkout (Little's law read the other way) when the window
    /// has its in-use time and checkouts, else the mean hold. A hold that began long before
    /// the window adds only its part inside the window, shared among all the checkouts.
    pub fn hold(&self) -> Duration {
        match self.in_use_time {
            // Windows built by hand can hold anything: past `Duration::MAX` saturates.
            Some(in_use) if self.checkouts > 0 => {
                Duration::try_from_secs_f64(in_use.as_secs_f64() / self.checkouts as f64)
                    .unwrap_or(Duration::MAX)
            }
            _ => self.hold_mean,
        }
    }

    /// The share of open connections that sat idle on average, from 0 to 1.
    pub fn idle_share(&self) -> f64 {
        let open = self.open.max(self.pool_size).max(1) as f64;
        (1.0 - self.busy() / open).clamp(0.0, 1.0)
    }
}

/// What a window's busy connections (connections in use on average) are read from.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum BusyBasis {
    /// The connection-time in use inside the window over its duration, as the engine measures
    /// it ([`Window::in_use_time`]): a hold counts only for its part inside the window.
    InUseTime {
        /// Connection-time in use inside the window.
        in_use: Duration,
        /// The window's duration.
        window: Duration,
    },
    /// Little's law, for a window without its in-use time (one built by hand): checkouts per
    /// second × the mean of the holds that ended in the window, where a hold that began long
    /// before the window counts whole.
    LittlesLaw {
        /// The window's checkouts per second.
        rate: f64,
        /// The window's mean hold.
        hold_mean: Duration,
    },
}

impl BusyBasis {
    /// Connections busy on average.
    pub fn busy(&self) -> f64 {
        match *self {
            BusyBasis::InUseTime { in_use, window } if !window.is_zero() => {
                in_use.as_secs_f64() / window.as_secs_f64()
            }
            BusyBasis::InUseTime { .. } => 0.0,
            BusyBasis::LittlesLaw { rate, hold_mean } => rate * hold_mean.as_secs_f64(),
        }
    }
}

impl Default for BusyBasis {
    fn default() -> Self {
        BusyBasis::LittlesLaw { rate: 0.0, hold_mean: Duration::ZERO }
    }
}

/// `140.0 connection-seconds in use in 10.0 s` or `Little's law: 320.0/s × 50.0 ms`: the
/// operands of [`busy`](BusyBasis::busy), so that the numbers shown make the busy figure.
impl fmt::Display for BusyBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BusyBasis::InUseTime { in_use, window } => write!(
                f,
                "{:.1} connection-seconds in use in {:.1} s",
                in_use.as_secs_f64(),
                window.as_secs_f64()
            ),
            BusyBasis::LittlesLaw { rate, hold_mean } => {
                write!(f, "Little's law: {rate:.1}/s × {:.1} ms", hold_mean.as_secs_f64() * 1e3)
            }
        }
    }
}
