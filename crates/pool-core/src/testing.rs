//! An in-memory [`Manager`] for tests (feature `testing`): connects, checks and resets can be
//! made slow, failing or held on command, and it counts what the pool did with it.
//!
//! A test that pauses tokio's clock builds its pools with
//! [`Builder::tokio_clock`](crate::Builder::tokio_clock), so that their waits, idle times,
//! lifetimes and holds follow that clock; every other pool reads the clock that ships.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::manager::Manager;

/// A manager of in-memory [`TestConnection`]s, cheap to clone (clones share controls and counts).
///
/// # Examples
///
/// ```
/// use pool_core::{ConnectionPool, testing::TestManager};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let manager = TestManager::new();
/// let pool = ConnectionPool::builder(manager.clone()).pool_size(2).build().unwrap();
/// manager.wait_until(|c| c.live == 2).await; // warm-up done
/// assert_eq!(manager.counts().connects, 2);
/// # drop(pool); }
/// ```
#[derive(Debug, Clone, Default)]
pub struct TestManager {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    connect_delay: Mutex<Duration>,
    check_delay: Mutex<Duration>,
    reset_delay: Mutex<Duration>,
    close_delay: Mutex<Duration>,
    /// Operations whose next call panics, one entry per call.
    panics: Mutex<Vec<Op>>,
    /// Connections made before this many calls of `break_open_connections` are broken.
    break_epoch: AtomicU64,
    fail_connects: AtomicBool,
    fail_next_connects: AtomicUsize,
    fail_checks: AtomicBool,
    fail_next_checks: AtomicUsize,
    fail_resets: AtomicBool,
    /// Failure probabilities of connects and checks, in millionths.
    connect_failure_ppm: AtomicU64,
    check_failure_ppm: AtomicU64,
    hold_connects: AtomicBool,
    gate: Gate,
    next_id: AtomicU64,
    live: AtomicUsize,
    max_live: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    connects: AtomicUsize,
    failed_connects: AtomicUsize,
    checks: AtomicUsize,
    resets: AtomicUsize,
    events: Notify,
}

/// Permits for held connects; starts with none.
#[derive(Debug)]
struct Gate(Semaphore);

impl Default for Gate {
    fn default() -> Self {
        Gate(Semaphore::new(0))
    }
}

/// A [`TestManager`] operation, for [`TestManager::panic_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// [`Manager::connect`].
    Connect,
    /// [`Manager::check`].
    Check,
    /// [`Manager::reset`].
    Reset,
    /// [`Manager::close`].
    Close,
    /// [`Manager::is_broken`].
    IsBroken,
    /// [`Manager::needs_reset`].
    NeedsReset,
}

/// What a [`TestManager`] has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TestCounts {
    /// Connections open now (created and not yet dropped).
    pub live: usize,
    /// Most connections open at once.
    pub max_live: usize,
    /// Connects in progress now.
    pub in_flight: usize,
    /// Most connects in progress at once.
    pub max_in_flight: usize,
    /// Successful connects.
    pub connects: usize,
    /// Failed connects.
    pub failed_connects: usize,
    /// Checks run.
    pub checks: usize,
    /// Resets run.
    pub resets: usize,
}

/// A connection of a [`TestManager`]; its flags steer what the manager reports about it.
#[derive(Debug)]
pub struct TestConnection {
    /// A number unique among this manager's connections, from 1.
    pub id: u64,
    /// Reported broken (closed on return) when set.
    pub broken: bool,
    /// Reported as needing a reset when set; a successful reset clears it.
    pub dirty: bool,
    /// The manager's `break_epoch` when it was made.
    epoch: u64,
    inner: Arc<Inner>,
}

impl TestConnection {
    /// Broken by its user (`broken`) or by [`TestManager::break_open_connections`].
    fn is_broken(&self) -> bool {
        self.broken || self.epoch < self.inner.break_epoch.load(SeqCst)
    }
}

impl Drop for TestConnection {
    fn drop(&mut self) {
        self.inner.live.fetch_sub(1, SeqCst);
        self.inner.events.notify_waiters();
    }
}

