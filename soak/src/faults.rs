//! The soak's faults: the [`schedule`] spread over the run, and [`run`], which injects each one
//! and records when it started and ended.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use pool_admin::Pools;

use super::Servers;
use super::load::{Kind, Recorder, cancelled_acquires};
use pool_harness::Proxy;

/// A fault the soak injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    /// `pg_terminate_backend` of every pool connection, on the primary and the replica.
    TerminateBackends,
    /// The primary stopped (fast shutdown) and started again.
    PrimaryRestart,
    /// The replica stopped, down for the fault's length, and started again.
    ReplicaStopStart,
    /// `pg_wal_replay_pause()` on the replica for the fault's length, then resumed.
    ReplayPause,
    /// `CLIENT KILL TYPE normal` of every pool connection on Redis.
    RedisClientKill,
    /// Redis killed and started again (empty).
    RedisRestart,
    /// Both proxies delay every chunk by 150 ms each way for the fault's length.
    SlowNetwork,
    /// Both proxies cut every connection and refuse new ones for the fault's length.
    DropTraffic,
    /// Hundreds of acquires on every pool, each cancelled after 0-2 ms.
    CancelledAcquires,
    /// Both proxies let nothing through, refuse nothing and close nothing for the fault's
    /// length: a partition, as after a cloud failover or a frozen VM.
    Blackhole,
    /// Redis stopped (`SIGSTOP`) for longer than every bound of its pools, then continued: its
    /// sockets stay open and nothing answers.
    RedisFreeze,
    /// The PostgreSQL primary and its backends stopped (`SIGSTOP`) for longer than every bound
    /// of its pool, then continued.
    PrimaryFreeze,
    /// The Sentinel group's master killed: the sentinels promote its replica and the pool over
    /// Sentinel must follow. Once, near the end, since it leaves no replica behind.
    SentinelFailover,
    /// The primary stopped for good and the replica promoted (`pg_ctl promote`): the cluster,
    /// which has the replica as a candidate primary, must move its writes there. Once, at the
    /// end of the run, since it leaves no replica behind.
    Promotion,
}

/// The delay of [`Fault::SlowNetwork`].
const SLOW: Duration = Duration::from_millis(150);

impl Fault {
    /// In schedule order. The replica's faults come first: a replica that could not be
    /// reached is banned for the soak's `replica_ban` ([`REPLICA_BAN`](crate::REPLICA_BAN)),
    /// so its reads take that long to come back, while the later faults (primary and Redis) do
    /// not touch replica reads.
    const ALL: [Fault; 12] = [
        Fault::ReplayPause,
        Fault::TerminateBackends,
        Fault::ReplicaStopStart,
        Fault::RedisClientKill,
        Fault::SlowNetwork,
        Fault::CancelledAcquires,
        Fault::RedisRestart,
        Fault::PrimaryRestart,
        Fault::DropTraffic,
        Fault::Blackhole,
        Fault::RedisFreeze,
        Fault::PrimaryFreeze,
    ];

