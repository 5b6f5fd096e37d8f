//! [`OtelMetrics`]: OpenTelemetry instruments on a `Meter` for every pool of a registry.
//!
//! Gauges and counters are observable instruments whose callbacks read the pools' stats at
//! collection time. Histograms see every event through an observer attached to each pool; the
//! observer adds the event to per-thread bucket counters (a few plain stores, no lock, no
//! shared cache line) and the counters are handed to the SDK's histograms, bound to the pool's
//! attributes, at each collection. Recording into the SDK on the hot path instead takes a mutex
//! per event (two per checkout) and cost a quarter of the engine's single-task throughput.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    AsyncInstrument, BoundHistogram, Histogram, Meter, ObservableCounter, ObservableGauge,
    ObservableUpDownCounter,
};
use pool_core::{DynPool, HISTOGRAM_BOUNDS, ObserveError, Observer, PoolStats, Registry};
use thread_local::ThreadLocal;

use crate::catalog::{Kind, METRICS, Metric, Value, attr, samples};

/// The OpenTelemetry instruments for every pool of a [`Registry`].
///
/// Observable gauges and counters cover every pool in the registry at each collection, pools
/// added later included. Histograms need an observer on each pool: [`OtelMetrics::new`]
/// attaches one to every pool registered at that moment, [`OtelMetrics::attach`] to a pool
/// added later. Keep the value alive as long as metrics should flow: once it is dropped, the
/// callbacks (which OpenTelemetry keeps for the provider's lifetime: it has no way to
/// unregister one) observe nothing, and the histograms stop.
///
/// A pool takes one observer for its life, so one `OtelMetrics` per pool: a second over the
/// same pools fails with [`ObserveError`], and so does one made after the first is dropped.
///
/// # Counters across `reset_stats`
///
/// The engine's counters restart from zero on [`DynPool::reset_stats`], but an OpenTelemetry
/// counter must never go down (an exporter with delta temporality subtracts the last value it
/// reported). Every exported counter is therefore kept monotonic: per pool, counter and label,
/// the instruments remember the last value read and, when the pool's stats were reset since
/// ([`PoolStats::resets`] changed, or the value came back lower), add the last one to an offset
/// carried from then on (5, reset, 2 exports 5 then 7; 5, reset, 9 exports 14). Events counted
/// between the last collection and the reset are not exported; the export never goes down.
/// A pool replaced by another of the same name and backend is seen as a reset when its counter
/// comes back lower.
///
/// # Histograms
///
/// The observer counts each event in its bucket on the thread where it happens, and every
/// collection (a periodic reader's tick, `force_flush`, shutdown) first hands the events counted
/// since the last one to the SDK's histograms. What a collection exports is exact in count,
/// bucket counts and sum; the SDK's `min` and `max` are those of the per-bucket means (each
/// bucket's events reach the SDK at their mean value), so they are exact to within a bucket.
/// The cost on the hot path is a few nanoseconds per event and no lock; the SDK's own cost per
/// event is paid by the thread that collects. The hand-over runs in the callback of the first
/// gauge, `db.client.connection.count`: a view that drops that instrument stops the histograms
/// too.
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
    /// The callbacks hold it weakly: gone, they observe nothing.
    _alive: Arc<()>,
    _gauges: Vec<ObservableUpDownCounter<i64>>,
    _seconds: Vec<ObservableGauge<f64>>,
    _counters: Vec<ObservableCounter<u64>>,
    _second_counters: Vec<ObservableCounter<f64>>,
    histograms: [Histogram<f64>; 3],
    observers: Arc<Observers>,
}

/// The histogram observers attached so far, flushed into the SDK at each collection.
#[derive(Default)]
struct Observers(Mutex<Vec<Weak<HistogramObserver>>>);

impl Observers {
    fn flush(&self) {
        let mut observers = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        observers.retain(|weak| match weak.upgrade() {
            Some(observer) => {
                observer.flush();
                true
            }
            None => false,
        });
    }
}

impl fmt::Debug for OtelMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtelMetrics").finish_non_exhaustive()
    }
}

