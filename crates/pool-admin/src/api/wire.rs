//! The admin API's wire format, said once: every request and response body as a serde type.
//! The server sends these, the `pool-admin monitor` client reads them, and the OpenAPI document
//! ([`openapi`](crate::openapi)) is derived from them, field descriptions included.
//!
//! Every pool is named by its id, `backend:name` (`postgresql:main`, `redis:cache`, as
//! [`pool_core::pool_id`] gives it), wherever a response names one: the keys of the stats, health,
//! optimize and config maps, and the `pool` of recommendations, decisions, replicas and resizes.
//! Durations are seconds, as JSON numbers. Responses may gain fields; a client should ignore those
//! it does not know (these types do).

use std::collections::BTreeMap;

use pool_core::HISTOGRAM_BOUNDS;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error answer, with the status that says which kind: 400 (a body that is not JSON), 401
/// (a missing or wrong token), 404 (no such route or pool), 405 (a method the route does not
/// serve; the `Allow` header lists those it does), 409 (a name shared by pools of several
/// backends), 413 (a body over 16 KiB), 415 (a body that is not `application/json`), 422 (a
/// body that is JSON but not the request, or a request the pool or its connection budget
/// refuses); and, from `pool-admin serve` only, 408 (a request not answered within the
/// server's `request_timeout`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Error {
    /// What was wrong, in words.
    pub error: String,
    /// The pool the error is about: its id when the request named a pool that exists (a refused
    /// resize), else the name as the request gave it (an unknown or ambiguous name); null when the
    /// error concerns no pool.
    #[schema(required = true)]
    pub pool: Option<String>,
}

/// `GET stats`: every pool's numbers by backend, replica state and the optimizer's advice.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct StatsResponse {
    /// Every pool that is not a Redis pool (PostgreSQL's primaries and replicas), by pool id
    /// (`postgresql:main`, `postgresql:main-replica-1`).
    pub database_pools: BTreeMap<String, PoolStats>,
    /// Every Redis pool, by pool id (`redis:cache`).
    pub redis_pools: BTreeMap<String, RedisPoolStats>,
    /// Replica routing and health per PostgreSQL cluster.
    pub replication: Replication,
    /// The optimizer's current recommendations, as `GET optimize` gives them.
    pub recommendations: Vec<Recommendation>,
}

/// One pool's numbers, read without stopping the pool: each is exact when read, but they may
/// disagree by operations in flight. Counters, peaks and histograms count since the pool's
/// last reset (`POST reset-stats`); the others are the pool's state now.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct PoolStats {
    /// The pool's backend: `postgresql`, `redis`, or another backend's name.
    pub backend: String,
    /// Connections checked out by callers now.
    pub active_connections: usize,
    /// Most connections checked out at once since the last reset.
    pub peak_connections: usize,
    /// Connections opened since the last reset.
    pub connections_created: u64,
    /// Connections closed since the last reset, for any reason (`closed_by_reason` splits them).
    pub connections_closed: u64,
    /// Mean wait of the successful acquires since the last reset, in seconds (0 when served
    /// from the idle list without waiting).
    pub average_wait_time: f64,
    /// Connections the pool keeps open (setting).
    pub pool_size: usize,
    /// Open connections beyond `pool_size` now; right after a shrink, those still closing count
    /// too.
    pub overflow: usize,
    /// Extra connections the pool may open under load (setting): at most `pool_size +
    /// max_overflow` are open at once.
    pub max_overflow: usize,
    /// Warm connections the pool keeps open while idle (the effective setting).
    pub min_idle: usize,
    /// Connections idle in the pool now, ready to be checked out.
    pub idle_connections: usize,
    /// Connections open now, as the pool counts them against `pool_size + max_overflow`: in use,
    /// idle, being checked or reset by the pool, being opened, or being closed. So
    /// `active_connections + idle_connections <= open_connections`, which exceeds `pool_size +
    /// max_overflow` only right after a shrink, while the connections beyond it close.
    pub open_connections: usize,
    /// Callers waiting for a connection now.
    pub waiting: usize,
    /// Most callers waiting at once since the last reset.
    pub peak_waiting: usize,
    /// Successful acquires (checkouts) since the last reset.
    pub acquires: u64,
    /// Acquires that timed out (`pool_timeout`) since the last reset.
    pub timeouts: u64,
    /// Connect attempts that failed or timed out since the last reset.
    pub connect_errors: u64,
    /// Connections held past `leak_detection_threshold` since the last reset.
    pub leaks_detected: u64,
    /// Whether the pool's circuit breaker is open now: connects or checks failed
    /// `breaker_threshold` times in a row, and acquires that find nothing idle fail at once
    /// until a probe connects.
    pub breaker_open: bool,
    /// Times the circuit breaker opened since the last reset.
    pub breaker_opens: u64,
    /// Acquires the open circuit breaker failed at once since the last reset.
    pub breaker_rejections: u64,
    /// Connections closed since the last reset, by reason (`expired`, `idle`, `broken`...);
    /// the values add up to `connections_closed`.
    pub closed_by_reason: BTreeMap<String, u64>,
    /// Median wait of the successful acquires since the last reset, in seconds (interpolated
    /// inside its `wait_time_histogram` bucket).
    pub wait_time_p50: f64,
    /// 99th percentile wait of the successful acquires since the last reset, in seconds
    /// (interpolated inside its `wait_time_histogram` bucket).
    pub wait_time_p99: f64,
    /// Every successful acquire's wait since the last reset, by bucket.
    pub wait_time_histogram: Histogram,
    /// Mean time a connection was held by its user, over the holds that ended since the last
    /// reset, in seconds.
    pub use_time_mean: f64,
    /// 99th percentile of the same holds, in seconds.
    pub use_time_p99: f64,
    /// Mean time a successful connect took since the last reset, in seconds.
    pub connect_time_mean: f64,
}

