//! The state under the pool's lock and its arithmetic: the counts (idle, in use, held by the
//! pool, connecting, closing), the waiter queue's entries, the leak records, the integral of
//! connections in use over time ([`InUse`]), and [`PoolState`], the gauges callers and errors
//! see.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;

use super::breaker::Breaker;
use super::{Conn, Held};
use crate::clock::Instant;
use crate::error::ConnectError;
use crate::manager::Manager;
use crate::stats::Stats;

/// The pool's gauges at one moment, as errors and [`ConnectionPool::state`](crate::ConnectionPool::state) report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolState {
    /// Connections checked out by users (not those the pool is resetting after their
    /// return, which count in `open` only).
    pub in_use: usize,
    /// Connections idle in the pool.
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
    /// Connects in flight.
    pub connecting: usize,
    /// Connections the pool's own tasks hold: being reset after their return, or checked by
    /// maintenance or a health check.
    pub pool_held: usize,
    /// Connections open or opening: in use, idle, connecting, held by the pool's own tasks, or
    /// closing.
    pub open: usize,
    /// The `pool_size` setting.
    pub pool_size: usize,
    /// The `max_overflow` setting.
    pub max_overflow: usize,
    /// Connect attempts that failed in a row since the last successful one (0 when the last
    /// connect succeeded): a router can skip a pool whose server refuses connections.
    pub connect_failures: u32,
    /// Whether the circuit breaker is open: connects and checks failed `breaker_threshold`
    /// times in a row, and an acquire that finds nothing idle fails at once until a probe
    /// connects.
    pub breaker_open: bool,
}

impl PoolState {
    /// Whether a caller that finds nothing idle would wait on connects that keep failing: the
    /// last connect failed and the pool has room for a connection beyond those it has (connects
    /// in flight are what fills that room, or fails to). A pool whose connections fill its
    /// limit waits on busy connections instead, whatever its last connect did.
    pub fn connects_failing(&self) -> bool {
        let established = self.open.saturating_sub(self.connecting);
        self.connect_failures > 0
            && self.idle == 0
            && established < self.pool_size + self.max_overflow
    }
}

impl fmt::Display for PoolState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in use, {} idle, {} waiting, {} connecting, limit {} + {} overflow{}",
            self.in_use,
            self.idle,
            self.waiting,
            self.connecting,
            self.pool_size,
            self.max_overflow,
            if self.breaker_open { ", breaker open" } else { "" }
        )
    }
}

pub(super) struct Waiter<C> {
    pub(super) id: u64,
    /// When the reaper gives up on this waiter.
    pub(super) deadline: Instant,
    /// Receives a connection already counted in use; dropped unsent when the pool closes or
    /// the waiter's deadline passes.
    pub(super) tx: oneshot::Sender<Conn<C>>,
}

#[derive(Debug)]
pub(super) struct LeakEntry {
    pub(super) acquired_at: Instant,
    pub(super) location: &'static Location<'static>,
    pub(super) reported: bool,
}

pub(super) struct State<M: Manager> {
    pub(super) pool_size: usize,
    pub(super) max_overflow: usize,
    pub(super) min_idle: Option<usize>,
    pub(super) idle: VecDeque<Conn<M::Connection>>,
    pub(super) in_use: InUse,
    /// Held by the pool's own checks (maintenance, health).
    pub(super) busy: usize,
    pub(super) connecting: usize,
    /// Retired connections whose close is still running: they still count against the limit.
    pub(super) closing: usize,
    pub(super) waiters: VecDeque<Waiter<M::Connection>>,
    pub(super) next_waiter: u64,
    /// When the reaper wakes next; `None` while it sleeps until notified.
    pub(super) reaper_at: Option<Instant>,
    pub(super) closed: bool,
    /// Connections still to retire on return after a shrink.
    pub(super) shrink_debt: usize,
    pub(super) connect_failures: u32,
    pub(super) last_error: Option<Arc<ConnectError<M::Error>>>,
    /// Checked-out connections, when leak detection is on.
    pub(super) leaks: HashMap<u64, LeakEntry>,
    /// Callers waiting in `warmed`: while any wait, failed warm-up connects are retried.
    pub(super) warming: usize,
    /// The circuit breaker: failures in a row, open or closed, its probe.
    pub(super) breaker: Breaker,
}

/// Connections checked out by users, and the time they spent checked out: the integral of the
/// count over time (two connections out for a second make two connection-seconds), which
/// [`PoolStats::in_use_time`](crate::PoolStats::in_use_time) reports.
///
/// The count changes only through [`up`](Self::up) and [`down`](Self::down), which take the
/// time of the change, so no change escapes the integral. On the acquire, release, detach and
/// connect paths that time is one the engine reads anyway; only the failure paths of a check or
/// a reset read the clock for it. Keeping the integral costs a few integer operations under the
/// lock the change is made under, and no clock read, atomic or lock of its own.
#[derive(Debug)]
pub(super) struct InUse {
    pub(super) count: usize,
    /// When `count` last changed, or the stats were reset.
    since: Instant,
    /// Connection-nanoseconds in use from the last stats reset to `since`.
    nanos: u128,
}

