//! `bench core`: acquire + release of no-op connections, our engine against deadpool and bb8,
//! from one task and under contention, on a 2-worker tokio runtime.
//!
//! Every pool gets the same no-op connection (a `u64`) and its default settings, with checks
//! that would do IO off (there is no IO). Contended tasks hold the connection across one
//! `yield_now`, so tasks really queue for the 10 connections.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::report::{self, Row};

/// Options of `bench core`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Seconds each pool runs in each scenario and round.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds; each pool's median round (by ops/s) is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Task counts of the contended scenarios.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16, 64, 256])]
    tasks: Vec<usize>,
    /// Pools to run (`pool-core`, `pool-core-otel`, `deadpool`, `bb8`); all by default.
    #[arg(long, value_delimiter = ',', default_values_t = POOLS.map(String::from).to_vec())]
    pools: Vec<String>,
}

const CONNECTIONS: usize = 10;

/// The no-op manager, for each pool's trait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noop;

impl pool_core::Manager for Noop {
    type Connection = u64;
    type Error = std::io::Error;
    const BACKEND: &'static str = "noop";

    async fn connect(&self) -> Result<u64, std::io::Error> {
        Ok(0)
    }

    async fn check(&self, _: &mut u64) -> Result<(), std::io::Error> {
        Ok(())
    }
}

impl deadpool::managed::Manager for Noop {
    type Type = u64;
    type Error = Infallible;

    async fn create(&self) -> Result<u64, Infallible> {
        Ok(0)
    }

    async fn recycle(
        &self,
        _: &mut u64,
        _: &deadpool::managed::Metrics,
    ) -> deadpool::managed::RecycleResult<Infallible> {
        Ok(())
    }
}

impl bb8::ManageConnection for Noop {
    type Connection = u64;
    type Error = Infallible;

    async fn connect(&self) -> Result<u64, Infallible> {
        Ok(0)
    }

    async fn is_valid(&self, _: &mut u64) -> Result<(), Infallible> {
        Ok(())
    }

    fn has_broken(&self, _: &mut u64) -> bool {
        false
    }
}

/// The pools under test, behind one interface.
#[derive(Clone)]
enum Subject {
    Ours(pool_core::ConnectionPool<Noop>),
    /// Ours with pool-metrics' OpenTelemetry histograms recording every event; the second
    /// field keeps the instruments and their provider alive for the run.
    OursOtel(
        pool_core::ConnectionPool<Noop>,
        #[allow(dead_code, reason = "held only to keep the exporter alive")]
        Arc<(pool_metrics::OtelMetrics, opentelemetry_sdk::metrics::SdkMeterProvider)>,
    ),
    Deadpool(deadpool::managed::Pool<Noop>),
    Bb8(bb8::Pool<Noop>),
}

impl Subject {
    fn name(&self) -> &'static str {
        match self {
            Subject::Ours(_) => "pool-core",
            Subject::OursOtel(..) => "pool-core-otel",
            Subject::Deadpool(_) => "deadpool",
            Subject::Bb8(_) => "bb8",
        }
    }

    async fn build(name: &str) -> Subject {
        match name {
            "pool-core" => Subject::Ours(
                pool_core::ConnectionPool::builder(Noop)
                    .name("bench")
                    .pool_size(CONNECTIONS)
                    .max_overflow(0)
                    .build()
                    .expect("valid settings"),
            ),
            "pool-core-otel" => {
                use opentelemetry::metrics::MeterProvider as _;
                let pool = pool_core::ConnectionPool::builder(Noop)
                    .name("bench")
                    .pool_size(CONNECTIONS)
                    .max_overflow(0)
                    .build()
                    .expect("valid settings");
                let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                    .with_reader(opentelemetry_sdk::metrics::ManualReader::builder().build())
                    .build();
                let pools = pool_core::Registry::new();
                pools.register(Arc::new(pool.clone())).expect("one pool");
                let metrics = pool_metrics::OtelMetrics::new(&provider.meter("bench"), pools)
                    .expect("no observer yet");
                Subject::OursOtel(pool, Arc::new((metrics, provider)))
            }
            "deadpool" => Subject::Deadpool(
                deadpool::managed::Pool::builder(Noop)
                    .max_size(CONNECTIONS)
                    .build()
                    .expect("valid settings"),
            ),
            _ => Subject::Bb8(
                bb8::Pool::builder()
                    .max_size(CONNECTIONS as u32)
                    .test_on_check_out(false)
                    .build(Noop)
                    .await
                    .expect("valid settings"),
            ),
        }
    }

    /// Fills the pool so no scenario measures connects.
    async fn warm(&self) {
        let mut held = Vec::new();
        for _ in 0..CONNECTIONS {
            held.push(self.clone().hold().await);
        }
    }

    async fn hold(self) -> Held {
        match self {
            Subject::Ours(p) | Subject::OursOtel(p, _) => {
                Held::Ours(p.acquire().await.expect("acquire"))
            }
            Subject::Deadpool(p) => Held::Deadpool(p.get().await.expect("get")),
            Subject::Bb8(p) => Held::Bb8(p.get_owned().await.expect("get")),
        }
    }

    /// One acquire and release; `yield_while_held` holds the connection across a yield.
    #[inline]
    async fn op(&self, yield_while_held: bool) {
        match self {
            Subject::Ours(p) | Subject::OursOtel(p, _) => {
                let c = p.acquire().await.expect("acquire");
                if yield_while_held {
                    tokio::task::yield_now().await;
                }
                drop(c);
            }
            Subject::Deadpool(p) => {
                let c = p.get().await.expect("get");
                if yield_while_held {
                    tokio::task::yield_now().await;
                }
                drop(c);
            }
            Subject::Bb8(p) => {
                let c = p.get().await.expect("get");
                if yield_while_held {
                    tokio::task::yield_now().await;
                }
                drop(c);
            }
        }
    }
}