/// What a [`TestManager`] fails with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("test manager: {0}")]
pub struct TestError(pub &'static str);

fn set(slot: &Mutex<Duration>, d: Duration) {
    *slot.lock().unwrap_or_else(PoisonError::into_inner) = d;
}

fn get(slot: &Mutex<Duration>) -> Duration {
    *slot.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TestManager {
    /// A manager whose operations succeed at once.
    pub fn new() -> Self {
        TestManager::default()
    }

    /// Makes every connect take `d`.
    pub fn set_connect_delay(&self, d: Duration) {
        set(&self.inner.connect_delay, d);
    }

    /// Makes every check take `d`.
    pub fn set_check_delay(&self, d: Duration) {
        set(&self.inner.check_delay, d);
    }

    /// Makes every reset take `d`.
    pub fn set_reset_delay(&self, d: Duration) {
        set(&self.inner.reset_delay, d);
    }

    /// Breaks every connection open now, idle ones included, as a server restart would: each
    /// reports itself broken and fails its checks.
    pub fn break_open_connections(&self) {
        self.inner.break_epoch.fetch_add(1, SeqCst);
    }

    /// Makes every close take `d` (the default close drops the connection at once).
    pub fn set_close_delay(&self, d: Duration) {
        set(&self.inner.close_delay, d);
    }

    /// Makes the next call of `op` panic, as a buggy backend would; call it `n` times for the
    /// next `n` calls.
    pub fn panic_next(&self, op: Op) {
        self.inner.panics.lock().unwrap_or_else(PoisonError::into_inner).push(op);
    }

    fn maybe_panic(&self, op: Op) {
        let mut panics = self.inner.panics.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = panics.iter().position(|o| *o == op) {
            panics.remove(i);
            drop(panics);
            panic!("test manager: {op:?} panicked on purpose");
        }
    }

    /// Makes every connect fail (`true`) or succeed (`false`).
    pub fn fail_connects(&self, fail: bool) {
        self.inner.fail_connects.store(fail, SeqCst);
    }

    /// Makes the next `n` connects fail.
    pub fn fail_next_connects(&self, n: usize) {
        self.inner.fail_next_connects.store(n, SeqCst);
    }

    /// Makes every check fail (`true`) or succeed (`false`).
    pub fn fail_checks(&self, fail: bool) {
        self.inner.fail_checks.store(fail, SeqCst);
    }

    /// Makes the next `n` checks fail.
    pub fn fail_next_checks(&self, n: usize) {
        self.inner.fail_next_checks.store(n, SeqCst);
    }

    /// Makes connects and checks fail at random with these probabilities (0 to 1).
    pub fn set_failure_rates(&self, connect: f64, check: f64) {
        let ppm = |p: f64| (p.clamp(0.0, 1.0) * 1e6) as u64;
        self.inner.connect_failure_ppm.store(ppm(connect), SeqCst);
        self.inner.check_failure_ppm.store(ppm(check), SeqCst);
    }

    /// Makes every reset fail (`true`) or succeed (`false`).
    pub fn fail_resets(&self, fail: bool) {
        self.inner.fail_resets.store(fail, SeqCst);
    }

    /// Holds every connect that starts from now on until [`release_connects`] lets it go.
    ///
    /// [`release_connects`]: Self::release_connects
    pub fn hold_connects(&self) {
        self.inner.hold_connects.store(true, SeqCst);
    }

    /// Lets `n` held connects proceed.
    pub fn release_connects(&self, n: usize) {
        self.inner.gate.0.add_permits(n);
    }

    /// Stops holding connects and lets every held one proceed.
    pub fn resume_connects(&self) {
        self.inner.hold_connects.store(false, SeqCst);
        self.inner.gate.0.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// What the manager has seen so far.
    pub fn counts(&self) -> TestCounts {
        let i = &self.inner;
        TestCounts {
            live: i.live.load(SeqCst),
            max_live: i.max_live.load(SeqCst),
            in_flight: i.in_flight.load(SeqCst),
            max_in_flight: i.max_in_flight.load(SeqCst),
            connects: i.connects.load(SeqCst),
            failed_connects: i.failed_connects.load(SeqCst),
            checks: i.checks.load(SeqCst),
            resets: i.resets.load(SeqCst),
        }
    }

    /// Waits until `condition` holds for the counts (re-evaluated after every event: a connect
    /// started, finished or failed, a connection dropped, a check or reset run).
    pub async fn wait_until(&self, condition: impl Fn(&TestCounts) -> bool) {
        loop {
            let notified = self.inner.events.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if condition(&self.counts()) {
                return;
            }
            notified.await;
        }
    }

    fn event(&self) {
        self.inner.events.notify_waiters();
    }

    fn take_one(flag: &AtomicBool, next: &AtomicUsize, ppm: &AtomicU64) -> bool {
        flag.load(SeqCst)
            || next.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
            || fastrand::u64(0..1_000_000) < ppm.load(SeqCst)
    }
}

/// Counts a connect in flight until dropped (also when the pool's timeout cancels it).
struct InFlight<'a>(&'a TestManager);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inner.in_flight.fetch_sub(1, SeqCst);
        self.0.event();
    }
}

