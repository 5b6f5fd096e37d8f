//! `cargo xtask bench`: one of `pool-bench`'s benchmarks, with the services it needs.

use std::process::ExitCode;

use clap::ValueEnum;

use crate::services::{Needs, Services};

/// The benchmarks `pool-bench` knows.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Bench {
    /// The pool engine alone, against an in-memory backend.
    Core,
    /// Pools of PostgreSQL connections.
    Postgres,
    /// Bare PostgreSQL connections (sqlx, tokio-postgres), no pool: the drivers' own latency.
    Drivers,
    /// Pools of Redis connections.
    Redis,
    /// A Prometheus scrape and an OpenTelemetry collection of 100 pools.
    Metrics,
}

/// Brings up the services `bench` needs and runs `cargo run --release -p pool-bench -- <bench> <args>`;
/// servers this call started itself are stopped afterwards.
pub(crate) fn run(bench: Bench, args: &[String]) -> anyhow::Result<ExitCode> {
    let needs = Needs {
        postgres: matches!(bench, Bench::Postgres | Bench::Drivers),
        replica: false,
        redis: matches!(bench, Bench::Redis),
    };
    let services = Services::ensure(needs)?;
    let name = bench.to_possible_value().expect("no benchmark is skipped");
    let mut cmd = crate::cargo();
    cmd.args(["run", "--release", "-p", "pool-bench", "--", name.get_name()])
        .args(args)
        .envs(services.env());
    crate::exit_code_of(cmd)
}
