//! Tests of the engine's contracts, with the in-memory test manager. Tests that depend on time
//! pause tokio's clock and build their pools with `paused`, whose pools read that clock
//! (`Builder::tokio_clock`); the others build with `builder` and run the clock that ships.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::testing::{LogCapture, TestManager};
use crate::{
    AcquireError, Builder, CloseReason, ConnectionPool, DynPool, Registry, TryAcquireError,
    WarmError,
};

fn builder(m: &TestManager) -> Builder<TestManager> {
    ConnectionPool::builder(m.clone()).name("t")
}

/// [`builder`] for a test that pauses tokio's clock: the pool reads that clock too, so its
/// deadlines, idle times, lifetimes and holds move only as the test (or tokio's auto-advance)
/// moves time, never with the machine's speed.
fn paused(m: &TestManager) -> Builder<TestManager> {
    builder(m).tokio_clock()
}

/// Lets other tasks run until `cond` holds; fails rather than spin forever.
async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..100_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("never happened: {what}");
}

/// A pool of `n` connections, all opened and idle.
async fn warm_pool(b: Builder<TestManager>, n: usize) -> ConnectionPool<TestManager> {
    let pool = b.build().unwrap();
    until("warm-up", || pool.state().idle == n).await;
    pool
}

#[test]
fn build_rejects_bad_settings_naming_them() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _guard = rt.enter();
    let m = TestManager::new();
    let cases: Vec<(Builder<TestManager>, &str)> = vec![
        (builder(&m).pool_size(0), "invalid pool setting pool_size = 0: must be at least 1"),
        (builder(&m).max_overflow(usize::MAX), "max_overflow = 18446744073709551615"),
        // A size over the limit names pool_size when it is pool_size that is too large.
        (
            builder(&m).pool_size(100_000).max_overflow(4),
            "invalid pool setting pool_size = 100000: must not exceed 99996, as pool_size + max_overflow (4) must not exceed 100000",
        ),
        (builder(&m).pool_timeout(Duration::ZERO), "pool_timeout = 0ns: must be greater than zero"),
        (builder(&m).connect_timeout(Duration::ZERO), "connect_timeout = 0ns"),
        (builder(&m).pool_recycle(Some(Duration::ZERO)), "pool_recycle = 0ns"),
        (builder(&m).recycle_jitter(0.9), "recycle_jitter = 0.9: must be between 0 and 0.5"),
        (builder(&m).min_idle(Some(11)), "min_idle = 11: must be at most pool_size (10)"),
        (builder(&m).idle_timeout(Some(Duration::ZERO)), "idle_timeout = 0ns"),
        (builder(&m).health_check_interval(Some(Duration::ZERO)), "health_check_interval = 0ns"),
        (builder(&m).max_connecting(0), "max_connecting = 0: must be at least 1"),
        (
            builder(&m).leak_detection_threshold(Some(Duration::ZERO)),
            "leak_detection_threshold = 0ns",
        ),
        (builder(&m).name(""), "invalid pool setting name = \"\": must not be empty"),
        // Durations a `u64` of nanoseconds past now cannot hold are refused, not a panic later.
        (
            builder(&m).pool_timeout(Duration::MAX),
            "pool_timeout = 18446744073709551615.999999999s: must be at most 100 years",
        ),
        (
            builder(&m).pool_recycle(Some(Duration::MAX)),
            "pool_recycle = 18446744073709551615.999999999s: must be at most 100 years (use `None` for never)",
        ),
        (
            builder(&m).pre_ping_bypass(crate::MAX_DURATION + Duration::from_secs(1)),
            "pre_ping_bypass = 3153600001s",
        ),
        (
            builder(&m).idle_timeout(Some(Duration::MAX)),
            "idle_timeout = 18446744073709551615.999999999s",
        ),
    ];
    for (b, expected) in cases {
        let err = b.build().unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
}

#[test]
fn build_outside_a_runtime_is_an_error() {
    let err = builder(&TestManager::new()).build().unwrap_err();
    assert_eq!(err, crate::BuildError::NoRuntime);
}

#[test]
fn pool_guard_and_acquire_future_are_send() {
    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}
    send_sync::<ConnectionPool<TestManager>>();
    send_sync::<Registry>();
    fn guard_is_send(g: crate::PooledConnection<TestManager>) -> impl Send {
        g
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let pool = builder(&TestManager::new()).build().unwrap();
        let acquire = pool.acquire();
        send(&acquire);
        let try_acquire = pool.try_acquire();
        send(&try_acquire);
        let for_caller =
            pool.acquire_for_caller(Duration::from_secs(1), std::panic::Location::caller());
        send(&for_caller);
        let warmed = pool.warmed(Duration::from_secs(1));
        send(&warmed);
        let close = pool.close();
        send(&close);
        send(&guard_is_send(acquire.await.unwrap()));
    });
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_first_come_first_served_without_barging() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1).max_overflow(0), 1).await;
    let held = pool.acquire().await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (p, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let conn = p.acquire().await.unwrap();
            order.lock().unwrap().push(i);
            drop(conn);
        }));
        until("queued", || pool.state().waiting == i + 1).await;
    }
    drop(held);
    // The connection went straight to the oldest waiter: a newcomer cannot take it.
    assert!(matches!(pool.try_acquire().await, Err(TryAcquireError::NoneIdle { .. })));
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    assert_eq!(pool.stats().waits, 5);
}

#[tokio::test(start_paused = true)]
async fn dropped_acquires_lose_nothing() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2).max_overflow(0), 2).await;
    let a = pool.acquire().await.unwrap();
    let b = pool.acquire().await.unwrap();
    // Ten queued callers; every other one goes away while waiting.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move { p.acquire().await.map(drop) }));
        until("queued", || pool.state().waiting == i + 1).await;
    }
    for t in tasks.iter().step_by(2) {
        t.abort();
    }
    until("aborted waiters left the queue", || pool.state().waiting == 5).await;
    // A connection handed to a waiter whose task is cancelled before it runs comes back.
    drop(a);
    tasks[1].abort();
    drop(b);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await);
    }
    let served = outcomes.iter().filter(|o| matches!(o, Ok(Ok(())))).count();
    let cancelled = outcomes.iter().filter(|o| matches!(o, Err(e) if e.is_cancelled())).count();
    assert_eq!((served, cancelled), (4, 6));
    until("connections back", || pool.state().idle == 2).await;
    let s = pool.state();
    assert_eq!((s.in_use, s.waiting, s.open), (0, 0, 2));
    assert_eq!(m.counts().live, 2);
    assert_eq!(m.counts().connects, 2, "no connection was lost and replaced");
}

#[tokio::test(start_paused = true)]
async fn a_connection_handed_to_a_dropped_waiter_goes_to_the_next() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1).max_overflow(0), 1).await;
    let held = pool.acquire().await.unwrap();
    let first = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(drop) }
    });
    until("queued", || pool.state().waiting == 1).await;
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(|c| c.id()) }
    });
    until("queued", || pool.state().waiting == 2).await;
    drop(held); // handed to `first`, which has not run yet
    first.abort();
    assert_eq!(second.await.unwrap().unwrap(), 1);
    assert_eq!(m.counts().connects, 1);
}

#[tokio::test(start_paused = true)]
async fn timeout_error_reports_the_wait_and_the_pool_state() {
    let m = TestManager::new();
    let pool =
        warm_pool(paused(&m).pool_size(1).max_overflow(0).pool_timeout(Duration::from_secs(2)), 1)
            .await;
    let _held = pool.acquire().await.unwrap();
    let err = pool.acquire().await.unwrap_err();
    let AcquireError::Timeout(t) = &err else { panic!("expected a timeout, got {err}") };
    assert!(t.waited >= Duration::from_secs(2), "{:?}", t.waited);
    assert_eq!((t.state.in_use, t.state.waiting, t.state.idle, t.state.pool_size), (1, 0, 0, 1));
    assert!(t.last_error.is_none());
    let msg = err.to_string();
    assert!(msg.starts_with("pool \"t\" timed out after 2"), "{msg}");
    assert!(
        msg.contains("(1 in use, 0 idle, 0 waiting, 0 connecting, limit 1 + 0 overflow)"),
        "{msg}"
    );
    assert_eq!(pool.stats().timeouts, 1);
    assert_eq!(pool.state().waiting, 0, "the timed-out waiter left the queue");
}

