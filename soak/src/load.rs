//! The soak's steady mixed load ([`spawn`]) and the [`Recorder`] of every request's outcome:
//! successes by time, failures with their error and duration, and the writes acknowledged.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pool_admin::Pools;
use pool_postgres::{SessionError, sqlx};
use pool_redis::RedisPool;
use pool_redis::fred::error::{Error as RedisError, ErrorKind};
use pool_redis::fred::interfaces::{ClientLike as _, KeysInterface as _, ListInterface as _};
use pool_redis::fred::types::CustomCommand;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// `pool_timeout` of the PostgreSQL pools.
pub(super) const PG_POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// `pool_timeout` of the Redis pools.
pub(super) const REDIS_POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a read waits for a replica before it goes to the primary (`PgCluster`'s default).
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);
/// Redis `command_timeout` (`PoolSettings`' default, which the admin config keeps).
const REDIS_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// What one statement may take on top of the pool's bounds: its client-side bound, the
/// soak's `statement_timeout` (2 s) and its grace (1 s), which a frozen server meets.
const STATEMENT: Duration = Duration::from_secs(3);
/// Slack on every budget.
const MARGIN: Duration = Duration::from_secs(1);

/// A kind of request of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// `session_read_only` and one `SELECT`.
    PgRead,
    /// A read that a replica served (a success-only kind, for the replica faults' heal time).
    PgReplicaRead,
    /// `session` and one `INSERT` of a unique id.
    PgWrite,
    /// `session`, `BEGIN`, two `INSERT`s, `COMMIT` (or, one time in ten, walking away).
    PgTxn,
    /// `SET` then `GET` on a shared client of Redis `main` or `cache`.
    RedisShared,
    /// An exclusive connection and `BLPOP` with a 100 ms timeout.
    RedisBlpop,
    /// Acquires given 0-2 ms before they are cancelled (counted, never failures).
    CancelledAcquire,
    /// An exclusive connection of the pool over Sentinel, `SET` of a unique key, then `WAIT 1`.
    RedisHa,
}

impl Kind {
    pub(super) const ALL: [Kind; 8] = [
        Kind::PgRead,
        Kind::PgReplicaRead,
        Kind::PgWrite,
        Kind::PgTxn,
        Kind::RedisShared,
        Kind::RedisBlpop,
        Kind::CancelledAcquire,
        Kind::RedisHa,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::PgRead => "pg read",
            Kind::PgReplicaRead => "pg replica read",
            Kind::PgWrite => "pg write",
            Kind::PgTxn => "pg transaction",
            Kind::RedisShared => "redis set+get",
            Kind::RedisBlpop => "redis blpop",
            Kind::CancelledAcquire => "cancelled acquire",
            Kind::RedisHa => "redis sentinel set",
        }
    }

    /// The longest a request of this kind may take by the pools' contracts, plus slack.
    pub(super) fn budget(self) -> Duration {
        match self {
            Kind::PgRead | Kind::PgReplicaRead => {
                REPLICA_TIMEOUT + PG_POOL_TIMEOUT + STATEMENT + MARGIN
            }
            Kind::PgWrite => PG_POOL_TIMEOUT + STATEMENT + MARGIN,
            Kind::PgTxn => PG_POOL_TIMEOUT + 3 * STATEMENT + MARGIN,
            Kind::RedisShared => 2 * REDIS_COMMAND_TIMEOUT + MARGIN,
            Kind::RedisBlpop => REDIS_POOL_TIMEOUT + REDIS_COMMAND_TIMEOUT + MARGIN,
            Kind::CancelledAcquire => Duration::from_millis(2) + MARGIN,
            // The checkout, the `SET` and the `WAIT` (its own 100 ms, under the command bound).
            Kind::RedisHa => REDIS_POOL_TIMEOUT + 2 * REDIS_COMMAND_TIMEOUT + MARGIN,
        }
    }
}

/// One failed request.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) kind: Kind,
    /// When it started, from the start of the load.
    pub(super) at: Duration,
    pub(super) took: Duration,
    pub(super) expected: bool,
    pub(super) error: String,
}

/// Why a request failed, and whether the fault schedule explains it.
#[derive(Debug)]
pub(super) struct ReqError {
    expected: bool,
    message: String,
}

