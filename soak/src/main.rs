//! `pool-soak`, the chaos and soak run that `cargo xtask soak [--minutes N]` starts. A throwaway
//! PostgreSQL primary with a streaming replica and a throwaway Redis, the admin server's pools
//! (`main` with its replica, Redis `main` and `cache`) behind loopback fault proxies, a steady
//! mixed load, a schedule of faults spread over the run, and checked invariants at the end,
//! printed as a table and written to `<target>/soak/report.json`.
//!
//! ```text
//! pool-soak [--minutes 1]
//! ```
//!
//! Exit status: 0 when every invariant holds, 1 when one does not or the run could not start.

mod faults;
mod load;

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pool_admin::{AdminConfig, Pools, PostgresConfig, Secret};
use pool_harness::{PgInstance, RedisInstance, SentinelGroup, target_dir};
use pool_postgres::sqlx::{self, Connection as _};
use pool_redis::fred::interfaces::KeysInterface as _;
use pool_redis::{PoolSettings, RedisPool};
use serde_json::json;
use tokio::time::Instant;

use self::faults::{Fault, FaultRun};
use self::load::{Kind, Recorder};
use pool_harness::Proxy;

/// How long the end-of-run checks wait for the pools and the servers to agree.
const SETTLE: Duration = Duration::from_secs(10);

/// The chaos and soak run: the admin server's pools on throwaway PostgreSQL (primary and
/// replica) and Redis under load and a schedule of faults, then checked invariants; writes
/// `target/soak/report.json` and fails when an invariant does not hold.
#[derive(Debug, Parser)]
#[command(name = "pool-soak", version, about)]
struct Cli {
    /// Minutes of load; the fault schedule is spread over them (one round per minute).
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
}

fn main() -> anyhow::Result<ExitCode> {
    run(Cli::parse().minutes)
}

