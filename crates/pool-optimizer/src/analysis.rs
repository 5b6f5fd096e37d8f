//! [`analyze`]: the pure function from windows of stats, settings and connection budgets to
//! sizing [`Recommendation`]s. No IO, no clock: the same inputs give the same answer.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::window::{BusyBasis, Window};

/// What the analysis aims for and how sure it must be before it speaks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Settings {
    /// Target probability that a checkout waits at all; sets β of the square-root headroom
    /// \[0.05\].
    pub wait_probability: f64,
    /// A 90th-percentile wait above this is "high" \[10 ms\].
    pub wait_target: Duration,
    /// Hold time up by this factor from the older to the newer half of the recent windows,
    /// while callers wait, means the database is saturating \[1.3\]: whether load rose with
    /// it or stayed flat (a saturated database serves no more however many connections ask).
    pub hold_rise: f64,
    /// An idle share above this in every recent window, with more connections than the load
    /// needs and traffic in every window, suggests shrinking \[0.25\].
    pub idle_share: f64,
    /// Overflow in use in at least this share of the recent windows means `pool_size` is too
    /// small \[0.5\].
    pub overflow_share: f64,
    /// How many of the latest windows the analysis reads \[6\].
    pub recent_windows: usize,
    /// No recommendation from fewer windows than this \[3\].
    pub min_windows: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            wait_probability: 0.05,
            wait_target: Duration::from_millis(10),
            hold_rise: 1.3,
            idle_share: 0.25,
            overflow_share: 0.5,
            recent_windows: 6,
            min_windows: 3,
        }
    }
}

/// Connections a database allows, shared by the pools on it (a primary and each replica have
/// their own). No proposal makes the pools' connections add up to more than
/// `max_connections − reserved`, each pool counted at its `pool_size + max_overflow` or at the
/// connections it has open, whichever is larger (a shrunk pool closes its connections in use
/// only as they come back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    /// What the budget is for, as recommendations name it (`primary`, `replica-1`...).
    pub name: String,
    /// The server's `max_connections`.
    pub max_connections: usize,
    /// Connections kept for others: superusers, other services, other instances.
    pub reserved: usize,
    /// Ids of the pools drawing on it (`postgresql:main`, as the sampler keys them).
    pub pools: Vec<String>,
}

impl Budget {
    /// Connections the pools may use in all.
    pub fn available(&self) -> usize {
        self.max_connections.saturating_sub(self.reserved)
    }
}

/// How urgent a recommendation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Act now: callers time out, connects fail, the database saturates or the budget is hit.
    High,
    /// Act soon: waits or overflow cost latency.
    Medium,
    /// Worth doing: connections sit idle.
    Low,
}

impl Severity {
    /// `high`, `medium` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// A pool's size settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sizes {
    /// Connections kept.
    pub pool_size: usize,
    /// Extra connections under load.
    pub max_overflow: usize,
}

/// The numbers a recommendation was decided from.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Evidence {
    /// Windows read.
    pub windows: usize,
    /// Checkouts per second, mean over the windows.
    pub checkouts_per_sec: f64,
    /// Mean hold time over the holds that ended in the windows (one long hold weighs in whole).
    pub hold_mean: Duration,
    /// 90th percentile hold time (largest of the windows).
    pub hold_p90: Duration,
    /// 90th percentile wait (largest of the windows).
    pub wait_p90: Duration,
    /// 99th percentile wait (largest of the windows).
    pub wait_p99: Duration,
    /// Acquires that timed out, in all.
    pub timeouts: u64,
    /// Connect errors, in all.
    pub connect_errors: u64,
    /// Connections busy on average in the busiest window, read as `busy_basis` says.
    pub busy: f64,
    /// What `busy` was read from: the busiest window's connection-time in use over its length,
    /// or Little's law for a window without it.
    pub busy_basis: BusyBasis,
    /// Connections the load needs: `busy + β·√busy`, rounded up.
    pub needed: usize,
    /// Smallest idle share of the windows (0 to 1).
    pub idle_share: f64,
    /// Share of the windows that ended with overflow connections open (0 to 1).
    pub overflow_share: f64,
    /// Hold time per checkout ([`Window::hold`]) of the newer half of the windows over the
    /// older half.
    pub hold_trend: f64,
    /// Checkouts per second of the newer half over the older half.
    pub load_trend: f64,
}

