//! [`RedisStats`]: one pool's numbers with redis-py's meanings, plus the engine's.

use pool_core::PoolStats;

/// One Redis pool's stats: redis-py's three numbers, the shared clients, and the engine's full
/// [`PoolStats`] for the exclusive connections (what the [`DynPool`](pool_core::DynPool) trait
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
    /// Connections open now (redis-py's `_created_connections`, which counts connections made
    /// and not yet closed): the exclusive connections open (connects still in flight left out)
    /// plus the shared clients connected now (`shared_connected`, not `shared_clients`: a client
    /// that is reconnecting has no socket). The admin API reports the two apart: the exclusive
    /// part as `created_connections`, the shared clients as `shared_connected`.
    /// The engine's lifetime count of opened connections is `engine.connections_created`.
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

/// [`RedisStats::created`] from the engine's stats of the exclusive connections and the number
/// of shared clients connected now.
pub(crate) fn created(engine: &PoolStats, shared_connected: usize) -> usize {
    engine.open.saturating_sub(engine.connecting) + shared_connected
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects in flight and disconnected shared clients have no socket, so they are not
    /// counted.
    #[test]
    fn created_counts_open_exclusive_connections_and_connected_shared_clients() {
        let mut engine = PoolStats::default();
        (engine.open, engine.connecting) = (5, 2);
        assert_eq!(created(&engine, 1), 4);
        assert_eq!(created(&engine, 0), 3, "a reconnecting shared client is not open");
        (engine.open, engine.connecting) = (0, 0);
        assert_eq!(created(&engine, 2), 2);
    }
}
