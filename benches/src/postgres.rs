//! `bench postgres`: `SELECT 1` through each pool against a real PostgreSQL on loopback — ours,
//! sqlx's `PgPool`, deadpool-postgres, bb8-postgres — with their default settings and with their
//! checks off (the `-nocheck` twins), from one task and from 16, 64 and 256 tasks over 10
//! connections (`--connections`); plus a connect-per-query baseline (sqlx: connect, query,
//! close), with at most as many connects at once as the server has free connection slots.
//!
//! The connection overhead it prints is the time per query beyond the bare query on one open
//! connection, which is measured right after our pool's single-task run in every round, so the
//! two meet the same noise; the figure is the median over rounds.
//!
//! Every pool runs the query with the simple query protocol (one round trip:
//! `raw_sql` for sqlx connections, `simple_query` for tokio-postgres), so they do the same work
//! per operation. The server is `DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`,
//! over plaintext (`sslmode=disable` unless the URL names a mode), as the tokio-postgres peers
//! connect.
//!
//! `--workload mix` replaces `SELECT 1` with what a service does on one checkout: a query that
//! calls functions (`SELECT md5($1), now()`), then an sqlx transaction (`BEGIN`,
//! `SET LOCAL statement_timeout`, a query, `COMMIT`): five round trips, every statement
//! prepared once per connection and cached. It prices the pool's reset on return: ours with its
//! default (`ResetOnReturn::Session`, one more round trip), with `ResetOnReturn::Transaction`,
//! with no reset at all (`pool-postgres-noreset`, which nothing but a benchmark should run) and
//! with `DISCARD ALL` on every return (`pool-postgres-discard`, which also empties sqlx's
//! statement cache), beside sqlx's pool and deadpool-postgres (`Fast`: no reset;
//! `deadpool-postgres-clean`: `RecyclingMethod::Clean` at every checkout). bb8-postgres has no
//! statement cache, so it would do more work per operation, and sits this workload out.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use pool_postgres::sqlx::{self, Connection};

use crate::report;

/// Options of `bench postgres`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: report::Common,
    /// Pools to run (see the JSON's `pool` names); all by default.
    #[arg(long, value_delimiter = ',', default_values_t = POOLS.map(String::from).to_vec())]
    pools: Vec<String>,
    /// Connections of every pool: the same for all, so their ratios stay comparable.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    connections: u16,
    /// What one operation does between checkout and return.
    #[arg(long, value_enum, default_value_t = Workload::Select1)]
    workload: Workload,
    /// Over TLS (`sslmode=verify-full`) to a throwaway server with TLS on, instead of plaintext to
    /// `DATABASE_URL`; `SELECT 1` only.
    #[arg(long, conflicts_with = "workload")]
    tls: bool,
}

/// What one operation does between checkout and return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Workload {
    /// `SELECT 1` in the simple protocol: one round trip.
    Select1,
    /// A function-calling query, then a transaction with `SET LOCAL`: five round trips.
    Mix,
}

/// The pools of `--workload mix`, by default.
const MIX_POOLS: [&str; 8] = [
    "pool-postgres",
    "pool-postgres-txreset",
    "pool-postgres-noreset",
    "pool-postgres-discard",
    "sqlx",
    "sqlx-nocheck",
    "deadpool-postgres",
    "deadpool-postgres-clean",
];

/// The pools of `--tls`, by default.
const TLS_POOLS: [&str; 4] = ["pool-postgres", "pool-postgres-plain", "sqlx", "connect-per-query"];

const POOLS: [&str; 9] = [
    "pool-postgres",
    "pool-postgres-nocheck",
    "sqlx",
    "sqlx-nocheck",
    "deadpool-postgres",
    "deadpool-postgres-nocheck",
    "bb8-postgres",
    "bb8-postgres-nocheck",
    "connect-per-query",
];

type Bb8 = bb8::Pool<bb8_postgres::PostgresConnectionManager<tokio_postgres::NoTls>>;

