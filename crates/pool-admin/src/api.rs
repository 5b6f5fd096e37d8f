//! The admin API as an axum [`Router`]: stats, health, optimize, config, reset-stats, resize,
//! the OpenAPI document and `/metrics`, behind a bearer token; and the dashboard's page, whose
//! data comes from those routes (see [`crate::dashboard`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use pool_core::{HISTOGRAM_BOUNDS, LookupError, Pool, PoolStats, Registry, pool_id};
use pool_optimizer::{Budget, Decision, Evidence, Recommendation, Sampler, Settings, analyze};
#[cfg(feature = "postgres")]
use pool_postgres::PgCluster;
#[cfg(feature = "redis")]
use pool_redis::RedisPools;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::config::Secret;

/// The prefix of every admin route.
pub const PREFIX: &str = "/api/v1/admin/connection-pools";

/// The largest request body accepted.
const BODY_LIMIT: usize = 16 * 1024;

/// What the admin routes serve from: the pools, the optimizer's history, the token.
#[derive(Debug, Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    #[cfg(feature = "postgres")]
    clusters: BTreeMap<String, PgCluster>,
    #[cfg(feature = "redis")]
    redis: Option<RedisPools>,
    token: Secret,
    metrics_open: bool,
    dashboard: bool,
    health_timeout: Duration,
    budgets: Vec<Budget>,
    settings: Settings,
    sampler: Mutex<Sampler>,
    config: Value,
    decisions: Mutex<Vec<Decision>>,
    /// Held from a resize's budget check to the resize itself, so two resizes that each fit the
    /// budget cannot together break it.
    resizing: Mutex<()>,
}

impl AdminState {
    /// Resizes `pool` unless that would break one of its connection budgets, checking and
    /// resizing under one lock: the admin API and the auto-tuner both go through here.
    ///
    /// Each other pool of a budget counts at the larger of its `pool_size + max_overflow` and
    /// the connections it has open: a shrink closes no connection under its user, so a pool
    /// just shrunk still holds its busy connections until they come back and close.
    ///
    /// # Errors
    ///
    /// What refused it: a budget (naming it and its numbers) or the pool's own checks.
    pub fn resize_within_budgets(
        &self,
        pool: &Arc<dyn Pool>,
        pool_size: usize,
        max_overflow: usize,
    ) -> Result<(), String> {
        let _one_at_a_time = self.inner.resizing.lock().unwrap_or_else(PoisonError::into_inner);
        let id = pool_id(pool.as_ref());
        for b in self.inner.budgets.iter().filter(|b| b.pools.contains(&id)) {
            let mut others = 0usize;
            // The other pools holding more than their size, as `id: 8 open, size 2`.
            let mut over = Vec::new();
            for other in b.pools.iter().filter(|p| **p != id) {
                let Some(other) = self.inner.registry.get(other) else { continue };
                let size = other.config().max_size();
                let open = other.stats().open_connections;
                if open > size {
                    over.push(format!("{}: {open} open, size {size}", pool_id(other.as_ref())));
                }
                others = others.saturating_add(size.max(open));
            }
            let wanted = pool_size.saturating_add(max_overflow);
            if others.saturating_add(wanted) > b.available() {
                let over =
                    if over.is_empty() { String::new() } else { format!(" ({})", over.join(", ")) };
                return Err(format!(
                    "refused: pool_size {pool_size} + max_overflow {max_overflow} would exceed the connection budget of {} ({} allowed, other pools may open {others}): each other pool counts at the larger of its pool_size + max_overflow and its open connections{over}",
                    b.name,
                    b.available()
                ));
            }
        }
        pool.resize(pool_size, max_overflow).map_err(|e| e.to_string())
    }

    /// State over `registry`, every admin route requiring `token`.
    pub fn builder(registry: Registry, token: Secret) -> AdminStateBuilder {
        AdminStateBuilder {
            registry,
            token,
            #[cfg(feature = "postgres")]
            clusters: BTreeMap::new(),
            #[cfg(feature = "redis")]
            redis: None,
            metrics_open: false,
            dashboard: true,
            health_timeout: Duration::from_secs(2),
            budgets: Vec::new(),
            config: Value::Null,
        }
    }

