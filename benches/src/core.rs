//! `bench core`: acquire + release of no-op connections, our engine against deadpool and bb8,
//! from one task and under contention, on a 2-worker tokio runtime.
//!
//! Every pool gets the same no-op connection (a `u64`) and its default settings, with checks
//! that would do IO off (there is no IO). Contended tasks hold the connection across one
//! `yield_now`, so tasks really queue for the 10 connections.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::report::{self, Row};

/// Options of `bench core`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    common: report::Common,
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
    let run_for = args.common.run_for();
    let pools: Vec<&str> =
        POOLS.iter().copied().filter(|p| args.pools.iter().any(|a| a == p)).collect();
    let measured = report::run_rounds(&args.common, &pools, |scenario, tasks, name| {
        rt.block_on(async {
            let subject = Subject::build(name).await;
            subject.warm().await;
            if scenario == "single" {
                return Ok(single(&subject, run_for).await);
            }
            let op = move || {
                let subject = subject.clone();
                async move {
                    subject.op(true).await;
                    anyhow::Ok(())
                }
            };
            report::timed_tasks(&args.common, scenario, tasks, name, op).await
        })
    })?;
    println!();
    report::print_table(&measured, "pool-core");
    let path = report::write_json("core", &measured.rows)?;
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
