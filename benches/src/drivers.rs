//! `cargo xtask bench drivers`: the PostgreSQL drivers' own latency, with no pool at all.
//!
//! Each task owns one open connection and runs `SELECT 1` on it (simple protocol) as fast as it
//! can, on the same 2-worker runtime as `bench postgres`. This is the floor every pool over the
//! driver sits on: a latency tail that shows here comes with the driver, whatever the pool does.
//! The connections are named after how the task drives them:
//!
//! - `sqlx`: a `PgConnection`, which reads and writes its socket inside the query's future;
//! - `sqlx-yield`: the same, with `tokio::task::yield_now()` before each query, so the task goes
//!   to the back of its worker's run queue instead of sending its next query at once;
//! - `sqlx-task`: the `PgConnection` lives in a task of its own and the caller sends it requests
//!   over a channel (tokio-postgres's shape, with sqlx's protocol code);
//! - `tokio-postgres`: a `tokio_postgres::Client`, whose connection runs in a task of its own.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use pool_postgres::sqlx::{self, Connection as _};
use tokio::sync::{mpsc, oneshot};

use crate::report::{self, Common};

/// The drivers, in the order they run within a round.
const DRIVERS: &[&str] = &["sqlx", "sqlx-yield", "sqlx-task", "tokio-postgres"];

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds each driver runs in each scenario and round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds; each driver's median round (by ops/s) is reported, the drivers taking turns.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Task counts of the contended scenarios, each task on a connection of its own (10 is the
    /// connection count of `bench postgres`).
    #[arg(long, value_delimiter = ',', default_values_t = vec![10])]
    tasks: Vec<usize>,
    /// Drivers to run; all by default.
    #[arg(long, value_delimiter = ',', default_values_t = DRIVERS.iter().map(|d| d.to_string()).collect::<Vec<_>>())]
    drivers: Vec<String>,
}

/// One task's connection, driven one of the ways above.
enum Conn {
    Sqlx { conn: sqlx::PgConnection, yield_first: bool },
    SqlxTask(mpsc::Sender<oneshot::Sender<Result<(), sqlx::Error>>>),
    TokioPostgres(tokio_postgres::Client),
}

impl Conn {
    async fn open(driver: &str, url: &str) -> anyhow::Result<Conn> {
        Ok(match driver {
            "sqlx" | "sqlx-yield" => Conn::Sqlx {
                conn: sqlx::PgConnection::connect(url).await?,
                yield_first: driver == "sqlx-yield",
            },
            "sqlx-task" => {
                let mut conn = sqlx::PgConnection::connect(url).await?;
                let (tx, mut rx) = mpsc::channel::<oneshot::Sender<_>>(1);
                tokio::spawn(async move {
                    while let Some(done) = rx.recv().await {
                        let result = sqlx::raw_sql("SELECT 1").execute(&mut conn).await.map(drop);
                        let _ = done.send(result);
                    }
                });
                Conn::SqlxTask(tx)
            }
            "tokio-postgres" => {
                let (client, connection) =
                    tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                Conn::TokioPostgres(client)
            }
            other => anyhow::bail!("unknown driver {other:?}; expected one of {DRIVERS:?}"),
        })
    }

    async fn select_1(&mut self) -> anyhow::Result<()> {
        match self {
            Conn::Sqlx { conn, yield_first } => {
                if *yield_first {
                    tokio::task::yield_now().await;
                }
                sqlx::raw_sql("SELECT 1").execute(conn).await?;
            }
            Conn::SqlxTask(tx) => {
                let (done, result) = oneshot::channel();
                tx.send(done).await.context("the connection's task ended")?;
                result.await.context("the connection's task ended")??;
            }
            Conn::TokioPostgres(client) => {
                client.simple_query("SELECT 1").await?;
            }
        }
        Ok(())
    }
}

/// `tasks` tasks, each on its own connection of `driver`, for `run_for`.
async fn measure(
    driver: &str,
    url: &str,
    scenario: &str,
    tasks: usize,
    run_for: Duration,
) -> anyhow::Result<(report::Row, hdrhistogram::Histogram<u64>)> {
    let mut conns = Vec::with_capacity(tasks);
    for _ in 0..tasks {
        conns.push(Conn::open(driver, url).await.with_context(|| {
            format!("{driver}: cannot reach PostgreSQL at {url} (DATABASE_URL); start it with `cargo xtask services up`")
        })?);
    }
    let start = Instant::now();
    let handles: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut hist = report::histogram();
                let mut ops = 0u64;
                while start.elapsed() < run_for {
                    let t = Instant::now();
                    conn.select_1().await?;
                    hist.saturating_record(t.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                anyhow::Ok((ops, hist))
            })
        })
        .collect();
    let (mut total, mut hist) = (0, report::histogram());
    for h in handles {
        let (ops, h) = h.await??;
        total += ops;
        hist.add(h)?;
    }
    Ok((report::Row::new(scenario, tasks, driver, total, start.elapsed(), &hist), hist))
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let url = report::plaintext_postgres_url();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let common = Common {
        seconds: args.seconds,
        rounds: args.rounds,
        tasks: args.tasks.clone(),
        rate: None,
    };
    let selected: Vec<&str> =
        DRIVERS.iter().copied().filter(|d| args.drivers.iter().any(|a| a == d)).collect();
    let mut quantiles = Vec::new();
    let rows = report::run_rounds(&common, &selected, |scenario, tasks, driver| {
        let (row, hist) = rt.block_on(measure(driver, &url, scenario, tasks, common.run_for()))?;
        let q = |p: f64| hist.value_at_quantile(p);
        quantiles.push((
            (row.scenario.clone(), row.tasks, row.pool.clone(), row.ops_per_sec.to_bits()),
            [q(0.10), q(0.50), q(0.90), q(0.99), q(0.999)],
        ));
        Ok(row)
    })?
    .rows;
    println!();
    println!(
        "{:<10} {:>5}  {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario", "tasks", "driver", "ops/s", "p10", "p50", "p90", "p99", "p99.9", "max"
    );
    for row in &rows {
        let key = (row.scenario.clone(), row.tasks, row.pool.clone(), row.ops_per_sec.to_bits());
        let Some((_, q)) = quantiles.iter().find(|(k, _)| *k == key) else { continue };
        let us = |ns: u64| format!("{:.0} µs", ns as f64 / 1e3);
        println!(
            "{:<10} {:>5}  {:<16} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            row.scenario,
            row.tasks,
            row.pool,
            row.ops_per_sec,
            us(q[0]),
            us(q[1]),
            us(q[2]),
            us(q[3]),
            us(q[4]),
            us(row.max_ns)
        );
    }
    let path = report::write_json("drivers", &rows)?;
    println!("\nwrote {}", path.display());
    Ok(())
}
