//! Where a session goes: the primary for writes; for reads the least busy usable replica
//! (bans, lag, causal tokens proven on the serving connection), else the primary.

use std::panic::Location;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, PoisonError};

use pool_core::AcquireError;
use tokio::time::Instant;

use crate::PgPooledConnection;
use crate::connection::PgConn;
use crate::error::SessionError;
use crate::server::{self, Sighting};
use crate::token::Lsn;

use super::*;

impl PgCluster {
    /// Opens one connection to replica `i` in the background and gives it to its pool, one at
    /// a time per replica: once the server is back, the pool has a connection and no failed
    /// connects, so the first read after the ban uses the replica. The ban itself runs its
    /// course (or the probe lifts it).
    pub(super) fn retry_connect(&self, i: usize) {
        /// Clears the flag however the task ends, a runtime shutdown included.
        struct Retrying(Arc<Inner>, usize);
        impl Drop for Retrying {
            fn drop(&mut self) {
                self.0.replicas[self.1].retrying.store(false, Relaxed);
            }
        }
        if self.inner.replicas[i].retrying.swap(true, Relaxed) {
            return;
        }
        let retrying = Retrying(Arc::clone(&self.inner), i);
        // Outside a tokio runtime (a read polled by another executor), the retry is skipped:
        // the ban runs out and a later read tries again.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let inner = &retrying.0;
            let bound = inner.settings.replica_timeout;
            drop(inner.replicas[i].pool.acquire_timeout(bound).await);
            drop(retrying);
        });
    }

    /// A session of the primary, acquired on behalf of the caller at `location`.
    pub(super) async fn write(
        &self,
        location: &'static Location<'static>,
    ) -> Result<PgPooledConnection, SessionError> {
        let inner = &*self.inner;
        Ok(inner.primary.acquire_for_caller(inner.primary.pool_timeout(), location).await?)
    }

    /// A read session, acquired on behalf of the caller at `location`: every acquire it makes
    /// (replicas tried in turn, then the primary) records that location for leak detection.
    pub(super) async fn read(
        &self,
        token: Option<Lsn>,
        location: &'static Location<'static>,
    ) -> Result<PgPooledConnection, SessionError> {
        let inner = &*self.inner;
        let mut tried = Vec::new();
        // One wait for all replicas: with every replica busy, a read reaches the primary after
        // `replica_timeout`, not after that many times the number of replicas.
        let deadline = Instant::now() + inner.settings.replica_timeout;
        while let Some(i) = inner.pick(&tried, token) {
            tried.push(i);
            let replica = &inner.replicas[i];
            // A replica whose server refuses connections and has nothing idle is banned at once,
            // instead of making this read wait `replica_timeout` for connects that keep failing.
            // One at its limit is busy, not failing, however its last connect went.
            let state = replica.pool.state();
            if state.connects_failing() {
                let error = replica
                    .pool
                    .last_connect_error()
                    .map_or_else(|| "connects failing".to_owned(), |e| e.to_string());
                inner.ban(i, error);
                // Nothing else would try again (reads skip a banned replica): one connect in
                // the background tells the pool, and the ban, when the server is back.
                self.retry_connect(i);
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let acquire = replica.pool.acquire_for_caller(left, location);
            let mut conn = match acquire.await {
                Ok(conn) => conn,
                Err(AcquireError::Timeout(t)) => {
                    if let Some(e) = t.last_error.as_ref().filter(|_| t.state.connects_failing()) {
                        inner.ban(i, e.to_string());
                        self.retry_connect(i);
                    }
                    continue;
                }
                // Its breaker is open: connects or checks failed in a row. Banned like a pool
                // whose connects fail; the breaker's probe tells the pool when it is back.
                Err(AcquireError::Unavailable(u)) => {
                    let error = u.last_error.as_ref().map_or_else(
                        || "circuit breaker open".to_owned(),
                        |e| format!("circuit breaker open: {e}"),
                    );
                    inner.ban(i, error);
                    continue;
                }
                Err(_) => continue,
            };
            if inner.settings.lag_probe_interval.is_none() {
                replica.health().banned_until = None;
            }
            // Proved on this connection, on the server it reached, never taken from another
            // connection: behind one address there may be several servers.
            let bound = inner.settings.replica_timeout;
            match tokio::time::timeout(bound, inner.vet(i, &mut conn, token)).await {
                Ok(Ok(true)) => {}
                // Behind the token, or lagging: back to its pool, and on to the next replica.
                Ok(Ok(false)) => continue,
                Ok(Err(e)) => {
                    // The connection may be mid-query or broken: never reuse it.
                    conn.discard();
                    inner.ban(i, e.to_string());
                    continue;
                }
                Err(_) => {
                    conn.discard();
                    inner.ban(i, format!("checking its replay position took longer than replica_timeout ({bound:?})"));
                    continue;
                }
            }
            replica.reads.fetch_add(1, Relaxed);
            return Ok(conn);
        }
        if !inner.replicas.is_empty() {
            inner.fallbacks.fetch_add(1, Relaxed);
            if token.is_some() {
                inner.causal_primary_reads.fetch_add(1, Relaxed);
            }
        }
        Ok(inner.primary.acquire_for_caller(inner.primary.pool_timeout(), location).await?)
    }
}

