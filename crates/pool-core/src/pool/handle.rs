//! [`ConnectionPool`]: the handle callers hold, its start, and the contracts it documents
//! (acquire, warm-up, resize, close, stats, health); the machinery lives in the sibling
//! modules.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Acquire};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::Notify;

use super::acquire::{AcquireFail, Wait};
use super::breaker::Breaker;
use super::maintenance::{maintain, reap};
use super::panic::caught;
use super::state::{InUse, PoolState, State};
use super::{Held, Shared};
use crate::clock::Clock;
use crate::config::{Builder, PoolConfig};
use crate::error::{
    AcquireError, BuildError, CloseError, ConnectError, ObserveError, ResizeError, TimeoutError,
    TryAcquireError, UnavailableError, WarmError,
};
use crate::guard::PooledConnection;
use crate::manager::Manager;
use crate::observer::Observer;
use crate::stats::{CloseReason, Gauges, PoolStats, Stats};

/// A pool of connections opened by a [`Manager`].
///
/// Cheap to clone: clones share one pool. See [`acquire`](Self::acquire) for the contracts
/// callers rely on.
pub struct ConnectionPool<M: Manager> {
    shared: Arc<Shared<M>>,
}

impl<M: Manager> Clone for ConnectionPool<M> {
    fn clone(&self) -> Self {
        ConnectionPool { shared: Arc::clone(&self.shared) }
    }
}

