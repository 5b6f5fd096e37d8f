//! [`OtelMetrics`]: OpenTelemetry instruments on a `Meter` for every pool of a registry.
//!
//! Gauges and counters are observable instruments whose callbacks read the pools' stats at
//! collection time. Histograms are recorded as events happen, through an observer attached to
//! each pool, with instruments bound to the pool's attributes so a record costs no attribute
//! lookup.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    AsyncInstrument, BoundHistogram, Histogram, Meter, ObservableCounter, ObservableUpDownCounter,
};
use pool_core::{HISTOGRAM_BOUNDS, ObserveError, Observer, Pool, PoolStats, Registry};

use crate::catalog::{Kind, METRICS, Metric, Value, attr, samples};

/// The OpenTelemetry instruments for every pool of a [`Registry`].
///
/// Observable gauges and counters cover every pool in the registry at each collection, pools
/// added later included. Histograms need an observer on each pool: [`OtelMetrics::new`]
/// attaches one to every pool registered at that moment, [`OtelMetrics::attach`] to a pool
/// added later. Keep the value alive as long as metrics should flow.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use pool_core::{ConnectionPool, Registry, testing::TestManager};
/// use pool_metrics::OtelMetrics;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pools = Registry::new();
/// pools.register(Arc::new(ConnectionPool::builder(TestManager::new()).name("main").build()?))?;
/// let meter = opentelemetry::global::meter("my-service");
/// let metrics = OtelMetrics::new(&meter, pools)?;
/// # drop(metrics); Ok(()) }
/// ```
pub struct OtelMetrics {
    _gauges: Vec<ObservableUpDownCounter<i64>>,
    _counters: Vec<ObservableCounter<u64>>,
    histograms: [Histogram<f64>; 3],
}

impl fmt::Debug for OtelMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelMetrics").finish_non_exhaustive()
    }
}

fn pool_attributes(name: &str, backend: &'static str) -> [KeyValue; 2] {
    [KeyValue::new(attr::POOL_NAME, name.to_owned()), KeyValue::new(attr::SYSTEM, backend)]
}

/// Calls `each(value, attributes)` for every sample of `metric` across the registry's pools.
fn observe_all(pools: &Registry, metric: &'static Metric, mut each: impl FnMut(u64, &[KeyValue])) {
    for pool in pools.pools() {
        let stats: PoolStats = pool.stats();
        let base = pool_attributes(&stats.name, stats.backend);
        for sample in samples(&stats).into_iter().filter(|s| s.metric.name == metric.name) {
            if let Value::Int(v) = sample.value {
                match sample.label {
                    Some((k, v2)) => {
                        let attrs = [base[0].clone(), base[1].clone(), KeyValue::new(k, v2)];
                        each(v, &attrs);
                    }
                    None => each(v, &base),
                }
            }
        }
    }
}

impl OtelMetrics {
    /// Registers the instruments on `meter` and attaches a histogram observer to every pool
    /// registered now.
    ///
    /// # Errors
    ///
    /// [`ObserveError`] when a pool has another observer attached already.
    pub fn new(meter: &Meter, pools: Registry) -> Result<Self, ObserveError> {
        let mut gauges = Vec::new();
        let mut counters = Vec::new();
        let mut histograms = Vec::new();
        for metric in &METRICS {
            match metric.kind {
                Kind::Gauge => {
                    let pools = pools.clone();
                    gauges.push(
                        meter
                            .i64_observable_up_down_counter(metric.name)
                            .with_unit(metric.unit)
                            .with_description(metric.help)
                            .with_callback(move |o: &dyn AsyncInstrument<i64>| {
                                observe_all(&pools, metric, |v, a| {
                                    o.observe(i64::try_from(v).unwrap_or(i64::MAX), a)
                                });
                            })
                            .build(),
                    );
                }
                Kind::Counter => {
                    let pools = pools.clone();
                    counters.push(
                        meter
                            .u64_observable_counter(metric.name)
                            .with_unit(metric.unit)
                            .with_description(metric.help)
                            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                                observe_all(&pools, metric, |v, a| o.observe(v, a));
                            })
                            .build(),
                    );
                }
                Kind::Histogram => histograms.push(
                    meter
                        .f64_histogram(metric.name)
                        .with_unit(metric.unit)
                        .with_description(metric.help)
                        .with_boundaries(HISTOGRAM_BOUNDS.to_vec())
                        .build(),
                ),
            }
        }
        let histograms: [Histogram<f64>; 3] =
            histograms.try_into().expect("the catalog has three histograms: create, wait, use");
        let metrics = OtelMetrics { _gauges: gauges, _counters: counters, histograms };
        for pool in pools.pools() {
            metrics.attach(pool.as_ref())?;
        }
        Ok(metrics)
    }

    /// Attaches the histogram observer to a pool registered after [`OtelMetrics::new`].
    ///
    /// # Errors
    ///
    /// [`ObserveError`] when the pool has another observer attached already.
    pub fn attach(&self, pool: &dyn Pool) -> Result<(), ObserveError> {
        let attrs = pool_attributes(pool.name(), pool.backend());
        let [create, wait, usage] = &self.histograms;
        pool.set_observer(Arc::new(HistogramObserver {
            create: create.bind(&attrs),
            wait: wait.bind(&attrs),
            usage: usage.bind(&attrs),
        }))
    }
}

/// Records one pool's events into bound histograms.
struct HistogramObserver {
    create: BoundHistogram<f64>,
    wait: BoundHistogram<f64>,
    usage: BoundHistogram<f64>,
}

impl fmt::Debug for HistogramObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistogramObserver").finish_non_exhaustive()
    }
}

impl Observer for HistogramObserver {
    fn acquired(&self, wait: Duration) {
        self.wait.record(wait.as_secs_f64());
    }

    fn released(&self, held: Duration) {
        self.usage.record(held.as_secs_f64());
    }

    fn connected(&self, took: Duration) {
        self.create.record(took.as_secs_f64());
    }
}
