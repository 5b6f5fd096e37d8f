//! pool-metrics over real pools: a PostgreSQL pool and a Redis pool in one registry after a
//! known sequence of operations, rendered for Prometheus (compared with an expected file, with
//! the timing values masked, and parsed back by an independent parser) and read back through
//! OpenTelemetry's in-memory exporter.

use std::sync::Arc;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use pool_core::{PoolConfig, Registry};
use pool_harness::{postgres_url, redis_url};
use pool_metrics::{OtelMetrics, render};
use pool_postgres::{PgManager, PgPool, sqlx};
use pool_redis::fred::interfaces::KeysInterface;
use pool_redis::{PoolSettings, RedisPool};

/// Masks the values that depend on timing (histogram buckets and sums).
fn mask(text: &str) -> String {
    text.lines()
        .map(|l| {
            let timing = l.contains("_bucket{")
                || l.contains("_sum{")
                || l.contains("_used_time_seconds_total{");
            match l.rsplit_once(' ') {
                Some((series, _)) if timing && !l.starts_with('#') => format!("{series} <t>"),
                _ => l.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_exporters_report_real_postgres_and_redis_pools() {
    let registry = Registry::new();
    let mut config = PoolConfig::default();
    config.pool_size = 2;
    config.max_overflow = 1;
    let pg = PgPool::builder(PgManager::from_url(&postgres_url()).unwrap())
        .name("db")
        .config(config)
        .build()
        .unwrap();
    let redis = RedisPool::connect(
        "cache",
        &redis_url(),
        PoolSettings::default().pool_size(2).max_connections(3),
    )
    .await
    .unwrap();
    registry.register(Arc::new(pg.clone())).unwrap();
    registry.register(Arc::new(redis.clone())).unwrap();
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let _otel = OtelMetrics::new(&provider.meter("it"), registry.clone()).unwrap();

    // The known sequence: 5 queries, 3 Redis checkouts, one Redis connection detached (its
    // hold counts in the use time too).
    for i in 0..5i32 {
        let mut conn = pg.acquire().await.unwrap();
        let n: i32 = sqlx::query_scalar("SELECT $1").bind(i).fetch_one(&mut *conn).await.unwrap();
        assert_eq!(n, i);
    }
    for i in 0..3 {
        let conn = redis.exclusive().await.unwrap();
        let _: () = conn.set("pool-metrics-it", i, None, None, false).await.unwrap();
    }
    drop(redis.exclusive().await.unwrap().detach());
    // Until both pools have their two connections idle: warm, and back from the resets that
    // follow each return.
    while pg.state().idle < 2 || redis.engine().state().idle < 2 {
        tokio::task::yield_now().await;
    }

    let text = render(&registry);
    expect_test::expect_file!["expected-real.prom"].assert_eq(&mask(&text));

    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, pool: &str, system: &str| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.get("db_client_connection_pool_name") == Some(pool)
                    && s.labels.get("db_system_name") == Some(system)
            })
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name} for {system} {pool}"))
    };
    assert_eq!(value("db_client_connection_pool_size", "db", "postgresql"), 2.0);
    assert_eq!(value("db_client_connection_max", "cache", "redis"), 3.0);
    assert_eq!(value("db_client_connection_timeouts_total", "db", "postgresql"), 0.0);
    assert_eq!(value("db_client_connection_created_total", "cache", "redis"), 3.0);
    // Connections were held: the time in use grew (its value is timing, masked above).
    for (pool, system) in [("db", "postgresql"), ("cache", "redis")] {
        let used = value("db_client_connection_used_time_seconds_total", pool, system);
        assert!(used > 0.0, "{system} {pool}: {used}");
    }
    let waits: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "db_client_connection_wait_time_seconds")
        .filter_map(|s| match &s.value {
            prometheus_parse::Value::Histogram(h) => {
                Some((s.labels.get("db_system_name").unwrap().to_owned(), h.last().unwrap().count))
            }
            _ => None,
        })
        .collect();
    assert!(
        waits.contains(&("postgresql".to_owned(), 5.0))
            && waits.contains(&("redis".to_owned(), 4.0)),
        "{waits:?}"
    );

    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metric = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .find(|m| m.name() == "db.client.connection.wait_time")
        .expect("wait_time exported");
    let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric.data() else {
        panic!("{:?}", metric.data())
    };
    let mut counts: Vec<(String, u64)> = h
        .data_points()
        .map(|p| {
            let system = p
                .attributes()
                .find(|kv| kv.key.as_str() == "db.system.name")
                .unwrap()
                .value
                .to_string();
            (system, p.count())
        })
        .collect();
    counts.sort();
    assert_eq!(counts, vec![("postgresql".to_owned(), 5), ("redis".to_owned(), 4)]);
    pg.close().await.unwrap();
    redis.close().await.unwrap();
}