impl Manager for TestManager {
    type Connection = TestConnection;
    type Error = TestError;
    const BACKEND: &'static str = "test";

    async fn connect(&self) -> Result<TestConnection, TestError> {
        let i = &self.inner;
        let now = i.in_flight.fetch_add(1, SeqCst) + 1;
        i.max_in_flight.fetch_max(now, SeqCst);
        let _in_flight = InFlight(self);
        self.event();
        self.maybe_panic(Op::Connect);
        if i.hold_connects.load(SeqCst)
            && let Ok(permit) = i.gate.0.acquire().await
        {
            permit.forget();
        }
        let delay = get(&i.connect_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if Self::take_one(&i.fail_connects, &i.fail_next_connects, &i.connect_failure_ppm) {
            i.failed_connects.fetch_add(1, SeqCst);
            return Err(TestError("connection refused"));
        }
        let live = i.live.fetch_add(1, SeqCst) + 1;
        i.max_live.fetch_max(live, SeqCst);
        i.connects.fetch_add(1, SeqCst);
        let id = i.next_id.fetch_add(1, SeqCst) + 1;
        let epoch = i.break_epoch.load(SeqCst);
        Ok(TestConnection { id, broken: false, dirty: false, epoch, inner: Arc::clone(i) })
    }

    async fn check(&self, conn: &mut TestConnection) -> Result<(), TestError> {
        let i = &self.inner;
        let delay = get(&i.check_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        i.checks.fetch_add(1, SeqCst);
        self.event();
        self.maybe_panic(Op::Check);
        if conn.is_broken()
            || Self::take_one(&i.fail_checks, &i.fail_next_checks, &i.check_failure_ppm)
        {
            return Err(TestError("check failed"));
        }
        Ok(())
    }

    fn needs_reset(&self, conn: &TestConnection) -> bool {
        self.maybe_panic(Op::NeedsReset);
        conn.dirty
    }

    async fn reset(&self, conn: &mut TestConnection) -> Result<(), TestError> {
        let i = &self.inner;
        let delay = get(&i.reset_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        i.resets.fetch_add(1, SeqCst);
        self.event();
        self.maybe_panic(Op::Reset);
        if i.fail_resets.load(SeqCst) {
            return Err(TestError("reset failed"));
        }
        conn.dirty = false;
        Ok(())
    }

    fn is_broken(&self, conn: &TestConnection) -> bool {
        self.maybe_panic(Op::IsBroken);
        conn.is_broken()
    }

    async fn close(&self, conn: TestConnection) {
        let delay = get(&self.inner.close_delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.maybe_panic(Op::Close);
        drop(conn);
    }
}

/// Keeps what `tracing` writes, for tests that check the pool's log lines.
///
/// # Examples
///
/// ```
/// use pool_core::testing::LogCapture;
///
/// let (log, _guard) = LogCapture::start(tracing::Level::INFO);
/// tracing::info!(pool = %"postgresql:main", "pool resized");
/// tracing::debug!("below the level: not kept");
/// let text = log.take();
/// assert!(text.contains("pool=postgresql:main") && text.contains("pool resized"), "{text}");
/// assert!(!text.contains("not kept"), "{text}");
/// ```
#[derive(Debug, Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// Captures this thread's events at `max_level` and above, without colours, until the
    /// guard is dropped.
    pub fn start(max_level: tracing::Level) -> (LogCapture, tracing::subscriber::DefaultGuard) {
        let capture = LogCapture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(max_level)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        // tracing rebuilds its call sites' cached interest when a subscriber is set, but one
        // first reached on another thread at that moment can miss the rebuild and keep "no
        // subscriber wants this": ask every call site again now that this one is in place.
        tracing::callsite::rebuild_interest_cache();
        (capture, guard)
    }

    /// Takes what was written since the start or the last `take`.
    pub fn take(&self) -> String {
        let bytes = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
