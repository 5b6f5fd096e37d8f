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
    /// One call in a thousand took longer: a steadier view of the tail than `max`, which is a
    /// single sample and, on a shared machine, often the machine's own hiccup.
    pub(crate) p999_ns: u64,
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
            p999_ns: hist.value_at_quantile(0.999),
            max_ns: hist.max(),
        }
    }
}

/// The PostgreSQL server of the plaintext benchmarks: `DATABASE_URL`, else the local one, with
/// `sslmode=disable` unless the URL names a mode. tokio-postgres's peers connect without TLS
/// (`NoTls`), while sqlx's default `prefer` would take TLS from a server that offers it (as
/// Debian's does), and the pools would no longer do the same work.
pub(crate) fn plaintext_postgres_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    if url.contains("sslmode=") {
        url
    } else {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}sslmode=disable")
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

/// What [`run_rounds`] measured.
pub(crate) struct Report {
    /// Each pool's median round (by ops/s) in each scenario: the table's rows and the JSON.
    pub(crate) rows: Vec<Row>,
    /// Every round of every pool, with the round's number.
    rounds: Vec<(usize, Row)>,
}

impl Report {
    /// The median over rounds of `ours`' ops/s ÷ `pool`'s in the same round of `scenario`
    /// at `tasks`: the pools ran seconds apart, so a slow spell of the machine that hits one
    /// round hits both sides of its ratio, where it can move one median and not the other.
    fn paired_ratio(&self, scenario: &str, tasks: usize, ours: &str, pool: &str) -> Option<f64> {
        let of = |name: &str, round: usize| {
            self.rounds.iter().find_map(|(n, r)| {
                (*n == round && r.scenario == scenario && r.tasks == tasks && r.pool == name)
                    .then_some(r.ops_per_sec)
            })
        };
        let mut ratios: Vec<f64> = self
            .rounds
            .iter()
            .filter(|(_, r)| r.scenario == scenario && r.tasks == tasks && r.pool == pool)
            .filter_map(|&(n, ref theirs)| Some(of(ours, n)? / theirs.ops_per_sec))
            .collect();
        if ratios.is_empty() {
            return None;
        }
        ratios.sort_by(f64::total_cmp);
        let mid = ratios.len() / 2;
        Some(if ratios.len() % 2 == 1 {
            ratios[mid]
        } else {
            (ratios[mid - 1] + ratios[mid]) / 2.0
        })
    }
}

