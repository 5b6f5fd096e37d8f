//! The engine behind [`ConnectionPool`], one module per responsibility, and what its handles,
//! guards and tasks share: [`Shared`] (one mutex over the [`State`], the
//! settings, the stats, the wake-ups and the clock), a pooled [`Conn`] with its timestamps, and
//! who holds a connection ([`Held`]).
//!
//! - [`handle`]: `ConnectionPool`, the public handle, and the contracts it documents.
//! - [`state`]: the counts under the lock and the arithmetic on them, the in-use integral, and
//!   [`PoolState`], the gauges an error reports.
//! - [`acquire`]: the acquire path: the fast path, the waiter queue and the deadlines, and the
//!   pre-ping on checkout.
//! - [`lifecycle`]: what becomes of a connection: its return (with the background reset),
//!   connect tasks, retirement and close.
//! - [`maintenance`]: the reaper of expired waiters, the maintenance task (idle timeout,
//!   lifetimes, health checks, leak reports) and the check both it and a checkout run.
//! - [`breaker`]: the circuit breaker's state and transitions: open after failures in a row,
//!   fail fast while open, one probe, closed by the first connect that succeeds.
//! - [`panic`](mod@panic): the isolation of a backend's panic to the one operation it broke.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::Notify;

use crate::clock::{Clock, Instant};
use crate::config::PoolConfig;
use crate::manager::Manager;
use crate::observer::Observer;
use crate::stats::Stats;

mod acquire;
mod breaker;
mod handle;
mod lifecycle;
mod maintenance;
mod panic;
mod state;
#[cfg(test)]
mod tests;

pub use self::handle::ConnectionPool;
pub use self::state::PoolState;

use self::state::State;

/// What the pool shares between its handles, guards and tasks.
pub(crate) struct Shared<M: Manager> {
    pub(crate) name: Arc<str>,
    /// `backend:name` (`postgresql:main`), as logs name the pool: a PostgreSQL and a Redis
    /// pool may share a name.
    id: Arc<str>,
    manager: M,
    /// Settings that never change after build; the sizes live in [`State`].
    config: PoolConfig,
    state: Mutex<State<M>>,
    stats: Stats,
    /// The exporter's hook, if one is attached.
    observer: OnceLock<Arc<dyn Observer>>,
    /// Signalled whenever an open connection goes away, for `close().await`.
    drained: Notify,
    /// Signalled whenever a connect succeeds and when the pool closes, for `warmed`.
    warm: Notify,
    /// Signalled when the pool closes: connects waiting out a backoff stop at once.
    closing: Notify,
    /// Wakes the reaper task, which times out waiters (one timer for the whole queue).
    reaper: Arc<Notify>,
    next_id: AtomicU64,
    /// The runtime the pool was built in: it runs the checks an acquire starts, and their
    /// timers, so an acquire polled outside any tokio runtime works too.
    runtime: tokio::runtime::Handle,
    /// The clock the engine reads: the one that ships unless the builder asked for tokio's.
    clock: Clock,
}

impl<M: Manager> Drop for Shared<M> {
    fn drop(&mut self) {
        // The reaper holds only a weak reference: wake it so it sees the pool is gone.
        self.reaper.notify_one();
    }
}

impl<M: Manager> Shared<M> {
    /// Now, on the pool's clock.
    #[inline]
    fn now(&self) -> Instant {
        self.clock.now()
    }

    fn lock(&self) -> MutexGuard<'_, State<M>> {
        // The lock is never held across a panic point of ours; recover from a poisoned lock
        // rather than propagate a panic from a user's code into every caller.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The runtime pool tasks (connects, resets, closes, checks) run on: the pool's own, which
    /// has the timers they need (its reaper runs there) and lives as long as the pool is used,
    /// whichever runtime, executor or plain thread the caller is on.
    fn task_runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }
}

/// A pooled connection with the engine's bookkeeping.
#[derive(Debug)]
pub(crate) struct Conn<C> {
    pub(crate) raw: C,
    pub(crate) id: u64,
    /// When this connection must be retired (`pool_recycle` with jitter).
    expires_at: Option<Instant>,
    /// When a user last returned it (or it was opened): the start of its idle time.
    idle_since: Instant,
    /// When it was last known alive: opened, returned by a user, or checked.
    alive_at: Instant,
}

impl<C> Conn<C> {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Who holds a connection that is neither idle nor connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Held {
    /// A user (through a guard, or a pre-ping on the user's behalf).
    User,
    /// The pool's own check (maintenance, health).
    Pool,
}
