//! [`ClusterBuilder`]: a cluster's pools and routing settings, validated and started.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pool_core::{ConnectionPool, CredentialProvider, PoolConfig};

use crate::error::ClusterBuildError;
use crate::manager::{ConnectHook, PgManager};
use crate::tls::TlsSettings;

use super::*;

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
    tls: Option<TlsSettings>,
    credentials: Option<Arc<dyn CredentialProvider>>,
    hook: Option<Hook>,
}

/// The cluster's hook, shown in `Debug` as whether there is one.
struct Hook(ConnectHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnectHook")
    }
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

    /// TLS for every pool of the cluster (the primary's, the replicas' and the lag probe's
    /// connections): each field `settings` sets replaces what the managers' URLs said (see
    /// [`PgManager::tls`]).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use pool_postgres::{PgCluster, PgManager, SslMode, TlsSettings};
    ///
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let cluster = PgCluster::builder("main", PgManager::from_url("postgres://app@db-primary/app")?)
    ///     .replica(PgManager::from_url("postgres://app@db-replica/app")?)
    ///     .tls(TlsSettings::new().mode(SslMode::VerifyFull).root_cert("/etc/ssl/db-ca.pem"))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, settings: TlsSettings) -> Self {
        self.tls = Some(settings);
        self
    }

    /// Asks `provider` for the password or token of every new connection of every pool of the
    /// cluster, in place of the managers' own (see [`PgManager::with_credentials`]); one
    /// provider serves them all, so a [`CachedCredentials`](pool_core::CachedCredentials)
    /// fetches one token for the whole cluster.
    pub fn credentials(mut self, provider: impl CredentialProvider) -> Self {
        self.credentials = Some(Arc::new(provider));
        self
    }

    /// Runs `hook` on every new connection of every pool of the cluster and after each session
    /// reset, in place of the managers' own (see [`PgManager::after_connect`]).
    pub fn after_connect(mut self, hook: ConnectHook) -> Self {
        self.hook = Some(Hook(hook));
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
        let cluster_wide = |mut manager: PgManager| {
            if let Some(tls) = &self.tls {
                manager = manager.tls(tls.clone());
            }
            if let Some(provider) = &self.credentials {
                manager = manager.with_shared_credentials(Arc::clone(provider));
            }
            if let Some(Hook(hook)) = &self.hook {
                manager = manager.after_connect(Arc::clone(hook));
            }
            manager
        };
        let primary = build(self.name.clone(), cluster_wide(self.primary), &self.config)?;
        let replica_config = self.replica_config.as_ref().unwrap_or(&self.config);
        let mut replicas = Vec::with_capacity(self.replicas.len());
        for (i, manager) in self.replicas.into_iter().enumerate() {
            let name = format!("{}-replica-{}", self.name, i + 1);
            // A replica promoted under a read cannot take its writes either.
            let manager =
                cluster_wide(manager).server_settings([("default_transaction_read_only", "on")]);
            let pool = build(name, manager, replica_config)?;
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
            tls: None,
            credentials: None,
            hook: None,
        }
    }
}