#[tokio::test(start_paused = true)]
async fn timeout_error_carries_the_last_connect_error() {
    let m = TestManager::new();
    m.fail_connects(true);
    let pool = paused(&m)
        .min_idle(Some(0))
        .breaker_threshold(0)
        .pool_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let err = pool.acquire().await.unwrap_err();
    let msg = err.to_string();
    assert!(err.is_timeout(), "{msg}");
    assert!(msg.ends_with("; last connect error: test manager: connection refused"), "{msg}");
    assert!(pool.stats().connect_errors >= 2, "connects were retried with backoff");
    assert!(pool.state().connect_failures >= 2);
    assert_eq!(pool.last_connect_error().unwrap().to_string(), "test manager: connection refused");
    m.fail_connects(false);
    assert!(pool.acquire().await.is_ok(), "the pool heals once connects succeed");
    assert_eq!(pool.state().connect_failures, 0);
    assert!(pool.last_connect_error().is_none());
}

#[tokio::test(start_paused = true)]
async fn lifo_hands_out_the_most_recently_returned_and_fifo_the_oldest() {
    for (lifo, expected) in [(true, 3), (false, 1)] {
        let m = TestManager::new();
        let pool = warm_pool(paused(&m).pool_size(3).pool_use_lifo(lifo), 3).await;
        let conns = [
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
            pool.acquire().await.unwrap(),
        ];
        let ids: Vec<u64> = conns.iter().map(|c| c.id()).collect();
        for c in conns {
            drop(c); // returned in order ids[0], ids[1], ids[2]
        }
        let next = pool.acquire().await.unwrap();
        assert_eq!(next.id(), ids[expected - 1], "lifo = {lifo}");
    }
}

#[tokio::test(start_paused = true)]
async fn overflow_is_opened_under_load_and_retired_once_idle() {
    let m = TestManager::new();
    let b = paused(&m)
        .pool_size(2)
        .max_overflow(2)
        .pool_timeout(Duration::from_secs(1))
        .idle_timeout(Some(Duration::from_secs(10)))
        .health_check_interval(Some(Duration::from_secs(1)));
    let pool = warm_pool(b, 2).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.acquire().await.unwrap());
    }
    let s = pool.stats();
    assert_eq!((s.open, s.overflow, s.in_use), (4, 2, 4));
    assert!(
        pool.acquire().await.unwrap_err().is_timeout(),
        "pool_size + max_overflow is the limit"
    );
    drop(held);
    tokio::time::sleep(Duration::from_secs(12)).await;
    let s = pool.stats();
    assert_eq!((s.open, s.overflow, s.idle), (2, 0, 2));
    assert_eq!(s.closed.get(CloseReason::Idle), 2);
    assert_eq!(m.counts().live, 2);
}

#[tokio::test(start_paused = true)]
async fn lifetimes_are_spread_by_jitter_and_never_cut_a_user_short() {
    let m = TestManager::new();
    let b = paused(&m)
        .pool_size(20)
        .pool_recycle(Some(Duration::from_secs(100)))
        .recycle_jitter(0.2)
        .health_check_interval(Some(Duration::from_secs(1)));
    let pool = warm_pool(b, 20).await;
    let held = pool.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(79_500)).await;
    assert_eq!(pool.stats().closed.get(CloseReason::Recycled), 0, "nothing expires before 80 s");
    let mut retired_per_second = Vec::new();
    let mut last = 0;
    for _ in 0..22 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = pool.stats().closed.get(CloseReason::Recycled);
        retired_per_second.push(now - last);
        last = now;
    }
    assert_eq!(last, 19, "every idle connection was recycled: {retired_per_second:?}");
    let busiest = retired_per_second.iter().max().copied().unwrap_or(0);
    assert!(
        busiest < 10,
        "retirements are spread over time, not all at once: {retired_per_second:?}"
    );
    // The held connection outlived its lifetime in its user's hands and retires on return.
    assert_eq!(held.id(), held.id());
    drop(held);
    assert_eq!(pool.stats().closed.get(CloseReason::Recycled), 20);
    until("replacements", || pool.state().idle == 20).await;
    assert_eq!(m.counts().live, 20);
}

#[tokio::test(start_paused = true)]
async fn pre_ping_skips_recent_connections_and_replaces_failed_ones() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1).health_check_interval(None), 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let first = pool.acquire().await.unwrap().id();
    assert_eq!(m.counts().checks, 1, "idle past the bypass window: checked");
    let again = pool.acquire().await.unwrap().id();
    assert_eq!(m.counts().checks, 1, "used a moment ago: not checked");
    assert_eq!(first, again);
    m.fail_next_checks(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let replaced = pool.acquire().await.unwrap().id();
    assert_ne!(replaced, first, "the connection that failed its check was replaced");
    let s = pool.stats();
    assert_eq!(s.closed.get(CloseReason::FailedCheck), 1);
    assert_eq!(s.connections_created, 2);
}

#[tokio::test(start_paused = true)]
async fn try_acquire_whose_pre_ping_hangs_finds_none_idle_and_counts_no_timeout() {
    let m = TestManager::new();
    let pool = warm_pool(
        paused(&m).pool_size(1).health_check_interval(None).connect_timeout(Duration::from_secs(1)),
        1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.set_check_delay(Duration::from_secs(60));
    let err = pool.try_acquire().await.unwrap_err();
    assert!(matches!(err, TryAcquireError::NoneIdle { .. }), "the pool is open: {err}");
    assert_eq!(pool.stats().timeouts, 0, "a call that never queues did not time out");
}

/// Polls `f` to completion on this thread, with no tokio runtime around: what a caller on
/// another executor does.
fn block_on_plain_thread<F: std::future::Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// A runtime of its own for tests that poll from outside it, with one worker thread.
fn one_worker_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

#[test]
fn an_acquire_polled_outside_any_runtime_runs_its_check_on_the_pools_runtime() {
    let (rt, m) = (one_worker_runtime(), TestManager::new());
    let pool = rt.block_on(async {
        let b =
            builder(&m).pool_size(1).pre_ping_bypass(Duration::ZERO).health_check_interval(None);
        warm_pool(b, 1).await
    });
    let p = pool.clone();
    let id = std::thread::spawn(move || {
        assert!(tokio::runtime::Handle::try_current().is_err(), "no runtime on this thread");
        block_on_plain_thread(p.acquire()).map(|c| c.id())
    })
    .join()
    .expect("no panic outside the runtime")
    .expect("a connection");
    assert_eq!(m.counts().checks, 1, "the idle connection was checked first");
    let s = pool.state();
    assert_eq!((s.in_use, s.idle, s.open), (0, 1, 1), "given back, nothing lost");
    assert_eq!(rt.block_on(pool.acquire()).unwrap().id(), id);
}

#[tokio::test(start_paused = true)]
async fn an_acquire_timeout_too_long_to_add_to_now_waits_instead_of_panicking() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1).max_overflow(0), 1).await;
    let held = pool.acquire().await.unwrap();
    let p = pool.clone();
    let waiter =
        tokio::spawn(async move { p.acquire_timeout(Duration::MAX).await.map(|c| c.id()) });
    until("queued", || pool.state().waiting == 1).await;
    let id = held.id();
    drop(held);
    assert_eq!(waiter.await.unwrap().unwrap(), id, "served by the returned connection");
}

#[tokio::test(start_paused = true)]
async fn a_connection_lifetime_of_a_century_is_kept_not_a_panic() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1).pool_recycle(Some(crate::MAX_DURATION)), 1).await;
    let id = pool.acquire().await.unwrap().id();
    assert_eq!(pool.acquire().await.unwrap().id(), id, "the same connection, not expired");
}

#[tokio::test(start_paused = true)]
async fn warm_up_opens_min_idle_connections() {
    let m = TestManager::new();
    let pool = paused(&m).pool_size(5).min_idle(Some(3)).build().unwrap();
    m.wait_until(|c| c.connects == 3).await;
    until("warm connections idle", || pool.state().idle == 3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(m.counts().connects, 3, "no more than min_idle");
    let default = paused(&m).name("d").pool_size(4).build().unwrap();
    until("warm to pool_size by default", || default.state().idle == 4).await;
}

#[tokio::test(start_paused = true)]
async fn warmed_returns_once_min_idle_connections_are_open() {
    let m = TestManager::new();
    m.set_connect_delay(Duration::from_millis(100));
    let pool = paused(&m).pool_size(5).min_idle(Some(3)).max_connecting(2).build().unwrap();
    let start = tokio::time::Instant::now();
    pool.warmed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200), "two rounds of two parallel connects");
    assert_eq!(pool.state().idle, 3);
    assert_eq!(m.counts().connects, 3);
    let start = tokio::time::Instant::now();
    pool.warmed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "warm already");
}

