//! [`ConnectionPool`]: the typed engine — acquire, release, connect tasks, maintenance, resize
//! and close — and [`PoolState`], the gauges an error reports.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Acquire, Relaxed},
};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::clock::{self, Clock, Instant};

use crate::config::{Builder, PoolConfig};
use crate::error::{
    AcquireError, BuildError, CloseError, ConnectError, ObserveError, ResizeError, TimeoutError,
    TryAcquireError, WarmError,
};
use crate::guard::PooledConnection;
use crate::manager::Manager;
use crate::observer::Observer;
use crate::stats::{CloseReason, Gauges, PoolStats, Stats};

#[cfg(test)]
mod tests;

/// A pool of connections opened by a [`Manager`].
///
/// Cheap to clone: clones share one pool. See [`acquire`](Self::acquire) for the contracts
/// callers rely on.
pub struct ConnectionPool<M: Manager> {
    pub(crate) shared: Arc<Shared<M>>,
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

/// The pool's gauges at one moment, as errors and [`ConnectionPool::state`] report them.
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
            "{} in use, {} idle, {} waiting, {} connecting, limit {} + {} overflow",
            self.in_use,
            self.idle,
            self.waiting,
            self.connecting,
            self.pool_size,
            self.max_overflow
        )
    }
}

/// What the pool shares between its handles, guards and tasks.
pub(crate) struct Shared<M: Manager> {
    pub(crate) name: Arc<str>,
    /// `backend:name` (`postgresql:main`), as logs name the pool: a PostgreSQL and a Redis
    /// pool may share a name.
    id: Arc<str>,
    pub(crate) manager: M,
    /// Settings that never change after build; the sizes live in [`State`].
    pub(crate) config: PoolConfig,
    state: Mutex<State<M>>,
    pub(crate) stats: Stats,
    /// The exporter's hook, if one is attached.
    observer: OnceLock<Arc<dyn Observer>>,
    /// Signalled whenever an open connection goes away, for `close().await`.
    drained: Notify,
    /// Signalled whenever a connect succeeds and when the pool closes, for `warmed`.
    warm: Notify,
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

struct Waiter<C> {
    id: u64,
    /// When the reaper gives up on this waiter.
    deadline: Instant,
    /// Receives a connection already counted in use; dropped unsent when the pool closes or
    /// the waiter's deadline passes.
    tx: oneshot::Sender<Conn<C>>,
}

#[derive(Debug)]
struct LeakEntry {
    acquired_at: Instant,
    location: &'static Location<'static>,
    reported: bool,
}

struct State<M: Manager> {
    pool_size: usize,
    max_overflow: usize,
    min_idle: Option<usize>,
    idle: VecDeque<Conn<M::Connection>>,
    in_use: InUse,
    /// Held by the pool's own checks (maintenance, health).
    busy: usize,
    connecting: usize,
    /// Retired connections whose close is still running: they still count against the limit.
    closing: usize,
    waiters: VecDeque<Waiter<M::Connection>>,
    next_waiter: u64,
    /// When the reaper wakes next; `None` while it sleeps until notified.
    reaper_at: Option<Instant>,
    closed: bool,
    /// Connections still to retire on return after a shrink.
    shrink_debt: usize,
    connect_failures: u32,
    last_error: Option<Arc<ConnectError<M::Error>>>,
    /// Checked-out connections, when leak detection is on.
    leaks: HashMap<u64, LeakEntry>,
    /// Callers waiting in `warmed`: while any wait, failed warm-up connects are retried.
    warming: usize,
}

/// Connections checked out by users, and the time they spent checked out: the integral of the
/// count over time (two connections out for a second make two connection-seconds), which
/// [`PoolStats::in_use_time`] reports.
///
/// The count changes only through [`up`](Self::up) and [`down`](Self::down), which take the
/// time of the change, so no change escapes the integral. On the acquire, release, detach and
/// connect paths that time is one the engine reads anyway; only the failure paths of a check or
/// a reset read the clock for it. Keeping the integral costs a few integer operations under the
/// lock the change is made under, and no clock read, atomic or lock of its own.
#[derive(Debug)]
struct InUse {
    count: usize,
    /// When `count` last changed, or the stats were reset.
    since: Instant,
    /// Connection-nanoseconds in use from the last stats reset to `since`.
    nanos: u128,
}

impl InUse {
    fn new(now: Instant) -> Self {
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
    fn up(&mut self, now: Instant) {
        self.advance(now);
        self.count += 1;
    }

    #[inline]
    fn down(&mut self, now: Instant) {
        self.advance(now);
        self.count -= 1;
    }

    /// Connection-time in use from the last stats reset to `now`, the connections out now
    /// counted up to it.
    fn time(&self, now: Instant) -> Duration {
        let out = self.count as u128 * now.duration_since(self.since).as_nanos();
        let nanos = self.nanos + out;
        let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
        Duration::new(secs, (nanos % 1_000_000_000) as u32)
    }

    /// Starts the integral again from zero at `now` (a stats reset): connections out now count
    /// from then on.
    fn reset(&mut self, now: Instant) {
        self.nanos = 0;
        self.since = self.since.max(now);
    }
}

impl<M: Manager> State<M> {
    fn open(&self) -> usize {
        self.idle.len() + self.in_use.count + self.busy + self.connecting + self.closing
    }