    /// The pools served.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Takes a stats sample of every pool for the optimizer (the server does this on a timer).
    pub fn sample(&self) {
        self.sampler().sample(tokio::time::Instant::now());
    }

    /// The optimizer's current recommendations.
    ///
    /// A pool resized since its newest window gets no resize proposal (nor a budget one) until
    /// windows at its new size come in: the windows describe the old size. Its alerts stay.
    pub fn recommendations(&self) -> Vec<Recommendation> {
        let windows = self.sampler().windows();
        let mut recs = analyze(&windows, &self.inner.settings, &self.inner.budgets);
        recs.retain(|r| {
            let Some(pool) = self.inner.registry.get(&r.pool) else { return true };
            let live = pool.config();
            let resized = (live.pool_size, live.max_overflow)
                != (r.current.pool_size, r.current.max_overflow);
            !(resized && (r.proposed.is_some() || r.issue == "Connection budget exhausted"))
        });
        recs
    }

    /// Records auto-tuner decisions for `GET optimize` (the last 100 are kept).
    pub fn record_decisions(&self, decisions: &[Decision]) {
        let mut kept = self.inner.decisions.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend_from_slice(decisions);
        let excess = kept.len().saturating_sub(100);
        kept.drain(..excess);
    }

    /// The optimizer's windows, for the auto-tuner.
    pub fn windows(&self) -> BTreeMap<String, Vec<pool_optimizer::Window>> {
        self.sampler().windows()
    }

    /// Connection budgets known to the optimizer.
    pub fn budgets(&self) -> &[Budget] {
        &self.inner.budgets
    }

    fn sampler(&self) -> std::sync::MutexGuard<'_, Sampler> {
        self.inner.sampler.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Builds an [`AdminState`].
#[derive(Debug)]
#[must_use]
pub struct AdminStateBuilder {
    registry: Registry,
    token: Secret,
    #[cfg(feature = "postgres")]
    clusters: BTreeMap<String, PgCluster>,
    #[cfg(feature = "redis")]
    redis: Option<RedisPools>,
    metrics_open: bool,
    dashboard: bool,
    health_timeout: Duration,
    budgets: Vec<Budget>,
    config: Value,
}

impl AdminStateBuilder {
    /// PostgreSQL clusters, for replica bans and lag in `GET health` and `GET stats`. Feature
    /// `postgres`.
    #[cfg(feature = "postgres")]
    pub fn clusters(mut self, clusters: BTreeMap<String, PgCluster>) -> Self {
        self.clusters = clusters;
        self
    }

    /// The Redis pools (also registered in the registry), so `GET stats` reports each one's
    /// `created_connections` as [`RedisStats::created`](pool_redis::RedisStats::created): its
    /// open exclusive connections plus its connected shared clients. A Redis pool that is only
    /// registered shows its open exclusive connections alone (the `Pool` trait does not see
    /// shared clients). Feature `redis`.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, pools: RedisPools) -> Self {
        self.redis = Some(pools);
        self
    }

    /// Serve `/metrics` without the token.
    pub fn metrics_open(mut self, open: bool) -> Self {
        self.metrics_open = open;
        self
    }

    /// Serve the dashboard's page at `/dashboard/` \[true\]. Its HTML, CSS and JS are served
    /// without the token because they hold no data; the page fetches every number from the
    /// API routes with the token.
    pub fn dashboard(mut self, serve: bool) -> Self {
        self.dashboard = serve;
        self
    }

    /// How long one pool's active health check may take \[2 s\].
    pub fn health_timeout(mut self, timeout: Duration) -> Self {
        self.health_timeout = timeout;
        self
    }

    /// Connection budgets: the optimizer never proposes more, and resizes that break one are
    /// refused.
    pub fn budgets(mut self, budgets: Vec<Budget>) -> Self {
        self.budgets = budgets;
        self
    }

    /// The (redacted) configuration `GET config` shows besides each pool's live settings.
    pub fn config(mut self, config: Value) -> Self {
        self.config = config;
        self
    }

