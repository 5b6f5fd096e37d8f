//! [`PgCluster`]: a primary pool and replica pools, with routing of reads to the least busy
//! healthy replica, bans, a replay-lag probe and read-your-writes tokens.

use std::collections::VecDeque;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pool_core::{CloseError, Registry, WarmError};
use tokio::time::Instant;

use crate::error::{ClusterBuildError, PgError, SessionError};
use crate::server::Servers;
use crate::stats::{ClusterStats, ReplicaStats};
use crate::token::{CausalToken, Lsn};
use crate::{PgPool, PgPooledConnection};

mod builder;
mod member;
mod probe;
mod routing;
#[cfg(test)]
pub(crate) mod tests;

pub use self::builder::ClusterBuilder;
use self::member::Member;
use self::probe::{FORGET_AFTER_PERIODS, lag_of, probe};

/// A primary pool and any number of replica pools.
///
/// - [`session`](Self::session) goes to the primary.
/// - [`session_read_only`](Self::session_read_only) goes to the least busy usable replica (fewest
///   connections in use, ties broken at random), or to the primary when none is usable (counted
///   as a fallback). A replica is usable unless banned or lagging.
/// - A replica whose pool cannot connect (an acquire that times out while its connects fail, or
///   a read that finds its connects failing and nothing idle) or that fails the lag probe's
///   query is banned for `replica_ban`; after that the lag probe tries it, and lifts the ban
///   when it answers (without the probe, the ban runs out and the next read tries it). A ban
///   for failed connects also starts one connect in the background, which tells the pool when
///   the server is back: it is an acquire of the replica pool, so its stats count it (and its
///   timeout while the server is still down). The primary is never banned.
/// - The lag probe measures, every `lag_probe_interval`, each replica's replay lag and skips a
///   replica whose lag exceeds `max_replica_lag` until it is back under half of it (hysteresis).
/// - The lag probe also asks each replica `pg_is_in_recovery()`: a replica that was promoted
///   (no longer in recovery) leaves the read rotation, shown as `promoted` in its stats, and
///   rejoins when the probe finds it a standby again. Replica connections start with
///   `default_transaction_read_only = on`, so a read that reaches a promoted replica before the
///   probe sees it cannot write either: reads never silently write.
/// - The primary may have several candidate servers ([`PgManager::primaries`](crate::PgManager::primaries),
///   libpq's multi-host URL with `target_session_attrs=read-write`, or
///   [`PostgresConfig::primaries`](crate::PostgresConfig::primaries)): its connects keep only a
///   writable server, so after a failover writes move to the new primary as the old
///   connections break. A write that reaches a standby fails with SQLSTATE 25006, is
///   counted in [`ClusterStats::read_only_errors`], and its connection is closed.
/// - [`session_read_only_after`](Self::session_read_only_after) takes a [`CausalToken`] and goes
///   only to a replica that has replayed it, else to the primary.
///
/// Every pool is an ordinary [`PgPool`] named `NAME` (the primary), `NAME-replica-1`,
/// `NAME-replica-2`...; [`register`](Self::register) puts them all in a [`Registry`].
///
/// Cheap to clone: clones share the cluster. The lag probe stops when the last clone is dropped
/// or the cluster is closed.
#[derive(Clone)]
pub struct PgCluster {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    primary: PgPool,
    replicas: Vec<Replica>,
    settings: Settings,
    fallbacks: AtomicU64,
    causal_primary_reads: AtomicU64,
    probe: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The primary's recent WAL positions, `(when, pg_current_wal_lsn())`, oldest first, as
    /// the lag probe reads them: what dates a replay position, on whichever connection it was
    /// read.
    history: Mutex<VecDeque<(Instant, Lsn)>>,
}

#[derive(Debug, Clone, Copy)]
struct Settings {
    replica_ban: Duration,
    replica_timeout: Duration,
    max_replica_lag: Option<Duration>,
    lag_probe_interval: Option<Duration>,
    connect_timeout: Duration,
}

struct Replica {
    pool: PgPool,
    health: Mutex<Health>,
    reads: AtomicU64,
    /// A background connect ([`PgCluster::retry_connect`]) is in flight.
    retrying: AtomicBool,
}

