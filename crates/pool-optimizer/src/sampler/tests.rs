//! The sampler against a real engine pool with the in-memory test manager.

use std::sync::Arc;
use std::time::Duration;

use pool_core::testing::TestManager;
use pool_core::{ConnectionPool, DynPool, Registry};
use tokio::time::Instant;

use super::*;

#[tokio::test]
async fn windows_count_releases_and_are_numbered_skipping_stats_resets() {
    let pool =
        ConnectionPool::builder(TestManager::new()).name("main").pool_size(2).build().unwrap();
    let registry = Registry::new();
    registry.register(Arc::new(pool.clone())).unwrap();
    let mut sampler = Sampler::new(registry, 10);
    let start = Instant::now();
    let at = |secs| start + Duration::from_secs(secs);
    let seqs = |s: &Sampler| -> Vec<(u64, u64, u64)> {
        s.windows()["test:main"].iter().map(|w| (w.seq, w.checkouts, w.releases)).collect()
    };

    sampler.sample(at(0));
    assert!(sampler.windows().is_empty(), "one snapshot makes no window");
    // Two checkouts, one of them still held at the next sample: one release.
    drop(pool.acquire().await.unwrap());
    let held = pool.acquire().await.unwrap();
    sampler.sample(at(10));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1)]);
    drop(held);
    sampler.sample(at(20));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1)]);

    // After a reset the counters go backwards: no window, and no number used up.
    drop(pool.acquire().await.unwrap());
    DynPool::reset_stats(&pool);
    sampler.sample(at(30));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1)]);
    drop(pool.acquire().await.unwrap());
    sampler.sample(at(40));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1), (3, 1, 1)]);

    // A reset followed by more checkouts than the last window saw: no counter went backwards,
    // and still no window spans the reset.
    DynPool::reset_stats(&pool);
    for _ in 0..3 {
        drop(pool.acquire().await.unwrap());
    }
    sampler.sample(at(50));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1), (3, 1, 1)]);
    drop(pool.acquire().await.unwrap());
    sampler.sample(at(60));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1), (3, 1, 1), (4, 1, 1)]);
}

/// One 30-minute hold returned among steady 50 ms holds moves the advice by no more
/// than the one connection it kept busy. Two pools under the same steady load (13 callers, each
/// holding a connection 50 ms at a time: 260 checkouts/s, 13 connections busy), one of them
/// with a connection also held from 30 minutes before the load to halfway through it.
#[tokio::test(start_paused = true)]
async fn one_long_hold_moves_the_advice_by_no_more_than_its_own_connection() {
    let registry = Registry::new();
    let pool = |name: &str| {
        // The pools read the paused clock too, so their in-use time spans the half hour.
        let pool = ConnectionPool::builder(TestManager::new())
            .tokio_clock()
            .name(name)
            .pool_size(40)
            .max_overflow(0)
            .build()
            .unwrap();
        registry.register(Arc::new(pool.clone())).unwrap();
        pool
    };
    let (steady, outlier) = (pool("steady"), pool("outlier"));
    let long = outlier.acquire().await.unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        drop(long);
    });
    // The load runs for six 10 s windows, from 35 s before the long hold comes back.
    tokio::time::sleep(Duration::from_secs(30 * 60 - 35)).await;
    let load_ends = Instant::now() + Duration::from_secs(60);
    for pool in [&steady, &outlier] {
        for _ in 0..13 {
            let pool = pool.clone();
            tokio::spawn(async move {
                while Instant::now() < load_ends {
                    let conn = pool.acquire().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    drop(conn);
                }
            });
        }
    }
    let mut sampler = Sampler::new(registry, 10);
    for _ in 0..7 {
        sampler.sample(Instant::now());
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let windows = sampler.windows();
    let recs = crate::analyze(&windows, &crate::Settings::default(), &[]);
    let proposed = |pool: &str| {
        recs.iter()
            .find(|r| r.pool == format!("test:{pool}"))
            .and_then(|r| r.proposed)
            .map(|s| s.pool_size)
    };
    let text: Vec<String> = recs.iter().map(ToString::to_string).collect();
    let (steady, outlier) = (proposed("steady"), proposed("outlier"));
    assert!(steady.is_some_and(|n| (19..=21).contains(&n)), "{text:#?}");
    assert!(
        outlier.zip(steady).is_some_and(|(o, s)| o.abs_diff(s) <= 1),
        "the long hold bent the advice: {text:#?}"
    );
}
