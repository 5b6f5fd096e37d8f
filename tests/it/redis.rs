//! `pool-redis` against real Redis: commands through the shared and exclusive paths,
//! `WATCH`/`MULTI`/`EXEC`, `BLPOP` (held and abandoned), `CLIENT KILL`, a server restart under
//! load, named pools (warmed together), and the session reset on return (state by state, sent
//! through fred or by hand).
//!
//! Tests that stop, kill or count connections use a throwaway [`RedisInstance`]; the others use
//! the shared Redis with keys under a unique prefix.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use pool_core::CloseReason;
use pool_harness::{RedisInstance, redis_url};
use pool_redis::fred::prelude::*;
use pool_redis::fred::types::RespVersion;
use pool_redis::fred::types::client::{ClientKillFilter, ClientKillType};
use pool_redis::{BuildError, ConfigError, PoolSettings, RedisConfig, RedisPool, RedisPools};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A key prefix no other test run uses.
fn prefix(test: &str) -> String {
    format!("pool-redis-it:{}:{}:{test}", std::process::id(), fastrand_suffix())
}

fn fastrand_suffix() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos) ^ (NEXT.fetch_add(1, Relaxed) << 32)
}

/// Small pools that fail fast, for fault tests.
fn small() -> PoolSettings {
    let mut settings = PoolSettings::default()
        .pool_size(2)
        .max_connections(2)
        .shared_clients(2)
        .command_timeout(Some(Duration::from_secs(2)))
        .shared_command_timeout(Some(Duration::from_secs(2)))
        .max_reconnect_delay(Duration::from_millis(200));
    settings.pool.connect_timeout = Duration::from_secs(2);
    settings.pool.pool_timeout = Duration::from_secs(3);
    settings
}

/// A plain fred client, outside any pool, to look at and poke the server.
async fn admin(url: &str) -> Result<Client, Error> {
    let client = Builder::from_config(Config::from_url(url)?).build()?;
    client.init().await?;
    Ok(client)
}

/// `CLIENT LIST` lines, without the admin's own connection.
async fn clients(admin: &Client) -> Result<Vec<String>, Error> {
    let list: String = admin.client_list::<String, String>(None, None).await?;
    Ok(list.lines().filter(|l| !l.contains("cmd=client|list")).map(str::to_owned).collect())
}

