//! The router in-process: every route, every error status, auth, and every response checked
//! against the OpenAPI document's schemas.

use std::sync::Arc;

use axum::body::Body as HttpBody;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use pool_core::testing::TestManager;
use pool_core::{ConnectionPool, Registry};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::auth::bearer_token;
use super::*;
use crate::{Secret, ServerConfig};
use pool_optimizer::Budget;
use std::time::Duration;

const TOKEN: &str = "t0ken";

struct Fixture {
    app: Router,
    state: AdminState,
    db: TestManager,
    /// The pool registered as `main`, for checkouts.
    main: ConnectionPool<TestManager>,
    /// The pool registered as `other`, for checkouts.
    other: ConnectionPool<TestManager>,
}

async fn fixture(metrics_open: bool) -> Fixture {
    let registry = Registry::new();
    let db = TestManager::new();
    let pool = ConnectionPool::builder(db.clone())
        .name("main")
        .pool_size(2)
        .max_overflow(1)
        .build()
        .unwrap();
    let other = ConnectionPool::builder(TestManager::new())
        .name("other")
        .pool_size(3)
        .max_overflow(0)
        .build()
        .unwrap();
    registry.register(Arc::new(pool.clone())).unwrap();
    registry.register(Arc::new(other.clone())).unwrap();
    let budget = Budget {
        name: "primary".to_owned(),
        max_connections: 12,
        reserved: 2,
        pools: vec!["test:main".to_owned(), "test:other".to_owned()],
    };
    let server = ServerConfig {
        metrics_open,
        health_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let state = AdminState::builder(registry, Secret(TOKEN.to_owned()))
        .server(&server)
        .budgets(vec![budget])
        .build();
    Fixture { app: router(state.clone()), state, db, main: pool, other }
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = match body {
        Some((ct, bytes)) => req.header("content-type", ct).body(HttpBody::from(bytes)).unwrap(),
        None => req.body(HttpBody::empty()).unwrap(),
    };
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    call(app, Method::GET, uri, Some(TOKEN), None).await
}

async fn post_json(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    call(
        app,
        Method::POST,
        uri,
        Some(TOKEN),
        Some(("application/json", body.to_string().into_bytes())),
    )
    .await
}

/// Fails unless `value` matches the OpenAPI schema `name`.
fn conforms(name: &str, value: &Value) {
    let doc: Value = serde_json::from_str(&crate::openapi().to_json().unwrap()).unwrap();
    let schema =
        json!({ "$ref": format!("#/components/schemas/{name}"), "components": doc["components"] });
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> =
        validator.iter_errors(value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{name} does not match the OpenAPI schema: {errors:#?}\n{value:#}");
}

#[tokio::test]
async fn every_route_answers_in_the_documented_shape() {
    let f = fixture(false).await;
    let conn = f.state.registry().get("main").unwrap();
    drop(conn);
    let (status, stats) = get(&f.app, &format!("{PREFIX}/stats")).await;
    assert_eq!(status, StatusCode::OK);
    conforms("StatsResponse", &stats);
    assert_eq!(stats["database_pools"]["test:main"]["pool_size"], 2);
    assert_eq!(stats["database_pools"]["test:main"]["backend"], "test");

    let (status, health) = get(&f.app, &format!("{PREFIX}/health")).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    conforms("HealthResponse", &health);
    assert_eq!(health["pools"]["test:main"]["healthy"], true);

    let (status, optimize) = get(&f.app, &format!("{PREFIX}/optimize")).await;
    assert_eq!(status, StatusCode::OK);
    conforms("OptimizeResponse", &optimize);

    let (status, config) = get(&f.app, &format!("{PREFIX}/config")).await;
    assert_eq!(status, StatusCode::OK);
    conforms("ConfigResponse", &config);
    assert_eq!(config["pools"]["test:other"]["pool_size"], 3);

    let (status, openapi) = get(&f.app, "/api/v1/admin/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(openapi["openapi"], "3.1.0");

    let (status, metrics) = get(&f.app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("db_client_connection_max{db_client_connection_pool_name=\"main\"")
    );
}

#[tokio::test]
async fn reset_stats_for_all_pools_or_one() {
    let f = fixture(false).await;
    let pool = f.state.registry().get("main").unwrap();
    for _ in 0..3 {
        drop(f.main.acquire().await.unwrap());
    }
    assert_eq!(pool.stats().acquires, 3);
    let (status, body) =
        post_json(&f.app, &format!("{PREFIX}/reset-stats"), json!({ "pool": "main" })).await;
    assert_eq!((status, body.clone()), (StatusCode::OK, json!({ "reset": ["test:main"] })));
    conforms("ResetResponse", &body);
    assert_eq!(pool.stats().acquires, 0);
    let (status, body) =
        call(&f.app, Method::POST, &format!("{PREFIX}/reset-stats"), Some(TOKEN), None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({ "reset": ["test:main", "test:other"] })));
}

#[tokio::test]
async fn resize_takes_effect_and_refuses_what_the_settings_or_budget_forbid() {
    let f = fixture(false).await;
    let uri = format!("{PREFIX}/pools/main/resize");
    let (status, body) = post_json(&f.app, &uri, json!({ "pool_size": 4 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    conforms("ResizeResponse", &body);
    assert_eq!(body, json!({ "pool": "test:main", "pool_size": 4, "max_overflow": 1 }));
    assert_eq!(f.state.registry().get("main").unwrap().config().pool_size, 4);

    let (status, body) = post_json(&f.app, &uri, json!({ "pool_size": 0 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    conforms("Error", &body);
    assert_eq!(body["pool"], "test:main", "a pool that exists is named by its id");
    assert!(
        body["error"].as_str().unwrap().contains("pool_size = 0: must be at least 1"),
        "{body}"
    );

    let (status, body) =
        post_json(&f.app, &uri, json!({ "pool_size": 7, "max_overflow": 1 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("connection budget of primary (10 allowed, other pools may open 3)"),
        "{body}"
    );
    assert_eq!(
        f.state.registry().get("main").unwrap().config().pool_size,
        4,
        "a refused resize changes nothing"
    );
}

#[tokio::test]
async fn errors_are_json_with_the_right_status() {
    let f = fixture(false).await;
    let resize = format!("{PREFIX}/pools/main/resize");
    type Case<'a> =
        (Method, String, Option<&'a str>, Option<(&'a str, Vec<u8>)>, StatusCode, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            Method::GET,
            format!("{PREFIX}/stats"),
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "missing bearer token",
        ),
        (
            Method::GET,
            format!("{PREFIX}/stats"),
            Some("nope"),
            None,
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        ),
        (
            Method::GET,
            "/metrics".into(),
            Some("t0ke"),
            None,
            StatusCode::UNAUTHORIZED,
            "wrong bearer token",
        ),
        (
            Method::GET,
            "/api/v1/admin/openapi.json".into(),
            None,
            None,
            StatusCode::UNAUTHORIZED,
            "missing bearer token",
        ),
        (
            Method::GET,
            format!("{PREFIX}/nothing"),
            Some(TOKEN),
            None,
            StatusCode::NOT_FOUND,
            "no such route",
        ),
        (
            Method::POST,
            format!("{PREFIX}/pools/ghost/resize"),
            Some(TOKEN),
            Some(("application/json", br#"{"pool_size":3}"#.to_vec())),
            StatusCode::NOT_FOUND,
            "no pool named \"ghost\"",
        ),
        (
            Method::POST,
            format!("{PREFIX}/reset-stats"),
            Some(TOKEN),
            Some(("application/json", br#"{"pool":"ghost"}"#.to_vec())),
            StatusCode::NOT_FOUND,
            "no pool named \"ghost\"",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            Some(("application/json", b"{not json".to_vec())),
            StatusCode::BAD_REQUEST,
            "Failed to parse",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            Some(("text/plain", br#"{"pool_size":3}"#.to_vec())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            Some(("application/json", br#"{"pool_size":-3}"#.to_vec())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "pool_size",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            Some(("application/json", br#"{"pool_size":3,"extra":1}"#.to_vec())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            Some(("application/json", vec![b' '; 20_000])),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 16384 bytes",
        ),
        (
            Method::POST,
            format!("{PREFIX}/reset-stats"),
            Some(TOKEN),
            Some(("application/json", vec![b' '; 20_000])),
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than 16384 bytes",
        ),
        (
            Method::POST,
            format!("{PREFIX}/reset-stats"),
            Some(TOKEN),
            Some(("application/json", b"[1,2]".to_vec())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid body",
        ),
        (
            Method::POST,
            format!("{PREFIX}/reset-stats"),
            Some(TOKEN),
            Some(("application/json", b"{not json".to_vec())),
            StatusCode::BAD_REQUEST,
            "Failed to parse the request body as JSON: key must be a string",
        ),
        // serde would read an array as a struct's fields in order: `[]` as "every pool".
        (
            Method::POST,
            format!("{PREFIX}/reset-stats"),
            Some(TOKEN),
            Some(("application/json", b"[]".to_vec())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid body: expected a JSON object, got an array",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            Some(("application/json", b"[3]".to_vec())),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid body: expected a JSON object, got an array",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            Some(("application/json", b"".to_vec())),
            StatusCode::BAD_REQUEST,
            "Failed to parse",
        ),
        (
            Method::POST,
            resize.clone(),
            Some(TOKEN),
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json",
        ),
        (
            Method::POST,
            format!("{PREFIX}/reset-stats"),
            Some(TOKEN),
            Some(("text/plain", br#"{"pool":"main"}"#.to_vec())),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type: application/json",
        ),
        (
            Method::DELETE,
            format!("{PREFIX}/stats"),
            Some(TOKEN),
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "",
        ),
    ];
    for (method, uri, token, body, expected, message) in cases {
        let (status, value) = call(&f.app, method.clone(), &uri, token, body).await;
        assert_eq!(status, expected, "{method} {uri}: {value}");
        if status != StatusCode::METHOD_NOT_ALLOWED {
            conforms("Error", &value);
            assert!(value["error"].as_str().unwrap().contains(message), "{method} {uri}: {value}");
        }
    }
}

#[tokio::test]
async fn a_refused_request_says_which_scheme_to_use() {
    let f = fixture(false).await;
    for (token, challenge) in [
        (None, r#"Bearer realm="pool-admin""#),
        (Some("Bearer nope"), r#"Bearer realm="pool-admin", error="invalid_token""#),
        (Some("Basic dXNlcjpwYXNz"), r#"Bearer realm="pool-admin""#),
    ] {
        let mut req = Request::builder().uri(format!("{PREFIX}/stats"));
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let resp = f.app.clone().oneshot(req.body(HttpBody::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(resp.headers()["www-authenticate"], challenge, "{token:?}");
    }
    let resp = f
        .app
        .clone()
        .oneshot(
            Request::builder()
                .uri(format!("{PREFIX}/stats"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(HttpBody::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn metrics_can_be_opened_separately_from_the_admin_routes() {
    let f = fixture(true).await;
    let (status, _) = call(&f.app, Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&f.app, Method::GET, &format!("{PREFIX}/stats"), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn health_is_503_with_the_same_body_when_a_pool_fails_its_check() {
    let f = fixture(false).await;
    f.db.fail_checks(true);
    let (status, body) = get(&f.app, &format!("{PREFIX}/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    conforms("HealthResponse", &body);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["pools"]["test:main"]["healthy"], false);
    assert_eq!(body["pools"]["test:other"]["healthy"], true);
    f.db.fail_checks(false);
    let (status, _) = get(&f.app, &format!("{PREFIX}/health")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_method_gets_a_json_405_that_lists_the_allowed_ones() {
    let f = fixture(false).await;
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("{PREFIX}/reset-stats"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(HttpBody::empty())
        .unwrap();
    let resp = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["allow"], "POST");
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    conforms("Error", &body);
    assert_eq!(body["error"], "GET is not allowed here");
}

/// A pool that cannot connect makes the health check wait for a connection past the admin's
/// `health_timeout`: the error says why no connection comes, not only that it timed out.
#[tokio::test(start_paused = true)]
async fn a_health_check_that_times_out_names_the_last_connect_error() {
    let down = TestManager::new();
    down.fail_connects(true);
    // The pool reads the paused clock too, so nothing in the test runs on the machine's time.
    let pool = ConnectionPool::builder(down.clone())
        .tokio_clock()
        .name("down")
        .pool_size(1)
        .connect_timeout(Duration::from_secs(30))
        // The wait, not the breaker's fail-fast (which `breaker` tests in pool-core).
        .breaker_threshold(0)
        .build()
        .unwrap();
    let registry = Registry::new();
    registry.register(Arc::new(pool)).unwrap();
    let server = ServerConfig { health_timeout: Duration::from_secs(1), ..ServerConfig::default() };
    let state = AdminState::builder(registry, Secret(TOKEN.to_owned())).server(&server).build();
    down.wait_until(|c| c.failed_connects >= 1).await;
    let (status, body) = get(&router(state), &format!("{PREFIX}/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    conforms("HealthResponse", &body);
    assert_eq!(
        body["pools"]["test:down"]["error"],
        "health check timed out after 1s; last connect error: test manager: connection refused",
        "{body:#}"
    );
}

#[tokio::test]
async fn recommendations_appear_after_samples() {
    let f = fixture(false).await;
    for _ in 0..5 {
        f.state.sample();
        // Light traffic: the optimizer shrinks only pools that have some.
        drop(f.other.acquire().await.unwrap());
    }
    let (status, body) = get(&f.app, &format!("{PREFIX}/optimize")).await;
    assert_eq!(status, StatusCode::OK);
    conforms("OptimizeResponse", &body);
    assert_eq!(body["windows"]["test:other"], 4);
    let recs = body["recommendations"].as_array().unwrap();
    assert!(
        recs.iter().any(|r| r["pool"] == "test:other" && r["issue"] == "Too many idle connections"),
        "{body:#}"
    );
    // Resized since: the windows describe the old size, so no proposal until new ones come.
    let current = f.other.config();
    f.other.resize(current.pool_size + 1, current.max_overflow).unwrap();
    let (_, body) = get(&f.app, &format!("{PREFIX}/optimize")).await;
    let recs = body["recommendations"].as_array().unwrap();
    assert!(recs.iter().all(|r| r["pool"] != "test:other"), "{body:#}");
    f.other.resize(current.pool_size, current.max_overflow).unwrap();

    // The auto-tuner's decisions come with the numbers they were taken on.
    let mut tuner = pool_optimizer::AutoTuner::new(
        pool_optimizer::TunerSettings::default(),
        pool_optimizer::Settings::default(),
        Vec::new(),
    );
    tuner.decide(&f.state.windows());
    f.state.record_decisions(tuner.log());
    let (_, body) = get(&f.app, &format!("{PREFIX}/optimize")).await;
    conforms("OptimizeResponse", &body);
    let decision = body["auto_tuner_decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["pool"] == "test:other")
        .unwrap_or_else(|| panic!("a decision about test:other: {body:#}"))
        .clone();
    assert_eq!(decision["action"], "hold", "{decision:#}");
    assert_eq!(decision["evidence"]["windows"], 4, "{decision:#}");
    assert!(decision["evidence"]["needed"].as_u64().is_some(), "{decision:#}");
}

#[tokio::test]
async fn the_server_refuses_a_public_address_without_a_token() {
    let mut config = crate::AdminConfig::default();
    config.admin.listen = "0.0.0.0:0".parse().unwrap();
    config.admin.token = None;
    let err = crate::Server::bind(&config).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing to listen on 0.0.0.0:0 without an admin token: set POOL_ADMIN_TOKEN or admin.token, or listen on a loopback address"
    );
}

/// RFC 7235: the auth scheme is case-insensitive, so `bearer`, `BEARER` and `Bearer` all work.
#[tokio::test]
async fn the_bearer_scheme_is_matched_in_any_case() {
    for (header, token) in [
        ("Bearer t0ken", Some("t0ken")),
        ("bearer t0ken", Some("t0ken")),
        ("BEARER   t0ken ", Some("t0ken")),
        ("Basic dTpw", None),
        ("Bearer", None),
        ("Bearert0ken", None),
    ] {
        assert_eq!(bearer_token(header), token, "{header}");
    }
    let f = fixture(false).await;
    for header in ["bearer t0ken", "BEARER t0ken"] {
        let req = Request::builder()
            .uri(format!("{PREFIX}/stats"))
            .header("authorization", header)
            .body(HttpBody::empty())
            .unwrap();
        let status = f.app.clone().oneshot(req).await.unwrap().status();
        assert_eq!(status, StatusCode::OK, "{header}");
    }
}

/// A Redis pool's numbers count what the schema says: `created_connections` its exclusive
/// connections open, so that in use + available never exceeds it nor it `max_connections`;
/// its shared clients apart, in `shared_clients` and `shared_connected`, which are null when
/// the router sees the pool through the registry alone (against the shared real Redis).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_numbers_count_exclusive_connections_and_shared_clients_apart() {
    use pool_redis::{PoolSettings, RedisConfig, RedisPools};

    let config = RedisConfig::new(pool_harness::redis_url())
        .pool("cache", PoolSettings::default().pool_size(1).max_connections(1));
    let pools = RedisPools::connect(&config).await.unwrap();
    let registry = Registry::new();
    pools.register(&registry).unwrap();
    let cache = pools.get("cache").unwrap();
    // The one exclusive connection is open from here on: idle, in use, or being reset.
    drop(cache.exclusive().await.unwrap());
    let library = cache.stats();
    assert_eq!((library.shared_clients, library.shared_connected), (1, 1), "{library:?}");

    let read = |stats: Value| -> wire::RedisPoolStats {
        let stats: wire::StatsResponse = serde_json::from_value(stats).unwrap();
        stats.redis_pools["redis:cache"].clone()
    };
    let state = AdminState::builder(registry.clone(), Secret(TOKEN.to_owned()));
    let app = router(state.redis(pools.clone()).build());
    let (status, stats) = get(&app, &format!("{PREFIX}/stats")).await;
    assert_eq!(status, StatusCode::OK);
    conforms("StatsResponse", &stats);
    let redis = read(stats);
    assert_eq!(
        (
            redis.created_connections,
            redis.max_connections,
            redis.shared_clients,
            redis.shared_connected
        ),
        (1, 1, Some(1), Some(1)),
        "{redis:#?}"
    );
    assert!(redis.in_use_connections + redis.available_connections <= redis.created_connections);
    assert_eq!(redis.in_use_connections, redis.pool.active_connections);
    assert_eq!(redis.available_connections, redis.pool.idle_connections);

    // Registered alone, the pool's shared clients are out of the API's sight: null, and the
    // exclusive connections counted as before.
    let app = router(AdminState::builder(registry, Secret(TOKEN.to_owned())).build());
    let (_, stats) = get(&app, &format!("{PREFIX}/stats")).await;
    conforms("StatsResponse", &stats);
    let redis = read(stats);
    assert_eq!(
        (redis.created_connections, redis.shared_clients, redis.shared_connected),
        (1, None, None),
        "{redis:#?}"
    );
    pools.close().await.unwrap();
}

/// A budget counts each other pool at the larger of its configured size and its open
/// connections: a shrink closes no connection under its user, so a shrunk pool still holds
/// them until they come back and close, and another pool may not grow into them before.
#[tokio::test]
async fn a_budget_counts_the_connections_a_shrunk_pool_still_holds() {
    let registry = Registry::new();
    let pool = |name: &str, size: usize| {
        ConnectionPool::builder(TestManager::new())
            .name(name)
            .pool_size(size)
            .max_overflow(0)
            .build()
            .unwrap()
    };
    let (a, b) = (pool("a", 8), pool("b", 2));
    registry.register(Arc::new(a.clone())).unwrap();
    registry.register(Arc::new(b.clone())).unwrap();
    let budget = Budget {
        name: "db1".to_owned(),
        max_connections: 10,
        reserved: 0,
        pools: vec!["test:a".to_owned(), "test:b".to_owned()],
    };
    let state =
        AdminState::builder(registry, Secret(TOKEN.to_owned())).budgets(vec![budget]).build();
    let app = router(state);
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(a.acquire().await.unwrap());
    }

    let (status, body) =
        post_json(&app, &format!("{PREFIX}/pools/a/resize"), json!({ "pool_size": 2 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let grow_b = format!("{PREFIX}/pools/b/resize");
    let (status, body) = post_json(&app, &grow_b, json!({ "pool_size": 8 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "a still holds 8: {body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(
            "pool_size 8 + max_overflow 0 would exceed the connection budget of db1 (10 allowed, other pools may open 8)"
        ) && error.contains("open connections")
            && error.contains("test:a: 8 open"),
        "{error}"
    );
    assert_eq!(b.stats().pool_size, 2, "a refused resize changes nothing");

    drop(held);
    let closed = async {
        while a.stats().open > 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), closed).await.expect("a closes down to 2");
    let (status, body) = post_json(&app, &grow_b, json!({ "pool_size": 8 })).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(b.stats().pool_size, 8);
}

/// What a client of the document may send is what the server takes: `pool` is a string or left
/// out (`null` used to reset every pool), and a count may be written as a float with no
/// fraction (`347.0` is an integer in JSON Schema).
#[tokio::test]
async fn requests_are_read_as_the_document_says() {
    let f = fixture(false).await;
    drop(f.main.acquire().await.unwrap());
    let pool = f.state.registry().get("main").unwrap();
    let (status, body) =
        post_json(&f.app, &format!("{PREFIX}/reset-stats"), json!({ "pool": null })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    conforms("Error", &body);
    assert_eq!(pool.stats().acquires, 1, "a refused reset resets nothing");

    let uri = format!("{PREFIX}/pools/main/resize");
    let (status, body) =
        post_json(&f.app, &uri, json!({ "pool_size": 3.0, "max_overflow": 2.0 })).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({ "pool": "test:main", "pool_size": 3, "max_overflow": 2 }))
    );
    for refused in [
        json!({ "pool_size": 3.5 }),
        json!({ "pool_size": -1.0 }),
        json!({ "pool_size": 3, "max_overflow": null }),
    ] {
        let (status, body) = post_json(&f.app, &uri, refused.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}: {body}");
    }
}

/// The served document says whether `/metrics` needs the token, as the router was built.
#[tokio::test]
async fn the_served_document_says_whether_metrics_needs_the_token() {
    for open in [false, true] {
        let f = fixture(open).await;
        let (status, doc) = get(&f.app, "/api/v1/admin/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        let security = doc.pointer("/paths/~1metrics/get/security");
        let needs_token = security.is_none_or(|s| s != &json!([]));
        let (status, _) = call(&f.app, Method::GET, "/metrics", None, None).await;
        assert_eq!(
            needs_token,
            status == StatusCode::UNAUTHORIZED,
            "metrics_open = {open}: {security:?}"
        );
        let documents_401 = doc.pointer("/paths/~1metrics/get/responses/401").is_some();
        assert_eq!(documents_401, !open);
    }
}

/// Every operation of the served document is a route of the same router, behind the token
/// exactly when the document says so; the dashboard's page is in the document exactly when the
/// router serves it.
#[tokio::test]
async fn the_served_document_lists_what_the_router_serves() {
    for (metrics_open, dashboard) in [(false, true), (true, false)] {
        let registry = Registry::new();
        let pool = ConnectionPool::builder(TestManager::new()).name("main").build().unwrap();
        registry.register(Arc::new(pool)).unwrap();
        let server = ServerConfig { metrics_open, dashboard, ..ServerConfig::default() };
        let state = AdminState::builder(registry, Secret(TOKEN.to_owned())).server(&server).build();
        let app = router(state);
        let (_, doc) = get(&app, "/api/v1/admin/openapi.json").await;
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.contains_key(crate::dashboard::PATH), dashboard);
        let mut operations = 0;
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                let uri = path.replace("{pool}", "test:main");
                let method: Method = method.to_uppercase().parse().unwrap();
                let (status, body) = call(&app, method.clone(), &uri, None, None).await;
                let open = operation.get("security") == Some(&json!([]));
                let what = format!("{method} {path} (metrics_open {metrics_open}): {body}");
                if open {
                    assert_eq!(status, StatusCode::OK, "{what}");
                } else {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
                    assert!(operation["responses"].get("401").is_some(), "{what}");
                }
            }
        }
        assert_eq!(operations, if dashboard { 9 } else { 8 });
        if !dashboard {
            let (status, _) = call(&app, Method::GET, crate::dashboard::PATH, None, None).await;
            assert_eq!(status, StatusCode::NOT_FOUND);
        }
    }
}

/// The document the library exposes is the one the default router serves.
#[tokio::test]
async fn the_exposed_document_is_the_default_routers() {
    let f = fixture(false).await;
    let (_, served) = get(&f.app, "/api/v1/admin/openapi.json").await;
    let exposed: Value = serde_json::from_str(&crate::openapi().to_json().unwrap()).unwrap();
    assert_eq!(served, exposed);
}

/// The document's largest `pool_size` is the pool's own limit: one more is refused, naming it.
#[tokio::test]
async fn the_documented_largest_size_is_the_pools() {
    let registry = Registry::new();
    let pool = ConnectionPool::builder(TestManager::new()).name("main").build().unwrap();
    registry.register(Arc::new(pool)).unwrap();
    let app = router(AdminState::builder(registry, Secret(TOKEN.to_owned())).build());
    let (_, doc) = get(&app, "/api/v1/admin/openapi.json").await;
    let max = doc.pointer("/components/schemas/ResizeRequest/properties/pool_size/maximum");
    let max = max.and_then(Value::as_u64).expect("a documented maximum");
    let uri = format!("{PREFIX}/pools/main/resize");
    let (status, body) =
        post_json(&app, &uri, json!({ "pool_size": max + 1, "max_overflow": 0 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains(&format!("must not exceed {max}")), "{body}");
}
