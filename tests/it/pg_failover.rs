//! pool-postgres through the failures that do not close sockets: a frozen server (`SIGSTOP` of
//! the postmaster and its backends) against the statement timeout and the pool's bounds.
//!
//! Every test starts its own [`PgInstance`]s: they are frozen, stopped and promoted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pool_core::{AcquireError, CloseReason};
use pool_harness::PgInstance;
use pool_postgres::sqlx;
use pool_postgres::{PgManager, PgPool};

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
        pool.stats().closed.get(CloseReason::Broken) >= 1,
        "the connection that missed its bound was closed: {:?}",
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
