//! pool-postgres against real PostgreSQL: queries through the guard, reset on return, broken
//! connections, a server restart, max lifetime, and replica routing on a streaming replica.
//!
//! Tests that only query use the shared server ([`postgres_url`]); tests that stop, kill or
//! reconfigure a server start their own [`PgInstance`].

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pool_core::{CloseReason, PoolConfig, Registry, Routing};
use pool_harness::{PgInstance, postgres_url};
use pool_postgres::sqlx::postgres::{PgConnectOptions, PgConnection};
use pool_postgres::sqlx::{self, Connection};
use pool_postgres::{CausalToken, ClusterBuilder, PgCluster, PgManager, PgPool, SessionError};

type Result<T = ()> = anyhow::Result<T>;

/// A manager for `url` whose connections carry `app` as `application_name`, so a test can find
/// (and terminate) exactly its own backends in `pg_stat_activity`.
fn manager(url: &str, app: &str) -> PgManager {
    let options: PgConnectOptions = url.parse().expect("valid url");
    PgManager::new(options.application_name(app))
}

/// A direct connection, outside any pool, to look at the server from the side.
async fn observer(url: &str) -> PgConnection {
    PgConnection::connect(url).await.expect("observer connection")
}

async fn backends(observer: &mut PgConnection, app: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid")
        .bind(app)
        .fetch_all(observer)
        .await
        .expect("pg_stat_activity")
}

/// Polls `condition` every 20 ms until it holds, failing after `secs` seconds: for waiting on
/// an external server (a backend exiting, a replica replaying), never as synchronisation
/// between our own tasks.
async fn wait_until<F: AsyncFnMut() -> bool>(secs: u64, what: &str, mut condition: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a blocking harness call (psql, pg_ctl) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

async fn in_recovery(conn: &mut PgConnection) -> bool {
    sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(conn).await.expect("query")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_transactions_and_prepared_statements_go_through_the_guard() -> Result {
    let pool = PgPool::builder(PgManager::from_url(&postgres_url())?)
        .name("guard")
        .pool_size(2)
        .build()?;
    let mut conn = pool.acquire().await?;

    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?;
    assert_eq!(one, 1);
    sqlx::query("CREATE TEMP TABLE notes (id int PRIMARY KEY, body text)")
        .execute(&mut *conn)
        .await?;

    // Prepared statements with parameters, run repeatedly (sqlx caches the statement).
    for id in 0..5 {
        sqlx::query("INSERT INTO notes VALUES ($1, $2)")
            .bind(id)
            .bind(format!("n{id}"))
            .execute(&mut *conn)
            .await?;
    }
    let body: String = sqlx::query_scalar("SELECT body FROM notes WHERE id = $1")
        .bind(3)
        .fetch_one(&mut *conn)
        .await?;
    assert_eq!(body, "n3");
    let all: Vec<(i32, String)> =
        sqlx::query_as("SELECT id, body FROM notes ORDER BY id").fetch_all(&mut *conn).await?;
    assert_eq!(all.len(), 5);

    // sqlx transactions on the guard: rollback and commit.
    let mut tx = conn.begin().await?;
    sqlx::query("DELETE FROM notes").execute(&mut *tx).await?;
    tx.rollback().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("INSERT INTO notes VALUES (10, 'ten')").execute(&mut *tx).await?;
    tx.commit().await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM notes").fetch_one(&mut *conn).await?;
    assert_eq!(count, 6);

    // A database error leaves the connection usable and does not mark it broken.
    assert!(sqlx::query("SELECT * FROM no_such_table").execute(&mut *conn).await.is_err());
    assert!(!conn.is_broken());
    drop(conn);
    assert_eq!(pool.stats().closed.total(), 0);
    pool.close().await?;
    Ok(())
}

/// The next user of a one-connection `pool` gets the same connection (backend `pid`), outside
/// any transaction (also as `side` sees it from another connection), without the rows the
/// previous user left uncommitted in the table `count` counts.
async fn next_user_gets_it_clean(
    pool: &PgPool,
    side: &mut PgConnection,
    pid: i32,
    count: &str,
    what: &str,
) -> Result<pool_postgres::PgPooledConnection> {
    let mut conn = pool.acquire().await?;
    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    assert_eq!(again, pid, "{what}: the connection was replaced instead of reset");
    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(count.to_owned())).fetch_one(&mut *conn).await?;
    assert_eq!(rows, 0, "{what}: the next user sees the previous user's uncommitted row");
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_one(side)
            .await?;
    assert_ne!(state.as_deref(), Some("idle in transaction"), "{what}");
    Ok(conn)
}

/// What a function taking `&mut PgConnection` does on the bare connection is not watched; the
/// server's transaction status on return says what was left, and it is rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_through_the_bare_connection_is_rolled_back() -> Result {
    async fn begin_and_insert(conn: &mut PgConnection, insert: &str) {
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(insert.to_owned())).execute(&mut *conn).await.unwrap();
    }
    async fn begin_and_fail(conn: &mut PgConnection, insert: &str) {
        begin_and_insert(conn, insert).await;
        assert!(sqlx::query("SELECT 1/0").execute(conn).await.is_err(), "division by zero");
    }
    async fn select_one(conn: &mut PgConnection, _: &str) {
        sqlx::query("SELECT 1").execute(conn).await.unwrap();
    }
    let url = postgres_url();
    let app = "pool-postgres-bare";
    let table = format!("bare_{}", std::process::id());
    let mut side = observer(&url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE IF NOT EXISTS {table} (n int)")))
        .execute(&mut side)
        .await?;
    let pool =
        PgPool::builder(manager(&url, app)).name("bare").pool_size(1).max_overflow(0).build()?;
    let insert = format!("INSERT INTO {table} VALUES (1)");
    let count = format!("SELECT count(*) FROM {table}");
    for round in 0..2 {
        for (what, open) in [("open", true), ("aborted", true), ("none", false)] {
            let mut conn = pool.acquire().await?;
            let pid: i32 =
                sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
            match what {
                "open" => begin_and_insert(&mut conn, &insert).await,
                "aborted" => begin_and_fail(&mut conn, &insert).await,
                _ => select_one(&mut conn, &insert).await,
            }
            drop(conn);
            let what = format!("{what} (round {round}, transaction {open})");
            drop(next_user_gets_it_clean(&pool, &mut side, pid, &count, &what).await?);
        }
    }
    assert_eq!(pool.stats().closed.total(), 0, "every connection was reset, none closed");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}"))).execute(&mut side).await?;
    pool.close().await?;
    Ok(())
}

