//! `bench metrics`: how long a Prometheus scrape and an OpenTelemetry collection of 100 pools
//! take, each pool with 10 connections and some history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::{
    ManualReader, SdkMeterProvider, data::ResourceMetrics, reader::MetricReader,
};

use crate::core::Noop;
use crate::report;

/// Options of `bench metrics`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Pools in the registry.
    #[arg(long, default_value_t = 100)]
    pools: usize,
    /// Scrapes to time.
    #[arg(long, default_value_t = 200)]
    scrapes: usize,
}

/// A `ManualReader` the bench can collect from while the provider also holds it.
#[derive(Debug, Clone)]
struct Shared(Arc<ManualReader>);

impl MetricReader for Shared {
    fn register_pipeline(&self, pipeline: std::sync::Weak<opentelemetry_sdk::metrics::Pipeline>) {
        self.0.register_pipeline(pipeline);
    }
    fn collect(&self, rm: &mut ResourceMetrics) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.collect(rm)
    }
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }
    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }
    fn temporality(
        &self,
        kind: opentelemetry_sdk::metrics::InstrumentKind,
    ) -> opentelemetry_sdk::metrics::Temporality {
        self.0.temporality(kind)
    }
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let registry = pool_core::Registry::new();
        let mut pools = Vec::new();
        for i in 0..args.pools {
            let pool = pool_core::ConnectionPool::builder(Noop)
                .name(format!("pool-{i:03}"))
                .pool_size(10)
                .build()?;
            registry.register(Arc::new(pool.clone()))?;
            pools.push(pool);
        }
        let reader = Shared(Arc::new(ManualReader::builder().build()));
        let provider = SdkMeterProvider::builder().with_reader(reader.clone()).build();
        let _otel = pool_metrics::OtelMetrics::new(&provider.meter("bench"), registry.clone())?;
        for pool in &pools {
            for _ in 0..100 {
                let held = (pool.acquire().await?, pool.acquire().await?);
                drop(held);
            }
        }
        let mut prom = report::histogram();
        let mut bytes = 0;
        for _ in 0..args.scrapes {
            let t = Instant::now();
            bytes = pool_metrics::render(&registry).len();
            prom.saturating_record(t.elapsed().as_nanos() as u64);
        }
        let mut otel = report::histogram();
        for _ in 0..args.scrapes {
            let mut rm = ResourceMetrics::default();
            let t = Instant::now();
            reader.collect(&mut rm)?;
            otel.saturating_record(t.elapsed().as_nanos() as u64);
        }
        println!("{:<28} {:>8} {:>12} {:>12} {:>12}", "collection", "pools", "p50", "p99", "max");
        for (name, h) in [("prometheus text scrape", &prom), ("opentelemetry collect", &otel)] {
            println!(
                "{:<28} {:>8} {:>10.2} ms {:>9.2} ms {:>9.2} ms",
                name,
                args.pools,
                h.value_at_quantile(0.5) as f64 / 1e6,
                h.value_at_quantile(0.99) as f64 / 1e6,
                h.max() as f64 / 1e6
            );
        }
        println!("\nprometheus text: {bytes} bytes for {} pools", args.pools);
        Ok(())
    })
}
