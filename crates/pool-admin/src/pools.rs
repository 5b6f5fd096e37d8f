//! [`Pools`]: the PostgreSQL clusters and Redis pools of a config, started and registered.

use std::collections::BTreeMap;
use std::time::Duration;

use pool_core::Registry;
use pool_optimizer::Budget;
use pool_postgres::PgCluster;
use pool_redis::{RedisConfig, RedisPools};

use crate::config::AdminConfig;

/// The running pools of a config.
#[derive(Debug)]
pub struct Pools {
    /// Every pool, PostgreSQL primaries and replicas and Redis pools, by name.
    pub registry: Registry,
    /// PostgreSQL clusters by name.
    pub clusters: BTreeMap<String, PgCluster>,
    /// Redis pools, when any are configured.
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
async fn server_budget(url: &str) -> Option<usize> {
    use pool_postgres::sqlx::Connection as _;
    let ask = async {
        let mut conn = pool_postgres::sqlx::PgConnection::connect(url).await?;
        let budget = pool_postgres::connection_budget(&mut conn).await;
        let _ = conn.close().await;
        budget
    };
    match tokio::time::timeout(Duration::from_secs(5), ask).await {
        Ok(Ok(budget)) => Some(budget),
        Ok(Err(e)) => {
            tracing::warn!(url = %crate::config::redact(url), error = %e, "could not read the connection budget");
            None
        }
        Err(_) => {
            tracing::warn!(url = %crate::config::redact(url), "reading the connection budget timed out");
            None
        }
    }
}

/// The Redis server's client budget, shared by every Redis pool (they all use `redis_url`): its
/// `maxclients`, less the shared clients, which sit outside the engines' sizes. `None` (with a
/// warning) when the server does not say.
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

/// The PostgreSQL servers of a config, each with the pools on it: the pools of one server share
/// its connection budget, whichever cluster they belong to (two clusters on one server, or a
/// cluster whose replica is another's primary).
#[derive(Debug, Default)]
struct Servers(BTreeMap<(String, u16), Server>);

/// One server: where to ask its budget, the budget configured for it, and its pools.
#[derive(Debug)]
struct Server {
    url: String,
    /// The smallest `connection_budget` of its pools' configs, if any has one.
    configured: Option<usize>,
    /// `(label, pool)`: `("main primary", "main")`, `("main-replica-1 server", "main-replica-1")`.
    pools: Vec<(String, String)>,
}

impl Servers {
    /// Adds a pool on the server at `url`, known by its host and port as written (`localhost`
    /// and `127.0.0.1` count as two servers).
    fn add(&mut self, label: String, pool: &str, url: &str, configured: Option<usize>) {
        let key = url
            .parse::<pool_postgres::sqlx::postgres::PgConnectOptions>()
            .map_or_else(|_| (url.to_owned(), 0), |o| (o.get_host().to_owned(), o.get_port()));
        let server = self.0.entry(key).or_insert_with(|| Server {
            url: url.to_owned(),
            configured: None,
            pools: Vec::new(),
        });
        server.configured = match (server.configured, configured) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        server.pools.push((label, pool.to_owned()));
    }
}

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
        let registry = Registry::new();
        let mut clusters = BTreeMap::new();
        let mut budgets = Vec::new();
        let mut servers = Servers::default();
        for (name, pg) in &config.postgres {
            let err = |message: String| StartError::Postgres { pool: name.clone(), message };
            let cluster = pg.build(name.clone()).map_err(|e| err(e.to_string()))?;
            cluster.register(&registry).map_err(|e| err(e.to_string()))?;
            servers.add(format!("{name} primary"), name, pg.url.expose(), pg.connection_budget);
            for (replica, url) in cluster.replicas().iter().zip(&pg.replicas) {
                let label = format!("{} server", replica.name());
                servers.add(label, replica.name(), url.expose(), pg.connection_budget);
            }
            clusters.insert(name.clone(), cluster);
        }
        for server in servers.0.into_values() {
            let max = match server.configured {
                Some(max) => Some(max),
                None => server_budget(&server.url).await,
            };
            if let Some(max) = max {
                budgets.push(server.budget(max));
            }
        }
        let redis = if config.redis.is_empty() {
            None
        } else {
            let mut rc = RedisConfig::new(config.redis_url.expose());
            for (name, settings) in &config.redis {
                rc = rc.pool(name.clone(), settings.clone());
            }
            let pools =
                RedisPools::connect(&rc).await.map_err(|e| StartError::Redis(e.to_string()))?;
            pools.register(&registry).map_err(|e| StartError::Redis(e.to_string()))?;
            budgets.extend(redis_budget(&pools).await);
            Some(pools)
        };
        Ok(Pools { registry, clusters, redis, budgets })
    }

    /// Closes every pool, waiting for connections in use up to each pool's timeout.
    pub async fn close(&self) {
        for (name, cluster) in &self.clusters {
            if let Err(e) = cluster.close().await {
                tracing::warn!(cluster = %name, error = %e, "closing the cluster");
            }
        }
        if let Some(redis) = &self.redis
            && let Err(e) = redis.close().await
        {
            tracing::warn!(error = %e, "closing the redis pools");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Servers;

    #[test]
    fn pools_on_one_server_share_its_budget() {
        let mut servers = Servers::default();
        servers.add("main primary".into(), "main", "postgres://app:pw@db:5432/app", None);
        servers.add(
            "main-replica-1 server".into(),
            "main-replica-1",
            "postgres://app@replica:5432/app",
            None,
        );
        // Another database on the same server, with a budget of its own in the config.
        servers.add("orders primary".into(), "orders", "postgres://db/orders", Some(40));
        servers.add("audit primary".into(), "audit", "postgres://db:5432/audit", Some(60));
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