/// Session state left by one user (settings, a role, `LISTEN`, a temporary table, an advisory
/// lock, a prepared statement, a `DEALLOCATE ALL` under sqlx's statement cache) is gone when
/// the next user gets the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_session_is_reset_before_the_next_user() -> Result {
    let url = postgres_url();
    let pool = PgPool::builder(manager(&url, "pool-postgres-session"))
        .name("session")
        .pool_size(1)
        .max_overflow(0)
        .build()?;
    let lock = format!("SELECT pg_advisory_lock({})", std::process::id());
    let changes = [
        "SET search_path TO pg_catalog",
        "SET statement_timeout = 1234",
        "SET ROLE pg_monitor",
        "LISTEN pool_postgres_session",
        "CREATE TEMP TABLE pool_postgres_scratch (x int)",
        lock.as_str(),
        "PREPARE pool_postgres_q AS SELECT 1",
        "DEALLOCATE ALL",
    ];
    for change in changes {
        let mut conn = pool.acquire().await?;
        // A cached statement before the change, used again after it.
        let n: i32 = sqlx::query_scalar("SELECT $1::int").bind(1).fetch_one(&mut *conn).await?;
        assert_eq!(n, 1);
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(change.to_owned())).execute(&mut *conn).await?;
        drop(conn);
        let mut next = pool.acquire().await?;
        let same: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *next).await?;
        assert_eq!(same, pid, "{change}: the same backend, reset rather than replaced");
        let (path, timeout, role, listening, scratch, locks, prepared): (
            String,
            String,
            String,
            i64,
            Option<String>,
            i64,
            i64,
        ) = sqlx::query_as(
            "SELECT current_setting('search_path'), current_setting('statement_timeout'), \
             current_user::text, (SELECT count(*) FROM pg_listening_channels()), \
             to_regclass('pg_temp.pool_postgres_scratch')::text, \
             (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()), \
             (SELECT count(*) FROM pg_prepared_statements WHERE name = 'pool_postgres_q')",
        )
        .fetch_one(&mut *next)
        .await?;
        assert_eq!(path, "\"$user\", public", "{change}");
        assert_eq!(timeout, "0", "{change}");
        assert_ne!(role, "pg_monitor", "{change}");
        assert_eq!((listening, scratch, locks, prepared), (0, None, 0, 0), "{change}");
        let n: i32 = sqlx::query_scalar("SELECT $1::int").bind(2).fetch_one(&mut *next).await?;
        assert_eq!(n, 2, "{change}: sqlx's statement cache is in step with the server");
    }
    assert_eq!(pool.stats().closed.total(), 0, "every connection was reset, none closed");
    pool.close().await?;
    Ok(())
}