/// One recommendation for one pool: how urgent, what is wrong, what to change, and why.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Recommendation {
    /// The pool's name.
    pub pool: String,
    /// How urgent it is.
    pub severity: Severity,
    /// What is wrong ("High wait times").
    pub issue: String,
    /// What to do ("Increase pool_size to 15").
    pub suggestion: String,
    /// The pool's sizes now.
    pub current: Sizes,
    /// The sizes proposed, when the recommendation is a resize.
    pub proposed: Option<Sizes>,
    /// The numbers behind it.
    pub evidence: Evidence,
}

impl fmt::Display for Recommendation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] {}: {}: {} (pool_size {} + {}; {})",
            self.severity.as_str(),
            self.pool,
            self.issue,
            self.suggestion,
            self.current.pool_size,
            self.current.max_overflow,
            self.evidence,
        )
    }
}

/// `busy 14.0 connections on average in the busiest window (140.0 connection-seconds in use in
/// 10.0 s), needed 21; over 6 windows: 260 checkouts/s, mean hold 50.0 ms, wait p90 40.0 ms,
/// ...`: every number a decision rests on, in one line for logs. The busy figure is shown with
/// the operands it was computed from; the rates and holds after it are the windows' averages.
impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "busy {:.1} connections on average in the busiest window ({}), needed {}; \
             over {} windows: {:.0} checkouts/s, mean hold {:.1} ms, wait p90 {:.1} ms, \
             timeouts {}, idle {:.0}%, overflow in {:.0}% of windows, hold ×{:.2}, load ×{:.2}, connect errors {}",
            self.busy,
            self.busy_basis,
            self.needed,
            self.windows,
            self.checkouts_per_sec,
            self.hold_mean.as_secs_f64() * 1e3,
            self.wait_p90.as_secs_f64() * 1e3,
            self.timeouts,
            self.idle_share * 100.0,
            self.overflow_share * 100.0,
            self.hold_trend,
            self.load_trend,
            self.connect_errors,
        )
    }
}