impl<M: Manager> fmt::Debug for ConnectionPool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionPool")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl<M: Manager> ConnectionPool<M> {
    /// Starts building a pool over `manager`.
    pub fn builder(manager: M) -> Builder<M> {
        Builder::new(manager)
    }

    pub(crate) fn start(builder: Builder<M>, handle: &tokio::runtime::Handle) -> Self {
        #[cfg(feature = "testing")]
        let clock = if builder.tokio_clock { Clock::tokio() } else { Clock::Tsc };
        #[cfg(not(feature = "testing"))]
        let clock = Clock::Tsc;
        let Builder { manager, name, config, .. } = builder;
        let state = State {
            pool_size: config.pool_size,
            max_overflow: config.max_overflow,
            min_idle: config.min_idle,
            idle: VecDeque::with_capacity(config.max_size().min(1024)),
            in_use: InUse::new(clock.now()),
            busy: 0,
            connecting: 0,
            closing: 0,
            waiters: VecDeque::new(),
            next_waiter: 0,
            reaper_at: None,
            closed: false,
            shrink_debt: 0,
            connect_failures: 0,
            last_error: None,
            leaks: HashMap::new(),
            warming: 0,
            breaker: Breaker::default(),
        };
        let shared = Arc::new(Shared {
            id: format!("{}:{name}", M::BACKEND).into(),
            name: name.into(),
            manager,
            config,
            state: Mutex::new(state),
            stats: Stats::default(),
            observer: OnceLock::new(),
            drained: Notify::new(),
            warm: Notify::new(),
            closing: Notify::new(),
            reaper: Arc::new(Notify::new()),
            next_id: AtomicU64::new(1),
            runtime: handle.clone(),
            clock,
        });
        handle.spawn(reap(Arc::downgrade(&shared), Arc::clone(&shared.reaper)));
        let n = shared.lock().connects_to_start(shared.config.max_connecting, true);
        shared.spawn_connects_on(handle, n);
        if let Some(period) = shared.maintenance_period() {
            handle.spawn(maintain(Arc::downgrade(&shared), period));
        }
        ConnectionPool { shared }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The pool's id, `backend:name` (`postgresql:main`): the name its log lines carry, which
    /// tells a PostgreSQL pool and a Redis pool of the same name apart.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The manager this pool opens connections with.
    pub fn manager(&self) -> &M {
        &self.shared.manager
    }

    /// Checks a connection out, waiting up to `pool_timeout`.
    ///
    /// Served from the idle list when a connection is there (most recently returned first with
    /// `pool_use_lifo`); a connection idle longer than `pre_ping_bypass` is checked first and
    /// replaced if the check fails. Otherwise the caller queues and the pool opens connections
    /// for the queue in background tasks, up to `pool_size + max_overflow`.
    ///
    /// # Fairness
    ///
    /// Waiters are served first come, first served. A returned or newly opened connection goes
    /// straight to the oldest waiter; a caller that arrives while others wait queues behind
    /// them, even if a connection is being returned at that moment (no barging).
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future at any point loses nothing: a queued caller leaves the
    /// queue, a connection handed to it in the meantime goes to the next waiter or the idle
    /// list, and connects and checks run as their own tasks whose result goes to the next
    /// waiter or the idle list.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`] after `pool_timeout` in all (the wait, the checks and the
    /// connects it waited for), carrying how long it waited, the pool's state at that moment
    /// and the last connect error; [`AcquireError::Unavailable`] at once, without waiting,
    /// while the circuit breaker is open and nothing is idle, or as soon as it opens for a
    /// caller already waiting (see [`PoolConfig::breaker_threshold`]);
    /// [`AcquireError::Closed`] once the pool is closed.
    #[track_caller]
    pub fn acquire(
        &self,
    ) -> impl Future<Output = Result<PooledConnection<M>, AcquireError<M::Error>>> + Send + '_ {
        self.acquire_timeout(self.shared.config.pool_timeout)
    }

    /// [`acquire`](Self::acquire) with a timeout other than `pool_timeout`.
    #[track_caller]
    pub fn acquire_timeout(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<PooledConnection<M>, AcquireError<M::Error>>> + Send + '_ {
        self.acquire_for_caller(timeout, Location::caller())
    }

    /// [`acquire_timeout`](Self::acquire_timeout) on behalf of the caller at `location`, the line
    /// leak reports then name: for a wrapper that acquires inside its own `async` code (after
    /// routing, say), where `#[track_caller]` cannot see its caller.
    ///
    /// [`acquire`](Self::acquire), [`acquire_timeout`](Self::acquire_timeout) and
    /// [`try_acquire`](Self::try_acquire) record the line that called them; leak detection
    /// (`leak_detection_threshold`) names that line as `acquired_at` in its warnings. A wrapper
    /// marked `#[track_caller]` that takes [`Location::caller`] before its `async` block and
    /// passes it here makes those warnings name its caller's line instead of its own. Fairness,
    /// cancel safety and errors are those of [`acquire`](Self::acquire).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::panic::Location;
    /// use std::time::Duration;
    ///
    /// use pool_core::testing::{TestError, TestManager};
    /// use pool_core::{AcquireError, ConnectionPool, PooledConnection};
    ///
    /// type Conn = PooledConnection<TestManager>;
    ///
    /// struct Db {
    ///     pool: ConnectionPool<TestManager>,
    /// }
    ///
    /// impl Db {
    ///     /// Leak warnings name the line that called `connection`, not a line in here.
    ///     #[track_caller]
    ///     fn connection(&self) -> impl Future<Output = Result<Conn, AcquireError<TestError>>> + '_ {
    ///         let location = Location::caller();
    ///         async move {
    ///             // ... whatever the wrapper does before it acquires ...
    ///             self.pool.acquire_for_caller(Duration::from_secs(1), location).await
    ///         }
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let db = Db { pool: ConnectionPool::builder(TestManager::new()).build()? };
    /// let conn = db.connection().await?;
    /// # drop(conn); Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire), with `timeout` in place of `pool_timeout`.
    pub async fn acquire_for_caller(
        &self,
        timeout: Duration,
        location: &'static Location<'static>,
    ) -> Result<PooledConnection<M>, AcquireError<M::Error>> {
        self.shared.acquire(Wait::Upto(timeout), location).await.map_err(|fail| match fail {
            AcquireFail::Closed | AcquireFail::NoneIdle(_) => {
                AcquireError::Closed { pool: self.shared.name.clone() }
            }
            AcquireFail::Timeout { waited, state, last_error } => {
                AcquireError::Timeout(TimeoutError {
                    pool: self.shared.name.clone(),
                    waited,
                    state,
                    last_error,
                })
            }
            AcquireFail::Unavailable(u) => AcquireError::Unavailable(UnavailableError {
                pool: self.shared.name.clone(),
                failures: u.failures,
                open_for: u.open_for,
                next_probe_in: u.next_probe_in,
                last_error: u.last_error,
            }),
        })
    }

    /// Checks out an idle connection without queueing: never waits for a connection to be
    /// returned or opened, and fails at once when others are already waiting (fairness). It
    /// may still run the pre-ping check on the idle connection it takes.
    ///
    /// # Errors
    ///
    /// [`TryAcquireError::NoneIdle`] when no idle connection is ready,
    /// [`TryAcquireError::Closed`] once the pool is closed.
    #[track_caller]
    pub fn try_acquire(
        &self,
    ) -> impl Future<Output = Result<PooledConnection<M>, TryAcquireError>> + Send + '_ {
        let location = Location::caller();
        async move {
            self.shared.acquire(Wait::Never, location).await.map_err(|fail| match fail {
                AcquireFail::NoneIdle(state) => {
                    TryAcquireError::NoneIdle { pool: self.shared.name.clone(), state }
                }
                _ => TryAcquireError::Closed { pool: self.shared.name.clone() },
            })
        }
    }

    /// Waits until the pool holds its `min_idle` connections, for at most `timeout`: "start and
    /// wait until warm".
    ///
    /// A pool opens its `min_idle` connections (`pool_size` unless set) from the moment it is
    /// built, in parallel (up to `max_connecting` at once) and in the background: `build`
    /// never waits for them. Call this after `build` to hold start-up until they are open.
    /// The pool counts as warm once `min_idle` connections are open at the same moment, idle or
    /// in use (connects in flight do not count). It returns at once when `min_idle` is 0 or the
    /// connections are open already.
    ///
    /// While a caller waits here, a warm-up connect that fails is retried with backoff, as for
    /// a caller of [`acquire`](Self::acquire), rather than left to the maintenance task's next
    /// round; a connect that succeeds wakes the caller (it does not poll).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses nothing: the warm-up goes on in the background, and failed
    /// connects stop being retried for it.
    ///
    /// # Errors
    ///
    /// [`WarmError::Timeout`] when fewer than `min_idle` connections were open after `timeout`,
    /// naming the pool, how many were open and wanted, and the last connect error;
    /// [`WarmError::Closed`] when the pool is or gets closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use pool_core::{ConnectionPool, testing::TestManager};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = ConnectionPool::builder(TestManager::new()).pool_size(4).build()?;
    /// pool.warmed(Duration::from_secs(10)).await?;
    /// assert_eq!(pool.state().idle, 4);
    /// # Ok(()) }
    /// ```
    pub async fn warmed(&self, timeout: Duration) -> Result<(), WarmError<M::Error>> {
        /// Counts the caller in `warming` while it waits, however the wait ends.
        struct Warming<'a, M: Manager>(&'a Shared<M>);
        impl<M: Manager> Drop for Warming<'_, M> {
            fn drop(&mut self) {
                self.0.lock().warming -= 1;
            }
        }
        let shared = &self.shared;
        let start = tokio::time::Instant::now();
        let deadline =
            start.checked_add(timeout).unwrap_or_else(|| start + crate::config::MAX_DURATION);
        shared.lock().warming += 1;
        let _warming = Warming(shared);
        loop {
            let notified = shared.warm.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let n = {
                let mut st = shared.lock();
                if st.closed {
                    return Err(WarmError::Closed { pool: shared.name.clone() });
                }
                if st.established() >= st.min_idle() {
                    return Ok(());
                }
                st.connects_to_start(shared.config.max_connecting, true)
            };
            shared.spawn_connects(n);
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let st = shared.lock();
                // A resize may have made the pool warm without a connect to wake us.
                if !st.closed && st.established() >= st.min_idle() {
                    return Ok(());
                }
                return Err(WarmError::Timeout {
                    pool: shared.name.clone(),
                    waited: start.elapsed(),
                    open: st.established(),
                    wanted: st.min_idle(),
                    last_error: st.last_error.clone(),
                });
            }
        }
    }

    /// Waits until every pool of `pools` is warm, as [`warmed`](Self::warmed) does for one:
    /// for a service whose pools (a primary and its replicas, named Redis pools) should all be
    /// open before it takes traffic.
    ///
    /// The pools are waited for together, not one after the other, so each retries its failed
    /// warm-up connects for the whole `timeout`, and the call takes as long as the slowest pool.
    ///
    /// # Cancel safety
    ///
    /// As for [`warmed`](Self::warmed): dropping the future loses nothing.
    ///
    /// # Errors
    ///
    /// The [`WarmError`] of the first pool, in the order given, that was not warm in time or is
    /// closed; the pools after it were still waited for.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use pool_core::{ConnectionPool, testing::TestManager};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let primary = ConnectionPool::builder(TestManager::new()).pool_size(4).build()?;
    /// let replica = ConnectionPool::builder(TestManager::new()).pool_size(2).build()?;
    /// ConnectionPool::warmed_all([&primary, &replica], Duration::from_secs(10)).await?;
    /// assert_eq!((primary.state().idle, replica.state().idle), (4, 2));
    /// # Ok(()) }
    /// ```
    pub async fn warmed_all<'a>(
        pools: impl IntoIterator<Item = &'a ConnectionPool<M>>,
        timeout: Duration,
    ) -> Result<(), WarmError<M::Error>> {
        type Warmed<E> = Result<(), WarmError<E>>;
        type Wait<'a, E> = Pin<Box<dyn Future<Output = Warmed<E>> + Send + 'a>>;
        // Each pool's wait, and its result once it has one.
        type Slot<'a, E> = (Wait<'a, E>, Option<Warmed<E>>);
        let mut waits: Vec<Slot<'a, M::Error>> = pools
            .into_iter()
            .map(|pool| (Box::pin(pool.warmed(timeout)) as Wait<'a, _>, None))
            .collect();
        poll_fn(|cx| {
            let mut pending = false;
            for (wait, done) in &mut waits {
                if done.is_none() {
                    match wait.as_mut().poll(cx) {
                        Poll::Ready(result) => *done = Some(result),
                        Poll::Pending => pending = true,
                    }
                }
            }
            if pending { Poll::Pending } else { Poll::Ready(()) }
        })
        .await;
        waits.into_iter().filter_map(|(_, done)| done).collect()
    }

    /// How long [`acquire`](Self::acquire) waits at most, the pool's `pool_timeout`: for a
    /// wrapper that acquires with [`acquire_for_caller`](Self::acquire_for_caller) and the
    /// pool's own bound. Reads no lock, unlike [`config`](Self::config).
    pub fn pool_timeout(&self) -> Duration {
        self.shared.config.pool_timeout
    }

    /// The current settings, sizes included.
    pub fn config(&self) -> PoolConfig {
        let st = self.shared.lock();
        PoolConfig {
            pool_size: st.pool_size,
            max_overflow: st.max_overflow,
            min_idle: st.min_idle.map(|m| m.min(st.pool_size)),
            ..self.shared.config.clone()
        }
    }

    /// The pool's gauges now.
    pub fn state(&self) -> PoolState {
        self.shared.lock().state()
    }

    /// The error of the last connect attempt, while connects are failing (`None` once one
    /// succeeds).
    pub fn last_connect_error(&self) -> Option<Arc<ConnectError<M::Error>>> {
        self.shared.lock().last_error.clone()
    }

    /// A snapshot of the pool's gauges, counters and histograms (see [`PoolStats`] on how
    /// consistent it is).
    pub fn stats(&self) -> PoolStats {
        let now = self.shared.now();
        let (gauges, config) = {
            let st = self.shared.lock();
            let g = Gauges {
                in_use: st.in_use.count,
                idle: st.idle.len(),
                waiting: st.waiters.len(),
                connecting: st.connecting,
                open: st.open(),
                breaker_open: st.breaker.is_open(),
                in_use_time: st.in_use.time(now),
                // `reset_stats` resets under the lock: this count and `in_use_time` agree.
                resets: self.shared.stats.resets.load(Acquire),
            };
            let config = PoolConfig {
                pool_size: st.pool_size,
                max_overflow: st.max_overflow,
                min_idle: st.min_idle.map(|m| m.min(st.pool_size)),
                ..self.shared.config.clone()
            };
            (g, config)
        };
        self.shared.stats.snapshot(&self.shared.name, M::BACKEND, &config, gauges)
    }

    /// Zeroes counters, histograms and peaks (peaks restart from the current gauges, and
    /// [`PoolStats::in_use_time`] from now); gauges are untouched.
    pub fn reset_stats(&self) {
        let now = self.shared.now();
        let mut st = self.shared.lock();
        st.in_use.reset(now);
        // Under the lock, so that a snapshot reads `in_use_time` and the reset count together
        // (a handful of stores, no wait).
        self.shared.stats.reset(st.in_use.count, st.waiters.len());
    }

    /// Changes the pool's size at runtime.
    ///
    /// Growing takes effect at once: queued callers are served by new connections. Shrinking
    /// retires idle connections beyond the new `pool_size` at once and, as they come back,
    /// connections in use beyond it; a connection is never closed under its user. Connects
    /// still in flight do not push open connections out (they may yet fail): one that
    /// completes beyond the new limit with nobody waiting is closed as it opens. An explicit
    /// `min_idle` above the new `pool_size` is capped at it while the pool is that small (as
    /// [`config`](Self::config) reports); growing back restores it.
    ///
    /// # Errors
    ///
    /// [`ResizeError::Invalid`] for a zero `pool_size` or a total above the limit, naming the
    /// one of the two that changed (the one with the larger value when both did),
    /// [`ResizeError::Closed`] once the pool is closed.
    pub fn resize(&self, pool_size: usize, max_overflow: usize) -> Result<(), ResizeError> {
        let shared = &self.shared;
        let invalid =
            |source: BuildError| ResizeError::Invalid { pool: shared.name.clone(), source };
        let mut check = PoolConfig { pool_size, max_overflow, ..shared.config.clone() };
        check.min_idle = check.min_idle.map(|m| m.min(pool_size));
        // The current size only picks which setting an error names; a resize racing this one
        // can at worst make it name the other.
        let from = {
            let st = shared.lock();
            (st.pool_size, st.max_overflow)
        };
        check.validate_resize(from).map_err(invalid)?;
        let (retired, n) = {
            let mut st = shared.lock();
            if st.closed {
                return Err(ResizeError::Closed { pool: shared.name.clone() });
            }
            let shrinking = pool_size < st.pool_size;
            st.pool_size = pool_size;
            st.max_overflow = max_overflow;
            let mut retired = Vec::new();
            // Established connections count, not connects in flight: a connect may still fail,
            // and one that succeeds past `max_size` is closed as it opens (`opened`). A shrink
            // retires idle connections down to the new `pool_size`; otherwise only those past
            // the new `max_size` go (idle overflow stays until `idle_timeout`).
            let keep = if shrinking { pool_size } else { pool_size + max_overflow };
            while st.established() > keep {
                match st.idle.pop_front() {
                    Some(conn) => retired.push(conn),
                    None => break,
                }
            }
            st.closing += retired.len();
            // Connections in use beyond the new size are retired as they come back after a
            // shrink. A grow adds no debt (overflow in use stays until `idle_timeout`) and
            // keeps only what an earlier shrink still owes at the new size.
            let over = (st.in_use.count + st.busy).saturating_sub(pool_size);
            st.shrink_debt = if shrinking { over } else { st.shrink_debt.min(over) };
            let n = st.connects_to_start(shared.config.max_connecting, true);
            (retired, n)
        };
        tracing::info!(pool = %shared.id, pool_size, max_overflow, "pool resized");
        for conn in retired {
            shared.close_conn(conn, CloseReason::Shrink);
        }
        shared.spawn_connects(n);
        // A smaller `min_idle` may have made the pool warm: `warmed` checks again.
        shared.warm.notify_waiters();
        Ok(())
    }

    /// Closes the pool: new acquires fail with `Closed`, queued callers are woken with
    /// `Closed`, idle connections close now and connections in use close on return. Waits up
    /// to `pool_timeout` for every connection to be closed. Calling it again is harmless.
    ///
    /// # Errors
    ///
    /// [`CloseError`] when connections were still out after `pool_timeout`; they still close
    /// when returned.
    pub async fn close(&self) -> Result<(), CloseError> {
        let shared = &self.shared;
        let (idle, waiters) = {
            let mut st = shared.lock();
            st.closed = true;
            st.closing += st.idle.len();
            (std::mem::take(&mut st.idle), std::mem::take(&mut st.waiters))
        };
        drop(waiters);
        shared.reaper.notify_one();
        shared.warm.notify_waiters();
        shared.closing.notify_waiters();
        for conn in idle {
            shared.close_conn(conn, CloseReason::PoolClosed);
        }
        let start = tokio::time::Instant::now();
        let deadline = start + shared.config.pool_timeout;
        loop {
            let notified = shared.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let open = shared.lock().open();
            if open == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(CloseError {
                    pool: shared.name.clone(),
                    in_use: shared.lock().open(),
                    waited: start.elapsed(),
                });
            }
        }
    }

    /// Attaches an [`Observer`] that sees every acquire, release and connect as it happens.
    ///
    /// # Errors
    ///
    /// [`ObserveError::AlreadyAttached`] when the pool has one already (a pool has at most one;
    /// an observer can fan out to several sinks).
    pub fn set_observer(&self, observer: Arc<dyn Observer>) -> Result<(), ObserveError> {
        self.shared
            .observer
            .set(observer)
            .map_err(|_| ObserveError::AlreadyAttached { pool: self.shared.name.clone() })
    }

    /// Whether this pool reads tokio's clock (`Builder::tokio_clock`, tests only) rather than
    /// the clock that ships: for a test suite to check that the pools it tests run as they ship.
    #[doc(hidden)]
    pub fn reads_tokio_clock(&self) -> bool {
        self.shared.clock.is_tokio()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Checks one connection actively and returns how long the check's round trip took.
    ///
    /// An idle connection, when there is one, is checked in place, the way the maintenance task
    /// checks it: it is not a checkout, so the acquire counter, the wait and hold histograms and
    /// the observer see nothing of it, and a dashboard or load balancer probing the pool does not
    /// show up as load. With no connection idle, it acquires one like any caller (waiting up to
    /// `connect_timeout`, and counted as a checkout). Either way the check is bounded by
    /// `connect_timeout`, and a connection that fails it is closed.
    ///
    /// # Cancel safety
    ///
    /// The check on an idle connection runs in a task of its own, which puts the connection back
    /// (or closes it) even if this future is dropped.
    ///
    /// # Errors
    ///
    /// A description of what failed: the acquire or the check.
    pub async fn check_health(&self) -> Result<Duration, String> {
        let idle = {
            let mut st = self.shared.lock();
            let idle =
                if st.closed { None } else { st.take_idle(self.shared.config.pool_use_lifo) };
            if idle.is_some() {
                st.busy += 1;
            }
            idle
        };
        if let Some(conn) = idle {
            let shared = Arc::clone(&self.shared);
            let task = self.shared.runtime.spawn(async move {
                let start = shared.now();
                let conn = shared.check(conn, Held::Pool).await?;
                let took = shared.now().duration_since(start);
                shared.put_back(conn, Held::Pool);
                Ok(took)
            });
            return task.await.unwrap_or_else(|e| Err(format!("the check's task failed: {e}")));
        }
        let bound = self.shared.config.connect_timeout;
        let mut conn = self.acquire_timeout(bound).await.map_err(|e| e.to_string())?;
        let start = self.shared.now();
        match tokio::time::timeout(
            bound,
            caught(async { self.shared.manager.check(&mut conn).await }),
        )
        .await
        {
            Ok(Ok(Ok(()))) => Ok(self.shared.now().duration_since(start)),
            Ok(Ok(Err(e))) => {
                conn.discard_as(CloseReason::FailedCheck);
                Err(format!("check failed: {e}"))
            }
            Ok(Err(panic)) => {
                conn.discard_as(CloseReason::FailedCheck);
                Err(format!("check {panic}"))
            }
            Err(_) => {
                conn.discard_as(CloseReason::FailedCheck);
                Err(format!("check timed out after {bound:?}"))
            }
        }
    }
}
