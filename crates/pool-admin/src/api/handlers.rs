//! The route handlers, each answering with a [`wire`] type and annotated with what it answers
//! (the OpenAPI document is derived from these annotations in `openapi.rs`), and the conversions
//! from the engine's and the optimizer's types to the wire's.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pool_core::{DynPool, HISTOGRAM_BOUNDS, PoolStats, pool_id};
use pool_optimizer::{Action, Decision, Evidence, Recommendation, Severity};
use serde_json::Value;

use super::AdminState;
use super::errors::{ApiError, PoolName, json_body, optional_json_body};
use super::wire;

/// Every pool's stats, by backend, with the optimizer's recommendations
#[utoipa::path(
    get,
    path = "/api/v1/admin/connection-pools/stats",
    operation_id = "stats",
    responses((status = 200, description = "Every pool's numbers", body = wire::StatsResponse)),
)]
pub(super) async fn stats(State(state): State<AdminState>) -> Json<wire::StatsResponse> {
    let mut out = wire::StatsResponse::default();
    for pool in state.inner.registry.pools() {
        let id = pool_id(pool.as_ref());
        if pool.backend() != REDIS {
            out.database_pools.insert(id, pool_stats(&pool.stats()));
            continue;
        }
        // The shared clients are known only when the Redis pools were handed over; their
        // engine's stats are read with them then, so the numbers are one reading.
        #[cfg(feature = "redis")]
        let (s, shared) = match state.inner.redis.as_ref().and_then(|r| r.get(pool.name())) {
            Some(r) => {
                let r = r.stats();
                (r.engine, Some((r.shared_clients, r.shared_connected)))
            }
            None => (pool.stats(), None),
        };
        #[cfg(not(feature = "redis"))]
        let (s, shared): (PoolStats, Option<(usize, usize)>) = (pool.stats(), None);
        let redis = wire::RedisPoolStats {
            in_use_connections: s.in_use,
            available_connections: s.idle,
            created_connections: s.open.saturating_sub(s.connecting),
            max_connections: s.pool_size.saturating_add(s.max_overflow),
            shared_clients: shared.map(|(configured, _)| configured),
            shared_connected: shared.map(|(_, connected)| connected),
            pool: pool_stats(&s),
        };
        out.redis_pools.insert(id, redis);
    }
    out.replication = replication(&state);
    out.recommendations = state.recommendations().iter().map(recommendation).collect();
    Json(out)
}

/// An active round trip on every pool, replica bans and lag
///
/// Each pool's check runs on an idle connection in place (or waits for one like any caller),
/// bounded by the server's `health_timeout`.
#[utoipa::path(
    get,
    path = "/api/v1/admin/connection-pools/health",
    operation_id = "health",
    responses(
        (status = 200, description = "Every pool is healthy", body = wire::HealthResponse),
        (status = 503, description = "At least one pool or replica is not healthy", body = wire::HealthResponse),
    ),
)]
pub(super) async fn health(State(state): State<AdminState>) -> Response {
    let timeout = state.inner.health_timeout;
    let mut checks = tokio::task::JoinSet::new();
    for pool in state.inner.registry.pools() {
        checks.spawn(async move {
            let start = tokio::time::Instant::now();
            let id = pool_id(pool.as_ref());
            let check = match tokio::time::timeout(timeout, pool.health()).await {
                Ok(h) => wire::PoolHealth {
                    healthy: h.healthy,
                    latency_seconds: h.latency.as_secs_f64(),
                    error: h.error,
                },
                Err(_) => {
                    // Waiting for a connection the pool cannot open: say why it cannot.
                    let cause = pool
                        .last_connect_error()
                        .map(|e| format!("; last connect error: {e}"))
                        .unwrap_or_default();
                    wire::PoolHealth {
                        healthy: false,
                        latency_seconds: start.elapsed().as_secs_f64(),
                        error: Some(format!("health check timed out after {timeout:?}{cause}")),
                    }
                }
            };
            (id, check)
        });
    }
    let mut pools = BTreeMap::new();
    while let Some(joined) = checks.join_next().await {
        let (id, check) = joined.unwrap_or_else(|e| {
            let error = Some(e.to_string());
            (
                "(health task)".to_owned(),
                wire::PoolHealth { healthy: false, latency_seconds: 0.0, error },
            )
        });
        pools.insert(id, check);
    }
    #[cfg_attr(not(feature = "postgres"), allow(unused_mut))]
    let mut all_healthy = pools.values().all(|p| p.healthy);
    #[cfg(feature = "postgres")]
    for cluster in state.inner.clusters.values() {
        for r in cluster.stats().replicas {
            if r.banned || r.lagging {
                all_healthy = false;
                if let Some(entry) = pools.get_mut(&replica_id(&r.pool)) {
                    entry.healthy = false;
                    entry.error = Some(
                        if r.banned { "replica banned" } else { "replica lagging" }.to_owned(),
                    );
                }
            }
        }
    }
    let body = wire::HealthResponse {
        status: if all_healthy {
            wire::HealthStatus::Healthy
        } else {
            wire::HealthStatus::Unhealthy
        },
        pools,
        replication: replication(&state),
    };
    let status = if all_healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Sizing recommendations with severity and evidence, and the auto-tuner's decisions
#[utoipa::path(
    get,
    path = "/api/v1/admin/connection-pools/optimize",
    operation_id = "optimize",
    responses((status = 200, description = "The optimizer's advice and the tuner's log", body = wire::OptimizeResponse)),
)]
pub(super) async fn optimize(State(state): State<AdminState>) -> Json<wire::OptimizeResponse> {
    let recommendations = state.recommendations().iter().map(recommendation).collect();
    let auto_tuner_decisions = state
        .inner
        .decisions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(decision)
        .collect();
    let windows = state.windows().into_iter().map(|(k, v)| (k, v.len())).collect();
    Json(wire::OptimizeResponse { recommendations, windows, auto_tuner_decisions })
}

