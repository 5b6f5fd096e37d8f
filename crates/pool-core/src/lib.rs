//! `pool-core`: the generic async connection-pool engine.
//!
//! A backend implements [`Manager`] (connect, check, reset); [`ConnectionPool`] does the rest:
//! fair FIFO waiters with direct handoff, overflow, lifetimes with jitter, pre-ping with an idle
//! bypass window, warm-up (in the background, or awaited with [`ConnectionPool::warmed`]), idle
//! timeout, a maintenance task, bounded concurrent connects with backoff, leak detection that
//! names the caller's line (wrappers pass theirs with [`ConnectionPool::acquire_for_caller`]),
//! runtime resize, close, and stats kept with atomics.
//!
//! Upper layers (metrics, optimizer, admin) hold pools as `Arc<dyn DynPool>` in a [`Registry`], so
//! they work with any backend.
//!
//! # Examples
//!
//! ```
//! use pool_core::{ConnectionPool, testing::TestManager};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = ConnectionPool::builder(TestManager::new()).name("main").pool_size(4).build()?;
//! let conn = pool.acquire().await?;
//! assert_eq!(pool.stats().in_use, 1);
//! drop(conn); // back to the pool
//! pool.close().await?;
//! # Ok(()) }
//! ```

mod clock;
mod config;
mod credentials;
mod dyn_pool;
mod error;
mod guard;
mod manager;
mod observer;
mod pool;
mod redact;
mod registry;
mod settings;
mod stats;
#[cfg(feature = "testing")]
pub mod testing;

pub use crate::config::{
    Builder, MAX_DURATION, NumberError, PoolConfig, parse_count, parse_seconds,
};
pub use crate::credentials::{
    CachedCredentials, Credential, CredentialError, CredentialProvider, FileCredentials,
    FnCredentials, StaticCredentials,
};
pub use crate::dyn_pool::{DynPool, Health};
pub use crate::error::{
    AcquireError, BuildError, CloseError, ConnectError, LookupError, ObserveError, RegisterError,
    ResizeError, TimeoutError, TryAcquireError, UnavailableError, WarmError,
};
pub use crate::guard::PooledConnection;
pub use crate::manager::Manager;
pub use crate::observer::Observer;
pub use crate::pool::{ConnectionPool, PoolState};
pub use crate::redact::{is_url, redact_url};
pub use crate::registry::{Registry, pool_id};
#[cfg(feature = "serde")]
pub use crate::settings::seconds;
pub use crate::settings::{EnvError, EnvForm, EnvValue, EnvVar, Seconds, Secret, apply_env};
pub use crate::stats::{
    CloseReason, ClosedCounts, HISTOGRAM_BOUNDS, HistogramSnapshot, PoolStats, Routing,
};
