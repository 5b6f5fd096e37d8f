//! [`PrometheusCollector`]: a `prometheus` crate collector that renders every pool of a registry
//! at scrape time, and [`render`], the text exposition in one call.

use std::collections::HashMap;

use pool_core::{HISTOGRAM_BOUNDS, Registry};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};

use crate::catalog::{Kind, METRICS, Metric, Value, attr, samples};

/// Renders every pool of a [`Registry`] at scrape time (pools added later are included).
///
/// Counters and histograms are the engine's own, so they restart from zero when a pool's
/// [`reset_stats`](pool_core::DynPool::reset_stats) runs; Prometheus's `rate()` and `increase()`
/// read such a drop as a counter reset. (The collector keeps no state between scrapes, and
/// [`render`] makes a new one each time, so it does not carry values over resets the way
/// `OtelMetrics` does.)
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use pool_core::{ConnectionPool, Registry, testing::TestManager};
/// use pool_metrics::PrometheusCollector;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pools = Registry::new();
/// pools.register(Arc::new(ConnectionPool::builder(TestManager::new()).name("main").build()?))?;
/// let prometheus = prometheus::Registry::new();
/// prometheus.register(Box::new(PrometheusCollector::new(pools)))?;
/// let families = prometheus.gather();
/// assert!(families.iter().any(|f| f.name() == "db_client_connection_wait_time_seconds"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PrometheusCollector {
    pools: Registry,
    descs: Vec<Desc>,
}

/// A Prometheus label name from an OpenTelemetry attribute name.
fn label_name(attribute: &str) -> String {
    attribute.replace('.', "_")
}

impl PrometheusCollector {
    /// A collector over `pools`.
    pub fn new(pools: Registry) -> Self {
        let descs = METRICS
            .iter()
            .map(|m| {
                let mut labels = vec![label_name(attr::POOL_NAME), label_name(attr::SYSTEM)];
                labels.extend(m.labels.iter().map(|l| label_name(l)));
                Desc::new(m.prometheus.to_owned(), m.help.to_owned(), labels, HashMap::new())
                    .expect("the catalog's names and labels are valid Prometheus names")
            })
            .collect();
        PrometheusCollector { pools, descs }
    }
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut p = LabelPair::default();
    p.set_name(label_name(name));
    p.set_value(value.to_owned());
    p
}

fn family(m: &Metric) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(m.prometheus.to_owned());
    f.set_help(m.help.to_owned());
    f.set_field_type(match m.kind {
        Kind::Gauge => MetricType::GAUGE,
        Kind::Counter => MetricType::COUNTER,
        Kind::Histogram => MetricType::HISTOGRAM,
    });
    f
}

fn histogram(h: &pool_core::HistogramSnapshot) -> proto::Histogram {
    let mut out = proto::Histogram::default();
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(HISTOGRAM_BOUNDS.len());
    for (bound, count) in HISTOGRAM_BOUNDS.iter().zip(&h.counts) {
        cumulative += count;
        let mut b = proto::Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    out.set_bucket(buckets);
    out.set_sample_count(h.count());
    out.set_sample_sum(h.sum.as_secs_f64());
    out
}

impl Collector for PrometheusCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<MetricFamily> = METRICS.iter().map(family).collect();
        for pool in self.pools.pools() {
            let stats = pool.stats();
            for sample in samples(&stats) {
                let idx = METRICS
                    .iter()
                    .position(|m| m.name == sample.metric.name)
                    .expect("in the catalog");
                let mut labels =
                    vec![pair(attr::POOL_NAME, &stats.name), pair(attr::SYSTEM, stats.backend)];
                if let Some((k, v)) = sample.label {
                    labels.push(pair(k, v));
                }
                let mut metric = proto::Metric::default();
                metric.set_label(labels);
                match (sample.metric.kind, sample.value) {
                    (Kind::Gauge, Value::Int(v)) => {
                        let mut g = proto::Gauge::default();
                        g.set_value(v as f64);
                        metric.set_gauge(g);
                    }
                    (Kind::Gauge, Value::Seconds(v)) => {
                        let mut g = proto::Gauge::default();
                        g.set_value(v);
                        metric.set_gauge(g);
                    }
                    (Kind::Counter, Value::Int(v)) => {
                        let mut c = proto::Counter::default();
                        c.set_value(v as f64);
                        metric.set_counter(c);
                    }
                    (Kind::Counter, Value::Seconds(v)) => {
                        let mut c = proto::Counter::default();
                        c.set_value(v);
                        metric.set_counter(c);
                    }
                    (_, Value::Histogram(h)) => metric.set_histogram(histogram(h)),
                    (Kind::Histogram, Value::Int(_) | Value::Seconds(_)) => continue,
                }
                families[idx].mut_metric().push(metric);
            }
        }
        families.retain(|f| !f.get_metric().is_empty());
        families
    }
}

/// The Prometheus text exposition of every pool in `pools`.
pub fn render(pools: &Registry) -> String {
    let families = PrometheusCollector::new(pools.clone()).collect();
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out).expect("text encoding into memory cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}