/// Every request's outcome.
#[derive(Debug)]
pub(super) struct Recorder {
    start: Instant,
    stop: AtomicBool,
    next_id: AtomicI64,
    next_request: AtomicU64,
    /// Every success of each kind: when it started and when it ended, from the start.
    successes: Mutex<HashMap<Kind, Vec<(Duration, Duration)>>>,
    slowest: Mutex<HashMap<Kind, Duration>>,
    failures: Mutex<Vec<Failure>>,
    acked: Mutex<Vec<i64>>,
    abandoned: Mutex<Vec<i64>>,
    in_flight: Mutex<HashMap<u64, (Kind, Instant)>>,
    /// Redis reads compared with the value just written: how many, and when each read that
    /// found nothing started (only a restart or a failover explains one).
    redis_compared: AtomicU64,
    redis_nil: Mutex<Vec<Duration>>,
    /// Keys the Sentinel pool's `SET` acknowledged, and whether `WAIT 1` then said a replica
    /// had it.
    ha_acked: Mutex<Vec<(String, bool)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Recorder {
    pub(super) fn new() -> Recorder {
        Recorder {
            start: Instant::now(),
            stop: AtomicBool::new(false),
            next_id: AtomicI64::new(1),
            next_request: AtomicU64::new(0),
            successes: Mutex::default(),
            slowest: Mutex::default(),
            failures: Mutex::default(),
            acked: Mutex::default(),
            abandoned: Mutex::default(),
            in_flight: Mutex::default(),
            redis_compared: AtomicU64::new(0),
            redis_nil: Mutex::default(),
            ha_acked: Mutex::default(),
        }
    }

    /// Time since the load started.
    pub(super) fn now(&self) -> Duration {
        self.start.elapsed()
    }

    pub(super) fn failures(&self) -> Vec<Failure> {
        lock(&self.failures).clone()
    }

    pub(super) fn acked(&self) -> Vec<i64> {
        lock(&self.acked).clone()
    }

    pub(super) fn abandoned(&self) -> Vec<i64> {
        lock(&self.abandoned).clone()
    }

    /// When the first success of `kind` that also started after `after` ended.
    pub(super) fn first_success_after(&self, kind: Kind, after: Duration) -> Option<Duration> {
        let successes = lock(&self.successes);
        successes.get(&kind)?.iter().filter(|(start, _)| *start > after).map(|(_, end)| *end).min()
    }

    /// Requests of `kinds` that started in `from..to` and failed or took at least `slow`.
    pub(super) fn hurt_in(
        &self,
        kinds: &[Kind],
        from: Duration,
        to: Duration,
        slow: Duration,
    ) -> usize {
        let within = |at: Duration| at >= from && at < to;
        let slow_ok: usize = lock(&self.successes)
            .iter()
            .filter(|(kind, _)| kinds.contains(kind))
            .flat_map(|(_, v)| v.iter())
            .filter(|(start, end)| within(*start) && end.saturating_sub(*start) >= slow)
            .count();
        let failed =
            lock(&self.failures).iter().filter(|f| kinds.contains(&f.kind) && within(f.at)).count();
        slow_ok + failed
    }

    /// The Sentinel pool's acknowledged keys, each with whether a replica had it (`WAIT 1`).
    pub(super) fn ha_acked(&self) -> Vec<(String, bool)> {
        lock(&self.ha_acked).clone()
    }

    /// Redis reads compared with the value written, and when those that found nothing started.
    pub(super) fn redis_reads(&self) -> (u64, Vec<Duration>) {
        (self.redis_compared.load(Relaxed), lock(&self.redis_nil).clone())
    }

    /// Successes, failures and the slowest request of `kind`.
    pub(super) fn totals(&self, kind: Kind) -> (usize, usize, Duration) {
        let ok = lock(&self.successes).get(&kind).map_or(0, Vec::len);
        let failed = lock(&self.failures).iter().filter(|f| f.kind == kind).count();
        let slowest = lock(&self.slowest).get(&kind).copied().unwrap_or_default();
        (ok, failed, slowest)
    }

    /// Records a success of `kind` that started at `start` (from the start of the load) and
    /// ends now.
    pub(super) fn success(&self, kind: Kind, start: Duration) {
        let now = self.now();
        lock(&self.successes).entry(kind).or_default().push((start, now));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    fn id(&self) -> i64 {
        self.next_id.fetch_add(1, Relaxed)
    }

    /// Runs one request of `kind`, recording its outcome and duration.
    async fn request<T>(
        &self,
        kind: Kind,
        request: impl Future<Output = Result<T, ReqError>>,
    ) -> Option<T> {
        let n = self.next_request.fetch_add(1, Relaxed);
        let started = Instant::now();
        lock(&self.in_flight).insert(n, (kind, started));
        let result = request.await;
        lock(&self.in_flight).remove(&n);
        let took = started.elapsed();
        {
            let mut slowest = lock(&self.slowest);
            let max = slowest.entry(kind).or_default();
            *max = (*max).max(took);
        }
        match result {
            Ok(value) => {
                self.success(kind, started.duration_since(self.start));
                Some(value)
            }
            Err(e) => {
                lock(&self.failures).push(Failure {
                    kind,
                    at: started.duration_since(self.start),
                    took,
                    expected: e.expected,
                    error: e.message,
                });
                None
            }
        }
    }
}

/// Starts the load's workers; [`stop`] ends them.
pub(super) fn spawn(pools: &Arc<Pools>, recorder: &Arc<Recorder>) -> JoinSet<()> {
    let mut workers = JoinSet::new();
    let each =
        |workers: &mut JoinSet<()>, n: usize, f: fn(Arc<Pools>, Arc<Recorder>, usize) -> _| {
            for i in 0..n {
                workers.spawn(f(Arc::clone(pools), Arc::clone(recorder), i));
            }
        };
    each(&mut workers, 8, |p, r, i| Box::pin(pg_reader(p, r, i)) as Worker);
    each(&mut workers, 6, |p, r, i| Box::pin(pg_writer(p, r, i)) as Worker);
    each(&mut workers, 3, |p, r, i| Box::pin(pg_txn(p, r, i)) as Worker);
    each(&mut workers, 6, |p, r, i| Box::pin(redis_shared(p, r, i)) as Worker);
    each(&mut workers, 4, |p, r, i| Box::pin(redis_blpop(p, r, i)) as Worker);
    workers
}

type Worker = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Stops the load and waits for the requests in flight, up to the longest budget; returns the
/// requests still running then (stuck), which are aborted.
pub(super) async fn stop(recorder: &Recorder, mut workers: JoinSet<()>) -> Vec<(Kind, Duration)> {
    recorder.stop.store(true, Relaxed);
    let longest = Kind::ALL.iter().map(|k| k.budget()).max().unwrap_or_default();
    let joined =
        tokio::time::timeout(longest, async { while workers.join_next().await.is_some() {} }).await;
    if joined.is_ok() {
        return Vec::new();
    }
    let stuck = lock(&recorder.in_flight).values().map(|(k, t)| (*k, t.elapsed())).collect();
    workers.abort_all();
    while workers.join_next().await.is_some() {}
    stuck
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(2 + fastrand::u64(..8))).await;
}

async fn pg_reader(pools: Arc<Pools>, rec: Arc<Recorder>, _worker: usize) {
    let cluster = &pools.clusters["main"];
    while !rec.stopping() {
        let start = rec.now();
        let replica = rec
            .request(Kind::PgRead, async {
                let mut conn = cluster.session_read_only().await.map_err(session_error)?;
                let (replica, _max): (bool, Option<i64>) =
                    sqlx::query_as("SELECT pg_is_in_recovery(), (SELECT max(id) FROM soak_writes)")
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(sql_error)?;
                Ok(replica)
            })
            .await;
        if replica == Some(true) {
            rec.success(Kind::PgReplicaRead, start);
        }
        pause().await;
    }
}

async fn pg_writer(pools: Arc<Pools>, rec: Arc<Recorder>, _worker: usize) {
    let cluster = &pools.clusters["main"];
    while !rec.stopping() {
        let id = rec.id();
        let written = rec
            .request(Kind::PgWrite, async {
                let mut conn = cluster.session().await.map_err(session_error)?;
                sqlx::query("INSERT INTO soak_writes (id) VALUES ($1)")
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                Ok(())
            })
            .await;
        if written.is_some() {
            lock(&rec.acked).push(id);
        }
        pause().await;
    }
}

async fn pg_txn(pools: Arc<Pools>, rec: Arc<Recorder>, _worker: usize) {
    let cluster = &pools.clusters["main"];
    let mut step = 0u64;
    while !rec.stopping() {
        step += 1;
        let ids = [rec.id(), rec.id()];
        // One transaction in ten is abandoned after its inserts: the pool must roll it back.
        let abandon = step.is_multiple_of(10);
        let done = rec
            .request(Kind::PgTxn, async {
                let mut conn = cluster.session().await.map_err(session_error)?;
                sqlx::query("BEGIN").execute(&mut *conn).await.map_err(sql_error)?;
                for id in ids {
                    sqlx::query("INSERT INTO soak_writes (id) VALUES ($1)")
                        .bind(id)
                        .execute(&mut *conn)
                        .await
                        .map_err(sql_error)?;
                }
                if !abandon {
                    sqlx::query("COMMIT").execute(&mut *conn).await.map_err(sql_error)?;
                }
                Ok(())
            })
            .await;
        if done.is_some() {
            if abandon {
                lock(&rec.abandoned).extend(ids);
            } else {
                lock(&rec.acked).extend(ids);
            }
        }
        pause().await;
    }
}

async fn redis_shared(pools: Arc<Pools>, rec: Arc<Recorder>, worker: usize) {
    let Some(redis) = &pools.redis else { return };
    let pool =
        redis.get(if worker.is_multiple_of(2) { "main" } else { "cache" }).expect("configured");
    let mut step = 0u64;
    while !rec.stopping() {
        step += 1;
        let key = format!("soak:{worker}:{}", step % 64);
        let value = format!("{step}");
        rec.request(Kind::RedisShared, async {
            let client = pool.shared();
            let () =
                client.set(&key, value.as_str(), None, None, false).await.map_err(redis_error)?;
            let got: Option<String> = client.get(&key).await.map_err(redis_error)?;
            rec.redis_compared.fetch_add(1, Relaxed);
            // What was written reads back. A restart that empties Redis between the two
            // commands explains nothing read, which the end of the run checks against the
            // restarts' times; a different value nothing explains.
            match got {
                Some(v) if v == value => Ok(()),
                Some(v) => Err(ReqError {
                    expected: false,
                    message: format!("GET {key} returned {v:?} right after SET {value:?}"),
                }),
                None => {
                    lock(&rec.redis_nil).push(rec.now());
                    Ok(())
                }
            }
        })
        .await;
        if step.is_multiple_of(4) {
            let list = format!("soak:list:{}", step % 4);
            let _: Result<i64, _> = pool.shared().lpush(&list, step).await;
        }
        pause().await;
    }
}

async fn redis_blpop(pools: Arc<Pools>, rec: Arc<Recorder>, worker: usize) {
    let Some(redis) = &pools.redis else { return };
    let pool =
        redis.get(if worker.is_multiple_of(2) { "main" } else { "cache" }).expect("configured");
    let mut step = 0u64;
    while !rec.stopping() {
        step += 1;
        let list = format!("soak:list:{}", step % 4);
        rec.request(Kind::RedisBlpop, async {
            let conn = pool.exclusive().await.map_err(|e| ReqError {
                expected: e.is_timeout() || e.is_unavailable(),
                message: format!("exclusive: {e}"),
            })?;
            let popped = Instant::now();
            match conn.blpop::<Option<(String, i64)>, _>(&list, 0.1).await {
                Ok(_) => Ok(()),
                // fred reports BLPOP's nil reply (nothing pushed within its 100 ms) as a
                // timeout; only one that took as long as `command_timeout` is fred's own.
                Err(e)
                    if *e.kind() == ErrorKind::Timeout
                        && popped.elapsed() < REDIS_COMMAND_TIMEOUT / 2 =>
                {
                    Ok(())
                }
                Err(e) => Err(redis_error(e)),
            }
        })
        .await;
        pause().await;
    }
}

/// Writes through the pool over Sentinel: a unique key on an exclusive connection, then `WAIT 1
/// 100`, whose answer says whether a replica had the write (it survives a failover) or not
/// (asynchronous replication may lose it).
pub(super) async fn redis_ha(pool: RedisPool, rec: Arc<Recorder>, worker: usize) {
    let mut step = 0u64;
    while !rec.stopping() {
        step += 1;
        let key = format!("soak:ha:{worker}:{step}");
        let acked = rec
            .request(Kind::RedisHa, async {
                let conn = pool.exclusive().await.map_err(|e| ReqError {
                    expected: e.is_timeout() || e.is_unavailable(),
                    message: format!("exclusive: {e}"),
                })?;
                conn.set::<(), _, _>(&key, step, None, None, false).await.map_err(redis_error)?;
                // Acknowledged from here; a `WAIT` that fails leaves it unconfirmed.
                let wait = CustomCommand::new_static("WAIT", None, true);
                let replicas = conn.custom::<i64, _>(wait, vec![1, 100]).await.unwrap_or(0);
                Ok(replicas >= 1)
            })
            .await;
        if let Some(confirmed) = acked {
            lock(&rec.ha_acked).push((key, confirmed));
        }
        pause().await;
    }
}

/// A burst of acquires on every pool, each cancelled after 0-2 ms (`tokio::time::timeout`).
pub(super) async fn cancelled_acquires(pools: &Pools, rec: &Recorder, n: usize) -> (usize, usize) {
    let cluster = &pools.clusters["main"];
    let redis = pools.redis.as_ref().expect("redis pools configured");
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let cluster = cluster.clone();
        let redis = redis.clone();
        let limit = Duration::from_micros(fastrand::u64(..2000) + i as u64 % 7);
        tasks.spawn(async move {
            match i % 4 {
                0 => held(tokio::time::timeout(limit, cluster.session()).await).await,
                1 => held(tokio::time::timeout(limit, cluster.session_read_only()).await).await,
                n => {
                    let pool =
                        redis.get(if n == 2 { "main" } else { "cache" }).expect("configured");
                    held(tokio::time::timeout(limit, pool.exclusive()).await).await
                }
            }
        });
    }
    let mut cancelled = 0;
    let start = rec.now();
    while let Some(joined) = tasks.join_next().await {
        if joined.unwrap_or(false) {
            cancelled += 1;
            rec.success(Kind::CancelledAcquire, start);
        }
    }
    (cancelled, n - cancelled)
}