#[tokio::test(start_paused = true)]
async fn warmed_is_woken_by_each_connect_not_by_a_timer() {
    let m = TestManager::new();
    m.hold_connects();
    let start = tokio::time::Instant::now();
    let pool = paused(&m).pool_size(2).build().unwrap();
    let warmed = tokio::spawn({
        let pool = pool.clone();
        async move { pool.warmed(Duration::from_secs(3600)).await }
    });
    m.wait_until(|c| c.in_flight == 2).await;
    m.release_connects(1);
    until("one open", || pool.state().idle == 1).await;
    tokio::task::yield_now().await;
    assert!(!warmed.is_finished(), "one of two is not warm");
    m.release_connects(1);
    warmed.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "no timer fired on the paused clock");
}

#[tokio::test(start_paused = true)]
async fn warmed_retries_failed_connects_while_it_waits() {
    let m = TestManager::new();
    m.fail_next_connects(4);
    // The maintenance task's round (30 s) comes after the wait's end: only the waiting retries.
    let pool = paused(&m).pool_size(2).build().unwrap();
    pool.warmed(Duration::from_secs(5)).await.unwrap();
    assert_eq!(m.counts().failed_connects, 4);
    assert_eq!(pool.state().idle, 2);
}

#[tokio::test(start_paused = true)]
async fn warmed_times_out_naming_the_pool_the_count_and_the_last_connect_error() {
    let m = TestManager::new();
    m.fail_connects(true);
    // Without the breaker, whose probe would go on trying after the wait.
    let pool = paused(&m).pool_size(3).max_connecting(2).breaker_threshold(0).build().unwrap();
    let err = pool.warmed(Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "pool \"t\" was not warm after 2s: 0 of 3 min_idle connections open; \
         last connect error: test manager: connection refused"
    );
    assert!(matches!(err, WarmError::Timeout { open: 0, wanted: 3, last_error: Some(_), .. }));
    let failed = m.counts().failed_connects;
    assert!(failed > 2, "connects were retried during the wait: {failed}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = m.counts().failed_connects;
    assert!(after <= failed + 2, "retries stop with the wait: {failed} then {after}");
}

#[tokio::test(start_paused = true)]
async fn a_shrink_that_makes_the_pool_warm_wakes_warmed() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2), 2).await;
    m.hold_connects();
    pool.resize(4, 0).unwrap();
    let start = tokio::time::Instant::now();
    let warmed = tokio::spawn({
        let pool = pool.clone();
        async move { pool.warmed(Duration::from_secs(3600)).await }
    });
    m.wait_until(|c| c.in_flight == 2).await;
    tokio::task::yield_now().await;
    assert!(!warmed.is_finished(), "2 of 4 open");
    pool.resize(2, 0).unwrap();
    warmed.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "woken by the resize, not by its timeout");
    assert_eq!(pool.state().idle, 2, "the shrink kept the open connections, not the connects");
    // The connects started for the larger size finish past the limit and are closed.
    m.release_connects(2);
    m.wait_until(|c| c.in_flight == 0 && c.live == 2).await;
    assert_eq!(pool.state().idle, 2);
}

#[tokio::test(start_paused = true)]
async fn warmed_all_waits_for_the_pools_together_and_reports_the_first_cold_one() {
    let (ma, mb, mc) = (TestManager::new(), TestManager::new(), TestManager::new());
    ma.fail_next_connects(4);
    mb.fail_connects(true);
    mc.fail_connects(true);
    let a = paused(&ma).name("a").pool_size(2).build().unwrap();
    let b = paused(&mb).name("b").pool_size(1).build().unwrap();
    let c = paused(&mc).name("c").pool_size(1).build().unwrap();
    let start = tokio::time::Instant::now();
    let err = ConnectionPool::warmed_all([&b, &a, &c], Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(5), "one timeout for all, not one each");
    assert!(
        matches!(&err, WarmError::Timeout { pool, open: 0, wanted: 1, .. } if &**pool == "b"),
        "{err}"
    );
    assert_eq!(a.state().idle, 2, "a retried its failed connects while b was waited for");
    assert_eq!(ma.counts().failed_connects, 4);
    let err = ConnectionPool::warmed_all([&c, &a, &b], Duration::from_secs(1)).await.unwrap_err();
    assert!(matches!(&err, WarmError::Timeout { pool, .. } if &**pool == "c"), "the first: {err}");
    mb.fail_connects(false);
    mc.fail_connects(false);
    ConnectionPool::warmed_all([&a, &b, &c], Duration::from_secs(5)).await.unwrap();
    assert_eq!((b.state().idle, c.state().idle), (1, 1));
    let none: [&ConnectionPool<TestManager>; 0] = [];
    ConnectionPool::warmed_all(none, Duration::ZERO).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn warmed_with_min_idle_zero_returns_at_once() {
    let m = TestManager::new();
    m.hold_connects();
    let pool = paused(&m).min_idle(Some(0)).build().unwrap();
    pool.warmed(Duration::ZERO).await.unwrap();
    assert_eq!(m.counts().in_flight, 0, "nothing to open");
}

#[tokio::test(start_paused = true)]
async fn warmed_fails_when_the_pool_closes() {
    let m = TestManager::new();
    m.hold_connects();
    let pool = paused(&m).pool_size(2).build().unwrap();
    let warmed = tokio::spawn({
        let pool = pool.clone();
        async move { pool.warmed(Duration::from_secs(3600)).await }
    });
    m.wait_until(|c| c.in_flight == 2).await;
    let closing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close().await }
    });
    let err = warmed.await.unwrap().unwrap_err();
    assert_eq!(err.to_string(), "pool \"t\" is closed");
    m.resume_connects();
    closing.await.unwrap().unwrap();
    assert!(matches!(pool.warmed(Duration::ZERO).await, Err(WarmError::Closed { .. })));
}

#[tokio::test(start_paused = true)]
async fn idle_timeout_never_goes_below_min_idle() {
    let m = TestManager::new();
    let b = paused(&m)
        .pool_size(5)
        .min_idle(Some(2))
        .idle_timeout(Some(Duration::from_secs(10)))
        .health_check_interval(Some(Duration::from_secs(1)));
    let pool = warm_pool(b, 2).await;
    let held: Vec<_> = futures_join(&pool, 5).await;
    assert_eq!(pool.state().open, 5);
    drop(held);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let s = pool.stats();
    assert_eq!((s.open, s.idle), (2, 2));
    assert_eq!(s.closed.get(CloseReason::Idle), 3);
}

async fn futures_join(
    pool: &ConnectionPool<TestManager>,
    n: usize,
) -> Vec<crate::PooledConnection<TestManager>> {
    let mut tasks = Vec::new();
    for _ in 0..n {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move { pool.acquire().await.unwrap() }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn max_connecting_bounds_a_connect_storm() {
    let m = TestManager::new();
    m.hold_connects();
    let pool = paused(&m).pool_size(50).min_idle(Some(0)).max_connecting(3).build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move { pool.acquire().await.map(drop) }));
    }
    m.wait_until(|c| c.in_flight == 3).await;
    until("all queued", || pool.state().waiting == 40).await;
    assert_eq!(m.counts().max_in_flight, 3);
    assert_eq!(pool.state().connecting, 3);
    m.resume_connects();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert!(m.counts().max_in_flight <= 3, "{:?}", m.counts());
}

/// A warm one-connection pool that reports connections held over 5 s.
async fn leak_detecting_pool(m: &TestManager) -> ConnectionPool<TestManager> {
    let b = paused(m)
        .pool_size(1)
        .health_check_interval(None)
        .leak_detection_threshold(Some(Duration::from_secs(5)));
    warm_pool(b, 1).await
}

