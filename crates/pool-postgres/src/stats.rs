//! [`ClusterStats`] and [`ReplicaStats`]: a cluster's routing counters and replica health.
//! Each pool's own stats come from its [`Pool`](pool_core::Pool).

use std::time::Duration;

use crate::token::Lsn;

/// A snapshot of a cluster's routing counters and of each replica's health.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// The cluster's name (its primary pool's name).
    pub name: String,
    /// Reads sent to the primary because no replica was usable (or had replayed their token).
    pub fallbacks: u64,
    /// Of those, reads carrying a causal token.
    pub causal_primary_reads: u64,
    /// Each replica, in order.
    pub replicas: Vec<ReplicaStats>,
}

/// One replica's routing counters and health.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// The replica pool's name (`main-replica-1`...).
    pub pool: String,
    /// Reads routed to it.
    pub reads: u64,
    /// Whether it is banned now.
    pub banned: bool,
    /// While banned, how long until it may be tried again.
    pub ban_remaining: Option<Duration>,
    /// How many times it was banned.
    pub bans: u64,
    /// Whether it is skipped for lag now.
    pub lagging: bool,
    /// Its replay lag at the last probe.
    pub lag: Option<Duration>,
    /// WAL bytes between the primary's position and its replay position at the last probe.
    pub lag_bytes: Option<u64>,
    /// Its replay position (`pg_last_wal_replay_lsn()`) at the last probe or causal check.
    pub replay_lsn: Option<Lsn>,
    /// The last error that banned it.
    pub last_error: Option<String>,
}
