//! pool-postgres through the failures that do not close sockets and the ones that move the
//! primary: a frozen server (`SIGSTOP` of the postmaster and its backends) against the
//! statement timeout and the pool's bounds; a primary stopped and its streaming replica
//! promoted, with writes following by themselves; a write routed to a standby; a replica's
//! address leading to a primary and back to a standby (out of the reads, then back in).
//!
//! Every test starts its own [`PgInstance`]s: they are frozen, stopped and promoted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pool_core::{AcquireError, CloseReason, Secret};
use pool_harness::{PgInstance, Proxy};
use pool_postgres::sqlx;
use pool_postgres::sqlx::Connection as _;
use pool_postgres::sqlx::postgres::PgConnection;
use pool_postgres::{PgCluster, PgManager, PgPool, PostgresConfig};

type Result<T = ()> = anyhow::Result<T>;

/// Runs a blocking harness call (psql, pg_ctl, kill) without stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Whether `e` is the client-side bound of a statement timeout: an IO error of kind `TimedOut`.
fn is_statement_bound(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// The server's statement timeout in these tests; the client's bound is twice it.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);
/// The pool's `pool_timeout`.
const POOL_TIMEOUT: Duration = Duration::from_secs(2);
/// The pool's `connect_timeout`, which bounds its checks, resets and closes too.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the server stays frozen: longer than every bound above.
const FROZEN_FOR: Duration = Duration::from_secs(5);

/// What callers saw while the server was frozen.
#[derive(Debug, Default)]
struct Outcomes {
    ok: usize,
    acquire_failed: usize,
    statement_bound: usize,
    /// Calls that outlived three times their own bound, or failed in a way nothing explains.
    wrong: Vec<String>,
}

/// One caller's call: an acquire bounded by `pool_timeout`, then a query bounded by the
/// statement timeout's client bound, each checked against three times its own bound.
async fn call(pool: &PgPool, bound: Duration, out: &mut Outcomes) {
    let mut conn = match tokio::time::timeout(3 * POOL_TIMEOUT, pool.acquire()).await {
        Err(_) => {
            return out.wrong.push(format!("acquire still waiting after {:?}", 3 * POOL_TIMEOUT));
        }
        Ok(Err(AcquireError::Closed { .. })) => return out.wrong.push("pool closed".into()),
        // A timeout (or, with a circuit breaker, a fail-fast refusal): within its bound.
        Ok(Err(_)) => return out.acquire_failed += 1,
        Ok(Ok(conn)) => conn,
    };
    let query = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&mut *conn);
    match tokio::time::timeout(3 * bound, query).await {
        Err(_) => out.wrong.push(format!("query still waiting after {:?}", 3 * bound)),
        Ok(Ok(_)) => out.ok += 1,
        Ok(Err(e)) if is_statement_bound(&e) => {
            assert!(conn.is_broken(), "a query past its bound breaks its connection");
            out.statement_bound += 1;
        }
        Ok(Err(e)) => out.wrong.push(format!("query failed: {e}")),
    }
}

