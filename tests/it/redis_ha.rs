//! `pool-redis` when the server misbehaves quietly: a frozen server (`SIGSTOP`) found by the
//! command timeouts on both paths, with the connections that missed their bound never handed
//! out again. Every server is a throwaway one from `pool-harness`.

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
/// every call on either path returns its timeout within its bound, the connections that missed
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
            Ok(Outcome::AcquireTimeout | Outcome::CommandTimeout) => {}
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