/// Polls `CLIENT LIST` until `done` holds for it, for up to 10 s (waiting on the server).
async fn wait_for_clients(
    admin: &Client,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = clients(admin).await?;
        if done(&list) {
            return Ok(list);
        }
        if Instant::now() > deadline {
            return Err(
                format!("gave up after 10s waiting for {what}; CLIENT LIST: {list:#?}").into()
            );
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn blocked_in_blpop(list: &[String]) -> usize {
    list.iter().filter(|l| l.contains("cmd=blpop")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_commands_through_both_paths() -> TestResult {
    let p = prefix("basic");
    let pool =
        RedisPool::connect("main", &redis_url(), PoolSettings::default().pool_size(2)).await?;

    pool.shared().set::<(), _, _>(format!("{p}:a"), "1", None, None, false).await?;
    let a: Option<String> = pool.shared().get(format!("{p}:a")).await?;
    assert_eq!(a.as_deref(), Some("1"));

    let conn = pool.exclusive().await?;
    conn.set::<(), _, _>(format!("{p}:b"), "2", None, None, false).await?;
    let b: Option<String> = conn.get(format!("{p}:a")).await?;
    assert_eq!(b.as_deref(), Some("1"));
    drop(conn);
    reset_done(&pool).await;

    let key = format!("{p}:b");
    let b: Option<String> = pool
        .idempotent(|c| {
            let key = key.clone();
            async move { c.get(key).await }
        })
        .await?;
    assert_eq!(b.as_deref(), Some("2"));

    let stats = pool.stats();
    assert_eq!((stats.in_use, stats.shared_clients, stats.retries), (0, 1, 0));
    assert!(stats.created >= stats.shared_clients, "{stats:?}");
    pool.shared().del::<i64, _>(vec![format!("{p}:a"), format!("{p}:b")]).await?;
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_multi_exec_aborts_when_another_client_touches_the_key_and_unwatch_on_return()
-> TestResult {
    let p = prefix("watch");
    let key = format!("{p}:balance");
    let settings = PoolSettings::default().pool_size(1).max_connections(1);
    let pool = RedisPool::connect("main", &redis_url(), settings).await?;
    pool.shared().set::<(), _, _>(&key, 10, None, None, false).await?;

    // Another client changes the watched key: EXEC aborts (nil).
    let conn = pool.exclusive().await?;
    conn.watch(&*key).await?;
    assert!(conn.is_watching());
    let balance: i64 = conn.get(&*key).await?;
    pool.shared().incr::<i64, _>(&key).await?;
    let trx = conn.multi();
    trx.set::<(), _, _>(&*key, balance + 5, None, None, false).await?;
    let result: Value = trx.exec(true).await?;
    assert!(result.is_null(), "EXEC should abort, got {result:?}");
    let id = conn.id();

    // WATCH again and return it without EXEC: the pool sends UNWATCH, so the next user's
    // transaction on the same connection is not aborted by the stale WATCH.
    conn.watch(&*key).await?;
    drop(conn);
    pool.shared().incr::<i64, _>(&key).await?;
    let conn = pool.exclusive().await?;
    assert_eq!(conn.id(), id, "one-connection pool hands out the same connection");
    assert!(!conn.is_watching());
    let trx = conn.multi();
    trx.set::<(), _, _>(&*key, 100, None, None, false).await?;
    let result: Value = trx.exec(true).await?;
    assert!(!result.is_null(), "stale WATCH leaked to the next user: {result:?}");
    drop(conn);

    assert_eq!(pool.shared().get::<i64, _>(&key).await?, 100);
    assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), 0);
    pool.shared().del::<i64, _>(&key).await?;
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_on_an_exclusive_connection_does_not_delay_shared_commands() -> TestResult {
    let redis = RedisInstance::start()?;
    let admin = admin(&redis.url()).await?;
    let pool = RedisPool::connect("main", &redis.url(), small()).await?;
    let conn = pool.exclusive().await?;
    let blpop = tokio::spawn(async move {
        let popped: Option<(String, String)> = conn.blpop("jobs", 0.0).await?;
        Ok::<_, Error>(popped)
    });
    wait_for_clients(&admin, "the BLPOP to block", |l| blocked_in_blpop(l) == 1).await?;

    // While the exclusive connection is blocked, the shared clients answer.
    for i in 0..100 {
        pool.shared().set::<(), _, _>(format!("k{i}"), i, None, None, false).await?;
        assert_eq!(pool.shared().get::<i64, _>(format!("k{i}")).await?, i);
    }
    assert!(!blpop.is_finished(), "BLPOP returned before anything was pushed");
    assert_eq!(blocked_in_blpop(&clients(&admin).await?), 1);

    pool.shared().lpush::<i64, _, _>("jobs", "job-1").await?;
    let popped = blpop.await??;
    assert_eq!(popped, Some(("jobs".to_owned(), "job-1".to_owned())));
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_blpop_future_does_not_get_its_connection_reused() -> TestResult {
    let redis = RedisInstance::start()?;
    let admin = admin(&redis.url()).await?;
    // A command timeout far beyond the test: with `small()`'s 2 s, a slow machine could see the
    // BLPOP blocked only after fred had timed it out, and nothing would be in flight any more.
    let settings =
        small().pool_size(1).max_connections(1).command_timeout(Some(Duration::from_secs(600)));
    let pool = RedisPool::connect("main", &redis.url(), settings).await?;

    let conn = pool.exclusive().await?;
    let first_id = conn.id();
    {
        // Abandon the BLPOP once the server shows it blocked, as a `select!` or timeout would.
        let blpop = conn.blpop::<Option<(String, String)>, _>("jobs", 0.0);
        tokio::select! {
            r = blpop => panic!("BLPOP returned with nothing pushed: {r:?}"),
            r = wait_for_clients(&admin, "the BLPOP to block", |l| blocked_in_blpop(l) == 1) => { r?; }
        }
    }
    // fred marks the connection blocked once its write of the BLPOP returns, which may be after
    // the server already shows it blocked: wait for fred's own mark, as the pool reads it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !conn.has_command_in_flight() {
        assert!(Instant::now() < deadline, "fred never marked the abandoned BLPOP in flight");
        tokio::task::yield_now().await;
    }
    drop(conn);

    // The server drops the blocked client once its socket is closed...
    wait_for_clients(&admin, "the abandoned BLPOP to go", |l| blocked_in_blpop(l) == 0).await?;
    // ...so a pushed element is not swallowed by it, and the next user gets a fresh connection.
    pool.shared().lpush::<i64, _, _>("jobs", "job-1").await?;
    let conn = pool.exclusive().await?;
    assert_ne!(conn.id(), first_id, "the abandoned connection was handed out again");
    // The pool's one connection: the new one was opened once the old one was closed, as broken.
    assert_eq!(pool.stats().engine.closed.get(CloseReason::Broken), 1);
    assert!(!conn.has_command_in_flight());
    let job: Option<String> = conn.lpop("jobs", None).await?;
    assert_eq!(job.as_deref(), Some("job-1"));
    drop(conn);
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_kill_of_every_pool_connection_then_checkouts_get_fresh_ones() -> TestResult {
    let redis = RedisInstance::start()?;
    let admin = admin(&redis.url()).await?;
    let settings = small().pool_size(3).max_connections(3);
    let pool = RedisPool::connect("main", &redis.url(), settings).await?;
    // Warm: all three exclusive connections open (and the two shared clients).
    let held: Vec<_> = futures_join(&pool, 3).await?;
    drop(held);
    // Each returned connection is reset in the background: one killed before its `RESET` is
    // answered is closed as a failed reset, not found broken. Wait until all three are idle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.engine().state().idle < 3 {
        assert!(Instant::now() < deadline, "the returns never ended: {:?}", pool.engine().state());
        tokio::task::yield_now().await;
    }
    let before = wait_for_clients(&admin, "5 pool connections", |l| l.len() == 5).await?;

    let killed: i64 = admin
        .client_kill(vec![
            ClientKillFilter::Type(ClientKillType::Normal),
            ClientKillFilter::SkipMe(true),
        ])
        .await?;
    assert_eq!(killed, 5);
    // The shared clients reconnect by themselves; the exclusive connections stay down (a
    // silent reconnect mid-checkout would drop a WATCH), and checkouts replace them.
    let old_ids: Vec<String> = before.iter().filter_map(|l| field(l, "id")).collect();
    wait_for_clients(&admin, "the shared clients to reconnect", |l| {
        l.len() == 2 && l.iter().filter_map(|l| field(l, "id")).all(|id| !old_ids.contains(&id))
    })
    .await?;

    let conns = futures_join(&pool, 3).await?;
    for conn in &conns {
        conn.ping::<()>(None).await?;
        let id: i64 = conn.client_id().await?;
        assert!(!old_ids.contains(&id.to_string()), "a fresh connection, not a killed one");
    }
    drop(conns);
    // The server lists a shared client once its socket is accepted, before fred has set the
    // connection up and calls it connected; and `shared()` hands out a connected client over one
    // still connecting, so pinging through it proves nothing about the other. Wait for fred's
    // own word on both.
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.stats().shared_connected < 2 {
        assert!(
            Instant::now() < deadline,
            "the shared clients never reconnected: {:?}",
            pool.stats()
        );
        tokio::task::yield_now().await;
    }
    // A returned connection is reset in the background before it is available again: taking
    // all three again waits for that, and finds the same three (no more were opened).
    let again = futures_join(&pool, 3).await?;
    let stats = pool.stats();
    assert_eq!((stats.in_use, stats.available, stats.shared_connected), (3, 0, 2), "{stats:?}");
    assert_eq!(stats.created, 3 + 2, "open now: {stats:?}");
    assert_eq!(pool.engine().stats().connections_created, 3 + 3, "3 killed, 3 new");
    drop(again);
    let closed = pool.engine().stats().closed;
    assert_eq!(closed.get(CloseReason::Broken), 3, "{closed:?}");
    pool.close().await?;
    Ok(())
}

/// A `WATCH` lives on the server's connection: an exclusive connection that lost its socket
/// mid-checkout must not reconnect silently, or `EXEC` would commit without the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_checkout_fails_its_transaction_instead_of_reconnecting()
-> TestResult {
    let redis = RedisInstance::start()?;
    let admin = admin(&redis.url()).await?;
    let pool = RedisPool::connect("main", &redis.url(), small()).await?;
    let conn = pool.exclusive().await?;
    conn.watch("balance").await?;
    let id: i64 = conn.client_id().await?;
    let killed: i64 = admin.client_kill(vec![ClientKillFilter::ID(id.to_string())]).await?;
    assert_eq!(killed, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.is_connected() {
        assert!(Instant::now() < deadline, "the connection never saw its socket close");
        tokio::task::yield_now().await;
    }
    let trx = conn.multi();
    let queued = trx.set::<(), _, _>("balance", 10, None, None, false).await;
    let committed = trx.exec::<Option<Vec<Value>>>(true).await;
    assert!(queued.is_err() || committed.is_err(), "committed without its WATCH: {committed:?}");
    let balance: Option<i64> = admin.get("balance").await?;
    assert_eq!(balance, None, "nothing written");
    drop(conn);

    let conn = pool.exclusive().await?;
    let fresh: i64 = conn.client_id().await?;
    assert_ne!(fresh, id, "the next user gets a new connection");
    drop(conn);
    let closed = pool.engine().stats().closed;
    assert_eq!(closed.get(CloseReason::Broken), 1, "{closed:?}");
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_hostage_to_exclusive_connections_in_long_use() -> TestResult {
    let pool = RedisPool::connect("main", &redis_url(), small()).await?;
    // Both exclusive connections held, as blocking workers hold theirs.
    let held = futures_join(&pool, 2).await?;
    let health = pool_core::DynPool::health(&pool).await;
    assert!(health.healthy, "{health:?}");
    assert_eq!(health.error, None);
    assert_eq!(pool.engine().stats().timeouts, 0, "no acquire queued, none timed out");
    drop(held);
    let health = pool_core::DynPool::health(&pool).await;
    assert!(health.healthy && health.latency > Duration::ZERO, "{health:?}");
    pool.close().await?;
    Ok(())
}

/// Waits until every exclusive connection given back is through its reset on return (which
/// runs in the background) and back in the pool, for up to 10 s.
async fn reset_done(pool: &RedisPool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while pool.engine().state().pool_held > 0 {
        assert!(Instant::now() < deadline, "gave up after 10s waiting for the resets on return");
        tokio::task::yield_now().await;
    }
}

/// Checks out `n` exclusive connections at once.
async fn futures_join(
    pool: &RedisPool,
    n: usize,
) -> Result<Vec<pool_redis::ExclusiveConnection>, pool_redis::AcquireError> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.exclusive().await?);
    }
    Ok(held)
}

/// The value of `name=` in a `CLIENT LIST` line.
fn field(line: &str, name: &str) -> Option<String> {
    line.split(' ').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=').map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_load_gives_clear_errors_and_heals_without_leaks() -> TestResult {
    let mut redis = RedisInstance::start()?;
    let url = redis.url();
    let pool = RedisPool::connect("main", &url, small()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for task in 0..8 {
        let (pool, stop, ok, errors) = (pool.clone(), stop.clone(), ok.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Relaxed) {
                let result: Result<(), String> = if task % 2 == 0 {
                    pool.shared()
                        .set::<(), _, _>(format!("k{task}"), 1, None, None, false)
                        .await
                        .map_err(|e| format!("shared: {e:?}"))
                } else {
                    match pool.exclusive().await {
                        Ok(conn) => {
                            conn.ping::<()>(None).await.map_err(|e| format!("exclusive: {e:?}"))
                        }
                        Err(e) => Err(format!("checkout: {e}")),
                    }
                };
                match result {
                    Ok(()) => {
                        ok.fetch_add(1, Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(e),
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let wait_until = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "gave up after 30s waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let ok2 = ok.clone();
    wait_until("load to run", Box::new(move || ok2.load(Relaxed) > 100)).await;

    redis.stop()?;
    let errors2 = errors.clone();
    wait_until("errors during the outage", Box::new(move || errors2.lock().unwrap().len() >= 8))
        .await;
    redis.start_again()?;
    let before = ok.load(Relaxed);
    let ok2 = ok.clone();
    wait_until("the pool to heal", Box::new(move || ok2.load(Relaxed) > before + 1000)).await;
    stop.store(true, Relaxed);
    for task in load {
        task.await?;
    }

    // Every error says what failed: a timeout, a closed connection, a refused connect, or
    // fred's "Failed to route command." (no connection to send it on while reconnecting);
    // never a panic or a hang (every task above finished).
    let errors = errors.lock().unwrap().clone();
    for e in &errors {
        let clear = ["Timeout", "IO", "Canceled", "timed out", "Connection", "connect", "route"]
            .iter()
            .any(|word| e.contains(word));
        assert!(clear, "unclear error during the outage: {e}");
    }

    // No leaked connection: the server sees exactly the pool's open connections.
    let admin = admin(&url).await?;
    let stats = pool.stats();
    wait_for_clients(&admin, "only the pool's connections", |l| l.len() == pool.stats().created)
        .await?;
    assert!(stats.created <= stats.max_connections + stats.shared_clients, "{stats:?}");
    pool.close().await?;
    wait_for_clients(&admin, "every pool connection to close", |l| l.is_empty()).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_and_cache_keep_separate_stats_and_limits() -> TestResult {
    let config = RedisConfig::new(redis_url())
        .pool("main", PoolSettings::default().pool_size(2).max_connections(2))
        .pool("cache", PoolSettings::default().pool_size(4).max_connections(4).shared_clients(3));
    let pools = RedisPools::connect(&config).await?;
    let (main, cache) = (pools.get("main").unwrap(), pools.get("cache").unwrap());
    // Start-up may hold traffic until every pool's exclusive connections are open.
    pools.warmed(Duration::from_secs(10)).await?;
    assert_eq!((main.stats().available, cache.stats().available), (2, 4));

    let main_held = futures_join(main, 2).await?;
    let cache_held = futures_join(cache, 4).await?;
    // `main` is at its limit; `cache` is unaffected by it.
    assert!(main.engine().try_acquire().await.is_err());
    assert!(cache.engine().try_acquire().await.is_err());
    drop(cache_held);
    reset_done(cache).await;
    assert!(cache.engine().try_acquire().await.is_ok());
    assert!(main.engine().try_acquire().await.is_err());
    reset_done(cache).await;

    let (m, c) = (main.stats(), cache.stats());
    assert_eq!((m.in_use, m.max_connections, m.shared_clients), (2, 2, 1), "{m:?}");
    assert_eq!((c.in_use, c.max_connections, c.shared_clients), (0, 4, 3), "{c:?}");
    assert_eq!(c.engine.acquires, 5);
    assert_eq!(m.engine.acquires, 2);
    drop(main_held);

    let registry = pool_core::Registry::new();
    pools.register(&registry)?;
    assert_eq!(registry.ids(), ["redis:cache", "redis:main"]);
    let dyn_main = registry.get("main").unwrap();
    assert_eq!(dyn_main.backend(), "redis");
    assert_eq!(dyn_main.stats().pool_size, 2);
    let health = registry.get("cache").unwrap().health().await;
    assert!(health.healthy, "{health:?}");
    pools.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_and_bad_urls_give_errors_naming_them() -> TestResult {
    let port = pool_harness::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = RedisPool::connect("cache", &url, small()).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BuildError::Connect { .. } | BuildError::ConnectTimeout { .. }), "{msg}");
    assert!(msg.contains("\"cache\"") && msg.contains(&url), "{msg}");

    for bad in ["redis://:secret@127.0.0.1:notaport", "http://127.0.0.1:6379", "127.0.0.1:6379"] {
        let err = RedisPool::connect("main", bad, small()).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, BuildError::Config(ConfigError::Url { .. })), "{bad}: {msg}");
        assert!(msg.contains("invalid Redis URL") && !msg.contains("secret"), "{msg}");
    }
    Ok(())
}

/// Sends `signal` (`STOP`, `CONT`) to the throwaway server's process.
fn signal(redis: &RedisInstance, signal: &str) -> Result<(), Box<dyn std::error::Error>> {
    let pid = redis.pid().ok_or("the throwaway redis-server is not running")?;
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()?;
    if !status.success() {
        return Err(format!("kill -{signal} {pid} failed: {status}").into());
    }
    Ok(())
}

/// A server that stops answering (SIGSTOP: the socket stays open, nothing comes back) must not
/// leave commands on the shared clients hanging past `shared_command_timeout` (a heuristic that waits
/// for the socket to go quiet would never fire while other tasks keep writing), with or without
/// `retry_on_timeout`, and the clients must work again by themselves once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_commands_fail_when_the_server_stops_answering_and_heal_after() -> TestResult {
    let redis = RedisInstance::start()?;
    let settings =
        small().shared_command_timeout(Some(Duration::from_secs(1))).retry_on_timeout(true);
    let pool = RedisPool::connect("main", &redis.url(), settings).await?;
    pool.shared().set::<(), _, _>("k", 1, None, None, false).await?;

    signal(&redis, "STOP")?;
    // Load from other tasks keeps writing to the shared clients the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    let _ = pool.shared().incr::<i64, _>("load").await;
                }
            })
        })
        .collect();
    // The guard only turns a hang into a clear failure.
    let hung = "a GET on a shared client still waits 30 s after the server stopped answering";
    let get = tokio::time::timeout(Duration::from_secs(30), pool.shared().get::<i64, _>("k"));
    let err = get.await.map_err(|_| hung)?.expect_err("the server is stopped, yet GET answered");
    assert_eq!(*err.kind(), ErrorKind::Timeout, "{err:?}");
    let idempotent = pool.idempotent(|c| async move { c.get::<i64, _>("k").await });
    let retried =
        tokio::time::timeout(Duration::from_secs(30), idempotent).await.map_err(|_| hung)?;
    let retried = retried.expect_err("the server is stopped, yet GET answered");
    assert_eq!(*retried.kind(), ErrorKind::Timeout, "{retried:?}");
    assert_eq!(pool.stats().retries, 1, "retry_on_timeout retried the idempotent GET once");
    stop.store(true, Relaxed);
    for task in load {
        task.await?;
    }

    signal(&redis, "CONT")?;
    let healed = Instant::now();
    loop {
        match pool.shared().get::<i64, _>("k").await {
            Ok(v) => {
                assert_eq!(v, 1);
                break;
            }
            // Polling the condition itself: the reconnect has no event to await.
            Err(_) if healed.elapsed() < Duration::from_secs(20) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(format!("shared clients did not heal after SIGCONT: {e:?}").into());
            }
        }
    }
    pool.close().await?;
    Ok(())
}