/// A server frozen for longer than every bound: each call returns within its own bound (an
/// acquire within `pool_timeout`, a query within the statement timeout's client bound, the
/// checks and resets within `connect_timeout`), a connection whose query missed its bound is
/// closed and never handed out again, and once the server is thawed the pool serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_server_holds_no_caller_past_its_bound_and_the_pool_heals() -> Result {
    let pg = blocking(PgInstance::start)?;
    let manager = PgManager::from_url(&pg.url())?.statement_timeout(Some(STATEMENT_TIMEOUT));
    let bound = manager.statement_bound().expect("a statement timeout gives a bound");
    assert_eq!(bound, 2 * STATEMENT_TIMEOUT);
    let pool = PgPool::builder(manager)
        .name("frozen")
        .pool_size(4)
        .max_overflow(0)
        .pool_timeout(POOL_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()?;
    pool.warmed(Duration::from_secs(10)).await?;

    // The server enforces the timeout itself while it runs, and the connection survives that.
    let mut held = pool.acquire().await?;
    let shown: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut *held).await?;
    assert_eq!(shown, "1s");
    let err = sqlx::query("SELECT pg_sleep(5)").execute(&mut *held).await.unwrap_err();
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("57014"), "the server cancelled it: {err}");
    assert!(!held.is_broken(), "a statement the server cancelled leaves the connection usable");
    sqlx::query("SELECT 1").execute(&mut *held).await?;
    let mut beginning = pool.acquire().await?;
    sqlx::query("SELECT 1").execute(&mut *beginning).await?;

    blocking(|| pg.freeze())?;
    let frozen_at = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (pool, stop) = (pool.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut out = Outcomes::default();
                while !stop.load(Ordering::SeqCst) {
                    call(&pool, bound, &mut out).await;
                    // Pacing, so that callers failed fast by a breaker do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                out
            })
        })
        .collect();

    // A query on a connection already held: the server cannot cancel it, the client bound does.
    let query = sqlx::query("SELECT 1 FROM pg_class LIMIT 1").execute(&mut *held);
    match tokio::time::timeout(3 * bound, query).await {
        Err(_) => panic!("a query on a frozen server outlived 3x its bound ({bound:?})"),
        Ok(Ok(_)) => panic!("a query on a frozen server succeeded"),
        Ok(Err(e)) => assert!(is_statement_bound(&e), "the client bound's error: {e}"),
    }
    assert!(held.is_broken(), "a connection that missed its bound reads as broken");
    drop(held);
    // So does a transaction's BEGIN.
    match tokio::time::timeout(3 * bound, beginning.begin()).await {
        Err(_) => panic!("a BEGIN on a frozen server outlived 3x its bound ({bound:?})"),
        Ok(Ok(_)) => panic!("a BEGIN on a frozen server succeeded"),
        Ok(Err(e)) => assert!(is_statement_bound(&e), "the client bound's error: {e}"),
    }
    assert!(beginning.is_broken(), "a BEGIN that missed its bound breaks the connection");
    drop(beginning);

    // The fault's own length, not a wait for an event.
    tokio::time::sleep(FROZEN_FOR.saturating_sub(frozen_at.elapsed())).await;
    stop.store(true, Ordering::SeqCst);
    let mut all = Outcomes::default();
    for caller in callers {
        let out = caller.await?;
        all.ok += out.ok;
        all.acquire_failed += out.acquire_failed;
        all.statement_bound += out.statement_bound;
        all.wrong.extend(out.wrong);
    }
    blocking(|| pg.thaw())?;
    eprintln!("frozen for {:?}: {all:?}", frozen_at.elapsed());
    assert!(all.wrong.is_empty(), "calls past their bounds: {:?}", all.wrong);
    assert!(all.acquire_failed + all.statement_bound > 0, "callers saw the freeze: {all:?}");
    assert!(
        pool.stats().closed.get(CloseReason::Broken) >= 2,
        "the connections that missed their bounds were closed: {:?}",
        pool.stats().closed
    );

    // Thawed: the pool serves again, through connections that answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut conn = pool.acquire().await?;
            let pid: i32 =
                sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
            anyhow::Ok(pid)
        };
        match attempt.await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not serving yet: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the pool did not serve within 10 s of the thaw: {e}"),
        }
    }
    pool.close().await?;
    Ok(())
}

/// A cluster over `primary` whose candidate primaries are it and `replica`, with `replica` also
/// its read replica: small pools, short bounds and a fast lag probe.
fn failover_cluster(primary: &PgInstance, replica: &PgInstance) -> Result<PgCluster> {
    let mut config = PostgresConfig::default();
    config.url = Secret(primary.url());
    config.primaries = vec![Secret(replica.url())];
    config.replicas = vec![Secret(replica.url())];
    config.statement_timeout = Some(Duration::from_secs(2));
    config.lag_probe_interval = Some(Duration::from_millis(200));
    config.replica_ban = Duration::from_secs(1);
    config.pool.pool_size = 2;
    config.pool.max_overflow = 0;
    config.pool.pool_timeout = POOL_TIMEOUT;
    config.pool.connect_timeout = CONNECT_TIMEOUT;
    Ok(config.build("failover")?)
}

/// Inserts `id` through a primary session; `Ok` only once the server acknowledged the commit.
async fn write(cluster: &PgCluster, id: i32) -> Result {
    let mut conn = cluster.session().await?;
    sqlx::query("INSERT INTO acked (id) VALUES ($1)").bind(id).execute(&mut *conn).await?;
    Ok(())
}

