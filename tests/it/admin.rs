//! pool-admin over a real socket against real PostgreSQL and Redis, driven by an HTTP client:
//! stats move after load, reset and resize take effect, health follows a server that stops
//! and comes back, metrics render both backends.

use std::time::{Duration, Instant};

use pool_admin::{AdminConfig, PREFIX, PostgresConfig, Secret, Server, wire};
use pool_harness::{PgInstance, redis_url};
use pool_postgres::{ResetOnReturn, sqlx};
use pool_redis::PoolSettings;
use pool_redis::fred::interfaces::KeysInterface;
use serde_json::{Value, json};

const TOKEN: &str = "integration-token";

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn config(pg: &PgInstance) -> AdminConfig {
    let mut config = AdminConfig::default();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.token = Some(Secret(TOKEN.to_owned()));
    config.admin.health_timeout = std::time::Duration::from_secs(2);
    config.postgres.clear();
    let mut main = PostgresConfig::default();
    main.url = Secret(pg.url());
    main.reset_on_return = ResetOnReturn::Transaction; // not the default: it must reach the pools
    let p = &mut main.pool;
    p.pool_size = 2;
    p.max_overflow = 2;
    p.pool_timeout = Duration::from_secs(2);
    p.connect_timeout = Duration::from_secs(1);
    p.max_connecting = 3;
    p.idle_timeout = Some(Duration::from_secs(90));
    p.leak_detection_threshold = Some(Duration::from_secs(30));
    p.min_idle = Some(1);
    p.pool_use_lifo = false;
    p.pre_ping_bypass = Duration::from_millis(250);
    p.health_check_interval = Some(Duration::from_secs(7));
    config.postgres.insert("main".to_owned(), main);
    config.redis_url = Secret(redis_url());
    config.redis.clear();
    config.redis.insert("main".to_owned(), PoolSettings::default().pool_size(2).max_connections(4));
    config
        .redis
        .insert("cache".to_owned(), PoolSettings::default().pool_size(3).max_connections(6));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_server_reports_resets_resizes_and_follows_health() {
    let pg = tokio::task::block_in_place(PgInstance::start).expect("throwaway postgres");
    let server = Server::bind(&config(&pg)).await.expect("server starts");
    let client =
        Client { http: reqwest::Client::new(), base: format!("http://{}", server.local_addr()) };
    let pools = server.pools().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // Load on both backends.
    let cluster = &pools.clusters["main"];
    for i in 0..20i64 {
        let mut conn = cluster.session().await.expect("session");
        let n: i64 = sqlx::query_scalar("SELECT $1::int8")
            .bind(i)
            .fetch_one(&mut *conn)
            .await
            .expect("query");
        assert_eq!(n, i);
    }
    let redis = pools.redis.as_ref().expect("redis pools");
    let main = redis.get("main").expect("redis main");
    for i in 0..10 {
        let conn = main.exclusive().await.expect("checkout");
        let _: () = conn.set("pool-admin-it", i, None, None, false).await.expect("SET");
    }

    let (status, stats) = client.get(&format!("{PREFIX}/stats")).await;
    assert_eq!(status, 200, "{stats}");
    assert!(
        stats["database_pools"]["postgresql:main"]["acquires"].as_u64().unwrap() >= 20,
        "{stats:#}"
    );
    assert!(stats["redis_pools"]["redis:main"]["acquires"].as_u64().unwrap() >= 10, "{stats:#}");
    assert_eq!(stats["redis_pools"]["redis:cache"]["pool_size"], 3);
    assert_eq!(stats["database_pools"]["postgresql:main"]["backend"], "postgresql");
    // The body reads as the wire type the document is derived from, and the Redis numbers add
    // up as it says: in use + available <= created <= max, the shared clients apart.
    let typed: wire::StatsResponse = serde_json::from_value(stats.clone()).expect("stats");
    for (id, redis) in &typed.redis_pools {
        assert!(
            redis.in_use_connections + redis.available_connections <= redis.created_connections
                && redis.created_connections <= redis.max_connections,
            "{id}: {redis:#?}"
        );
        assert_eq!(redis.shared_clients, Some(1), "{id}: the server hands its Redis pools over");
    }

    let (status, body) =
        client.post(&format!("{PREFIX}/reset-stats"), json!({ "pool": "postgresql:main" })).await;
    assert_eq!((status, body), (200, json!({ "reset": ["postgresql:main"] })));
    let (_, stats) = client.get(&format!("{PREFIX}/stats")).await;
    assert_eq!(stats["database_pools"]["postgresql:main"]["acquires"], 0);
    assert!(
        stats["redis_pools"]["redis:main"]["acquires"].as_u64().unwrap() >= 10,
        "other pools keep their counters"
    );

    let (status, body) =
        client.post(&format!("{PREFIX}/pools/main/resize"), json!({ "pool_size": 3 })).await;
    assert_eq!(status, 409, "main is both a postgresql and a redis pool: {body}");
    let (status, body) = client
        .post(&format!("{PREFIX}/pools/postgresql:main/resize"), json!({ "pool_size": 5 }))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({ "pool": "postgresql:main", "pool_size": 5, "max_overflow": 2 }))
    );
    let primary = cluster.primary().config();
    assert_eq!(primary.pool_size, 5);
    // The file's engine settings reach the pools.
    assert_eq!(primary.max_connecting, 3);
    assert_eq!(primary.idle_timeout, Some(Duration::from_secs(90)));
    assert_eq!(primary.leak_detection_threshold, Some(Duration::from_secs(30)));
    assert_eq!(primary.min_idle, Some(1));
    assert!(!primary.pool_use_lifo);
    assert_eq!(cluster.primary().manager().resets_on_return(), ResetOnReturn::Transaction);
    assert!(
        cluster
            .replicas()
            .iter()
            .all(|r| r.manager().resets_on_return() == ResetOnReturn::Transaction)
    );
    assert_eq!(primary.pre_ping_bypass, Duration::from_millis(250));
    assert_eq!(primary.health_check_interval, Some(Duration::from_secs(7)));
    let (_, config) = client.get(&format!("{PREFIX}/config")).await;
    serde_json::from_value::<wire::ConfigResponse>(config.clone()).expect("config");
    let (_, optimize) = client.get(&format!("{PREFIX}/optimize")).await;
    serde_json::from_value::<wire::OptimizeResponse>(optimize).expect("optimize");
    assert_eq!(config["pools"]["postgresql:main"]["pool_size"], 5);
    assert!(!config.to_string().contains(TOKEN), "the token never leaves the server");

    let (status, _) = client.get(&format!("{PREFIX}/health")).await;
    assert_eq!(status, 200);
    // Nothing holds a connection now, so each probe checks an idle one in place: probes are
    // not checkouts.
    let acquires = |stats: &Value| {
        (
            stats["database_pools"]["postgresql:main"]["acquires"].clone(),
            stats["redis_pools"]["redis:main"]["acquires"].clone(),
        )
    };
    let (_, before) = client.get(&format!("{PREFIX}/stats")).await;
    for _ in 0..3 {
        assert_eq!(client.get(&format!("{PREFIX}/health")).await.0, 200);
    }
    let (_, after) = client.get(&format!("{PREFIX}/stats")).await;
    assert_eq!(acquires(&after), acquires(&before), "health probes counted as checkouts");
    tokio::task::block_in_place(|| pg.stop()).expect("stop postgres");
    let (status, health) = client.get(&format!("{PREFIX}/health")).await;
    assert_eq!(status, 503, "{health:#}");
    serde_json::from_value::<wire::HealthResponse>(health.clone()).expect("health");
    assert_eq!(health["pools"]["postgresql:main"]["healthy"], false, "{health:#}");
    tokio::task::block_in_place(|| pg.start_again()).expect("start postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, health) = client.get(&format!("{PREFIX}/health")).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "health never came back: {health:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let metrics = client
        .http
        .get(format!("{}/metrics", client.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"db_client_connection_pool_size{db_client_connection_pool_name="main",db_system_name="postgresql"} 5"#), "{metrics}");
    assert!(metrics.contains(r#"db_client_connection_pool_size{db_client_connection_pool_name="cache",db_system_name="redis"} 3"#));
    let unauthorized =
        client.http.get(format!("{}{PREFIX}/stats", client.base)).send().await.unwrap();
    assert_eq!(unauthorized.status().as_u16(), 401);

    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    assert!(cluster.primary().is_closed(), "shutdown closes the pools");
}

/// The Redis pools share the server's `maxclients` as their budget: a resize past it is refused
/// before it opens a connection (a typo like `pool_size: 50000` would otherwise take every client
/// slot of the server), one within it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_resizes_stay_within_the_servers_maxclients() {
    let redis =
        tokio::task::block_in_place(pool_harness::RedisInstance::start).expect("throwaway redis");
    let set = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "config", "set", "maxclients", "40"])
        .output()
        .expect("redis-cli (Debian package redis-tools)");
    assert!(set.status.success(), "{set:?}");
    let mut config = AdminConfig::default();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.token = Some(Secret(TOKEN.to_owned()));
    config.postgres.clear();
    config.redis_url = Secret(redis.url());
    config.redis.clear();
    for (name, size) in [("main", 2), ("cache", 3)] {
        config.redis.insert(
            name.to_owned(),
            PoolSettings::default().pool_size(size).max_connections(2 * size),
        );
    }
    let server = Server::bind(&config).await.expect("server starts");
    let client =
        Client { http: reqwest::Client::new(), base: format!("http://{}", server.local_addr()) };
    let pools = server.pools().clone();
    let shared: usize =
        pools.redis.as_ref().unwrap().iter().map(|p| p.stats().shared_clients).sum();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));

    // 40 clients, less the shared ones, less `cache`'s 6: `main` may open 40 - shared - 6.
    let room = 40 - shared - 6;
    let (status, body) = client
        .post(
            &format!("{PREFIX}/pools/redis:main/resize"),
            json!({ "pool_size": room - 1, "max_overflow": 2 }),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&format!("connection budget of redis server ({} allowed", 40 - shared)),
        "{message}"
    );
    assert_eq!(pools.registry.get("redis:main").unwrap().config().pool_size, 2, "unchanged");
    let (status, body) = client
        .post(
            &format!("{PREFIX}/pools/redis:main/resize"),
            json!({ "pool_size": room - 2, "max_overflow": 2 }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(pools.registry.get("redis:main").unwrap().config().pool_size, room - 2);

    stop.send(()).unwrap();
    serving.await.unwrap().expect("server ran");
}
