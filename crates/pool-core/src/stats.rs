//! Stats kept with atomics on the hot path, and the [`PoolStats`] snapshot read from them.

use std::sync::atomic::{
    AtomicU64, AtomicUsize,
    Ordering::{AcqRel, Acquire, Relaxed, Release},
};
use std::time::Duration;

/// Upper bounds (inclusive, in seconds) of the engine's histogram buckets; a last bucket holds
/// everything above the largest bound. From 10 µs (a wait served from the idle list) to 60 s
/// (past any sensible `pool_timeout`).
pub const HISTOGRAM_BOUNDS: [f64; 21] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const BOUNDS_NS: [u64; 21] = {
    let mut ns = [0u64; 21];
    let mut i = 0;
    while i < 21 {
        ns[i] = (HISTOGRAM_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

const BUCKETS: usize = HISTOGRAM_BOUNDS.len() + 1;

/// A fixed-bucket histogram of durations, recorded with relaxed atomics.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let idx = BOUNDS_NS.partition_point(|&bound| bound < ns);
        self.buckets[idx].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
        if ns > self.max_ns.load(Relaxed) {
            self.max_ns.fetch_max(ns, Relaxed);
        }
    }

    /// Records a duration of zero: one increment, no clock read needed.
    pub(crate) fn record_zero(&self) {
        self.buckets[0].fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
            max: Duration::from_nanos(self.max_ns.load(Relaxed)),
        }
    }

    fn reset(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.sum_ns.store(0, Relaxed);
        self.max_ns.store(0, Relaxed);
    }
}

/// A histogram read at one moment: per-bucket counts over [`HISTOGRAM_BOUNDS`] (plus one
/// overflow bucket), the sum and the largest value recorded.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Count per bucket, not cumulative; `counts[i]` holds values `≤ HISTOGRAM_BOUNDS[i]` and
    /// above the previous bound; the last entry holds values above every bound.
    pub counts: Vec<u64>,
    /// Sum of all values recorded.
    pub sum: Duration,
    /// Largest value recorded.
    pub max: Duration,
}

impl HistogramSnapshot {
    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Mean of the values recorded, zero when empty.
    pub fn mean(&self) -> Duration {
        match self.count() {
            0 => Duration::ZERO,
            // In nanoseconds, as `u128`: `Duration / u32` would cap the count at 4.3 billion.
            n => Duration::from_nanos(
                u64::try_from(self.sum.as_nanos() / u128::from(n)).unwrap_or(u64::MAX),
            ),
        }
    }

    /// Estimates the `q` quantile (0 ≤ q ≤ 1) by linear interpolation inside its bucket, capped
    /// at the largest value recorded. Zero when empty.
    pub fn quantile(&self, q: f64) -> Duration {
        let total = self.count();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).max(1.0);
        let mut seen = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            if seen + c as f64 >= rank {
                // Entries past the overflow bucket (a snapshot built by hand) count as overflow.
                let last = HISTOGRAM_BOUNDS[HISTOGRAM_BOUNDS.len() - 1];
                let lo = i
                    .checked_sub(1)
                    .map_or(0.0, |j| HISTOGRAM_BOUNDS.get(j).copied().unwrap_or(last));
                let hi = HISTOGRAM_BOUNDS.get(i).copied().unwrap_or(lo).min(self.max.as_secs_f64());
                let hi = hi.max(lo);
                let frac = (rank - seen) / c as f64;
                return Duration::from_secs_f64(lo + (hi - lo) * frac);
            }
            seen += c as f64;
        }
        self.max
    }

    /// The difference `self − earlier`, for windows of activity (saturating at zero).
    pub fn delta(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
            sum: self.sum.saturating_sub(earlier.sum),
            max: self.max,
        }
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The manager reported it broken: on return, at checkout or in maintenance.
    Broken,
    /// A pre-ping or maintenance check failed.
    FailedCheck,
    /// The reset on return failed.
    FailedReset,
    /// It reached its lifetime (`pool_recycle`).
    Recycled,
    /// It sat idle past `idle_timeout`.
    Idle,
    /// The pool shrank (resize).
    Shrink,
    /// The pool was closed.
    PoolClosed,
    /// The user took it out of the pool (`detach`) or discarded it.
    Detached,
}