/// A pool of one exclusive connection: the next checkout gets the connection the previous user
/// left.
fn one() -> PoolSettings {
    PoolSettings::default().pool_size(1).max_connections(1)
}

/// What a `CLIENT INFO` line shows that a fresh connection of a pool on database `db`, as
/// `user`, does not (`flags=N`: no `MULTI`, tracking, `MONITOR`, `NO-EVICT`...); empty when clean.
fn dirt(info: &str, db: u8, user: &str) -> Vec<String> {
    let db = db.to_string();
    let want = [
        ("db", db.as_str()),
        ("name", ""),
        ("sub", "0"),
        ("psub", "0"),
        ("ssub", "0"),
        ("multi", "-1"),
        ("flags", "N"),
        ("resp", "2"),
        ("user", user),
    ];
    want.iter()
        .filter_map(|&(name, value)| {
            let got = field(info.trim(), name);
            (got.as_deref() != Some(value))
                .then(|| format!("{name}={}", got.as_deref().unwrap_or("(missing)")))
        })
        .collect()
}

/// What the next user of `pool`'s only connection finds after `dirty` ran on it: whether it is
/// the same connection (by `CLIENT ID`), and its `CLIENT INFO`.
async fn next_user_after(
    pool: &RedisPool,
    dirty: impl AsyncFnOnce(&Client) -> Result<(), Error>,
) -> Result<(bool, String), Box<dyn std::error::Error>> {
    let conn = pool.exclusive().await?;
    let id: i64 = conn.client_id().await?;
    dirty(conn.client()).await?;
    drop(conn);
    let conn = pool.exclusive().await?;
    let info: String = conn.client_info().await?;
    Ok((field(info.trim(), "id") == Some(id.to_string()), info))
}