#[allow(dead_code, reason = "the variants only keep connections checked out")]
enum Held {
    Ours(pool_core::PooledConnection<Noop>),
    Deadpool(deadpool::managed::Object<Noop>),
    Bb8(bb8::PooledConnection<'static, Noop>),
}

const POOLS: [&str; 4] = ["pool-core", "pool-core-otel", "deadpool", "bb8"];

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let run_for = Duration::from_secs_f64(args.seconds);
    let mut scenarios = vec![("single", 1usize)];
    scenarios.extend(args.tasks.iter().map(|&t| ("contended", t)));
    let mut rows = Vec::new();
    for (scenario, tasks) in scenarios {
        let mut rounds: Vec<Vec<Row>> = vec![Vec::new(); POOLS.len()];
        for _ in 0..args.rounds {
            for (i, name) in
                POOLS.iter().enumerate().filter(|(_, p)| args.pools.iter().any(|a| a == *p))
            {
                let row = rt.block_on(async {
                    let subject = Subject::build(name).await;
                    subject.warm().await;
                    if scenario == "single" {
                        single(&subject, run_for).await
                    } else {
                        contended(&subject, tasks, run_for).await
                    }
                });
                eprintln!("{scenario:>9} {tasks:>4} {name:<10} {:>12.0} ops/s", row.ops_per_sec);
                rounds[i].push(row);
            }
        }
        for mut r in rounds.into_iter().filter(|r| !r.is_empty()) {
            r.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            rows.push(r.swap_remove(r.len() / 2));
        }
    }
    println!();
    report::print_table(&rows, "pool-core");
    let path = report::write_json("core", &rows)?;
    println!("\nwrote {}", path.display());
    Ok(())
}

/// One task: throughput from an untimed loop, latencies from a second, timed loop.
async fn single(subject: &Subject, run_for: Duration) -> Row {
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < run_for {
        for _ in 0..1024 {
            subject.op(false).await;
        }
        ops += 1024;
    }
    let elapsed = start.elapsed();
    let mut hist = report::histogram();
    let timed = Instant::now();
    while timed.elapsed() < run_for / 4 {
        let t = Instant::now();
        subject.op(false).await;
        hist.saturating_record(t.elapsed().as_nanos() as u64);
    }
    Row::new("single", 1, subject.name(), ops, elapsed, &hist)
}

/// `tasks` tasks over the pool's 10 connections, each holding its connection across a yield.
async fn contended(subject: &Subject, tasks: usize, run_for: Duration) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let subject = subject.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut hist = report::histogram();
                let mut ops = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    subject.op(true).await;
                    hist.saturating_record(t.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                (ops, hist)
            })
        })
        .collect();
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut hist = report::histogram();
    for h in handles {
        let (ops, h) = h.await.expect("bench task");
        total += ops;
        hist.add(h).expect("same bounds");
    }
    Row::new("contended", tasks, subject.name(), total, start.elapsed(), &hist)
}