    /// Open connections that are staying: all but those being closed.
    fn kept(&self) -> usize {
        self.open() - self.closing
    }

    fn max_size(&self) -> usize {
        self.pool_size + self.max_overflow
    }

    fn min_idle(&self) -> usize {
        self.min_idle.unwrap_or(self.pool_size).min(self.pool_size)
    }

    /// Connections open and usable now: idle, in use, or held by the pool's own checks (not
    /// those still connecting or being closed).
    fn established(&self) -> usize {
        self.idle.len() + self.in_use.count + self.busy
    }

    /// Whether a failed connect should try again for `warmed`: someone waits there and the
    /// pool is short of `min_idle` without this connect (which `kept` counts).
    fn warm_wanted(&self) -> bool {
        self.warming > 0 && self.kept() <= self.min_idle()
    }

    fn state(&self) -> PoolState {
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
        }
    }

    /// The idle connection the next caller gets (most recently returned with `lifo`), unless
    /// callers wait: they come first (no barging).
    fn take_idle(&mut self, lifo: bool) -> Option<Conn<M::Connection>> {
        if !self.waiters.is_empty() {
            None
        } else if lifo {
            self.idle.pop_back()
        } else {
            self.idle.pop_front()
        }
    }

    fn unhold(&mut self, held: Held, now: Instant) {
        match held {
            Held::User => self.in_use.down(now),
            Held::Pool => self.busy -= 1,
        }
    }

    fn note_in_use(&self, stats: &Stats) {
        if self.in_use.count > stats.peak_in_use.load(Relaxed) {
            stats.peak_in_use.store(self.in_use.count, Relaxed);
        }
    }

