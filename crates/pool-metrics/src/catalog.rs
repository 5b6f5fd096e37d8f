//! [`METRICS`]: every metric the exporters emit, with its kind, unit and labels, and how each
//! is read from a pool's stats.

use pool_core::{HistogramSnapshot, PoolStats, Routing};

/// What kind of instrument a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value that goes up and down (OpenTelemetry UpDownCounter or Gauge; Prometheus gauge).
    Gauge,
    /// A monotonic count (OpenTelemetry Counter; Prometheus counter, `_total`).
    Counter,
    /// A distribution in seconds (OpenTelemetry Histogram; Prometheus histogram).
    Histogram,
}

impl Kind {
    /// The kind's name as `docs/metrics.md` writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The OpenTelemetry instrument name.
    pub name: &'static str,
    /// The Prometheus family name, as OpenTelemetry's Prometheus bridge renders `name`.
    pub prometheus: &'static str,
    /// The instrument kind.
    pub kind: Kind,
    /// The UCUM unit (`s`, `{connection}`...).
    pub unit: &'static str,
    /// Labels besides [`attr::POOL_NAME`] and [`attr::SYSTEM`], which every metric carries.
    pub labels: &'static [&'static str],
    /// What it measures.
    pub help: &'static str,
}

impl Metric {
    /// Whether [`DynPool::reset_stats`](pool_core::DynPool::reset_stats) zeroes this counter: the
    /// engine's counters do; a router's (fallbacks, replica bans) are the router's and stay.
    pub fn zeroed_by_reset_stats(&self) -> bool {
        self.kind == Kind::Counter
            && !matches!(
                self.name,
                "db.client.connection.fallbacks" | "db.client.connection.replica.bans"
            )
    }
}

/// Attribute (label) names.
pub mod attr {
    /// The pool's name.
    pub const POOL_NAME: &str = "db.client.connection.pool.name";
    /// The backend: `postgresql`, `redis`.
    pub const SYSTEM: &str = "db.system.name";
    /// `idle` or `used`, on `db.client.connection.count`.
    pub const STATE: &str = "db.client.connection.state";
    /// Why connections were closed, on `db.client.connection.closed`.
    pub const CLOSE_REASON: &str = "db.client.connection.close.reason";
    /// `usable`, `banned` or `lagging`, on `db.client.connection.replica.state`.
    pub const REPLICA_STATE: &str = "db.client.connection.replica.state";
}

macro_rules! metric {
    ($name:literal, $prom:literal, $kind:ident, $unit:literal, [$($label:expr),*], $help:literal) => {
        Metric { name: $name, prometheus: $prom, kind: Kind::$kind, unit: $unit, labels: &[$($label),*], help: $help }
    };
}