    /// The kinds of request this fault hurts: it has healed once each has succeeded again.
    pub(super) fn heal_kinds(self) -> &'static [Kind] {
        match self {
            Fault::TerminateBackends
            | Fault::PrimaryRestart
            | Fault::PrimaryFreeze
            | Fault::Promotion => &[Kind::PgWrite, Kind::PgTxn],
            Fault::ReplicaStopStart | Fault::ReplayPause => &[Kind::PgReplicaRead],
            Fault::RedisClientKill | Fault::RedisRestart | Fault::RedisFreeze => {
                &[Kind::RedisShared, Kind::RedisBlpop]
            }
            Fault::SlowNetwork | Fault::DropTraffic | Fault::Blackhole => {
                &[Kind::PgWrite, Kind::PgTxn, Kind::RedisShared, Kind::RedisBlpop]
            }
            Fault::CancelledAcquires => &[Kind::PgWrite, Kind::PgRead, Kind::RedisBlpop],
            Fault::SentinelFailover => &[Kind::RedisHa],
        }
    }

    /// Whether the fault's effect is the requests it slowed down or failed, counted when the
    /// run ends (those that started during it and took at least this long, or failed).
    pub(super) fn measured_by_requests(self) -> Option<Duration> {
        match self {
            Fault::SlowNetwork => Some(SLOW),
            Fault::Blackhole | Fault::RedisFreeze | Fault::PrimaryFreeze => Some(HURT),
            _ => None,
        }
    }

    /// Whether requests may fail while this fault lasts and for [`GRACE`] after: a lagging
    /// replica (reads go elsewhere) or a burst of cancelled acquires explains no failure.
    pub(super) fn explains_failures(self) -> bool {
        !matches!(self, Fault::ReplayPause | Fault::CancelledAcquires)
    }

    /// How long the fault lasts, given the time between two faults.
    fn length(self, slot: Duration) -> Duration {
        match self {
            Fault::ReplicaStopStart | Fault::SlowNetwork => (slot / 2).min(Duration::from_secs(20)),
            // Long enough for the replay lag to pass `max_replica_lag` (3 s).
            Fault::ReplayPause => {
                (slot * 2 / 3).clamp(Duration::from_secs(4), Duration::from_secs(20))
            }
            Fault::DropTraffic => (slot * 3 / 10).min(Duration::from_secs(10)),
            // Longer than every bound of the soak's pools (connect_timeout 2 s, pool_timeout
            // 5 s), so callers meet the breaker, not only a slow answer.
            Fault::Blackhole => {
                (slot * 2 / 3).clamp(Duration::from_secs(6), Duration::from_secs(10))
            }
            // Longer than every bound of the pools (command_timeout 5 s for Redis; pool_timeout
            // 5 s and the statements' 3 s for PostgreSQL).
            Fault::RedisFreeze | Fault::PrimaryFreeze => {
                (slot * 2 / 3).clamp(Duration::from_secs(7), Duration::from_secs(10))
            }
            _ => Duration::ZERO,
        }
    }
}

/// One fault of the schedule: when it starts (from the start of the load) and how long it lasts.
#[derive(Debug, Clone, Copy)]
pub(super) struct Planned {
    fault: Fault,
    at: Duration,
    length: Duration,
}

/// Each fault once, in its own slot of the run, with a quiet slot's worth of load at the end
/// for the last one to heal in. A run of N minutes has N rounds of the faults.
pub(super) fn schedule(duration: Duration) -> Vec<Planned> {
    let rounds = (duration.as_secs() / 60).max(1) as usize;
    let n = Fault::ALL.len() * rounds;
    let slot = duration / u32::try_from(n + 1).unwrap_or(u32::MAX);
    let mut planned: Vec<Planned> = Fault::ALL
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, &fault)| Planned {
            fault,
            at: slot * u32::try_from(i).unwrap_or(0) + slot / 2,
            length: fault.length(slot),
        })
        .collect();
    // The two that leave no replica behind, once each, at the end.
    for fault in [Fault::SentinelFailover, Fault::Promotion] {
        planned.push(Planned {
            fault,
            at: slot * u32::try_from(n).unwrap_or(0) + slot / 2,
            length: Duration::ZERO,
        });
    }
    planned
}

/// One injected fault.
#[derive(Debug)]
pub(super) struct FaultRun {
    pub(super) fault: Fault,
    /// When injecting it began, from the start of the load.
    pub(super) start: Duration,
    /// When it was over (the server back, the proxy normal again).
    pub(super) end: Duration,
    /// What it did (connections killed, acquires cancelled...).
    pub(super) note: String,
    /// How much it did, in the unit `note` names: a fault that did nothing (0) proves nothing,
    /// and fails the run. `None` until the run ends for the faults measured from the requests
    /// they slowed or failed ([`Fault::measured_by_requests`]).
    pub(super) effect: Option<u64>,
    /// Why it could not be injected.
    pub(super) error: Option<String>,
}

