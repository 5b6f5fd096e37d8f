//! Both exporters over the same pools after a known sequence of operations, on tokio's paused
//! clock (which the pools read, `Builder::tokio_clock`) so every duration is exact.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};
use pool_core::testing::TestManager;
use pool_core::{
    ConnectionPool, DynPool, Health, ObserveError, Observer, PoolConfig, PoolStats, Registry,
    ResizeError, Routing,
};

use crate::{METRICS, OtelMetrics, render};

/// A pool with a router's [`Routing`] in its stats, as `pool-postgres`'s cluster registers its
/// pools.
#[derive(Debug)]
struct Routed(ConnectionPool<TestManager>, Routing);

#[async_trait::async_trait]
impl DynPool for Routed {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn backend(&self) -> &'static str {
        DynPool::backend(&self.0)
    }
    fn stats(&self) -> PoolStats {
        let mut stats = self.0.stats();
        stats.routing = Some(self.1.clone());
        stats
    }
    fn config(&self) -> PoolConfig {
        self.0.config()
    }
    fn resize(&self, pool_size: usize, max_overflow: usize) -> Result<(), ResizeError> {
        self.0.resize(pool_size, max_overflow)
    }
    fn reset_stats(&self) {
        self.0.reset_stats();
    }
    fn set_observer(&self, observer: Arc<dyn Observer>) -> Result<(), ObserveError> {
        self.0.set_observer(observer)
    }
    async fn health(&self) -> Health {
        DynPool::health(&self.0).await
    }
}

/// Whether only a router's pools have `metric`.
fn routing_only(metric: &crate::Metric) -> bool {
    metric.name.contains("fallbacks") || metric.name.contains(".replica.")
}

/// Two pools, `db` and `cache`, after a scripted sequence; returns them in a registry, with a
/// third, `db-replica-1`, a banned and lagging replica of `db` (whose stats say `db` took 7
/// reads for it).
async fn scripted(before: impl FnOnce(&Registry)) -> Registry {
    let registry = Registry::new();
    let m = TestManager::new();
    m.set_connect_delay(Duration::from_millis(2));
    let db = ConnectionPool::builder(m.clone())
        .tokio_clock()
        .name("db")
        .pool_size(2)
        .max_overflow(0)
        .build()
        .unwrap();
    let cache = ConnectionPool::builder(m.clone())
        .tokio_clock()
        .name("cache")
        .pool_size(1)
        .max_overflow(3)
        .build()
        .unwrap();
    let replica = ConnectionPool::builder(m.clone())
        .tokio_clock()
        .name("db-replica-1")
        .pool_size(1)
        .max_overflow(0)
        .min_idle(Some(0))
        .build()
        .unwrap();
    registry.register(Arc::new(Routed(db.clone(), Routing::Primary { fallbacks: 7 }))).unwrap();
    registry.register(Arc::new(cache.clone())).unwrap();
    let banned = Routing::Replica {
        bans: 2,
        banned: true,
        lagging: true,
        lag: Some(Duration::from_millis(12_500)),
    };
    registry.register(Arc::new(Routed(replica, banned))).unwrap();
    before(&registry);
    m.wait_until(|c| c.connects == 3).await;
    while db.state().idle < 2 || cache.state().idle < 1 {
        tokio::task::yield_now().await;
    }
    let a = db.acquire().await.unwrap();
    let b = db.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(db.acquire_timeout(Duration::from_millis(100)).await.is_err());
    drop(a);
    drop(b);
    let c = cache.acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    drop(c);
    cache.acquire().await.unwrap().detach();
    m.wait_until(|c| c.connects == 4).await;
    while cache.state().idle < 1 {
        tokio::task::yield_now().await;
    }
    let _held = cache.acquire().await.unwrap().detach();
    registry
}