/// Every pool's current settings, secrets redacted
#[utoipa::path(
    get,
    path = "/api/v1/admin/connection-pools/config",
    operation_id = "config",
    responses((status = 200, description = "Settings", body = wire::ConfigResponse)),
)]
pub(super) async fn config(State(state): State<AdminState>) -> Json<wire::ConfigResponse> {
    let pools = state
        .inner
        .registry
        .pools()
        .iter()
        .map(|p| {
            let id = pool_id(p.as_ref());
            let mut settings = pool_settings(p.backend(), &p.config());
            settings.backend_settings = backend_settings(&state.inner.config, &id);
            (id, settings)
        })
        .collect();
    Json(wire::ConfigResponse { pools, source: state.inner.config.clone() })
}

/// Zero counters, histograms and peaks of every pool, or of one
///
/// No body, or a body without `pool`, resets every pool. A cluster's routing counters
/// (fallbacks, bans, reads per replica) are not zeroed.
#[utoipa::path(
    post,
    path = "/api/v1/admin/connection-pools/reset-stats",
    operation_id = "resetStats",
    request_body(content = wire::ResetRequest, content_type = "application/json", description = "The pool to reset; leave the body out to reset every pool"),
    responses(
        (status = 200, description = "Pools reset", body = wire::ResetResponse),
        (status = 400, description = "Body is not JSON", body = wire::Error),
        (status = 404, description = "No pool has that name", body = wire::Error),
        (status = 409, description = "The name is shared by pools of several backends: use an id (backend:name)", body = wire::Error),
        (status = 413, description = "Body larger than 16 KiB", body = wire::Error),
        (status = 415, description = "A body that is not application/json", body = wire::Error),
        (status = 422, description = "Body is JSON but not a reset request", body = wire::Error),
    ),
)]
pub(super) async fn reset_stats(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<wire::ResetResponse>, ApiError> {
    let target = optional_json_body::<wire::ResetRequest>(&headers, body)?.and_then(|r| r.pool);
    let pools: Vec<Arc<dyn DynPool>> = match &target {
        Some(name) => {
            vec![state.inner.registry.resolve(name).map_err(|e| ApiError::lookup(e, name))?]
        }
        None => state.inner.registry.pools(),
    };
    for p in &pools {
        p.reset_stats();
    }
    let reset = pools.iter().map(|p| pool_id(p.as_ref())).collect();
    Ok(Json(wire::ResetResponse { reset }))
}

/// Change a pool's size at runtime
///
/// Growing takes effect at once; shrinking retires idle connections at once and busy ones as
/// they come back. A size the pool's settings or a connection budget forbid is refused.
#[utoipa::path(
    post,
    path = "/api/v1/admin/connection-pools/pools/{pool}/resize",
    operation_id = "resize",
    params(("pool" = String, Path, description = "A pool id (`postgresql:main`, `redis:cache`) or a name that only one backend uses")),
    request_body(content = wire::ResizeRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The new size is in force", body = wire::ResizeResponse),
        (status = 400, description = "Body is not JSON, or the pool's name is not UTF-8", body = wire::Error),
        (status = 404, description = "No pool has that name", body = wire::Error),
        (status = 409, description = "The name is shared by pools of several backends: use an id (backend:name)", body = wire::Error),
        (status = 413, description = "Body larger than 16 KiB", body = wire::Error),
        (status = 415, description = "Body is not application/json", body = wire::Error),
        (status = 422, description = "Body is JSON but not a resize request, or the size is refused by the pool's settings or a connection budget", body = wire::Error),
    ),
)]
pub(super) async fn resize(
    State(state): State<AdminState>,
    PoolName(name): PoolName,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<wire::ResizeResponse>, ApiError> {
    let req: wire::ResizeRequest = json_body(&headers, body)?;
    let pool = state.inner.registry.resolve(&name).map_err(|e| ApiError::lookup(e, &name))?;
    let id = pool_id(pool.as_ref());
    let max_overflow = req.max_overflow.unwrap_or_else(|| pool.config().max_overflow);
    state
        .resize_within_budgets(&pool, req.pool_size, max_overflow)
        .map_err(|message| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message).about(&id))?;
    let c = pool.config();
    Ok(Json(wire::ResizeResponse {
        pool: id,
        pool_size: c.pool_size,
        max_overflow: c.max_overflow,
    }))
}