impl Inner {
    /// The least busy usable replica not yet tried; for a causal read, one known to have replayed
    /// the token is preferred.
    pub(super) fn pick(&self, tried: &[usize], token: Option<Lsn>) -> Option<usize> {
        let now = Instant::now();
        let probing = self.settings.lag_probe_interval.is_some();
        let mut best: Vec<usize> = Vec::new();
        let mut best_key = (true, usize::MAX);
        for (i, r) in self.replicas.iter().enumerate() {
            if tried.contains(&i) {
                continue;
            }
            let behind = {
                let h = r.health();
                if h.out_of_rotation(now, probing) || (token.is_none() && h.servers.all_lagging()) {
                    continue;
                }
                token.is_some_and(|t| h.servers.replayed_by_all().is_none_or(|lsn| lsn < t))
            };
            // Replicas known to have the token first, then the least busy.
            let key = (behind, r.pool.state().in_use);
            if best.is_empty() || key < best_key {
                best.clear();
                best_key = key;
            }
            if key == best_key {
                best.push(i);
            }
        }
        match best.len() {
            0 => None,
            1 => Some(best[0]),
            n => Some(best[fastrand::usize(..n)]),
        }
    }

    /// Whether replica `i`'s connection `conn` may serve a read: for a causal read, its server
    /// has replayed `token`; for another, with lag awareness on, its server is not lagging. What
    /// this connection proved before (its server's position only grows) or what was measured
    /// on its server within the last probe period stands; anything else is asked on the
    /// connection itself, in one round trip.
    pub(super) async fn vet(
        &self,
        i: usize,
        conn: &mut PgConn,
        token: Option<Lsn>,
    ) -> Result<bool, sqlx::Error> {
        let lag_aware = self.settings.max_replica_lag.is_some();
        let fresh = self.settings.lag_probe_interval.filter(|_| lag_aware);
        match token {
            Some(token) if conn.replayed().is_some_and(|lsn| lsn >= token) => return Ok(true),
            Some(_) => {}
            None => {
                let Some(fresh) = fresh else { return Ok(true) };
                if let Some(server) = conn.server() {
                    let known =
                        self.replicas[i].health().servers.usable(server, Instant::now(), fresh);
                    if let Some(usable) = known {
                        return Ok(usable);
                    }
                }
            }
        }
        let seen = server::sight(conn).await?;
        let lagging = self.record(i, &seen, Instant::now());
        Ok(match token {
            Some(token) => seen.replay.is_some_and(|lsn| lsn >= token),
            None => !lagging,
        })
    }

    /// Records what was seen of replica `i`'s server at `now`, with its lag against the
    /// primary's recent positions; returns whether that server is lagging.
    pub(super) fn record(&self, i: usize, seen: &Sighting, now: Instant) -> bool {
        let lag = {
            let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
            match (seen.replay, history.back()) {
                (Some(replay), Some(&(_, current))) => {
                    Some((lag_of(&history, replay, now, seen.ts_lag), current.bytes_since(replay)))
                }
                _ => None,
            }
        };
        let replica = &self.replicas[i];
        let mut h = replica.health();
        let was = h.servers.all_lagging();
        let lagging = h.servers.record(seen, lag, self.settings.max_replica_lag, now);
        if let Some(period) = self.settings.lag_probe_interval {
            // A server not seen for a while left the address (or restarted under a new
            // identity); the probe's period sets what "a while" is.
            h.servers.forget_older(now, period * FORGET_AFTER_PERIODS);
        }
        if h.servers.all_lagging() != was {
            tracing::info!(cluster = %self.name, pool = %replica.pool.id(), lag = ?lag.map(|(l, _)| l), lagging = !was, "replica lag state changed");
        }
        lagging
    }

    pub(super) fn ban(&self, i: usize, error: String) {
        let replica = &self.replicas[i];
        let mut h = replica.health();
        if h.banned_until.is_none() {
            h.bans += 1;
            tracing::warn!(cluster = %self.name, pool = %replica.pool.id(), error = %error, ban = ?self.settings.replica_ban, "replica banned");
        }
        h.banned_until = Some(Instant::now() + self.settings.replica_ban);
        h.last_error = Some(error);
    }
}