    /// The state.
    pub fn build(self) -> AdminState {
        AdminState {
            inner: Arc::new(Inner {
                sampler: Mutex::new(Sampler::new(self.registry.clone(), 30)),
                registry: self.registry,
                #[cfg(feature = "postgres")]
                clusters: self.clusters,
                #[cfg(feature = "redis")]
                redis: self.redis,
                token: self.token,
                metrics_open: self.metrics_open,
                dashboard: self.dashboard,
                health_timeout: self.health_timeout,
                budgets: self.budgets,
                settings: Settings::default(),
                config: self.config,
                decisions: Mutex::new(Vec::new()),
                resizing: Mutex::new(()),
            }),
        }
    }
}

/// An error answer: `{"error": "...", "pool": "..."}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    pool: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), pool: None }
    }

    fn lookup(e: LookupError, pool: &str) -> Self {
        let status = match e {
            LookupError::Ambiguous { .. } => StatusCode::CONFLICT,
            _ => StatusCode::NOT_FOUND,
        };
        ApiError { status, message: e.to_string(), pool: Some(pool.to_owned()) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message, "pool": self.pool }))).into_response()
    }
}

/// `Json<T>` whose rejections are JSON errors with the right status (400, 413, 415, 422).
#[derive(Debug)]
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rejection) => Err(match &rejection {
                JsonRejection::BytesRejection(_)
                    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
                {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body larger than {BODY_LIMIT} bytes"),
                    )
                }
                _ => ApiError::new(rejection.status(), rejection.body_text()),
            }),
        }
    }
}

