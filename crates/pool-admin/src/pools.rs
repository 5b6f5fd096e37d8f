//! [`Pools`]: the PostgreSQL clusters and Redis pools of a config, started and registered, and
//! the connection budgets of the servers behind them.

use std::collections::BTreeMap;
#[cfg(any(feature = "postgres", feature = "redis"))]
use std::time::Duration;

use pool_core::Registry;
use pool_optimizer::Budget;
#[cfg(feature = "postgres")]
use pool_postgres::PgCluster;
#[cfg(feature = "postgres")]
use pool_postgres::sqlx::postgres::PgConnectOptions;
#[cfg(feature = "redis")]
use pool_redis::{RedisConfig, RedisPools};

use crate::config::AdminConfig;

/// The running pools of a config.
#[derive(Debug)]
pub struct Pools {
    /// Every pool, PostgreSQL primaries and replicas and Redis pools, by name.
    pub registry: Registry,
    /// PostgreSQL clusters by name. Feature `postgres`.
    #[cfg(feature = "postgres")]
    pub clusters: BTreeMap<String, PgCluster>,
    /// Redis pools, when any are configured. Feature `redis`.
    #[cfg(feature = "redis")]
    pub redis: Option<RedisPools>,
    /// Connection budgets for the optimizer.
    pub budgets: Vec<Budget>,
}

/// Why the pools could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A PostgreSQL pool could not be built.
    #[error("postgres pool {pool:?}: {message}")]
    Postgres {
        /// The pool's name.
        pool: String,
        /// What failed.
        message: String,
    },
    /// The Redis pools could not be built.
    #[error("redis pools: {0}")]
    Redis(String),
}

/// The server's own connection budget (`max_connections` less reserved), asked once at start;
/// `None` (with a warning) when the server cannot be asked now.
#[cfg(feature = "postgres")]
async fn server_budget(options: &PgConnectOptions) -> Option<usize> {
    use pool_postgres::sqlx::Connection as _;
    let ask = async {
        let mut conn = pool_postgres::sqlx::PgConnection::connect_with(options).await?;
        let budget = pool_postgres::connection_budget(&mut conn).await;
        let _ = conn.close().await;
        budget
    };
    let server = format!("{}:{}", options.get_host(), options.get_port());
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(budget)) => Some(budget),
        Ok(Err(e)) => {
            tracing::warn!(%server, error = %e, "could not read the connection budget");
            None
        }
        Err(_) => {
            tracing::warn!(%server, "reading the connection budget timed out");
            None
        }
    }
}

/// The Redis server's client budget, shared by every Redis pool (they all use `redis_url`): its
/// `maxclients`, less the shared clients, which sit outside the engines' sizes. `None` (with a
/// warning) when the server does not say.
#[cfg(feature = "redis")]
async fn redis_budget(pools: &RedisPools) -> Option<Budget> {
    let first = pools.iter().next()?;
    let max = match tokio::time::timeout(Duration::from_secs(5), first.max_clients()).await {
        Ok(Ok(max)) => max,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "could not read the Redis server's maxclients: Redis pools have no client budget");
            return None;
        }
        Err(_) => {
            tracing::warn!(
                "reading the Redis server's maxclients timed out: Redis pools have no client budget"
            );
            return None;
        }
    };
    Some(Budget {
        name: "redis server".to_owned(),
        max_connections: max,
        reserved: pools.iter().map(|p| p.stats().shared_clients).sum(),
        pools: pools.iter().map(|p| format!("redis:{}", p.name())).collect(),
    })
}

/// The PostgreSQL servers of the clusters, each with the pools on it: the pools of one server
/// share its connection budget, whichever cluster they belong to (two clusters on one server, or
/// a cluster whose replica is another's primary).
#[cfg(feature = "postgres")]
#[derive(Debug, Default)]
struct Servers(BTreeMap<(String, u16), Server>);

/// One server: where to ask its budget, the budget configured for it, and its pools.
#[cfg(feature = "postgres")]
#[derive(Debug)]
struct Server {
    options: PgConnectOptions,
    /// The smallest `connection_budget` of its pools' configs, if any has one.
    configured: Option<usize>,
    /// `(label, pool)`: `("main primary", "main")`, `("main-replica-1 server", "main-replica-1")`.
    pools: Vec<(String, String)>,
}

#[cfg(feature = "postgres")]
impl Servers {
    /// Adds a pool on the server that `options` lead to, known by its host and port as written
    /// (`localhost` and `127.0.0.1` count as two servers).
    fn add(
        &mut self,
        label: String,
        pool: &str,
        options: &PgConnectOptions,
        configured: Option<usize>,
    ) {
        let key = (options.get_host().to_owned(), options.get_port());
        let server = self.0.entry(key).or_insert_with(|| Server {
            options: options.clone(),
            configured: None,
            pools: Vec::new(),
        });
        server.configured = match (server.configured, configured) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        server.pools.push((label, pool.to_owned()));
    }

    /// The servers of `clusters`, each cluster's `connection_budget` from `configured` (by
    /// cluster name) when it has one.
    fn of(clusters: &BTreeMap<String, PgCluster>, configured: &BTreeMap<String, usize>) -> Self {
        let mut servers = Servers::default();
        for (name, cluster) in clusters {
            let budget = configured.get(name).copied();
            let primary = cluster.primary();
            let label = format!("{} primary", primary.name());
            servers.add(label, primary.name(), primary.manager().options(), budget);
            for replica in cluster.replicas() {
                let label = format!("{} server", replica.name());
                servers.add(label, replica.name(), replica.manager().options(), budget);
            }
        }
        servers
    }
}