fn pool_attributes(name: &str, backend: &'static str) -> [KeyValue; 2] {
    [KeyValue::new(attr::POOL_NAME, name.to_owned()), KeyValue::new(attr::SYSTEM, backend)]
}

/// Which series of one metric a sample belongs to: the pool's name and backend, and the value
/// of the metric's own label if it has one.
type SeriesKey = (String, &'static str, Option<&'static str>);

/// Calls `each(value, attributes, series, resets)` for every sample of `metric` across the
/// registry's pools, `resets` being the pool's [`PoolStats::resets`]; nothing once the
/// [`OtelMetrics`] that `alive` belongs to is dropped.
fn observe_all(
    alive: &Weak<()>,
    pools: &Registry,
    metric: &'static Metric,
    mut each: impl FnMut(Value<'_>, &[KeyValue], SeriesKey, u64),
) {
    if alive.strong_count() == 0 {
        return;
    }
    for pool in pools.pools() {
        let stats: PoolStats = pool.stats();
        let base = pool_attributes(&stats.name, stats.backend);
        for sample in samples(&stats).into_iter().filter(|s| s.metric.name == metric.name) {
            let series = (stats.name.clone(), stats.backend, sample.label.map(|(_, v)| v));
            match sample.label {
                Some((k, v)) => {
                    let attrs = [base[0].clone(), base[1].clone(), KeyValue::new(k, v)];
                    each(sample.value, &attrs, series, stats.resets);
                }
                None => each(sample.value, &base, series, stats.resets),
            }
        }
    }
}

/// Makes one counter's series monotonic across resets of the engine's counters (see
/// [`OtelMetrics`], *Counters across `reset_stats`*): counts in `u64`, seconds in `f64`.
#[derive(Debug, Default)]
struct Monotonic<T>(Mutex<HashMap<SeriesKey, Carried<T>>>);

/// One series: the last value read from the pool, the pool's reset count then, and what
/// earlier resets took away.
#[derive(Debug, Default, Clone, Copy)]
struct Carried<T> {
    last: T,
    resets: u64,
    offset: T,
}

/// What a counter counts in: adding never overflows (a count saturates).
trait Total: Copy + Default + PartialOrd {
    fn plus(self, other: Self) -> Self;
}

impl Total for u64 {
    fn plus(self, other: u64) -> u64 {
        self.saturating_add(other)
    }
}

impl Total for f64 {
    fn plus(self, other: f64) -> f64 {
        self + other
    }
}

impl<T> Monotonic<T> {
    /// Locks the series for one collection. Each metric reader collects on its own thread, so
    /// two collections can overlap: the lock is held from the first stats read to the last
    /// value exported, or a stale read stored after a fresh one would look like a reset.
    fn lock(&self) -> MutexGuard<'_, HashMap<SeriesKey, Carried<T>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The value to export for `series` when the pool's counter reads `value` and its stats have
/// been reset `resets` times.
fn carry<T: Total>(
    all: &mut HashMap<SeriesKey, Carried<T>>,
    series: SeriesKey,
    value: T,
    resets: u64,
) -> T {
    let carried = all.entry(series).or_default();
    if value < carried.last || resets != carried.resets {
        carried.offset = carried.offset.plus(carried.last);
    }
    carried.last = value;
    carried.resets = resets;
    carried.offset.plus(value)
}

impl OtelMetrics {
    /// Registers the instruments on `meter` and attaches a histogram observer to every pool
    /// registered now.
    ///
    /// # Errors
    ///
    /// [`ObserveError`] when a pool has another observer attached already. The pools before it
    /// keep the observer attached to them, which then counts into nothing.
    pub fn new(meter: &Meter, pools: Registry) -> Result<Self, ObserveError> {
        let alive = Arc::new(());
        let mut gauges = Vec::new();
        let mut seconds = Vec::new();
        let mut counters = Vec::new();
        let mut second_counters = Vec::new();
        let mut histograms = Vec::new();
        let observers = Arc::new(Observers::default());
        for metric in &METRICS {
            match metric.kind {
                Kind::Gauge if metric.unit == "s" => {
                    let pools = pools.clone();
                    let alive = Arc::downgrade(&alive);
                    seconds.push(
                        meter
                            .f64_observable_gauge(metric.name)
                            .with_unit(metric.unit)
                            .with_description(metric.help)
                            .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                                observe_all(&alive, &pools, metric, |v, a, _, _| {
                                    if let Value::Seconds(v) = v {
                                        o.observe(v, a);
                                    }
                                });
                            })
                            .build(),
                    );
                }
                Kind::Gauge => {
                    let pools = pools.clone();
                    let alive = Arc::downgrade(&alive);
                    // The SDK runs every callback of a collection before it reads any
                    // instrument, so the histogram events handed over here are in this
                    // collection. One callback does it for all pools.
                    let flush = gauges.is_empty().then(|| Arc::downgrade(&observers));
                    gauges.push(
                        meter
                            .i64_observable_up_down_counter(metric.name)
                            .with_unit(metric.unit)
                            .with_description(metric.help)
                            .with_callback(move |o: &dyn AsyncInstrument<i64>| {
                                if let Some(observers) = flush.as_ref().and_then(Weak::upgrade) {
                                    observers.flush();
                                }
                                observe_all(&alive, &pools, metric, |v, a, _, _| {
                                    if let Value::Int(v) = v {
                                        o.observe(i64::try_from(v).unwrap_or(i64::MAX), a);
                                    }
                                });
                            })
                            .build(),
                    );
                }
                Kind::Counter if metric.unit == "s" => {
                    let pools = pools.clone();
                    let alive = Arc::downgrade(&alive);
                    let monotonic = Monotonic::default();
                    let zeroed = metric.zeroed_by_reset_stats();
                    second_counters.push(
                        meter
                            .f64_observable_counter(metric.name)
                            .with_unit(metric.unit)
                            .with_description(metric.help)
                            .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                                let mut carried = monotonic.lock();
                                observe_all(&alive, &pools, metric, |v, a, series, resets| {
                                    if let Value::Seconds(v) = v {
                                        let resets = if zeroed { resets } else { 0 };
                                        o.observe(carry(&mut carried, series, v, resets), a);
                                    }
                                });
                            })
                            .build(),
                    );
                }
                Kind::Counter => {
                    let pools = pools.clone();
                    let alive = Arc::downgrade(&alive);
                    let monotonic = Monotonic::default();
                    // A counter `reset_stats` leaves alone must not be carried over a reset.
                    let zeroed = metric.zeroed_by_reset_stats();
                    counters.push(
                        meter
                            .u64_observable_counter(metric.name)
                            .with_unit(metric.unit)
                            .with_description(metric.help)
                            .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                                let mut carried = monotonic.lock();
                                observe_all(&alive, &pools, metric, |v, a, series, resets| {
                                    if let Value::Int(v) = v {
                                        let resets = if zeroed { resets } else { 0 };
                                        o.observe(carry(&mut carried, series, v, resets), a);
                                    }
                                });
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
        let metrics = OtelMetrics {
            _alive: alive,
            _gauges: gauges,
            _seconds: seconds,
            _counters: counters,
            _second_counters: second_counters,
            histograms,
            observers,
        };
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
    pub fn attach(&self, pool: &dyn DynPool) -> Result<(), ObserveError> {
        pool.set_observer(self.observer(pool.name(), pool.backend()))
    }

    /// A histogram observer for the pool `name` of `backend`, flushed at each collection.
    fn observer(&self, name: &str, backend: &'static str) -> Arc<HistogramObserver> {
        let attrs = pool_attributes(name, backend);
        let [create, wait, usage] = &self.histograms;
        let observer = Arc::new(HistogramObserver {
            sdk: [create.bind(&attrs), wait.bind(&attrs), usage.bind(&attrs)],
            pending: ThreadLocal::new(),
            flushing: Mutex::new(()),
        });
        let mut observers = self.observers.0.lock().unwrap_or_else(PoisonError::into_inner);
        observers.push(Arc::downgrade(&observer));
        observer
    }
}

const CREATE: usize = 0;
const WAIT: usize = 1;
const USE: usize = 2;
const BUCKETS: usize = HISTOGRAM_BOUNDS.len() + 1;

/// [`HISTOGRAM_BOUNDS`] in nanoseconds.
const BOUNDS_NS: [u64; HISTOGRAM_BOUNDS.len()] = {
    let mut ns = [0u64; HISTOGRAM_BOUNDS.len()];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (HISTOGRAM_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// Counts one pool's events per thread and hands them to bound SDK histograms on
/// [`flush`](Self::flush).
struct HistogramObserver {
    /// The SDK histograms, indexed by [`CREATE`], [`WAIT`], [`USE`].
    sdk: [BoundHistogram<f64>; 3],
    pending: ThreadLocal<[Pending; 3]>,
    /// Serialises flushes (two readers may collect at once): the `flushed` marks are theirs.
    flushing: Mutex<()>,
}

/// One thread's events of one histogram: running count and sum (ns) per bucket, written only by
/// that thread, and how much of them [`HistogramObserver::flush`] has handed over already.
#[derive(Default)]
struct Pending {
    count: [AtomicU64; BUCKETS],
    sum_ns: [AtomicU64; BUCKETS],
    flushed_count: [AtomicU64; BUCKETS],
    flushed_sum_ns: [AtomicU64; BUCKETS],
}

impl Pending {
    /// Adds one event. Only the owning thread calls this, so a load and a store (no
    /// read-modify-write instruction) suffice; the sum is written before the count so that a
    /// flush never sees a count without its sum.
    fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // A wait served from the idle list is zero: the first bucket, nothing to add to a sum.
        let i = if ns == 0 { 0 } else { BOUNDS_NS.partition_point(|&bound| bound < ns) };
        if ns != 0 {
            let sum = &self.sum_ns[i];
            sum.store(sum.load(Ordering::Relaxed).wrapping_add(ns), Ordering::Relaxed);
        }
        let count = &self.count[i];
        count.store(count.load(Ordering::Relaxed) + 1, Ordering::Release);
    }
}

impl HistogramObserver {
    fn record(&self, histogram: usize, d: Duration) {
        self.pending.get_or_default()[histogram].record(d);
    }

    /// Hands every event counted since the last flush to the SDK: per bucket, its count of
    /// records at the bucket's mean value (so bucket counts and the sum are exact).
    fn flush(&self) {
        let _serial = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        for thread in self.pending.iter() {
            for (pending, sdk) in thread.iter().zip(&self.sdk) {
                for i in 0..BUCKETS {
                    let count = pending.count[i].load(Ordering::Acquire);
                    let new = count - pending.flushed_count[i].load(Ordering::Relaxed);
                    if new == 0 {
                        continue;
                    }
                    // The sum may already hold part of an event whose count is not visible
                    // yet; the clamp keeps the mean in its bucket and the next flush takes the
                    // rest.
                    let sum = pending.sum_ns[i].load(Ordering::Relaxed);
                    let new_sum =
                        sum.wrapping_sub(pending.flushed_sum_ns[i].load(Ordering::Relaxed));
                    let lo = if i == 0 { 0 } else { BOUNDS_NS[i - 1] + 1 };
                    let hi = BOUNDS_NS.get(i).copied().unwrap_or(u64::MAX);
                    let mean_ns = (new_sum / new).clamp(lo.min(hi), hi);
                    let taken_sum = if mean_ns == new_sum / new {
                        new_sum
                    } else {
                        mean_ns.saturating_mul(new)
                    };
                    pending.flushed_count[i].store(count, Ordering::Relaxed);
                    pending.flushed_sum_ns[i].store(
                        pending.flushed_sum_ns[i].load(Ordering::Relaxed).wrapping_add(taken_sum),
                        Ordering::Relaxed,
                    );
                    let value = Duration::from_nanos(mean_ns).as_secs_f64();
                    for _ in 0..new {
                        sdk.record(value);
                    }
                }
            }
        }
    }
}

impl fmt::Debug for HistogramObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistogramObserver").finish_non_exhaustive()
    }
}

impl Observer for HistogramObserver {
    fn acquired(&self, wait: Duration) {
        self.record(WAIT, wait);
    }

    fn released(&self, held: Duration) {
        self.record(USE, held);
    }

    fn connected(&self, took: Duration) {
        self.record(CREATE, took);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::metrics::MeterProvider;
    use opentelemetry_sdk::metrics::data::{
        AggregatedMetrics, HistogramDataPoint, MetricData, ResourceMetrics,
    };
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    use super::*;

    /// The data of the metric `name` in what an exporter received.
    fn data<'a>(exported: &'a [ResourceMetrics], name: &str) -> &'a AggregatedMetrics {
        exported
            .iter()
            .flat_map(|r| r.scope_metrics())
            .flat_map(|s| s.metrics())
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("{name} exported"))
            .data()
    }

    /// The use-time histogram of the one pool, as the SDK exports it after a `force_flush`.
    fn use_time(
        provider: &SdkMeterProvider,
        exporter: &InMemoryMetricExporter,
    ) -> HistogramDataPoint<f64> {
        exporter.reset();
        provider.force_flush().unwrap();
        let exported = exporter.get_finished_metrics().unwrap();
        let metric = data(&exported, "db.client.connection.use_time");
        let AggregatedMetrics::F64(MetricData::Histogram(h)) = metric else { panic!("{metric:?}") };
        h.data_points().next().expect("one pool").clone()
    }

    /// Dropping the metrics stops what they export, though OpenTelemetry keeps their callbacks
    /// for the provider's lifetime.
    #[tokio::test]
    async fn dropped_metrics_observe_nothing() {
        use pool_core::ConnectionPool;
        use pool_core::testing::TestManager;

        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let registry = Registry::new();
        let pool = ConnectionPool::builder(TestManager::new()).name("db").build().unwrap();
        registry.register(Arc::new(pool)).unwrap();
        let points = |exporter: &InMemoryMetricExporter| -> usize {
            provider.force_flush().unwrap();
            let exported = exporter.get_finished_metrics().unwrap();
            exporter.reset();
            exported
                .iter()
                .flat_map(|r| r.scope_metrics())
                .flat_map(|s| s.metrics())
                .map(|m| match m.data() {
                    AggregatedMetrics::I64(MetricData::Sum(s)) => s.data_points().count(),
                    AggregatedMetrics::U64(MetricData::Sum(s)) => s.data_points().count(),
                    AggregatedMetrics::F64(MetricData::Gauge(g)) => g.data_points().count(),
                    _ => 0,
                })
                .sum()
        };
        let metrics = OtelMetrics::new(&provider.meter("t"), registry).unwrap();
        assert!(points(&exporter) > 0, "gauges and counters exported while alive");
        drop(metrics);
        assert_eq!(points(&exporter), 0, "nothing observed once dropped");
    }

    /// Exported counters never go down when `reset_stats` zeroes the engine's: 5 timeouts, a
    /// reset, 2 more export 5 then 7 (cumulative), so a delta exporter gets 5 then 2 rather than
    /// a subtraction that underflows. A reset followed by more than the old count (8) is not
    /// missed either: 7 then 15.
    #[tokio::test(start_paused = true)]
    async fn counters_stay_monotonic_across_reset_stats() {
        use opentelemetry_sdk::metrics::{InMemoryMetricExporterBuilder, Temporality};
        use pool_core::ConnectionPool;
        use pool_core::testing::TestManager;

        let cumulative = InMemoryMetricExporter::default();
        let delta =
            InMemoryMetricExporterBuilder::new().with_temporality(Temporality::Delta).build();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(cumulative.clone()).build())
            .with_reader(PeriodicReader::builder(delta.clone()).build())
            .build();
        let registry = Registry::new();
        // The pool reads the paused clock too: each 1 ms timeout ends when that clock reaches it.
        let pool = ConnectionPool::builder(TestManager::new())
            .tokio_clock()
            .name("db")
            .pool_size(1)
            .max_overflow(0)
            .build()
            .unwrap();
        registry.register(Arc::new(pool.clone())).unwrap();
        let _metrics = OtelMetrics::new(&provider.meter("t"), registry).unwrap();
        let timeouts = |exporter: &InMemoryMetricExporter| -> u64 {
            let exported = exporter.get_finished_metrics().unwrap();
            exporter.reset();
            let metric = data(&exported, "db.client.connection.timeouts");
            let AggregatedMetrics::U64(MetricData::Sum(sum)) = metric else { panic!("{metric:?}") };
            sum.data_points().next().expect("one pool").value()
        };
        let held = pool.acquire().await.unwrap();
        let time_out = async |n: usize| {
            for _ in 0..n {
                assert!(pool.acquire_timeout(Duration::from_millis(1)).await.is_err());
            }
        };

        time_out(5).await;
        assert_eq!(pool.stats().timeouts, 5);
        provider.force_flush().unwrap();
        assert_eq!((timeouts(&cumulative), timeouts(&delta)), (5, 5));

        DynPool::reset_stats(&pool);
        time_out(2).await;
        assert_eq!(pool.stats().timeouts, 2, "the engine's counter restarted");
        provider.force_flush().unwrap();
        assert_eq!((timeouts(&cumulative), timeouts(&delta)), (7, 2));

        DynPool::reset_stats(&pool);
        time_out(8).await;
        provider.force_flush().unwrap();
        assert_eq!((timeouts(&cumulative), timeouts(&delta)), (15, 8));
        drop(held);
    }

    /// A drop below the last value read is a reset: the last value is carried from then on,
    /// per series.
    #[test]
    fn monotonic_carries_the_last_value_over_each_reset() {
        let m = Monotonic::<u64>::default();
        let mut all = m.lock();
        let db = || ("db".to_owned(), "test", None);
        let idle = || ("db".to_owned(), "test", Some("idle"));
        let seen: Vec<u64> = [5, 5, 2, 9, 0, 1].map(|v| carry(&mut all, db(), v, 0)).to_vec();
        assert_eq!(seen, [5, 5, 7, 14, 14, 15]);
        assert_eq!(carry(&mut all, idle(), 3, 0), 3, "another series has its own offset");
        // A reset the counter climbed past by the next read is seen by the reset count.
        assert_eq!(carry(&mut all, db(), 4, 1), 19, "1 carried, then 4 since the reset");
        assert_eq!(carry(&mut all, db(), 6, 1), 21);
    }

    #[test]
    fn events_from_many_threads_reach_the_sdk_exactly_at_each_collection() {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_reader(PeriodicReader::builder(exporter.clone()).build())
            .build();
        let metrics = OtelMetrics::new(&provider.meter("t"), Registry::new()).unwrap();
        let observer = metrics.observer("p", "test");
        // Per thread: 1 ms, 2 ms (same bucket, ≤ 2.5 ms), 40 ms, and 90 s (past the last bound).
        let held = [1_000_000u64, 2_000_000, 40_000_000, 90_000_000_000];
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| held.iter().for_each(|&ns| observer.released(Duration::from_nanos(ns))));
            }
        });
        let first = use_time(&provider, &exporter);
        assert_eq!(first.count(), 16);
        assert!((first.sum() - 4.0 * 90.043).abs() < 1e-9, "sum {}", first.sum());
        let counts: Vec<u64> = first.bucket_counts().collect();
        let bucket = |secs: f64| HISTOGRAM_BOUNDS.partition_point(|&b| b < secs);
        let mut expected = vec![0u64; BUCKETS];
        for secs in [0.001, 0.002, 0.040, 90.0] {
            expected[bucket(secs)] += 4;
        }
        assert_eq!(counts, expected);

        // Only what happened since is handed over next time; the SDK's sums stay cumulative.
        observer.released(Duration::from_millis(5));
        observer.acquired(Duration::ZERO);
        let second = use_time(&provider, &exporter);
        assert_eq!(second.count(), 17);
        assert!((second.sum() - (4.0 * 90.043 + 0.005)).abs() < 1e-9, "sum {}", second.sum());
        assert_eq!(second.bucket_counts().nth(bucket(0.005)).unwrap(), 1);
        // A collection with nothing new changes nothing.
        assert_eq!(use_time(&provider, &exporter).count(), 17);
    }
}