#[tokio::test(start_paused = true)]
async fn a_held_connection_past_the_threshold_is_reported_with_where_it_was_taken() {
    let (capture, _log) = LogCapture::start(tracing::Level::INFO);
    let m = TestManager::new();
    let pool = leak_detecting_pool(&m).await;
    let conn = pool.acquire().await.unwrap();
    let line = line!() - 1;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(pool.stats().leaks_detected, 1);
    drop(conn);
    assert_eq!(pool.stats().leaks_detected, 1, "reported once, then again on return, counted once");
    let log = capture.take();
    let at = format!("src/pool/tests.rs:{line}");
    assert!(log.contains("possible leak") && log.contains(&at), "{log}");
    assert!(log.contains("came back"), "{log}");
    // Named with its backend: a PostgreSQL and a Redis pool may both be `main`.
    assert_eq!(pool.id(), format!("{}:t", <TestManager as crate::Manager>::BACKEND));
    assert!(log.contains(&format!("pool={}", pool.id())), "{log}");
}

/// A wrapper that acquires inside its own `async` code, on its caller's behalf.
#[track_caller]
fn acquire_via_wrapper(
    pool: &ConnectionPool<TestManager>,
) -> impl Future<Output = crate::PooledConnection<TestManager>> + '_ {
    let location = std::panic::Location::caller();
    async move {
        tokio::task::yield_now().await;
        pool.acquire_for_caller(Duration::from_secs(1), location).await.unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn a_leak_report_names_the_location_a_wrapper_passes() {
    let (capture, _log) = LogCapture::start(tracing::Level::INFO);
    let m = TestManager::new();
    let pool = leak_detecting_pool(&m).await;
    let conn = acquire_via_wrapper(&pool).await;
    let line = line!() - 1;
    tokio::time::sleep(Duration::from_secs(8)).await;
    drop(conn);
    let log = capture.take();
    let at = format!("src/pool/tests.rs:{line}:");
    assert_eq!(log.matches(&at).count(), 2, "the caller's line, when held and on return: {log}");
}

#[tokio::test(start_paused = true)]
async fn resize_grows_for_waiters_and_shrinks_without_cutting_users_short() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2).max_overflow(0), 2).await;
    let held = futures_join(&pool, 2).await;
    let mut waiters = Vec::new();
    for i in 0..3 {
        let p = pool.clone();
        waiters.push(tokio::spawn(async move { p.acquire().await.unwrap() }));
        until("queued", || pool.state().waiting == i + 1).await;
    }
    pool.resize(5, 0).unwrap();
    let mut more = Vec::new();
    for w in waiters {
        more.push(w.await.unwrap());
    }
    assert_eq!(pool.state().in_use, 5, "the waiters were served by new connections");
    // Shrink to 1: four connections are in use; they close as they come back.
    drop(more.pop());
    pool.resize(1, 0).unwrap();
    until("the idle one retired at once", || pool.state().open == 4).await;
    assert_eq!(held[0].id(), held[0].id(), "connections in use are still usable");
    drop(held);
    drop(more);
    until("closed", || m.counts().live == 1).await;
    let s = pool.stats();
    assert_eq!((s.open, s.idle, s.pool_size), (1, 1, 1));
    assert_eq!(s.closed.get(CloseReason::Shrink), 4);
    let err = pool.resize(0, 0).unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot resize pool \"t\": invalid pool setting pool_size = 0: must be at least 1"
    );
    assert_eq!(pool.config().pool_size, 1, "a refused resize changes nothing");
}

#[tokio::test(start_paused = true)]
async fn a_shrink_caps_min_idle_and_growing_back_restores_it() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(4).min_idle(Some(3)), 3).await;
    pool.resize(2, 0).unwrap();
    assert_eq!(pool.config().min_idle, Some(2), "capped while the pool is smaller");
    assert_eq!(pool.stats().min_idle, 2);
    pool.resize(4, 0).unwrap();
    assert_eq!(pool.config().min_idle, Some(3), "restored");
    until("min_idle warm again", || pool.state().idle == 3).await;
}

#[tokio::test(start_paused = true)]
async fn close_fails_waiters_and_new_acquires_and_closes_connections_as_they_return() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2).max_overflow(0), 2).await;
    let held = futures_join(&pool, 2).await;
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(drop) }
    });
    until("queued", || pool.state().waiting == 1).await;
    let closing = tokio::spawn({
        let pool = pool.clone();
        async move { pool.close().await }
    });
    until("closed", || pool.is_closed()).await;
    assert!(matches!(waiter.await.unwrap(), Err(AcquireError::Closed { .. })));
    assert_eq!(pool.acquire().await.unwrap_err().to_string(), "pool \"t\" is closed");
    assert!(!closing.is_finished(), "close waits for connections in use");
    drop(held);
    closing.await.unwrap().unwrap();
    assert_eq!(m.counts().live, 0);
    assert_eq!(pool.stats().closed.get(CloseReason::PoolClosed), 2);
    assert!(pool.resize(3, 0).is_err());
    assert!(pool.close().await.is_ok(), "closing twice is harmless");
}

#[tokio::test(start_paused = true)]
async fn close_gives_up_after_pool_timeout_and_says_what_is_still_out() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1).pool_timeout(Duration::from_secs(1)), 1).await;
    let held = pool.acquire().await.unwrap();
    let err = pool.close().await.unwrap_err();
    assert_eq!(err.in_use, 1);
    assert!(err.to_string().contains("1 connection(s) were still in use"), "{err}");
    drop(held);
    until("closed on return", || m.counts().live == 0).await;
}

#[tokio::test(start_paused = true)]
async fn returned_connections_are_reset_or_closed_before_reuse() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1), 1).await;
    let mut conn = pool.acquire().await.unwrap();
    conn.dirty = true;
    drop(conn);
    until("reset", || pool.state().idle == 1).await;
    assert_eq!(m.counts().resets, 1);
    let conn = pool.acquire().await.unwrap();
    assert!(!conn.dirty, "the next user gets a clean connection");
    let id = conn.id();
    drop(conn);
    m.fail_resets(true);
    let mut conn = pool.acquire().await.unwrap();
    conn.dirty = true;
    drop(conn);
    until("replaced", || pool.state().idle == 1).await;
    let mut conn = pool.acquire().await.unwrap();
    assert_ne!(conn.id(), id, "a connection whose reset failed was closed");
    conn.broken = true;
    drop(conn);
    until("replaced", || pool.state().idle == 1).await;
    let s = pool.stats();
    assert_eq!((s.closed.get(CloseReason::FailedReset), s.closed.get(CloseReason::Broken)), (1, 1));
}

/// A connection being reset after its return is the pool's, not its user's: it no longer
/// counts in use, and a caller that finds nothing idle waits for it instead of opening an
/// overflow connection; if the reset fails, a connect starts for that caller then.
#[tokio::test(start_paused = true)]
async fn a_caller_waits_for_a_connection_being_reset_rather_than_opening_another() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(1).max_overflow(5), 1).await;
    m.set_reset_delay(Duration::from_millis(100));
    let mut conn = pool.acquire().await.unwrap();
    let id = conn.id();
    conn.dirty = true;
    drop(conn);
    let state = pool.state();
    assert_eq!((state.in_use, state.idle, state.open), (0, 0, 1), "being reset: {state}");
    let conn = pool.acquire().await.unwrap();
    assert_eq!(conn.id(), id, "the caller got the connection once reset");
    assert_eq!(m.counts().connects, 1, "no overflow connection was opened");
    assert_eq!(pool.stats().peak_in_use, 1);
    drop(conn);

    m.fail_resets(true);
    let mut conn = pool.acquire().await.unwrap();
    conn.dirty = true;
    drop(conn);
    let conn = pool.acquire().await.unwrap();
    assert_ne!(conn.id(), id, "the reset failed: a new connection serves the caller");
    assert_eq!(m.counts().connects, 2);
}

#[tokio::test(start_paused = true)]
async fn detach_takes_a_connection_out_and_the_pool_replaces_it() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2), 2).await;
    let raw = pool.acquire().await.unwrap().detach();
    until("replaced", || pool.state().idle == 2).await;
    assert_eq!(m.counts().live, 3, "the detached one is the caller's");
    drop(raw);
    let discarded = pool.acquire().await.unwrap();
    discarded.discard();
    let s = pool.stats();
    assert_eq!(s.closed.get(CloseReason::Detached), 2);
}