    /// Gives `conn` (already counted in use) to the oldest live waiter, or returns it.
    fn hand_off(&mut self, mut conn: Conn<M::Connection>) -> Option<Conn<M::Connection>> {
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
    fn connects_to_start(&mut self, max_connecting: usize, warm: bool) -> usize {
        if self.closed {
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

/// How an acquire may wait.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// Queue and wait up to this long.
    Upto(Duration),
    /// Never queue (`try_acquire`).
    Never,
}

enum AcquireFail<E: std::error::Error + 'static> {
    Closed,
    Timeout { waited: Duration, state: PoolState, last_error: Option<Arc<ConnectError<E>>> },
    NoneIdle(PoolState),
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
    /// and the last connect error; [`AcquireError::Closed`] once the pool is closed.
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
        self.acquire_timeout_at(timeout, Location::caller())
    }

    /// [`acquire_timeout`](Self::acquire_timeout) on behalf of the code at `location`: for a
    /// wrapper that acquires inside its own `async` code (after routing, say), where
    /// `#[track_caller]` cannot see its caller.
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
    ///             self.pool.acquire_timeout_at(Duration::from_secs(1), location).await
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
    pub async fn acquire_timeout_at(
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

    fn maintenance_period(&self) -> Option<Duration> {
        let c = &self.config;
        [
            c.health_check_interval,
            c.leak_detection_threshold.map(|d| d / 2),
            c.idle_timeout.map(|d| d / 2),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.max(Duration::from_millis(10)))
    }

    async fn acquire(
        self: &Arc<Self>,
        wait: Wait,
        location: &'static Location<'static>,
    ) -> Result<PooledConnection<M>, AcquireFail<M::Error>> {
        // Read the clocks only as needed: the fast path reads the engine's clock once.
        let mut started: Option<Instant> = None;
        let mut deadline: Option<Instant> = None;
        let mut deadline_for = |now: Instant, wait: Wait| {
            *deadline.get_or_insert_with(|| {
                clock::after(
                    now,
                    match wait {
                        Wait::Upto(t) => t,
                        Wait::Never => self.config.connect_timeout,
                    },
                )
            })
        };
        loop {
            let now = self.now();
            let step = {
                let mut st = self.lock();
                if st.closed {
                    return Err(AcquireFail::Closed);
                }
                let idle = st.take_idle(self.config.pool_use_lifo);
                if let Some(conn) = idle {
                    st.in_use.up(now);
                    st.note_in_use(&self.stats);
                    Step::Idle(conn)
                } else if let Wait::Upto(_) = wait {
                    started.get_or_insert(now);
                    let deadline = deadline_for(now, wait);
                    let (tx, rx) = oneshot::channel();
                    let id = st.next_waiter;
                    st.next_waiter += 1;
                    st.waiters.push_back(Waiter { id, deadline, tx });
                    if st.waiters.len() > self.stats.peak_waiting.load(Relaxed) {
                        self.stats.peak_waiting.store(st.waiters.len(), Relaxed);
                    }
                    let wake = st.reaper_at.is_none_or(|at| deadline < at);
                    if wake {
                        st.reaper_at = Some(deadline);
                    }
                    let connects = st.connects_to_start(self.config.max_connecting, false);
                    Step::Queued { id, rx, wake, connects }
                } else {
                    Step::NoneIdle(st.state())
                }
            };
            match step {
                Step::Idle(conn) => {
                    if conn.expired(now) {
                        self.retire(conn, CloseReason::Recycled, Held::User, now);
                        continue;
                    }
                    // Broken while idle (the server closed it): known without IO, so never
                    // handed out, pre-ping or not.
                    if caught_now(|| self.manager.is_broken(&conn.raw)).unwrap_or(true) {
                        self.retire(conn, CloseReason::Broken, Held::User, now);
                        continue;
                    }
                    if self.config.pool_pre_ping
                        && now.duration_since(conn.alive_at) > self.config.pre_ping_bypass
                    {
                        let start = *started.get_or_insert(now);
                        match self.checked(conn, deadline_for(now, wait)).await {
                            Checked::Alive(conn) => {
                                return Ok(self.checked_out(
                                    conn,
                                    self.now(),
                                    Some(start),
                                    location,
                                ));
                            }
                            Checked::Failed => continue,
                            // A caller that does not queue was promised no wait: the check
                            // outlived its bound, so no idle connection was ready. Not an
                            // acquire timeout in the stats either.
                            Checked::TimedOut if matches!(wait, Wait::Never) => {
                                return Err(AcquireFail::NoneIdle(self.lock().state()));
                            }
                            Checked::TimedOut => return Err(self.timed_out(start)),
                        }
                    }
                    return Ok(self.checked_out(conn, now, started, location));
                }
                Step::NoneIdle(state) => return Err(AcquireFail::NoneIdle(state)),
                Step::Queued { id, rx, wake, connects } => {
                    if wake {
                        self.reaper.notify_one();
                    }
                    self.spawn_connects(connects);
                    let start = started.unwrap_or(now);
                    let mut queued = Queued { shared: self, id, rx: Some(rx) };
                    return match queued.wait().await {
                        Ok(conn) => {
                            self.stats.waits.fetch_add(1, Relaxed);
                            Ok(self.checked_out(conn, self.now(), Some(start), location))
                        }
                        Err(QueueEnd::Closed) => Err(AcquireFail::Closed),
                        Err(QueueEnd::TimedOut) => Err(self.timed_out(start)),
                    };
                }
            }
        }
    }

    fn timed_out(&self, start: Instant) -> AcquireFail<M::Error> {
        self.stats.timeouts.fetch_add(1, Relaxed);
        let st = self.lock();
        AcquireFail::Timeout {
            waited: self.now().duration_since(start),
            state: st.state(),
            last_error: st.last_error.clone(),
        }
    }

    /// Drops the waiters whose deadline passed (they wake with a timeout) and returns when the
    /// reaper should wake next, or `None` once the pool is closed.
    fn expire_waiters(&self, now: Instant) -> Option<Option<Instant>> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        st.waiters.retain(|w| w.deadline > now);
        let next = st.waiters.iter().map(|w| w.deadline).min();
        st.reaper_at = next;
        Some(next)
    }

    /// Runs the pre-ping check in its own task, so a caller that goes away mid-check loses
    /// nothing: the task returns the connection to the pool itself, and a reply sent but never
    /// read (the caller gave up, or its timer fired first) is put back by [`CheckReply`].
    ///
    /// The task runs on the caller's runtime, or on the pool's own when the caller polls from
    /// outside any tokio runtime (another executor), whose timer then bounds the wait too.
    async fn checked(
        self: &Arc<Self>,
        conn: Conn<M::Connection>,
        deadline: Instant,
    ) -> Checked<M::Connection> {
        let (tx, rx) = oneshot::channel();
        let shared = Arc::clone(self);
        let current = tokio::runtime::Handle::try_current().ok();
        current.as_ref().unwrap_or(&self.runtime).spawn(async move {
            match shared.check(conn, Held::User).await {
                Ok(conn) => {
                    if let Err(conn) = tx.send(conn) {
                        shared.put_back(conn, Held::User);
                    }
                }
                Err(_) => drop(tx),
            }
        });
        let timer = {
            let _in_runtime = current.is_none().then(|| self.runtime.enter());
            tokio::time::sleep(deadline.duration_since(self.now()))
        };
        let mut reply = CheckReply { shared: self, rx: Some(rx) };
        let Some(rx) = reply.rx.as_mut() else { return Checked::Failed };
        tokio::select! {
            biased;
            checked = rx => {
                reply.rx = None;
                match checked {
                    Ok(conn) => Checked::Alive(conn),
                    Err(_) => Checked::Failed,
                }
            }
            () = timer => Checked::TimedOut,
        }
    }

    /// Checks `conn`, held by `held`, bounded by `connect_timeout`; on failure retires it and
    /// says what failed.
    async fn check(
        self: &Arc<Self>,
        mut conn: Conn<M::Connection>,
        held: Held,
    ) -> Result<Conn<M::Connection>, String> {
        let bound = self.config.connect_timeout;
        let check = caught(async { self.manager.check(&mut conn.raw).await });
        let error = match tokio::time::timeout(bound, check).await {
            Ok(Ok(Ok(()))) => {
                conn.alive_at = self.now();
                return Ok(conn);
            }
            Ok(Ok(Err(e))) => format!("check failed: {e}"),
            Ok(Err(panic)) => format!("check {panic}"),
            Err(_) => format!("check timed out after {bound:?}"),
        };
        tracing::debug!(pool = %self.id, conn = conn.id, %error, "connection failed its check");
        self.retire(conn, CloseReason::FailedCheck, held, self.now());
        Err(error)
    }

    fn checked_out(
        self: &Arc<Self>,
        conn: Conn<M::Connection>,
        now: Instant,
        started: Option<Instant>,
        location: &'static Location<'static>,
    ) -> PooledConnection<M> {
        let wait = match started {
            Some(start) => {
                let wait = now.duration_since(start);
                self.stats.wait.record(wait);
                wait
            }
            None => {
                self.stats.wait.record_zero();
                Duration::ZERO
            }
        };
        if let Some(observer) = self.observer.get() {
            observer.acquired(wait);
        }
        if self.config.leak_detection_threshold.is_some() {
            self.lock()
                .leaks
                .insert(conn.id, LeakEntry { acquired_at: now, location, reported: false });
        }
        PooledConnection::new(Arc::clone(self), conn, now)
    }

    /// Ends a user's hold of connection `id`, however it ends (given back, discarded,
    /// detached): the use-time histogram, the observer and the leak report see it. Returns
    /// the time.
    pub(crate) fn came_back(&self, id: u64, acquired_at: Instant) -> Instant {
        let now = self.now();
        let held = now.duration_since(acquired_at);
        self.stats.usage.record(held);
        if let Some(observer) = self.observer.get() {
            observer.released(held);
        }
        if let Some(threshold) = self.config.leak_detection_threshold {
            let entry = self.lock().leaks.remove(&id);
            if let Some(entry) = entry.filter(|e| e.reported || held >= threshold) {
                if !entry.reported {
                    self.stats.leaks.fetch_add(1, Relaxed);
                }
                tracing::warn!(
                    pool = %self.id,
                    conn = id,
                    held = ?held,
                    acquired_at = %entry.location,
                    "connection held past the leak detection threshold came back"
                );
            }
        }
        now
    }

    /// A user gave `conn` back (guard dropped).
    pub(crate) fn release(self: &Arc<Self>, conn: Conn<M::Connection>, acquired_at: Instant) {
        let now = self.came_back(conn.id, acquired_at);
        // A backend that panics saying whether the connection is fit for reuse says it is not.
        if caught_now(|| self.manager.is_broken(&conn.raw)).unwrap_or(true) {
            return self.retire(conn, CloseReason::Broken, Held::User, now);
        }
        let Ok(needs_reset) = caught_now(|| self.manager.needs_reset(&conn.raw)) else {
            return self.retire(conn, CloseReason::FailedReset, Held::User, now);
        };
        let mut conn = conn;
        conn.idle_since = now;
        conn.alive_at = now;
        if needs_reset {
            // The user is done with it: from here the pool's own task holds it, and a waiter
            // counts on it rather than on a new connect.
            {
                let mut st = self.lock();
                st.in_use.down(now);
                st.busy += 1;
            }
            let shared = Arc::clone(self);
            self.task_runtime().spawn(async move {
                let bound = shared.config.connect_timeout;
                let reset = caught(async { shared.manager.reset(&mut conn.raw).await });
                let failed = match tokio::time::timeout(bound, reset).await {
                    Ok(Ok(Ok(()))) => return shared.put_back(conn, Held::Pool),
                    Ok(Ok(Err(e))) => {
                        tracing::debug!(pool = %shared.id, conn = conn.id, error = %e, "reset on return failed");
                        shared.now()
                    }
                    Ok(Err(panic)) => {
                        tracing::warn!(pool = %shared.id, conn = conn.id, "reset on return {panic}");
                        shared.now()
                    }
                    Err(_) => shared.now(),
                };
                shared.retire(conn, CloseReason::FailedReset, Held::Pool, failed);
            });
            return;
        }
        self.put_back(conn, Held::User);
    }

    /// Returns a live connection to the oldest waiter or the idle list, or retires it.
    fn put_back(self: &Arc<Self>, conn: Conn<M::Connection>, held: Held) {
        let now = self.now();
        if conn.expired(now) {
            return self.retire(conn, CloseReason::Recycled, held, now);
        }
        let mut st = self.lock();
        let reason = if st.closed {
            Some(CloseReason::PoolClosed)
        } else if st.established() > st.max_size() {
            // Connects in flight do not count: they may fail, and one that succeeds past the
            // limit is closed as it opens.
            Some(CloseReason::Shrink)
        } else {
            None
        };
        if let Some(reason) = reason {
            st.unhold(held, now);
            st.closing += 1;
            drop(st);
            self.close_conn(conn, reason);
            return;
        }
        if held == Held::Pool {
            st.busy -= 1;
            st.in_use.up(now);
        }
        let Some(conn) = st.hand_off(conn) else { return };
        // Nobody waits: after a shrink, a connection above the new `pool_size` is retired.
        let excess = st.established() > st.pool_size;
        st.in_use.down(now);
        if st.shrink_debt > 0 {
            st.shrink_debt -= 1;
            if excess {
                st.closing += 1;
                drop(st);
                self.close_conn(conn, CloseReason::Shrink);
                return;
            }
        }
        st.idle.push_back(conn);
    }

    /// Closes a connection that `held` had until `now`, and starts what connects the pool now
    /// needs.
    pub(crate) fn retire(
        self: &Arc<Self>,
        conn: Conn<M::Connection>,
        reason: CloseReason,
        held: Held,
        now: Instant,
    ) {
        let n = {
            let mut st = self.lock();
            st.unhold(held, now);
            st.closing += 1;
            st.leaks.remove(&conn.id);
            st.connects_to_start(self.config.max_connecting, false)
        };
        self.close_conn(conn, reason);
        self.spawn_connects(n);
    }

    /// A user took a connection out of the pool (`detach`) at `now`.
    pub(crate) fn forget(self: &Arc<Self>, id: u64, now: Instant) {
        let n = {
            let mut st = self.lock();
            st.in_use.down(now);
            st.leaks.remove(&id);
            st.connects_to_start(self.config.max_connecting, false)
        };
        self.stats.closed(CloseReason::Detached);
        self.spawn_connects(n);
        self.drained.notify_waiters();
    }

    /// Counts and closes a connection the state already counts as `closing`; once closed, the
    /// slot is free and the pool starts what connects it needs.
    fn close_conn(self: &Arc<Self>, conn: Conn<M::Connection>, reason: CloseReason) {
        self.stats.closed(reason);
        tracing::debug!(pool = %self.id, conn = conn.id, reason = reason.as_str(), "connection closed");
        let shared = Arc::clone(self);
        self.task_runtime().spawn(async move {
            // A close that hangs (a blocked socket) must not hold the slot: past the bound, the
            // connection is dropped instead.
            let bound = shared.config.connect_timeout;
            match tokio::time::timeout(bound, caught(async { shared.manager.close(conn.raw).await })).await {
                Ok(Ok(())) => {}
                Ok(Err(panic)) => tracing::warn!(pool = %shared.id, conn = conn.id, "close {panic}"),
                Err(_) => tracing::debug!(pool = %shared.id, conn = conn.id, "close timed out after {bound:?}: dropped"),
            }
            shared.closed_one();
        });
    }

    /// The runtime pool tasks (connects, resets, closes, checks) run on: the pool's own, which
    /// has the timers they need (its reaper runs there) and lives as long as the pool is used,
    /// whichever runtime, executor or plain thread the caller is on.
    fn task_runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    fn closed_one(self: &Arc<Self>) {
        let n = {
            let mut st = self.lock();
            st.closing -= 1;
            st.connects_to_start(self.config.max_connecting, false)
        };
        self.spawn_connects(n);
        self.drained.notify_waiters();
    }

    fn spawn_connects(self: &Arc<Self>, n: usize) {
        if n > 0 {
            self.spawn_connects_on(self.task_runtime(), n);
        }
    }

    fn spawn_connects_on(self: &Arc<Self>, handle: &tokio::runtime::Handle, n: usize) {
        for _ in 0..n {
            handle.spawn(Arc::clone(self).connect());
        }
    }

    /// One connect slot: opens a connection and gives it to the oldest waiter or the idle
    /// list; on failure, backs off with jitter and retries while callers wait (in `acquire`,
    /// or in `warmed` for a pool short of `min_idle`).
    async fn connect(self: Arc<Self>) {
        let bound = self.config.connect_timeout;
        loop {
            let start = self.now();
            let result =
                match tokio::time::timeout(bound, caught(async { self.manager.connect().await }))
                    .await
                {
                    Ok(Ok(Ok(raw))) => Ok(raw),
                    Ok(Ok(Err(e))) => Err(ConnectError::Backend(e)),
                    Ok(Err(panic)) => Err(ConnectError::Panicked(panic)),
                    Err(_) => Err(ConnectError::TimedOut(bound)),
                };
            let error = match result {
                Ok(raw) => return self.opened(raw, start),
                Err(e) => e,
            };
            self.stats.connect_errors.fetch_add(1, Relaxed);
            tracing::warn!(pool = %self.id, error = %error, "connect failed");
            let delay = {
                let mut st = self.lock();
                st.connect_failures = st.connect_failures.saturating_add(1);
                st.last_error = Some(Arc::new(error));
                if st.closed || (st.waiters.is_empty() && !st.warm_wanted()) {
                    st.connecting -= 1;
                    drop(st);
                    self.drained.notify_waiters();
                    return;
                }
                backoff(st.connect_failures)
            };
            tokio::time::sleep(delay).await;
            let mut st = self.lock();
            if st.closed {
                st.connecting -= 1;
                drop(st);
                self.drained.notify_waiters();
                return;
            }
        }
    }

    fn opened(self: &Arc<Self>, raw: M::Connection, start: Instant) {
        let now = self.now();
        self.stats.created.fetch_add(1, Relaxed);
        let took = now.duration_since(start);
        self.stats.connect.record(took);
        if let Some(observer) = self.observer.get() {
            observer.connected(took);
        }
        let expires_at = self.config.pool_recycle.map(|life| {
            let jitter = self.config.recycle_jitter * fastrand::f64();
            clock::after(now, life.mul_f64(1.0 - jitter))
        });
        let id = self.next_id.fetch_add(1, Relaxed);
        let conn = Conn { raw, id, expires_at, idle_since: now, alive_at: now };
        tracing::debug!(pool = %self.id, conn = id, "connection opened");
        let mut st = self.lock();
        st.connecting -= 1;
        st.connect_failures = 0;
        st.last_error = None;
        if st.closed {
            st.closing += 1;
            drop(st);
            return self.close_conn(conn, CloseReason::PoolClosed);
        }
        // Started before a shrink, and now past the limit with nobody waiting for it.
        if st.waiters.is_empty() && st.kept() + 1 > st.max_size() {
            st.closing += 1;
            drop(st);
            return self.close_conn(conn, CloseReason::Shrink);
        }
        st.in_use.up(now);
        match st.hand_off(conn) {
            None => st.note_in_use(&self.stats),
            Some(conn) => {
                st.in_use.down(now);
                st.idle.push_back(conn);
            }
        }
        let n = st.connects_to_start(self.config.max_connecting, false);
        drop(st);
        self.spawn_connects(n);
        self.warm.notify_waiters();
    }

    /// One pass of the maintenance task.
    async fn maintain(self: &Arc<Self>) {
        let now = self.now();
        let c = &self.config;
        let mut retire = Vec::new();
        let mut ping = Vec::new();
        let mut leaks = Vec::new();
        let n = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            let keep = st.min_idle();
            let mut open = st.open();
            let mut kept = VecDeque::with_capacity(st.idle.len());
            // Oldest returned first: with LIFO these are the ones sitting idle longest.
            while let Some(conn) = st.idle.pop_front() {
                if conn.expired(now) {
                    retire.push((conn, CloseReason::Recycled));
                    open -= 1;
                } else if caught_now(|| self.manager.is_broken(&conn.raw)).unwrap_or(true) {
                    retire.push((conn, CloseReason::Broken));
                    open -= 1;
                } else if c.idle_timeout.is_some_and(|t| now.duration_since(conn.idle_since) >= t)
                    && open > keep
                {
                    retire.push((conn, CloseReason::Idle));
                    open -= 1;
                } else if c
                    .health_check_interval
                    .is_some_and(|t| now.duration_since(conn.alive_at) >= t)
                {
                    ping.push(conn);
                } else {
                    kept.push_back(conn);
                }
            }
            st.idle = kept;
            st.busy += ping.len();
            st.closing += retire.len();
            if let Some(threshold) = c.leak_detection_threshold {
                for (id, entry) in st.leaks.iter_mut() {
                    let held = now.duration_since(entry.acquired_at);
                    if !entry.reported && held >= threshold {
                        entry.reported = true;
                        leaks.push((*id, held, entry.location));
                    }
                }
            }
            st.connects_to_start(c.max_connecting, true)
        };
        for (conn, reason) in retire {
            self.close_conn(conn, reason);
        }
        self.spawn_connects(n);
        for (id, held, location) in leaks {
            self.stats.leaks.fetch_add(1, Relaxed);
            tracing::warn!(
                pool = %self.id,
                conn = id,
                held = ?held,
                acquired_at = %location,
                "connection held past the leak detection threshold (possible leak)"
            );
        }
        // Each check in its own task: one slow or unanswered ping does not hold the others,
        // or this pass, back.
        for conn in ping {
            let shared = Arc::clone(self);
            self.task_runtime().spawn(async move {
                if let Ok(conn) = shared.check(conn, Held::Pool).await {
                    shared.put_back(conn, Held::Pool);
                }
            });
        }
    }
}

enum Checked<C> {
    Alive(Conn<C>),
    Failed,
    TimedOut,
}

enum QueueEnd {
    Closed,
    TimedOut,
}

enum Step<C> {
    Idle(Conn<C>),
    Queued { id: u64, rx: oneshot::Receiver<Conn<C>>, wake: bool, connects: usize },
    NoneIdle(PoolState),
}

/// A caller's place in the queue; leaving it (drop) gives back anything handed to it.
struct Queued<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    id: u64,
    rx: Option<oneshot::Receiver<Conn<M::Connection>>>,
}

