//! Measurements, the table printed for a reader, and the JSON written under `target/bench/`.

use std::path::PathBuf;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// One pool's result in one scenario (the JSON shape shared by every benchmark).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    pub(crate) scenario: String,
    pub(crate) tasks: usize,
    pub(crate) pool: String,
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_ns: u64,
    pub(crate) p99_ns: u64,
    pub(crate) max_ns: u64,
}

impl Row {
    pub(crate) fn new(
        scenario: &str,
        tasks: usize,
        pool: &str,
        ops: u64,
        elapsed: Duration,
        hist: &Histogram<u64>,
    ) -> Row {
        Row {
            scenario: scenario.to_owned(),
            tasks,
            pool: pool.to_owned(),
            ops_per_sec: ops as f64 / elapsed.as_secs_f64(),
            p50_ns: hist.value_at_quantile(0.50),
            p99_ns: hist.value_at_quantile(0.99),
            max_ns: hist.max(),
        }
    }
}

/// A new latency histogram in nanoseconds, 1 ns to 100 s, 3 significant figures.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..=9_999 => format!("{ns} ns"),
        10_000..=9_999_999 => format!("{:.1} µs", ns as f64 / 1e3),
        10_000_000..=9_999_999_999 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

/// Prints the rows as a table, with each peer's ratio to `ours` (our ops/s ÷ theirs).
pub(crate) fn print_table(rows: &[Row], ours: &str) {
    println!(
        "{:<10} {:>5}  {:<22} {:>12} {:>10} {:>10} {:>10} {:>13}",
        "scenario", "tasks", "pool", "ops/s", "p50", "p99", "max", "ours/this"
    );
    for row in rows {
        let mine = rows
            .iter()
            .find(|r| r.scenario == row.scenario && r.tasks == row.tasks && r.pool == ours)
            .map(|r| r.ops_per_sec);
        let ratio = match mine {
            Some(m) if row.pool != ours => format!("{:.2}x", m / row.ops_per_sec),
            _ => "-".to_owned(),
        };
        println!(
            "{:<10} {:>5}  {:<22} {:>12.0} {:>10} {:>10} {:>10} {:>13}",
            row.scenario,
            row.tasks,
            row.pool,
            row.ops_per_sec,
            fmt_ns(row.p50_ns),
            fmt_ns(row.p99_ns),
            fmt_ns(row.max_ns),
            ratio
        );
    }
}

/// Writes the rows to `target/bench/<name>.json` and returns the path.
pub(crate) fn write_json(name: &str, rows: &[Row]) -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(rows)?)?;
    Ok(path)
}