impl CloseReason {
    /// Every reason, in a stable order.
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Broken,
        CloseReason::FailedCheck,
        CloseReason::FailedReset,
        CloseReason::Recycled,
        CloseReason::Idle,
        CloseReason::Shrink,
        CloseReason::PoolClosed,
        CloseReason::Detached,
    ];

    /// The reason's name as metrics label it: `broken`, `failed_check`, `recycled`...
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Broken => "broken",
            CloseReason::FailedCheck => "failed_check",
            CloseReason::FailedReset => "failed_reset",
            CloseReason::Recycled => "recycled",
            CloseReason::Idle => "idle",
            CloseReason::Shrink => "shrink",
            CloseReason::PoolClosed => "pool_closed",
            CloseReason::Detached => "detached",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Connections closed, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClosedCounts {
    counts: [u64; 8],
}

impl ClosedCounts {
    /// Connections closed for `reason`.
    pub fn get(&self, reason: CloseReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Connections closed for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// `(reason, count)` for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (CloseReason, u64)> + '_ {
        CloseReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }
}

/// The engine's counters and histograms. Gauges live in the pool's state.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) waits: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) created: AtomicU64,
    pub(crate) connect_errors: AtomicU64,
    pub(crate) closed: [AtomicU64; 8],
    pub(crate) leaks: AtomicU64,
    pub(crate) breaker_opens: AtomicU64,
    pub(crate) breaker_rejections: AtomicU64,
    pub(crate) peak_in_use: AtomicUsize,
    pub(crate) peak_waiting: AtomicUsize,
    pub(crate) wait: Histogram,
    pub(crate) usage: Histogram,
    pub(crate) connect: Histogram,
    /// Twice the `reset` calls so far, plus one while a reset is zeroing (a sequence lock:
    /// a snapshot that saw it odd, or change, read a reset half done); never reset itself.
    pub(crate) resets: AtomicU64,
}

/// Gauges read under the pool's lock at snapshot time, with what else is kept under it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gauges {
    pub(crate) in_use: usize,
    pub(crate) idle: usize,
    pub(crate) waiting: usize,
    pub(crate) connecting: usize,
    pub(crate) open: usize,
    pub(crate) breaker_open: bool,
    /// [`PoolStats::in_use_time`], kept under the lock where `in_use` changes.
    pub(crate) in_use_time: Duration,
    /// [`Stats::resets`] as read under the lock (a reset runs whole under it, so this count is
    /// even and of the same reset as `in_use_time`).
    pub(crate) resets: u64,
}