/// A distribution of durations by bucket (not cumulative): `counts[i]` values took at most
/// `bounds[i]` seconds and more than `bounds[i-1]`; the last count, one more than the bounds,
/// holds the values above every bound. The difference of two readings is the distribution
/// between them (the dashboard's wait p99 chart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Histogram {
    /// The buckets' upper bounds in seconds, inclusive, ascending; the same for every pool.
    pub bounds: Vec<f64>,
    /// How many values fell in each bucket: one more entry than `bounds`.
    pub counts: Vec<u64>,
}

impl Default for Histogram {
    /// Empty buckets over the engine's bounds.
    fn default() -> Self {
        Histogram { bounds: HISTOGRAM_BOUNDS.to_vec(), counts: vec![0; HISTOGRAM_BOUNDS.len() + 1] }
    }
}

/// A Redis pool's numbers: the engine's numbers of its exclusive connections (those checked
/// out one caller at a time), then redis-py's names for four of them, and its shared clients
/// (multiplexed connections that every caller uses at once, never checked out, outside
/// `pool_size` and `max_overflow`).
///
/// `in_use_connections + available_connections <= created_connections`: the rest of
/// `created_connections` are connections the pool holds for a check, a reset or a close. And
/// `created_connections <= max_connections`, but right after a shrink, until the connections
/// beyond the new size come back and close. The shared clients are counted apart, in
/// `shared_clients` and `shared_connected`: a Redis server sees `created_connections +
/// shared_connected` clients from the pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct RedisPoolStats {
    /// The engine's numbers of the exclusive connections.
    #[serde(flatten)]
    pub pool: PoolStats,
    /// Exclusive connections checked out now (redis-py's `_in_use_connections`; the same as
    /// `active_connections`).
    pub in_use_connections: usize,
    /// Exclusive connections idle in the pool now (redis-py's `_available_connections`; the
    /// same as `idle_connections`).
    pub available_connections: usize,
    /// Exclusive connections open now (redis-py's `_created_connections`: made and not yet
    /// closed): in use, idle, or being checked, reset or closed by the pool; connects still in
    /// flight are left out. Shared clients are not counted here.
    pub created_connections: usize,
    /// The most exclusive connections the pool may open: `pool_size + max_overflow`
    /// (redis-py's `max_connections`, as the pool's `max_connections` setting says).
    pub max_connections: usize,
    /// Shared clients configured (`shared_clients`); null when the router was given the Redis
    /// pool only through the registry, which does not show shared clients.
    #[schema(required = true)]
    pub shared_clients: Option<usize>,
    /// Shared clients connected now (a reconnecting one has no socket); null as
    /// `shared_clients` is.
    #[schema(required = true)]
    pub shared_connected: Option<usize>,
}