#[tokio::test(start_paused = true)]
async fn prometheus_text_matches_the_expected_file_and_parses_back() {
    let registry = scripted(|_| {}).await;
    let text = render(&registry);
    expect_test::expect_file!["../tests/expected.prom"].assert_eq(&text);

    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, pool: &str, extra: Option<(&str, &str)>| -> f64 {
        let found: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| {
                s.metric == name && s.labels.get("db_client_connection_pool_name") == Some(pool)
            })
            .filter(|s| extra.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .collect();
        assert_eq!(found.len(), 1, "{name} for {pool} {extra:?}: {found:?}");
        match &found[0].value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: unexpected {other:?}"),
        }
    };
    // Every family, for both pools, with the backend label.
    for m in METRICS.iter().filter(|m| !routing_only(m)) {
        for pool in ["db", "cache"] {
            let n = scrape
                .samples
                .iter()
                .filter(|s| {
                    s.metric == m.prometheus
                        && s.labels.get("db_client_connection_pool_name") == Some(pool)
                })
                .inspect(|s| assert_eq!(s.labels.get("db_system_name"), Some("test")))
                .count();
            assert!(n >= 1, "{} missing for {pool}", m.prometheus);
        }
    }
    // The router's metrics, only on its pools.
    assert_eq!(value("db_client_connection_fallbacks_total", "db", None), 7.0);
    assert_eq!(value("db_client_connection_replica_bans_total", "db-replica-1", None), 2.0);
    let replica = |s| Some(("db_client_connection_replica_state", s));
    let states = ["usable", "banned", "lagging"]
        .map(|s| value("db_client_connection_replica_state", "db-replica-1", replica(s)));
    assert_eq!(states, [0.0, 1.0, 0.0], "banned wins over lagging");
    assert_eq!(value("db_client_connection_replica_lag_seconds", "db-replica-1", None), 12.5);
    let routed = |s: &&prometheus_parse::Sample| {
        s.metric.contains("fallbacks") || s.metric.contains("replica")
    };
    let on_cache = scrape
        .samples
        .iter()
        .filter(routed)
        .any(|s| s.labels.get("db_client_connection_pool_name") == Some("cache"));
    assert!(!on_cache, "a pool outside any router has no routing metrics");
    let state = |s| Some(("db_client_connection_state", s));
    assert_eq!(value("db_client_connection_count", "db", state("used")), 0.0);
    assert_eq!(value("db_client_connection_count", "db", state("idle")), 2.0);
    assert_eq!(value("db_client_connection_count", "cache", state("used")), 0.0);
    assert_eq!(value("db_client_connection_max", "cache", None), 4.0);
    assert_eq!(value("db_client_connection_timeouts_total", "db", None), 1.0);
    assert_eq!(value("db_client_connection_timeouts_total", "cache", None), 0.0);
    assert_eq!(value("db_client_connection_created_total", "cache", None), 2.0);
    let detached = Some(("db_client_connection_close_reason", "detached"));
    assert_eq!(value("db_client_connection_closed_total", "cache", detached), 2.0);
    assert_eq!(value("db_client_connection_used_peak", "db", None), 2.0);
    let histogram = |name: &str, pool: &str| {
        scrape
            .samples
            .iter()
            .find_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h)
                    if s.metric == name
                        && s.labels.get("db_client_connection_pool_name") == Some(pool) =>
                {
                    Some(h.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name} for {pool}"))
    };
    let use_time = histogram("db_client_connection_use_time_seconds", "db");
    assert_eq!(use_time.last().unwrap().count, 2.0, "two uses");
    let le = |h: &[prometheus_parse::HistogramCount], bound: f64| {
        h.iter().find(|b| b.less_than == bound).unwrap().count
    };
    assert_eq!((le(&use_time, 0.1), le(&use_time, 0.25)), (0.0, 2.0), "both held 130 ms");
    let create = histogram("db_client_connection_create_time_seconds", "cache");
    assert_eq!((le(&create, 0.001), le(&create, 0.0025)), (0.0, 2.0), "connects took 2 ms");
}

