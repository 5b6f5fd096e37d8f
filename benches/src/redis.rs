//! `bench redis`: `GET` of one small key on a real Redis (`REDIS_URL`, by default
//! `redis://127.0.0.1:6379`), from one task and from 16, 64 and 256 tasks, on a 2-worker tokio
//! runtime: our exclusive checkout and our shared clients against deadpool-redis, bb8-redis,
//! fred's own round-robin `Pool` and one fred `Client`.
//!
//! Checkout pools get 10 connections (`--connections`) and keep their default health checks:
//! ours pings a connection idle past `health_check_interval`, deadpool-redis pipelines
//! `UNWATCH` + `PING` on every recycle, bb8-redis pings on every checkout. fred's `Pool` has as
//! many clients.

use anyhow::Context as _;
use deadpool_redis::redis::{self, AsyncCommands as _};
use fred::prelude::{ClientLike as _, KeysInterface as _};

use crate::report;

/// Options of `bench redis`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: report::Common,
    /// Pools to run; all by default.
    #[arg(long, value_delimiter = ',', default_values_t = POOLS.map(String::from).to_vec())]
    pools: Vec<String>,
    /// Connections of every pool: the same for all, so their ratios stay comparable.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: u16,
    /// Shared clients of our pool (`PoolSettings::shared_clients`); its default when unset.
    #[arg(long)]
    shared_clients: Option<usize>,
    /// Our shared clients without `shared_command_timeout` (its default, 5 s, arms a timer per
    /// command, as a bare fred client does not): shows what that bound costs.
    #[arg(long)]
    no_shared_command_timeout: bool,
}

const KEY: &str = "pool-bench:redis:key";

const POOLS: [&str; 6] = [
    "pool-redis-exclusive",
    "pool-redis-shared",
    "deadpool-redis",
    "bb8-redis",
    "fred-pool",
    "fred-client",
];

/// The pools under test, behind one interface.
#[derive(Clone)]
enum Subject {
    Exclusive(pool_redis::RedisPool),
    Shared(pool_redis::RedisPool),
    Deadpool(deadpool_redis::Pool),
    Bb8(bb8::Pool<bb8_redis::RedisConnectionManager>),
    FredPool(fred::clients::Pool),
    FredClient(fred::clients::Client),
}

impl Subject {
    fn name(&self) -> &'static str {
        match self {
            Subject::Exclusive(_) => "pool-redis-exclusive",
            Subject::Shared(_) => "pool-redis-shared",
            Subject::Deadpool(_) => "deadpool-redis",
            Subject::Bb8(_) => "bb8-redis",
            Subject::FredPool(_) => "fred-pool",
            Subject::FredClient(_) => "fred-client",
        }
    }

    async fn build(name: &str, url: &str, args: &Args) -> anyhow::Result<Subject> {
        let ours = || async {
            let mut settings = pool_redis::PoolSettings::default()
                .pool_size(usize::from(args.connections))
                .max_connections(usize::from(args.connections));
            if let Some(n) = args.shared_clients {
                settings = settings.shared_clients(n);
            }
            if args.no_shared_command_timeout {
                settings = settings.shared_command_timeout(None);
            }
            pool_redis::RedisPool::connect("bench", url, settings).await
        };
        let fred_config = || fred::prelude::Config::from_url(url);
        Ok(match name {
            "pool-redis-exclusive" => Subject::Exclusive(ours().await?),
            "pool-redis-shared" => Subject::Shared(ours().await?),
            "deadpool-redis" => {
                let pool = deadpool_redis::Config::from_url(url)
                    .builder()?
                    .max_size(usize::from(args.connections))
                    .runtime(deadpool_redis::Runtime::Tokio1)
                    .build()?;
                Subject::Deadpool(pool)
            }
            "bb8-redis" => {
                let manager = bb8_redis::RedisConnectionManager::new(url)?;
                Subject::Bb8(
                    bb8::Pool::builder()
                        .max_size(u32::from(args.connections))
                        .build(manager)
                        .await?,
                )
            }
            "fred-pool" => {
                let pool = fred::prelude::Builder::from_config(fred_config()?)
                    .build_pool(usize::from(args.connections))?;
                pool.init().await?;
                Subject::FredPool(pool)
            }
            "fred-client" => {
                let client = fred::prelude::Builder::from_config(fred_config()?).build()?;
                client.init().await?;
                Subject::FredClient(client)
            }
            other => anyhow::bail!("unknown pool {other:?}; expected one of {POOLS:?}"),
        })
    }

    /// Opens every connection of a checkout pool, so no scenario measures connects.
    async fn warm(&self, connections: usize) -> anyhow::Result<()> {
        match self {
            Subject::Exclusive(p) => report::hold_all(connections, || p.exclusive()).await?,
            Subject::Deadpool(p) => report::hold_all(connections, || p.get()).await?,
            Subject::Bb8(p) => report::hold_all(connections, || p.get()).await?,
            Subject::Shared(_) | Subject::FredPool(_) | Subject::FredClient(_) => {}
        }
        self.op().await
    }

    /// One `GET`, through a checkout where the pool has one.
    #[inline]
    async fn op(&self) -> anyhow::Result<()> {
        let value: Option<String> = match self {
            Subject::Exclusive(p) => p.exclusive().await?.get(KEY).await?,
            Subject::Shared(p) => p.shared().get(KEY).await?,
            Subject::Deadpool(p) => p.get().await?.get(KEY).await?,
            Subject::Bb8(p) => p.get().await?.get(KEY).await?,
            Subject::FredPool(p) => p.get(KEY).await?,
            Subject::FredClient(c) => c.get(KEY).await?,
        };
        anyhow::ensure!(value.as_deref() == Some("value"), "GET {KEY} returned {value:?}");
        Ok(())
    }

    async fn close(self) {
        match self {
            Subject::Exclusive(p) | Subject::Shared(p) => {
                let _ = p.close().await;
            }
            Subject::Deadpool(p) => p.close(),
            Subject::Bb8(_) => {}
            Subject::FredPool(p) => {
                let _ = p.quit().await;
            }
            Subject::FredClient(c) => {
                let _ = c.quit().await;
            }
        }
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| pool_redis::DEFAULT_URL.to_owned());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await.with_context(|| {
            format!("Redis is not reachable at {url} (REDIS_URL): start it with `cargo xtask services up`")
        })?;
        conn.set::<_, _, ()>(KEY, "value").await?;
        anyhow::Ok(())
    })?;
    let pools: Vec<&str> =
        POOLS.iter().copied().filter(|p| args.pools.iter().any(|a| a == p)).collect();
    let measured = report::run_rounds(&args.common, &pools, |scenario, tasks, name| {
        rt.block_on(async {
            let subject = Subject::build(name, &url, args).await?;
            subject.warm(usize::from(args.connections)).await?;
            let op = {
                let subject = subject.clone();
                move || {
                    let subject = subject.clone();
                    async move { subject.op().await }
                }
            };
            let row =
                report::timed_tasks(&args.common, scenario, tasks, subject.name(), op).await?;
            subject.close().await;
            anyhow::Ok(row)
        })
    })?;
    println!();
    report::print_table(&measured, "pool-redis-exclusive");
    println!();
    report::print_table(&measured, "pool-redis-shared");
    let path = report::write_json("redis", &measured.rows)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
