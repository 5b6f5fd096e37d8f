//! [`PgCluster`]: a primary pool and replica pools, with routing of reads to the least busy
//! healthy replica, bans, a replay-lag probe and read-your-writes tokens.

use std::collections::VecDeque;
use std::fmt;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures_core::future::BoxFuture;
use pool_core::{
    AcquireError, CloseError, ConnectionPool, Health as PoolHealth, Manager, ObserveError,
    Observer, Pool, PoolConfig, PoolStats, Registry, ResizeError, Routing, WarmError,
};
use sqlx::postgres::PgConnection;
use tokio::time::Instant;

use crate::connection::PgConn;
use crate::error::{ClusterBuildError, SessionError};
use crate::manager::PgManager;
use crate::server::{self, Servers, Sighting};
use crate::stats::{ClusterStats, ReplicaStats};
use crate::token::{CausalToken, Lsn};
use crate::{PgPool, PgPooledConnection};

#[cfg(test)]
pub(crate) mod tests;

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
    last_error: Option<String>,
}

impl Health {
    /// Whether reads skip the replica: a ban lasts its cooldown, or, with the lag probe on,
    /// until the probe lifts it.
    fn banned(&self, now: Instant, probing: bool) -> bool {
        self.banned_until.is_some_and(|until| probing || now < until)
    }
}

impl Replica {
    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds a [`PgCluster`]: `PgCluster::builder("main", primary).replica(r1).build()`.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClusterBuilder {
    name: String,
    primary: PgManager,
    replicas: Vec<PgManager>,
    config: PoolConfig,
    replica_config: Option<PoolConfig>,
    replica_ban: Duration,
    replica_timeout: Duration,
    max_replica_lag: Option<Duration>,
    lag_probe_interval: Option<Duration>,
}

impl ClusterBuilder {
    /// Adds a replica; replicas are numbered from 1 in the order they are added.
    pub fn replica(mut self, replica: PgManager) -> Self {
        self.replicas.push(replica);
        self
    }

    /// The settings of every pool [`PoolConfig::default`]; [`PostgresConfig`](crate::PostgresConfig)
    /// reads them, with the rest of a cluster's, from a file or the environment.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// Other settings for the replica pools [the same as the primary's].
    pub fn replica_config(mut self, config: PoolConfig) -> Self {
        self.replica_config = Some(config);
        self
    }

    /// How long a replica that failed stays out of rotation before it is tried again \[30 s\].
    pub fn replica_ban(mut self, duration: Duration) -> Self {
        self.replica_ban = duration;
        self
    }

    /// How long a read waits for replicas' connections, in all, before it goes to the primary
    /// \[2 s\]: a replica that has none free within the time left is passed over for the next,
    /// and none is tried once it is spent. Also how long a causal read's check of the replica's
    /// replay position may take. A replica whose connects failed during that wait, or whose
    /// check failed or took longer, is banned.
    pub fn replica_timeout(mut self, timeout: Duration) -> Self {
        self.replica_timeout = timeout;
        self
    }

    /// Replay lag beyond which a replica is skipped \[10 s\]; `None` never skips for lag.
    pub fn max_replica_lag(mut self, lag: Option<Duration>) -> Self {
        self.max_replica_lag = lag;
        self
    }

    /// Period of the lag probe \[1 s\]; `None` turns it off (no lag awareness, and banned replicas
    /// are retried by reads once their ban ends).
    pub fn lag_probe_interval(mut self, interval: Option<Duration>) -> Self {
        self.lag_probe_interval = interval;
        self
    }