/// A query sent on the bare connection and dropped mid-response (a timeout around a function
/// taking `&mut PgConnection`) is drained on return: the next user neither waits for it nor
/// gets its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_query_dropped_mid_response_does_not_reach_the_next_user() -> Result {
    async fn slow_then_fail(conn: &mut PgConnection) -> std::result::Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_sleep(0.5), 1 / (0 * random())::int").execute(conn).await.map(drop)
    }
    let url = postgres_url();
    let pool = PgPool::builder(manager(&url, "pool-postgres-dropped"))
        .name("dropped")
        .pool_size(1)
        .max_overflow(0)
        .pre_ping_bypass(Duration::from_secs(60))
        .build()?;
    for round in 0..2 {
        let mut conn = pool.acquire().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
        let dropped = tokio::time::timeout(Duration::from_millis(50), slow_then_fail(&mut conn));
        assert!(dropped.await.is_err(), "the query was still running when dropped");
        drop(conn);
        let mut next = pool.acquire().await?;
        let (same, one): (bool, i32) = sqlx::query_as("SELECT pg_backend_pid() = $1, 1")
            .bind(pid)
            .fetch_one(&mut *next)
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: the next user got the old query's error: {e}")
            });
        assert_eq!(one, 1);
        let stats = pool.stats();
        assert!(same || stats.closed.total() > 0, "round {round}: reused only once drained");
    }
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_left_open_is_rolled_back_on_return() -> Result {
    let url = postgres_url();
    let app = "pool-postgres-left-open";
    let table = format!("left_open_{}", std::process::id());
    let mut side = observer(&url).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE TABLE IF NOT EXISTS {table} (n int)")))
        .execute(&mut side)
        .await?;
    // One connection, so every acquire gets the connection the previous user left.
    let pool = PgPool::builder(manager(&url, app))
        .name("left-open")
        .pool_size(1)
        .max_overflow(0)
        .build()?;

    let insert = format!("INSERT INTO {table} VALUES (1)");
    let count = format!("SELECT count(*) FROM {table}");
    type Leave = fn(
        &mut pool_postgres::PgPooledConnection,
        String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
    let cases: [(&str, Leave); 7] = [
        ("raw BEGIN", |c, insert| {
            Box::pin(async move {
                sqlx::query("BEGIN").execute(&mut **c).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(insert)).execute(&mut **c).await.unwrap();
            })
        }),
        ("raw BEGIN in one string", |c, insert| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("BEGIN; {insert}")))
                    .execute(&mut **c)
                    .await
                    .unwrap();
            })
        }),
        // The `END` inside the body is not the transaction's.
        ("raw BEGIN, then a body with END", |c, insert| {
            Box::pin(async move {
                let sql = format!("BEGIN; {insert}; DO $$ BEGIN PERFORM 1; END $$");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut **c).await.unwrap();
            })
        }),
        // The server skips the COMMIT after the error: an aborted transaction is left open.
        ("an error between BEGIN and COMMIT", |c, insert| {
            Box::pin(async move {
                let sql = format!("BEGIN; {insert}; SELECT 1/0; COMMIT");
                let failed = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut **c).await;
                assert!(failed.is_err(), "division by zero");
            })
        }),
        // `Executor::execute` reads the text as it builds the future: dropped unpolled, the
        // `COMMIT` was read but never sent.
        ("a COMMIT dropped before it was sent", |c, insert| {
            Box::pin(async move {
                sqlx::query("BEGIN").execute(&mut **c).await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(insert)).execute(&mut **c).await.unwrap();
                drop(sqlx::Executor::execute(&mut **c, "COMMIT"));
            })
        }),
        ("dropped sqlx transaction", |c, insert| {
            Box::pin(async move {
                let mut tx = c.begin().await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(insert)).execute(&mut *tx).await.unwrap();
                drop(tx);
            })
        }),
        ("leaked sqlx transaction", |c, insert| {
            Box::pin(async move {
                let mut tx = c.begin().await.unwrap();
                sqlx::query(sqlx::AssertSqlSafe(insert)).execute(&mut *tx).await.unwrap();
                std::mem::forget(tx);
            })
        }),
    ];
    for (what, leave) in cases {
        let mut conn = pool.acquire().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
        leave(&mut conn, insert.clone()).await;
        drop(conn);

        let mut conn = next_user_gets_it_clean(&pool, &mut side, pid, &count, what).await?;
        assert!(!conn.is_in_transaction(), "{what}");
        let tx = conn.begin().await?; // sqlx's transaction depth is consistent again
        tx.rollback().await?;
        drop(conn);
    }
    // A raw transaction that is committed is reset like any other use, and not closed.
    let mut conn = pool.acquire().await?;
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    drop(conn);
    assert_eq!(pool.stats().closed.total(), 0, "every connection was reset, none closed");
    let committed: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(count)).fetch_one(&mut side).await?;
    assert_eq!(committed, 0);
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {table}"))).execute(&mut side).await?;
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_replaced_and_counted() -> Result {
    let url = postgres_url();
    let app = "pool-postgres-terminate";
    let mut side = observer(&url).await;
    // Pre-ping on every checkout, so each terminated idle connection is caught by its check.
    let pool = PgPool::builder(manager(&url, app))
        .name("terminate")
        .pool_size(4)
        .max_overflow(0)
        .pre_ping_bypass(Duration::ZERO)
        .build()?;
    let held: Vec<_> = hold_all(&pool, 4).await?;
    drop(held);
    let old: HashSet<i32> = backends(&mut side, app).await.into_iter().collect();
    assert_eq!(old.len(), 4);
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(app)
    .execute(&mut side)
    .await?;
    wait_until(30, "the terminated backends exit", async || {
        backends(&mut side, app).await.iter().all(|pid| !old.contains(pid))
    })
    .await;

    let mut held = Vec::new();
    for _ in 0..4 {
        let mut conn = pool.acquire().await?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
        assert!(!old.contains(&pid), "a terminated connection was handed out");
        held.push(conn);
    }
    drop(held);
    assert_eq!(pool.stats().closed.get(CloseReason::FailedCheck), 4);
    pool.close().await?;

    // Without a check (a connection used a moment ago), a query fails once; the broken
    // connection is closed on return and never handed out again.
    let pool = PgPool::builder(manager(&url, app))
        .name("terminate-unchecked")
        .pool_size(1)
        .max_overflow(0)
        .pre_ping_bypass(Duration::from_secs(3600))
        .build()?;
    let mut conn = pool.acquire().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    sqlx::query("SELECT pg_terminate_backend($1)").bind(pid).execute(&mut side).await?;
    let err = sqlx::query("SELECT 1").execute(&mut *conn).await.expect_err("terminated backend");
    assert!(conn.is_broken(), "{err} did not mark the connection broken");
    drop(conn);
    let mut conn = pool.acquire().await?;
    let fresh: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    assert_ne!(fresh, pid);
    drop(conn);
    assert_eq!(pool.stats().closed.get(CloseReason::Broken), 1);
    pool.close().await?;
    Ok(())
}

