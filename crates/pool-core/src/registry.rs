//! [`Registry`]: named pools, as `Arc<dyn Pool>`, shared by metrics, optimizer and admin.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::dyn_pool::Pool;
use crate::error::RegisterError;

/// A set of pools by name, cheap to clone (clones share the set). Iteration is by name.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use pool_core::{ConnectionPool, Registry, testing::TestManager};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let registry = Registry::new();
/// registry.register(Arc::new(ConnectionPool::builder(TestManager::new()).name("main").build()?))?;
/// assert_eq!(registry.get("main").unwrap().backend(), "test");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pools: Arc<RwLock<BTreeMap<String, Arc<dyn Pool>>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a pool under its name.
    ///
    /// # Errors
    ///
    /// [`RegisterError::Duplicate`] when a pool with that name is registered already.
    pub fn register(&self, pool: Arc<dyn Pool>) -> Result<(), RegisterError> {
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        let name = pool.name().to_owned();
        if pools.contains_key(&name) {
            return Err(RegisterError::Duplicate(name));
        }
        pools.insert(name, pool);
        Ok(())
    }

    /// The pool with this name.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Pool>> {
        self.pools.read().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// Removes and returns the pool with this name.
    pub fn remove(&self, name: &str) -> Option<Arc<dyn Pool>> {
        self.pools.write().unwrap_or_else(PoisonError::into_inner).remove(name)
    }

    /// Every pool, ordered by name.
    pub fn pools(&self) -> Vec<Arc<dyn Pool>> {
        self.pools.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Every pool's name, in order.
    pub fn names(&self) -> Vec<String> {
        self.pools.read().unwrap_or_else(PoisonError::into_inner).keys().cloned().collect()
    }

    /// How many pools are registered.
    pub fn len(&self) -> usize {
        self.pools.read().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no pool is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
