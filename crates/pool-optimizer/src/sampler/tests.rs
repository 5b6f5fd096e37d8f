//! The sampler against a real engine pool with the in-memory test manager.

use std::sync::Arc;
use std::time::Duration;

use pool_core::testing::TestManager;
use pool_core::{ConnectionPool, Pool, Registry};
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
    Pool::reset_stats(&pool);
    sampler.sample(at(30));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1)]);
    drop(pool.acquire().await.unwrap());
    sampler.sample(at(40));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1), (3, 1, 1)]);

    // A reset followed by more checkouts than the last window saw: no counter went backwards,
    // and still no window spans the reset.
    Pool::reset_stats(&pool);
    for _ in 0..3 {
        drop(pool.acquire().await.unwrap());
    }
    sampler.sample(at(50));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1), (3, 1, 1)]);
    drop(pool.acquire().await.unwrap());
    sampler.sample(at(60));
    assert_eq!(seqs(&sampler), vec![(1, 2, 1), (2, 0, 1), (3, 1, 1), (4, 1, 1)]);
}
