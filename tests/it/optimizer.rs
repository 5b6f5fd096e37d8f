//! The auto-tuner in a real closed loop against PostgreSQL: a load generator with a known
//! concurrency and hold time against a pool that starts too small. The tuner grows the pool
//! until waits meet the target, shrinks it when the load drops, and never breaks the budget.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pool_core::{DynPool, PoolConfig, Registry};
use pool_harness::postgres_url;
use pool_optimizer::{AutoTuner, Budget, Sampler, Settings, TunerSettings};
use pool_postgres::{PgManager, PgPool, sqlx};

/// Runs `windows` sampling windows of `window` each and returns the pool size in each.
async fn run_windows(
    pool: &PgPool,
    sampler: &mut Sampler,
    tuner: &mut AutoTuner,
    windows: usize,
    window: Duration,
) -> Vec<(usize, Duration)> {
    let mut seen = Vec::new();
    for _ in 0..windows {
        tokio::time::sleep(window).await;
        sampler.sample(tokio::time::Instant::now());
        let all: BTreeMap<_, _> = sampler.windows();
        let wait_p90 =
            all.values().next().and_then(|w| w.last()).map(|w| w.wait_p90).unwrap_or_default();
        seen.push((pool.config().pool_size, wait_p90));
        for change in tuner.decide(&all) {
            DynPool::resize(pool, change.pool_size, change.max_overflow)
                .expect("resize within the settings");
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auto_tuner_grows_then_shrinks_a_real_pool_within_its_budget() {
    let mut config = PoolConfig::default();
    config.pool_size = 2;
    config.max_overflow = 0;
    config.pool_timeout = Duration::from_secs(5);
    let pool = PgPool::builder(PgManager::from_url(&postgres_url()).unwrap())
        .name("loop")
        .config(config)
        .build()
        .unwrap();
    let registry = Registry::new();
    registry.register(Arc::new(pool.clone())).unwrap();
    let budget = Budget {
        name: "test server".to_owned(),
        max_connections: 12,
        reserved: 2,
        pools: vec!["postgresql:loop".to_owned()],
    };
    let mut settings = Settings::default();
    settings.wait_target = Duration::from_millis(5);
    settings.recent_windows = 4;
    settings.min_windows = 2;
    let mut tuning = TunerSettings::default();
    tuning.agree = 2;
    tuning.cooldown = 1;
    let mut tuner = AutoTuner::new(tuning, settings, vec![budget]);
    let mut sampler = Sampler::new(registry, 10);
    sampler.sample(tokio::time::Instant::now());

    // Load: `workers` tasks, each holding a connection for 20 ms per query, back to back.
    let workers = Arc::new(AtomicUsize::new(6));
    let mut load = tokio::task::JoinSet::new();
    for id in 0..6 {
        let (pool, workers) = (pool.clone(), Arc::clone(&workers));
        load.spawn(async move {
            loop {
                if id >= workers.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let mut conn = pool.acquire().await.expect("acquire");
                sqlx::query("SELECT pg_sleep(0.02)").execute(&mut *conn).await.expect("query");
            }
        });
    }

    let window = Duration::from_millis(600);
    let grow = run_windows(&pool, &mut sampler, &mut tuner, 14, window).await;
    eprintln!("6 workers: (pool_size, wait p90) per window: {grow:?}");
    let grown = grow.last().unwrap().0;
    assert!(grown >= 6, "grew until the 6 workers stop waiting: {grow:?}");
    assert!(
        grow.iter().all(|(size, _)| *size <= 10),
        "never beyond the budget (12 - 2 reserved): {grow:?}"
    );
    // How long the last waits took is the machine's speed, which a benchmark measures, not a
    // test: the size the tuner reached is what it decided.

    workers.store(1, Ordering::Relaxed);
    let shrink = run_windows(&pool, &mut sampler, &mut tuner, 16, window).await;
    eprintln!("1 worker: (pool_size, wait p90) per window: {shrink:?}");
    let shrunk = shrink.last().unwrap().0;
    assert!(shrunk < grown && shrunk <= 4, "shrank when the load dropped: {shrink:?}");
    assert!(shrunk >= 2, "never below what one worker needs (1 + β√1 → 3, at least 2): {shrink:?}");
    let log: Vec<String> = tuner.log().iter().map(ToString::to_string).collect();
    assert!(
        log.iter().any(|d| d.contains("Grow")) && log.iter().any(|d| d.contains("Shrink")),
        "{log:#?}"
    );
    load.abort_all();
    pool.close().await.ok();
}
