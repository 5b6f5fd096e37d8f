//! The acquire path: the fast path (an idle connection, one clock read, no allocation), the
//! FIFO waiter queue with its deadlines (which the reaper enforces), the pre-ping of an idle
//! connection in a task of its own, and the checkout's bookkeeping.

use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;

use super::panic::caught_now;
use super::state::{LeakEntry, PoolState, State, Waiter};
use super::{Conn, Held, Shared};
use crate::clock::{self, Instant};
use crate::error::ConnectError;
use crate::guard::PooledConnection;
use crate::manager::Manager;
use crate::stats::CloseReason;

/// How an acquire may wait.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wait {
    /// Queue and wait up to this long.
    Upto(Duration),
    /// Never queue (`try_acquire`).
    Never,
}

/// Why an acquire failed, which the handle's method turns into its own error type.
pub(super) enum AcquireFail<E: std::error::Error + 'static> {
    Closed,
    Timeout {
        waited: Duration,
        state: PoolState,
        last_error: Option<Arc<ConnectError<E>>>,
    },
    NoneIdle(PoolState),
    /// The breaker is open and nothing was idle.
    Unavailable(Unavailable<E>),
}

/// What an acquire refused by the open breaker reports.
pub(super) struct Unavailable<E: std::error::Error + 'static> {
    pub(super) failures: u32,
    pub(super) open_for: Duration,
    pub(super) next_probe_in: Option<Duration>,
    pub(super) last_error: Option<Arc<ConnectError<E>>>,
}

impl<M: Manager> Shared<M> {
    pub(super) async fn acquire(
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
                } else if st.breaker.is_open() && matches!(wait, Wait::Upto(_)) {
                    Step::Unavailable(self.unavailable(&st, now))
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
                Step::Unavailable(why) => {
                    // Failing at once must not starve the runtime: a caller that retries in a
                    // loop would never yield. Counts against tokio's cooperative budget.
                    tokio::task::consume_budget().await;
                    return Err(AcquireFail::Unavailable(why));
                }
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
                        Err(QueueEnd::Unavailable) => {
                            let now = self.now();
                            Err(AcquireFail::Unavailable(self.unavailable(&self.lock(), now)))
                        }
                        Err(QueueEnd::TimedOut) => Err(self.timed_out(start)),
                    };
                }
            }
        }
    }

    /// Counts an acquire the open breaker refused and says why (under the lock).
    fn unavailable(&self, st: &State<M>, now: Instant) -> Unavailable<M::Error> {
        self.stats.breaker_rejections.fetch_add(1, Relaxed);
        Unavailable {
            failures: st.breaker.streak,
            open_for: st.breaker.open_since.map_or(Duration::ZERO, |at| now.duration_since(at)),
            next_probe_in: st.breaker.next_probe.map(|at| at.duration_since(now)),
            last_error: st.last_error.clone(),
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
}

enum Checked<C> {
    Alive(Conn<C>),
    Failed,
    TimedOut,
}

enum QueueEnd {
    Closed,
    TimedOut,
    /// The breaker opened while the caller waited.
    Unavailable,
}

enum Step<C, E: std::error::Error + 'static> {
    Idle(Conn<C>),
    Queued { id: u64, rx: oneshot::Receiver<Conn<C>>, wake: bool, connects: usize },
    NoneIdle(PoolState),
    Unavailable(Unavailable<E>),
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
            Err(_) => {
                let st = self.shared.lock();
                if st.closed {
                    Err(QueueEnd::Closed)
                } else if st.breaker.is_open() {
                    Err(QueueEnd::Unavailable)
                } else {
                    Err(QueueEnd::TimedOut)
                }
            }
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
