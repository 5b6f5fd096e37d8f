//! The pool's own upkeep: the reaper task, which times out waiters with one timer for the whole
//! queue; the maintenance task, which retires idle connections that broke, passed their
//! lifetime or `idle_timeout`, checks those not known alive for `health_check_interval`, and
//! reports leaks; and the bounded check that maintenance, health checks and pre-ping run.

use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::panic::{caught, caught_now};
use super::{Conn, Held, Shared};
use crate::clock::Instant;
use crate::manager::Manager;
use crate::stats::CloseReason;

impl<M: Manager> Shared<M> {
    /// How often the maintenance task runs: often enough for the health checks, the leak
    /// reports and the idle timeout it serves (at most every 10 ms), `None` when it serves none.
    pub(super) fn maintenance_period(&self) -> Option<Duration> {
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

    /// Checks `conn`, held by `held`, bounded by `connect_timeout`; on failure retires it and
    /// says what failed. Either way the breaker counts it.
    pub(super) async fn check(
        self: &Arc<Self>,
        mut conn: Conn<M::Connection>,
        held: Held,
    ) -> Result<Conn<M::Connection>, String> {
        let bound = self.config.connect_timeout;
        let check = caught(async { self.manager.check(&mut conn.raw).await });
        let error = match tokio::time::timeout(bound, check).await {
            Ok(Ok(Ok(()))) => {
                conn.alive_at = self.now();
                self.lock().breaker.checked();
                return Ok(conn);
            }
            Ok(Ok(Err(e))) => format!("check failed: {e}"),
            Ok(Err(panic)) => format!("check {panic}"),
            Err(_) => format!("check timed out after {bound:?}"),
        };
        tracing::debug!(pool = %self.id, conn = conn.id, %error, "connection failed its check");
        let now = self.now();
        // Counted before the retire, whose connects then see the breaker as this left it.
        let waiters = self.breaker_failed(&mut self.lock(), now);
        drop(waiters);
        self.retire(conn, CloseReason::FailedCheck, held, now);
        Err(error)
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

/// The reaper task: one timer for the whole queue. It sleeps until the earliest waiter's
/// deadline (or until woken by a waiter with an earlier one) and drops the expired waiters.
pub(super) async fn reap<M: Manager>(pool: Weak<Shared<M>>, wake: Arc<Notify>) {
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
pub(super) async fn maintain<M: Manager>(pool: Weak<Shared<M>>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(shared) = pool.upgrade() else { return };
        if shared.lock().closed {
            return;
        }
        shared.maintain().await;
    }
}