#[derive(Debug, Default)]
struct Health {
    /// `Some` while banned: when the ban's cooldown ends.
    banned_until: Option<Instant>,
    bans: u64,
    /// The servers behind the replica's address, each with its replay position and lag.
    servers: Servers,
    /// The lag probe found the server out of recovery (promoted to a primary): out of read
    /// rotation until it is found a standby again.
    promoted: bool,
    last_error: Option<String>,
}

impl Health {
    /// Whether reads skip the replica: a ban lasts its cooldown, or, with the lag probe on,
    /// until the probe lifts it; a promoted replica is skipped until it is a standby again.
    fn out_of_rotation(&self, now: Instant, probing: bool) -> bool {
        self.promoted || self.banned(now, probing)
    }

    /// Whether the replica is banned (see [`out_of_rotation`](Self::out_of_rotation)).
    fn banned(&self, now: Instant, probing: bool) -> bool {
        self.banned_until.is_some_and(|until| probing || now < until)
    }
}

impl Replica {
    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PgCluster {
    /// A connection to the primary, for writes (and reads that must see them), waiting up to the
    /// primary's `pool_timeout`.
    ///
    /// Like every session method, it records the line that called it (`#[track_caller]`) as
    /// where the connection was acquired, so the pools' leak detection
    /// (`leak_detection_threshold`) names that line, whichever pool serves the session.
    ///
    /// # Errors
    ///
    /// [`SessionError::Acquire`] when the primary pool times out or is closed.
    #[track_caller]
    pub fn session(
        &self,
    ) -> impl Future<Output = Result<PgPooledConnection, SessionError>> + Send + '_ {
        self.write(Location::caller())
    }

