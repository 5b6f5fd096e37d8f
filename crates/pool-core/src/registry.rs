//! [`Registry`]: named pools, as `Arc<dyn DynPool>`, shared by metrics, optimizer and admin.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use crate::dyn_pool::DynPool;
use crate::error::{LookupError, RegisterError};

/// A set of pools, cheap to clone (clones share the set).
///
/// A pool is identified by its backend and its name: a PostgreSQL pool and a Redis pool may
/// both be called `main`. Its id is `backend:name` (`postgresql:main`, `redis:main`); lookups
/// take an id, or a bare name when only one backend uses it. Iteration is by name, then backend.
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
/// assert_eq!(registry.get("test:main").unwrap().name(), "main");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pools: Arc<RwLock<Pools>>,
}

/// Pools by (name, backend).
type Pools = BTreeMap<(String, &'static str), Arc<dyn DynPool>>;

/// A pool's id in a registry: `backend:name`.
pub fn pool_id(pool: &dyn DynPool) -> String {
    format!("{}:{}", pool.backend(), pool.name())
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a pool.
    ///
    /// # Errors
    ///
    /// [`RegisterError::Duplicate`] when a pool of the same backend and name is registered.
    pub fn register(&self, pool: Arc<dyn DynPool>) -> Result<(), RegisterError> {
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        let key = (pool.name().to_owned(), pool.backend());
        if pools.contains_key(&key) {
            return Err(RegisterError::Duplicate(pool_id(pool.as_ref())));
        }
        pools.insert(key, pool);
        Ok(())
    }

    /// The pool with this id (`backend:name`), or this name when only one backend uses it.
    pub fn get(&self, id: &str) -> Option<Arc<dyn DynPool>> {
        self.resolve(id).ok()
    }

    /// Like [`get`](Self::get), saying why nothing was found.
    ///
    /// # Errors
    ///
    /// [`LookupError::NotFound`], or [`LookupError::Ambiguous`] for a bare name that pools of
    /// several backends share.
    pub fn resolve(&self, id: &str) -> Result<Arc<dyn DynPool>, LookupError> {
        let pools = self.pools.read().unwrap_or_else(PoisonError::into_inner);
        if let Some((backend, name)) = id.split_once(':')
            && let Some(pool) =
                pools.iter().find(|((n, b), _)| n == name && *b == backend).map(|(_, p)| p)
        {
            return Ok(Arc::clone(pool));
        }
        let named: Vec<&Arc<dyn DynPool>> =
            pools.iter().filter(|((n, _), _)| n == id).map(|(_, p)| p).collect();
        match named.as_slice() {
            [] => Err(LookupError::NotFound(id.to_owned())),
            [one] => Ok(Arc::clone(one)),
            many => Err(LookupError::Ambiguous {
                name: id.to_owned(),
                ids: many.iter().map(|p| pool_id(p.as_ref())).collect(),
            }),
        }
    }

    /// Removes and returns the pool with this id (or unique name).
    pub fn remove(&self, id: &str) -> Option<Arc<dyn DynPool>> {
        let pool = self.get(id)?;
        let mut pools = self.pools.write().unwrap_or_else(PoisonError::into_inner);
        pools.remove(&(pool.name().to_owned(), pool.backend()))
    }

    /// Every pool, ordered by name, then backend.
    pub fn pools(&self) -> Vec<Arc<dyn DynPool>> {
        self.pools.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect()
    }

    /// Every pool's id (`backend:name`), in the same order.
    pub fn ids(&self) -> Vec<String> {
        self.pools().iter().map(|p| pool_id(p.as_ref())).collect()
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
