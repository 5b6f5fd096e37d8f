//! [`RedisPool`]: one named pool (exclusive connections through the engine, plus shared
//! multiplexed clients), and [`RedisPools`], every pool of one [`RedisConfig`].

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::clients::Client;
use fred::error::{Error, ErrorKind};
use fred::interfaces::ClientLike;
use fred::types::CustomCommand;
use pool_core::{
    CloseError, ConnectionPool, Health, ObserveError, Observer, PoolConfig, PoolStats,
    PooledConnection, RegisterError, Registry, ResizeError, WarmError,
};

use crate::config::{PoolSettings, RedisConfig};
use crate::connection::ClientFactory;
use crate::error::{AcquireError, BuildError, ConfigError, redact};
use crate::manager::RedisManager;
use crate::shared::{SharedClients, spawn_heartbeat};
use crate::stats::RedisStats;

/// An exclusive connection checked out of a [`RedisPool`]; derefs to
/// [`RedisConnection`](crate::RedisConnection) and on to the fred client, and goes back to
/// the pool on drop.
pub type ExclusiveConnection = PooledConnection<RedisManager>;

/// One named Redis pool. Cheap to clone: clones share the pool.
///
/// - [`shared`](Self::shared): a multiplexed client, for plain commands from any number of
///   tasks at once (`GET`, `SET`, `HGETALL`, pipelines...). Nothing is checked out.
/// - [`exclusive`](Self::exclusive): a connection of one's own, for `WATCH`/`MULTI`/`EXEC`,
///   blocking commands (`BLPOP`, `XREAD BLOCK`...) and commands that change connection state.
///
/// It implements the engine's [`DynPool`](pool_core::DynPool) trait (stats of the exclusive
/// connections, resize, health), so metrics and admin layers see it like any other pool.
#[derive(Clone)]
pub struct RedisPool {
    inner: Arc<Inner>,
}

struct Inner {
    name: Arc<str>,
    settings: PoolSettings,
    exclusive: ConnectionPool<RedisManager>,
    shared: SharedClients,
    retries: AtomicU64,
    closed: AtomicBool,
}

