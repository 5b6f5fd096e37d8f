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
/// next process to start a server stops what it left. Here owner files are made to name a
/// process that has exited, and one whose pid was reused, which is what such a kill leaves
/// behind; servers of live owners, detached ones, and processes that only reuse a recorded pid
/// are left alone.
#[test]
fn servers_left_by_a_killed_process_are_reaped_and_no_others() -> anyhow::Result<()> {
    let mut exited = std::process::Command::new("true").spawn()?;
    let exited_pid = exited.id();
    exited.wait()?;
    let harness = pool_harness::target_dir().join("harness");
    // `<pid> <start time> <rest>`: the same namespace and boot, another process.
    let owned_by = |dir: &std::path::Path, pid: u32| -> anyhow::Result<()> {
        let owner = std::fs::read_to_string(dir.join("owner"))?;
        let rest = owner.splitn(3, ' ').nth(2).expect("an owner of four fields").to_owned();
        std::fs::write(dir.join("owner"), format!("{pid} 1 {rest}"))?;
        Ok(())
    };

    let pg = PgInstance::start()?;
    let redis = RedisInstance::start()?;
    let (pg_port, pg_pid, pg_dir) = (pg.port(), pg.pid().expect("a pid"), pg.dir().to_owned());
    let (redis_port, redis_pid) = (redis.port(), redis.pid().expect("a pid"));
    let redis_dir = harness.join(format!("redis-{redis_port}"));
    owned_by(&pg_dir, exited_pid)?;
    // This process's pid with another start time: a later process that reused the pid.
    owned_by(&redis_dir, std::process::id())?;
    // As if this process had been killed: no drop runs.
    std::mem::forget(pg);
    std::mem::forget(redis);

    // Directories whose pid files name an unrelated process (the pid reused since).
    let mut unrelated = std::process::Command::new("sleep").arg("60").spawn()?;
    let fake_pg = harness.join(format!("pg-{}", free_port()));
    let fake_redis = harness.join(format!("redis-{}", free_port()));
    std::fs::create_dir_all(fake_pg.join("data"))?;
    std::fs::create_dir_all(&fake_redis)?;
    std::fs::write(fake_pg.join("data/postmaster.pid"), format!("{}\n", unrelated.id()))?;
    std::fs::write(fake_redis.join("server.pid"), unrelated.id().to_string())?;
    for dir in [&fake_pg, &fake_redis] {
        std::fs::copy(pg_dir.join("owner"), dir.join("owner"))?;
    }

    let live = RedisInstance::start()?;
    let detached = RedisInstance::start()?.detach();

    pool_harness::reap_abandoned();
    // Checked and stopped first: a detached server outlives a failing test.
    let detached_answered = reachable(&detached.url);
    detached.stop()?;
    assert!(detached_answered, "a detached server is left alone");
    assert!(process_is_gone(pg_pid), "postmaster {pg_pid} still running");
    assert!(process_is_gone(redis_pid), "redis-server {redis_pid} still running");
    assert!(port_is_closed(pg_port) && port_is_closed(redis_port));
    for dir in [&pg_dir, &redis_dir, &fake_pg, &fake_redis] {
        assert!(!dir.exists(), "{} left behind", dir.display());
        let name = dir.file_name().unwrap().to_string_lossy();
        let moved = harness.join(format!(".reaping-{name}-{}", std::process::id()));
        assert!(!moved.exists(), "{} left behind", moved.display());
    }
    assert!(unrelated.try_wait()?.is_none(), "a process that only reuses a pid is not killed");
    unrelated.kill()?;
    unrelated.wait()?;
    assert!(live.ping(), "a live owner's server is left alone");
    Ok(())
}

/// The proxy's blackhole passes nothing either way and refuses nothing; what was held back
/// arrives, in order, once it ends, on connections made before and during it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_blackhole_holds_traffic_and_releases_it_in_order() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    // An echo server: the proxy's upstream.
    let echo = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let upstream = echo.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 || sock.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let proxy = pool_harness::Proxy::start(upstream).await?;
    let mut before = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).await?;
    before.write_all(b"a").await?;
    let mut one = [0u8; 1];
    before.read_exact(&mut one).await?;
    assert_eq!(&one, b"a", "the proxy forwards");

    proxy.blackhole(true);
    before.write_all(b"bc").await?;
    // A new connection is accepted, not refused.
    let mut during = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port())).await?;
    during.write_all(b"d").await?;
    // Silence: nothing comes back while it lasts (a leak would arrive well within this).
    let mut two = [0u8; 2];
    let silent =
        tokio::time::timeout(Duration::from_millis(300), before.read_exact(&mut two)).await;
    assert!(silent.is_err(), "a byte crossed the blackhole");
    assert_eq!(proxy.open(), 1, "the new connection has not reached the server");

    proxy.blackhole(false);
    let bound = Duration::from_secs(10);
    tokio::time::timeout(bound, before.read_exact(&mut two)).await??;
    assert_eq!(&two, b"bc", "held bytes arrive in order");
    tokio::time::timeout(bound, during.read_exact(&mut one)).await??;
    assert_eq!(&one, b"d", "the connection made during it reaches the server");
    Ok(())
}
