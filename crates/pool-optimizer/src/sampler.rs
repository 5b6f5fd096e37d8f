//! [`Sampler`]: stats snapshots of every pool at a fixed interval, kept as a bounded history
//! of windows per pool.

use std::collections::{BTreeMap, HashMap, VecDeque};

use pool_core::{PoolStats, Registry, pool_id};
use tokio::time::Instant;

use crate::window::Window;

/// Samples every pool of a registry and keeps the last `capacity` windows of each.
///
/// The caller decides when to sample (the [`AutoTuner`](crate::AutoTuner)'s loop does it on a
/// timer); the sampler only reads the clock it is given.
#[derive(Debug)]
pub struct Sampler {
    pools: Registry,
    capacity: usize,
    last: HashMap<String, (Instant, PoolStats)>,
    windows: BTreeMap<String, VecDeque<Window>>,
    /// Windows taken per pool, the source of [`Window::seq`]. Kept when a pool is forgotten, so
    /// a pool that comes back goes on counting and the tuner never mistakes one of its new
    /// windows for one it has already decided on.
    taken: HashMap<String, u64>,
}

impl Sampler {
    /// A sampler over `pools` keeping `capacity` windows per pool (at least one).
    pub fn new(pools: Registry, capacity: usize) -> Self {
        Sampler {
            pools,
            capacity: capacity.max(1),
            last: HashMap::new(),
            windows: BTreeMap::new(),
            taken: HashMap::new(),
        }
    }

    /// Takes a snapshot of every pool at `now` and appends a window per pool seen before,
    /// numbered by [`Window::seq`]. No window is added for a pool whose stats were reset since
    /// the last snapshot. Pools gone from the registry are forgotten.
    pub fn sample(&mut self, now: Instant) {
        let pools = self.pools.pools();
        let names: Vec<String> = pools.iter().map(|p| pool_id(p.as_ref())).collect();
        self.last.retain(|name, _| names.contains(name));
        self.windows.retain(|name, _| names.contains(name));
        for pool in pools {
            let stats = pool.stats();
            let name = pool_id(pool.as_ref());
            if let Some((at, before)) = self.last.get(&name)
                && let Some(mut window) = Window::between(before, &stats, now.duration_since(*at))
            {
                window.pool.clone_from(&name);
                let taken = self.taken.entry(name.clone()).or_default();
                *taken += 1;
                window.seq = *taken;
                let windows = self.windows.entry(name.clone()).or_default();
                if windows.len() == self.capacity {
                    windows.pop_front();
                }
                windows.push_back(window);
            }
            self.last.insert(name, (now, stats));
        }
    }

    /// Every pool's windows, oldest first, keyed by pool id (`backend:name`, as
    /// [`pool_core::pool_id`] makes it; recommendations name pools the same way).
    pub fn windows(&self) -> BTreeMap<String, Vec<Window>> {
        self.windows.iter().map(|(k, v)| (k.clone(), v.iter().cloned().collect())).collect()
    }

    /// The registry sampled.
    pub fn pools(&self) -> &Registry {
        &self.pools
    }
}

#[cfg(test)]
mod tests;
