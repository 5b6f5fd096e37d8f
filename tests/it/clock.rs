//! The pools this binary tests read the clock that ships. `cargo test --workspace` turns on
//! pool-core's `testing` feature here too (other crates' dev-dependencies ask for it, and cargo
//! unifies features), and that feature must change no pool that does not ask for tokio's clock.

use pool_admin::{AdminConfig, PostgresConfig, Secret};
use pool_harness::{postgres_url, redis_url};
use pool_postgres::{PgCluster, PgManager, PgPool};
use pool_redis::{PoolSettings, RedisPool};

type Result<T = ()> = anyhow::Result<T>;

/// Every way the other modules build a pool: the engine's builder over a backend's manager, a
/// PostgreSQL cluster's primary and replica, a Redis pool, and the admin server's pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_here_reads_the_clock_that_ships() -> Result {
    let pg = PgPool::builder(PgManager::from_url(&postgres_url())?).name("clock").build()?;
    let cluster = PgCluster::builder("clock", PgManager::from_url(&postgres_url())?)
        .replica(PgManager::from_url(&postgres_url())?)
        .build()?;
    let redis = RedisPool::connect("clock", &redis_url(), PoolSettings::default()).await?;
    let mut config = AdminConfig::default();
    config.postgres.clear();
    let mut clock = PostgresConfig::default();
    clock.url = Secret(postgres_url());
    config.postgres.insert("clock".to_owned(), clock);
    config.redis_url = Secret(redis_url());
    config.redis.clear();
    config.redis.insert("clock".to_owned(), PoolSettings::default());
    let admin = pool_admin::Pools::start(&config).await?;

    let mut pools = vec![
        ("PgPool::builder", pg.reads_tokio_clock()),
        ("PgCluster primary", cluster.primary().reads_tokio_clock()),
        ("RedisPool", redis.engine().reads_tokio_clock()),
    ];
    pools.extend(cluster.replicas().iter().map(|r| ("PgCluster replica", r.reads_tokio_clock())));
    for c in admin.clusters.values() {
        pools.push(("admin's cluster primary", c.primary().reads_tokio_clock()));
    }
    for r in admin.redis.iter().flat_map(|r| r.iter()) {
        pools.push(("admin's Redis pool", r.engine().reads_tokio_clock()));
    }
    assert_eq!(pools.len(), 6, "every pool built: {pools:?}");
    let on_tokio: Vec<_> = pools.iter().filter(|(_, tokio)| *tokio).collect();
    assert!(on_tokio.is_empty(), "pools on tokio's clock, not the one that ships: {on_tokio:?}");

    pg.close().await?;
    cluster.close().await?;
    redis.close().await?;
    for c in admin.clusters.values() {
        c.close().await?;
    }
    if let Some(r) = &admin.redis {
        r.close().await?;
    }
    Ok(())
}