/// Asserts that the next user of `pool`'s only connection gets the same one with a clean
/// session after `dirty` ran on it.
async fn assert_reset(
    pool: &RedisPool,
    dirty: impl AsyncFnOnce(&Client) -> Result<(), Error>,
) -> TestResult {
    let (same, info) = next_user_after(pool, dirty).await?;
    assert!(same, "the connection was replaced, not reset: {info}");
    assert_eq!(dirt(&info, 0, "default"), Vec::<String>::new(), "{info}");
    assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), 0);
    Ok(())
}

/// Sends `args` as one custom command (the pool cannot see it).
async fn custom(client: &Client, args: &[&str]) -> Result<Value, Error> {
    client.custom(fred::cmd!(args[0]), args[1..].to_vec()).await
}

/// A transaction opened by hand (a custom `MULTI`, which the pool cannot see)
/// and abandoned by an early `?` must not reach the next user of the connection: its `GET`
/// answers the value, not `QUEUED`, and its `EXEC` does not commit the abandoned `SET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_sent_by_hand_and_abandoned_does_not_reach_the_next_user() -> TestResult {
    let key = format!("{}:k", prefix("case8"));
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    pool.shared().set::<(), _, _>(&key, "original", None, None, false).await?;

    let conn = pool.exclusive().await?;
    let id: i64 = conn.client_id().await?;
    conn.custom::<(), _>(fred::cmd!("MULTI"), Vec::<Value>::new()).await?;
    let queued: String = conn.custom(fred::cmd!("SET"), vec![key.as_str(), "overwritten"]).await?;
    assert_eq!(queued, "QUEUED");
    drop(conn); // an early `?`

    let conn = pool.exclusive().await?;
    let got: Value = conn.get(&key).await?;
    assert_eq!(got.as_str().as_deref(), Some("original"), "the next user's GET");
    assert_eq!(conn.client_id::<i64>().await?, id, "a one-connection pool hands out the same one");
    let exec = conn.custom::<Value, _>(fred::cmd!("EXEC"), Vec::<Value>::new()).await;
    assert!(exec.is_err(), "EXEC found a transaction open: {exec:?}");
    drop(conn);
    assert_eq!(pool.shared().get::<String, _>(&key).await?, "original", "nothing committed");
    pool.shared().del::<i64, _>(&key).await?;
    pool.close().await?;
    Ok(())
}