/// The standard normal density.
fn phi(x: f64) -> f64 {
    (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// The standard normal distribution function (Abramowitz–Stegun 7.1.26, error < 1.5e-7).
fn big_phi(x: f64) -> f64 {
    let z = x.abs() / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    if x >= 0.0 { 0.5 * (1.0 + erf) } else { 0.5 * (1.0 - erf) }
}

/// β of square-root staffing for a target probability of waiting (Halfin–Whitt:
/// `P(wait) ≈ 1 / (1 + β·Φ(β)/φ(β))`), found by bisection; 0.05 gives β ≈ 1.73.
pub fn beta_for(wait_probability: f64) -> f64 {
    let p = wait_probability.clamp(1e-6, 0.999);
    let wait = |b: f64| 1.0 / (1.0 + b * big_phi(b) / phi(b));
    let (mut lo, mut hi) = (0.0, 8.0);
    for _ in 0..60 {
        let mid = (lo + hi) / 2.0;
        if wait(mid) > p { lo = mid } else { hi = mid }
    }
    (lo + hi) / 2.0
}

/// Connections needed for `busy` connections busy on average: `busy + β·√busy`, rounded up,
/// at least 1.
pub fn needed(busy: f64, beta: f64) -> usize {
    let busy = busy.max(0.0);
    ((busy + beta * busy.sqrt()).ceil() as usize).max(1)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn evidence(windows: &[Window], beta: f64) -> Evidence {
    let rate = mean(windows.iter().map(Window::rate));
    let checkouts: u64 = windows.iter().map(|w| w.checkouts).sum();
    let hold_mean = if checkouts == 0 {
        Duration::ZERO
    } else {
        // Windows built by hand can hold anything: a mean past `Duration::MAX` saturates.
        Duration::try_from_secs_f64(
            windows.iter().map(|w| w.hold_mean.as_secs_f64() * w.checkouts as f64).sum::<f64>()
                / checkouts as f64,
        )
        .unwrap_or(Duration::MAX)
    };
    // Size for the busiest window, not the average: a pool must carry its peaks, and a shrink
    // must never go below what any recent window needed. A window's busy connections count
    // only the part of each hold inside it (where the window has its in-use time): a hold of
    // 30 minutes adds at most one connection, not its whole length spread over the checkouts.
    let busy_basis = windows
        .iter()
        .map(Window::busy_basis)
        .fold(None, |max: Option<BusyBasis>, b| match max {
            Some(m) if m.busy() >= b.busy() => Some(m),
            _ => Some(b),
        })
        .unwrap_or_default();
    let busy = busy_basis.busy();
    let (older, newer) = windows.split_at(windows.len() / 2);
    let ratio = |f: &dyn Fn(&Window) -> f64| {
        let (a, b) = (mean(older.iter().map(f)), mean(newer.iter().map(f)));
        if a > 0.0 { b / a } else { 1.0 }
    };
    Evidence {
        windows: windows.len(),
        checkouts_per_sec: rate,
        hold_mean,
        hold_p90: windows.iter().map(|w| w.hold_p90).max().unwrap_or_default(),
        wait_p90: windows.iter().map(|w| w.wait_p90).max().unwrap_or_default(),
        wait_p99: windows.iter().map(|w| w.wait_p99).max().unwrap_or_default(),
        timeouts: windows.iter().map(|w| w.timeouts).sum(),
        connect_errors: windows.iter().map(|w| w.connect_errors).sum(),
        busy,
        busy_basis,
        needed: needed(busy, beta),
        idle_share: windows.iter().map(Window::idle_share).fold(1.0, f64::min),
        overflow_share: windows.iter().filter(|w| w.overflow > 0).count() as f64
            / windows.len().max(1) as f64,
        hold_trend: ratio(&|w| w.hold().as_secs_f64()),
        load_trend: ratio(&|w| w.rate()),
    }
}

/// Reads every pool's recent windows and says what to change, most urgent first within each
/// pool, pools in name order.
///
/// Rules, in order (the first that applies decides the pool's size proposal):
/// 1. connect errors in the recent windows: alert (high) and propose nothing: tuning freezes;
/// 2. waits or timeouts in the newest window while no connection came back in it and none was
///    handed out ([`Window::releases`] and [`Window::checkouts`] are 0): the connections are
///    held by stuck work (lock waits, long transactions, a hung server), which more connections
///    would not fix: alert (high) and propose nothing: tuning freezes until they come back;
/// 3. hold time rising (`hold_trend ≥ hold_rise`) while waits are high: the database is
///    saturating: say so (high) and do not grow. Load need not rise with it: a pool that grew
///    onto a saturated database sees slower queries at the same throughput;
/// 4. high waits (p90 above `wait_target`) or timeouts, in the newest window too, with flat
///    hold time: grow `pool_size` to what the load needs (at least one more);
/// 5. overflow open in most windows: `pool_size` is too small: grow it by the overflow used;
/// 6. idle share above `idle_share` in every window, and checkouts in every window: shrink to
///    what the load needs, never below it. A pool with no traffic in a recent window keeps its
///    size: an idle night says nothing about what the morning needs.
///
/// Every grow is capped by the budgets of the pool; hitting one adds a high-severity
/// recommendation that names the budget. The other pools of a budget count at the largest of
/// their current size, the size proposed for them in this call and the connections their
/// newest window ended with open (a shrink closes connections in use only as they come
/// back), so the proposals of one call fit the budget together and with what the server
/// already has: pools earlier in name order get the room first. A
/// capped grow never goes below the current `pool_size`: when a budget leaves no room to grow,
/// the budget recommendation says the pool cannot grow and no resize is proposed (a budget
/// already spent stops growth; it does not shrink a pool under load). Shrinks are never
/// capped: a shrink stops at what the load needs, whatever the budget.
pub fn analyze(
    windows: &BTreeMap<String, Vec<Window>>,
    settings: &Settings,
    budgets: &[Budget],
) -> Vec<Recommendation> {
    let beta = beta_for(settings.wait_probability);
    let mut out = Vec::new();
    // The pool_size proposed so far in this call, per pool.
    let mut proposed: BTreeMap<&str, usize> = BTreeMap::new();
    for (pool, all) in windows {
        let recent = &all[all.len().saturating_sub(settings.recent_windows)..];
        let Some(latest) = recent.last() else { continue };
        if recent.len() < settings.min_windows {
            continue;
        }
        let e = evidence(recent, beta);
        let current = Sizes { pool_size: latest.pool_size, max_overflow: latest.max_overflow };
        let rec =
            |severity, issue: &str, suggestion: String, proposed: Option<Sizes>| Recommendation {
                pool: pool.clone(),
                severity,
                issue: issue.to_owned(),
                suggestion,
                current,
                proposed,
                evidence: e.clone(),
            };
        if e.connect_errors > 0 {
            out.push(rec(
                Severity::High,
                "Connection errors",
                format!(
                    "Check the database and the network: {} connect errors in the last {} windows; sizing is frozen until they stop",
                    e.connect_errors, e.windows
                ),
                None,
            ));
            continue;
        }
        // Waits count as high only if the newest window still has them: growth stops as soon as
        // a step removed the waits, not windows later when they age out of the evidence.
        let waits_now = latest.wait_p90 > settings.wait_target || latest.timeouts > 0;
        // A stalled database looks like a small pool: nothing is released, so the hold time
        // reads 0 and the timeouts read as waits. No release while callers waited means the
        // connections are stuck, not too few. (A window that handed connections out made
        // progress: long holds served by new connections are the other rules' business.)
        if waits_now && latest.releases == 0 && latest.checkouts == 0 {
            out.push(rec(
                Severity::High,
                "Connections not coming back",
                format!(
                    "Look for stuck work: no connection came back in the last window while callers waited ({} timeouts, wait p90 {:.1} ms), so the connections are held by stuck work (lock waits, long transactions, a hung server) and more connections would not help; sizing is frozen until connections come back",
                    latest.timeouts,
                    latest.wait_p90.as_secs_f64() * 1e3
                ),
                None,
            ));
            continue;
        }
        let waits_high = waits_now && (e.wait_p90 > settings.wait_target || e.timeouts > 0);
        if waits_high && e.hold_trend >= settings.hold_rise {
            out.push(rec(
                Severity::High,
                "Database saturated",
                format!(
                    "Do not add connections: hold time rose {:.1}x (load {:.1}x), so the database, not the pool, is the bottleneck; look for slow queries and lock waits",
                    e.hold_trend, e.load_trend
                ),
                None,
            ));
            continue;
        }
        let size = |pool_size: usize| Some(Sizes { pool_size, max_overflow: current.max_overflow });
        let proposal = if waits_high {
            let to = e.needed.max(current.pool_size + 1);
            let severity = if e.timeouts > 0 { Severity::High } else { Severity::Medium };
            Some((severity, "High wait times", to))
        } else if e.overflow_share >= settings.overflow_share {
            let overflow = mean(recent.iter().map(|w| w.overflow as f64)).ceil() as usize;
            let to = e.needed.max(current.pool_size + overflow.max(1));
            Some((Severity::Medium, "Overflow used most of the time", to))
        } else if e.idle_share >= settings.idle_share
            && e.needed < current.pool_size
            // Without traffic `needed` is 1 by default, not by evidence: keep the size.
            && recent.iter().all(|w| w.checkouts > 0)
        {
            Some((Severity::Low, "Too many idle connections", e.needed))
        } else {
            None
        };
        let Some((severity, issue, mut to)) = proposal else { continue };
        let grow = to > current.pool_size;
        let mut capped = None;
        for b in budgets.iter().filter(|b| grow && b.pools.contains(pool)) {
            let others: usize = b
                .pools
                .iter()
                .filter(|p| *p != pool)
                .filter_map(|p| {
                    let w = windows.get(p).and_then(|w| w.last())?;
                    let size =
                        proposed.get(p.as_str()).map_or(w.pool_size, |&n| n.max(w.pool_size));
                    // A shrink closes connections in use only as they come back: until then
                    // they are the server's as much as the configured ones.
                    Some((size + w.max_overflow).max(w.open))
                })
                .sum();
            let cap = b.available().saturating_sub(others + current.max_overflow).max(1);
            if to > cap {
                to = cap;
                capped = Some((b, others));
            }
        }
        // A budget stops a grow; it never turns one into a shrink of a pool under load.
        if grow {
            to = to.max(current.pool_size);
        }
        if let Some((b, others)) = capped {
            let limit = format!(
                "{} allows {} connections ({} max_connections, {} reserved) and its other pools have or may open {others}",
                b.name,
                b.available(),
                b.max_connections,
                b.reserved
            );
            let suggestion = if grow && to == current.pool_size {
                format!(
                    "pool_size cannot grow: {limit}, and this pool's max_overflow takes {}",
                    current.max_overflow
                )
            } else {
                format!("pool_size can grow only to {to}: {limit}")
            };
            out.push(rec(Severity::High, "Connection budget exhausted", suggestion, None));
        }
        if to != current.pool_size {
            proposed.insert(pool, to);
            let verb = if to > current.pool_size { "Increase" } else { "Decrease" };
            out.push(rec(severity, issue, format!("{verb} pool_size to {to}"), size(to)));
        }
    }
    out.sort_by(|a, b| a.pool.cmp(&b.pool).then(a.severity.cmp(&b.severity)));
    out
}

#[cfg(test)]
mod tests;
