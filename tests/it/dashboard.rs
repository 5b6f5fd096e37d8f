//! The dashboard end to end in a real headless browser (Debian's Chromium through
//! chromedriver): a real admin server over a PostgreSQL primary with a streaming replica and two
//! Redis pools under load; the page refuses a wrong token, signs in with the right one, its
//! charts receive data, its numbers match the API's, its resize control changes the pool and
//! shows a refusal; a screenshot lands in `target/dashboard/dashboard.png`.

mod webdriver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pool_admin::{AdminConfig, PREFIX, PostgresConfig, Secret, Server};
use pool_harness::{PgInstance, redis_url, target_dir};
use pool_postgres::sqlx;
use pool_redis::PoolSettings;
use pool_redis::fred::interfaces::KeysInterface;
use serde_json::{Value, json};

use self::webdriver::{Chromedriver, Session};

const TOKEN: &str = "dashboard-token";

/// How long any one condition may take to come true on the page.
const PATIENCE: Duration = Duration::from_secs(60);

fn config(primary: &PgInstance, replica: &PgInstance) -> AdminConfig {
    let mut config = AdminConfig::default();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.admin.token = Some(Secret(TOKEN.to_owned()));
    // The test takes the optimizer's samples itself, so its recommendations hold still.
    config.admin.sample_interval = std::time::Duration::from_secs(3600);
    config.postgres.clear();
    let mut main = PostgresConfig::default();
    main.url = Secret(primary.url());
    main.replicas = vec![Secret(replica.url())];
    main.pool.pool_size = 2;
    main.pool.max_overflow = 1;
    main.pool.pool_timeout = Duration::from_secs(10);
    main.connection_budget = Some(40);
    config.postgres.insert("main".to_owned(), main);
    config.redis_url = Secret(redis_url());
    config.redis.clear();
    config.redis.insert("main".to_owned(), PoolSettings::default().pool_size(2).max_connections(4));
    config
        .redis
        .insert("cache".to_owned(), PoolSettings::default().pool_size(6).max_connections(8));
    config
}

/// The API as the test sees it.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, route: &str) -> Value {
        let url = format!("{}{PREFIX}/{route}", self.base);
        let resp = self.http.get(&url).bearer_auth(TOKEN).send().await.expect("API request");
        resp.json().await.expect("API answers JSON")
    }
}

