//! [`ClusterStats`] and [`ReplicaStats`]: a cluster's routing counters and replica health.
//! Each pool's own stats come from its [`DynPool`](pool_core::DynPool).

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
    /// Writes that reached a standby (SQLSTATE 25006 on a server in recovery), on any pool of
    /// the cluster: each failed and closed its connection (counted as its reset on return
    /// finds the server in recovery).
    pub read_only_errors: u64,
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
    /// Whether the lag probe found it promoted (out of recovery, a primary now): out of read
    /// rotation until it is a standby again.
    pub promoted: bool,
    /// Whether it is banned now.
    pub banned: bool,
    /// While banned, how long until it may be tried again.
    pub ban_remaining: Option<Duration>,
    /// How many times it was banned.
    pub bans: u64,
    /// Whether plain reads skip it for lag now: every server seen behind its address lags.
    pub lagging: bool,
    /// The largest replay lag among the servers behind its address, as last measured (by the
    /// lag probe, or by a read on its own connection).
    pub lag: Option<Duration>,
    /// The most WAL bytes between the primary's position and a server's replay position.
    pub lag_bytes: Option<u64>,
    /// The replay position (`pg_last_wal_replay_lsn()`) every server behind its address has
    /// reached, as last measured.
    pub replay_lsn: Option<Lsn>,
    /// How many servers were seen behind its address lately (more than one behind a load
    /// balancer, a Kubernetes Service or a DNS name in front of several standbys).
    pub servers: usize,
    /// The last error that banned it.
    pub last_error: Option<String>,
}