/// A `WATCH` sent by hand (not through `RedisConnection::watch`) does not abort the next
/// user's transaction when someone touches the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sent_by_hand_ends_on_return() -> TestResult {
    let key = format!("{}:k", prefix("custom-watch"));
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    let conn = pool.exclusive().await?;
    let id = conn.client_id::<i64>().await?;
    custom(&conn, &["WATCH", &key]).await?;
    assert!(!conn.is_watching(), "the pool did not see it");
    drop(conn);
    pool.shared().incr::<i64, _>(&key).await?;

    let conn = pool.exclusive().await?;
    assert_eq!(conn.client_id::<i64>().await?, id);
    let trx = conn.multi();
    trx.set::<(), _, _>(&*key, 100, None, None, false).await?;
    let result: Value = trx.exec(true).await?;
    assert!(!result.is_null(), "a WATCH sent by hand leaked to the next user: {result:?}");
    drop(conn);
    pool.shared().del::<i64, _>(&key).await?;
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_by_hand_or_through_fred_ends_on_return() -> TestResult {
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    assert_reset(&pool, async |c| custom(c, &["SELECT", "3"]).await.map(drop)).await?;
    assert_reset(&pool, async |c| c.select(4).await).await?;
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_name_ends_on_return() -> TestResult {
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    assert_reset(&pool, async |c| custom(c, &["CLIENT", "SETNAME", "user-1"]).await.map(drop))
        .await?;
    pool.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_ends_on_return() -> TestResult {
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    assert_reset(&pool, async |c| custom(c, &["CLIENT", "TRACKING", "on"]).await.map(drop)).await?;
    pool.close().await?;
    Ok(())
}

/// `CLIENT NO-EVICT` ends on return from Redis 7.2 on; 7.0 and 7.1 keep it across `RESET`,
/// the documented limit (the connection is still the same one, and otherwise clean).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_no_evict_ends_on_return_from_redis_7_2() -> TestResult {
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    let version = pool.shared().server_version().expect("the version is known once connected");
    let (same, info) =
        next_user_after(&pool, async |c| custom(c, &["CLIENT", "NO-EVICT", "on"]).await.map(drop))
            .await?;
    assert!(same, "the connection was replaced, not reset: {info}");
    let dirt = dirt(&info, 0, "default");
    if version >= fred::types::Version::new(7, 2, 0) {
        assert_eq!(dirt, Vec::<String>::new(), "{info}");
    } else {
        assert_eq!(dirt, ["flags=e"], "Redis {version}: only NO-EVICT is left: {info}");
    }
    pool.close().await?;
    Ok(())
}

/// fred's own subscribe commands leave fred in step: the connection is reset and reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_through_fred_end_on_return() -> TestResult {
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    let channel = prefix("channel");
    assert_reset(&pool, async |c| {
        c.subscribe(channel.as_str()).await?;
        c.psubscribe(format!("{channel}:*")).await?;
        c.ssubscribe(format!("{channel}:shard")).await
    })
    .await?;
    pool.close().await?;
    Ok(())
}