/// Every metric, in the order `docs/metrics.md` lists them: the semantic conventions' first,
/// then ours.
pub const METRICS: [Metric; 24] = [
    metric!(
        "db.client.connection.count",
        "db_client_connection_count",
        Gauge,
        "{connection}",
        [attr::STATE],
        "Connections open now, by state (idle, used)"
    ),
    metric!(
        "db.client.connection.idle.max",
        "db_client_connection_idle_max",
        Gauge,
        "{connection}",
        [],
        "Most idle connections allowed (pool_size + max_overflow; overflow retires after idle_timeout)"
    ),
    metric!(
        "db.client.connection.idle.min",
        "db_client_connection_idle_min",
        Gauge,
        "{connection}",
        [],
        "Idle connections kept warm (min_idle)"
    ),
    metric!(
        "db.client.connection.max",
        "db_client_connection_max",
        Gauge,
        "{connection}",
        [],
        "Most connections allowed open (pool_size + max_overflow)"
    ),
    metric!(
        "db.client.connection.pending_requests",
        "db_client_connection_pending_requests",
        Gauge,
        "{request}",
        [],
        "Callers waiting for a connection now"
    ),
    metric!(
        "db.client.connection.timeouts",
        "db_client_connection_timeouts_total",
        Counter,
        "{timeout}",
        [],
        "Acquires that timed out"
    ),
    metric!(
        "db.client.connection.create_time",
        "db_client_connection_create_time_seconds",
        Histogram,
        "s",
        [],
        "How long successful connects took"
    ),
    metric!(
        "db.client.connection.wait_time",
        "db_client_connection_wait_time_seconds",
        Histogram,
        "s",
        [],
        "How long acquires waited for a connection"
    ),
    metric!(
        "db.client.connection.use_time",
        "db_client_connection_use_time_seconds",
        Histogram,
        "s",
        [],
        "How long connections were held by their users"
    ),
    metric!(
        "db.client.connection.pool_size",
        "db_client_connection_pool_size",
        Gauge,
        "{connection}",
        [],
        "Connections kept open (pool_size)"
    ),
    metric!(
        "db.client.connection.overflow",
        "db_client_connection_overflow",
        Gauge,
        "{connection}",
        [],
        "Open connections beyond pool_size"
    ),
    metric!(
        "db.client.connection.used.peak",
        "db_client_connection_used_peak",
        Gauge,
        "{connection}",
        [],
        "Most connections in use at once since the last stats reset"
    ),
    metric!(
        "db.client.connection.created",
        "db_client_connection_created_total",
        Counter,
        "{connection}",
        [],
        "Connections opened"
    ),
    metric!(
        "db.client.connection.closed",
        "db_client_connection_closed_total",
        Counter,
        "{connection}",
        [attr::CLOSE_REASON],
        "Connections closed, by reason (broken, failed_check, failed_reset, recycled, idle, shrink, pool_closed, detached)"
    ),
    metric!(
        "db.client.connection.connect_errors",
        "db_client_connection_connect_errors_total",
        Counter,
        "{error}",
        [],
        "Connect attempts that failed or timed out"
    ),
    metric!(
        "db.client.connection.leaks",
        "db_client_connection_leaks_total",
        Counter,
        "{connection}",
        [],
        "Connections held past leak_detection_threshold"
    ),
    metric!(
        "db.client.connection.used.time",
        "db_client_connection_used_time_seconds_total",
        Counter,
        "s",
        [],
        "Connection-time in use (the integral of used connections over time): its rate is how many connections were in use on average, each hold counted for its part in the interval"
    ),
    metric!(
        "db.client.connection.breaker.open",
        "db_client_connection_breaker_open",
        Gauge,
        "{breaker}",
        [],
        "1 while the pool's circuit breaker is open (acquires that find nothing idle fail at once until a probe connects), 0 while it is closed"
    ),
    metric!(
        "db.client.connection.breaker.opens",
        "db_client_connection_breaker_opens_total",
        Counter,
        "{opening}",
        [],
        "Times the circuit breaker opened after breaker_threshold failed connects or checks in a row"
    ),
    metric!(
        "db.client.connection.breaker.rejections",
        "db_client_connection_breaker_rejections_total",
        Counter,
        "{request}",
        [],
        "Acquires the open circuit breaker failed at once"
    ),
    metric!(
        "db.client.connection.fallbacks",
        "db_client_connection_fallbacks_total",
        Counter,
        "{read}",
        [],
        "Reads a cluster's primary took because no replica was usable (banned, lagging, or behind the read's causal token); not counted for a cluster without replicas; primaries of a cluster only"
    ),
    metric!(
        "db.client.connection.replica.bans",
        "db_client_connection_replica_bans_total",
        Counter,
        "{ban}",
        [],
        "Times a replica was banned for failing to connect or answer; replicas of a cluster only"
    ),
    metric!(
        "db.client.connection.replica.state",
        "db_client_connection_replica_state",
        Gauge,
        "{replica}",
        [attr::REPLICA_STATE],
        "1 for the replica's state now (usable, banned, lagging), 0 for the others; replicas of a cluster only"
    ),
    metric!(
        "db.client.connection.replica.lag",
        "db_client_connection_replica_lag_seconds",
        Gauge,
        "s",
        [],
        "The replica's replay lag at the cluster's last probe (absent before the first); replicas of a cluster only"
    ),
];