impl RedisPool {
    /// Opens the pool `name` on `url`: connects its shared clients (failing if they cannot
    /// connect within `connect_timeout`, or their connect commands or hook fail) and starts
    /// warming its exclusive connections in the background.
    ///
    /// # Errors
    ///
    /// [`BuildError::Config`] for a URL or setting that makes no sense (a TLS file that cannot
    /// be used, naming the setting and the path), [`BuildError::Connect`] or
    /// [`BuildError::ConnectTimeout`] naming the pool and the URL when the server cannot be
    /// reached or refuses the connection (a TLS failure says why in TLS terms: an unknown CA, a
    /// host name mismatch, an expired certificate, a server that does not speak TLS, a client
    /// certificate required), [`BuildError::Pool`] outside a tokio runtime.
    pub async fn connect(
        name: &str,
        url: &str,
        settings: PoolSettings,
    ) -> Result<Self, BuildError> {
        // Before any client is made: fred spawns tasks, which would panic outside a runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            let source = pool_core::BuildError::NoRuntime;
            return Err(BuildError::Pool { pool: name.to_owned(), source });
        }
        let config = RedisConfig::new(url).pool(name, settings.clone());
        config.validate()?;
        let fred_config = config.fred_config()?;
        let mut factory = ClientFactory::new(fred_config, &settings);
        if config.uses_tls() {
            let tls = settings.tls_files().client_config().map_err(|p| ConfigError::Invalid {
                pool: name.to_owned(),
                setting: p.setting.to_owned(),
                value: p.path.display().to_string(),
                reason: p.reason,
            })?;
            factory = factory.tls(tls);
        }
        let shared = SharedClients::open(
            &factory.for_shared(&settings),
            settings.shared_clients,
            settings.pool.connect_timeout,
        )
        .await
        .map_err(|e| match e {
            Some(source) => BuildError::Connect { pool: name.to_owned(), url: redact(url), source },
            None => BuildError::ConnectTimeout {
                pool: name.to_owned(),
                url: redact(url),
                after: settings.pool.connect_timeout,
            },
        })?;
        let manager = RedisManager::new(name, factory, settings.pool.connect_timeout);
        let exclusive = ConnectionPool::builder(manager)
            .name(name)
            .config(settings.engine_config())
            .build()
            .map_err(|source| BuildError::Pool { pool: name.to_owned(), source })?;
        let inner = Arc::new(Inner {
            name: name.into(),
            settings,
            exclusive,
            shared,
            retries: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        if let Some((period, bound)) = inner.settings.heartbeat() {
            spawn_heartbeat(
                Arc::downgrade(&inner),
                |inner: &Inner| (!inner.closed.load(Relaxed)).then_some(&inner.shared),
                inner.name.clone(),
                period,
                bound,
            );
        }
        Ok(RedisPool { inner })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The settings the pool was opened with. A resize through
    /// [`DynPool::resize`](pool_core::DynPool::resize) changes the engine's sizes, not these:
    /// [`DynPool::config`](pool_core::DynPool::config) has the current ones.
    pub fn settings(&self) -> &PoolSettings {
        &self.inner.settings
    }

    /// A shared, multiplexed client, the next one in round-robin order (skipping clients that
    /// are reconnecting when another is connected). Any number of tasks may use it at once.
    ///
    /// Do not send blocking commands, `WATCH`, `MULTI` by hand, `SELECT` or other
    /// connection-state commands on it: they would hold up or change the connection for every
    /// other task. Take an [`exclusive`](Self::exclusive) connection for those.
    pub fn shared(&self) -> &Client {
        self.inner.shared.next()
    }

    /// Checks out an exclusive connection, waiting up to `pool_timeout`; see
    /// [`ConnectionPool::acquire`] for fairness and cancel safety.
    ///
    /// # Errors
    ///
    /// [`AcquireError::Timeout`](pool_core::AcquireError::Timeout) after `pool_timeout`, saying
    /// how long it waited, the pool's state and the last connect error (an unreachable server
    /// shows here); [`AcquireError::Closed`](pool_core::AcquireError::Closed) once closed.
    #[track_caller]
    pub fn exclusive(
        &self,
    ) -> impl Future<Output = Result<ExclusiveConnection, AcquireError>> + Send + '_ {
        self.inner.exclusive.acquire()
    }

    /// Runs an idempotent, non-blocking command on a shared client; with `retry_on_timeout`,
    /// one that timed out (after `shared_command_timeout`) runs once more on the next shared
    /// client.
    ///
    /// `command` gets a client handle and returns the command's future, e.g.
    /// `|c| async move { c.get::<Option<String>, _>("key").await }`. Only use it for commands
    /// that are safe to run twice (`GET`, `MGET`, `EXISTS`, `SET` without `GET`/`NX`...) and that
    /// do not block (never `BLPOP`): a timeout does not say whether the server ran it.
    ///
    /// # Errors
    ///
    /// fred's error of the last attempt.
    pub async fn idempotent<T, F, Fut>(&self, command: F) -> Result<T, Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        match command(self.shared().clone()).await {
            Err(e) if self.inner.settings.retry_on_timeout && *e.kind() == ErrorKind::Timeout => {
                self.inner.retries.fetch_add(1, Relaxed);
                tracing::debug!(pool = %self.inner.exclusive.id(), error = %e, "retrying an idempotent command after a timeout");
                command(self.shared().clone()).await
            }
            other => other,
        }
    }

    /// The pool's stats: redis-py's in use, available and created, the shared clients, and the
    /// engine's.
    pub fn stats(&self) -> RedisStats {
        let engine = self.inner.exclusive.stats();
        let shared = &self.inner.shared;
        let shared_connected = shared.connected();
        RedisStats {
            name: self.inner.name.to_string(),
            in_use: engine.in_use,
            available: engine.idle,
            created: crate::stats::created(&engine, shared_connected),
            max_connections: engine.pool_size + engine.max_overflow,
            shared_clients: shared.len(),
            shared_connected,
            retries: self.inner.retries.load(Relaxed),
            heartbeat_failures: shared.heartbeat_failures.load(Relaxed),
            engine,
        }
    }