    /// A connection to a replica for reads, or to the primary when no replica is usable.
    ///
    /// # Errors
    ///
    /// [`SessionError::Acquire`] when the read went to the primary and the primary pool timed
    /// out or is closed; replica failures are handled by banning the replica.
    #[track_caller]
    pub fn session_read_only(
        &self,
    ) -> impl Future<Output = Result<PgPooledConnection, SessionError>> + Send + '_ {
        self.read(None, Location::caller())
    }

    /// [`session_read_only`](Self::session_read_only) when `read_only`, else
    /// [`session`](Self::session), for callers that decide at run time whether they only read.
    ///
    /// # Errors
    ///
    /// As for those two.
    #[track_caller]
    pub fn get_session(
        &self,
        read_only: bool,
    ) -> impl Future<Output = Result<PgPooledConnection, SessionError>> + Send + '_ {
        let location = Location::caller();
        async move {
            if read_only { self.read(None, location).await } else { self.write(location).await }
        }
    }

    /// A read connection that sees every write before `token`: a replica connection whose
    /// server has replayed the token's position, else the primary. The proof is taken on the
    /// connection that serves the read (one query of `pg_last_wal_replay_lsn()` on it, unless
    /// that connection proved it for a later position already), never from the lag probe or
    /// another connection, which may have reached another server behind the same address.
    ///
    /// # Errors
    ///
    /// As for [`session_read_only`](Self::session_read_only).
    #[track_caller]
    pub fn session_read_only_after(
        &self,
        token: &CausalToken,
    ) -> impl Future<Output = Result<PgPooledConnection, SessionError>> + Send + '_ {
        self.read(Some(token.lsn()), Location::caller())
    }

    /// Waits until every pool of the cluster, the primary and each replica, holds its
    /// `min_idle` connections, for at most `timeout` in all: "start and wait until warm".
    ///
    /// The pools warm up in the background from [`build`](ClusterBuilder::build) on, all at
    /// once; this waits for them together (see [`ConnectionPool::warmed`](pool_core::ConnectionPool::warmed), which also serves to
    /// wait for the primary alone: `cluster.primary().warmed(timeout)`).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses nothing: the warm-up goes on in the background.
    ///
    /// # Errors
    ///
    /// The [`WarmError`] of the first pool (the primary, then the replicas in order) that was
    /// not warm in time or is closed; it names the pool, how many connections were open and
    /// wanted, and the last connect error. Routing does not need every replica: a caller may
    /// choose to go on after a replica's error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// use pool_postgres::{PgCluster, PgManager};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = PgCluster::builder("main", PgManager::from_url("postgres://app@db/app")?)
    ///     .replica(PgManager::from_url("postgres://app@db-replica/app")?)
    ///     .build()?;
    /// cluster.warmed(Duration::from_secs(10)).await?; // before serving traffic
    /// # Ok(()) }
    /// ```
    pub async fn warmed(&self, timeout: Duration) -> Result<(), WarmError<PgError>> {
        let pools =
            std::iter::once(&self.inner.primary).chain(self.inner.replicas.iter().map(|r| &r.pool));
        PgPool::warmed_all(pools, timeout).await
    }

    /// The primary pool.
    pub fn primary(&self) -> &PgPool {
        &self.inner.primary
    }

    /// The replica pools, in order (`NAME-replica-1` first).
    pub fn replicas(&self) -> Vec<PgPool> {
        self.inner.replicas.iter().map(|r| r.pool.clone()).collect()
    }

    /// Adds every pool of the cluster (primary first) to `registry`.
    ///
    /// # Errors
    ///
    /// [`ClusterBuildError::Register`] when a name is taken; pools of this cluster registered
    /// before the failure are removed again.
    ///
    /// Each pool is registered as a [`DynPool`](pool_core::DynPool) whose stats carry its
    /// [`Routing`](pool_core::Routing): the primary's
    /// fallbacks, each replica's bans and lag, so exporters see them like any other stat.
    pub fn register(&self, registry: &Registry) -> Result<(), ClusterBuildError> {
        let members = std::iter::once(Member {
            pool: self.inner.primary.clone(),
            cluster: Arc::downgrade(&self.inner),
            replica: None,
        })
        .chain(self.inner.replicas.iter().enumerate().map(|(i, r)| Member {
            pool: r.pool.clone(),
            cluster: Arc::downgrade(&self.inner),
            replica: Some(i),
        }));
        let mut done: Vec<String> = Vec::new();
        for member in members {
            // By id (`postgresql:NAME`): a Redis pool may share the bare name.
            let name = pool_core::pool_id(&member);
            if let Err(e) = registry.register(Arc::new(member)) {
                for name in &done {
                    registry.remove(name);
                }
                return Err(e.into());
            }
            done.push(name);
        }
        Ok(())
    }

    /// The cluster's routing counters and each replica's health (taken replica by replica, so
    /// fields of different replicas may be from slightly different moments).
    pub fn stats(&self) -> ClusterStats {
        let now = Instant::now();
        let probing = self.inner.settings.lag_probe_interval.is_some();
        let replicas = self
            .inner
            .replicas
            .iter()
            .map(|r| {
                let h = r.health();
                let banned = h.banned(now, probing);
                ReplicaStats {
                    pool: r.pool.name().to_owned(),
                    reads: r.reads.load(Relaxed),
                    promoted: h.promoted,
                    banned,
                    ban_remaining: h
                        .banned_until
                        .filter(|_| banned)
                        .map(|t| t.saturating_duration_since(now)),
                    bans: h.bans,
                    lagging: h.servers.all_lagging(),
                    lag: h.servers.worst().0,
                    lag_bytes: h.servers.worst().1,
                    replay_lsn: h.servers.replayed_by_all(),
                    servers: h.servers.len(),
                    last_error: h.last_error.clone(),
                }
            })
            .collect();
        ClusterStats {
            name: self.inner.name.clone(),
            fallbacks: self.inner.fallbacks.load(Relaxed),
            causal_primary_reads: self.inner.causal_primary_reads.load(Relaxed),
            read_only_errors: std::iter::once(&self.inner.primary)
                .chain(self.inner.replicas.iter().map(|r| &r.pool))
                .map(|pool| pool.manager().read_only_errors())
                .sum(),
            replicas,
        }
    }

    /// Stops the lag probe and closes every pool (see [`ConnectionPool::close`](pool_core::ConnectionPool::close)).
    ///
    /// # Errors
    ///
    /// The first pool's [`CloseError`], when connections were still in use after its
    /// `pool_timeout`; every pool is closed regardless.
    pub async fn close(&self) -> Result<(), CloseError> {
        if let Some(task) = self.inner.probe.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
        let mut result = self.inner.primary.close().await;
        for r in &self.inner.replicas {
            let closed = r.pool.close().await;
            result = result.and(closed);
        }
        result
    }
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("name", &self.inner.name)
            .field("primary", &self.inner.primary)
            .field("replicas", &self.inner.replicas.iter().map(|r| &r.pool).collect::<Vec<_>>())
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}
