//! `pool-redis` when the server misbehaves quietly or moves: a frozen server (`SIGSTOP`) found
//! by the command timeouts on both paths, with the connections that missed their bound never
//! handed out again; pools over Redis Sentinel that follow a failover; pools over Redis Cluster
//! that follow a master's failover. Every server is a throwaway one from `pool-harness`.

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, Instant};

use pool_harness::RedisInstance;
use pool_redis::fred::prelude::*;
use pool_redis::fred::types::CustomCommand;
use pool_redis::{PoolSettings, RedisPool};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The bound of one command on either path in these tests.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
/// How long an exclusive checkout may wait in these tests.
const POOL_TIMEOUT: Duration = Duration::from_millis(600);

/// Two exclusive connections and one shared client, every bound short.
fn settings() -> PoolSettings {
    let mut settings = PoolSettings::default()
        .pool_size(2)
        .max_connections(2)
        .shared_clients(1)
        .command_timeout(Some(COMMAND_TIMEOUT))
        .shared_command_timeout(Some(COMMAND_TIMEOUT))
        .max_reconnect_delay(Duration::from_millis(200));
    settings.pool.connect_timeout = COMMAND_TIMEOUT;
    settings.pool.pool_timeout = POOL_TIMEOUT;
    settings
}

/// The server's id of the connection behind `client` (`CLIENT ID`).
async fn client_id(client: &Client) -> Result<i64, Error> {
    client.custom(CustomCommand::new_static("CLIENT", None, false), vec!["ID"]).await
}