/// Prints the median rows as a table with each peer's ratio to `ours` (our ops/s ÷ theirs):
/// `ours/this` divides the two medians shown, `paired` is the median of the rounds' own ratios
/// (see [`Report::paired_ratio`]); on a noisy machine `paired` is the steadier of the two.
pub(crate) fn print_table(report: &Report, ours: &str) {
    println!(
        "{:<10} {:>5}  {:<26} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
        "scenario", "tasks", "pool", "ops/s", "p50", "p99", "p99.9", "max", "ours/this", "paired"
    );
    let rows = &report.rows;
    for row in rows {
        let mine = rows
            .iter()
            .find(|r| r.scenario == row.scenario && r.tasks == row.tasks && r.pool == ours)
            .map(|r| r.ops_per_sec);
        let (ratio, paired) = match mine {
            Some(m) if row.pool != ours => (
                format!("{:.2}x", m / row.ops_per_sec),
                report
                    .paired_ratio(&row.scenario, row.tasks, ours, &row.pool)
                    .map_or_else(|| "-".to_owned(), |p| format!("{p:.2}x")),
            ),
            _ => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<10} {:>5}  {:<26} {:>12.0} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            row.scenario,
            row.tasks,
            row.pool,
            row.ops_per_sec,
            fmt_ns(row.p50_ns),
            fmt_ns(row.p99_ns),
            fmt_ns(row.p999_ns),
            fmt_ns(row.max_ns),
            ratio,
            paired
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

/// The options every benchmark takes.
#[derive(Debug, clap::Args)]
pub(crate) struct Common {
    /// Seconds each pool runs in each scenario and round.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) seconds: f64,
    /// Rounds; each pool's median round (by ops/s) is reported. The pools take turns within a
    /// round, so a noisy moment hits them alike.
    #[arg(long, default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Task counts of the contended scenarios.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16, 64, 256])]
    pub(crate) tasks: Vec<usize>,
    /// Also run a `paced` scenario at each task count: the tasks together start this many
    /// operations per second (open loop, on tokio's 1 ms timer, so arrivals come in small
    /// bursts) instead of starting the next as soon as one ends. Set it below every pool's
    /// throughput to compare latencies at the same load; a pool that cannot keep up falls
    /// behind and reports fewer ops/s.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
}

impl Common {
    /// How long each pool runs in each scenario and round.
    pub(crate) fn run_for(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
}

/// Runs every scenario (`single`, then `contended` at each task count) for `rounds` rounds,
/// the pools taking turns within a round, and keeps each pool's median round (and every
/// round, for the paired ratios). `one(scenario, tasks, pool)` measures one pool once. If it
/// fails, the scenarios already done are printed before the error returns, so a long run is
/// not lost to its last row.
pub(crate) fn run_rounds(
    common: &Common,
    pools: &[&str],
    mut one: impl FnMut(&str, usize, &str) -> anyhow::Result<Row>,
) -> anyhow::Result<Report> {
    let mut scenarios = vec![("single", 1usize)];
    scenarios.extend(common.tasks.iter().map(|&t| ("contended", t)));
    if common.rate.is_some() {
        scenarios.extend(common.tasks.iter().map(|&t| ("paced", t)));
    }
    let mut report = Report { rows: Vec::new(), rounds: Vec::new() };
    for (scenario, tasks) in scenarios {
        for round in 0..common.rounds.max(1) {
            for pool in pools {
                let row = match one(scenario, tasks, pool) {
                    Ok(row) => row,
                    Err(e) => {
                        if !report.rows.is_empty() {
                            println!(
                                "\nthe scenarios done before {pool} failed at {scenario} {tasks}:"
                            );
                            print_table(&report, pools[0]);
                        }
                        return Err(e.context(format!("{pool}, {scenario}, {tasks} tasks")));
                    }
                };
                eprintln!("{scenario:>9} {tasks:>4} {pool:<26} {:>12.0} ops/s", row.ops_per_sec);
                debug_assert_eq!(row.pool, *pool, "a row is named after the pool that ran it");
                report.rounds.push((round, row));
            }
        }
        for pool in pools {
            let mut runs: Vec<&Row> = report
                .rounds
                .iter()
                .map(|(_, r)| r)
                .filter(|r| r.scenario == scenario && r.tasks == tasks && r.pool == *pool)
                .collect();
            runs.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
            if let Some(&median) = runs.get(runs.len() / 2) {
                report.rows.push(median.clone());
            }
        }
    }
    Ok(report)
}

/// Checks out `n` connections with `checkout` and holds them all at once, then gives them back:
/// a pool then has `n` open, so no scenario measures connects.
pub(crate) async fn hold_all<C, E, Fut>(
    n: usize,
    mut checkout: impl FnMut() -> Fut,
) -> anyhow::Result<()>
where
    Fut: std::future::Future<Output = Result<C, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(checkout().await?);
    }
    Ok(())
}

/// `tasks` tasks calling `op` for `common.seconds`, every call timed; the row for `pool`. In
/// the `paced` scenario the tasks start `common.rate` calls per second between them (task `k`
/// at `start + (k + n·tasks) / rate`), else each starts its next call when one ends.
pub(crate) async fn timed_tasks<F, Fut>(
    common: &Common,
    scenario: &str,
    tasks: usize,
    pool: &str,
    op: F,
) -> anyhow::Result<Row>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let run_for = common.run_for();
    let pace = common.rate.filter(|_| scenario == "paced").map(|rate| tasks as f64 / rate);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|k| {
            let (op, stop) = (op.clone(), std::sync::Arc::clone(&stop));
            tokio::spawn(async move {
                let mut hist = histogram();
                let mut ops = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Some(every) = pace {
                        let due = (k as f64 / tasks as f64 + ops as f64) * every;
                        tokio::time::sleep_until((start + Duration::from_secs_f64(due)).into())
                            .await;
                    }
                    let t = std::time::Instant::now();
                    op().await?;
                    hist.saturating_record(t.elapsed().as_nanos() as u64);
                    ops += 1;
                }
                anyhow::Ok((ops, hist))
            })
        })
        .collect();
    tokio::time::sleep(run_for).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    let mut hist = histogram();
    for h in handles {
        let (ops, h) = h.await??;
        total += ops;
        hist.add(h)?;
    }
    Ok(Row::new(scenario, tasks, pool, total, start.elapsed(), &hist))
}

#[cfg(test)]
mod tests {
    use super::{Report, Row};

    fn row(pool: &str, ops_per_sec: f64) -> Row {
        Row {
            scenario: "contended".to_owned(),
            tasks: 16,
            pool: pool.to_owned(),
            ops_per_sec,
            p50_ns: 0,
            p99_ns: 0,
            p999_ns: 0,
            max_ns: 0,
        }
    }

    #[test]
    fn paired_ratio_is_the_median_of_each_rounds_ratio() {
        // Round 1 ran in a slow spell for both pools. The medians (ours 100, theirs 60) say
        // 1.67x; the rounds' own ratios (2.0, 2.0, 0.5) say 2.0x.
        let rounds = [(0, 100.0, 50.0), (1, 40.0, 20.0), (2, 120.0, 240.0)];
        let report = Report {
            rows: Vec::new(),
            rounds: rounds
                .iter()
                .flat_map(|&(n, ours, theirs)| [(n, row("ours", ours)), (n, row("theirs", theirs))])
                .collect(),
        };
        let paired = report.paired_ratio("contended", 16, "ours", "theirs").unwrap();
        assert!((paired - 2.0).abs() < 1e-9, "{paired}");
        // An even count takes the mean of the middle two.
        let mut even = report.rounds.clone();
        even.extend([(3, row("ours", 90.0)), (3, row("theirs", 90.0))]);
        let report = Report { rows: Vec::new(), rounds: even };
        let paired = report.paired_ratio("contended", 16, "ours", "theirs").unwrap();
        assert!((paired - 1.5).abs() < 1e-9, "{paired}");
        assert_eq!(report.paired_ratio("contended", 64, "ours", "theirs"), None);
        assert_eq!(report.paired_ratio("contended", 16, "ours", "nobody"), None);
    }
}