/// Our pool with a reset on return that the library does not offer: none at all, or
/// `DISCARD ALL` (after emptying sqlx's statement cache, which it deallocates) on every return.
/// A benchmark's yardsticks, not settings anyone should run.
#[derive(Debug)]
struct BenchReset {
    inner: pool_postgres::PgManager,
    discard_all: bool,
}

impl pool_core::Manager for BenchReset {
    type Connection = pool_postgres::PgConn;
    type Error = pool_postgres::PgError;
    const BACKEND: &'static str = "postgresql";

    fn connect(&self) -> impl Future<Output = Result<Self::Connection, Self::Error>> + Send {
        self.inner.connect()
    }

    fn check(
        &self,
        conn: &mut Self::Connection,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.inner.check(conn)
    }

    fn needs_reset(&self, _conn: &Self::Connection) -> bool {
        self.discard_all
    }

    async fn reset(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        let bare: &mut sqlx::PgConnection = conn;
        bare.clear_cached_statements().await?;
        Ok(sqlx::raw_sql("DISCARD ALL").execute(bare).await.map(drop)?)
    }

    fn is_broken(&self, conn: &Self::Connection) -> bool {
        self.inner.is_broken(conn)
    }

    fn close(&self, conn: Self::Connection) -> impl Future<Output = ()> + Send {
        self.inner.close(conn)
    }
}

/// The pools under test, behind one interface.
#[derive(Clone)]
enum Subject {
    Ours(pool_postgres::PgPool),
    OursBench(pool_core::ConnectionPool<BenchReset>),
    Sqlx(sqlx::PgPool),
    Deadpool(deadpool_postgres::Pool),
    Bb8(Bb8),
    /// Connects for every query; at most as many at once as the server has free connection
    /// slots (the permits), so 256 tasks do not fail with "too many clients".
    ConnectPerQuery(Arc<sqlx::postgres::PgConnectOptions>, Arc<tokio::sync::Semaphore>),
}

impl Subject {
    async fn build(name: &str, server: &Server, args: &Args) -> anyhow::Result<Subject> {
        let url = if name == "pool-postgres-plain" { &server.plain_url } else { &server.url };
        let url = url.as_str();
        let check = !name.ends_with("-nocheck");
        fn ours<M: pool_core::Manager>(
            manager: M,
            connections: u16,
            check: bool,
        ) -> Result<pool_core::ConnectionPool<M>, pool_core::BuildError> {
            pool_core::ConnectionPool::builder(manager)
                .name("bench")
                .pool_size(usize::from(connections))
                .max_overflow(0)
                .pool_pre_ping(check)
                .build()
        }
        let manager = || pool_postgres::PgManager::from_url(url);
        Ok(match name.trim_end_matches("-nocheck") {
            "pool-postgres" | "pool-postgres-plain" => {
                Subject::Ours(ours(manager()?, args.connections, check)?)
            }
            "pool-postgres-txreset" => {
                let reset = pool_postgres::ResetOnReturn::Transaction;
                Subject::Ours(ours(manager()?.reset_on_return(reset), args.connections, check)?)
            }
            "pool-postgres-noreset" | "pool-postgres-discard" => {
                let discard_all = name.ends_with("-discard");
                let manager = BenchReset { inner: manager()?, discard_all };
                Subject::OursBench(ours(manager, args.connections, check)?)
            }
            "sqlx" => Subject::Sqlx(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(u32::from(args.connections))
                    .test_before_acquire(check)
                    .connect(url)
                    .await?,
            ),
            // deadpool-postgres's default check is already `RecyclingMethod::Fast`, which sends
            // nothing (it only asks tokio-postgres whether the client is closed): both runs use it.
            "deadpool-postgres" | "deadpool-postgres-clean" => {
                let config = tokio_postgres::Config::from_str(url)?;
                let recycling_method = if name.ends_with("-clean") {
                    deadpool_postgres::RecyclingMethod::Clean
                } else {
                    deadpool_postgres::RecyclingMethod::Fast
                };
                let manager = deadpool_postgres::Manager::from_config(
                    config,
                    tokio_postgres::NoTls,
                    deadpool_postgres::ManagerConfig { recycling_method },
                );
                Subject::Deadpool(
                    deadpool_postgres::Pool::builder(manager)
                        .max_size(usize::from(args.connections))
                        .build()?,
                )
            }
            "bb8-postgres" => {
                let manager = bb8_postgres::PostgresConnectionManager::new_from_stringlike(
                    url,
                    tokio_postgres::NoTls,
                )?;
                Subject::Bb8(
                    bb8::Pool::builder()
                        .max_size(u32::from(args.connections))
                        .test_on_check_out(check)
                        .build(manager)
                        .await?,
                )
            }
            "connect-per-query" => {
                let options: sqlx::postgres::PgConnectOptions = url.parse()?;
                let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                // Free slots now, less this connection and a margin for other clients.
                let free: i32 = sqlx::query_scalar(
                    "SELECT current_setting('max_connections')::int \
                     - current_setting('superuser_reserved_connections')::int \
                     - (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend')",
                )
                .fetch_one(&mut conn)
                .await?;
                conn.close().await?;
                let permits = usize::try_from(free - 5).unwrap_or(0).max(1);
                Subject::ConnectPerQuery(
                    Arc::new(options),
                    Arc::new(tokio::sync::Semaphore::new(permits)),
                )
            }
            other => anyhow::bail!(
                "unknown pool {other:?}; known: {}, {}, {}",
                POOLS.join(", "),
                MIX_POOLS[1..4].join(", "),
                TLS_POOLS[1]
            ),
        })
    }

