//! [`Member`]: a cluster's pool as a registry holds it, its routing read from the cluster.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use pool_core::{
    DynPool, Health as PoolHealth, Manager, ObserveError, Observer, PoolConfig, PoolStats,
    ResizeError, Routing,
};
use tokio::time::Instant;

use crate::PgPool;
use crate::manager::PgManager;

use super::*;

/// A cluster's pool as the registry holds it: the pool itself, plus its [`Routing`] read from
/// the cluster (while the cluster lives) on every [`DynPool::stats`].
#[derive(Debug)]
pub(super) struct Member {
    pub(super) pool: PgPool,
    pub(super) cluster: Weak<Inner>,
    /// `None` for the primary, else the replica's index.
    pub(super) replica: Option<usize>,
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
                    // A promoted replica is out of rotation like a banned one.
                    banned: h.out_of_rotation(Instant::now(), probing),
                    lagging: h.servers.all_lagging(),
                    lag: h.servers.worst().0,
                }
            }
        })
    }
}

#[async_trait]
impl DynPool for Member {
    fn name(&self) -> &str {
        self.pool.name()
    }

    fn last_connect_error(&self) -> Option<String> {
        DynPool::last_connect_error(&self.pool)
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
        DynPool::health(&self.pool).await
    }
}