#[tokio::test(start_paused = true)]
async fn reset_stats_zeroes_counters_and_peaks_but_not_gauges() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(3), 3).await;
    let held = futures_join(&pool, 3).await;
    drop(held);
    let one = pool.acquire().await.unwrap();
    let before = pool.stats();
    assert_eq!((before.acquires, before.peak_in_use, before.connections_created), (4, 3, 3));
    DynPool::reset_stats(&pool);
    let after = pool.stats();
    assert_eq!((after.acquires, after.peak_in_use, after.connections_created), (0, 1, 0));
    assert_eq!((after.in_use, after.idle, after.open), (1, 2, 3));
    drop(one);
}

#[tokio::test(start_paused = true)]
async fn in_use_time_integrates_connections_in_use_up_to_the_snapshot() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2), 2).await;
    let in_use = || pool.stats().in_use_time.as_secs_f64();
    let ten = Duration::from_secs(10);
    let (a, b) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    tokio::time::advance(ten).await;
    assert_eq!(in_use(), 20.0, "two out for 10 s, counted up to the snapshot");
    // A caller waits; a's connection goes straight to it: still two in use.
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.unwrap() }
    });
    tokio::task::yield_now().await;
    drop(a);
    let c = waiter.await.unwrap();
    tokio::time::advance(ten).await;
    assert_eq!(in_use(), 40.0);
    // Every way a hold ends stops its time: given back, discarded, detached, broken, or
    // given back for a reset (the pool's from then on).
    c.discard();
    tokio::time::advance(ten).await;
    assert_eq!(in_use(), 50.0, "b alone");
    let raw = b.detach();
    tokio::time::advance(ten).await;
    assert_eq!(in_use(), 50.0, "none");
    drop(raw);
    until("replaced", || pool.state().idle == 2).await;
    let mut broken = pool.acquire().await.unwrap();
    let mut dirty = pool.acquire().await.unwrap();
    tokio::time::advance(ten).await;
    broken.broken = true;
    drop(broken);
    // Its replacement opens before time moves on, so that nothing but `dirty` is out.
    until("replaced", || pool.state().idle == 1).await;
    tokio::time::advance(ten).await;
    dirty.dirty = true;
    drop(dirty);
    tokio::time::advance(ten).await;
    assert_eq!(in_use(), 80.0);
    assert_eq!(m.counts().resets, 1, "the dirty one was reset");

    // A reset starts it again from zero; a connection out across the reset counts from it.
    let d = pool.acquire().await.unwrap();
    tokio::time::advance(ten).await;
    DynPool::reset_stats(&pool);
    let after = pool.stats();
    assert_eq!((after.in_use_time, after.resets), (Duration::ZERO, 1));
    tokio::time::advance(ten).await;
    assert_eq!(in_use(), 10.0);
    drop(d);
    tokio::time::advance(ten).await;
    assert_eq!(in_use(), 10.0);
}

#[tokio::test(start_paused = true)]
async fn pool_trait_and_registry_see_any_pool() {
    let m = TestManager::new();
    let registry = Registry::new();
    let pool: Arc<dyn DynPool> = Arc::new(warm_pool(paused(&m).name("main").pool_size(2), 2).await);
    registry.register(pool.clone()).unwrap();
    let err = registry.register(pool.clone()).unwrap_err();
    assert_eq!(err.to_string(), "a pool with id \"test:main\" is already registered");
    // Another backend may use the same name; a bare name is then ambiguous.
    #[derive(Debug)]
    struct Other;
    impl crate::Manager for Other {
        type Connection = ();
        type Error = std::io::Error;
        const BACKEND: &'static str = "other";
        async fn connect(&self) -> Result<(), std::io::Error> {
            Ok(())
        }
        async fn check(&self, _: &mut ()) -> Result<(), std::io::Error> {
            Ok(())
        }
    }
    registry
        .register(Arc::new(
            ConnectionPool::builder(Other).name("main").tokio_clock().build().unwrap(),
        ))
        .unwrap();
    let err = registry.resolve("main").unwrap_err().to_string();
    assert_eq!(err, "\"main\" names several pools (other:main, test:main); use one of those ids");
    assert_eq!(registry.get("other:main").unwrap().backend(), "other");
    assert_eq!(registry.ids(), vec!["other:main".to_owned(), "test:main".to_owned()]);
    registry.remove("other:main").unwrap();
    let p = registry.get("main").unwrap();
    assert_eq!(crate::pool_id(p.as_ref()), "test:main");
    assert_eq!((p.name(), p.backend(), p.config().pool_size), ("main", "test", 2));
    let health = p.health().await;
    assert!(health.healthy, "{health:?}");
    m.fail_checks(true);
    let health = p.health().await;
    assert!(!health.healthy);
    assert_eq!(health.error.as_deref(), Some("check failed: test manager: check failed"));
    p.resize(4, 1).unwrap();
    assert_eq!((p.stats().pool_size, p.stats().max_overflow), (4, 1));
    assert!(registry.get("nope").is_none());
    assert_eq!(registry.ids(), vec!["test:main".to_owned()]);
}

/// A health check on an idle connection is the pool's own check, not a checkout: the counters
/// and histograms a dashboard reads as load do not move, and the connection goes back idle.
#[tokio::test]
async fn health_check_on_an_idle_connection_is_not_a_checkout() {
    let m = TestManager::new();
    let pool = warm_pool(builder(&m).pool_size(2).health_check_interval(None), 2).await;
    drop(pool.acquire().await.unwrap());
    let before = pool.stats();
    let checks = m.counts().checks;

    pool.check_health().await.unwrap();
    let after = pool.stats();
    assert_eq!(m.counts().checks, checks + 1, "one real check ran");
    assert_eq!(after.acquires, before.acquires);
    assert_eq!(after.wait_time.counts, before.wait_time.counts);
    assert_eq!(after.use_time.counts, before.use_time.counts);
    assert_eq!(pool.state().idle, 2, "the connection is back idle");
    assert_eq!(pool.state().in_use, 0);

    m.fail_next_checks(1);
    let err = pool.check_health().await.unwrap_err();
    assert_eq!(err, "check failed: test manager: check failed");
    assert_eq!(pool.stats().closed.get(CloseReason::FailedCheck), 1);
    assert_eq!(pool.stats().acquires, before.acquires, "a failed check is no checkout either");
    m.wait_until(|c| c.live == 2).await; // the pool tops itself up again
}

/// With every connection in use, the health check queues like any caller (and counts as a
/// checkout); a connection returned goes to it.
#[tokio::test]
async fn health_check_with_none_idle_waits_for_a_connection() {
    let m = TestManager::new();
    let pool = warm_pool(builder(&m).pool_size(1).max_overflow(0), 1).await;
    let held = pool.acquire().await.unwrap();
    let acquires = pool.stats().acquires;
    let health = tokio::spawn({
        let pool = pool.clone();
        async move { pool.check_health().await }
    });
    until("the health check queues", || pool.state().waiting == 1).await;
    drop(held);
    assert!(health.await.unwrap().is_ok());
    assert_eq!(pool.stats().acquires, acquires + 1);
    assert_eq!(pool.state().idle, 1);
}

/// Dropping a health check in the middle of its check loses nothing: the check finishes in its
/// own task and the connection goes back idle.
#[tokio::test(start_paused = true)]
async fn health_check_dropped_mid_check_gives_the_connection_back() {
    let m = TestManager::new();
    let pool =
        warm_pool(paused(&m).pool_size(1).max_overflow(0).health_check_interval(None), 1).await;
    m.set_check_delay(Duration::from_secs(1));
    let health = tokio::spawn({
        let pool = pool.clone();
        async move { pool.check_health().await }
    });
    until("the check takes the connection", || pool.state().idle == 0).await;
    assert_eq!(pool.state().in_use, 0, "a health check is not a user");
    health.abort();
    assert!(health.await.unwrap_err().is_cancelled());
    m.wait_until(|c| c.checks == 1).await;
    until("the connection is back", || pool.state().idle == 1).await;
    assert_eq!(pool.state().open, 1);
    assert!(pool.try_acquire().await.is_ok());
}