/// Runs the soak for `minutes` of load; fails (non-zero exit) when an invariant does not hold.
fn run(minutes: f64) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(minutes > 0.0 && minutes.is_finite(), "--minutes must be positive");
    let duration = Duration::from_secs_f64(minutes * 60.0);
    eprintln!("soak: starting a throwaway PostgreSQL primary, a streaming replica and Redis ...");
    let primary = PgInstance::start()?;
    primary
        .psql("CREATE TABLE soak_writes (id bigint PRIMARY KEY, at timestamptz DEFAULT now())")?;
    let replica = primary.start_replica()?;
    let redis = RedisInstance::start()?;
    eprintln!("soak: starting a throwaway Redis master and replica under three sentinels ...");
    let sentinel = SentinelGroup::start()?;
    let servers = Servers {
        redis_port: redis.port(),
        primary: Arc::new(primary),
        replica: Arc::new(replica),
        redis: Arc::new(Mutex::new(redis)),
        promoted: Arc::new(AtomicBool::new(false)),
        sentinel: Arc::new(Mutex::new(sentinel)),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let passed = runtime.block_on(soak(&servers, duration))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The throwaway servers, shared with the fault tasks (which call the harness's blocking
/// methods on blocking threads).
#[derive(Debug, Clone)]
struct Servers {
    primary: Arc<PgInstance>,
    replica: Arc<PgInstance>,
    redis: Arc<Mutex<RedisInstance>>,
    redis_port: u16,
    /// Set once the replica was promoted and the primary stopped for good.
    promoted: Arc<AtomicBool>,
    /// A Redis master and replica watched by three sentinels, for the pool over Sentinel.
    sentinel: Arc<Mutex<SentinelGroup>>,
}

/// One checked invariant.
#[derive(Debug)]
struct Invariant {
    name: &'static str,
    passed: bool,
    detail: String,
}

async fn soak(servers: &Servers, duration: Duration) -> anyhow::Result<bool> {
    let pg_proxy = Arc::new(Proxy::start(servers.primary.port()).await?);
    let redis_proxy = Arc::new(Proxy::start(servers.redis_port).await?);
    let config = config(servers, &pg_proxy, &redis_proxy);
    let pools = Arc::new(Pools::start(&config).await.context("starting the pools")?);
    let recorder = Arc::new(Recorder::new());
    eprintln!(
        "soak: load for {:.0}s with faults; primary :{} (proxy :{}), replica :{}, redis :{} (proxy :{})",
        duration.as_secs_f64(),
        servers.primary.port(),
        pg_proxy.port(),
        servers.replica.port(),
        servers.redis_port,
        redis_proxy.port(),
    );
    let sentinel_url =
        servers.sentinel.lock().unwrap_or_else(std::sync::PoisonError::into_inner).url();
    let ha = RedisPool::connect("ha", &sentinel_url, ha_settings())
        .await
        .context("starting the pool over Sentinel")?;
    let mut workers = load::spawn(&pools, &recorder);
    for i in 0..2 {
        workers.spawn(load::redis_ha(ha.clone(), Arc::clone(&recorder), i));
    }
    let schedule = faults::schedule(duration);
    let fault_runs =
        faults::run(&schedule, servers, &pools, &recorder, &pg_proxy, &redis_proxy, duration).await;
    eprintln!("soak: stopping the load ...");
    let stuck = load::stop(&recorder, workers).await;
    let load_end = recorder.now();
    let cluster_state = pools.clusters.get("main").map(|c| format!("{:?}", c.stats().replicas));
    eprintln!("soak: replicas at the end of the load: {}", cluster_state.as_deref().unwrap_or("-"));

    let mut fault_runs = fault_runs;
    for run in &mut fault_runs {
        if let (None, Some(slow)) = (run.effect, run.fault.measured_by_requests()) {
            let n = recorder.hurt_in(run.fault.heal_kinds(), run.start, run.end, slow);
            run.effect = Some(n as u64);
            run.note.push_str(&format!("; {n} requests slowed past {slow:?} or failed"));
        }
    }
    let mut invariants = Vec::new();
    invariants.push(settled_pools(&pools).await);
    invariants.push(no_leak(servers, &pools).await);
    invariants.push(failures_explained(&recorder, &fault_runs, stuck));
    invariants.push(requests_bounded(&recorder));
    invariants.extend(writes_kept(servers, &recorder).await?);
    invariants.push(redis_reads_back(&recorder, &fault_runs));
    invariants.push(ha_writes_kept(&ha, &recorder).await);
    invariants.push(faults_did_something(&fault_runs));
    invariants.push(faults_healed(&fault_runs, &recorder));

    pools.close().await;
    drop(pools);
    let _ = ha.close().await;
    let report = report(&recorder, &fault_runs, &invariants, load_end);
    let dir = target_dir().join("soak");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    print_table(&recorder, &fault_runs, &invariants);
    println!("report: {}", path.display());
    let passed = invariants.iter().all(|i| i.passed);
    println!("soak {}", if passed { "PASSED" } else { "FAILED" });
    Ok(passed)
}

/// How long a replica that failed to connect or answer stays out of rotation in the soak
/// (`postgres.main.replica_ban`; the default is 30 s): short, so that the replica faults' heal
/// time shows how soon the cluster notices a replica is back, not how long the ban is.
pub(crate) const REPLICA_BAN: Duration = Duration::from_secs(5);

/// The admin server's config for the soak: short timeouts, so that a failure shows within
/// seconds, and pools small enough that load makes them wait.
fn config(servers: &Servers, pg_proxy: &Proxy, redis_proxy: &Proxy) -> AdminConfig {
    let mut config = AdminConfig::default();
    config.postgres.clear();
    config.redis.clear();
    let mut pg = PostgresConfig::default();
    pg.url = Secret(format!("postgres://postgres@127.0.0.1:{}/postgres", pg_proxy.port()));
    pg.replicas = vec![Secret(servers.replica.url())];
    // A candidate primary too: promoted, it takes the writes.
    pg.primaries = vec![Secret(servers.replica.url())];
    // A frozen server holds a query no longer than this and a grace (3 s in all).
    pg.statement_timeout = Some(Duration::from_secs(2));
    pg.pool.pool_size = 6;
    pg.pool.max_overflow = 6;
    pg.pool.pool_timeout = load::PG_POOL_TIMEOUT;
    pg.pool.connect_timeout = Duration::from_secs(2);
    // Well above twice the lag probe's 1 s period: the probe measures lag in steps of its
    // period, and a replica is used again only under half of this.
    pg.max_replica_lag = Some(Duration::from_secs(3));
    pg.replica_ban = REPLICA_BAN;
    config.postgres.insert("main".to_owned(), pg);
    let redis_pool = |pool_size, max_connections| {
        let mut settings =
            PoolSettings::default().pool_size(pool_size).max_connections(max_connections);
        settings.pool.pool_timeout = load::REDIS_POOL_TIMEOUT;
        settings.pool.health_check_interval = Some(Duration::from_secs(5));
        settings
    };
    config.redis.insert("main".to_owned(), redis_pool(3, 6));
    config.redis.insert("cache".to_owned(), redis_pool(4, 8));
    config.redis_url = Secret(format!("redis://127.0.0.1:{}", redis_proxy.port()));
    config
}

/// Every pool of the registry: no waiter left and nothing in use once the load stopped.
async fn settled_pools(pools: &Pools) -> Invariant {
    let deadline = Instant::now() + SETTLE;
    loop {
        let busy: Vec<String> = pools
            .registry
            .pools()
            .iter()
            .map(|p| p.stats())
            .filter(|s| s.waiting != 0 || s.in_use != 0)
            .map(|s| format!("{}: {} waiting, {} in use", s.name, s.waiting, s.in_use))
            .collect();
        if busy.is_empty() {
            return Invariant {
                name: "no waiter stuck, in use back to 0",
                passed: true,
                detail: format!("{} pools idle", pools.registry.pools().len()),
            };
        }
        if Instant::now() > deadline {
            return Invariant {
                name: "no waiter stuck, in use back to 0",
                passed: false,
                detail: format!("after {SETTLE:?}: {}", busy.join("; ")),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Server-side connection counts against the pools' own open counts.
#[derive(Debug, PartialEq)]
struct Counts {
    primary: (usize, usize),
    replica: (usize, usize),
    redis: (usize, usize),
}

impl Counts {
    fn agree(&self) -> bool {
        self.primary.0 == self.primary.1
            && self.replica.0 == self.replica.1
            && self.redis.0 == self.redis.1
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "server/pool: primary {}/{}, replica {}/{}, redis {}/{}",
            self.primary.0,
            self.primary.1,
            self.replica.0,
            self.replica.1,
            self.redis.0,
            self.redis.1
        )
    }
}

/// Client backends other than ours and the cluster's lag probe (which keeps one connection of
/// its own to each server, outside the pools).
const PG_POOL_BACKENDS_WHERE: &str = "backend_type = 'client backend' \
     AND pid <> pg_backend_pid() \
     AND query NOT LIKE '/* pool-postgres lag probe */%'";

async fn counts(servers: &Servers, pools: &Pools) -> anyhow::Result<Counts> {
    let cluster = pools.clusters.get("main").context("cluster main")?;
    let primary = servers.primary.clone();
    let replica = servers.replica.clone();
    let redis_port = servers.redis_port;
    let promoted = servers.promoted.load(Relaxed);
    let (pg, rep, redis) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE {PG_POOL_BACKENDS_WHERE}");
        // After the promotion the old primary is stopped for good.
        let pg: usize = if promoted { 0 } else { primary.psql(&sql)?.parse()? };
        let rep: usize = replica.psql(&sql)?.parse()?;
        // Every client but the one asking.
        let list = faults::redis_command(redis_port, &["CLIENT", "LIST"])?;
        let redis = list.lines().filter(|l| !l.trim().is_empty()).count().saturating_sub(1);
        Ok((pg, rep, redis))
    })
    .await??;
    let redis_pools: usize = pools
        .redis
        .iter()
        .flat_map(|r| r.iter())
        .map(|p| {
            let s = p.stats();
            s.engine.open + s.shared_connected
        })
        .sum();
    let replica_open: usize = cluster.replicas().iter().map(|r| r.stats().open).sum();
    let primary_open = cluster.primary().stats().open;
    Ok(if promoted {
        // The promoted replica serves both pools: the writes and, out of the read rotation, the
        // replica pool's connections still open.
        Counts {
            primary: (pg, 0),
            replica: (rep, primary_open + replica_open),
            redis: (redis, redis_pools),
        }
    } else {
        Counts {
            primary: (pg, primary_open),
            replica: (rep, replica_open),
            redis: (redis, redis_pools),
        }
    })
}

/// No connection leaked: the servers count as many connections as the pools say are open.
/// Polled until they agree; if they do not within [`SETTLE`], every idle connection is checked
/// out once (so the pools notice connections the servers closed while they sat idle) and the
/// counts are polled again.
async fn no_leak(servers: &Servers, pools: &Pools) -> Invariant {
    let name = "no leaked connection (server counts = pool open counts)";
    let mut last = String::new();
    for round in 0..2 {
        if round == 1 {
            touch_idle(pools).await;
        }
        let deadline = Instant::now() + SETTLE;
        loop {
            match counts(servers, pools).await {
                Ok(c) if c.agree() => {
                    let how =
                        if round == 0 { "" } else { " after one checkout of each idle connection" };
                    return Invariant { name, passed: true, detail: format!("{c}{how}") };
                }
                Ok(c) => last = c.to_string(),
                Err(e) => last = format!("counting failed: {e:#}"),
            }
            if Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        eprintln!("soak: counts disagree after {SETTLE:?}: {last}");
    }
    Invariant { name, passed: false, detail: last }
}

/// Checks every idle connection out at once and returns it, so pre-ping finds the dead ones.
async fn touch_idle(pools: &Pools) {
    let mut held = Vec::new();
    for cluster in pools.clusters.values() {
        for pool in std::iter::once(cluster.primary().clone()).chain(cluster.replicas()) {
            for _ in 0..pool.stats().idle {
                if let Ok(conn) = pool.acquire_timeout(Duration::from_secs(2)).await {
                    held.push(conn);
                }
            }
        }
    }
    let mut redis_held = Vec::new();
    for pool in pools.redis.iter().flat_map(|r| r.iter()) {
        for _ in 0..pool.stats().available {
            if let Ok(conn) = pool.engine().acquire_timeout(Duration::from_secs(2)).await {
                redis_held.push(conn);
            }
        }
    }
    drop(held);
    drop(redis_held);
}

/// Whether a failure of `f` is explained: an error a fault explains by its type, that started
/// while a fault that explains failures ran (from a request's budget before it, so a request
/// already waiting counts) or within [`faults::GRACE`] after it ended.
fn explained(f: &load::Failure, runs: &[FaultRun]) -> bool {
    f.expected
        && runs.iter().any(|r| {
            r.fault.explains_failures()
                && f.at + f.kind.budget() >= r.start
                && f.at <= r.end + faults::GRACE
        })
}

/// Every failure is an error of the kind a fault explains, during a fault (plus
/// [`faults::GRACE`]); none came outside; no request was still running when the load stopped.
fn failures_explained(
    recorder: &Recorder,
    runs: &[FaultRun],
    stuck: Vec<(Kind, Duration)>,
) -> Invariant {
    let failures = recorder.failures();
    let unexplained: Vec<&load::Failure> =
        failures.iter().filter(|f| !explained(f, runs)).collect();
    let mut detail = format!(
        "{} failed requests, {} unexplained (outside every fault's window and its {} s grace, or \
         an error no fault explains)",
        failures.len(),
        unexplained.len(),
        faults::GRACE.as_secs()
    );
    for (kind, running) in &stuck {
        detail.push_str(&format!(
            "; {} still running {:.1}s after the load stopped",
            kind.name(),
            running.as_secs_f64()
        ));
    }
    for f in unexplained.iter().take(5) {
        detail.push_str(&format!(
            "; {} at {:.1}s after {:.2}s ({}): {}",
            f.kind.name(),
            f.at.as_secs_f64(),
            f.took.as_secs_f64(),
            if f.expected { "outside a fault" } else { "no fault explains it" },
            f.error
        ));
    }
    Invariant {
        name: "failures only during faults, of a kind they explain",
        passed: unexplained.is_empty() && stuck.is_empty(),
        detail,
    }
}

/// Every request, successful or not, within its kind's bound, and every kind of request
/// succeeded at least once (a bound over no request proves nothing).
fn requests_bounded(recorder: &Recorder) -> Invariant {
    let mut bad = Vec::new();
    let mut checked = 0;
    for kind in Kind::ALL {
        let (ok, failed, slowest) = recorder.totals(kind);
        checked += ok + failed;
        if ok == 0 {
            bad.push(format!("no {} succeeded", kind.name()));
        }
        // Replica reads and cancelled acquires are counted, not timed.
        if !matches!(kind, Kind::PgReplicaRead | Kind::CancelledAcquire) && slowest > kind.budget()
        {
            bad.push(format!(
                "a {} took {:.2}s, over its bound of {:.1}s",
                kind.name(),
                slowest.as_secs_f64(),
                kind.budget().as_secs_f64()
            ));
        }
    }
    Invariant {
        name: "every request within its bound",
        passed: bad.is_empty(),
        detail: if bad.is_empty() {
            format!("{checked} requests, the slowest of each kind within its bound")
        } else {
            bad.join("; ")
        },
    }
}

/// What Redis reads back is what was just written: a read that finds nothing is explained only
/// by a Redis restart around it (the server comes back empty); another value by nothing.
fn redis_reads_back(recorder: &Recorder, runs: &[FaultRun]) -> Invariant {
    let (compared, nil) = recorder.redis_reads();
    let restarts: Vec<&FaultRun> = runs.iter().filter(|r| r.fault == Fault::RedisRestart).collect();
    let unexplained = nil
        .iter()
        .filter(|at| {
            !restarts
                .iter()
                .any(|r| **at + faults::GRACE >= r.start && **at <= r.end + faults::GRACE)
        })
        .count();
    let wrong = recorder.failures().iter().filter(|f| f.error.contains("right after SET")).count();
    Invariant {
        name: "redis reads return what was written",
        passed: compared > 0 && unexplained == 0 && wrong == 0,
        detail: format!(
            "{compared} reads compared, {wrong} returned another value, {} found nothing ({unexplained} outside a redis restart)",
            nil.len()
        ),
    }
}

/// The pool over Sentinel: small, with the default bounds (`command_timeout` 5 s) and a
/// `pool_timeout` of 5 s, as the soak's other Redis pools.
fn ha_settings() -> PoolSettings {
    let mut settings = PoolSettings::default().pool_size(2).max_connections(4).shared_clients(1);
    settings.pool.pool_timeout = load::REDIS_POOL_TIMEOUT;
    settings.pool.connect_timeout = Duration::from_secs(2);
    settings
}

/// Every write the pool over Sentinel acknowledged and a replica had (`WAIT 1` said so) is on
/// the master after the failover; those only the old master had may be lost (asynchronous
/// replication): counted and reported, not required.
async fn ha_writes_kept(ha: &RedisPool, recorder: &Recorder) -> Invariant {
    let name = "no redis write confirmed by WAIT 1 lost in the sentinel failover";
    let acked = recorder.ha_acked();
    let mut present = HashSet::new();
    for chunk in acked.chunks(500) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        match ha.shared().mget::<Vec<Option<String>>, _>(keys).await {
            Ok(values) => {
                present.extend(
                    chunk
                        .iter()
                        .zip(values)
                        .filter(|(_, v)| v.is_some())
                        .map(|((k, _), _)| k.clone()),
                );
            }
            Err(e) => {
                return Invariant {
                    name,
                    passed: false,
                    detail: format!("reading the writes back: {e}"),
                };
            }
        }
    }
    let confirmed = acked.iter().filter(|(_, c)| *c).count();
    let lost = acked.iter().filter(|(k, _)| !present.contains(k)).count();
    let lost_confirmed = acked.iter().filter(|(k, c)| *c && !present.contains(k)).count();
    Invariant {
        name,
        passed: confirmed > 0 && lost_confirmed == 0,
        detail: format!(
            "{} acknowledged, {confirmed} confirmed by WAIT 1; {lost} lost in the failover, {lost_confirmed} of them confirmed",
            acked.len()
        ),
    }
}

/// Every fault did what it is there to do (killed, cut, stalled or slowed something): one that
/// did nothing proves nothing.
fn faults_did_something(runs: &[FaultRun]) -> Invariant {
    let idle: Vec<&str> = runs
        .iter()
        .filter(|r| r.error.is_none() && r.effect.unwrap_or(0) == 0)
        .map(|r| r.fault.name())
        .collect();
    Invariant {
        name: "every fault had an effect",
        passed: idle.is_empty() && !runs.is_empty(),
        detail: if idle.is_empty() {
            format!("{} faults, each with a measured effect", runs.len())
        } else {
            format!("no effect measured: {}", idle.join(", "))
        },
    }
}

/// Every acknowledged write is on the primary, and no write of an abandoned transaction is.
async fn writes_kept(servers: &Servers, recorder: &Recorder) -> anyhow::Result<Vec<Invariant>> {
    // After the promotion, the writes are on the promoted replica.
    let url =
        if servers.promoted.load(Relaxed) { servers.replica.url() } else { servers.primary.url() };
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .context("connecting to the primary to read the writes back")?;
    let ids: Vec<(i64,)> =
        sqlx::query_as("SELECT id FROM soak_writes").fetch_all(&mut conn).await?;
    let _ = conn.close().await;
    let present: HashSet<i64> = ids.into_iter().map(|(id,)| id).collect();
    let acked = recorder.acked();
    let lost: Vec<i64> = acked.iter().copied().filter(|id| !present.contains(id)).collect();
    let abandoned = recorder.abandoned();
    let leaked: Vec<i64> = abandoned.iter().copied().filter(|id| present.contains(id)).collect();
    Ok(vec![
        Invariant {
            name: "no acknowledged write lost",
            passed: lost.is_empty() && !acked.is_empty(),
            detail: format!(
                "{} acknowledged, {} rows on the primary, {} lost{}",
                acked.len(),
                present.len(),
                lost.len(),
                if lost.is_empty() {
                    String::new()
                } else {
                    format!(" (e.g. {:?})", &lost[..lost.len().min(5)])
                }
            ),
        },
        Invariant {
            name: "no abandoned transaction committed",
            passed: leaked.is_empty() && !abandoned.is_empty(),
            detail: format!("{} abandoned, {} committed anyway", abandoned.len(), leaked.len()),
        },
    ])
}

/// Every fault healed within its limit: a request of each kind it hurt, started after it
/// ended, succeeded within [`faults::GRACE`] of its end (a replica's faults also wait out the
/// replica's ban).
fn faults_healed(runs: &[FaultRun], recorder: &Recorder) -> Invariant {
    let unhealed: Vec<String> = runs
        .iter()
        .filter_map(|r| match (&r.error, heal_time(r, recorder)) {
            (Some(e), _) => Some(format!("{}: could not inject: {e}", r.fault.name())),
            (None, None) => Some(format!("{}: never healed", r.fault.name())),
            (None, Some(t)) if t > heal_limit(r.fault) => Some(format!(
                "{}: healed after {} ms, over its {} ms",
                r.fault.name(),
                t.as_millis(),
                heal_limit(r.fault).as_millis()
            )),
            (None, Some(_)) => None,
        })
        .collect();
    Invariant {
        name: "every fault healed within its limit",
        passed: unhealed.is_empty(),
        detail: if unhealed.is_empty() {
            format!("{} faults injected, all healed in time", runs.len())
        } else {
            unhealed.join("; ")
        },
    }
}

/// How soon after its end a fault must have healed.
fn heal_limit(fault: Fault) -> Duration {
    match fault {
        Fault::ReplicaStopStart | Fault::ReplayPause => REPLICA_BAN + faults::GRACE,
        // The target: writes within 10 s of the new primary accepting them.
        Fault::Promotion | Fault::SentinelFailover => Duration::from_secs(10),
        _ => faults::GRACE,
    }
}

/// The time from the fault's end until a request of every kind it hurt, started after that end,
/// had succeeded.
fn heal_time(run: &FaultRun, recorder: &Recorder) -> Option<Duration> {
    run.fault
        .heal_kinds()
        .iter()
        .map(|kind| recorder.first_success_after(*kind, run.end).map(|t| t.saturating_sub(run.end)))
        .try_fold(Duration::ZERO, |max, t| t.map(|t| max.max(t)))
}

/// Failed requests between the fault's start and the next fault's start (or the load's end).
fn failed_during(
    run: &FaultRun,
    next: Option<&FaultRun>,
    recorder: &Recorder,
    load_end: Duration,
) -> usize {
    let until = next.map_or(load_end, |n| n.start);
    recorder.failures().iter().filter(|f| f.at >= run.start && f.at < until).count()
}

fn report(
    recorder: &Recorder,
    runs: &[FaultRun],
    invariants: &[Invariant],
    load_end: Duration,
) -> serde_json::Value {
    let first_fault = runs.first().map_or(load_end, |r| r.start);
    let faults: Vec<_> = runs
        .iter()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "fault": r.fault.name(),
                "start_s": r.start.as_secs_f64(),
                "end_s": r.end.as_secs_f64(),
                "requests_failed": failed_during(r, runs.get(i + 1), recorder, load_end),
                "time_to_heal_ms": heal_time(r, recorder).map(|d| d.as_millis()),
                "heals_when": r.fault.heal_kinds().iter().map(|k| k.name()).collect::<Vec<_>>(),
                "note": r.note,
                "effect": r.effect,
                "error": r.error,
            })
        })
        .collect();
    let kinds: Vec<_> = Kind::ALL
        .iter()
        .map(|k| {
            let (ok, failed, max) = recorder.totals(*k);
            json!({
                "kind": k.name(),
                "succeeded": ok,
                "failed": failed,
                "budget_ms": k.budget().as_millis(),
                "slowest_ms": max.as_millis(),
            })
        })
        .collect();
    let failures: Vec<_> = recorder
        .failures()
        .iter()
        .take(200)
        .map(|f| {
            json!({
                "kind": f.kind.name(),
                "at_s": f.at.as_secs_f64(),
                "took_ms": f.took.as_millis(),
                "expected": f.expected,
                "error": f.error,
            })
        })
        .collect();
    json!({
        "load_seconds": load_end.as_secs_f64(),
        "failed_before_first_fault": recorder.failures().iter().filter(|f| f.at < first_fault).count(),
        "faults": faults,
        "requests": kinds,
        "invariants": invariants.iter().map(|i| json!({
            "invariant": i.name, "passed": i.passed, "detail": i.detail,
        })).collect::<Vec<_>>(),
        "failures": failures,
        "breaker_fail_fast": fail_fast(recorder).map(|(n, p50, p99, max)| json!({
            "requests": n,
            "p50_ms": p50.as_secs_f64() * 1e3,
            "p99_ms": p99.as_secs_f64() * 1e3,
            "max_ms": max.as_secs_f64() * 1e3,
        })),
        "passed": invariants.iter().all(|i| i.passed),
    })
}