/// Polls `read` until `done` holds, failing with `what` and the last reading after
/// [`PATIENCE`].
async fn until<T: std::fmt::Debug>(
    what: &str,
    mut read: impl AsyncFnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reading = read().await;
        if done(&reading) {
            return reading;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {PATIENCE:?}; last reading: {reading:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the page shows, read from its DOM.
async fn page(session: &Session) -> Value {
    session
        .execute(
            r#"
            const pools = {};
            for (const card of document.querySelectorAll('[data-testid=pool]')) {
              const fields = {};
              for (const dd of card.querySelectorAll('[data-field]')) fields[dd.dataset.field] = dd.textContent;
              const charts = {};
              for (const c of card.querySelectorAll('canvas')) {
                charts[c.dataset.chart] = { points: Number(c.dataset.points), max: Number(c.dataset.max ?? 0) };
              }
              const output = card.querySelector('output');
              pools[card.dataset.pool] = {
                fields, charts,
                health: card.querySelector('.pool-health').textContent,
                resize: output.textContent, resize_class: output.className,
                pool_size_input: card.querySelector('input[name=pool_size]').value,
              };
            }
            const rows = (id) => [...document.querySelectorAll(`[data-testid=${id}]`)];
            return {
              pools,
              recommendations: rows('recommendation').map((tr) => [tr.dataset.pool, tr.dataset.severity, tr.cells[2].textContent]),
              replicas: rows('replica').map((tr) => [tr.dataset.pool, tr.cells[2].textContent, tr.cells[3].textContent]),
              health: document.getElementById('health').textContent,
              auth_error: document.getElementById('auth-error').textContent,
              login_shown: !document.getElementById('login').hidden,
              board_shown: !document.getElementById('board').hidden,
              hash: location.hash,
            };
            "#,
        )
        .await
        .expect("reading the page")
}

/// The numbers each pool's card shows (`data-field`), named as in the API's stats, but for
/// `max_size` (`pool_size + max_overflow`).
const FIELDS: [&str; 10] = [
    "active_connections",
    "idle_connections",
    "waiting",
    "open_connections",
    "pool_size",
    "max_overflow",
    "max_size",
    "acquires",
    "connections_created",
    "timeouts",
];

type Numbers = BTreeMap<String, BTreeMap<&'static str, String>>;

/// Pool id → [`FIELDS`] as the API's stats give them.
fn api_numbers(stats: &Value) -> Numbers {
    let mut out = BTreeMap::new();
    for group in ["database_pools", "redis_pools"] {
        for (id, s) in stats[group].as_object().expect("pools by id") {
            let value = |field: &str| match field {
                "max_size" => (s["pool_size"].as_u64().unwrap()
                    + s["max_overflow"].as_u64().unwrap())
                .to_string(),
                _ => s[field].to_string(),
            };
            let fields = FIELDS.iter().map(|f| (*f, value(f))).collect();
            out.insert(id.clone(), fields);
        }
    }
    out
}

/// Pool id → [`FIELDS`] as the page shows them.
fn page_numbers(page: &Value) -> Numbers {
    let pools = page["pools"].as_object().expect("pools by id");
    pools
        .iter()
        .map(|(id, p)| {
            let shown = |f: &str| p["fields"][f].as_str().unwrap_or("(missing)").to_owned();
            (id.clone(), FIELDS.iter().map(|f| (*f, shown(f))).collect())
        })
        .collect()
}

/// Readings and writes on every pool until `stop`, for a minute at most.
fn spawn_load(pools: &Arc<pool_admin::Pools>, stop: &Arc<AtomicBool>) -> tokio::task::JoinSet<()> {
    let mut load = tokio::task::JoinSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    for worker in 0..6u64 {
        let (pools, stop) = (Arc::clone(pools), Arc::clone(stop));
        load.spawn(async move {
            let cluster = &pools.clusters["main"];
            let redis = pools.redis.as_ref().expect("redis pools");
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                step += 1;
                if worker % 2 == 0 {
                    let mut conn = cluster.session().await.expect("primary session");
                    sqlx::query("SELECT pg_sleep(0.02)").execute(&mut *conn).await.expect("query");
                } else {
                    let mut conn = cluster.session_read_only().await.expect("replica session");
                    sqlx::query("SELECT pg_sleep(0.01)").execute(&mut *conn).await.expect("read");
                }
                let pool =
                    redis.get(if worker == 0 { "cache" } else { "main" }).expect("redis pool");
                let conn = pool.exclusive().await.expect("redis checkout");
                let key = format!("pool-admin-dashboard-it:{worker}");
                let _: () = conn.set(&key, step, None, None, false).await.expect("SET");
            }
        });
    }
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_pools_live_and_resizes_them() {
    webdriver::require_browser();
    let started = Instant::now();
    let dir = target_dir().join("dashboard");
    let primary = tokio::task::block_in_place(PgInstance::start).expect("throwaway postgres");
    let replica = tokio::task::block_in_place(|| primary.start_replica()).expect("replica");
    let server = Server::bind(&config(&primary, &replica)).await.expect("server starts");
    let base = format!("http://{}", server.local_addr());
    let api = Api { http: reqwest::Client::new(), base: base.clone() };
    let (state, pools) = (server.state().clone(), server.pools().clone());
    let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.await;
    }));
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = spawn_load(&pools, &stop_load);

    let driver = Chromedriver::start(&dir).await.expect("chromedriver");
    let session = driver.session(1400, 1000).await.expect("browser session");

    // A wrong token, handed over in the fragment: the page takes it, drops it from the
    // address bar, and shows the API's refusal on its login form.
    session.goto(&format!("{base}/dashboard/#token=not-the-token")).await.unwrap();
    let refused = until(
        "the page shows the refusal",
        async || page(&session).await,
        |p| p["auth_error"].as_str().unwrap().contains("wrong bearer token"),
    )
    .await;
    assert_eq!(refused["login_shown"], true, "{refused:#}");
    assert_eq!(refused["board_shown"], false, "no data without the token: {refused:#}");
    assert_eq!(refused["hash"], "", "the token leaves the address bar");

    // The right token through the login form.
    let input = session.find("#token-input").await.unwrap();
    session.type_text(&input, TOKEN).await.unwrap();
    session.click(&session.find("#login-button").await.unwrap()).await.unwrap();

    // The optimizer's windows, taken while the load runs (paced like the server's own
    // sampling loop, which the config keeps out of the way so that the recommendations hold
    // still once the test stops sampling).
    for _ in 0..5 {
        state.sample();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Every pool's charts fill, and every pool's checkouts per second rose above zero.
    let ids: Vec<String> = api_numbers(&api.get("stats").await).into_keys().collect();
    assert_eq!(
        ids,
        ["postgresql:main", "postgresql:main-replica-1", "redis:cache", "redis:main"],
        "the pools of the config"
    );
    let charted = until(
        "every chart receives data",
        async || page(&session).await,
        |p| {
            ids.iter().all(|id| {
                let charts = &p["pools"][id]["charts"];
                ["connections", "wait", "checkouts"]
                    .iter()
                    .all(|c| charts[c]["points"].as_u64() >= Some(3))
                    && charts["checkouts"]["max"].as_f64() > Some(0.0)
            })
        },
    )
    .await;
    assert_eq!(charted["board_shown"], true);

    // Once the load stops, the page's numbers and lists are the API's (retried until one poll
    // of the page and one request of ours see the same moment: the cluster's lag probe still
    // checks out connections).
    stop_load.store(true, Ordering::Relaxed);
    while let Some(worker) = load.join_next().await {
        worker.expect("load worker");
    }
    until(
        "the page's numbers match the API's",
        async || (api_numbers(&api.get("stats").await), page(&session).await),
        |(expected, shown)| *expected == page_numbers(shown),
    )
    .await;
    let stats = api.get("stats").await;
    // With a replica and both backends, the body reads as the wire type the document is derived
    // from, replicas named by pool id.
    let typed: pool_admin::wire::StatsResponse =
        serde_json::from_value(stats.clone()).expect("stats as the document says");
    let replicas: Vec<&str> =
        typed.replication.0["main"].replicas.iter().map(|r| r.pool.as_str()).collect();
    assert_eq!(replicas, ["postgresql:main-replica-1"]);
    let expected_recommendations: Vec<Value> = stats["recommendations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| json!([r["pool"], r["severity"], r["issue"]]))
        .collect();
    assert!(!expected_recommendations.is_empty(), "the optimizer has something to say: {stats:#}");
    let expected_replicas: Vec<Value> = stats["replication"]["main"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let state = if r["banned"] == true {
                "banned"
            } else if r["lagging"] == true {
                "lagging"
            } else {
                "serving"
            };
            json!([r["pool"], state, r["bans"].to_string()])
        })
        .collect();
    assert_eq!(expected_replicas.len(), 1, "{stats:#}");
    let shown = until(
        "the page's lists match the API's",
        async || page(&session).await,
        |p| {
            p["recommendations"].as_array() == Some(&expected_recommendations)
                && p["replicas"].as_array() == Some(&expected_replicas)
                && p["health"] == "healthy"
                && ids.iter().all(|id| p["pools"][id]["health"] == "healthy")
        },
    )
    .await;
    let health = api.get("health").await;
    assert_eq!(health["status"], "healthy", "{health:#}");
    assert_eq!(shown["pools"]["postgresql:main"]["pool_size_input"], "2");

    // The resize control: a size the pool refuses shows the API's reason...
    let card = r#"[data-pool="postgresql:main"]"#;
    let pool_size = session.find(&format!("{card} input[name=pool_size]")).await.unwrap();
    let submit = session.find(&format!("{card} button[type=submit]")).await.unwrap();
    session.replace_text(&pool_size, "0").await.unwrap();
    let typed = session
        .execute(&format!("return document.querySelector('{card} input[name=pool_size]').value"))
        .await;
    assert_eq!(typed.unwrap(), "0", "the input holds what was typed");
    session.click(&submit).await.unwrap();
    let refused = until(
        "the refusal shows",
        async || page(&session).await,
        |p| p["pools"]["postgresql:main"]["resize_class"].as_str().unwrap().contains("error"),
    )
    .await;
    let message = refused["pools"]["postgresql:main"]["resize"].as_str().unwrap();
    assert!(message.contains("pool_size = 0: must be at least 1"), "{message}");
    assert_eq!(pools.clusters["main"].primary().config().pool_size, 2, "a refusal changes nothing");

    // ...a blank field is refused by the page itself (it would read as 0)...
    let max_overflow = session.find(&format!("{card} input[name=max_overflow]")).await.unwrap();
    session.replace_text(&pool_size, "3").await.unwrap();
    session.replace_text(&max_overflow, "\u{E003}").await.unwrap(); // select all, Backspace
    session.click(&submit).await.unwrap();
    let blank = until(
        "the blank field is refused",
        async || page(&session).await,
        |p| p["pools"]["postgresql:main"]["resize"].as_str().unwrap().contains("whole number"),
    )
    .await;
    assert_eq!(blank["pools"]["postgresql:main"]["resize"], "max_overflow must be a whole number");
    let unchanged = pools.clusters["main"].primary().config();
    assert_eq!((unchanged.pool_size, unchanged.max_overflow), (2, 1), "nothing was sent");
    session.replace_text(&max_overflow, "1").await.unwrap();

    // ...and one it accepts changes the pool, which the page then shows.
    session.replace_text(&pool_size, "4").await.unwrap();
    let typed = session
        .execute(&format!("return document.querySelector('{card} input[name=pool_size]').value"))
        .await;
    assert_eq!(typed.unwrap(), "4", "the input holds what was typed");
    session.click(&submit).await.unwrap();
    let resized = until(
        "the page shows the new size",
        async || page(&session).await,
        |p| {
            let pool = &p["pools"]["postgresql:main"];
            pool["resize_class"].as_str().unwrap().contains("ok")
                && pool["fields"]["pool_size"] == "4"
                && pool["fields"]["max_size"] == "5"
        },
    )
    .await;
    assert_eq!(
        resized["pools"]["postgresql:main"]["resize"],
        "resized: pool_size 4, max_overflow 1"
    );
    assert_eq!(pools.clusters["main"].primary().config().pool_size, 4);
    let config = api.get("config").await;
    assert_eq!(config["pools"]["postgresql:main"]["pool_size"], 4, "{config:#}");

    // The screenshot, with the whole page in the window.
    let height = session.execute("return document.documentElement.scrollHeight").await.unwrap();
    let height = u32::try_from(height.as_u64().unwrap_or(1000)).unwrap_or(1000).clamp(1000, 4000);
    session.set_window_size(1400, height + 200).await.unwrap();
    session.execute("window.scrollTo(0, 0)").await.unwrap();
    let png = session.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let path = dir.join("dashboard.png");
    std::fs::write(&path, png).expect("writing the screenshot");
    eprintln!("dashboard screenshot: {} (test took {:?})", path.display(), started.elapsed());

    session.quit().await.expect("closing the browser");
    drop(driver);
    stop_server.send(()).unwrap();
    serving.await.unwrap().unwrap();
    drop(replica);
    drop(primary);
}