/// 1,000 tasks with random hold times and cancellations, random connect and check failures,
/// and resizes in the middle; afterwards every invariant holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_keeps_every_invariant() {
    const TASKS: usize = 1000;
    let m = TestManager::new();
    m.set_failure_rates(0.05, 0.05);
    let pool = builder(&m)
        .pool_size(8)
        .max_overflow(4)
        .pre_ping_bypass(Duration::ZERO)
        .pool_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let (ok, failed, cancelled) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (pool, ok, failed, cancelled) =
            (pool.clone(), ok.clone(), failed.clone(), cancelled.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(i as u64);
            for _ in 0..5 {
                let give_up = Duration::from_micros(rng.u64(0..2000));
                let result = match rng.u8(0..3) {
                    0 => tokio::time::timeout(give_up, pool.acquire()).await,
                    1 => Ok(pool.acquire_timeout(Duration::from_millis(rng.u64(1..4))).await),
                    _ => Ok(pool.acquire().await),
                };
                match result {
                    Ok(Ok(mut conn)) => {
                        ok.fetch_add(1, SeqCst);
                        for _ in 0..rng.usize(0..5) {
                            tokio::task::yield_now().await;
                        }
                        if rng.u8(0..20) == 0 {
                            tokio::time::sleep(Duration::from_micros(rng.u64(0..500))).await;
                        }
                        match rng.u8(0..50) {
                            0 => conn.broken = true,
                            1 => conn.dirty = true,
                            2 => conn.discard(),
                            _ => drop(conn),
                        }
                    }
                    Ok(Err(_)) => drop(failed.fetch_add(1, SeqCst)),
                    Err(_) => drop(cancelled.fetch_add(1, SeqCst)),
                }
            }
        }));
    }
    let resizer = tokio::spawn({
        let pool = pool.clone();
        async move {
            for (size, overflow) in [(4, 2), (12, 4), (2, 0), (8, 4)] {
                tokio::time::sleep(Duration::from_millis(20)).await;
                pool.resize(size, overflow).unwrap();
            }
        }
    });
    for t in tasks {
        t.await.unwrap();
    }
    resizer.await.unwrap();
    m.set_failure_rates(0.0, 0.0);
    let total = ok.load(SeqCst) + failed.load(SeqCst) + cancelled.load(SeqCst);
    assert_eq!(total, TASKS * 5, "every acquire succeeded, failed or was cancelled");
    assert!(ok.load(SeqCst) > 0 && failed.load(SeqCst) > 0 && cancelled.load(SeqCst) > 0);
    // Let background connects, checks and closes settle.
    settle(|| {
        let s = pool.state();
        s.connecting == 0 && s.in_use == 0 && m.counts().live == s.open
    })
    .await;
    let s = pool.stats();
    assert_eq!((s.waiting, s.in_use), (0, 0));
    assert_eq!(s.connections_created - s.connections_closed, s.open as u64);
    // Connection-time in use covers every hold the use-time histogram counted (and, from the
    // moment a connection is counted in use, its pre-ping or hand-off too), never more than
    // the most connections in use at once for the whole run.
    let tolerance = Duration::from_millis(1);
    assert!(
        s.in_use_time + tolerance >= s.use_time.sum,
        "{:?} < {:?}",
        s.in_use_time,
        s.use_time.sum
    );
    assert!(
        s.in_use_time <= started.elapsed() * s.peak_in_use as u32,
        "{:?} over {:?} with at most {} in use",
        s.in_use_time,
        started.elapsed(),
        s.peak_in_use
    );
    assert!(m.counts().max_live <= 16, "never more than the largest limit: {:?}", m.counts());
    assert!(s.open <= 12);
    pool.close().await.unwrap();
    settle(|| m.counts().live == 0).await;
}

/// Polls `cond` on a real clock until it holds, for background work on other threads (a
/// connect may sit in its backoff for up to 2 s); fails after 30 s.
async fn settle(cond: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "the pool never settled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[derive(Debug, Default)]
struct Events(Mutex<Vec<(&'static str, Duration)>>);

impl crate::Observer for Events {
    fn acquired(&self, wait: Duration) {
        self.0.lock().unwrap().push(("acquired", wait));
    }
    fn released(&self, held: Duration) {
        self.0.lock().unwrap().push(("released", held));
    }
    fn connected(&self, took: Duration) {
        self.0.lock().unwrap().push(("connected", took));
    }
}

#[tokio::test(start_paused = true)]
async fn an_observer_sees_every_timed_event_as_it_happens() {
    let m = TestManager::new();
    m.set_connect_delay(Duration::from_millis(30));
    let pool = paused(&m).pool_size(1).min_idle(Some(0)).build().unwrap();
    let events = Arc::new(Events::default());
    pool.set_observer(events.clone()).unwrap();
    let err = pool.set_observer(events.clone()).unwrap_err();
    assert_eq!(err.to_string(), "pool \"t\" has an observer attached already");
    let conn = pool.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(conn);
    let _again = pool.acquire().await.unwrap();
    let seen = events.0.lock().unwrap().clone();
    let expected = vec![
        ("connected", Duration::from_millis(30)),
        ("acquired", Duration::from_millis(30)),
        ("released", Duration::from_millis(200)),
        ("acquired", Duration::ZERO),
    ];
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn a_resize_over_the_size_limit_names_the_setting_it_changed() {
    let m = TestManager::new();
    // No warm connections, so growing opens nothing.
    let pool = paused(&m).pool_size(2).max_overflow(4).min_idle(Some(0)).build().unwrap();
    let err = pool.resize(100_000, 4).unwrap_err().to_string();
    assert_eq!(
        err,
        "cannot resize pool \"t\": invalid pool setting pool_size = 100000: must not exceed 99996, as pool_size + max_overflow (4) must not exceed 100000"
    );
    pool.resize(99_990, 0).unwrap();
    // pool_size is the larger, but max_overflow is what this resize changed.
    let err = pool.resize(99_990, 20).unwrap_err().to_string();
    assert!(err.contains("invalid pool setting max_overflow = 20: must not exceed 10"), "{err}");
    assert_eq!(
        (pool.config().pool_size, pool.config().max_overflow),
        (99_990, 0),
        "a refused resize changes nothing"
    );
}

#[test]
fn a_queued_acquire_outside_any_runtime_starts_its_connect_on_the_pools_runtime() {
    let (rt, m) = (one_worker_runtime(), TestManager::new());
    let pool = rt.block_on(async {
        let b = builder(&m)
            .pool_size(1)
            .max_overflow(1)
            .pool_timeout(Duration::from_secs(60))
            .health_check_interval(None);
        warm_pool(b, 1).await
    });
    let held = rt.block_on(pool.acquire()).unwrap();
    let p = pool.clone();
    let (id, waited) = std::thread::spawn(move || {
        assert!(tokio::runtime::Handle::try_current().is_err(), "no runtime on this thread");
        let conn = block_on_plain_thread(p.acquire()).expect("an overflow connection");
        (conn.id(), p.stats().connections_created)
    })
    .join()
    .expect("no panic outside the runtime");
    assert_ne!(id, held.id());
    assert_eq!(waited, 2, "the overflow connect ran on the pool's runtime");
    assert_eq!(m.counts().connects, 2);
}

#[tokio::test(start_paused = true)]
async fn growing_under_load_keeps_the_overflow_connections_that_come_back() {
    let m = TestManager::new();
    let b = paused(&m).pool_size(2).max_overflow(4).health_check_interval(None);
    let pool = warm_pool(b, 2).await;
    let held = futures_join(&pool, 5).await;
    pool.resize(2, 6).unwrap();
    drop(held);
    let s = pool.stats();
    assert_eq!(s.closed.get(CloseReason::Shrink), 0, "a grow retires nothing");
    assert_eq!(s.idle, 5, "overflow stays until idle_timeout");
    // Nor does a grow with the overflow idle.
    pool.resize(3, 6).unwrap();
    assert_eq!(pool.stats().idle, 5, "idle overflow stays too");
    // A shrink under load retires what comes back beyond the new size: past the new
    // `max_size` (one), then within it, as the shrink's debt (two).
    let held = futures_join(&pool, 5).await;
    pool.resize(2, 2).unwrap();
    drop(held);
    let s = pool.stats();
    assert_eq!((s.closed.get(CloseReason::Shrink), s.idle), (3, 2));
}

#[tokio::test(start_paused = true)]
async fn without_health_checks_idle_overflow_still_times_out() {
    let m = TestManager::new();
    let b = paused(&m)
        .pool_size(1)
        .max_overflow(2)
        .idle_timeout(Some(Duration::from_secs(10)))
        .health_check_interval(None);
    let pool = warm_pool(b, 1).await;
    drop(futures_join(&pool, 3).await);
    assert_eq!(pool.state().idle, 3);
    tokio::time::sleep(Duration::from_secs(25)).await;
    let s = pool.stats();
    assert_eq!((s.idle, s.closed.get(CloseReason::Idle)), (1, 2));
    assert_eq!(m.counts().checks, 0, "no health checks were asked for");
}

#[tokio::test(start_paused = true)]
async fn a_close_that_hangs_is_bounded_and_frees_its_slot() {
    let m = TestManager::new();
    let b = paused(&m)
        .pool_size(2)
        .connect_timeout(Duration::from_secs(5))
        .pool_timeout(Duration::from_secs(30));
    let pool = warm_pool(b, 2).await;
    m.set_close_delay(Duration::from_secs(3600));
    pool.resize(1, 0).unwrap();
    assert_eq!(pool.state().open, 2, "the retired connection is closing");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(pool.state().open, 1, "its slot is free after connect_timeout");
    pool.close().await.expect("every close is bounded, so close() finishes");
    assert_eq!(m.counts().live, 0);
}

#[tokio::test(start_paused = true)]
async fn a_pool_closed_while_a_connect_backs_off_does_not_try_again() {
    let m = TestManager::new();
    m.fail_connects(true);
    let pool = paused(&m).pool_size(1).pool_timeout(Duration::from_secs(600)).build().unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire().await.map(drop) }
    });
    m.wait_until(|c| c.failed_connects >= 2).await;
    // The connect slot now sleeps out its backoff.
    let failed = m.counts().failed_connects;
    pool.close().await.unwrap();
    assert!(matches!(waiter.await.unwrap(), Err(AcquireError::Closed { .. })));
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(m.counts().failed_connects, failed, "no attempt after the pool closed");
    assert_eq!(pool.state().connecting, 0);
}

#[tokio::test(start_paused = true)]
async fn after_a_shrink_connects_in_flight_do_not_push_out_established_connections() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2).max_overflow(0), 2).await;
    let held = futures_join(&pool, 2).await;
    m.hold_connects();
    pool.resize(4, 0).unwrap();
    m.wait_until(|c| c.in_flight == 2).await;
    pool.resize(2, 0).unwrap();
    drop(held);
    let s = pool.stats();
    assert_eq!((s.idle, s.closed.get(CloseReason::Shrink)), (2, 0), "{s:?}");
    m.resume_connects();
    until("connects done", || pool.state().connecting == 0).await;
    until("closed past the limit", || m.counts().live == 2).await;
    assert_eq!(pool.state().open, 2);
}

