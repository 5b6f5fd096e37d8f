//! `pool-metrics`: Prometheus and OpenTelemetry exporters over every pool of a
//! [`pool_core::Registry`], so a service with PostgreSQL and Redis pools gets one consistent set
//! of metrics.
//!
//! Names follow the OpenTelemetry semantic conventions for database client connection pools
//! (`db.client.connection.count`, `.wait_time`...), plus what they lack and operators need
//! (connections created and closed by reason, connect errors, peak in use, overflow, leaks).
//! Prometheus names are those OpenTelemetry's Prometheus bridge renders
//! (`db_client_connection_wait_time_seconds_bucket`), so one dashboard reads both.
//! [`METRICS`] lists every metric; `docs/metrics.md` is the same table for readers.
//!
//! Exporters pull: gauges and counters are read from [`DynPool::stats`](pool_core::DynPool::stats) at
//! scrape or collection time, so the engine's hot path pays nothing for them. Histograms come
//! from the engine's own histograms (Prometheus) or from pool-core's observer hook, which counts
//! each event per thread and hands the counts to the SDK at collection (OpenTelemetry).
//! A cluster's pools (`pool-postgres`) also export their routing: fallbacks, replica bans,
//! replica state and replica lag.
//!
//! Features: `prometheus` ([`PrometheusCollector`]) and `otel` ([`OtelMetrics`]), both default.

mod catalog;
#[cfg(feature = "otel")]
mod otel;
#[cfg(feature = "prometheus")]
mod prometheus;

#[cfg(all(test, feature = "prometheus", feature = "otel"))]
mod tests;

pub use crate::catalog::{Kind, METRICS, Metric, attr};
#[cfg(feature = "otel")]
pub use crate::otel::OtelMetrics;
#[cfg(feature = "prometheus")]
pub use crate::prometheus::{PrometheusCollector, render};