impl Stats {
    pub(crate) fn closed(&self, reason: CloseReason) {
        self.closed[reason.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn reset(&self, in_use: usize, waiting: usize) {
        self.resets.fetch_add(1, AcqRel);
        // The zeroing stores below must not be seen before the odd count.
        std::sync::atomic::fence(Release);
        for c in [
            &self.waits,
            &self.timeouts,
            &self.created,
            &self.connect_errors,
            &self.leaks,
            &self.breaker_opens,
            &self.breaker_rejections,
        ] {
            c.store(0, Relaxed);
        }
        for c in &self.closed {
            c.store(0, Relaxed);
        }
        self.peak_in_use.store(in_use, Relaxed);
        self.peak_waiting.store(waiting, Relaxed);
        self.wait.reset();
        self.usage.reset();
        self.connect.reset();
        self.resets.fetch_add(1, Release);
    }

    pub(crate) fn snapshot(
        &self,
        name: &str,
        backend: &'static str,
        config: &crate::PoolConfig,
        g: Gauges,
    ) -> PoolStats {
        // A reset that overlaps the reads shows as a change of `resets`: read again (a few
        // times at most; a reset is a handful of stores), else count the reset as done.
        let mut attempts = 0;
        loop {
            let before = self.resets.load(Acquire);
            let stats = self.read(name, backend, config, g);
            std::sync::atomic::fence(Acquire);
            let after = self.resets.load(Relaxed);
            attempts += 1;
            if (before == after && before.is_multiple_of(2)) || attempts == 4 {
                // A reset since the gauges were read: `in_use_time` is from before it, and
                // the time in use since it, a moment ago, is as good as none.
                let in_use_time =
                    if after == g.resets { stats.in_use_time } else { Duration::ZERO };
                return PoolStats { resets: after.div_ceil(2), in_use_time, ..stats };
            }
        }
    }

    fn read(
        &self,
        name: &str,
        backend: &'static str,
        config: &crate::PoolConfig,
        g: Gauges,
    ) -> PoolStats {
        let mut closed = ClosedCounts::default();
        for (i, c) in self.closed.iter().enumerate() {
            closed.counts[i] = c.load(Relaxed);
        }
        let wait_time = self.wait.snapshot();
        PoolStats {
            name: name.to_owned(),
            backend,
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
            min_idle: config.effective_min_idle(),
            in_use: g.in_use,
            idle: g.idle,
            waiting: g.waiting,
            connecting: g.connecting,
            open: g.open,
            overflow: g.open.saturating_sub(config.pool_size),
            peak_in_use: self.peak_in_use.load(Relaxed).max(g.in_use),
            peak_waiting: self.peak_waiting.load(Relaxed).max(g.waiting),
            acquires: wait_time.count(),
            waits: self.waits.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            connections_created: self.created.load(Relaxed),
            connect_errors: self.connect_errors.load(Relaxed),
            connections_closed: closed.total(),
            closed,
            leaks_detected: self.leaks.load(Relaxed),
            average_wait_time: wait_time.mean(),
            wait_time,
            use_time: self.usage.snapshot(),
            in_use_time: g.in_use_time,
            connect_time: self.connect.snapshot(),
            breaker_open: g.breaker_open,
            breaker_opens: self.breaker_opens.load(Relaxed),
            breaker_rejections: self.breaker_rejections.load(Relaxed),
            routing: None,
            resets: 0,
        }
    }
}

/// One pool's stats at one moment.
///
/// Its gauges (`in_use`, `idle`, `waiting`, `connecting`, `open`) carry the names and meanings of
/// [`PoolState`](crate::PoolState)'s, the engine's view of them under its lock; `PoolStats` adds
/// the settings, counters and histograms that exporters and the optimizer read.
///
/// # Consistency
///
/// Each field is exact when read, but the set is read without stopping the pool: gauges are
/// read together under the pool's lock, counters and histograms each with one atomic load, so
/// counters may disagree with gauges by operations in flight (an acquire counted whose
/// connection is not yet in use, say). `in_use_time` is read with the gauges and always belongs
/// to the same reset as `resets`. Counters and peaks restart from zero on `reset_stats`;
/// gauges do not.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's name.
    pub name: String,
    /// The backend (`postgresql`, `redis`...).
    pub backend: &'static str,
    /// Connections kept (setting).
    pub pool_size: usize,
    /// Extra connections allowed under load (setting).
    pub max_overflow: usize,
    /// Warm connections kept (effective setting).
    pub min_idle: usize,
    /// Connections checked out now.
    pub in_use: usize,
    /// Connections idle in the pool now.
    pub idle: usize,
    /// Callers waiting for a connection now.
    pub waiting: usize,
    /// Connects in flight now.
    pub connecting: usize,
    /// Connections open now, as the pool counts them against `pool_size + max_overflow`: in
    /// use, idle, being checked or reset by the pool, being opened, or being closed.
    pub open: usize,
    /// Open connections beyond `pool_size`, counted as `open` are: right after a
    /// shrink, those still closing count too.
    pub overflow: usize,
    /// Most connections in use at once since the last reset.
    pub peak_in_use: usize,
    /// Most callers waiting at once since the last reset.
    pub peak_waiting: usize,
    /// Successful acquires (checkouts): the count of `wait_time`.
    pub acquires: u64,
    /// Acquires that had to wait for a connection.
    pub waits: u64,
    /// Acquires that timed out.
    pub timeouts: u64,
    /// Connections opened.
    pub connections_created: u64,
    /// Connect attempts that failed or timed out.
    pub connect_errors: u64,
    /// Connections closed for any reason.
    pub connections_closed: u64,
    /// Connections closed, by reason.
    pub closed: ClosedCounts,
    /// Connections held past `leak_detection_threshold`.
    pub leaks_detected: u64,
    /// Mean wait of successful acquires.
    pub average_wait_time: Duration,
    /// How long acquires waited (zero when served from the idle list without waiting).
    pub wait_time: HistogramSnapshot,
    /// How long connections were held by their users, counted when the hold ends (returned,
    /// discarded or detached).
    pub use_time: HistogramSnapshot,
    /// Connection-time in use since the last reset: the integral of `in_use` over
    /// time (two connections out for a second add two seconds), the connections out now counted
    /// up to the snapshot. Its increase between two snapshots over the time between them is how
    /// many connections were in use on average; unlike `use_time`, which counts a hold whole
    /// when it ends, it counts the part of each hold that fell between them.
    pub in_use_time: Duration,
    /// How long successful connects took.
    pub connect_time: HistogramSnapshot,
    /// Whether the circuit breaker is open now (a gauge): acquires that find nothing idle fail
    /// at once until its probe connects.
    pub breaker_open: bool,
    /// Times the circuit breaker opened.
    pub breaker_opens: u64,
    /// Acquires the open circuit breaker failed at once.
    pub breaker_rejections: u64,
    /// The pool's part in a read/write router, when it sits in one (`None` from the engine
    /// itself: a router's pools fill it in, as `pool-postgres`'s cluster does).
    pub routing: Option<Routing>,
    /// How many times the stats were reset; never reset itself. Two snapshots with different
    /// counts have a reset between them, so their counters cannot be subtracted (a counter
    /// that went down shows a reset only when it did not climb past its old value since).
    pub resets: u64,
}

/// A pool's part in a router that spreads reads over replicas.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Routing {
    /// The primary: takes writes, and the reads no replica could take.
    Primary {
        /// Reads sent here because no replica was usable (banned, lagging, or behind a causal
        /// token). A cluster without replicas counts none: its reads have nowhere else to go.
        fallbacks: u64,
    },
    /// A read replica.
    Replica {
        /// How many times it was banned (failed connect or check).
        bans: u64,
        /// Whether it is banned now.
        banned: bool,
        /// Whether it is skipped now for replication lag.
        lagging: bool,
        /// Its replay lag at the last probe.
        lag: Option<Duration>,
    },
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{HISTOGRAM_BOUNDS, HistogramSnapshot};