/// Replica routing and health per PostgreSQL cluster, by cluster name (`main`: the name of the
/// cluster's configuration, whose primary is the pool `postgresql:main`). Empty when the
/// router was given no clusters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
pub struct Replication(pub BTreeMap<String, ClusterReplication>);

/// One PostgreSQL cluster's replica routing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct ClusterReplication {
    /// Reads sent to the primary because no replica was usable (banned, lagging, or behind a
    /// causal token). Not zeroed by `reset-stats`.
    pub fallbacks: u64,
    /// Writes a standby refused as read-only (SQLSTATE 25006, a primary address that led to a
    /// standby); each closed its connection. Not zeroed by `reset-stats`.
    pub read_only_errors: u64,
    /// Each replica's state, in the order of the cluster's configuration.
    pub replicas: Vec<Replica>,
}

/// One replica pool's routing counters and health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct Replica {
    /// The replica pool's id (`postgresql:main-replica-1`).
    pub pool: String,
    /// Reads routed to it. Not zeroed by `reset-stats`.
    pub reads: u64,
    /// Whether it is banned now (a failed connect or check): reads skip it until the ban ends.
    pub banned: bool,
    /// Whether its server was promoted (it answers as a primary, not in recovery): reads skip
    /// it until it is a standby again.
    pub promoted: bool,
    /// How many times it was banned. Not zeroed by `reset-stats`.
    pub bans: u64,
    /// Whether plain reads skip it now for replication lag.
    pub lagging: bool,
    /// The largest replay lag behind its address as last measured, in seconds; null before the
    /// first measure.
    #[schema(required = true)]
    pub lag_seconds: Option<f64>,
    /// The most WAL bytes between the primary's position and a replay position behind its
    /// address; null before the first measure.
    #[schema(required = true)]
    pub lag_bytes: Option<u64>,
    /// The last error that banned it; null when none has.
    #[schema(required = true)]
    pub last_error: Option<String>,
}

/// How urgent a recommendation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Act now: callers time out, connects fail, the database saturates or the budget is hit.
    High,
    /// Act soon: waits or overflow cost latency.
    Medium,
    /// Worth doing: connections sit idle.
    Low,
}

/// A pool's size settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Sizes {
    /// Connections kept open.
    pub pool_size: usize,
    /// Extra connections under load.
    pub max_overflow: usize,
}

/// One recommendation of the optimizer for one pool: how urgent, what is wrong, what to
/// change, and the numbers why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct Recommendation {
    /// The pool's id (`postgresql:main`).
    pub pool: String,
    /// How urgent it is.
    pub severity: Severity,
    /// What is wrong (`High wait times`).
    pub issue: String,
    /// What to do (`Increase pool_size to 15`).
    pub suggestion: String,
    /// The pool's sizes when the windows behind it were sampled.
    pub current: Sizes,
    /// The sizes proposed; null when the recommendation is not a resize.
    #[schema(required = true)]
    pub proposed: Option<Sizes>,
    /// The numbers it was decided from.
    pub evidence: Evidence,
}