/// Injects the schedule's faults in turn, then lets the load run to `duration`.
pub(super) async fn run(
    schedule: &[Planned],
    servers: &Servers,
    pools: &Pools,
    recorder: &Recorder,
    pg_proxy: &Arc<Proxy>,
    redis_proxy: &Arc<Proxy>,
    duration: Duration,
) -> Vec<FaultRun> {
    let mut runs: Vec<FaultRun> = Vec::new();
    for planned in schedule {
        // At its planned time, and never within the grace after the last fault's end: its heal
        // time is measured then, and another fault would be measured with it.
        let quiet = runs.last().map_or(Duration::ZERO, |last| last.end + GRACE);
        let at = planned.at.max(quiet);
        let now = recorder.now();
        if at > now {
            tokio::time::sleep(at - now).await;
        }
        ready(planned.fault, pools, recorder).await;
        let start = recorder.now();
        eprintln!("soak: {:>6.1}s {:?}", start.as_secs_f64(), planned.fault);
        let result = inject(planned, servers, pools, recorder, pg_proxy, redis_proxy).await;
        let end = recorder.now();
        let (note, effect, error) = match result {
            Ok((note, effect)) => (note, effect, None),
            Err(e) => (String::new(), Some(0), Some(format!("{e:#}"))),
        };
        runs.push(FaultRun { fault: planned.fault, start, end, note, effect, error });
    }
    // The load runs to `duration`, and for at least twice the grace after the last fault (which
    // may end past it), so the last fault has the time to heal that the others have.
    let now = recorder.now();
    let until = duration.max(now + 2 * GRACE);
    tokio::time::sleep(until - now).await;
    runs
}

/// How long after a fault's end a failure it caused is still explained, and within which the
/// pools must serve again: the target for a server that answers again.
pub(super) const GRACE: Duration = Duration::from_secs(5);

/// The slowest a request may be and still be untouched by a partition or a frozen server.
pub(super) const HURT: Duration = Duration::from_secs(1);

/// Connections a pool lost to a fault: closed broken, failing a check or a reset, and connects
/// that failed.
fn hurt(stats: &pool_postgres::pool_core::PoolStats) -> u64 {
    use pool_postgres::pool_core::CloseReason::{Broken, FailedCheck, FailedReset};
    stats.closed.get(Broken)
        + stats.closed.get(FailedCheck)
        + stats.closed.get(FailedReset)
        + stats.connect_errors
}

fn primary_hurt(pools: &Pools) -> u64 {
    hurt(&pools.clusters["main"].primary().stats())
}

fn replicas_hurt(pools: &Pools) -> u64 {
    pools.clusters["main"].replicas().iter().map(|r| hurt(&r.stats())).sum()
}

fn redis_hurt(pools: &Pools) -> u64 {
    pools.redis.iter().flat_map(|r| r.iter()).map(|p| hurt(&p.stats().engine)).sum()
}