/// The primary stopped and its replica promoted: writes reach the new primary within 10 s of
/// the promotion without a restart or a configuration change, no acknowledged write is lost,
/// and the promoted node leaves the read rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_follow_a_promotion_and_the_promoted_replica_leaves_the_reads() -> Result {
    let primary = blocking(PgInstance::start)?;
    blocking(|| primary.psql("CREATE TABLE acked (id int PRIMARY KEY)"))?;
    let replica = blocking(|| primary.start_replica())?;
    let cluster = failover_cluster(&primary, &replica)?;
    assert!(cluster.primary().manager().read_write_only());
    cluster.warmed(Duration::from_secs(10)).await?;

    let mut acked = Vec::new();
    for id in 0..20 {
        write(&cluster, id).await?;
        acked.push(id);
    }
    // Reads go to the standby, whose sessions are read-only besides.
    let mut read = cluster.session_read_only().await?;
    let recovering: bool =
        sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *read).await?;
    assert!(recovering, "a read went to the standby");
    let read_only: String =
        sqlx::query_scalar("SHOW default_transaction_read_only").fetch_one(&mut *read).await?;
    assert_eq!(read_only, "on");
    drop(read);

    // A fast shutdown sends the standby every WAL record before the primary exits.
    blocking(|| primary.stop())?;
    blocking(|| replica.promote())?;
    let promoted_at = Instant::now();
    let mut id = acked.len() as i32;
    let mut first_write = None;
    while Instant::now() < promoted_at + Duration::from_secs(10) && acked.len() < 40 {
        match write(&cluster, id).await {
            Ok(()) => {
                first_write.get_or_insert_with(|| promoted_at.elapsed());
                acked.push(id);
                id += 1;
            }
            // Failed writes are not acknowledged: the id may or may not be in the table.
            Err(e) => {
                eprintln!("write {id} failed: {e}");
                id += 1;
            }
        }
    }
    let first_write = first_write.expect("a write succeeded within 10 s of the promotion");
    eprintln!("first write {first_write:?} after pg_ctl promote returned");
    assert!(acked.len() >= 40, "writes flow on the new primary: {} acknowledged", acked.len());

    // No acknowledged write was lost.
    let present: String = blocking(|| replica.psql("SELECT string_agg(id::text, ',') FROM acked"))?;
    let present: Vec<i32> =
        present.split(',').map(|s| s.parse()).collect::<std::result::Result<_, _>>()?;
    let lost: Vec<i32> = acked.iter().copied().filter(|id| !present.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The lag probe finds the replica out of recovery: it leaves the read rotation.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster.stats().replicas[0].promoted {
        assert!(Instant::now() < deadline, "the promoted replica left the reads within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reads_before = cluster.stats().replicas[0].reads;
    let fallbacks_before = cluster.stats().fallbacks;
    let mut read = cluster.session_read_only().await?;
    sqlx::query("SELECT 1").execute(&mut *read).await?;
    drop(read);
    let stats = cluster.stats();
    assert_eq!(stats.replicas[0].reads, reads_before, "no read went to the promoted replica");
    assert_eq!(stats.fallbacks, fallbacks_before + 1, "the read went to the primary pool");
    cluster.close().await?;
    Ok(())
}

/// A write that reaches a standby fails with PostgreSQL's read-only error (SQLSTATE 25006), is
/// counted, and its connection is never handed out again; a pool that asks for a writable
/// server refuses a standby at connect, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_standby_fails_read_only_and_its_connection_is_dropped() -> Result {
    let primary = blocking(PgInstance::start)?;
    let replica = blocking(|| primary.start_replica())?;
    // A cluster whose primary URL leads to the standby: a misrouted write.
    let mut config = PostgresConfig::default();
    config.url = Secret(replica.url());
    config.pool.pool_size = 1;
    config.pool.max_overflow = 0;
    let cluster = config.build("misrouted")?;
    let mut conn = cluster.session().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    let err = sqlx::query("CREATE TABLE misrouted (id int)").execute(&mut *conn).await.unwrap_err();
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("25006"), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    drop(conn);
    // The reset on return finds the server in recovery: counted, and the connection closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.stats().read_only_errors == 0 {
        assert!(Instant::now() < deadline, "the write to a standby was counted within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cluster.stats().read_only_errors, 1);
    let mut conn = cluster.session().await?;
    let next: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    assert_ne!(next, pid, "the connection was not reused");
    assert_eq!(cluster.primary().stats().closed.get(CloseReason::FailedReset), 1);
    drop(conn);
    cluster.close().await?;

    // Asking for a writable server, the standby is refused at connect.
    let url = format!("{}?target_session_attrs=read-write", replica.url());
    let pool = PgPool::builder(PgManager::from_url(&url)?)
        .name("read-write")
        .pool_size(1)
        .min_idle(Some(0))
        .pool_timeout(Duration::from_secs(1))
        .build()?;
    let err = pool.acquire().await.expect_err("no writable server").to_string();
    assert!(err.contains("no writable server") && err.contains("a standby in recovery"), "{err}");
    pool.close().await?;
    Ok(())
}

/// Polls `condition` every 20 ms until it holds, failing after 10 s.
async fn within_10s(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A replica's address that leads to a primary (as after a promotion) takes it out of the read
/// rotation, and a read that reaches it anyway cannot write; once the address leads to a
/// standby again, the replica rejoins. A proxy in front of the replica's address plays the
/// promotion and the return, so both directions run against real servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_leaves_the_reads_and_rejoins_as_a_standby() -> Result {
    let primary = blocking(PgInstance::start)?;
    let standby = blocking(|| primary.start_replica())?;
    let proxy = Proxy::start(standby.port()).await?;
    let mut config = PostgresConfig::default();
    config.url = Secret(primary.url());
    config.replicas =
        vec![Secret(format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port()))];
    config.lag_probe_interval = Some(Duration::from_millis(100));
    config.replica_ban = Duration::from_secs(1);
    config.pool.pool_size = 1;
    config.pool.max_overflow = 0;
    // The proxy's cuts kill idle connections: each checkout checks its connection.
    config.pool.pre_ping_bypass = Duration::ZERO;
    let cluster = config.build("rejoin")?;
    cluster.warmed(Duration::from_secs(10)).await?;
    within_10s("the probe saw the standby", || cluster.stats().replicas[0].servers > 0).await;
    assert!(!cluster.stats().replicas[0].promoted);

    // The replica's address now leads to a server out of recovery.
    proxy.retarget(primary.port());
    proxy.cut();
    within_10s("the replica is found promoted", || cluster.stats().replicas[0].promoted).await;
    let reads = cluster.stats().replicas[0].reads;
    let mut read = cluster.session_read_only().await?;
    let recovering: bool =
        sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *read).await?;
    assert!(!recovering, "the read went to the primary");
    drop(read);
    assert_eq!(cluster.stats().replicas[0].reads, reads, "no read went to the promoted replica");
    // A replica session that reaches a primary cannot write: it starts read-only. On a primary
    // the refusal is no standby's: not counted, and the connection is kept.
    let replica_pool = &cluster.replicas()[0];
    let mut conn = replica_pool.acquire().await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    let err = sqlx::query("CREATE TABLE written_by_a_read (id int)").execute(&mut *conn).await;
    let err = err.expect_err("a replica session cannot write");
    let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("25006"), "{err}");
    drop(conn);
    let mut conn = replica_pool.acquire().await?;
    let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await?;
    assert_eq!(again, pid, "a read-only refusal on a primary keeps the connection");
    drop(conn);
    assert_eq!(cluster.stats().read_only_errors, 0, "no write reached a standby");
    let mut observer = PgConnection::connect(&primary.url()).await?;
    let written: bool = sqlx::query_scalar("SELECT to_regclass('written_by_a_read') IS NOT NULL")
        .fetch_one(&mut observer)
        .await?;
    assert!(!written, "nothing was written through a read session");

    // Back to a standby: the replica rejoins the reads.
    proxy.retarget(standby.port());
    proxy.cut();
    within_10s("the replica rejoins", || !cluster.stats().replicas[0].promoted).await;
    // The replica pool's connection to the primary was cut with the rest: a read may find it
    // dead and ban the replica for a second, so reads are polled until one reaches the standby.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut read = cluster.session_read_only().await?;
        let recovering: std::result::Result<bool, _> =
            sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut *read).await;
        if recovering.is_ok_and(|r| r) {
            break;
        }
        assert!(Instant::now() < deadline, "a read reached the standby within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(cluster.stats().replicas[0].reads > reads, "reads go to the replica again");
    cluster.close().await?;
    Ok(())
}