/// The numbers a recommendation or an auto-tuner decision was decided from, over the pool's
/// latest sampling windows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct Evidence {
    /// Windows read.
    pub windows: usize,
    /// Checkouts per second, mean over the windows.
    pub checkouts_per_sec: f64,
    /// Mean hold time over the holds that ended in the windows, in seconds.
    pub hold_mean: f64,
    /// 90th percentile hold time (largest of the windows), in seconds.
    pub hold_p90: f64,
    /// 90th percentile wait (largest of the windows), in seconds.
    pub wait_p90: f64,
    /// 99th percentile wait (largest of the windows), in seconds.
    pub wait_p99: f64,
    /// Acquires that timed out, in all the windows.
    pub timeouts: u64,
    /// Connect errors, in all the windows.
    pub connect_errors: u64,
    /// Connections busy on average in the busiest window.
    pub busy: f64,
    /// Connections the load needs: `busy` plus a margin for its variance, rounded up.
    pub needed: usize,
    /// Smallest idle share of the windows (0 to 1).
    pub idle_share: f64,
    /// Share of the windows that ended with overflow connections open (0 to 1).
    pub overflow_share: f64,
    /// Hold time per checkout of the newer half of the windows over the older half (1 is flat).
    pub hold_trend: f64,
    /// Checkouts per second of the newer half of the windows over the older half (1 is flat).
    pub load_trend: f64,
}

/// `GET health`: an active round trip on every pool, and replica bans and lag. Served with
/// 200 when `status` is `healthy`, 503 when it is `unhealthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct HealthResponse {
    /// `healthy` when every pool answered its check and no replica is banned or lagging.
    pub status: HealthStatus,
    /// Each pool's check, by pool id.
    pub pools: BTreeMap<String, PoolHealth>,
    /// Replica routing and health per PostgreSQL cluster, as in `GET stats`.
    pub replication: Replication,
}

/// The health route's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every pool answered its check, and no replica is banned or lagging.
    Healthy,
    /// At least one pool failed its check, or a replica is banned or lagging.
    Unhealthy,
}

/// One pool's health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct PoolHealth {
    /// Whether the check's round trip succeeded within the server's `health_timeout` (and, for
    /// a replica, it is neither banned nor lagging).
    pub healthy: bool,
    /// How long the check took, in seconds.
    pub latency_seconds: f64,
    /// Why it is not healthy; null when it is.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// `GET optimize`: the optimizer's recommendations, its windows and the auto-tuner's
/// decisions.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct OptimizeResponse {
    /// The current recommendations. A pool resized since its newest window gets no resize
    /// proposal until windows at its new size come in.
    pub recommendations: Vec<Recommendation>,
    /// Sampling windows held per pool id (the optimizer keeps the latest 30).
    pub windows: BTreeMap<String, usize>,
    /// The auto-tuner's latest decisions, oldest first (the last 100 are kept; empty when
    /// `auto_tune` is off).
    pub auto_tuner_decisions: Vec<Decision>,
}

/// What the auto-tuner did about one pool in one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Raised `pool_size`.
    Grow,
    /// Lowered `pool_size`.
    Shrink,
    /// Undid a step up that did not pay off.
    StepBack,
    /// Changed nothing.
    Hold,
}

/// One auto-tuner decision with its inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct Decision {
    /// The pool's id.
    pub pool: String,
    /// How many windows the pool had been sampled in when it was taken.
    pub window: usize,
    /// What was done.
    pub action: Action,
    /// `pool_size` before.
    pub from: usize,
    /// `pool_size` after.
    pub to: usize,
    /// Why, in words.
    pub reason: String,
    /// The analysis's numbers, when a recommendation drove the decision; null otherwise.
    #[schema(required = true)]
    pub evidence: Option<Evidence>,
}

/// `GET config`: every pool's live settings, and the configuration the server loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct ConfigResponse {
    /// Each pool's settings in force now, by pool id.
    pub pools: BTreeMap<String, PoolSettings>,
    /// The loaded configuration, secrets redacted; null when the router is embedded without
    /// one.
    #[schema(value_type = Option<Object>, required = true)]
    pub source: serde_json::Value,
}