/// This document
///
/// As this server's router serves it: whether `/metrics` and the dashboard need the token, or
/// are served at all, is said as the server was configured.
#[utoipa::path(
    get,
    path = "/api/v1/admin/openapi.json",
    operation_id = "openapi",
    responses((status = 200, description = "OpenAPI 3.1", body = Object, content_type = "application/json")),
)]
pub(super) async fn openapi(State(state): State<AdminState>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], state.inner.openapi.clone()).into_response()
}

/// Prometheus text exposition of every pool (see docs/metrics.md)
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")),
)]
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    let text = pool_metrics::render(&state.inner.registry);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// One pool's numbers on the wire.
fn pool_stats(s: &PoolStats) -> wire::PoolStats {
    let closed_by_reason =
        s.closed.iter().map(|(reason, n)| (reason.as_str().to_owned(), n)).collect();
    wire::PoolStats {
        backend: s.backend.to_owned(),
        active_connections: s.in_use,
        peak_connections: s.peak_in_use,
        connections_created: s.connections_created,
        connections_closed: s.connections_closed,
        average_wait_time: secs(s.average_wait_time),
        pool_size: s.pool_size,
        overflow: s.overflow,
        max_overflow: s.max_overflow,
        min_idle: s.min_idle,
        idle_connections: s.idle,
        open_connections: s.open,
        waiting: s.waiting,
        peak_waiting: s.peak_waiting,
        acquires: s.acquires,
        timeouts: s.timeouts,
        connect_errors: s.connect_errors,
        leaks_detected: s.leaks_detected,
        breaker_open: s.breaker_open,
        breaker_opens: s.breaker_opens,
        breaker_rejections: s.breaker_rejections,
        closed_by_reason,
        wait_time_p50: secs(s.wait_time.quantile(0.5)),
        wait_time_p99: secs(s.wait_time.quantile(0.99)),
        wait_time_histogram: wire::Histogram {
            bounds: HISTOGRAM_BOUNDS.to_vec(),
            counts: s.wait_time.counts.clone(),
        },
        use_time_mean: secs(s.use_time.mean()),
        use_time_p99: secs(s.use_time.quantile(0.99)),
        connect_time_mean: secs(s.connect_time.mean()),
    }
}

/// A recommendation on the wire.
fn recommendation(r: &Recommendation) -> wire::Recommendation {
    let sizes = |s: pool_optimizer::Sizes| wire::Sizes {
        pool_size: s.pool_size,
        max_overflow: s.max_overflow,
    };
    wire::Recommendation {
        pool: r.pool.clone(),
        severity: match r.severity {
            Severity::High => wire::Severity::High,
            Severity::Medium => wire::Severity::Medium,
            Severity::Low => wire::Severity::Low,
        },
        issue: r.issue.clone(),
        suggestion: r.suggestion.clone(),
        current: sizes(r.current),
        proposed: r.proposed.map(sizes),
        evidence: evidence(&r.evidence),
    }
}

/// An auto-tuner decision on the wire.
fn decision(d: &Decision) -> wire::Decision {
    wire::Decision {
        pool: d.pool.clone(),
        window: d.window,
        action: match d.action {
            Action::Grow => wire::Action::Grow,
            Action::Shrink => wire::Action::Shrink,
            Action::StepBack => wire::Action::StepBack,
            Action::Hold => wire::Action::Hold,
        },
        from: d.from,
        to: d.to,
        reason: d.reason.clone(),
        evidence: d.evidence.as_ref().map(evidence),
    }
}

