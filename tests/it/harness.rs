//! Tests of the harness: throwaway servers start, restart, replicate and leave nothing behind.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use pool_harness::{PgInstance, RedisInstance, free_port, reachable};

/// Polls `condition` every 50 ms until it holds, failing after `secs` seconds.
fn wait_until(secs: u64, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn port_is_closed(port: u16) -> bool {
    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
}

/// Whether `pid` has exited; a zombie counts as exited, since this machine's init may never reap it.
fn process_is_gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name: `pid (comm) S ...`.
    stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z'))
}

#[test]
fn free_ports_are_never_handed_out_twice() {
    let ports: HashSet<u16> = (0..100).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 100);
    assert!(!ports.contains(&0));
}

#[test]
fn postgres_answers_across_restart_and_kill() -> anyhow::Result<()> {
    let pg = PgInstance::start()?;
    assert!(pg.is_running());
    assert!(reachable(&pg.url()));
    pg.psql("create table survives (n int); insert into survives values (42)")?;
    pg.restart()?;
    assert_eq!(pg.psql("select n from survives")?, "42");

    pg.kill()?;
    assert!(!pg.is_running());
    assert!(port_is_closed(pg.port()));
    pg.start_again()?;
    assert_eq!(pg.psql("select n from survives")?, "42");
    Ok(())
}

#[test]
fn postgres_replica_streams_from_primary() -> anyhow::Result<()> {
    let primary = PgInstance::start()?;
    let replica = primary.start_replica()?;
    assert_ne!(replica.port(), primary.port());
    assert_eq!(primary.psql("select pg_is_in_recovery()")?, "f");
    assert_eq!(replica.psql("select pg_is_in_recovery()")?, "t");

    primary.psql("create table replicated (n int); insert into replicated values (7)")?;
    wait_until(30, "the table reaches the replica", || {
        replica.psql("select n from replicated").is_ok_and(|n| n == "7")
    });
    Ok(())
}

#[test]
fn postgres_drop_leaves_nothing_behind() -> anyhow::Result<()> {
    let pg = PgInstance::start()?;
    let (port, pid, dir) =
        (pg.port(), pg.pid().expect("running server has a pid"), pg.dir().to_owned());
    drop(pg);
    assert!(process_is_gone(pid), "postmaster {pid} still running");
    assert!(port_is_closed(port));
    assert!(!dir.exists(), "{} left behind", dir.display());
    Ok(())
}

#[test]
fn redis_answers_across_stop_and_restart() -> anyhow::Result<()> {
    let mut redis = RedisInstance::start()?;
    assert!(redis.is_running() && redis.ping());
    assert!(reachable(&redis.url()));

    redis.stop()?;
    assert!(!redis.is_running() && !redis.ping());
    redis.start_again()?;
    assert!(redis.ping());
    redis.restart()?;
    assert!(redis.is_running() && redis.ping());
    Ok(())
}

#[test]
fn redis_drop_leaves_nothing_behind() -> anyhow::Result<()> {
    let redis = RedisInstance::start()?;
    let (port, pid) = (redis.port(), redis.pid().expect("running server has a pid"));
    drop(redis);
    assert!(process_is_gone(pid), "redis-server {pid} still running");
    assert!(port_is_closed(port));
    Ok(())
}

#[test]
fn detached_servers_outlive_their_instance_until_stopped() -> anyhow::Result<()> {
    let redis = RedisInstance::start()?.detach();
    let pg = PgInstance::start()?.detach();
    assert!(reachable(&redis.url) && reachable(&pg.url));
    redis.stop()?;
    pg.stop()?;
    wait_until(10, "detached servers close their ports", || {
        port_is_closed(redis.port) && port_is_closed(pg.port)
    });
    assert!(!redis.dir.exists() && !pg.dir.exists());
    Ok(())
}

#[test]
fn postgres_is_cleaned_up_when_a_test_panics() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let pg = PgInstance::start().expect("start postgres");
        tx.send((pg.port(), pg.pid().expect("running server has a pid"))).unwrap();
        panic!("deliberate panic with a running PgInstance");
    });
    assert!(test.join().is_err());
    let (port, pid) = rx.recv().unwrap();
    assert!(process_is_gone(pid), "postmaster {pid} still running");
    assert!(port_is_closed(port));
}

/// A process killed outright (Ctrl-C on `cargo test`, SIGKILL, a CI timeout) drops nothing: the
/// next process to start a server stops what it left. Here the owner file is made to name a
/// process that has exited, which is what such a kill leaves behind; servers of live owners and
/// detached ones are left alone.
#[test]
fn servers_left_by_a_killed_process_are_reaped_and_no_others() -> anyhow::Result<()> {
    let mut exited = std::process::Command::new("true").spawn()?;
    let dead_owner = format!("{} 1", exited.id());
    exited.wait()?;
    let harness = pool_harness::target_dir().join("harness");

    let pg = PgInstance::start()?;
    let redis = RedisInstance::start()?;
    let (pg_port, pg_pid, pg_dir) = (pg.port(), pg.pid().expect("a pid"), pg.dir().to_owned());
    let (redis_port, redis_pid) = (redis.port(), redis.pid().expect("a pid"));
    let redis_dir = harness.join(format!("redis-{redis_port}"));
    for dir in [&pg_dir, &redis_dir] {
        std::fs::write(dir.join("owner"), &dead_owner)?;
    }
    // As if this process had been killed: no drop runs.
    std::mem::forget(pg);
    std::mem::forget(redis);
    let live = RedisInstance::start()?;
    let detached = RedisInstance::start()?.detach();

    let reaped = pool_harness::reap_abandoned();
    assert!(reaped.contains(&pg_dir) && reaped.contains(&redis_dir), "reaped {reaped:?}");
    assert!(process_is_gone(pg_pid), "postmaster {pg_pid} still running");
    assert!(process_is_gone(redis_pid), "redis-server {redis_pid} still running");
    assert!(port_is_closed(pg_port) && port_is_closed(redis_port));
    assert!(!pg_dir.exists() && !redis_dir.exists());
    assert!(live.ping(), "a live owner's server is left alone");
    assert!(reachable(&detached.url), "a detached server is left alone");
    detached.stop()?;
    Ok(())
}