    /// Starts every pool and the lag probe.
    ///
    /// # Errors
    ///
    /// [`ClusterBuildError::Pool`] naming the pool whose settings were refused (or when called
    /// outside a tokio runtime), [`ClusterBuildError::Invalid`] for a zero duration or one above
    /// [`pool_core::MAX_DURATION`].
    pub fn build(self) -> Result<PgCluster, ClusterBuildError> {
        if let Some((setting, value, reason)) = crate::config::routing_problem(
            self.replica_ban,
            self.replica_timeout,
            self.max_replica_lag,
            self.lag_probe_interval,
        ) {
            return Err(ClusterBuildError::Invalid { setting, value, reason });
        }
        let build = |name: String, manager: PgManager, config: &PoolConfig| {
            ConnectionPool::builder(manager)
                .name(name.clone())
                .config(config.clone())
                .build()
                .map_err(|source| ClusterBuildError::Pool { pool: name, source })
        };
        let primary = build(self.name.clone(), self.primary, &self.config)?;
        let replica_config = self.replica_config.as_ref().unwrap_or(&self.config);
        let mut replicas = Vec::with_capacity(self.replicas.len());
        for (i, manager) in self.replicas.into_iter().enumerate() {
            let pool = build(format!("{}-replica-{}", self.name, i + 1), manager, replica_config)?;
            replicas.push(Replica {
                pool,
                health: Mutex::new(Health::default()),
                reads: AtomicU64::new(0),
                retrying: AtomicBool::new(false),
            });
        }
        let settings = Settings {
            replica_ban: self.replica_ban,
            replica_timeout: self.replica_timeout,
            max_replica_lag: self.max_replica_lag,
            lag_probe_interval: self.lag_probe_interval.filter(|_| !replicas.is_empty()),
            connect_timeout: replica_config.connect_timeout,
        };
        let inner = Arc::new(Inner {
            name: self.name,
            primary,
            replicas,
            settings,
            fallbacks: AtomicU64::new(0),
            causal_primary_reads: AtomicU64::new(0),
            probe: Mutex::new(None),
            history: Mutex::new(VecDeque::new()),
        });
        if let Some(period) = settings.lag_probe_interval {
            let task = tokio::spawn(probe(Arc::downgrade(&inner), period));
            *inner.probe.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        }
        Ok(PgCluster { inner })
    }
}

impl PgCluster {
    /// Starts building a cluster named `name` (its primary pool's name) over `primary`.
    pub fn builder(name: impl Into<String>, primary: PgManager) -> ClusterBuilder {
        // The defaults are the configuration's, said once there.
        let defaults = crate::PostgresConfig::default();
        ClusterBuilder {
            name: name.into(),
            primary,
            replicas: Vec::new(),
            config: defaults.pool,
            replica_config: None,
            replica_ban: defaults.replica_ban,
            replica_timeout: defaults.replica_timeout,
            max_replica_lag: defaults.max_replica_lag,
            lag_probe_interval: defaults.lag_probe_interval,
        }
    }

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
    /// once; this waits for them together (see [`ConnectionPool::warmed`], which also serves to
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
    pub async fn warmed(&self, timeout: Duration) -> Result<(), WarmError<sqlx::Error>> {
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
    /// Each pool is registered as a [`Pool`] whose stats carry its [`Routing`]: the primary's
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
            replicas,
        }
    }

    /// Stops the lag probe and closes every pool (see [`ConnectionPool::close`]).
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