    #[test]
    fn quantile_interpolates_inside_the_bucket_and_caps_at_the_max() {
        let mut counts = vec![0; HISTOGRAM_BOUNDS.len() + 1];
        counts[3] = 10; // 50 µs < v ≤ 100 µs
        let h = HistogramSnapshot { counts, sum: Duration::ZERO, max: Duration::from_micros(80) };
        let near =
            |d: Duration, us: u64| d.abs_diff(Duration::from_micros(us)) <= Duration::from_nanos(1);
        assert!(
            near(h.quantile(0.5), 65),
            "halfway from 50 µs to the 80 µs max: {:?}",
            h.quantile(0.5)
        );
        assert!(near(h.quantile(1.0), 80), "{:?}", h.quantile(1.0));
        assert_eq!(HistogramSnapshot::default().quantile(0.99), Duration::ZERO);
    }

    #[test]
    fn quantile_of_a_hand_built_snapshot_with_extra_buckets_does_not_panic() {
        let mut counts = vec![0; HISTOGRAM_BOUNDS.len() + 3];
        counts[HISTOGRAM_BOUNDS.len() + 2] = 1;
        let h = HistogramSnapshot { counts, sum: Duration::ZERO, max: Duration::from_secs(90) };
        assert_eq!(h.quantile(0.5), Duration::from_secs(60), "counted as overflow, above 60 s");
    }

    #[test]
    fn the_mean_of_more_than_four_billion_values_is_right() {
        // Ten billion waits of 1 ms: five days of a busy pool.
        let mut counts = vec![0; HISTOGRAM_BOUNDS.len() + 1];
        counts[0] = 10_000_000_000;
        let sum = Duration::from_secs(10_000_000);
        let h = HistogramSnapshot { counts, sum, max: Duration::from_millis(1) };
        assert_eq!(h.mean(), Duration::from_millis(1));
    }
}
