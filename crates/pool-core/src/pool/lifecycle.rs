//! What becomes of a connection after its checkout: its return (straight to the oldest waiter
//! or the idle list, or through the background reset first), its retirement and close, and
//! the connect tasks that open new ones, with backoff while connects fail and the circuit
//! breaker's probe while it is open.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::panic::{caught, caught_now};
use super::state::{State, Waiter};
use super::{Conn, Held, Shared};
use crate::clock::{self, Instant};
use crate::error::ConnectError;
use crate::manager::Manager;
use crate::stats::CloseReason;

impl<M: Manager> Shared<M> {
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
    pub(super) fn put_back(self: &Arc<Self>, conn: Conn<M::Connection>, held: Held) {
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
    pub(super) fn close_conn(self: &Arc<Self>, conn: Conn<M::Connection>, reason: CloseReason) {
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

    fn closed_one(self: &Arc<Self>) {
        let n = {
            let mut st = self.lock();
            st.closing -= 1;
            st.connects_to_start(self.config.max_connecting, false)
        };
        self.spawn_connects(n);
        self.drained.notify_waiters();
    }

    pub(super) fn spawn_connects(self: &Arc<Self>, n: usize) {
        if n > 0 {
            self.spawn_connects_on(self.task_runtime(), n);
        }
    }

    pub(super) fn spawn_connects_on(self: &Arc<Self>, handle: &tokio::runtime::Handle, n: usize) {
        for _ in 0..n {
            handle.spawn(Arc::clone(self).connect());
        }
    }

    /// Counts a failed connect or check in the breaker's streak (under the lock). When that
    /// opens the breaker, returns the waiters, to be dropped outside the lock: each wakes with
    /// [`AcquireError::Unavailable`](crate::AcquireError::Unavailable).
    pub(super) fn breaker_failed(
        &self,
        st: &mut State<M>,
        now: Instant,
    ) -> VecDeque<Waiter<M::Connection>> {
        if !st.breaker.failed(self.config.breaker_threshold, now) {
            return VecDeque::new();
        }
        self.stats.breaker_opens.fetch_add(1, Relaxed);
        tracing::warn!(
            pool = %self.id,
            failures = st.breaker.streak,
            "circuit breaker opened: acquires that find nothing idle fail at once until a probe connects"
        );
        std::mem::take(&mut st.waiters)
    }

    /// One connect slot: opens a connection and gives it to the oldest waiter or the idle
    /// list; on failure, backs off with jitter and retries while callers wait (in `acquire`,
    /// or in `warmed` for a pool short of `min_idle`). While the breaker is open, the slot that
    /// is its probe retries on the probe's schedule whoever waits, and the others end.
    async fn connect(self: Arc<Self>) {
        let bound = self.config.connect_timeout;
        let mut probe = std::mem::take(&mut self.lock().breaker.unclaimed);
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
                Ok(raw) => return self.opened(raw, start, probe),
                Err(e) => e,
            };
            self.stats.connect_errors.fetch_add(1, Relaxed);
            tracing::warn!(pool = %self.id, error = %error, "connect failed");
            // Registered before the state is read: a close after that read still wakes us.
            let closing = self.closing.notified();
            tokio::pin!(closing);
            closing.as_mut().enable();
            let (delay, waiters) = {
                let now = self.now();
                let mut st = self.lock();
                st.connect_failures = st.connect_failures.saturating_add(1);
                st.last_error = Some(Arc::new(error));
                let waiters = self.breaker_failed(&mut st, now);
                let was_probe = probe;
                if probe && !st.breaker.is_open() {
                    // Another connect closed the breaker meanwhile: an ordinary slot again.
                    probe = false;
                    st.breaker.probing = false;
                } else if !probe && st.breaker.is_open() && !st.breaker.probing {
                    probe = true;
                    st.breaker.probing = true;
                }
                let delay = if st.closed {
                    None
                } else if probe {
                    if was_probe {
                        st.breaker.probes_failed = st.breaker.probes_failed.saturating_add(1);
                    }
                    let delay = st.breaker.probe_delay();
                    st.breaker.next_probe = Some(clock::after(now, delay));
                    Some(delay)
                } else if st.breaker.is_open() || (st.waiters.is_empty() && !st.warm_wanted()) {
                    None
                } else {
                    Some(backoff(st.connect_failures))
                };
                if delay.is_none() {
                    st.connecting -= 1;
                    if probe {
                        st.breaker.probing = false;
                    }
                }
                (delay, waiters)
            };
            drop(waiters);
            let Some(delay) = delay else {
                self.drained.notify_waiters();
                return;
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut closing => {}
            }
            let mut st = self.lock();
            if st.closed {
                st.connecting -= 1;
                if probe {
                    st.breaker.probing = false;
                }
                drop(st);
                self.drained.notify_waiters();
                return;
            }
            st.breaker.next_probe = None;
        }
    }

    fn opened(self: &Arc<Self>, raw: M::Connection, start: Instant, probe: bool) {
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
        if probe {
            st.breaker.probing = false;
        }
        if let Some(since) = st.breaker.connected() {
            tracing::info!(
                pool = %self.id,
                open_for = ?now.duration_since(since),
                "circuit breaker closed: a connect succeeded"
            );
        }
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
}

/// Delay before connect retry number `failures`: exponential from 25 ms, capped at 2 s, with
/// jitter (between half and all of it), so a fleet of pools does not retry in lockstep.
fn backoff(failures: u32) -> Duration {
    let exp = Duration::from_millis(25).saturating_mul(1 << failures.saturating_sub(1).min(16));
    exp.min(Duration::from_secs(2)).mul_f64(0.5 + fastrand::f64() / 2.0)
}