/// One pool's settings in force now (a resize shows here at once). Durations in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct PoolSettings {
    /// The pool's backend.
    pub backend: String,
    /// Connections kept open.
    pub pool_size: usize,
    /// Extra connections opened under load and retired once idle for `idle_timeout`.
    pub max_overflow: usize,
    /// How long an acquire may wait in all.
    pub pool_timeout: f64,
    /// How long one connect, check, reset or close may take.
    pub connect_timeout: f64,
    /// Maximum lifetime of a connection; null keeps connections forever.
    #[schema(required = true)]
    pub pool_recycle: Option<f64>,
    /// Negative jitter of each connection's lifetime, as a fraction of `pool_recycle` (0 to 1).
    pub recycle_jitter: f64,
    /// Whether a connection idle longer than `pre_ping_bypass` is checked before it is handed
    /// out.
    pub pool_pre_ping: bool,
    /// A connection used within this long is handed out without a check.
    pub pre_ping_bypass: f64,
    /// Whether the most recently returned idle connection is handed out first (else the
    /// oldest).
    pub pool_use_lifo: bool,
    /// Warm connections kept open while idle (the effective setting: `pool_size` when unset).
    pub min_idle: usize,
    /// Idle connections beyond `min_idle` are retired after this long; null never.
    #[schema(required = true)]
    pub idle_timeout: Option<f64>,
    /// Period of the maintenance task's checks; null turns them off.
    #[schema(required = true)]
    pub health_check_interval: Option<f64>,
    /// At most this many connects in flight at once.
    pub max_connecting: usize,
    /// A connection held longer than this is reported as a leak; null turns it off.
    #[schema(required = true)]
    pub leak_detection_threshold: Option<f64>,
    /// The backend's own settings of the pool as configured, secrets redacted: for PostgreSQL
    /// its cluster's (`url`, `replicas`, `reset_on_return`, `max_replica_lag`, `replica_ban`,
    /// `replica_timeout`, `lag_probe_interval`, `connection_budget`; a replica's pool shows its
    /// cluster's), for Redis the pool's own (`max_connections`, `shared_clients`,
    /// `socket_keepalive`, `tcp_user_timeout`, `retry_on_timeout`, `command_timeout`,
    /// `shared_command_timeout`, `max_reconnect_delay`, `tls_ca_cert`, `tls_cert`, `tls_key`,
    /// `password_file`: paths, not the files' contents; `connect_commands`), durations in
    /// seconds with 0 for off. Absent
    /// when the router was given no configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub backend_settings: Option<serde_json::Map<String, serde_json::Value>>,
}

/// `POST reset-stats`'s body, which may be left out (or empty) to reset every pool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The pool to reset: an id (`postgresql:main`) or a name that only one backend uses. Left
    /// out, every pool is reset; `null` is refused (422).
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub pool: Option<String>,
}

/// `POST reset-stats`'s answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct ResetResponse {
    /// The ids of the pools whose counters, histograms and peaks were zeroed.
    pub reset: Vec<String>,
}

/// `POST pools/{pool}/resize`'s body. A count may be written as a number with no fraction
/// (`4.0`), which JSON Schema reads as the integer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// The new `pool_size`: connections kept open. `pool_size + max_overflow` may be at most
    /// 100000, and no more than the pool's connection budgets hold: the pool and its budgets
    /// refuse other sizes (422).
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 1, maximum = 100_000)]
    pub pool_size: usize,
    /// The new `max_overflow`: extra connections under load. Left out, the pool's own is kept;
    /// `null` is refused (422).
    #[serde(default, deserialize_with = "some_whole", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, maximum = 100_000)]
    pub max_overflow: Option<usize>,
}

/// `POST pools/{pool}/resize`'s answer: the sizes in force now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[non_exhaustive]
pub struct ResizeResponse {
    /// The resized pool's id.
    pub pool: String,
    /// Its `pool_size` now.
    pub pool_size: usize,
    /// Its `max_overflow` now.
    pub max_overflow: usize,
}

/// A field that may be left out but, when given, is a `T`: `null` is refused.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// A count as JSON writes it: an integer, or a number with no fraction (`347.0` is the integer
/// 347 in JSON Schema, so a client that writes numbers as floats is understood).
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    use serde::de::Error as _;
    let n = serde_json::Number::deserialize(d)?;
    if let Some(u) = n.as_u64() {
        return usize::try_from(u).map_err(|_| D::Error::custom(format!("{u} is too large")));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= 0.0 && f < usize::MAX as f64 => Ok(f as usize),
        _ => Err(D::Error::custom(format!("expected a whole number of connections, got {n}"))),
    }
}

/// [`whole`], for a field that may be left out (`null` refused).
fn some_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    whole(d).map(Some)
}