    /// Waits until the exclusive side holds its `min_idle` connections (`pool_size` unless
    /// set), for at most `timeout`: see [`ConnectionPool::warmed`]. The shared clients are
    /// connected already when [`connect`](Self::connect) returns.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses nothing: the warm-up goes on in the background.
    ///
    /// # Errors
    ///
    /// [`WarmError`] naming the pool, the connections open and wanted, and the last connect
    /// error; or that the pool is closed.
    pub async fn warmed(&self, timeout: Duration) -> Result<(), WarmError<Error>> {
        self.inner.exclusive.warmed(timeout).await
    }

    /// The server's `maxclients` (`CONFIG GET maxclients`), asked on a shared client: the most
    /// clients the server accepts, this pool's exclusive connections and shared clients, its
    /// sibling pools' and other programs' included. `pool-admin` makes it the budget that
    /// resizes of the Redis pools must stay within.
    ///
    /// # Errors
    ///
    /// The server's error (where `CONFIG` is renamed or disabled, as on some managed services),
    /// or a reply that holds no number.
    pub async fn max_clients(&self) -> Result<usize, Error> {
        let config = CustomCommand::new_static("CONFIG", None, false);
        let reply: Vec<String> = self.shared().custom(config, vec!["GET", "maxclients"]).await?;
        // `["maxclients", "10000"]`.
        reply.get(1).and_then(|n| n.parse().ok()).ok_or_else(|| {
            Error::new(ErrorKind::Protocol, format!("CONFIG GET maxclients answered {reply:?}"))
        })
    }

    /// The engine pool of the exclusive connections.
    pub fn engine(&self) -> &ConnectionPool<RedisManager> {
        &self.inner.exclusive
    }

    /// Closes the pool: exclusive checkouts fail with `Closed`, idle exclusive connections close
    /// now and those in use on return (waiting up to `pool_timeout` for them), then the shared
    /// clients send `QUIT`. Calling it again is harmless.
    ///
    /// # Errors
    ///
    /// [`CloseError`] when exclusive connections were still out after `pool_timeout`; they
    /// close when returned.
    pub async fn close(&self) -> Result<(), CloseError> {
        self.inner.closed.store(true, Relaxed);
        let result = self.inner.exclusive.close().await;
        self.inner.shared.close(self.inner.settings.pool.connect_timeout).await;
        result
    }
}

impl fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisPool")
            .field("name", &self.inner.name)
            .field("exclusive", &self.inner.exclusive)
            .field("shared_clients", &self.inner.shared.len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl pool_core::DynPool for RedisPool {
    fn name(&self) -> &str {
        &self.inner.name
    }

    fn last_connect_error(&self) -> Option<String> {
        pool_core::DynPool::last_connect_error(&self.inner.exclusive)
    }

    fn backend(&self) -> &'static str {
        <RedisManager as pool_core::Manager>::BACKEND
    }

    fn stats(&self) -> PoolStats {
        self.inner.exclusive.stats()
    }

    fn config(&self) -> PoolConfig {
        self.inner.exclusive.config()
    }

    fn resize(&self, pool_size: usize, max_overflow: usize) -> Result<(), ResizeError> {
        self.inner.exclusive.resize(pool_size, max_overflow)
    }

    fn reset_stats(&self) {
        self.inner.exclusive.reset_stats();
        self.inner.retries.store(0, Relaxed);
        self.inner.shared.heartbeat_failures.store(0, Relaxed);
    }

    fn set_observer(&self, observer: Arc<dyn Observer>) -> Result<(), ObserveError> {
        self.inner.exclusive.set_observer(observer)
    }

    /// `PING` on a shared client, then the engine's check of one exclusive connection; healthy
    /// when both answer, the latency being the slower of the two.
    ///
    /// When every exclusive connection the pool may open is in use (blocking workers can hold
    /// them for good), the check does not queue for one: that would report a healthy server as
    /// down after `connect_timeout` and count an acquire timeout. The shared `PING` then speaks
    /// for the server, and a failing connect, if any, is reported.
    async fn health(&self) -> Health {
        let pool = self.inner.name.to_string();
        let bound = self.inner.settings.pool.connect_timeout;
        let start = Instant::now();
        let shared = match tokio::time::timeout(bound, self.shared().ping::<()>(None)).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(e)) => Err(format!("shared client PING failed: {e}")),
            Err(_) => Err(format!("shared client PING timed out after {bound:?}")),
        };
        let engine = &self.inner.exclusive;
        let st = engine.state();
        let all_busy = st.idle == 0 && st.open >= st.pool_size + st.max_overflow;
        let mut health = if all_busy {
            match engine.last_connect_error() {
                Some(e) => Health::down(pool, e.to_string()),
                None => Health::up(pool, Duration::ZERO),
            }
        } else {
            let mut health =
                <ConnectionPool<RedisManager> as pool_core::DynPool>::health(engine).await;
            health.pool = pool;
            health
        };
        match shared {
            Ok(latency) if health.healthy => health.latency = health.latency.max(latency),
            Ok(_) => {}
            Err(e) => {
                health.healthy = false;
                health.latency = Duration::ZERO;
                health.error = Some(match health.error.take() {
                    Some(exclusive) => format!("{e}; exclusive connection: {exclusive}"),
                    None => e,
                });
            }
        }
        health
    }
}

