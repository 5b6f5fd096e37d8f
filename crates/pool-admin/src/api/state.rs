//! [`AdminState`], what the admin routes serve from (the pools, the optimizer's history, the
//! token, the served document), its builder, and the one resize path that the admin API and the
//! auto-tuner share.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pool_core::{DynPool, Registry, pool_id};
use pool_optimizer::{Budget, Decision, Recommendation, Sampler, Settings, analyze};
#[cfg(feature = "postgres")]
use pool_postgres::PgCluster;
#[cfg(feature = "redis")]
use pool_redis::RedisPools;
use serde_json::Value;

use crate::config::{Secret, ServerConfig};

/// What the admin routes serve from: the pools, the optimizer's history, the token.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) registry: Registry,
    #[cfg(feature = "postgres")]
    pub(super) clusters: BTreeMap<String, PgCluster>,
    #[cfg(feature = "redis")]
    pub(super) redis: Option<RedisPools>,
    pub(super) token: Secret,
    pub(super) metrics_open: bool,
    pub(super) dashboard: bool,
    pub(super) health_timeout: Duration,
    pub(super) budgets: Vec<Budget>,
    pub(super) settings: Settings,
    pub(super) sampler: Mutex<Sampler>,
    pub(super) config: Value,
    /// The OpenAPI document as this state's router serves it, rendered once.
    pub(super) openapi: String,
    pub(super) decisions: Mutex<Vec<Decision>>,
    /// Held from a resize's budget check to the resize itself, so two resizes that each fit the
    /// budget cannot together break it.
    pub(super) resizing: Mutex<()>,
}

impl AdminState {
    /// Resizes `pool` unless that would break one of its connection budgets, checking and
    /// resizing under one lock: the admin API and the auto-tuner both go through here.
    ///
    /// Each other pool of a budget counts at the larger of its `pool_size + max_overflow` and
    /// the connections it has open: a shrink closes no connection under its user, so a pool
    /// just shrunk still holds its busy connections until they come back and close.
    ///
    /// # Errors
    ///
    /// What refused it: a budget (naming it and its numbers) or the pool's own checks.
    pub fn resize_within_budgets(
        &self,
        pool: &Arc<dyn DynPool>,
        pool_size: usize,
        max_overflow: usize,
    ) -> Result<(), String> {
        let _one_at_a_time = self.inner.resizing.lock().unwrap_or_else(PoisonError::into_inner);
        let id = pool_id(pool.as_ref());
        for b in self.inner.budgets.iter().filter(|b| b.pools.contains(&id)) {
            let mut others = 0usize;
            // The other pools holding more than their size, as `id: 8 open, size 2`.
            let mut over = Vec::new();
            for other in b.pools.iter().filter(|p| **p != id) {
                let Some(other) = self.inner.registry.get(other) else { continue };
                let size = other.config().max_size();
                let open = other.stats().open;
                if open > size {
                    over.push(format!("{}: {open} open, size {size}", pool_id(other.as_ref())));
                }
                others = others.saturating_add(size.max(open));
            }
            let wanted = pool_size.saturating_add(max_overflow);
            if others.saturating_add(wanted) > b.available() {
                let over =
                    if over.is_empty() { String::new() } else { format!(" ({})", over.join(", ")) };
                return Err(format!(
                    "refused: pool_size {pool_size} + max_overflow {max_overflow} would exceed the connection budget of {} ({} allowed, other pools may open {others}): each other pool counts at the larger of its pool_size + max_overflow and its open connections{over}",
                    b.name,
                    b.available()
                ));
            }
        }
        pool.resize(pool_size, max_overflow).map_err(|e| e.to_string())
    }

    /// State over `registry`, every admin route requiring `token`.
    pub(crate) fn builder(registry: Registry, token: Secret) -> AdminStateBuilder {
        AdminStateBuilder {
            registry,
            token,
            #[cfg(feature = "postgres")]
            clusters: BTreeMap::new(),
            #[cfg(feature = "redis")]
            redis: None,
            server: ServerConfig::default(),
            budgets: Vec::new(),
            config: Value::Null,
        }
    }

    /// The pools served.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Takes a stats sample of every pool for the optimizer (the server does this on a timer).
    pub fn sample(&self) {
        self.sampler().sample(tokio::time::Instant::now());
    }