#[cfg(feature = "postgres")]
impl Server {
    /// The budget of `max` connections shared by the server's pools, named by its only pool's
    /// label, or by all of them when it has several.
    fn budget(self, max: usize) -> Budget {
        let name = match self.pools.as_slice() {
            [(label, _)] => label.clone(),
            pools => pools.iter().map(|(label, _)| label.as_str()).collect::<Vec<_>>().join(" + "),
        };
        Budget {
            name,
            max_connections: max,
            reserved: 0,
            pools: self.pools.into_iter().map(|(_, pool)| format!("postgresql:{pool}")).collect(),
        }
    }
}

impl Pools {
    /// Starts every pool of `config` and registers them.
    ///
    /// # Errors
    ///
    /// [`StartError`] naming the pool that could not be built (a malformed URL, an unreachable
    /// Redis).
    pub async fn start(config: &AdminConfig) -> Result<Pools, StartError> {
        #[cfg_attr(not(any(feature = "postgres", feature = "redis")), allow(unused_mut))]
        let mut pools = Pools::empty(Registry::new());
        #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
        let mut configured = BTreeMap::new();
        #[cfg(feature = "postgres")]
        for (name, pg) in &config.postgres {
            let err = |message: String| StartError::Postgres { pool: name.clone(), message };
            let cluster = pg.build(name.clone()).map_err(|e| err(e.to_string()))?;
            cluster.register(&pools.registry).map_err(|e| err(e.to_string()))?;
            if let Some(budget) = pg.connection_budget {
                configured.insert(name.clone(), budget);
            }
            pools.clusters.insert(name.clone(), cluster);
        }
        #[cfg(feature = "redis")]
        if !config.redis.is_empty() {
            let mut rc = RedisConfig::new(config.redis_url.expose());
            for (name, settings) in &config.redis {
                rc = rc.pool(name.clone(), settings.clone());
            }
            let redis =
                RedisPools::connect(&rc).await.map_err(|e| StartError::Redis(e.to_string()))?;
            redis.register(&pools.registry).map_err(|e| StartError::Redis(e.to_string()))?;
            pools.redis = Some(redis);
        }
        #[cfg(not(any(feature = "postgres", feature = "redis")))]
        let _ = config;
        pools.read_budgets(&configured).await;
        Ok(pools)
    }

    /// No pools but those already in `registry`, no budgets.
    pub(crate) fn empty(registry: Registry) -> Pools {
        Pools {
            registry,
            #[cfg(feature = "postgres")]
            clusters: BTreeMap::new(),
            #[cfg(feature = "redis")]
            redis: None,
            budgets: Vec::new(),
        }
    }

    /// Adds the connection budget of each server behind these pools that no budget already
    /// covers (none of its pools is in one): a PostgreSQL server's `configured` budget (by
    /// cluster name, the smallest of its clusters'), else the one it reports
    /// ([`pool_postgres::connection_budget`]); the Redis server's `maxclients` less the shared
    /// clients. A server that cannot be asked within 5 s gets no budget (with a warning).
    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    pub(crate) async fn read_budgets(&mut self, configured: &BTreeMap<String, usize>) {
        let covered = |budgets: &[Budget], pool: &str| {
            budgets.iter().any(|b| b.pools.iter().any(|p| p == pool))
        };
        #[cfg(feature = "postgres")]
        for server in Servers::of(&self.clusters, configured).0.into_values() {
            if server
                .pools
                .iter()
                .any(|(_, pool)| covered(&self.budgets, &format!("postgresql:{pool}")))
            {
                continue;
            }
            let max = match server.configured {
                Some(max) => Some(max),
                None => server_budget(&server.options).await,
            };
            if let Some(max) = max {
                self.budgets.push(server.budget(max));
            }
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis
            && !redis.iter().any(|p| covered(&self.budgets, &format!("redis:{}", p.name())))
        {
            self.budgets.extend(redis_budget(redis).await);
        }
        #[cfg(not(any(feature = "postgres", feature = "redis")))]
        let _ = covered;
    }

    /// Closes every pool, waiting for connections in use up to each pool's timeout.
    pub async fn close(&self) {
        #[cfg(feature = "postgres")]
        for (name, cluster) in &self.clusters {
            if let Err(e) = cluster.close().await {
                tracing::warn!(cluster = %name, error = %e, "closing the cluster");
            }
        }
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis
            && let Err(e) = redis.close().await
        {
            tracing::warn!(error = %e, "closing the redis pools");
        }
    }
}

#[cfg(all(test, feature = "postgres"))]
mod tests {
    use super::Servers;

    #[test]
    fn pools_on_one_server_share_its_budget() {
        let options = |url: &str| url.parse().unwrap();
        let mut servers = Servers::default();
        servers.add("main primary".into(), "main", &options("postgres://app:pw@db:5432/app"), None);
        servers.add(
            "main-replica-1 server".into(),
            "main-replica-1",
            &options("postgres://app@replica:5432/app"),
            None,
        );
        // Another database on the same server, with a budget of its own in the config.
        servers.add("orders primary".into(), "orders", &options("postgres://db/orders"), Some(40));
        servers.add(
            "audit primary".into(),
            "audit",
            &options("postgres://db:5432/audit"),
            Some(60),
        );
        let budgets: Vec<_> = servers
            .0
            .into_values()
            .map(|s| {
                let max = s.configured.unwrap_or(100);
                s.budget(max)
            })
            .collect();
        let summary: Vec<_> = budgets
            .iter()
            .map(|b| (b.name.as_str(), b.max_connections, b.pools.join(",")))
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "main primary + orders primary + audit primary",
                    40,
                    "postgresql:main,postgresql:orders,postgresql:audit".to_owned()
                ),
                ("main-replica-1 server", 100, "postgresql:main-replica-1".to_owned()),
            ]
        );
    }
}