impl<M: Manager> Queued<'_, M> {
    /// Waits for a connection; the reaper ends the wait at the deadline by dropping the sender.
    async fn wait(&mut self) -> Result<Conn<M::Connection>, QueueEnd> {
        let Some(rx) = self.rx.as_mut() else { return Err(QueueEnd::Closed) };
        let received = rx.await;
        self.rx = None;
        match received {
            Ok(conn) => Ok(conn),
            Err(_) if self.shared.lock().closed => Err(QueueEnd::Closed),
            Err(_) => Err(QueueEnd::TimedOut),
        }
    }
}

/// The reply of a pre-ping run in its own task. Dropped unread, it gives back a connection the
/// task already sent; the task gives back one it could not send.
struct CheckReply<'a, M: Manager> {
    shared: &'a Arc<Shared<M>>,
    rx: Option<oneshot::Receiver<Conn<M::Connection>>>,
}

impl<M: Manager> Drop for CheckReply<'_, M> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        rx.close();
        if let Ok(conn) = rx.try_recv() {
            self.shared.put_back(conn, Held::User);
        }
    }
}

impl<M: Manager> Drop for Queued<'_, M> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        let removed = {
            let mut st = self.shared.lock();
            match st.waiters.iter().position(|w| w.id == self.id) {
                Some(pos) => {
                    st.waiters.remove(pos);
                    true
                }
                None => false,
            }
        };
        if !removed {
            rx.close();
            if let Ok(conn) = rx.try_recv() {
                self.shared.put_back(conn, Held::User);
            }
        }
    }
}