    /// The optimizer's current recommendations.
    ///
    /// A pool resized since its newest window gets no resize proposal (nor a budget one) until
    /// windows at its new size come in: the windows describe the old size. Its alerts stay.
    pub fn recommendations(&self) -> Vec<Recommendation> {
        let windows = self.sampler().windows();
        let mut recs = analyze(&windows, &self.inner.settings, &self.inner.budgets);
        recs.retain(|r| {
            let Some(pool) = self.inner.registry.get(&r.pool) else { return true };
            let live = pool.config();
            let resized = (live.pool_size, live.max_overflow)
                != (r.current.pool_size, r.current.max_overflow);
            !(resized && (r.proposed.is_some() || r.issue == "Connection budget exhausted"))
        });
        recs
    }

    /// Records auto-tuner decisions for `GET optimize` (the last 100 are kept).
    pub fn record_decisions(&self, decisions: &[Decision]) {
        let mut kept = self.inner.decisions.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend_from_slice(decisions);
        let excess = kept.len().saturating_sub(100);
        kept.drain(..excess);
    }

    /// The optimizer's windows, for the auto-tuner.
    pub fn windows(&self) -> BTreeMap<String, Vec<pool_optimizer::Window>> {
        self.sampler().windows()
    }

    /// Connection budgets known to the optimizer.
    pub fn budgets(&self) -> &[Budget] {
        &self.inner.budgets
    }

    fn sampler(&self) -> std::sync::MutexGuard<'_, Sampler> {
        self.inner.sampler.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds an [`AdminState`].
#[derive(Debug)]
#[must_use]
pub(crate) struct AdminStateBuilder {
    registry: Registry,
    token: Secret,
    #[cfg(feature = "postgres")]
    clusters: BTreeMap<String, PgCluster>,
    #[cfg(feature = "redis")]
    redis: Option<RedisPools>,
    server: ServerConfig,
    budgets: Vec<Budget>,
    config: Value,
}

impl AdminStateBuilder {
    /// PostgreSQL clusters, for replica bans and lag in `GET health` and `GET stats`. Feature
    /// `postgres`.
    #[cfg(feature = "postgres")]
    pub(crate) fn clusters(mut self, clusters: BTreeMap<String, PgCluster>) -> Self {
        self.clusters = clusters;
        self
    }

    /// The Redis pools (also registered in the registry), so `GET stats` reports each one's
    /// shared clients (`shared_clients`, `shared_connected`), which the `DynPool` trait does not
    /// see: for a Redis pool that is only registered, they are null. Feature `redis`.
    #[cfg(feature = "redis")]
    pub(crate) fn redis(mut self, pools: RedisPools) -> Self {
        self.redis = Some(pools);
        self
    }

    /// The server's settings that the routes follow: `metrics_open`, `dashboard` and
    /// `health_timeout`.
    pub(crate) fn server(mut self, settings: &ServerConfig) -> Self {
        self.server = settings.clone();
        self
    }

    /// Connection budgets: the optimizer never proposes more, and resizes that break one are
    /// refused.
    pub(crate) fn budgets(mut self, budgets: Vec<Budget>) -> Self {
        self.budgets = budgets;
        self
    }

    /// The (redacted) configuration `GET config` shows besides each pool's live settings.
    pub(crate) fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// The state.
    pub(crate) fn build(self) -> AdminState {
        AdminState {
            inner: Arc::new(Inner {
                sampler: Mutex::new(Sampler::new(self.registry.clone(), 30)),
                registry: self.registry,
                #[cfg(feature = "postgres")]
                clusters: self.clusters,
                #[cfg(feature = "redis")]
                redis: self.redis,
                token: self.token,
                metrics_open: self.server.metrics_open,
                dashboard: self.server.dashboard,
                health_timeout: self.server.health_timeout,
                budgets: self.budgets,
                settings: Settings::default(),
                config: self.config,
                openapi: super::openapi::document(self.server.metrics_open, self.server.dashboard)
                    .to_json()
                    .unwrap_or_default(),
                decisions: Mutex::new(Vec::new()),
                resizing: Mutex::new(()),
            }),
        }
    }
}
