//! A Redis-only job worker with Prometheus metrics: pool-redis for the queue, pool-admin for
//! `/metrics` (rendered by pool-metrics) and the optimizer, both built without PostgreSQL. Its
//! package builds it with `--no-default-features --features redis` too, and then no sqlx is in
//! the tree: each layer can be embedded alone.
//!
//! It queues jobs, lets three workers take them with `BLPOP` on exclusive connections, scrapes
//! its own `/metrics`, prints what it did and exits: `cargo run -p pool-examples --example
//! redis_worker` (with `REDIS_URL`, or the local Redis).

use pool_admin::Server;
use pool_examples::{Result, get as http_get, redis_url};
use pool_redis::fred::prelude::*;
use pool_redis::{PoolSettings, RedisConfig, RedisPool, RedisPools};

/// Jobs queued, each a number the workers add up.
const JOBS: i64 = 50;
/// Workers taking jobs at once, each on an exclusive connection.
const WORKERS: usize = 3;
/// The job that tells a worker to stop.
const STOP: i64 = -1;

/// Takes jobs from `queue` until its [`STOP`], adding each to `done`; the jobs it took.
async fn work(pool: RedisPool, queue: String, done: String) -> Result<u64> {
    let mut taken = 0;
    loop {
        // BLPOP blocks its connection: an exclusive one, reset before its next user.
        let conn = pool.exclusive().await?;
        let job: Option<(String, i64)> = conn.blpop(&queue, 5.0).await?;
        drop(conn);
        match job {
            Some((_, STOP)) => return Ok(taken),
            Some((_, n)) => {
                let _: i64 = pool.shared().incr_by(&done, n).await?;
                taken += 1;
            }
            None => return Err("the queue stayed empty for 5 s before the stop job".into()),
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let pools = RedisPools::connect(
        &RedisConfig::new(redis_url())
            .pool("jobs", PoolSettings::default().pool_size(WORKERS).max_connections(WORKERS)),
    )
    .await?;
    let registry = pool_core::Registry::new();
    pools.register(&registry)?;
    let jobs = pools.get("jobs").ok_or("no pool jobs")?.clone();

    // `/metrics` without the token, as Prometheus scrapes it; no dashboard on a worker.
    let server = Server::builder(registry)
        .redis(pools.clone())
        .listen("127.0.0.1:0".parse()?)
        .metrics_open(true)
        .dashboard(false)
        .bind()
        .await?;
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    let prefix = format!("pool-examples:redis-worker:{}", std::process::id());
    let (queue, done) = (format!("{prefix}:queue"), format!("{prefix}:done"));
    let mut queued: Vec<i64> = (1..=JOBS).collect();
    queued.extend(std::iter::repeat_n(STOP, WORKERS));
    let _: i64 = jobs.shared().rpush(&queue, queued).await?;
    println!("redis_worker: queued {JOBS} jobs for {WORKERS} workers");

    let workers: Vec<_> = (0..WORKERS)
        .map(|_| tokio::spawn(work(jobs.clone(), queue.clone(), done.clone())))
        .collect();
    let mut taken = Vec::new();
    for worker in workers {
        taken.push(worker.await??);
    }
    let sum: i64 = jobs.shared().get::<Option<i64>, _>(&done).await?.unwrap_or(0);
    let _: i64 = jobs.shared().del((&queue, &done)).await?;
    println!("workers took {taken:?} jobs; their sum is {sum}");
    if sum != JOBS * (JOBS + 1) / 2 {
        return Err(format!("the jobs add up to {}, not {sum}", JOBS * (JOBS + 1) / 2).into());
    }

    let (status, metrics) = http_get(addr, "/metrics", None).await?;
    println!("GET /metrics -> {status}");
    let wanted = [
        "db_client_connection_count",
        "db_client_connection_max",
        "db_client_connection_wait_time_seconds_count",
    ];
    for line in metrics.lines().filter(|l| wanted.iter().any(|w| l.starts_with(w))) {
        println!("  {line}");
    }
    if status != 200 || !metrics.contains("db_client_connection_pool_name=\"jobs\"") {
        return Err(format!("/metrics answered {status} without the pool jobs").into());
    }

    let _ = stop.send(());
    serving.await??;
    pools.close().await?;
    println!("redis_worker: done");
    Ok(())
}