    /// Opens one connection to replica `i` in the background and gives it to its pool, one at
    /// a time per replica: once the server is back, the pool has a connection and no failed
    /// connects, so the first read after the ban uses the replica. The ban itself runs its
    /// course (or the probe lifts it).
    fn retry_connect(&self, i: usize) {
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
    async fn write(
        &self,
        location: &'static Location<'static>,
    ) -> Result<PgPooledConnection, SessionError> {
        let inner = &*self.inner;
        Ok(inner.primary.acquire_for_caller(inner.primary.pool_timeout(), location).await?)
    }

    /// A read session, acquired on behalf of the caller at `location`: every acquire it makes
    /// (replicas tried in turn, then the primary) records that location for leak detection.
    async fn read(
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
    fn pick(&self, tried: &[usize], token: Option<Lsn>) -> Option<usize> {
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
                if h.banned(now, probing) || (token.is_none() && h.servers.all_lagging()) {
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
    async fn vet(
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
    fn record(&self, i: usize, seen: &Sighting, now: Instant) -> bool {
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

    fn ban(&self, i: usize, error: String) {
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

/// The lag probe's own connections.
struct Probe {
    primary: Option<PgConnection>,
    replicas: Vec<Option<PgConnection>>,
}

/// How many probe periods a server behind a replica's address may go unseen before the
/// cluster forgets it.
const FORGET_AFTER_PERIODS: u32 = 10;

/// How many primary positions the probe remembers to date a replica's replay position.
const HISTORY: usize = 600;

/// The lag probe: every `period`, reads the primary's WAL position and each replica's replay
/// position on connections of its own (outside the pools, so it never waits behind users; its
/// queries start with `/* pool-postgres lag probe */`, as `pg_stat_activity` shows them), and
/// updates bans and the lag of the server its connection reached. Reads measure the other
/// servers behind a replica's address on their own connections (see `Inner::vet`), against the
/// primary positions the probe keeps.
///
/// A replica's lag is the age of the newest primary position it has replayed: zero when it has
/// replayed the primary's current position, else the time since the primary was at the
/// replica's position, interpolated between the two positions the probe saw around it (see
/// [`lag_of`]). This needs no clock agreement between servers and does not grow while the
/// primary is idle; when the replica is behind every remembered position,
/// `now() - pg_last_xact_replay_timestamp()` on the replica is the lower bound used.
async fn probe(cluster: Weak<Inner>, period: Duration) {
    let mut state = Probe { primary: None, replicas: Vec::new() };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = cluster.upgrade() else { return };
        state.replicas.resize_with(inner.replicas.len(), || None);
        let timeout = inner.settings.connect_timeout;
        let primary_lsn =
            on_probe_connection(&mut state.primary, inner.primary.manager(), timeout, |c| {
                Box::pin(async move {
                    let sql = "/* pool-postgres lag probe */ SELECT pg_catalog.pg_current_wal_lsn()::text";
                    debug_assert!(sql.starts_with(server::PROBE_MARK));
                    let (lsn,): (String,) = sqlx::query_as(sql).fetch_one(c).await?;
                    lsn.parse::<Lsn>().map_err(|e| sqlx::Error::Decode(e.into()))
                })
            })
            .await
            .ok();
        let now = Instant::now();
        if let Some(lsn) = primary_lsn {
            let mut history = inner.history.lock().unwrap_or_else(PoisonError::into_inner);
            if history.back().is_none_or(|(_, last)| *last != lsn) {
                history.push_back((now, lsn));
            } else if let Some(last) = history.back_mut() {
                // Same position as before: the primary was idle, so the newest time it held counts.
                last.0 = now;
            }
            while history.len() > HISTORY {
                history.pop_front();
            }
        }
        for (i, replica) in inner.replicas.iter().enumerate() {
            if replica.health().banned_until.is_some_and(|until| now < until) {
                continue;
            }
            let answer =
                on_probe_connection(&mut state.replicas[i], replica.pool.manager(), timeout, |c| {
                    Box::pin(server::sight_bare(c))
                })
                .await;
            match answer {
                Err(e) => inner.ban(i, e),
                Ok(seen) => {
                    if replica.health().banned_until.take().is_some() {
                        tracing::info!(cluster = %inner.name, pool = %replica.pool.id(), "replica back in rotation");
                    }
                    inner.record(i, &seen, now);
                }
            }
        }
        drop(inner);
    }
}

/// How far behind a replica at `replay` is, at `now`, given the primary's recent positions
/// (`history`, oldest first, never empty) and the replica's own replay-timestamp lag.
///
/// Zero when it replayed the primary's newest position. Otherwise the time since the primary
/// was at `replay`: between the two remembered positions around it, the time is interpolated
/// by WAL bytes, so under steady writes a replica a few bytes behind reads a few milliseconds,
/// not a whole probe period. Behind every remembered position, the oldest one's age, or the
/// replay-timestamp lag if larger, is the lower bound.
fn lag_of(
    history: &VecDeque<(Instant, Lsn)>,
    replay: Lsn,
    now: Instant,
    ts_lag: Option<f64>,
) -> Duration {
    let Some(&(_, current)) = history.back() else { return Duration::ZERO };
    if replay >= current {
        return Duration::ZERO;
    }
    let Some(i) = history.iter().rposition(|(_, lsn)| *lsn <= replay) else {
        let oldest = history.front().map(|(at, _)| now.saturating_duration_since(*at));
        let ts = ts_lag.and_then(|s| Duration::try_from_secs_f64(s).ok());
        return oldest.max(ts).unwrap_or_default();
    };
    let (at, lsn) = history[i];
    let reached = match history.get(i + 1) {
        Some(&(next_at, next_lsn)) if next_lsn > lsn => {
            let share = replay.bytes_since(lsn) as f64 / next_lsn.bytes_since(lsn) as f64;
            at + next_at.saturating_duration_since(at).mul_f64(share.clamp(0.0, 1.0))
        }
        _ => at,
    };
    now.saturating_duration_since(reached)
}

/// Runs `query` on the probe's connection, opening it if needed. A failure on a connection
/// kept from an earlier round is retried once on a new connection: the kept one may have died
/// while nobody used it (a restart, a terminated backend), which says nothing about the server
/// now.
async fn on_probe_connection<T>(
    conn: &mut Option<PgConnection>,
    manager: &PgManager,
    timeout: Duration,
    query: impl for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
) -> Result<T, String> {
    let kept = conn.is_some();
    match on_probe_connection_once(conn, manager, timeout, &query).await {
        Err(_) if kept => on_probe_connection_once(conn, manager, timeout, &query).await,
        result => result,
    }
}

/// One attempt of [`on_probe_connection`]; a failure drops the connection.
async fn on_probe_connection_once<T>(
    conn: &mut Option<PgConnection>,
    manager: &PgManager,
    timeout: Duration,
    query: &impl for<'c> Fn(&'c mut PgConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>,
) -> Result<T, String> {
    let attempt = async {
        if conn.is_none() {
            *conn = Some(manager.connect().await.map_err(|e| e.to_string())?.into_inner());
        }
        let c = conn.as_mut().expect("opened above");
        query(c).await.map_err(|e| e.to_string())
    };
    let result = match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("lag probe timed out after {timeout:?}")),
    };
    if result.is_err() {
        *conn = None;
    }
    result
}

/// A cluster's pool as the registry holds it: the pool itself, plus its [`Routing`] read from
/// the cluster (while the cluster lives) on every [`Pool::stats`].
#[derive(Debug)]
struct Member {
    pool: PgPool,
    cluster: Weak<Inner>,
    /// `None` for the primary, else the replica's index.
    replica: Option<usize>,
}

impl Member {
    fn routing(&self) -> Option<Routing> {
        let cluster = self.cluster.upgrade()?;
        Some(match self.replica {
            None => Routing::Primary { fallbacks: cluster.fallbacks.load(Relaxed) },
            Some(i) => {
                let h = cluster.replicas[i].health();
                let probing = cluster.settings.lag_probe_interval.is_some();
                Routing::Replica {
                    bans: h.bans,
                    banned: h.banned(Instant::now(), probing),
                    lagging: h.servers.all_lagging(),
                    lag: h.servers.worst().0,
                }
            }
        })
    }
}

#[async_trait]
impl Pool for Member {
    fn name(&self) -> &str {
        self.pool.name()
    }

    fn last_connect_error(&self) -> Option<String> {
        Pool::last_connect_error(&self.pool)
    }

    fn backend(&self) -> &'static str {
        PgManager::BACKEND
    }

    fn stats(&self) -> PoolStats {
        let mut stats = self.pool.stats();
        stats.routing = self.routing();
        stats
    }

    fn config(&self) -> PoolConfig {
        self.pool.config()
    }

    fn resize(&self, pool_size: usize, max_overflow: usize) -> Result<(), ResizeError> {
        self.pool.resize(pool_size, max_overflow)
    }

    /// Zeroes the pool's counters; the cluster's routing counters are the cluster's and stay.
    fn reset_stats(&self) {
        self.pool.reset_stats();
    }

    fn set_observer(&self, observer: Arc<dyn Observer>) -> Result<(), ObserveError> {
        self.pool.set_observer(observer)
    }

    async fn health(&self) -> PoolHealth {
        Pool::health(&self.pool).await
    }
}