/// A backend that panics fails the one operation; the pool's counts stay right and it goes
/// on serving.
#[tokio::test(start_paused = true)]
async fn a_panicking_backend_fails_one_operation_and_loses_no_slot() {
    use crate::testing::Op;

    // Connects: both warm-up connects panic (max_connecting is 2); the pool still connects.
    let m = TestManager::new();
    m.panic_next(Op::Connect);
    m.panic_next(Op::Connect);
    let pool = paused(&m).pool_size(2).health_check_interval(None).build().unwrap();
    until("warm-up over", || pool.state().connecting == 0).await;
    let err = pool.last_connect_error().expect("the panics are connect errors").to_string();
    assert!(err.contains("panicked on purpose"), "{err}");
    let conn = pool.acquire_timeout(Duration::from_secs(5)).await.expect("a slot is free");
    drop(conn);

    // A pre-ping, a reset, `is_broken` and `needs_reset` on return, a close.
    let m = TestManager::new();
    let b = paused(&m).pool_size(1).pre_ping_bypass(Duration::ZERO).health_check_interval(None);
    let pool = warm_pool(b, 1).await;
    m.panic_next(Op::Check);
    tokio::time::sleep(Duration::from_millis(1)).await; // past the pre-ping bypass of 0
    let conn = pool.acquire().await.expect("a fresh connection after the check panicked");
    drop(conn);
    for op in [Op::Reset, Op::IsBroken, Op::NeedsReset, Op::Close] {
        let mut conn = pool.acquire().await.unwrap_or_else(|e| panic!("{op:?}: {e}"));
        m.panic_next(op); // on return (checkout asks `is_broken` too)
        conn.dirty = op == Op::Reset;
        if op == Op::Close {
            conn.broken = true;
        }
        drop(conn);
        until("settled", || {
            let s = pool.state();
            s.in_use == 0 && s.open == 1 && s.connecting == 0
        })
        .await;
    }
    let s = pool.stats();
    assert_eq!(s.closed.get(CloseReason::FailedCheck), 1);
    assert_eq!(s.closed.get(CloseReason::FailedReset), 2, "the reset, needs_reset");
    assert_eq!(s.closed.get(CloseReason::Broken), 2, "is_broken, then the one whose close panics");
    assert_eq!(pool.state().in_use, 0);
    pool.close().await.expect("nothing is left out");
}