/// Polls `attempt` until it succeeds, for up to `within`; the last error otherwise.
async fn until_ok<T, F, Fut>(within: Duration, what: &str, mut attempt: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("{what}: still failing after {within:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// One exclusive call: a checkout, then `INCR`.
async fn exclusive_incr(pool: &RedisPool, key: &str) -> Result<i64, String> {
    let conn = pool.exclusive().await.map_err(|e| e.to_string())?;
    conn.incr(key).await.map_err(|e| e.to_string())
}

/// What one call during the freeze ended with.
#[derive(Debug)]
enum Outcome {
    /// The exclusive checkout timed out (`pool_timeout`).
    AcquireTimeout,
    /// The exclusive checkout failed at once: the pool's circuit breaker is open after the
    /// connects that failed during the freeze.
    BreakerOpen,
    /// A command failed with fred's timeout.
    CommandTimeout,
    /// Anything else: the test fails on it.
    Other(String),
}

fn command_outcome<T: std::fmt::Debug>(result: Result<T, Error>) -> Outcome {
    match result {
        Err(e) if *e.kind() == ErrorKind::Timeout => Outcome::CommandTimeout,
        other => Outcome::Other(format!("{other:?}")),
    }
}

/// A frozen server (`SIGSTOP`, sockets open, nothing answered) for longer than every bound:
/// every call on either path returns its timeout within its bound (or, once the connects that
/// failed opened the circuit breaker, its fail-fast error), the connections that missed
/// their bound are closed and never handed out again, and once the server thaws both paths serve
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_fails_every_call_within_its_bound_and_its_connections_are_replaced()
-> TestResult {
    let redis = RedisInstance::start()?;
    let pool = RedisPool::connect("frozen", &redis.url(), settings()).await?;
    pool.warmed(Duration::from_secs(5)).await?;
    let key = "frozen:counter";

    // Both exclusive connections, held across the freeze: each sends a command while frozen.
    let held = [pool.exclusive().await?, pool.exclusive().await?];
    let mut before = HashSet::new();
    for conn in &held {
        before.insert(client_id(conn).await?);
    }
    assert_eq!(before.len(), 2);
    let closed_before = pool.engine().stats().connections_closed;

    redis.freeze()?;
    let frozen_at = Instant::now();
    // Each call's bound: a command, or a checkout and then a command.
    let exclusive_bound = POOL_TIMEOUT + COMMAND_TIMEOUT;
    let mut outcomes = Vec::new();
    for conn in &held {
        let outcome = tokio::time::timeout(3 * COMMAND_TIMEOUT, conn.incr::<i64, _>(key)).await;
        outcomes.push(outcome.map(command_outcome).map_err(|_| "held exclusive"));
    }
    // Each connection that missed its bound reads as broken soon after (fred closed its
    // socket), though the server still holds it open: the pool will not hand it out again.
    let deadline = Instant::now() + 3 * COMMAND_TIMEOUT;
    while held.iter().any(|conn| conn.is_connected()) {
        assert!(
            Instant::now() < deadline,
            "a connection that missed its bound still reads as connected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    // Callers on both paths at once, for longer than every bound.
    let mut calls = tokio::task::JoinSet::new();
    for caller in 0..4 {
        let pool = pool.clone();
        calls.spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 0..3 {
                if caller % 2 == 0 {
                    let call = async {
                        match pool.exclusive().await {
                            Ok(conn) => command_outcome(conn.incr::<i64, _>(key).await),
                            Err(pool_core::AcquireError::Timeout { .. }) => Outcome::AcquireTimeout,
                            Err(pool_core::AcquireError::Unavailable { .. }) => {
                                Outcome::BreakerOpen
                            }
                            Err(e) => Outcome::Other(e.to_string()),
                        }
                    };
                    let outcome = tokio::time::timeout(3 * exclusive_bound, call).await;
                    outcomes.push(outcome.map_err(|_| "exclusive"));
                } else {
                    let call = pool.shared().incr::<i64, _>(key);
                    let outcome = tokio::time::timeout(3 * COMMAND_TIMEOUT, call).await;
                    outcomes.push(outcome.map(command_outcome).map_err(|_| "shared"));
                }
            }
            outcomes
        });
    }
    while let Some(joined) = calls.join_next().await {
        outcomes.extend(joined?);
    }
    // The server stays frozen past every bound, however fast the calls failed.
    let longest = exclusive_bound * 2;
    if frozen_at.elapsed() < longest {
        tokio::time::sleep(longest - frozen_at.elapsed()).await;
    }
    redis.thaw()?;
    let frozen_for = frozen_at.elapsed();
    eprintln!("frozen for {frozen_for:?}; outcomes: {outcomes:?}");
    assert_eq!(outcomes.len(), 2 + 4 * 3);
    for outcome in &outcomes {
        match outcome {
            Ok(Outcome::AcquireTimeout | Outcome::BreakerOpen | Outcome::CommandTimeout) => {}
            Ok(Outcome::Other(e)) => panic!("a call during the freeze failed otherwise: {e}"),
            Err(path) => panic!("a {path} call outlived three times its bound: {outcomes:?}"),
        }
    }
    assert!(
        outcomes.iter().any(|o| matches!(o, Ok(Outcome::CommandTimeout))),
        "some command reached the frozen server: {outcomes:?}"
    );

    // Both paths serve again once the server answers.
    until_ok(Duration::from_secs(10), "an exclusive INCR after the thaw", || {
        exclusive_incr(&pool, key)
    })
    .await?;
    until_ok(Duration::from_secs(10), "a shared INCR after the thaw", || async {
        pool.shared().incr::<i64, _>(key).await.map_err(|e| e.to_string())
    })
    .await?;
    eprintln!("both paths served {:?} after the thaw", frozen_at.elapsed() - frozen_for);

    // Neither connection that missed its bound came back: every connection the pool hands out
    // now is a new one, and the two were closed.
    // (Polled: the engine may still be backing off the connects that failed during the freeze.)
    let after = until_ok(Duration::from_secs(10), "both exclusive connections at once", || async {
        let first = pool.exclusive().await.map_err(|e| e.to_string())?;
        let second = pool.exclusive().await.map_err(|e| e.to_string())?;
        Ok([first, second])
    })
    .await?;
    for conn in &after {
        let id = client_id(conn).await?;
        assert!(!before.contains(&id), "connection {id} missed its bound and was handed out again");
    }
    drop(after);
    let stats = pool.engine().stats();
    assert!(
        stats.connections_closed >= closed_before + 2,
        "the two connections that missed their bound were closed: {stats:?}"
    );
    pool.close().await?;
    Ok(())
}

/// Settings for pools over a Sentinel group or a Cluster: short bounds, fast reconnects.
fn failover_settings() -> PoolSettings {
    let mut settings = PoolSettings::default()
        .pool_size(2)
        .max_connections(4)
        .shared_clients(1)
        .command_timeout(Some(Duration::from_secs(1)))
        .shared_command_timeout(Some(Duration::from_secs(1)))
        .max_reconnect_delay(Duration::from_millis(200));
    settings.pool.connect_timeout = Duration::from_secs(1);
    settings.pool.pool_timeout = Duration::from_secs(2);
    settings
}

/// What the writers did across a failover.
#[derive(Debug, Default)]
struct Writes {
    /// `SET`s answered `OK` (index, through the exclusive path and `WAIT` said how many
    /// replicas had it).
    acknowledged: Vec<(u64, Option<i64>)>,
    /// `SET`s that failed (no acknowledgement: they may or may not have landed).
    failed: u64,
}

/// Writes `key:i` = `i` for i = 0, 1, ... until `stop`: on an exclusive connection followed by
/// `WAIT 1 200` when `exclusive`, else on a shared client.
async fn write_until(
    pool: RedisPool,
    prefix: &'static str,
    exclusive: bool,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Writes {
    let mut writes = Writes::default();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let key = format!("{prefix}:{i}");
        let result: Result<Option<i64>, String> = if exclusive {
            async {
                let conn = pool.exclusive().await.map_err(|e| e.to_string())?;
                conn.set::<(), _, _>(&key, i, None, None, false)
                    .await
                    .map_err(|e| e.to_string())?;
                let wait = CustomCommand::new_static("WAIT", None, true);
                // The reply of `WAIT` after an acknowledged `SET`: only a failed `WAIT` leaves
                // the count unknown.
                Ok(conn.custom::<i64, _>(wait, vec![1, 200]).await.ok())
            }
            .await
        } else {
            pool.shared()
                .set::<(), _, _>(&key, i, None, None, false)
                .await
                .map(|()| None)
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(replicas) => writes.acknowledged.push((i, replicas)),
            Err(_) => {
                writes.failed += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        i += 1;
    }
    writes
}

/// The master of a Sentinel group dies: the pool's writes, on both paths, succeed on the new
/// master within 10 s of the failover completing; every write acknowledged after `WAIT 1`
/// returned 1 is there, and the writes lost (asynchronous replication) are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_pool_follows_a_failover_and_keeps_the_writes_a_replica_had() -> TestResult {
    let mut group = pool_harness::SentinelGroup::start()?;
    let pool = RedisPool::connect("sentinel", &group.url(), failover_settings()).await?;
    pool.warmed(Duration::from_secs(5)).await?;
    let old_master = group.master_port()?;
    assert_eq!(client_port(pool.shared()).await?, old_master, "the pool writes to the master");

    let registry = pool_core::Registry::new();
    registry.register(std::sync::Arc::new(pool.clone()))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exclusive = tokio::spawn(write_until(pool.clone(), "x", true, stop.clone()));
    let shared = tokio::spawn(write_until(pool.clone(), "s", false, stop.clone()));
    // Some writes before the fault.
    until_ok(Duration::from_secs(10), "writes before the failover", || async {
        let n: i64 = pool.shared().dbsize().await.map_err(|e| e.to_string())?;
        if n >= 50 { Ok(()) } else { Err(format!("{n} keys")) }
    })
    .await?;

    group.kill_master()?;
    let new_master = group.wait_for_failover(old_master, Duration::from_secs(30))?;
    let failed_over = Instant::now();
    // Both paths write to the new master within 10 s of the failover completing.
    let probe = "probe:after-failover";
    until_ok(Duration::from_secs(10), "an exclusive write after the failover", || async {
        let conn = pool.exclusive().await.map_err(|e| e.to_string())?;
        conn.set::<(), _, _>(probe, 1, None, None, false).await.map_err(|e| e.to_string())
    })
    .await?;
    let exclusive_after = failed_over.elapsed();
    until_ok(Duration::from_secs(10), "a shared write after the failover", || async {
        pool.shared().set::<(), _, _>(probe, 2, None, None, false).await.map_err(|e| e.to_string())
    })
    .await?;
    let shared_after = failed_over.elapsed();
    eprintln!(
        "failover 127.0.0.1:{old_master} -> 127.0.0.1:{new_master}: exclusive writes served \
         {exclusive_after:?} and shared writes {shared_after:?} after it completed"
    );
    assert_eq!(client_port(pool.shared()).await?, new_master);
    // Let the writers run on the new master a little, then stop them.
    let more = pool.shared().dbsize::<i64>().await? + 20;
    until_ok(Duration::from_secs(10), "writes after the failover", || async {
        let n: i64 = pool.shared().dbsize().await.map_err(|e| e.to_string())?;
        if n >= more { Ok(()) } else { Err(format!("{n} keys")) }
    })
    .await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (exclusive, shared) = (exclusive.await?, shared.await?);

    // What the new master holds of what the pool was told was written.
    let mut lost = 0;
    let mut lost_after_wait = Vec::new();
    let mut replicated = 0;
    for (prefix, writes) in [("x", &exclusive), ("s", &shared)] {
        for &(i, replicas) in &writes.acknowledged {
            let value: Option<u64> = pool.shared().get(format!("{prefix}:{i}")).await?;
            let present = value == Some(i);
            if replicas == Some(1) {
                replicated += 1;
                if !present {
                    lost_after_wait.push(i);
                }
            }
            if !present {
                lost += 1;
            }
        }
    }
    eprintln!(
        "acknowledged writes: {} exclusive ({replicated} confirmed by WAIT 1), {} shared; \
         failed: {} exclusive, {} shared; lost in the failover: {lost}",
        exclusive.acknowledged.len(),
        shared.acknowledged.len(),
        exclusive.failed,
        shared.failed,
    );
    assert!(replicated > 0, "some writes were confirmed by WAIT 1: {exclusive:?}");
    assert!(
        lost_after_wait.is_empty(),
        "writes confirmed by WAIT 1 were lost: {lost_after_wait:?}"
    );

    // The same stats, health and registry view as a single server's pool.
    let health = pool_core::DynPool::health(&pool).await;
    assert!(health.healthy, "{health:?}");
    let stats = pool.stats();
    assert_eq!((stats.shared_clients, stats.shared_connected), (1, 1));
    assert!(stats.engine.connections_closed > 0, "the dead master's connections were replaced");
    assert!(registry.get("sentinel").is_some());
    pool.close().await?;
    Ok(())
}

/// The port of the server behind `client`, as the server sees its own listening socket.
async fn client_port(client: &Client) -> Result<u16, Box<dyn std::error::Error>> {
    let info: String = client.info(Some(pool_redis::fred::types::InfoKind::Server)).await?;
    let port = info
        .lines()
        .find_map(|l| l.strip_prefix("tcp_port:"))
        .ok_or("INFO server has no tcp_port")?;
    Ok(port.trim().parse()?)
}

/// A master of a Redis Cluster dies and its replica takes over its slots: commands on those
/// slots, on both paths, succeed again (polled), and the other masters' keys are still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_pool_follows_a_masters_failover() -> TestResult {
    let mut cluster = pool_harness::RedisCluster::start()?;
    let pool = RedisPool::connect("cluster", &cluster.url(), failover_settings()).await?;
    pool.warmed(Duration::from_secs(5)).await?;
    let keys: Vec<String> = (0..64).map(|i| format!("cluster:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        pool.shared().set::<(), _, _>(key, i, None, None, false).await?;
    }
    // An exclusive connection reaches every master (one socket each) and is reset on return,
    // on every master, and kept: a name set on each master's socket is gone at the next checkout
    // of the same connection.
    let client = || CustomCommand::new_static("CLIENT", None, false);
    let ids = {
        let conn = pool.exclusive().await?;
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(conn.get::<Option<usize>, _>(key).await?, Some(i));
        }
        let mut ids = Vec::new();
        for node in conn.active_connections() {
            let on_node = conn.with_cluster_node(node);
            on_node.custom::<(), _>(client(), vec!["SETNAME", "dirty"]).await?;
            ids.push(on_node.custom::<i64, _>(client(), vec!["ID"]).await?);
        }
        assert_eq!(ids.len(), 3, "one socket per master");
        ids
    };
    until_ok(Duration::from_secs(5), "the reset connection back in the pool", || async {
        let stats = pool.engine().stats();
        if stats.idle == 2 { Ok(()) } else { Err(format!("{} idle", stats.idle)) }
    })
    .await?;
    let closed = pool.engine().stats().closed;
    assert_eq!(closed.total(), 0, "{closed:?}");
    {
        // The most recently returned connection comes first (`pool_use_lifo`).
        let conn = pool.exclusive().await?;
        let mut again = Vec::new();
        for node in conn.active_connections() {
            let on_node = conn.with_cluster_node(node);
            let name: Option<String> = on_node.custom(client(), vec!["GETNAME"]).await?;
            assert_eq!(name, None, "RESET ran on every master");
            again.push(on_node.custom::<i64, _>(client(), vec!["ID"]).await?);
        }
        assert_eq!(again, ids, "the same connection, kept after its reset");
    }

    let killed = cluster.kill_master()?;
    let slot = |key: &str| pool_redis::fred::util::redis_keyslot(key.as_bytes());
    let (moved, stayed): (Vec<&String>, Vec<&String>) =
        keys.iter().partition(|key| killed.served(slot(key)));
    assert!(!moved.is_empty() && !stayed.is_empty(), "64 keys spread over three masters");
    cluster.wait_for_failover(killed.port, Duration::from_secs(30))?;
    let failed_over = Instant::now();
    let key = moved[0].clone();
    until_ok(Duration::from_secs(10), "a shared write on the failed master's slot", || async {
        pool.shared()
            .set::<(), _, _>(&key, "new", None, None, false)
            .await
            .map_err(|e| e.to_string())
    })
    .await?;
    let shared_after = failed_over.elapsed();
    until_ok(Duration::from_secs(10), "an exclusive write on the failed master's slot", || async {
        let conn = pool.exclusive().await.map_err(|e| e.to_string())?;
        conn.set::<(), _, _>(&key, "newer", None, None, false).await.map_err(|e| e.to_string())
    })
    .await?;
    let exclusive_after = failed_over.elapsed();
    eprintln!(
        "master 127.0.0.1:{} failed over: shared writes served {shared_after:?} and exclusive \
         writes {exclusive_after:?} after the cluster was ok again",
        killed.port
    );
    assert_eq!(pool.shared().get::<Option<String>, _>(&key).await?.as_deref(), Some("newer"));
    for key in &stayed {
        assert!(pool.shared().get::<Option<usize>, _>(*key).await?.is_some(), "{key}");
    }
    let health = pool_core::DynPool::health(&pool).await;
    assert!(health.healthy, "{health:?}");
    pool.close().await?;
    Ok(())
}

/// A failover asked of Sentinel (`SENTINEL FAILOVER`) demotes a master that keeps running:
/// the pool's connections to it are not left writing to a replica; both paths write to the
/// new master within 10 s of the failover completing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_pool_leaves_a_demoted_master() -> TestResult {
    let group = pool_harness::SentinelGroup::start()?;
    let pool = RedisPool::connect("demoted", &group.url(), failover_settings()).await?;
    pool.warmed(Duration::from_secs(5)).await?;
    let old_master = group.master_port()?;
    // An exclusive connection idle in the pool and the shared client, both on the old master.
    {
        let conn = pool.exclusive().await?;
        conn.set::<(), _, _>("demoted:before", 1, None, None, false).await?;
    }
    assert_eq!(client_port(pool.shared()).await?, old_master);

    group.failover()?;
    let new_master = group.wait_for_failover(old_master, Duration::from_secs(30))?;
    let failed_over = Instant::now();
    // A write counts once it landed on the new master (the server it went to says so).
    let on_new_master = |client: Client| async move {
        client
            .set::<(), _, _>("demoted:after", 1, None, None, false)
            .await
            .map_err(|e| e.to_string())?;
        match client_port(&client).await.map_err(|e| e.to_string())? {
            port if port == new_master => Ok(()),
            port => Err(format!("wrote to 127.0.0.1:{port}")),
        }
    };
    until_ok(Duration::from_secs(10), "an exclusive write after the failover", || async {
        let conn = pool.exclusive().await.map_err(|e| e.to_string())?;
        on_new_master(conn.client().clone()).await
    })
    .await?;
    let exclusive_after = failed_over.elapsed();
    until_ok(Duration::from_secs(10), "a shared write after the failover", || {
        on_new_master(pool.shared().clone())
    })
    .await?;
    let shared_after = failed_over.elapsed();
    eprintln!(
        "SENTINEL FAILOVER 127.0.0.1:{old_master} -> 127.0.0.1:{new_master}: exclusive writes \
         served {exclusive_after:?} and shared writes {shared_after:?} after it completed"
    );
    assert_eq!(client_port(pool.shared()).await?, new_master);
    // Every exclusive connection the pool hands out now writes to the new master.
    for _ in 0..3 {
        let conn = pool.exclusive().await?;
        assert_eq!(client_port(&conn).await?, new_master);
    }
    pool.close().await?;
    Ok(())
}
