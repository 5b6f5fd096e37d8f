//! [`RedisStats`]: one pool's numbers with redis-py's meanings, plus the engine's.

use pool_core::PoolStats;

/// One Redis pool's stats: redis-py's three numbers, the shared clients, and the engine's full
/// [`PoolStats`] for the exclusive connections (what the [`Pool`](pool_core::Pool) trait
/// reports).
///
/// # Consistency
///
/// Read without stopping the pool, like [`PoolStats`]: each number is exact when read, but
/// they may disagree by operations in flight.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RedisStats {
    /// The pool's name.
    pub name: String,
    /// Exclusive connections checked out now (redis-py's `_in_use_connections`).
    pub in_use: usize,
    /// Exclusive connections idle in the pool now (redis-py's `_available_connections`).
    pub available: usize,
    /// Connections open now, exclusive and shared (redis-py's `_created_connections`, which
    /// counts connections made and not yet closed); the engine's lifetime count of opened
    /// connections is `engine.connections_created`.
    pub created: usize,
    /// The most exclusive connections the pool may open (`max_connections`).
    pub max_connections: usize,
    /// Shared clients configured.
    pub shared_clients: usize,
    /// Shared clients connected now.
    pub shared_connected: usize,
    /// Commands retried after a timeout (`retry_on_timeout`).
    pub retries: u64,
    /// Shared-client heartbeats that failed or timed out.
    pub heartbeat_failures: u64,
    /// The engine's stats for the exclusive connections.
    pub engine: PoolStats,
}
