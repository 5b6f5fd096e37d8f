//! `pool-bench`: the benchmarks behind `cargo xtask bench`, our pools against the peers in one
//! run on one machine, reported as a table and as JSON under `target/bench/`.
//!
//! Run with `cargo xtask bench core` (or `cargo run --release -p pool-bench -- core --help`).

mod core;
mod drivers;
mod metrics;
mod postgres;
mod redis;
mod report;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Connection-pool benchmarks: ours against deadpool, bb8 and sqlx in one run")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The engine with no-op connections against deadpool and bb8.
    Core(core::Args),
    /// `SELECT 1` on a real PostgreSQL: ours against sqlx, deadpool-postgres and bb8-postgres.
    Postgres(postgres::Args),
    /// `SELECT 1` on bare PostgreSQL connections, no pool: the drivers' own latency floor.
    Drivers(drivers::Args),
    /// `GET` on a real Redis: our exclusive and shared paths against deadpool-redis, bb8-redis and fred.
    Redis(redis::Args),
    /// A Prometheus scrape and an OpenTelemetry collection of 100 pools.
    Metrics(metrics::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().bench {
        Bench::Core(args) => core::run(&args),
        Bench::Postgres(args) => postgres::run(&args),
        Bench::Drivers(args) => drivers::run(&args),
        Bench::Redis(args) => redis::run(&args),
        Bench::Metrics(args) => metrics::run(&args),
    }
}