/// Whether the acquire was cancelled; one served in time holds its connection for 20 ms, so
/// that the burst outgrows the pools and most acquires are cancelled while they wait.
async fn held<T, E>(acquired: Result<Result<T, E>, tokio::time::error::Elapsed>) -> bool {
    match acquired {
        Ok(conn) => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(conn);
            false
        }
        Err(_) => true,
    }
}

fn session_error(e: SessionError) -> ReqError {
    let expected = match &e {
        SessionError::Acquire(a) => a.is_timeout() || a.is_unavailable(),
        _ => false,
    };
    ReqError { expected, message: format!("acquire: {e}") }
}

/// Errors a dropped, killed or restarting server explains: IO errors, and the server's
/// `08` (connection exception) and `57` (operator intervention: terminated, shutting down,
/// starting up) classes.
fn sql_error(e: sqlx::Error) -> ReqError {
    let expected = match &e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => {
            db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57"))
        }
        _ => false,
    };
    ReqError { expected, message: format!("query: {e}") }
}

/// fred's errors that a killed, restarted, slow or cut connection explains; a command that
/// finds no socket while its client reconnects fails at once with "Failed to route command"
/// (pool-redis never lets fred resend a command).
fn redis_error(e: RedisError) -> ReqError {
    let expected = match e.kind() {
        ErrorKind::IO
        | ErrorKind::Timeout
        | ErrorKind::Canceled
        | ErrorKind::Backpressure
        | ErrorKind::Routing => true,
        // A command whose socket fred closed (killed, or a reply overdue on a frozen server)
        // and that found none to be written to.
        ErrorKind::Unknown => {
            e.details().contains("Failed to route command")
                || e.details().contains("Too many failed write attempts")
        }
        _ => false,
    };
    ReqError { expected, message: format!("command ({:?}): {e}", e.kind()) }
}
