//! The demo load generator of `serve --demo-load`: reads, writes and transactions on every
//! PostgreSQL cluster and commands on every Redis pool, with a concurrency that rises and falls
//! so the stats and the optimizer have something to show.

use std::sync::Arc;
use std::time::Duration;

use pool_admin::Pools;
use pool_postgres::sqlx;
use pool_redis::fred::interfaces::KeysInterface;
use pool_redis::fred::types::Expiration;

/// Starts the load; abort the handle to stop it.
pub(crate) fn spawn(pools: &Arc<Pools>) -> tokio::task::JoinHandle<()> {
    let pools = Arc::clone(pools);
    tokio::spawn(async move {
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..24u64 {
            let pools = Arc::clone(&pools);
            workers.spawn(async move {
                let mut step = 0u64;
                loop {
                    step += 1;
                    // Concurrency follows a slow wave: half the workers rest in the quiet phase.
                    let phase = (step / 200 + worker) % 4;
                    if phase == 0 && worker % 2 == 0 {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                    for cluster in pools.clusters.values() {
                        if step.is_multiple_of(5) {
                            if let Ok(mut conn) = cluster.session().await {
                                let _ =
                                    sqlx::query("SELECT pg_sleep(0.005)").execute(&mut *conn).await;
                            }
                        } else if let Ok(mut conn) = cluster.session_read_only().await {
                            let _ = sqlx::query("SELECT pg_sleep(0.002)").execute(&mut *conn).await;
                        }
                    }
                    if let Some(redis) = &pools.redis {
                        for pool in redis.iter() {
                            let key = format!("pool-admin-demo:{}", step % 100);
                            // On the shared Redis too: the keys expire a minute after the demo.
                            let ttl = Some(Expiration::EX(60));
                            let _: Result<(), _> =
                                pool.shared().set(&key, step, ttl, None, false).await;
                            let _: Result<Option<u64>, _> = pool.shared().get(&key).await;
                            if step.is_multiple_of(10)
                                && let Ok(conn) = pool.exclusive().await
                            {
                                let _: Result<Option<u64>, _> = conn.get(&key).await;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5 + fastrand::u64(..10))).await;
                }
            });
        }
        while workers.join_next().await.is_some() {}
    })
}