/// A `SUBSCRIBE` sent by hand gets no reply through fred (it drops subscription confirmations),
/// which leaves its reply queue out of step: the reset sees that and the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_by_hand_closes_the_connection() -> TestResult {
    let settings = one().command_timeout(Some(Duration::from_secs(1)));
    let pool = RedisPool::connect("main", &redis_url(), settings).await?;
    let channel = prefix("channel");
    let (same, info) = next_user_after(&pool, async |c| {
        let quick = Options { timeout: Some(Duration::from_millis(200)), ..Options::default() };
        let subscribe = custom(&c.with_options(&quick), &["SUBSCRIBE", &channel]).await;
        assert_eq!(subscribe.map_err(|e| e.kind().clone()), Err(ErrorKind::Timeout));
        Ok(())
    })
    .await?;
    assert!(!same, "a connection out of step with fred was reused: {info}");
    assert_eq!(dirt(&info, 0, "default"), Vec::<String>::new(), "{info}");
    assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), 1);
    pool.close().await?;
    Ok(())
}

/// `HELLO 3` by hand (fred decodes RESP3 replies all the same) or through fred's `hello` (which
/// switches fred's decoder): the next user speaks RESP2, on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_by_hand_or_through_fred_ends_on_return() -> TestResult {
    let pool = RedisPool::connect("main", &redis_url(), one()).await?;
    assert_reset(&pool, async |c| custom(c, &["HELLO", "3"]).await.map(drop)).await?;
    assert_reset(&pool, async |c| {
        c.hello(RespVersion::RESP3, None, None).await?;
        assert_eq!(c.protocol_version(), RespVersion::RESP3);
        Ok(())
    })
    .await?;
    let conn = pool.exclusive().await?;
    assert_eq!(conn.protocol_version(), RespVersion::RESP2, "fred's decoder is switched back");
    let missing: Option<String> = conn.get(prefix("missing")).await?;
    assert_eq!(missing, None);
    drop(conn);
    pool.close().await?;
    Ok(())
}