#[tokio::test(start_paused = true)]
async fn maintenance_checks_stale_connections_at_once_not_one_after_another() {
    let m = TestManager::new();
    let b = paused(&m).pool_size(5).health_check_interval(Some(Duration::from_secs(30)));
    let pool = warm_pool(b, 5).await;
    m.set_check_delay(Duration::from_secs(3));
    // The first pass after 30 s finds all five stale; each check takes 3 s.
    tokio::time::sleep(Duration::from_secs(34)).await;
    assert_eq!(m.counts().checks, 5, "{:?}", pool.state());
    assert_eq!(pool.state().idle, 5, "all five checked and back within one check's time");
    assert_eq!(m.counts().connects, 5, "none replaced");
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_that_broke_is_never_handed_out() {
    let m = TestManager::new();
    let b = paused(&m).pool_size(2).pool_pre_ping(false).health_check_interval(None);
    let pool = warm_pool(b, 2).await;
    let before: Vec<u64> = futures_join(&pool, 2).await.iter().map(|c| c.id()).collect();
    m.break_open_connections();
    let conn = pool.acquire().await.unwrap();
    assert!(!before.contains(&conn.id()), "a new connection, not a broken one");
    drop(conn);
    assert_eq!(pool.stats().closed.get(CloseReason::Broken), 2);
}

#[tokio::test(start_paused = true)]
async fn discarded_and_detached_holds_count_as_use_time() {
    let m = TestManager::new();
    let pool = warm_pool(paused(&m).pool_size(2), 2).await;
    let conn = pool.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    conn.discard();
    drop(pool.acquire().await.unwrap().detach());
    drop(pool.acquire().await.unwrap());
    let use_time = pool.stats().use_time;
    assert_eq!(use_time.count(), 3, "returned, discarded and detached");
    assert!(use_time.sum >= Duration::from_secs(2), "{use_time:?}");
}

#[tokio::test(start_paused = true)]
async fn maintenance_replaces_idle_connections_that_broke() {
    let m = TestManager::new();
    let b = paused(&m).pool_size(2).health_check_interval(Some(Duration::from_secs(30)));
    let pool = warm_pool(b, 2).await;
    m.break_open_connections();
    tokio::time::sleep(Duration::from_secs(31)).await;
    until("replaced", || m.counts().connects == 4 && pool.state().idle == 2).await;
    let s = pool.stats();
    assert_eq!(s.closed.get(CloseReason::Broken), 2, "seen broken without a check");
    assert_eq!(s.closed.get(CloseReason::FailedCheck), 0);
}

#[test]
fn tasks_started_from_a_short_lived_runtime_run_on_the_pools_own() {
    let (rt, m) = (one_worker_runtime(), TestManager::new());
    let pool = rt.block_on(warm_pool(builder(&m).pool_size(1).health_check_interval(None), 1));
    m.set_reset_delay(Duration::from_millis(50));
    let short = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    short.block_on(async {
        let mut conn = pool.acquire().await.unwrap();
        conn.dirty = true;
    });
    drop(short); // its tasks, had the reset been spawned there, would be dropped with it
    rt.block_on(async {
        let back = async {
            m.wait_until(|c| c.resets == 1).await;
            until("given back", || pool.state().idle == 1).await;
        };
        tokio::time::timeout(Duration::from_secs(10), back).await.expect("the reset ran");
    });
    assert_eq!(pool.state().in_use, 0);
}

/// A manager whose first connect panics before it returns its future.
#[derive(Debug, Default)]
struct PanicsBeforeItsFuture(std::sync::atomic::AtomicBool);

impl crate::Manager for PanicsBeforeItsFuture {
    type Connection = u32;
    type Error = std::io::Error;
    const BACKEND: &'static str = "test";

    fn connect(&self) -> impl Future<Output = Result<u32, std::io::Error>> + Send {
        assert!(self.0.swap(true, SeqCst), "the first connect panics synchronously");
        async { Ok(7) }
    }

    async fn check(&self, _conn: &mut u32) -> Result<(), std::io::Error> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_before_a_managers_future_exists_is_caught_too() {
    let pool = ConnectionPool::builder(PanicsBeforeItsFuture::default())
        .tokio_clock()
        .pool_size(1)
        .max_connecting(1)
        .health_check_interval(None)
        .build()
        .unwrap();
    let conn = pool.acquire_timeout(Duration::from_secs(5)).await.expect("the retry connects");
    assert_eq!(*conn, 7);
    let err = pool.stats().connect_errors;
    assert_eq!(err, 1, "the panic was a connect error");
}

#[tokio::test(start_paused = true)]
async fn connects_failing_means_room_to_connect_and_a_failed_last_connect() {
    let m = TestManager::new();
    let b = paused(&m).pool_size(1).max_overflow(1).health_check_interval(None);
    let pool = warm_pool(b, 1).await;
    let held = pool.acquire().await.unwrap();
    assert!(!pool.state().connects_failing(), "busy, connects fine");
    m.fail_connects(true);
    assert!(pool.acquire_timeout(Duration::from_secs(1)).await.is_err());
    assert!(pool.state().connects_failing(), "room for one more, and its connect failed");
    // At its limit the pool waits on busy connections, whatever its last connect did.
    pool.resize(1, 0).unwrap();
    let s = pool.state();
    assert!(s.connect_failures > 0 && !s.connects_failing(), "{s:?}");
    drop(held);
}

/// The `testing` feature, on for these tests, changes no pool that does not ask: only a pool
/// built with `tokio_clock` reads tokio's clock, and it follows that clock exactly.
#[tokio::test(start_paused = true)]
async fn only_a_pool_that_asks_reads_tokios_clock() {
    let m = TestManager::new();
    let shipping = warm_pool(builder(&m).name("shipping").pool_size(1), 1).await;
    let tokio = warm_pool(paused(&m).name("tokio").pool_size(1), 1).await;
    assert!(!shipping.reads_tokio_clock());
    assert!(tokio.reads_tokio_clock());
    let held = (shipping.acquire().await.unwrap(), tokio.acquire().await.unwrap());
    tokio::time::advance(Duration::from_secs(600)).await;
    drop(held);
    assert_eq!(tokio.stats().in_use_time, Duration::from_secs(600));
    let real = shipping.stats().in_use_time;
    assert!(
        real < Duration::from_secs(600),
        "the shipping clock skipped ahead with tokio's: {real:?}"
    );
}

/// Polls `cond` on tokio's paused clock, 10 ms at a time, for at most `limit` of it.
async fn within(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_failed_connects_in_a_row_and_fails_callers_at_once() {
    let m = TestManager::new();
    m.fail_connects(true);
    let pool = paused(&m)
        .pool_size(2)
        .min_idle(Some(0))
        .breaker_threshold(3)
        .pool_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    // A caller that waits is woken as the breaker opens, long before its own timeout.
    let start = tokio::time::Instant::now();
    let err = pool.acquire().await.unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(start.elapsed() < Duration::from_secs(600), "woken by the breaker, not its timeout");
    assert_eq!(m.counts().failed_connects, 3, "opened at the third failure in a row");
    let msg = err.to_string();
    assert!(msg.starts_with("pool \"t\" is unavailable: circuit breaker open for "), "{msg}");
    assert!(msg.contains("after 3 failed connects or checks in a row"), "{msg}");
    assert!(msg.ends_with("; last connect error: test manager: connection refused"), "{msg}");
    assert!(pool.state().breaker_open);

    // While it is open, a caller fails without waiting at all: the paused clock does not move.
    let before = tokio::time::Instant::now();
    let err = pool.acquire().await.unwrap_err();
    assert_eq!(tokio::time::Instant::now(), before, "no wait: {err}");
    let AcquireError::Unavailable(why) = &err else { panic!("{err}") };
    assert!(why.last_error.is_some() && why.failures >= 3);
    let stats = pool.stats();
    assert!(stats.breaker_open);
    assert_eq!((stats.breaker_opens, stats.breaker_rejections), (1, 2));
    assert_eq!(stats.timeouts, 0, "nobody waited out a timeout");
}

#[tokio::test(start_paused = true)]
async fn one_probe_at_a_time_retries_and_its_first_success_closes_the_breaker() {
    let m = TestManager::new();
    m.fail_connects(true);
    let pool = paused(&m).pool_size(4).max_connecting(4).breaker_threshold(2).build().unwrap();
    within(Duration::from_secs(5), "breaker open", || pool.state().breaker_open).await;
    // Nobody asks, yet the probe keeps trying, one connect at a time.
    let failed = m.counts().failed_connects;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(pool.state().connecting <= 1, "{}", pool.state());
        assert!(pool.state().breaker_open);
    }
    let probes = m.counts().failed_connects - failed;
    // Over 10 s, probes backing off from 100 ms to 2 s: more than 3, fewer than 100.
    assert!((3..100).contains(&probes), "{probes} probes in 10 s");
    let err = pool.acquire().await.unwrap_err();
    assert!(err.to_string().contains("next probe in"), "{err}");

    m.fail_connects(false);
    within(Duration::from_secs(3), "breaker closed by a probe", || !pool.state().breaker_open)
        .await;
    let conn = pool.acquire().await.expect("served once the breaker closed");
    drop(conn);
    within(Duration::from_secs(3), "warm again", || pool.state().idle == 4).await;
    assert_eq!(pool.stats().breaker_opens, 1);
    pool.close().await.unwrap();
    assert_eq!(m.counts().live, 0);
}

#[tokio::test(start_paused = true)]
async fn failed_checks_count_toward_the_breaker_and_an_idle_connection_still_serves() {
    let m = TestManager::new();
    let pool =
        warm_pool(paused(&m).pool_size(3).health_check_interval(None).breaker_threshold(2), 3)
            .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    m.fail_connects(true);
    m.fail_next_checks(2);
    // Two pre-pings fail (the breaker opens), the third idle connection passes and serves.
    let conn = pool.acquire().await.expect("an idle connection still serves");
    assert_eq!(pool.stats().closed.get(CloseReason::FailedCheck), 2);
    assert!(pool.state().breaker_open, "{}", pool.state());
    let err = pool.acquire().await.unwrap_err();
    assert!(err.is_unavailable(), "nothing idle: {err}");
    drop(conn);
    m.fail_connects(false);
    within(Duration::from_secs(3), "closed by the probe", || !pool.state().breaker_open).await;
}

#[tokio::test(start_paused = true)]
async fn a_zero_threshold_turns_the_breaker_off() {
    let m = TestManager::new();
    m.fail_connects(true);
    let pool = paused(&m)
        .min_idle(Some(0))
        .breaker_threshold(0)
        .pool_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let err = pool.acquire().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(m.counts().failed_connects > 5);
    assert!(!pool.state().breaker_open);
    assert_eq!(pool.stats().breaker_opens, 0);
}

/// A close while a connect sleeps out its backoff ends the sleep: `close` does not wait for it.
/// (On tokio's paused clock a sleep ends as soon as every task idles, so this test runs the
/// clock that ships and a backoff the close's bound cannot cover.)
#[tokio::test]
async fn close_ends_a_connect_backoff_at_once() {
    let m = TestManager::new();
    m.fail_connects(true);
    let pool = builder(&m)
        .pool_size(1)
        .breaker_threshold(0)
        .pool_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.acquire_timeout(Duration::from_secs(600)).await.map(drop) }
    });
    // After 8 failures the backoff is at least 1.6 s, eight times close's 200 ms bound.
    m.wait_until(|c| c.failed_connects >= 8).await;
    pool.close().await.expect("the connect's backoff ended as the pool closed");
    assert!(matches!(waiter.await.unwrap(), Err(AcquireError::Closed { .. })));
    assert_eq!(pool.state().connecting, 0);
}