/// A value of one metric for one pool.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    Int(u64),
    /// A gauge or counter in seconds (the catalog's gauges and counters with unit `s`).
    Seconds(f64),
    Histogram(&'a HistogramSnapshot),
}

/// One sample: a metric's value for one pool, with the metric's own label if it has one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample<'a> {
    pub(crate) metric: &'static Metric,
    pub(crate) label: Option<(&'static str, &'static str)>,
    pub(crate) value: Value<'a>,
}

/// Every sample of one pool's stats, in catalog order; both exporters read the stats through
/// this one function, so they agree.
pub(crate) fn samples(s: &PoolStats) -> Vec<Sample<'_>> {
    let m = |i: usize| &METRICS[i];
    let int =
        |i: usize, v: usize| Sample { metric: m(i), label: None, value: Value::Int(v as u64) };
    let count = |i: usize, v: u64| Sample { metric: m(i), label: None, value: Value::Int(v) };
    let hist = |i: usize, h| Sample { metric: m(i), label: None, value: Value::Histogram(h) };
    let max = s.pool_size + s.max_overflow;
    let mut out = vec![
        Sample {
            metric: m(0),
            label: Some((attr::STATE, "idle")),
            value: Value::Int(s.idle as u64),
        },
        Sample {
            metric: m(0),
            label: Some((attr::STATE, "used")),
            value: Value::Int(s.in_use as u64),
        },
        int(1, max),
        int(2, s.min_idle),
        int(3, max),
        int(4, s.waiting),
        count(5, s.timeouts),
        hist(6, &s.connect_time),
        hist(7, &s.wait_time),
        hist(8, &s.use_time),
        int(9, s.pool_size),
        int(10, s.overflow),
        int(11, s.peak_in_use),
        count(12, s.connections_created),
    ];
    out.extend(s.closed.iter().map(|(reason, n)| Sample {
        metric: m(13),
        label: Some((attr::CLOSE_REASON, reason.as_str())),
        value: Value::Int(n),
    }));
    out.push(count(14, s.connect_errors));
    out.push(count(15, s.leaks_detected));
    out.push(Sample {
        metric: m(16),
        label: None,
        value: Value::Seconds(s.in_use_time.as_secs_f64()),
    });
    out.push(int(17, usize::from(s.breaker_open)));
    out.push(count(18, s.breaker_opens));
    out.push(count(19, s.breaker_rejections));
    match s.routing {
        Some(Routing::Primary { fallbacks }) => out.push(count(20, fallbacks)),
        Some(Routing::Replica { bans, banned, lagging, lag }) => {
            out.push(count(21, bans));
            // A banned replica is banned whatever its lag; the states are exclusive.
            let now = if banned {
                "banned"
            } else if lagging {
                "lagging"
            } else {
                "usable"
            };
            out.extend(["usable", "banned", "lagging"].map(|state| Sample {
                metric: m(22),
                label: Some((attr::REPLICA_STATE, state)),
                value: Value::Int(u64::from(state == now)),
            }));
            if let Some(lag) = lag {
                out.push(Sample {
                    metric: m(23),
                    label: None,
                    value: Value::Seconds(lag.as_secs_f64()),
                });
            }
        }
        // Routing is non-exhaustive: a kind of router this catalog does not know yet.
        Some(_) | None => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `docs/metrics.md` lists exactly the metrics of [`METRICS`], with the same names, kinds,
    /// units and labels.
    #[test]
    fn docs_table_matches_the_catalog() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md"))
                .unwrap();
        let rows: Vec<Vec<String>> = doc
            .lines()
            .filter(|l| l.starts_with("| `"))
            .map(|l| l.trim_matches('|').split('|').map(|c| c.trim().replace('`', "")).collect())
            .collect();
        let expected: Vec<Vec<String>> = METRICS
            .iter()
            .map(|m| {
                let mut labels = vec![attr::POOL_NAME, attr::SYSTEM];
                labels.extend(m.labels);
                vec![
                    m.name.to_owned(),
                    m.prometheus.to_owned(),
                    m.kind.as_str().to_owned(),
                    m.unit.to_owned(),
                    labels.join(", "),
                ]
            })
            .collect();
        let got: Vec<Vec<String>> = rows.iter().map(|r| r[..5].to_vec()).collect();
        assert_eq!(got, expected, "docs/metrics.md is out of date");
    }

    /// The Grafana dashboards in `docs/grafana/` query only series and labels the exporter
    /// really emits.
    #[test]
    fn grafana_dashboards_reference_only_exported_metrics() {
        let mut series: Vec<String> = Vec::new();
        for m in METRICS {
            series.push(m.prometheus.to_owned());
            if m.kind == Kind::Histogram {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.push(format!("{}{suffix}", m.prometheus));
                }
            }
        }
        let labels: Vec<String> =
            [attr::POOL_NAME, attr::SYSTEM, attr::STATE, attr::CLOSE_REASON, attr::REPLICA_STATE]
                .iter()
                .map(|a| a.replace('.', "_"))
                .collect();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/grafana");
        let mut checked = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for start in text.match_indices("db_").map(|(i, _)| i) {
                let token: String = text[start..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let known = series.contains(&token) || labels.contains(&token);
                assert!(
                    known,
                    "{dir}: {token} is neither an exported series nor one of its labels"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "the dashboards query the exporter's metrics ({checked} references)");
    }

    /// Prometheus names are what OpenTelemetry's bridge makes of the OpenTelemetry names.
    #[test]
    fn every_metric_has_samples_in_catalog_order() {
        // A cluster's primary and one of its replicas between them have every metric.
        let mut primary = PoolStats::default();
        primary.routing = Some(Routing::Primary { fallbacks: 3 });
        let mut replica = PoolStats::default();
        replica.routing = Some(Routing::Replica {
            bans: 2,
            banned: false,
            lagging: true,
            lag: Some(Duration::from_millis(1500)),
        });
        let mut seen: Vec<&str> = samples(&primary).iter().map(|s| s.metric.name).collect();
        seen.extend(
            samples(&replica)
                .iter()
                .skip(samples(&PoolStats::default()).len())
                .map(|s| s.metric.name),
        );
        seen.dedup();
        let all: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        assert_eq!(seen, all);
        let state: Vec<_> = samples(&replica)
            .iter()
            .filter_map(|s| match (s.label, s.value) {
                (Some((attr::REPLICA_STATE, state)), Value::Int(v)) => Some((state, v)),
                _ => None,
            })
            .collect();
        assert_eq!(state, [("usable", 0), ("banned", 0), ("lagging", 1)]);
        let lag: Vec<_> = samples(&replica)
            .iter()
            .filter_map(|s| match s.value {
                Value::Seconds(v) if s.metric.kind == Kind::Gauge => Some((s.metric.name, v)),
                _ => None,
            })
            .collect();
        assert_eq!(lag, [("db.client.connection.replica.lag", 1.5)]);
        replica.routing =
            Some(Routing::Replica { bans: 0, banned: false, lagging: false, lag: None });
        assert!(
            samples(&replica).iter().all(|s| s.metric.name != "db.client.connection.replica.lag"),
            "no lag sample before the first probe"
        );
        for s in samples(&primary).into_iter().chain(samples(&replica)) {
            assert_eq!(
                s.label.map(|(k, _)| k).into_iter().collect::<Vec<_>>(),
                s.metric.labels.to_vec()
            );
            assert_eq!(matches!(s.value, Value::Histogram(_)), s.metric.kind == Kind::Histogram);
            assert_eq!(
                matches!(s.value, Value::Seconds(_)),
                s.metric.kind != Kind::Histogram && s.metric.unit == "s"
            );
        }
    }

    #[test]
    fn prometheus_names_follow_the_bridge() {
        for m in METRICS {
            let mut name = m.name.replace('.', "_");
            if m.unit == "s" {
                name.push_str("_seconds");
            }
            if m.kind == Kind::Counter {
                name.push_str("_total");
            }
            assert_eq!(m.prometheus, name);
        }
    }
}