/// `CLIENT REPLY OFF` and `SKIP` by hand: the server stops answering, so fred waits for replies
/// that never come, and the reset sees it out of step: the connection is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_or_skip_closes_the_connection() -> TestResult {
    let settings = one().command_timeout(Some(Duration::from_secs(1)));
    let pool = RedisPool::connect("main", &redis_url(), settings).await?;
    for (i, mode) in ["OFF", "SKIP"].into_iter().enumerate() {
        let (same, info) = next_user_after(&pool, async |c| {
            let quick = Options { timeout: Some(Duration::from_millis(200)), ..Options::default() };
            let reply = custom(&c.with_options(&quick), &["CLIENT", "REPLY", mode]).await;
            assert_eq!(reply.map_err(|e| e.kind().clone()), Err(ErrorKind::Timeout), "{mode}");
            Ok(())
        })
        .await?;
        assert!(!same, "CLIENT REPLY {mode}: a connection out of step was reused: {info}");
        assert_eq!(dirt(&info, 0, "default"), Vec::<String>::new(), "{info}");
        assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), i as u64 + 1);
        let key = prefix("reply");
        let conn = pool.exclusive().await?;
        conn.set::<(), _, _>(&key, mode, None, None, false).await?;
        assert_eq!(conn.get::<String, _>(&key).await?, mode, "the replacement answers");
        conn.del::<i64, _>(&key).await?;
    }
    pool.close().await?;
    Ok(())
}