/// The numbers a recommendation or a tuner decision was decided from (durations in seconds).
fn evidence(e: &Evidence) -> wire::Evidence {
    wire::Evidence {
        windows: e.windows,
        checkouts_per_sec: e.checkouts_per_sec,
        hold_mean: secs(e.hold_mean),
        hold_p90: secs(e.hold_p90),
        wait_p90: secs(e.wait_p90),
        wait_p99: secs(e.wait_p99),
        timeouts: e.timeouts,
        connect_errors: e.connect_errors,
        busy: e.busy,
        needed: e.needed,
        idle_share: e.idle_share,
        overflow_share: e.overflow_share,
        hold_trend: e.hold_trend,
        load_trend: e.load_trend,
    }
}

/// The backend names of the pools' ids (`postgresql:main`, `redis:cache`), as the backends'
/// managers name themselves; said here so that a build without a backend still reads its pools'
/// ids (a test checks they agree).
const POSTGRES: &str = "postgresql";
const REDIS: &str = "redis";

/// The id of the replica pool named `name` by its cluster's stats.
#[cfg(feature = "postgres")]
fn replica_id(name: &str) -> String {
    format!("{POSTGRES}:{name}")
}

/// Every cluster's replica routing and health: none without the `postgres` feature.
#[cfg(not(feature = "postgres"))]
fn replication(_: &AdminState) -> wire::Replication {
    wire::Replication(BTreeMap::new())
}

/// Every cluster's replica routing and health.
#[cfg(feature = "postgres")]
fn replication(state: &AdminState) -> wire::Replication {
    let clusters = state
        .inner
        .clusters
        .iter()
        .map(|(name, cluster)| {
            let s = cluster.stats();
            let replicas = s
                .replicas
                .iter()
                .map(|r| wire::Replica {
                    pool: replica_id(&r.pool),
                    reads: r.reads,
                    banned: r.banned,
                    promoted: r.promoted,
                    bans: r.bans,
                    lagging: r.lagging,
                    lag_seconds: r.lag.map(secs),
                    lag_bytes: r.lag_bytes,
                    last_error: r.last_error.clone(),
                })
                .collect();
            let replication = wire::ClusterReplication {
                fallbacks: s.fallbacks,
                read_only_errors: s.read_only_errors,
                replicas,
            };
            (name.clone(), replication)
        })
        .collect();
    wire::Replication(clusters)
}

/// A pool's live settings on the wire.
fn pool_settings(backend: &str, c: &pool_core::PoolConfig) -> wire::PoolSettings {
    let opt = |d: Option<Duration>| d.map(secs);
    wire::PoolSettings {
        backend: backend.to_owned(),
        pool_size: c.pool_size,
        max_overflow: c.max_overflow,
        pool_timeout: secs(c.pool_timeout),
        connect_timeout: secs(c.connect_timeout),
        pool_recycle: opt(c.pool_recycle),
        recycle_jitter: c.recycle_jitter,
        pool_pre_ping: c.pool_pre_ping,
        pre_ping_bypass: secs(c.pre_ping_bypass),
        pool_use_lifo: c.pool_use_lifo,
        min_idle: c.effective_min_idle(),
        idle_timeout: opt(c.idle_timeout),
        health_check_interval: opt(c.health_check_interval),
        max_connecting: c.max_connecting,
        leak_detection_threshold: opt(c.leak_detection_threshold),
        backend_settings: None,
    }
}

/// The backend's own settings of the pool `id` in the configuration `source` (the server's,
/// redacted): its PostgreSQL cluster's (a replica's pool is its cluster's) or its Redis pool's,
/// less the engine's settings, which the pool reports live. `None` when `source` does not
/// configure the pool (an embedded router given no configuration).
fn backend_settings(source: &Value, id: &str) -> Option<serde_json::Map<String, Value>> {
    let (backend, name) = id.split_once(':')?;
    let table = match backend {
        POSTGRES => {
            let clusters = source.get("postgres")?;
            clusters.get(name).or_else(|| {
                let (cluster, n) = name.rsplit_once("-replica-")?;
                n.parse::<usize>().ok()?;
                clusters.get(cluster)
            })?
        }
        REDIS => source.get("redis")?.get(name)?,
        _ => return None,
    };
    let mut own = table.as_object()?.clone();
    for key in crate::config::engine_keys() {
        own.remove(&key);
    }
    Some(own)
}

/// A duration as the wire writes it: seconds.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

#[cfg(all(test, feature = "postgres", feature = "redis"))]
mod backend_names {
    use pool_core::Manager;

    #[test]
    fn the_ids_backend_names_are_the_managers() {
        assert_eq!(super::POSTGRES, pool_postgres::PgManager::BACKEND);
        assert_eq!(super::REDIS, pool_redis::RedisManager::BACKEND);
    }
}