/// The admin router. Mount it in your own app, or serve it with `pool-admin serve`.
///
/// Every API route needs `Authorization: Bearer <token>` (the scheme in any case);
/// `/metrics` too unless opened. The
/// dashboard's static page under `/dashboard/` (unless turned off) is served without it and
/// asks the API for its data with the token the user gives it.
pub fn router(state: AdminState) -> Router {
    let admin = Router::new()
        .route(&format!("{PREFIX}/stats"), get(stats))
        .route(&format!("{PREFIX}/health"), get(health))
        .route(&format!("{PREFIX}/optimize"), get(optimize))
        .route(&format!("{PREFIX}/config"), get(config))
        .route(&format!("{PREFIX}/reset-stats"), post(reset_stats))
        .route(&format!("{PREFIX}/pools/{{pool}}/resize"), post(resize))
        .route("/api/v1/admin/openapi.json", get(openapi))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let metrics = Router::new().route("/metrics", get(metrics));
    let metrics = if state.inner.metrics_open {
        metrics
    } else {
        metrics.route_layer(middleware::from_fn_with_state(state.clone(), require_token))
    };
    let admin = admin.merge(metrics);
    let admin = if state.inner.dashboard { admin.merge(crate::dashboard::routes()) } else { admin };
    admin
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed here"))
        })
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn require_token(
    State(state): State<AdminState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let given =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    // A 401 names the scheme it wants (RFC 7235 section 4.1), and a refused token as such
    // (RFC 6750 section 3), so that HTTP clients and proxies know what to send.
    let refuse = |message: &'static str, challenge: &'static str| {
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        response
    };
    match given {
        None => refuse("missing bearer token", r#"Bearer realm="pool-admin""#),
        Some(token)
            if bool::from(token.as_bytes().ct_eq(state.inner.token.expose().as_bytes())) =>
        {
            next.run(req).await
        }
        Some(_) => {
            refuse("wrong bearer token", r#"Bearer realm="pool-admin", error="invalid_token""#)
        }
    }
}

/// The token of an `Authorization` header's value `Bearer <token>`. The scheme is matched in any
/// case (`bearer`, `BEARER`: RFC 7235 makes auth schemes case-insensitive); blanks around the
/// token are ignored. `None` for another scheme or no token at all.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One pool's stats: the stats route's core fields (`active_connections`, `pool_size`,
/// `overflow`...), then the rest of the engine's.
pub(crate) fn pool_json(s: &PoolStats) -> Value {
    let closed: BTreeMap<&str, u64> = s.closed.iter().map(|(r, n)| (r.as_str(), n)).collect();
    json!({
        "backend": s.backend,
        "active_connections": s.active_connections,
        "peak_connections": s.peak_connections,
        "connections_created": s.connections_created,
        "connections_closed": s.connections_closed,
        "average_wait_time": secs(s.average_wait_time),
        "pool_size": s.pool_size,
        "overflow": s.overflow,
        "max_overflow": s.max_overflow,
        "min_idle": s.min_idle,
        "idle_connections": s.idle_connections,
        "open_connections": s.open_connections,
        "waiting": s.waiting,
        "peak_waiting": s.peak_waiting,
        "acquires": s.acquires,
        "timeouts": s.timeouts,
        "connect_errors": s.connect_errors,
        "leaks_detected": s.leaks_detected,
        "closed_by_reason": closed,
        "wait_time_p50": secs(s.wait_time.quantile(0.5)),
        "wait_time_p99": secs(s.wait_time.quantile(0.99)),
        "wait_time_histogram": { "bounds": HISTOGRAM_BOUNDS, "counts": s.wait_time.counts },
        "use_time_mean": secs(s.use_time.mean()),
        "use_time_p99": secs(s.use_time.quantile(0.99)),
        "connect_time_mean": secs(s.connect_time.mean()),
    })
}

pub(crate) fn recommendation_json(r: &Recommendation) -> Value {
    json!({
        "pool": r.pool,
        "severity": r.severity.as_str(),
        "issue": r.issue,
        "suggestion": r.suggestion,
        "current": { "pool_size": r.current.pool_size, "max_overflow": r.current.max_overflow },
        "proposed": r.proposed.map(|p| json!({ "pool_size": p.pool_size, "max_overflow": p.max_overflow })),
        "evidence": evidence_json(&r.evidence),
    })
}

/// The numbers a recommendation or a tuner decision was decided from (durations in seconds).
fn evidence_json(e: &Evidence) -> Value {
    json!({
        "windows": e.windows,
        "checkouts_per_sec": e.checkouts_per_sec,
        "hold_mean": secs(e.hold_mean),
        "hold_p90": secs(e.hold_p90),
        "wait_p90": secs(e.wait_p90),
        "wait_p99": secs(e.wait_p99),
        "timeouts": e.timeouts,
        "connect_errors": e.connect_errors,
        "busy": e.busy,
        "needed": e.needed,
        "idle_share": e.idle_share,
        "overflow_share": e.overflow_share,
        "hold_trend": e.hold_trend,
        "load_trend": e.load_trend,
    })
}

#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
fn replicas_json(state: &AdminState) -> Value {
    #[cfg(not(feature = "postgres"))]
    let clusters = serde_json::Map::new();
    #[cfg(feature = "postgres")]
    let clusters: BTreeMap<&String, Value> = state
        .inner
        .clusters
        .iter()
        .map(|(name, cluster)| {
            let s = cluster.stats();
            let replicas: Vec<Value> = s
                .replicas
                .iter()
                .map(|r| {
                    json!({
                        "pool": r.pool,
                        "reads": r.reads,
                        "banned": r.banned,
                        "bans": r.bans,
                        "lagging": r.lagging,
                        "lag_seconds": r.lag.map(secs),
                        "lag_bytes": r.lag_bytes,
                        "last_error": r.last_error,
                    })
                })
                .collect();
            (name, json!({ "fallbacks": s.fallbacks, "replicas": replicas }))
        })
        .collect();
    json!(clusters)
}

async fn stats(State(state): State<AdminState>) -> Json<Value> {
    let mut database = serde_json::Map::new();
    let mut redis = serde_json::Map::new();
    for pool in state.inner.registry.pools() {
        let s = pool.stats();
        if s.backend == "redis" {
            // redis-py's numbers as pool-redis defines them, shared clients included, when the
            // pool was handed over; else what the engine's stats alone say.
            #[cfg(feature = "redis")]
            let known = state.inner.redis.as_ref().and_then(|r| r.get(&s.name));
            #[cfg(feature = "redis")]
            let known = known.map(pool_redis::RedisPool::stats).map(|r| (r.engine, r.created));
            #[cfg(not(feature = "redis"))]
            let known: Option<(PoolStats, usize)> = None;
            let (s, created) = match known {
                Some(known) => known,
                None => {
                    let created = s.open_connections.saturating_sub(s.connecting);
                    (s, created)
                }
            };
            let mut v = pool_json(&s);
            v["in_use_connections"] = json!(s.active_connections);
            v["available_connections"] = json!(s.idle_connections);
            v["created_connections"] = json!(created);
            v["max_connections"] = json!(s.pool_size + s.max_overflow);
            redis.insert(s.name.clone(), v);
        } else {
            database.insert(s.name.clone(), pool_json(&s));
        }
    }
    let recommendations: Vec<Value> =
        state.recommendations().iter().map(recommendation_json).collect();
    Json(json!({
        "database_pools": database,
        "redis_pools": redis,
        "replication": replicas_json(&state),
        "recommendations": recommendations,
    }))
}

async fn health(State(state): State<AdminState>) -> Response {
    let timeout = state.inner.health_timeout;
    let mut checks = tokio::task::JoinSet::new();
    for pool in state.inner.registry.pools() {
        checks.spawn(async move {
            let start = tokio::time::Instant::now();
            match tokio::time::timeout(timeout, pool.health()).await {
                Ok(h) => (pool_id(pool.as_ref()), h.healthy, secs(h.latency), h.error),
                Err(_) => {
                    // Waiting for a connection the pool cannot open: say why it cannot.
                    let cause = pool
                        .last_connect_error()
                        .map(|e| format!("; last connect error: {e}"))
                        .unwrap_or_default();
                    (
                        pool_id(pool.as_ref()),
                        false,
                        secs(start.elapsed()),
                        Some(format!("health check timed out after {timeout:?}{cause}")),
                    )
                }
            }
        });
    }
    let mut all_healthy = true;
    let mut out = serde_json::Map::new();
    while let Some(joined) = checks.join_next().await {
        let (name, healthy, latency, error) = match joined {
            Ok(result) => result,
            Err(e) => ("(health task)".to_owned(), false, 0.0, Some(e.to_string())),
        };
        all_healthy &= healthy;
        out.insert(name, json!({ "healthy": healthy, "latency_seconds": latency, "error": error }));
    }
    #[cfg(feature = "postgres")]
    for cluster in state.inner.clusters.values() {
        for r in cluster.stats().replicas {
            if r.banned || r.lagging {
                all_healthy = false;
                if let Some(entry) = out.get_mut(&format!("postgresql:{}", r.pool)) {
                    entry["healthy"] = json!(false);
                    entry["error"] =
                        json!(if r.banned { "replica banned" } else { "replica lagging" });
                }
            }
        }
    }
    let status = if all_healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({
        "status": if all_healthy { "healthy" } else { "unhealthy" },
        "pools": out,
        "replication": replicas_json(&state),
    });
    (status, Json(body)).into_response()
}

async fn optimize(State(state): State<AdminState>) -> Json<Value> {
    let recommendations: Vec<Value> =
        state.recommendations().iter().map(recommendation_json).collect();
    let decisions: Vec<Value> = state
        .inner
        .decisions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|d| {
            json!({
                "pool": d.pool,
                "window": d.window,
                "action": format!("{:?}", d.action).to_lowercase(),
                "from": d.from,
                "to": d.to,
                "reason": d.reason,
                "evidence": d.evidence.as_ref().map(evidence_json),
            })
        })
        .collect();
    let windows: BTreeMap<String, usize> =
        state.windows().into_iter().map(|(k, v)| (k, v.len())).collect();
    Json(
        json!({ "recommendations": recommendations, "windows": windows, "auto_tuner_decisions": decisions }),
    )
}

async fn config(State(state): State<AdminState>) -> Json<Value> {
    let pools: BTreeMap<String, Value> = state
        .inner
        .registry
        .pools()
        .iter()
        .map(|p| {
            let c = p.config();
            let opt = |d: Option<Duration>| d.map(secs);
            (
                pool_id(p.as_ref()),
                json!({
                    "backend": p.backend(),
                    "pool_size": c.pool_size,
                    "max_overflow": c.max_overflow,
                    "pool_timeout": secs(c.pool_timeout),
                    "connect_timeout": secs(c.connect_timeout),
                    "pool_recycle": opt(c.pool_recycle),
                    "recycle_jitter": c.recycle_jitter,
                    "pool_pre_ping": c.pool_pre_ping,
                    "pre_ping_bypass": secs(c.pre_ping_bypass),
                    "pool_use_lifo": c.pool_use_lifo,
                    "min_idle": c.effective_min_idle(),
                    "idle_timeout": opt(c.idle_timeout),
                    "health_check_interval": opt(c.health_check_interval),
                    "max_connecting": c.max_connecting,
                    "leak_detection_threshold": opt(c.leak_detection_threshold),
                }),
            )
        })
        .map(|(id, mut entry)| {
            if let Some(own) = backend_settings(&state.inner.config, &id) {
                entry["backend_settings"] = own;
            }
            (id, entry)
        })
        .collect();
    Json(json!({ "pools": pools, "source": state.inner.config }))
}

/// The backend's own settings of the pool `id` in the configuration `source` (the server's,
/// redacted): its PostgreSQL cluster's (a replica's pool is its cluster's) or its Redis pool's,
/// less the engine's settings, which the pool reports live. `None` when `source` does not
/// configure the pool (an embedded router given no configuration).
fn backend_settings(source: &Value, id: &str) -> Option<Value> {
    let (backend, name) = id.split_once(':')?;
    let table = match backend {
        "postgresql" => {
            let clusters = source.get("postgres")?;
            clusters.get(name).or_else(|| {
                let (cluster, n) = name.rsplit_once("-replica-")?;
                n.parse::<usize>().ok()?;
                clusters.get(cluster)
            })?
        }
        "redis" => source.get("redis")?.get(name)?,
        _ => return None,
    };
    let mut own = table.as_object()?.clone();
    for key in crate::config::engine_keys() {
        own.remove(&key);
    }
    Some(Value::Object(own))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    /// Absent resets every pool; `null` is refused, as the document says the field is a string,
    /// rather than read as "every pool".
    #[serde(default, deserialize_with = "present")]
    pool: Option<String>,
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

async fn reset_stats(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {BODY_LIMIT} bytes"),
        ),
        status => ApiError::new(status, rejection.body_text()),
    })?;
    // No body resets every pool; a body is JSON, refused as `resize` refuses one: 415 for
    // another content type, 400 when it does not parse, 422 when it is not a `ResetRequest`.
    let target = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::trim)
            .is_some_and(|t| t == "application/json" || t.ends_with("+json"));
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected request with `Content-Type: application/json`",
            ));
        }
        let req: ResetRequest = serde_json::from_slice(&body).map_err(|e| {
            let status = if e.is_data() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            ApiError::new(status, format!("invalid body: {e}"))
        })?;
        req.pool
    };
    let pools: Vec<Arc<dyn Pool>> = match &target {
        Some(name) => {
            vec![state.inner.registry.resolve(name).map_err(|e| ApiError::lookup(e, name))?]
        }
        None => state.inner.registry.pools(),
    };
    for p in &pools {
        p.reset_stats();
    }
    let ids: Vec<String> = pools.iter().map(|p| pool_id(p.as_ref())).collect();
    Ok(Json(json!({ "reset": ids })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeRequest {
    #[serde(deserialize_with = "whole")]
    pool_size: usize,
    #[serde(default, deserialize_with = "some_whole")]
    max_overflow: Option<usize>,
}

async fn resize(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    Body(req): Body<ResizeRequest>,
) -> Result<Json<Value>, ApiError> {
    let pool = state.inner.registry.resolve(&name).map_err(|e| ApiError::lookup(e, &name))?;
    let id = pool_id(pool.as_ref());
    let max_overflow = req.max_overflow.unwrap_or_else(|| pool.config().max_overflow);
    state.resize_within_budgets(&pool, req.pool_size, max_overflow).map_err(|message| {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, message, pool: Some(name.clone()) }
    })?;
    let c = pool.config();
    Ok(Json(json!({ "pool": id, "pool_size": c.pool_size, "max_overflow": c.max_overflow })))
}

/// The document as this router serves it: `/metrics` needs no token when `metrics_open` is set,
/// and the document says so.
async fn openapi(State(state): State<AdminState>) -> Response {
    let body = if state.inner.metrics_open {
        let mut doc: Value = serde_json::from_str(crate::OPENAPI).unwrap_or(Value::Null);
        if let Some(get) = doc.pointer_mut("/paths/~1metrics/get").and_then(Value::as_object_mut) {
            get.insert("security".to_owned(), json!([]));
            if let Some(responses) = get.get_mut("responses").and_then(Value::as_object_mut) {
                responses.remove("401");
            }
        }
        doc.to_string()
    } else {
        crate::OPENAPI.to_owned()
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let text = pool_metrics::render(&state.inner.registry);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[cfg(test)]
mod tests;