/// Waits (up to `replica_ban` and [`GRACE`]) until the fault can do what it is for: a replica
/// fault needs the replica in the read rotation, serving reads, where an earlier fault
/// (terminated backends, a lag) may have taken it out for a while; out of rotation, stopping or
/// pausing it would touch nothing. A fault still not ready then runs anyway, and its effect
/// says what it did.
async fn ready(fault: Fault, pools: &Pools, recorder: &Recorder) {
    if !matches!(fault, Fault::ReplicaStopStart | Fault::ReplayPause) {
        return;
    }
    let until = tokio::time::Instant::now() + crate::REPLICA_BAN + GRACE;
    let serving = || {
        let now = recorder.now();
        let in_rotation = pools.clusters["main"]
            .stats()
            .replicas
            .iter()
            .all(|r| !r.banned && !r.lagging && !r.promoted);
        // A read the replica served that started within the last 200 ms.
        let recent = now.saturating_sub(Duration::from_millis(200));
        in_rotation && recorder.first_success_after(Kind::PgReplicaRead, recent).is_some()
    };
    while !serving() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How much `measure` grew from `before`, waiting up to [`GRACE`] for it to grow: the pools
/// notice a restart as their connections are next used.
async fn grew(before: u64, measure: impl Fn() -> u64) -> u64 {
    let until = tokio::time::Instant::now() + GRACE;
    loop {
        let now = measure().saturating_sub(before);
        if now > 0 || tokio::time::Instant::now() >= until {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Injects the fault; returns what it did, and how much (`None`: measured from the requests
/// when the run ends, for the faults that only slow requests down or make them fail).
async fn inject(
    planned: &Planned,
    servers: &Servers,
    pools: &Pools,
    recorder: &Recorder,
    pg_proxy: &Proxy,
    redis_proxy: &Proxy,
) -> anyhow::Result<(String, Option<u64>)> {
    let length = planned.length;
    let primary = Arc::clone(&servers.primary);
    let replica = Arc::clone(&servers.replica);
    match planned.fault {
        Fault::TerminateBackends => {
            // The pools' connections only: the lag probe's own connection is spared, since a
            // failed probe query bans the replica for `REPLICA_BAN` (see the report's notes).
            let sql = format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {}",
                super::PG_POOL_BACKENDS_WHERE
            );
            let sql2 = sql.clone();
            let (p, r) = blocking(move || Ok((primary.psql(&sql)?, replica.psql(&sql2)?))).await?;
            let n = p.parse::<u64>().unwrap_or(0) + r.parse::<u64>().unwrap_or(0);
            Ok((format!("{p} primary and {r} replica backends terminated"), Some(n)))
        }
        Fault::PrimaryRestart => {
            let before = primary_hurt(pools);
            blocking(move || primary.restart()).await?;
            let n = grew(before, || primary_hurt(pools)).await;
            Ok((format!("fast shutdown, started again; {n} primary connections lost"), Some(n)))
        }
        Fault::ReplicaStopStart => {
            let before = replicas_hurt(pools);
            let bans =
                || pools.clusters["main"].stats().replicas.iter().map(|r| r.bans).sum::<u64>();
            let bans_before = bans();
            let r = Arc::clone(&replica);
            blocking(move || r.stop()).await?;
            tokio::time::sleep(length).await;
            blocking(move || replica.start_again()).await?;
            let lost = replicas_hurt(pools).saturating_sub(before);
            let banned = bans().saturating_sub(bans_before);
            Ok((
                format!(
                    "down {:.1}s; {lost} replica connections lost or refused, {banned} bans (replica_ban {} s)",
                    length.as_secs_f64(),
                    crate::REPLICA_BAN.as_secs()
                ),
                Some(lost + banned),
            ))
        }
        Fault::ReplayPause => {
            let r = Arc::clone(&replica);
            blocking(move || r.psql("SELECT pg_wal_replay_pause()")).await?;
            let cluster = &pools.clusters["main"];
            let until = tokio::time::Instant::now() + length;
            let mut lagging = false;
            while tokio::time::Instant::now() < until {
                lagging |= cluster.stats().replicas.iter().any(|r| r.lagging);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            blocking(move || replica.psql("SELECT pg_wal_replay_resume()")).await?;
            Ok((
                format!(
                    "paused {:.1}s, replica {}skipped as lagging",
                    length.as_secs_f64(),
                    if lagging { "" } else { "never " }
                ),
                Some(u64::from(lagging)),
            ))
        }
        Fault::RedisClientKill => {
            let port = servers.redis_port;
            let killed = blocking(move || {
                redis_command(port, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            })
            .await?;
            Ok((format!("{killed} connections killed"), Some(killed.parse().unwrap_or(0))))
        }
        Fault::RedisRestart => {
            let before = redis_hurt(pools);
            let redis = Arc::clone(&servers.redis);
            blocking(move || {
                redis.lock().unwrap_or_else(std::sync::PoisonError::into_inner).restart()
            })
            .await?;
            let n = grew(before, || redis_hurt(pools)).await;
            Ok((format!("killed, started again (empty); {n} exclusive connections lost"), Some(n)))
        }
        Fault::SlowNetwork => {
            pg_proxy.set_delay(SLOW);
            redis_proxy.set_delay(SLOW);
            tokio::time::sleep(length).await;
            pg_proxy.set_delay(Duration::ZERO);
            redis_proxy.set_delay(Duration::ZERO);
            Ok((
                format!("+{} ms each way for {:.1}s", SLOW.as_millis(), length.as_secs_f64()),
                None,
            ))
        }
        Fault::DropTraffic => {
            let open = pg_proxy.open() + redis_proxy.open();
            pg_proxy.drop_traffic(true);
            redis_proxy.drop_traffic(true);
            tokio::time::sleep(length).await;
            pg_proxy.drop_traffic(false);
            redis_proxy.drop_traffic(false);
            Ok((
                format!(
                    "{open} connections cut, new ones refused for {:.1}s",
                    length.as_secs_f64()
                ),
                Some(open as u64),
            ))
        }
        Fault::Blackhole => {
            pg_proxy.blackhole(true);
            redis_proxy.blackhole(true);
            tokio::time::sleep(length).await;
            pg_proxy.blackhole(false);
            redis_proxy.blackhole(false);
            Ok((format!("nothing passed for {:.1}s", length.as_secs_f64()), None))
        }
        Fault::PrimaryFreeze => {
            let p = Arc::clone(&primary);
            blocking(move || p.freeze()).await?;
            tokio::time::sleep(length).await;
            blocking(move || primary.thaw()).await?;
            Ok((format!("stopped (SIGSTOP) for {:.1}s", length.as_secs_f64()), None))
        }
        Fault::SentinelFailover => {
            let group = Arc::clone(&servers.sentinel);
            let (old, new, took) = blocking(move || {
                let mut group = group.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let old = group.master_port()?;
                group.kill_master()?;
                let killed = std::time::Instant::now();
                let new = group.wait_for_failover(old, Duration::from_secs(30))?;
                Ok((old, new, killed.elapsed()))
            })
            .await?;
            Ok((
                format!(
                    "master :{old} killed, the sentinels made :{new} master {:.1}s later",
                    took.as_secs_f64()
                ),
                Some(u64::from(new != old)),
            ))
        }
        Fault::Promotion => {
            // A fast shutdown sends the standby all the WAL first: no acknowledged write is lost.
            blocking(move || primary.stop()).await?;
            let stopped = recorder.now();
            blocking(move || replica.promote()).await?;
            let promoted = recorder.now();
            servers.promoted.store(true, std::sync::atomic::Ordering::Relaxed);
            let lost = grew(0, || primary_hurt(pools)).await;
            Ok((
                format!(
                    "primary stopped, replica promoted {:.1}s later; {lost} primary connections lost",
                    (promoted - stopped).as_secs_f64()
                ),
                Some(lost),
            ))
        }
        Fault::RedisFreeze => {
            let redis = Arc::clone(&servers.redis);
            let frozen = |r: &std::sync::Mutex<pool_harness::RedisInstance>, freeze: bool| {
                let r = r.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if freeze { r.freeze() } else { r.thaw() }
            };
            let r = Arc::clone(&redis);
            blocking(move || frozen(&r, true)).await?;
            tokio::time::sleep(length).await;
            blocking(move || frozen(&redis, false)).await?;
            Ok((format!("stopped (SIGSTOP) for {:.1}s", length.as_secs_f64()), None))
        }
        Fault::CancelledAcquires => {
            let (cancelled, finished) = cancelled_acquires(pools, recorder, 400).await;
            Ok((
                format!("{cancelled} acquires cancelled ({finished} finished in time)"),
                Some(cancelled as u64),
            ))
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.context("fault task panicked")?
}

/// Sends one command to the Redis server on `port` directly (not through the proxy) and returns
/// its reply as text: a status, an integer or a bulk string.
pub(super) fn redis_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to redis on port {port}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end();
    match line.split_at_checked(1) {
        Some(("+" | ":", rest)) => Ok(rest.to_owned()),
        Some(("-", rest)) => bail!("redis {}: {rest}", args.join(" ")),
        Some(("$", len)) => {
            let len: usize = len.parse().context("bulk length")?;
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            Ok(String::from_utf8(body)?)
        }
        _ => bail!("redis {}: unexpected reply {line:?}", args.join(" ")),
    }
}