    /// Fills the pool so no scenario measures connects.
    async fn warm(&self, connections: usize) -> anyhow::Result<()> {
        match self {
            Subject::Ours(p) => report::hold_all(connections, || p.acquire()).await,
            Subject::OursBench(p) => report::hold_all(connections, || p.acquire()).await,
            Subject::Sqlx(p) => report::hold_all(connections, || p.acquire()).await,
            Subject::Deadpool(p) => report::hold_all(connections, || p.get()).await,
            Subject::Bb8(p) => report::hold_all(connections, || p.get()).await,
            Subject::ConnectPerQuery(..) => Ok(()),
        }
    }

    /// One checkout, the workload, and return.
    async fn op(&self, workload: Workload) -> anyhow::Result<()> {
        if workload == Workload::Mix {
            return self.mix().await;
        }
        match self {
            Subject::Ours(p) => {
                let mut c = p.acquire().await?;
                sqlx::raw_sql("SELECT 1").execute(&mut *c).await?;
            }
            Subject::OursBench(p) => {
                let mut c = p.acquire().await?;
                sqlx::raw_sql("SELECT 1").execute(&mut *c).await?;
            }
            Subject::Sqlx(p) => {
                let mut c = p.acquire().await?;
                sqlx::raw_sql("SELECT 1").execute(&mut *c).await?;
            }
            Subject::Deadpool(p) => {
                let c = p.get().await?;
                c.simple_query("SELECT 1").await?;
            }
            Subject::Bb8(p) => {
                let c = p.get().await?;
                c.simple_query("SELECT 1").await?;
            }
            Subject::ConnectPerQuery(options, slots) => {
                let _slot = slots.acquire().await?;
                let mut c = sqlx::PgConnection::connect_with(options).await?;
                sqlx::raw_sql("SELECT 1").execute(&mut c).await?;
                c.close().await?;
            }
        }
        Ok(())
    }

    /// One checkout of `--workload mix`, and return.
    async fn mix(&self) -> anyhow::Result<()> {
        match self {
            // The same code on three guard types, whose `begin` differ (ours is `PgConn::begin`).
            Subject::Ours(p) => mix_on!(p.acquire().await?),
            Subject::OursBench(p) => mix_on!(p.acquire().await?),
            Subject::Sqlx(p) => mix_on!(p.acquire().await?),
            Subject::Deadpool(p) => {
                let mut c = p.get().await?;
                let query = c.prepare_cached(MIX_QUERY).await?;
                c.query_one(&query, &[&"x"]).await?;
                let tx = c.transaction().await?;
                let set = tx.prepare_cached(MIX_SET_LOCAL).await?;
                tx.execute(&set, &[]).await?;
                let select = tx.prepare_cached(MIX_IN_TRANSACTION).await?;
                tx.query_one(&select, &[]).await?;
                tx.commit().await?;
            }
            Subject::Bb8(_) | Subject::ConnectPerQuery(..) => {
                anyhow::bail!("this pool does not run --workload mix (see `bench postgres --help`)")
            }
        }
        Ok(())
    }