/// Every pool of one [`RedisConfig`], by name.
///
/// # Examples
///
/// ```no_run
/// use pool_redis::{RedisConfig, RedisPools};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pools = RedisPools::connect(&RedisConfig::from_env()?).await?;
/// let main = pools.get("main").expect("configured");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RedisPools {
    pools: BTreeMap<String, RedisPool>,
}

impl RedisPools {
    /// Validates `config` and opens every pool (see [`RedisPool::connect`]); if one fails, the
    /// ones already opened are closed.
    ///
    /// # Errors
    ///
    /// The first pool's [`BuildError`].
    pub async fn connect(config: &RedisConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let mut pools = BTreeMap::new();
        for (name, settings) in &config.pools {
            match RedisPool::connect(name, &config.url, settings.clone()).await {
                Ok(pool) => {
                    pools.insert(name.clone(), pool);
                }
                Err(e) => {
                    for pool in pools.values() {
                        let _ = RedisPool::close(pool).await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(RedisPools { pools })
    }

    /// The pool `name`.
    pub fn get(&self, name: &str) -> Option<&RedisPool> {
        self.pools.get(name)
    }

    /// Every pool, by name.
    pub fn iter(&self) -> impl Iterator<Item = &RedisPool> {
        self.pools.values()
    }

    /// Waits until every pool's exclusive side holds its `min_idle` connections, the pools
    /// together, for at most `timeout` in all (see [`ConnectionPool::warmed_all`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future loses nothing: the warm-up goes on in the background.
    ///
    /// # Errors
    ///
    /// The [`WarmError`] of the first pool, by name, that was not warm in time or is closed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// use pool_redis::{PoolSettings, RedisConfig, RedisPools};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let config = RedisConfig::new("redis://127.0.0.1:6379")
    ///     .pool("main", PoolSettings::default().pool_size(10));
    /// let pools = RedisPools::connect(&config).await?;
    /// pools.warmed(Duration::from_secs(10)).await?; // before serving traffic
    /// # Ok(()) }
    /// ```
    pub async fn warmed(&self, timeout: Duration) -> Result<(), WarmError<Error>> {
        ConnectionPool::warmed_all(self.pools.values().map(|p| &p.inner.exclusive), timeout).await
    }

    /// Adds every pool to `registry`, for metrics, the optimizer and the admin API.
    ///
    /// # Errors
    ///
    /// [`RegisterError::Duplicate`] when a pool of that name is registered already.
    pub fn register(&self, registry: &Registry) -> Result<(), RegisterError> {
        for pool in self.pools.values() {
            registry.register(Arc::new(pool.clone()))?;
        }
        Ok(())
    }

    /// Closes every pool (see [`RedisPool::close`]).
    ///
    /// # Errors
    ///
    /// The first [`CloseError`]; every pool is closed regardless.
    pub async fn close(&self) -> Result<(), CloseError> {
        let mut result = Ok(());
        for pool in self.pools.values() {
            let r = RedisPool::close(pool).await;
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    #[test]
    fn connect_outside_a_runtime_is_an_error_not_a_panic() {
        let connect = RedisPool::connect("main", "redis://127.0.0.1:6379", PoolSettings::default());
        let mut connect = pin!(connect);
        let Poll::Ready(Err(e)) = connect.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("refused at the first poll");
        };
        assert!(matches!(e, BuildError::Pool { source: pool_core::BuildError::NoRuntime, .. }));
        assert!(e.to_string().contains("\"main\""), "{e}");
    }
}