#[tokio::test(start_paused = true)]
async fn otel_instruments_read_back_through_the_sdk() {
    let exporter = InMemoryMetricExporter::default();
    let provider = SdkMeterProvider::builder()
        .with_reader(PeriodicReader::builder(exporter.clone()).build())
        .build();
    let meter = provider.meter("pool-metrics-test");
    let mut keep = None;
    let registry = scripted(|r| keep = Some(OtelMetrics::new(&meter, r.clone()).unwrap())).await;
    assert!(keep.is_some());
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let metrics: Vec<_> =
        exported.iter().flat_map(|r| r.scope_metrics()).flat_map(|s| s.metrics()).collect();
    for m in &METRICS {
        let found = metrics
            .iter()
            .find(|x| x.name() == m.name)
            .unwrap_or_else(|| panic!("{} not exported", m.name));
        assert_eq!(found.unit(), m.unit, "{}", m.name);
        assert_eq!(found.description(), m.help);
        let kind_ok = match (m.kind, found.data()) {
            (crate::Kind::Gauge, AggregatedMetrics::I64(MetricData::Sum(s))) => !s.is_monotonic(),
            (crate::Kind::Gauge, AggregatedMetrics::F64(MetricData::Gauge(_))) => m.unit == "s",
            (crate::Kind::Counter, AggregatedMetrics::U64(MetricData::Sum(s))) => s.is_monotonic(),
            (crate::Kind::Counter, AggregatedMetrics::F64(MetricData::Sum(s))) => {
                s.is_monotonic() && m.unit == "s"
            }
            (crate::Kind::Histogram, AggregatedMetrics::F64(MetricData::Histogram(_))) => true,
            _ => false,
        };
        assert!(kind_ok, "{}: {:?}", m.name, found.data());
    }
    let attrs = |a: Vec<&opentelemetry::KeyValue>| -> Vec<(String, String)> {
        let mut v: Vec<_> = a.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect();
        v.sort();
        v
    };
    let find = |name: &str| metrics.iter().find(|x| x.name() == name).unwrap();
    let AggregatedMetrics::U64(MetricData::Sum(timeouts)) =
        find("db.client.connection.timeouts").data()
    else {
        panic!()
    };
    let points: Vec<_> =
        timeouts.data_points().map(|p| (attrs(p.attributes().collect()), p.value())).collect();
    let pool = |name: &str| {
        vec![
            ("db.client.connection.pool.name".to_owned(), name.to_owned()),
            ("db.system.name".to_owned(), "test".to_owned()),
        ]
    };
    assert!(
        points.contains(&(pool("db"), 1)) && points.contains(&(pool("cache"), 0)),
        "{points:?}"
    );
    let AggregatedMetrics::I64(MetricData::Sum(count)) = find("db.client.connection.count").data()
    else {
        panic!()
    };
    let idle_db = count
        .data_points()
        .find(|p| {
            let a = attrs(p.attributes().collect());
            a.contains(&("db.client.connection.state".to_owned(), "idle".to_owned()))
                && a.contains(&("db.client.connection.pool.name".to_owned(), "db".to_owned()))
        })
        .unwrap();
    assert_eq!(idle_db.value(), 2);
    let AggregatedMetrics::F64(MetricData::Histogram(wait)) =
        find("db.client.connection.wait_time").data()
    else {
        panic!()
    };
    let db_wait =
        wait.data_points().find(|p| attrs(p.attributes().collect()) == pool("db")).unwrap();
    assert_eq!(db_wait.count(), 2, "two acquires served; the timeout records no wait");
    assert_eq!(db_wait.bounds().count(), pool_core::HISTOGRAM_BOUNDS.len());
    let AggregatedMetrics::F64(MetricData::Histogram(usage)) =
        find("db.client.connection.use_time").data()
    else {
        panic!()
    };
    let db_use =
        usage.data_points().find(|p| attrs(p.attributes().collect()) == pool("db")).unwrap();
    assert_eq!((db_use.count(), db_use.sum()), (2, 0.26));
    let AggregatedMetrics::F64(MetricData::Sum(used)) =
        find("db.client.connection.used.time").data()
    else {
        panic!()
    };
    let mut points: Vec<_> =
        used.data_points().map(|p| (attrs(p.attributes().collect()), p.value())).collect();
    points.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        points,
        [(pool("cache"), 0.005), (pool("db"), 0.26), (pool("db-replica-1"), 0.0)],
        "db: two connections in use 130 ms; cache: one 5 ms (the detached ones none)"
    );
    let AggregatedMetrics::U64(MetricData::Sum(fallbacks)) =
        find("db.client.connection.fallbacks").data()
    else {
        panic!()
    };
    let points: Vec<_> =
        fallbacks.data_points().map(|p| (attrs(p.attributes().collect()), p.value())).collect();
    assert_eq!(points, [(pool("db"), 7)], "only the primary has fallbacks");
    let AggregatedMetrics::I64(MetricData::Sum(state)) =
        find("db.client.connection.replica.state").data()
    else {
        panic!()
    };
    let mut states: Vec<_> = state
        .data_points()
        .map(|p| {
            let a = attrs(p.attributes().collect());
            let name = |k: &str| a.iter().find(|(key, _)| key == k).unwrap().1.clone();
            (
                name("db.client.connection.pool.name"),
                name("db.client.connection.replica.state"),
                p.value(),
            )
        })
        .collect();
    states.sort();
    let replica = |state: &str, v| ("db-replica-1".to_owned(), state.to_owned(), v);
    assert_eq!(states, [replica("banned", 1), replica("lagging", 0), replica("usable", 0)]);
    let AggregatedMetrics::F64(MetricData::Gauge(lag)) =
        find("db.client.connection.replica.lag").data()
    else {
        panic!()
    };
    let points: Vec<_> =
        lag.data_points().map(|p| (attrs(p.attributes().collect()), p.value())).collect();
    assert_eq!(points, [(pool("db-replica-1"), 12.5)], "only the replica has a lag");
    assert_eq!(registry.len(), 3);

    // `reset_stats` zeroes the engine's counters, which the export carries over, and leaves
    // the router's fallbacks, which it must not add again.
    for p in registry.pools() {
        p.reset_stats();
    }
    exporter.reset();
    provider.force_flush().unwrap();
    let exported = exporter.get_finished_metrics().unwrap();
    let counter = |name: &str| -> u64 {
        let m = exported
            .iter()
            .flat_map(|r| r.scope_metrics())
            .flat_map(|s| s.metrics())
            .find(|x| x.name() == name)
            .unwrap();
        let AggregatedMetrics::U64(MetricData::Sum(sum)) = m.data() else { panic!() };
        let db = sum.data_points().find(|p| attrs(p.attributes().collect()) == pool("db"));
        db.unwrap().value()
    };
    assert_eq!(counter("db.client.connection.fallbacks"), 7, "not 14: the router kept it");
    assert_eq!(counter("db.client.connection.timeouts"), 1, "carried over the reset");
    let used = exported
        .iter()
        .flat_map(|r| r.scope_metrics())
        .flat_map(|s| s.metrics())
        .find(|x| x.name() == "db.client.connection.used.time")
        .unwrap();
    let AggregatedMetrics::F64(MetricData::Sum(used)) = used.data() else { panic!() };
    let db = used.data_points().find(|p| attrs(p.attributes().collect()) == pool("db"));
    assert_eq!(db.unwrap().value(), 0.26, "seconds carried over the reset too");
}