/// Checks out `n` connections at once.
async fn hold_all(pool: &PgPool, n: usize) -> Result<Vec<pool_postgres::PgPooledConnection>> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.acquire().await?);
    }
    Ok(held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load_heals_without_leaks() -> Result {
    let pg = blocking(PgInstance::start)?;
    let app = "pool-postgres-restart";
    let pool = PgPool::builder(manager(&pg.url(), app))
        .name("restart")
        .pool_size(4)
        .max_overflow(2)
        .pool_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..8)
        .map(|_| {
            let (pool, stop) = (pool.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let (mut ok, mut errors) = (0u64, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    match pool.acquire().await {
                        Ok(mut conn) => match sqlx::query("SELECT 1").execute(&mut *conn).await {
                            Ok(_) => ok += 1,
                            Err(e) => errors.push(e.to_string()),
                        },
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (ok, errors)
            })
        })
        .collect();
    wait_until(30, "the load runs", async || pool.stats().acquires > 100).await;

    blocking(|| pg.stop())?;
    // During the outage, requests fail with a clear error within pool_timeout.
    for _ in 0..3 {
        let err = match pool.acquire().await {
            Err(e) => e,
            Ok(mut conn) => {
                // A connection handed out as the server went away fails its query instead.
                let e =
                    sqlx::query("SELECT 1").execute(&mut *conn).await.expect_err("server is down");
                assert!(conn.is_broken(), "{e}");
                continue;
            }
        };
        // A timeout, or the breaker's failure at once once connects failed five times in a row.
        assert!(err.is_timeout() || err.is_unavailable(), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("pool \"restart\" timed out after")
                || msg.contains("pool \"restart\" is unavailable"),
            "{msg}"
        );
        assert!(msg.contains("last connect error"), "{msg}");
    }

    blocking(|| pg.start_again())?;
    wait_until(30, "the pool serves queries again", async || match pool.acquire().await {
        Ok(mut conn) => sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok(),
        Err(_) => false,
    })
    .await;
    // Healed: a burst of requests all succeed.
    let before = pool.stats().acquires;
    wait_until(30, "the load runs again", async || pool.stats().acquires > before + 100).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    for task in load {
        let (n, errors) = task.await?;
        ok += n;
        for e in errors {
            let clear = e.contains("timed out after")
                || e.contains("is unavailable: circuit breaker open")
                || e.contains("connection")
                || e.contains("terminat")
                || e.contains("shutdown")
                || e.contains("error communicating");
            assert!(clear, "unclear error during the outage: {e}");
        }
    }
    assert!(ok > 100);

    // No leak: at most the pool's limit is open on the server, and nothing once it is closed.
    let mut side = observer(&pg.url()).await;
    let open = backends(&mut side, app).await.len();
    assert!(open <= 6, "{open} connections open, limit is 4 + 2");
    pool.close().await?;
    wait_until(30, "closed connections leave pg_stat_activity", async || {
        backends(&mut side, app).await.is_empty()
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_lifetime_replaces_connections_spread_out() -> Result {
    let url = postgres_url();
    let app = "pool-postgres-lifetime";
    let mut side = observer(&url).await;
    // Lifetimes between 2 s and 4 s (50% jitter); the maintenance task retires idle expired
    // connections every 50 ms and tops the pool up.
    let pool = PgPool::builder(manager(&url, app))
        .name("lifetime")
        .pool_size(8)
        .max_overflow(0)
        .pool_recycle(Some(Duration::from_secs(4)))
        .recycle_jitter(0.5)
        .health_check_interval(Some(Duration::from_millis(50)))
        .build()?;
    drop(hold_all(&pool, 8).await?);
    let original: HashSet<i32> = backends(&mut side, app).await.into_iter().collect();
    assert_eq!(original.len(), 8);

    // Watch the originals go: at some moment, some are replaced and some are not.
    let mut partial = false;
    wait_until(60, "every original connection is replaced", async || {
        let now: HashSet<i32> = backends(&mut side, app).await.into_iter().collect();
        let left = now.intersection(&original).count();
        partial |= left > 0 && left < 8;
        left == 0
    })
    .await;
    assert!(partial, "all connections were replaced at once");
    assert!(pool.stats().closed.get(CloseReason::Recycled) >= 8);
    // The replacements keep the pool full, and serve.
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT 1").execute(&mut *conn).await?;
    drop(conn);
    pool.close().await?;
    Ok(())
}

/// A throwaway primary with a streaming replica, and a cluster over them: small pools, short
/// timeouts and bans, then `configure` for what the test needs.
async fn replicated_with(
    app: &str,
    configure: impl FnOnce(&mut PoolConfig, ClusterBuilder) -> ClusterBuilder,
) -> Result<(PgInstance, PgInstance, PgCluster)> {
    let primary = blocking(PgInstance::start)?;
    let replica = blocking(|| primary.start_replica())?;
    let mut config = PoolConfig::default();
    config.pool_size = 2;
    config.pool_timeout = Duration::from_secs(5);
    config.connect_timeout = Duration::from_secs(1);
    let builder = PgCluster::builder("main", manager(&primary.url(), app))
        .replica(manager(&replica.url(), app))
        .replica_timeout(Duration::from_millis(500))
        .replica_ban(Duration::from_secs(1));
    let builder = configure(&mut config, builder);
    let cluster = builder.config(config).build()?;
    Ok((primary, replica, cluster))
}

/// [`replicated_with`] a lag probe every 100 ms and `max_lag`.
async fn replicated(
    app: &str,
    max_lag: Option<Duration>,
) -> Result<(PgInstance, PgInstance, PgCluster)> {
    replicated_with(app, |config, builder| {
        config.max_overflow = 2;
        builder.lag_probe_interval(Some(Duration::from_millis(100))).max_replica_lag(max_lag)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_reads_and_are_banned_and_restored() -> Result {
    let (primary, replica, cluster) = replicated("pool-postgres-routing", None).await?;
    let registry = Registry::new();
    cluster.register(&registry)?;
    assert_eq!(registry.ids(), ["postgresql:main", "postgresql:main-replica-1"]);
    assert_eq!(registry.get("main-replica-1").unwrap().backend(), "postgresql");

    let mut w = cluster.session().await?;
    assert!(!in_recovery(&mut w).await, "a write session is on a replica");
    drop(w);
    for _ in 0..5 {
        let mut r = cluster.session_read_only().await?;
        assert!(in_recovery(&mut r).await, "a read did not reach the replica");
        assert_eq!(r.pool_name(), "main-replica-1");
    }
    let mut r = cluster.get_session(false).await?;
    assert!(!in_recovery(&mut r).await);
    drop(r);
    // A session changed on the replica is reset there too (`DISCARD ALL` runs on a standby).
    let pid = "SELECT pg_backend_pid()";
    let mut r = cluster.session_read_only().await?;
    let changed: i32 = sqlx::query_scalar(pid).fetch_one(&mut *r).await?;
    sqlx::query("SET statement_timeout = 1234").execute(&mut *r).await?;
    drop(r);
    // The reset runs in the background; once it is done, the changed connection is idle again.
    let replica_pool = cluster.replicas()[0].clone();
    while replica_pool.state().pool_held > 0 {
        tokio::task::yield_now().await;
    }
    // Which idle connection LIFO hands out first depends on what else came back meanwhile (a
    // connection the pool warmed in the background, say): take the replica pool's connections,
    // holding each, until the changed backend comes out.
    let limit = replica_pool.state().pool_size + replica_pool.state().max_overflow;
    let mut others = Vec::new();
    let mut r = loop {
        let mut c = replica_pool.acquire().await?;
        if sqlx::query_scalar::<_, i32>(pid).fetch_one(&mut *c).await? == changed {
            break c;
        }
        others.push(c);
        assert!(others.len() < limit, "the changed backend is not among the replica pool's");
    };
    drop(others);
    assert!(in_recovery(&mut r).await, "the changed connection is not on the standby");
    let timeout: String = sqlx::query_scalar("SELECT current_setting('statement_timeout')")
        .fetch_one(&mut *r)
        .await?;
    assert_eq!(timeout, "0", "reset on the replica");
    drop(r);
    assert_eq!(replica_pool.stats().closed.total(), 0, "reset, not closed");
    assert_eq!(cluster.stats().replicas[0].reads, 6);
    assert_eq!(cluster.stats().fallbacks, 0);

    // Stop the replica: reads fall back to the primary, and the replica is banned.
    blocking(|| replica.stop())?;
    for _ in 0..3 {
        let mut r = cluster.session_read_only().await?;
        assert!(!in_recovery(&mut r).await, "a read went to the stopped replica");
    }
    let stats = cluster.stats();
    assert!(stats.fallbacks >= 3, "{stats:?}");
    assert!(stats.replicas[0].banned && stats.replicas[0].bans >= 1, "{stats:?}");
    assert!(stats.replicas[0].last_error.is_some());
    assert!(cluster.primary().stats().acquires >= 4);
    // The registry's pools carry the routing, so the exporters see it.
    let routing = |id: &str| registry.get(id).unwrap().stats().routing.unwrap();
    assert!(matches!(routing("main"), Routing::Primary { fallbacks } if fallbacks >= 3));
    assert!(matches!(routing("main-replica-1"), Routing::Replica { banned: true, bans: 1.., .. }));
    let text = pool_metrics::render(&registry);
    let banned = "db_client_connection_replica_state{db_client_connection_pool_name=\"main-replica-1\",db_system_name=\"postgresql\",db_client_connection_replica_state=\"banned\"} 1";
    assert!(text.contains(banned), "{text}");

    // Start it again: after the ban, the probe restores it and reads reach it again.
    blocking(|| replica.start_again())?;
    wait_until(60, "the replica is back in rotation", async || !cluster.stats().replicas[0].banned)
        .await;
    let mut r = cluster.session_read_only().await?;
    assert!(in_recovery(&mut r).await, "reads did not return to the restarted replica");
    drop(r);
    assert!(matches!(routing("main-replica-1"), Routing::Replica { banned: false, .. }));
    // The probe measures the replica's replay lag, and the exporter shows it (replicas only).
    wait_until(60, "the replica's lag is measured", async || {
        matches!(routing("main-replica-1"), Routing::Replica { lag: Some(_), .. })
    })
    .await;
    let text = pool_metrics::render(&registry);
    let lag = "db_client_connection_replica_lag_seconds{db_client_connection_pool_name=\"main-replica-1\"";
    let line = text
        .lines()
        .find(|l| l.starts_with(lag))
        .ok_or_else(|| anyhow::anyhow!("no replica lag in the scrape: {text}"))?;
    let seconds: f64 = line.rsplit(' ').next().unwrap_or_default().parse()?;
    assert!(seconds.is_finite() && seconds >= 0.0, "{line}");
    let on_primary =
        "db_client_connection_replica_lag_seconds{db_client_connection_pool_name=\"main\"";
    assert!(!text.contains(on_primary), "the primary has no replica lag: {text}");
    cluster.close().await?;
    drop(primary);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_replica_is_skipped_and_causal_reads_see_their_writes() -> Result {
    let (primary, replica, cluster) =
        replicated("pool-postgres-lag", Some(Duration::from_millis(300))).await?;
    let mut w = cluster.session().await?;
    sqlx::query("CREATE TABLE t (n int)").execute(&mut *w).await?;
    drop(w);
    wait_until(30, "the replica replays the table", async || {
        blocking(|| replica.psql("SELECT count(*) FROM t")).is_ok()
    })
    .await;
    wait_until(30, "the replica is measured and not lagging", async || {
        let r = &cluster.stats().replicas[0];
        r.lag.is_some() && !r.lagging
    })
    .await;
    let mut r = cluster.session_read_only().await?;
    assert!(in_recovery(&mut r).await);
    drop(r);

    // Pause replay and write: the replica falls behind and is skipped.
    blocking(|| replica.psql("SELECT pg_wal_replay_pause()"))?;
    let mut w = cluster.session().await?;
    sqlx::query("INSERT INTO t VALUES (1)").execute(&mut *w).await?;
    let token = CausalToken::after_write(&mut w).await?;
    drop(w);

    // Read-your-writes: the replica has not replayed the token, so the read goes to the primary.
    let mut r = cluster.session_read_only_after(&token).await?;
    assert!(!in_recovery(&mut r).await, "a causal read went to a replica that lacks the write");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *r).await?;
    assert_eq!(n, 1);
    drop(r);
    assert_eq!(cluster.stats().causal_primary_reads, 1);

    wait_until(30, "the paused replica is marked lagging", async || {
        cluster.stats().replicas[0].lagging
    })
    .await;
    let fallbacks = cluster.stats().fallbacks;
    let mut r = cluster.session_read_only().await?;
    assert!(!in_recovery(&mut r).await, "a read went to the lagging replica");
    drop(r);
    assert_eq!(cluster.stats().fallbacks, fallbacks + 1);
    assert!(cluster.stats().replicas[0].lag_bytes.is_some_and(|b| b > 0));

    // Resume: the replica catches up, is used again, and a causal read there sees the write.
    blocking(|| replica.psql("SELECT pg_wal_replay_resume()"))?;
    wait_until(30, "the replica catches up", async || !cluster.stats().replicas[0].lagging).await;
    let mut r = cluster.session_read_only_after(&token).await?;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&mut *r).await?;
    assert_eq!(n, 1, "a causal read did not see its write");
    assert!(in_recovery(&mut r).await, "a caught-up replica was not used for a causal read");
    drop(r);
    let token_text = token.to_string();
    assert_eq!(token_text.parse::<CausalToken>()?, token);
    cluster.close().await?;
    drop(primary);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_gives_a_clear_error() -> Result {
    let port = pool_harness::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let pool = PgPool::builder(PgManager::from_url(&url)?)
        .name("nowhere")
        .pool_timeout(Duration::from_millis(300))
        .build()?;
    let err = pool.acquire().await.expect_err("nothing listens there");
    let msg = err.to_string();
    // Whichever comes first: the 300 ms timeout, or the breaker opening at the fifth refusal.
    assert!(
        (msg.contains("pool \"nowhere\" timed out")
            || msg.contains("pool \"nowhere\" is unavailable"))
            && msg.contains("last connect error: ")
            && msg.contains("Connection refused"),
        "{msg}"
    );
    let cluster = PgCluster::builder("nowhere", PgManager::from_url(&url)?)
        .config({
            let mut c = PoolConfig::default();
            c.pool_timeout = Duration::from_millis(300);
            c
        })
        .build()?;
    let err: SessionError = cluster.session_read_only().await.expect_err("no server");
    let msg = err.to_string();
    assert!(
        msg.contains("pool \"nowhere\" timed out")
            || msg.contains("pool \"nowhere\" is unavailable"),
        "{msg}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_budget_is_read_from_the_server() -> Result {
    let pg = blocking(PgInstance::start)?;
    let mut conn = observer(&pg.url()).await;
    let max: i64 = sqlx::query_scalar("SELECT current_setting('max_connections')::int8")
        .fetch_one(&mut conn)
        .await?;
    let reserved: i64 =
        sqlx::query_scalar("SELECT current_setting('superuser_reserved_connections')::int8")
            .fetch_one(&mut conn)
            .await?;
    let budget = pool_postgres::connection_budget(&mut conn).await?;
    assert_eq!(budget as i64, max - reserved);
    assert!(budget > 0 && budget < max as usize);
    Ok(())
}

/// Regression (found by the soak): after a replica restart, or once its backends are
/// terminated, the lag probe used its dead connection, failed, and banned a healthy replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_probe_reconnects_instead_of_banning_a_healthy_replica() -> Result {
    let (_primary, replica, cluster) = replicated("pool-postgres-probe", None).await?;
    wait_until(30, "the probe has read the replica", async || {
        cluster.stats().replicas[0].replay_lsn.is_some()
    })
    .await;
    // Kill every client backend on the replica: the pool's and the probe's.
    let killed = blocking(|| {
        replica.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
        )
    })?;
    assert!(killed.parse::<u32>()? >= 1, "the probe's connection was terminated: {killed}");
    // Let the probe run several rounds (100 ms each) while reads go on. A read may meet a
    // pooled connection that was terminated and was used too recently to be pre-pinged: it
    // fails once and that connection is closed.
    let mut reads = 0;
    while reads < 20 {
        let mut r = cluster.session_read_only().await?;
        let answer: std::result::Result<bool, _> =
            sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *r).await;
        if let Ok(in_recovery) = answer {
            assert!(in_recovery, "reads stay on the replica");
            reads += 1;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let s = &cluster.stats().replicas[0];
    assert_eq!(s.bans, 0, "a healthy replica was banned: {s:?}");
    Ok(())
}

/// [`replicated_with`] the lag probe and the pools' maintenance off, so only reads touch the
/// replica pool; an idle connection is checked before use once it has been idle longer than
/// `pre_ping_bypass`.
async fn replicated_without_probe(
    app: &str,
    pre_ping_bypass: Duration,
) -> Result<(PgInstance, PgInstance, PgCluster)> {
    replicated_with(app, |config, builder| {
        config.max_overflow = 0;
        config.pre_ping_bypass = pre_ping_bypass;
        config.health_check_interval = None;
        builder.lag_probe_interval(None)
    })
    .await
}

/// Regression (review): a replica whose pool had failed connects and held nothing idle was
/// banned again by the first read after each ban, without a connect attempt, so with no probe
/// and no maintenance it never came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_probe_a_restarted_replica_comes_back_after_its_ban() -> Result {
    let (primary, replica, cluster) =
        replicated_without_probe("pool-postgres-noprobe", Duration::ZERO).await?;
    let mut r = cluster.session_read_only().await?;
    assert!(in_recovery(&mut r).await, "a read did not reach the replica");
    drop(r);
    blocking(|| replica.stop())?;
    let mut r = cluster.session_read_only().await?;
    assert!(!in_recovery(&mut r).await, "a read went to the stopped replica");
    drop(r);
    let s = cluster.stats();
    assert!(s.replicas[0].banned && s.fallbacks >= 1, "{s:?}");
    assert!(cluster.replicas()[0].state().connect_failures > 0, "its connects failed");
    // A connect still in its backoff could land after the restart and hide the bug: let them
    // run out first (with nobody waiting, a failed attempt is the last), unless the replica
    // pool's breaker opened, whose probe goes on connecting by design.
    wait_until(30, "the replica pool's connects have stopped", async || {
        let state = cluster.replicas()[0].state();
        state.connecting == 0 || state.breaker_open
    })
    .await;

    blocking(|| replica.start_again())?;
    wait_until(60, "reads reach the restarted replica", async || {
        let mut r = cluster.session_read_only().await.expect("a read session");
        in_recovery(&mut r).await
    })
    .await;
    assert_eq!(cluster.replicas()[0].state().connect_failures, 0);
    cluster.close().await?;
    drop(primary);
    Ok(())
}

/// Regression (review): a causal read checks the replica's replay position on the connection;
/// on a replica that stopped answering, that query hung for as long as TCP takes to give up.
/// It is bounded by `replica_timeout`: the read goes to the primary and the replica is banned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_causal_read_on_a_frozen_replica_falls_back_to_the_primary() -> Result {
    // No pre-ping within a minute of use: the causal read's own query meets the frozen server.
    let (primary, replica, cluster) =
        replicated_without_probe("pool-postgres-frozen", Duration::from_secs(60)).await?;
    // Warm the replica pool, so the causal read finds an idle connection to it.
    let mut r = cluster.session_read_only().await?;
    assert!(in_recovery(&mut r).await);
    drop(r);
    let mut w = cluster.session().await?;
    let token = CausalToken::after_write(&mut w).await?;
    drop(w);
    // Freeze every process of the replica (its postmaster and backends): connections stay
    // open, nothing answers.
    let postmaster = replica.pid().ok_or_else(|| anyhow::anyhow!("replica pid"))?;
    let signal = |sig: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("kill -{sig} {postmaster} $(pgrep -P {postmaster})"))
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} failed");
    };
    signal("STOP");
    let read =
        tokio::time::timeout(Duration::from_secs(30), cluster.session_read_only_after(&token))
            .await;
    signal("CONT");
    let mut r =
        read.map_err(|_| anyhow::anyhow!("the causal read hung on the frozen replica"))??;
    assert!(!in_recovery(&mut r).await, "the read went to the primary");
    drop(r);
    let s = cluster.stats();
    assert!(s.replicas[0].bans >= 1 && s.causal_primary_reads == 1, "{s:?}");
    let closed = cluster.replicas()[0].stats().closed.get(CloseReason::Detached);
    assert_eq!(closed, 1, "the connection stuck mid-query was closed, not put back");
    cluster.close().await?;
    drop(primary);
    Ok(())
}