/// How long the requests the open breaker failed took (acquire and all): how many, the median,
/// the 99th percentile and the slowest.
fn fail_fast(recorder: &Recorder) -> Option<(usize, Duration, Duration, Duration)> {
    let mut took: Vec<Duration> = recorder
        .failures()
        .iter()
        .filter(|f| f.error.contains("is unavailable: circuit breaker open"))
        .map(|f| f.took)
        .collect();
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    (!took.is_empty()).then(|| (took.len(), at(0.5), at(0.99), at(1.0)))
}

fn print_table(recorder: &Recorder, runs: &[FaultRun], invariants: &[Invariant]) {
    let load_end = recorder.now();
    println!();
    println!(
        "{:<28} {:>8} {:>9} {:>10} {:>14}  note",
        "fault", "at (s)", "lasted", "failed", "time to heal"
    );
    for (i, r) in runs.iter().enumerate() {
        let heal = match (&r.error, heal_time(r, recorder)) {
            (Some(_), _) => "not injected".to_owned(),
            (None, Some(d)) => format!("{} ms", d.as_millis()),
            (None, None) => "never".to_owned(),
        };
        println!(
            "{:<28} {:>8.1} {:>8.1}s {:>10} {:>14}  {}",
            r.fault.name(),
            r.start.as_secs_f64(),
            (r.end.saturating_sub(r.start)).as_secs_f64(),
            failed_during(r, runs.get(i + 1), recorder, load_end),
            heal,
            r.error.as_deref().unwrap_or(&r.note),
        );
    }
    println!();
    println!(
        "{:<16} {:>10} {:>8} {:>11} {:>11}",
        "requests", "succeeded", "failed", "slowest", "budget"
    );
    for k in Kind::ALL {
        let (ok, failed, max) = recorder.totals(k);
        // Replica reads and cancelled acquires are counted, not timed.
        let (slowest, budget) = if matches!(k, Kind::PgReplicaRead | Kind::CancelledAcquire) {
            ("-".to_owned(), "-".to_owned())
        } else {
            (format!("{} ms", max.as_millis()), format!("{} ms", k.budget().as_millis()))
        };
        println!("{:<18} {:>10} {:>8} {:>10} {:>10}", k.name(), ok, failed, slowest, budget);
    }
    println!();
    match fail_fast(recorder) {
        Some((n, p50, p99, max)) => println!(
            "breaker fail-fast: {n} requests failed at once by an open breaker: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ),
        None => println!("breaker fail-fast: no request met an open breaker"),
    }
    println!();
    for i in invariants {
        println!("[{}] {}: {}", if i.passed { "PASS" } else { "FAIL" }, i.name, i.detail);
    }
}

impl Fault {
    /// The name in the report.
    fn name(self) -> &'static str {
        match self {
            Fault::TerminateBackends => "pg_terminate_backend",
            Fault::PrimaryRestart => "primary restart",
            Fault::ReplicaStopStart => "replica stop + start",
            Fault::ReplayPause => "replica replay paused",
            Fault::RedisClientKill => "redis CLIENT KILL",
            Fault::RedisRestart => "redis restart",
            Fault::SlowNetwork => "slow network (proxy delay)",
            Fault::DropTraffic => "dropped traffic (proxy cut)",
            Fault::CancelledAcquires => "cancelled-acquire burst",
            Fault::Blackhole => "blackhole (proxy partition)",
            Fault::RedisFreeze => "redis frozen (SIGSTOP)",
            Fault::PrimaryFreeze => "primary frozen (SIGSTOP)",
            Fault::Promotion => "replica promoted",
            Fault::SentinelFailover => "sentinel failover",
        }
    }
}