/// Runs `f` to completion, turning a panic in it into `Err` with the panic's message: a
/// backend that panics fails the one operation, and the pool's counts stay right. Pass the
/// call inside an `async` block, so that a panic in its synchronous part is caught too.
async fn caught<F: Future>(f: F) -> Result<F::Output, String> {
    let mut f = std::pin::pin!(f);
    poll_fn(|cx| {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    })
    .await
}

/// [`caught`] for a call that does not wait.
fn caught_now<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    format!("panicked: {message}")
}

/// Delay before connect retry number `failures`: exponential from 25 ms, capped at 2 s, with
/// jitter (between half and all of it), so a fleet of pools does not retry in lockstep.
fn backoff(failures: u32) -> Duration {
    let exp = Duration::from_millis(25).saturating_mul(1 << failures.saturating_sub(1).min(16));
    exp.min(Duration::from_secs(2)).mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// The reaper task: one timer for the whole queue. It sleeps until the earliest waiter's
/// deadline (or until woken by a waiter with an earlier one) and drops the expired waiters.
async fn reap<M: Manager>(pool: Weak<Shared<M>>, wake: Arc<Notify>) {
    loop {
        // How long until the earliest deadline, read on the pool's clock.
        let next = {
            let Some(shared) = pool.upgrade() else { return };
            match shared.expire_waiters(shared.now()) {
                Some(next) => next.map(|at| at.duration_since(shared.now())),
                None => return,
            }
        };
        match next {
            Some(wait) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// The maintenance task: runs every `period` until the pool is closed or dropped.
async fn maintain<M: Manager>(pool: Weak<Shared<M>>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(shared) = pool.upgrade() else { return };
        if shared.lock().closed {
            return;
        }
        shared.maintain().await;
    }
}
