//! The object-safe [`DynPool`] trait every layer above the backends speaks, and [`Health`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::PoolConfig;
use crate::error::{ObserveError, ResizeError};
use crate::manager::Manager;
use crate::observer::Observer;
use crate::pool::ConnectionPool;
use crate::stats::PoolStats;

/// A pool seen from above, whatever its backend: metrics, the optimizer and the admin API hold
/// `Arc<dyn DynPool>` and never know the backend's types.
///
/// [`ConnectionPool`] is the pool itself, typed by its [`Manager`]; `DynPool` is the same pool
/// with the connection type erased, as a [`Registry`](crate::Registry) holds it. Backends whose
/// pool is more than one engine (a read/write cluster, Redis's shared clients) implement it
/// themselves.
#[async_trait]
pub trait DynPool: Send + Sync + fmt::Debug + 'static {
    /// The pool's name (`main`, `main-replica-1`, `cache`...).
    fn name(&self) -> &str;

    /// The backend (`postgresql`, `redis`...), as `db.system.name` reports it.
    fn backend(&self) -> &'static str;

    /// A snapshot of the pool's stats.
    fn stats(&self) -> PoolStats;

    /// The pool's current settings.
    fn config(&self) -> PoolConfig;

    /// Changes `pool_size` and `max_overflow` at runtime (see [`ConnectionPool::resize`]).
    ///
    /// # Errors
    ///
    /// [`ResizeError`] naming what was refused.
    fn resize(&self, pool_size: usize, max_overflow: usize) -> Result<(), ResizeError>;

    /// Zeroes counters, histograms and peaks.
    fn reset_stats(&self);

    /// Attaches an [`Observer`] (see [`ConnectionPool::set_observer`]).
    ///
    /// # Errors
    ///
    /// [`ObserveError`] when the pool has one already.
    fn set_observer(&self, observer: Arc<dyn Observer>) -> Result<(), ObserveError>;

    /// Checks the pool actively: one real round trip on one of its connections, bounded by
    /// `connect_timeout`. An idle connection is checked in place, so a probe does not count as a
    /// checkout (see [`ConnectionPool::check_health`]).
    async fn health(&self) -> Health;

    /// The error of the pool's last connect attempt while connects are failing, `None` once
    /// one succeeds (see [`ConnectionPool::last_connect_error`]): what a health check that
    /// timed out waiting for a connection can name as the cause.
    fn last_connect_error(&self) -> Option<String> {
        None
    }
}

/// The result of an active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// The pool's name.
    pub pool: String,
    /// Whether the round trip succeeded.
    pub healthy: bool,
    /// How long the round trip took (zero when it failed before the check).
    pub latency: Duration,
    /// What failed, when it did.
    pub error: Option<String>,
}

impl Health {
    /// A check of `pool` that succeeded in `latency`.
    pub fn up(pool: impl Into<String>, latency: Duration) -> Self {
        Health { pool: pool.into(), healthy: true, latency, error: None }
    }

    /// A check of `pool` that failed with `error`.
    pub fn down(pool: impl Into<String>, error: impl Into<String>) -> Self {
        Health {
            pool: pool.into(),
            healthy: false,
            latency: Duration::ZERO,
            error: Some(error.into()),
        }
    }
}

#[async_trait]
impl<M: Manager + fmt::Debug> DynPool for ConnectionPool<M> {
    fn name(&self) -> &str {
        ConnectionPool::name(self)
    }

    fn backend(&self) -> &'static str {
        M::BACKEND
    }

    fn stats(&self) -> PoolStats {
        ConnectionPool::stats(self)
    }

    fn config(&self) -> PoolConfig {
        ConnectionPool::config(self)
    }

    fn resize(&self, pool_size: usize, max_overflow: usize) -> Result<(), ResizeError> {
        ConnectionPool::resize(self, pool_size, max_overflow)
    }

    fn reset_stats(&self) {
        ConnectionPool::reset_stats(self);
    }

    fn set_observer(&self, observer: Arc<dyn Observer>) -> Result<(), ObserveError> {
        ConnectionPool::set_observer(self, observer)
    }

    fn last_connect_error(&self) -> Option<String> {
        ConnectionPool::last_connect_error(self).map(|e| e.to_string())
    }

    async fn health(&self) -> Health {
        let pool = self.name().to_owned();
        match self.check_health().await {
            Ok(latency) => Health { pool, healthy: true, latency, error: None },
            Err(error) => {
                Health { pool, healthy: false, latency: Duration::ZERO, error: Some(error) }
            }
        }
    }
}
