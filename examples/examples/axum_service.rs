//! An axum service that mounts the admin router over its own pools: a PostgreSQL cluster and
//! Redis pools it builds in code, registered in its own registry. The admin API gets what
//! `pool-admin serve` gets from a config file: the optimizer's samples and recommendations, the
//! servers' connection budgets, replica health and redis-py's numbers.
//!
//! It binds a free port, calls its own routes and the admin API a few times, prints what it
//! saw, and shuts down: `cargo run -p pool-examples --example axum_service` (with
//! `DATABASE_URL` and `REDIS_URL`, or the local servers).

use std::time::Duration;

// pool-admin's axum, the version its router is built with.
use pool_admin::axum::extract::{Path, State};
use pool_admin::axum::http::StatusCode;
use pool_admin::axum::routing::get;
use pool_admin::axum::{self, Router};
use pool_admin::{Secret, Server};
use pool_examples::{Result, database_url, get as http_get, redis_url};
use pool_postgres::{PgCluster, PgManager, sqlx};
use pool_redis::fred::prelude::*;
use pool_redis::{PoolSettings, RedisConfig, RedisPools};

/// The service's own state: its pools.
#[derive(Clone)]
struct App {
    db: PgCluster,
    redis: RedisPools,
}

/// `GET /double/{n}`: the database doubles `n` (on a replica when the cluster has one).
async fn double(
    State(app): State<App>,
    Path(n): Path<i64>,
) -> std::result::Result<String, (StatusCode, String)> {
    let fail = |e: &dyn std::fmt::Display| (StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let mut conn = app.db.session_read_only().await.map_err(|e| fail(&e))?;
    let doubled: i64 = sqlx::query_scalar("SELECT $1::int8 * 2")
        .bind(n)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| fail(&e))?;
    Ok(doubled.to_string())
}

/// `GET /visits`: counts the visits in Redis, on the `cache` pool's shared clients.
async fn visits(State(app): State<App>) -> std::result::Result<String, (StatusCode, String)> {
    let cache = app.redis.get("cache").ok_or((StatusCode::NOT_FOUND, "no cache".to_owned()))?;
    let key = format!("pool-examples:axum-service:{}:visits", std::process::id());
    let count: i64 = cache
        .shared()
        .incr(&key)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let _: bool = cache.shared().expire(&key, 60, None).await.unwrap_or(false);
    Ok(count.to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    // The service's pools, built in code.
    let db = PgCluster::builder("main", PgManager::from_url(&database_url())?).build()?;
    let redis = RedisPools::connect(
        &RedisConfig::new(redis_url())
            .pool("main", PoolSettings::default().pool_size(2).max_connections(4))
            .pool("cache", PoolSettings::default().pool_size(2).max_connections(4)),
    )
    .await?;
    let registry = pool_core::Registry::new();
    db.register(&registry)?;
    redis.register(&registry)?;
    db.warmed(Duration::from_secs(10)).await?;

    // The admin API over them: samples every 200 ms here, to have some before we leave.
    let admin = Server::builder(registry)
        .cluster(db.clone())
        .redis(redis.clone())
        .token(Secret("example-token".to_owned()))
        .sample_interval(Duration::from_millis(200))
        .start()
        .await?;
    let app = Router::new()
        .route("/double/{n}", get(double))
        .route("/visits", get(visits))
        .with_state(App { db: db.clone(), redis: redis.clone() })
        .merge(admin.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    println!("axum_service: serving on http://{addr}");

    for n in [1, 21, 100] {
        let (status, body) = http_get(addr, &format!("/double/{n}"), None).await?;
        println!("GET /double/{n} -> {status} {body}");
        if status != 200 || body != (2 * n).to_string() {
            return Err(format!("/double/{n} answered {status} {body}").into());
        }
    }
    for _ in 0..3 {
        let (status, body) = http_get(addr, "/visits", None).await?;
        println!("GET /visits -> {status} {body}");
        if status != 200 {
            return Err(format!("/visits answered {status} {body}").into());
        }
    }

    // Give the optimizer a few samples, then read the admin API like any client would.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let token = Some(admin.token().expose());
    let (status, body) = http_get(addr, "/api/v1/admin/connection-pools/stats", token).await?;
    let stats: serde_json::Value = serde_json::from_str(&body)?;
    println!("GET stats -> {status}");
    for section in ["database_pools", "redis_pools"] {
        for (name, pool) in stats[section].as_object().into_iter().flatten() {
            println!(
                "  {section} {name}: pool_size {}, open {}, checkouts {}",
                pool["pool_size"], pool["open_connections"], pool["acquires"]
            );
        }
    }
    let (status, body) = http_get(addr, "/api/v1/admin/connection-pools/optimize", token).await?;
    let optimize: serde_json::Value = serde_json::from_str(&body)?;
    println!("GET optimize -> {status}: windows {}", optimize["windows"]);
    for rec in optimize["recommendations"].as_array().into_iter().flatten() {
        println!("  {}: {} ({})", rec["pool"], rec["issue"], rec["suggestion"]);
    }
    for budget in admin.state().budgets() {
        println!(
            "  budget {}: {} connections for {}",
            budget.name,
            budget.available(),
            budget.pools.join(", ")
        );
    }
    if status != 200 || optimize["windows"]["postgresql:main"].as_u64().unwrap_or(0) < 2 {
        return Err(format!("the optimizer took no samples: {body}").into());
    }

    // Shut down: the server, the admin's sampling task, then the pools (they are ours).
    let _ = stop.send(());
    serving.await??;
    admin.shutdown().await;
    db.close().await?;
    redis.close().await?;
    println!("axum_service: done");
    Ok(())
}