/// `MONITOR` by hand: the next user is not a monitor (on the same connection if no monitored
/// line came before the reset's replies, on a new one otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_ends_on_return() -> TestResult {
    let settings = one().command_timeout(Some(Duration::from_secs(1)));
    let pool = RedisPool::connect("main", &redis_url(), settings).await?;
    let (_, info) =
        next_user_after(&pool, async |c| custom(c, &["MONITOR"]).await.map(drop)).await?;
    assert_eq!(dirt(&info, 0, "default"), Vec::<String>::new(), "{info}");
    pool.close().await?;
    Ok(())
}

/// A pool whose URL authenticates and selects a database: after `RESET` (which authenticates
/// as `default` and selects 0) the connection is authenticated as the URL's user and on its
/// database again, even after its user authenticated as someone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_a_password_stays_authenticated_and_on_its_database() -> TestResult {
    let config = "--requirepass default-pw \
        --user app on >app-pw ~* &* +@all \
        --user other on >other-pw ~* &* +@all";
    let redis = RedisInstance::start_with(&config.split_whitespace().collect::<Vec<_>>())?;
    let address = redis.url().replace("redis://", "");
    for (url, user) in [
        (format!("redis://app:app-pw@{address}/2"), "app"),
        (format!("redis://:default-pw@{address}/2"), "default"),
    ] {
        let pool = RedisPool::connect("main", &url, one()).await?;
        let (same, info) = next_user_after(&pool, async |c| {
            custom(c, &["AUTH", "other", "other-pw"]).await?;
            custom(c, &["SELECT", "5"]).await?;
            c.set::<(), _, _>("k", "on 5", None, None, false).await
        })
        .await?;
        assert!(same, "{url}: replaced, not reset: {info}");
        assert_eq!(dirt(&info, 2, user), Vec::<String>::new(), "{url}: {info}");
        let conn = pool.exclusive().await?;
        assert_eq!(conn.get::<Option<String>, _>("k").await?, None, "db 2 has no k");
        drop(conn);
        assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), 0);
        pool.close().await?;
    }
    Ok(())
}

/// A server without `RESET` (renamed away here, as on Redis older than 6.2): every return closes
/// the connection, and the pool goes on serving with new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_reset_connections_are_closed_on_return() -> TestResult {
    let redis = RedisInstance::start_with(&["--rename-command", "RESET", ""])?;
    let pool = RedisPool::connect("main", &redis.url(), one()).await?;
    let conn = pool.exclusive().await?;
    let id: i64 = conn.client_id().await?;
    custom(conn.client(), &["SELECT", "3"]).await?;
    drop(conn);
    // The pool's one connection: the next is handed out once the first is closed. Counted while
    // it is held, since its own return fails its reset too.
    let conn = pool.exclusive().await?;
    let info: String = conn.client_info().await?;
    assert_ne!(field(info.trim(), "id"), Some(id.to_string()), "reused unreset: {info}");
    assert_eq!(dirt(&info, 0, "default"), Vec::<String>::new(), "{info}");
    assert_eq!(pool.stats().engine.closed.get(CloseReason::FailedReset), 1);
    drop(conn);
    pool.close().await?;
    Ok(())
}