    async fn close(self) {
        match self {
            Subject::Ours(p) => drop(p.close().await),
            Subject::OursBench(p) => drop(p.close().await),
            Subject::Sqlx(p) => p.close().await,
            Subject::Deadpool(p) => p.close(),
            Subject::Bb8(_) | Subject::ConnectPerQuery(..) => {}
        }
    }
}

/// The server a run measures, and how each pool reaches it.
struct Server {
    /// The URL every pool connects with (over TLS with `--tls`).
    url: String,
    /// The same server over plaintext (`pool-postgres-plain`).
    plain_url: String,
    /// The throwaway server and its certificates (`--tls`), stopped when the run ends.
    _tls: Option<(pool_harness::PgInstance, pool_harness::TestPki)>,
}

impl Server {
    fn for_run(args: &Args) -> anyhow::Result<Server> {
        if !args.tls {
            let url = report::plaintext_postgres_url();
            return Ok(Server { plain_url: url.clone(), url, _tls: None });
        }
        let pki = pool_harness::TestPki::generate()?;
        let pg = pool_harness::PgInstance::builder().ssl(pki.server()).start()?;
        let port = pg.port();
        let url = format!(
            "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&sslrootcert={}",
            pki.ca_pem().display()
        );
        let plain_url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
        Ok(Server { url, plain_url, _tls: Some((pg, pki)) })
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let server = Server::for_run(args)?;
    let url = server.url.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let run_for = args.common.run_for();
    let selected: Vec<&str> = if args.workload == Workload::Mix && args.pools == POOLS {
        MIX_POOLS.to_vec()
    } else if args.tls && args.pools == POOLS {
        TLS_POOLS.to_vec()
    } else {
        let known = || POOLS.iter().chain(&MIX_POOLS).chain(&TLS_POOLS).copied();
        args.pools
            .iter()
            .map(|p| known().find(|k| k == p).with_context(|| format!("unknown pool {p:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    // The bare query's own cost, measured right after our pool's single-task run in each round,
    // so the overhead below compares the two at the same moment: (ours, bare) ops/s per round.
    let overhead_wanted = args.workload == Workload::Select1
        && selected.contains(&"pool-postgres")
        && selected.contains(&"connect-per-query");
    let mut pairs: Vec<(f64, f64)> = Vec::new();
    let measured = report::run_rounds(&args.common, &selected, |scenario, tasks, name| {
        let row = rt.block_on(async {
            let subject = Subject::build(name, &server, args)
                .await
                .with_context(|| format!("{name}: cannot reach PostgreSQL at {url} (DATABASE_URL); start it with `cargo xtask services up`"))?;
            subject.warm(usize::from(args.connections)).await?;
            let op = {
                let subject = subject.clone();
                let workload = args.workload;
                move || {
                    let subject = subject.clone();
                    async move { subject.op(workload).await }
                }
            };
            let row = report::timed_tasks(&args.common, scenario, tasks, name, op).await;
            subject.close().await;
            row
        })?;
        if overhead_wanted && scenario == "single" && name == "pool-postgres" {
            pairs.push((row.ops_per_sec, rt.block_on(raw_queries_per_sec(&url, run_for))?));
        }
        Ok(row)
    })?;
    println!();
    report::print_table(&measured, selected[0]);
    if args.workload == Workload::Mix {
        println!(
            "\nround trips per operation: 5 (query, BEGIN, SET LOCAL, query, COMMIT), plus: \
             pool-postgres 1 on return (the session reset), -txreset 1 (the transaction check), \
             -noreset 0, -discard 1 (DISCARD ALL) and 2 at the next use (both statements \
             prepared again); sqlx 1 (its ping before each checkout), sqlx-nocheck 0; \
             deadpool-postgres 0, deadpool-postgres-clean 1 (its Clean recycle before each checkout)"
        );
    }
    let cpq = measured
        .rows
        .iter()
        .find(|r| r.scenario == "single" && r.pool == "connect-per-query")
        .map(|r| r.ops_per_sec);
    if let (Some(cpq), false) = (cpq, pairs.is_empty()) {
        // Connection overhead: time per query beyond the query itself, which is measured on one
        // connection that stays open, with no pool in between, right after our pool's run in
        // each round. Pooled: the median over rounds of that round's difference; connecting:
        // the median connect-per-query round against the median bare query.
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let raw_t = median(pairs.iter().map(|&(_, raw)| 1.0 / raw).collect());
        let pooled = median(pairs.iter().map(|&(ours, raw)| 1.0 / ours - 1.0 / raw).collect());
        let connecting = 1.0 / cpq - raw_t;
        println!(
            "\nconnection overhead per query (time beyond the bare query, {:.1} µs on one open connection, \
             median of {} rounds): {:.2} ms connecting each time, {:.1} µs pooled: {:.2}% less",
            raw_t * 1e6,
            pairs.len(),
            connecting * 1e3,
            pooled * 1e6,
            (1.0 - pooled.max(0.0) / connecting) * 100.0
        );
    }
    if args.tls {
        tls_against_plaintext(&measured.rows);
    }
    let json = match (args.workload, args.tls) {
        (_, true) => "postgres-tls",
        (Workload::Select1, false) => "postgres",
        (Workload::Mix, false) => "postgres-mix",
    };
    let path = report::write_json(json, &measured.rows)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// `--tls`: what TLS costs our pool, per scenario: its median ops/s over TLS against plaintext to
/// the same server.
fn tls_against_plaintext(rows: &[report::Row]) {
    let plain = |of: &report::Row| {
        rows.iter()
            .find(|r| {
                r.pool == "pool-postgres-plain"
                    && (&r.scenario, r.tasks) == (&of.scenario, of.tasks)
            })
            .map(|r| r.ops_per_sec)
    };
    for tls in rows.iter().filter(|r| r.pool == "pool-postgres") {
        if let Some(plain) = plain(tls) {
            println!(
                "pooled over TLS against plaintext, {} tasks: {:.0} against {plain:.0} ops/s ({:.2}x)",
                tls.tasks,
                tls.ops_per_sec,
                tls.ops_per_sec / plain
            );
        }
    }
}

/// `--workload mix`'s query, which calls two functions.
const MIX_QUERY: &str = "SELECT md5($1), now()";
/// `--workload mix`'s transaction-scoped setting.
const MIX_SET_LOCAL: &str = "SET LOCAL statement_timeout = 5000";
/// `--workload mix`'s query inside its transaction.
const MIX_IN_TRANSACTION: &str = "SELECT pg_backend_pid(), current_setting('statement_timeout')";

/// `--workload mix` on a checked-out sqlx connection `$conn` (ours or sqlx's guard).
macro_rules! mix_on {
    ($conn:expr) => {{
        let mut c = $conn;
        sqlx::query(MIX_QUERY).bind("x").execute(&mut *c).await?;
        let mut tx = c.begin().await?;
        mix_transaction(&mut tx).await?;
        tx.commit().await?;
    }};
}
use mix_on;

/// The transaction of `--workload mix`, on sqlx's transaction.
async fn mix_transaction(tx: &mut sqlx::PgConnection) -> anyhow::Result<()> {
    sqlx::query(MIX_SET_LOCAL).execute(&mut *tx).await?;
    sqlx::query(MIX_IN_TRANSACTION).fetch_one(&mut *tx).await?;
    Ok(())
}

/// `SELECT 1` per second on one connection that stays open, no pool: the query's own cost.
async fn raw_queries_per_sec(url: &str, run_for: Duration) -> anyhow::Result<f64> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < run_for {
        // The same simple-protocol statement as every pool's operation.
        sqlx::raw_sql("SELECT 1").execute(&mut conn).await?;
        ops += 1;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}