impl InUse {
    pub(super) fn new(now: Instant) -> Self {
        InUse { count: 0, since: now, nanos: 0 }
    }

    /// Adds the time since the last change at the current count. Callers read the time before
    /// taking the lock, so `now` may be a little older than the last change: this change then
    /// counts as made with that one, and no time is counted twice or subtracted.
    #[inline]
    fn advance(&mut self, now: Instant) {
        if now > self.since {
            self.nanos += self.count as u128 * now.duration_since(self.since).as_nanos();
            self.since = now;
        }
    }

    #[inline]
    pub(super) fn up(&mut self, now: Instant) {
        self.advance(now);
        self.count += 1;
    }

    #[inline]
    pub(super) fn down(&mut self, now: Instant) {
        self.advance(now);
        self.count -= 1;
    }

    /// Connection-time in use from the last stats reset to `now`, the connections out now
    /// counted up to it.
    pub(super) fn time(&self, now: Instant) -> Duration {
        let out = self.count as u128 * now.duration_since(self.since).as_nanos();
        let nanos = self.nanos + out;
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }

    /// Starts the integral again from zero at `now` (a stats reset): connections out now count
    /// from then on.
    pub(super) fn reset(&mut self, now: Instant) {
        self.nanos = 0;
        self.since = self.since.max(now);
    }
}

impl<M: Manager> State<M> {
    pub(super) fn open(&self) -> usize {
        self.idle.len() + self.in_use.count + self.busy + self.connecting + self.closing
    }

    /// Open connections that are staying: all but those being closed.
    pub(super) fn kept(&self) -> usize {
        self.open() - self.closing
    }

    pub(super) fn max_size(&self) -> usize {
        self.pool_size + self.max_overflow
    }

    pub(super) fn min_idle(&self) -> usize {
        self.min_idle.unwrap_or(self.pool_size).min(self.pool_size)
    }

    /// Connections open and usable now: idle, in use, or held by the pool's own checks (not
    /// those still connecting or being closed).
    pub(super) fn established(&self) -> usize {
        self.idle.len() + self.in_use.count + self.busy
    }

    /// Whether a failed connect should try again for `warmed`: someone waits there and the
    /// pool is short of `min_idle` without this connect (which `kept` counts).
    pub(super) fn warm_wanted(&self) -> bool {
        self.warming > 0 && self.kept() <= self.min_idle()
    }

    pub(super) fn state(&self) -> PoolState {
        PoolState {
            in_use: self.in_use.count,
            idle: self.idle.len(),
            waiting: self.waiters.len(),
            connecting: self.connecting,
            pool_held: self.busy,
            open: self.open(),
            pool_size: self.pool_size,
            max_overflow: self.max_overflow,
            connect_failures: self.connect_failures,
            breaker_open: self.breaker.is_open(),
        }
    }

    /// The idle connection the next caller gets (most recently returned with `lifo`), unless
    /// callers wait: they come first (no barging).
    pub(super) fn take_idle(&mut self, lifo: bool) -> Option<Conn<M::Connection>> {
        if !self.waiters.is_empty() {
            None
        } else if lifo {
            self.idle.pop_back()
        } else {
            self.idle.pop_front()
        }
    }

    pub(super) fn unhold(&mut self, held: Held, now: Instant) {
        match held {
            Held::User => self.in_use.down(now),
            Held::Pool => self.busy -= 1,
        }
    }

    pub(super) fn note_in_use(&self, stats: &Stats) {
        if self.in_use.count > stats.peak_in_use.load(Relaxed) {
            stats.peak_in_use.store(self.in_use.count, Relaxed);
        }
    }

    /// Gives `conn` (already counted in use) to the oldest live waiter, or returns it.
    pub(super) fn hand_off(
        &mut self,
        mut conn: Conn<M::Connection>,
    ) -> Option<Conn<M::Connection>> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.tx.send(conn) {
                Ok(()) => return None,
                Err(back) => conn = back,
            }
        }
        Some(conn)
    }

    /// How many connects to start now, and counts them as connecting: enough for the waiters
    /// not already covered by connects in flight or by connections the pool's own tasks hold
    /// (a reset on return, a check), which come back or, failing, start a connect then; and to
    /// keep `min_idle` warm (unless connects are failing, `warm` is false and nobody waits in
    /// `warmed`), within the size limit and `max_connecting`.
    /// While the breaker is open, only its probe, when none runs.
    pub(super) fn connects_to_start(&mut self, max_connecting: usize, warm: bool) -> usize {
        if self.closed {
            return 0;
        }
        if self.breaker.is_open() {
            let room = self.open() < self.max_size() && self.connecting < max_connecting;
            if room && self.breaker.start_probe() {
                self.connecting += 1;
                return 1;
            }
            return 0;
        }
        let open = self.open();
        let demand = self.waiters.len().saturating_sub(self.connecting + self.busy);
        let warm_deficit = if warm || self.connect_failures == 0 || self.warming > 0 {
            self.min_idle().saturating_sub(open)
        } else {
            0
        };
        let n = demand
            .max(warm_deficit)
            .min(self.max_size().saturating_sub(open))
            .min(max_connecting.saturating_sub(self.connecting));
        self.connecting += n;
        n
    }
}
