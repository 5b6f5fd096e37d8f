//! Tests of the cluster: settings it refuses, and, against the shared PostgreSQL server
//! (`DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`), where leak reports say
//! a session was taken and the wait for the warm-up.
//!
//! The server stands in for a replica too: it is not in recovery, so `pg_last_wal_replay_lsn()`
//! is NULL there and a causal read falls back to the primary.

use std::time::Duration;

use pool_core::testing::LogCapture;
use pool_core::{PoolConfig, WarmError};

use super::PgCluster;
use crate::{CausalToken, Lsn, PgManager, PgPooledConnection, SessionError};

#[test]
fn build_rejects_zero_and_endless_durations_naming_them() {
    let manager = || PgManager::from_url("postgres://app@127.0.0.1/db").unwrap();
    let cases = [
        (PgCluster::builder("c", manager()).replica_ban(Duration::ZERO), "replica_ban = 0ns"),
        (
            PgCluster::builder("c", manager()).replica_timeout(Duration::MAX),
            "replica_timeout = 18446744073709551615.999999999s: must be at most 100 years",
        ),
        (
            PgCluster::builder("c", manager()).max_replica_lag(Some(Duration::MAX)),
            "max_replica_lag",
        ),
    ];
    for (builder, expected) in cases {
        let err = builder.build().unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} should contain {expected:?}");
    }
}

/// The shared test server's URL; fails, saying how to start it, when nothing answers there.
pub(crate) fn database_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let addr = (options.get_host(), options.get_port());
    assert!(
        std::net::TcpStream::connect(addr).is_ok(),
        "PostgreSQL is not reachable at {url} (DATABASE_URL): start it with `cargo xtask services up`"
    );
    url
}

/// One connection per pool, a replica on the same server, and no lag probe.
fn build_cluster(name: &str, replica_url: &str, config: PoolConfig) -> PgCluster {
    PgCluster::builder(name, PgManager::from_url(&database_url()).unwrap())
        .replica(PgManager::from_url(replica_url).unwrap())
        .config(config)
        .lag_probe_interval(None)
        .build()
        .unwrap()
}

fn one_connection() -> PoolConfig {
    let mut config = PoolConfig::default();
    config.pool_size = 1;
    config.max_overflow = 0;
    config
}

/// Holds `session` past the leak detection threshold, gives it back, and returns the line of
/// this file that the leak warnings name as where it was acquired.
async fn reported_line(
    capture: &LogCapture,
    session: Result<PgPooledConnection, SessionError>,
) -> &'static str {
    let conn = session.unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    drop(conn);
    let log = capture.take();
    assert!(log.contains("came back"), "a leak warning: {log}");
    assert!(!log.contains("src/cluster.rs"), "the cluster's own line, not its caller's: {log}");
    let (_, at) = log.split_once("src/cluster/tests.rs:").unwrap_or_else(|| panic!("{log}"));
    let line: usize = at.split(':').next().and_then(|n| n.parse().ok()).unwrap();
    include_str!("tests.rs").lines().nth(line - 1).unwrap()
}

/// Every session method, on each path it routes by (a replica, the primary, the primary as a
/// causal read's fallback), records its caller's line: the leak warnings name the line of this
/// file that asked for the session, not a line of the cluster's.
#[tokio::test]
async fn leak_reports_name_the_line_that_asked_for_the_session() {
    let (capture, _log) = LogCapture::start(tracing::Level::INFO);
    let mut config = one_connection();
    config.leak_detection_threshold = Some(Duration::from_millis(20));
    let cluster = build_cluster("leaks", &database_url(), config);
    let replica_reads = || cluster.stats().replicas[0].reads;

    let line = reported_line(&capture, cluster.session().await).await;
    assert!(line.contains("cluster.session()"), "{line}");
    assert_eq!(replica_reads(), 0);

    let line = reported_line(&capture, cluster.session_read_only().await).await;
    assert!(line.contains("cluster.session_read_only()"), "{line}");
    assert_eq!(replica_reads(), 1, "served by the replica");

    let line = reported_line(&capture, cluster.get_session(false).await).await;
    assert!(line.contains("cluster.get_session(false)"), "{line}");
    let line = reported_line(&capture, cluster.get_session(true).await).await;
    assert!(line.contains("cluster.get_session(true)"), "{line}");
    assert_eq!(replica_reads(), 2, "served by the replica");

    let token = CausalToken::from_lsn(Lsn(1));
    let line = reported_line(&capture, cluster.session_read_only_after(&token).await).await;
    assert!(line.contains("cluster.session_read_only_after(&token)"), "{line}");
    assert_eq!(cluster.stats().causal_primary_reads, 1, "served by the primary as a fallback");
    cluster.close().await.unwrap();
}

#[tokio::test]
async fn warmed_waits_for_every_pool_and_names_one_that_cannot_connect() {
    let mut config = one_connection();
    config.pool_size = 2;
    let cluster = build_cluster("warm", &database_url(), config.clone());
    cluster.warmed(Duration::from_secs(10)).await.unwrap();
    assert_eq!(cluster.primary().state().idle, 2);
    assert_eq!(cluster.replicas()[0].state().idle, 2);
    cluster.close().await.unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = build_cluster(
        "warm-down",
        &format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        config,
    );
    let err = down.warmed(Duration::from_millis(500)).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with("pool \"warm-down-replica-1\" was not warm after ")
            && message.contains(": 0 of 2 min_idle connections open; last connect error: "),
        "{message}"
    );
    assert!(matches!(err, WarmError::Timeout { open: 0, wanted: 2, last_error: Some(_), .. }));
    assert_eq!(down.primary().state().idle, 2, "the primary warmed meanwhile");
    down.close().await.unwrap();
}

/// Under steady writes the probe sees the primary a round ahead of any replica: the lag is the
/// time since the primary was at the replica's position, interpolated, not a whole period.
#[test]
fn lag_is_interpolated_between_the_positions_around_the_replica() {
    use std::collections::VecDeque;

    use tokio::time::Instant;

    use super::lag_of;

    let t0 = Instant::now();
    let s = Duration::from_secs;
    let history: VecDeque<_> =
        [(t0, Lsn(1_000)), (t0 + s(1), Lsn(2_000)), (t0 + s(2), Lsn(3_000))].into();
    let now = t0 + s(2) + Duration::from_millis(1);
    let lag = |replay| lag_of(&history, Lsn(replay), now, None);
    assert_eq!(lag(3_000), Duration::ZERO, "caught up");
    assert_eq!(lag(2_990), Duration::from_millis(11), "10 bytes behind: 10 ms, plus 1 since");
    assert_eq!(lag(2_500), Duration::from_millis(501));
    assert_eq!(lag(2_000), Duration::from_millis(1_001), "exactly at a remembered position");
    // Behind every remembered position: the oldest one's age, or the replica's own
    // replay-timestamp lag when that says more.
    assert_eq!(lag(500), Duration::from_millis(2_001));
    assert_eq!(lag_of(&history, Lsn(500), now, Some(30.0)), s(30));
}

/// With every replica busy, a read waits `replica_timeout` once, in all, then goes to the
/// primary: the second busy replica is not waited on again.
#[tokio::test]
async fn a_read_waits_replica_timeout_in_all_not_per_replica() {
    let url = database_url();
    let cluster = PgCluster::builder("busy", PgManager::from_url(&url).unwrap())
        .replica(PgManager::from_url(&url).unwrap())
        .replica(PgManager::from_url(&url).unwrap())
        .config(one_connection())
        .replica_timeout(Duration::from_millis(200))
        .lag_probe_interval(None)
        .build()
        .unwrap();
    let held =
        [cluster.session_read_only().await.unwrap(), cluster.session_read_only().await.unwrap()];
    let replicas = cluster.replicas();
    assert!(replicas.iter().all(|r| r.state().in_use == 1), "one read on each replica");
    let read = cluster.session_read_only().await.unwrap();
    let timeouts: u64 = replicas.iter().map(|r| r.stats().timeouts).sum();
    assert_eq!(timeouts, 1, "one replica waited on, the other passed over");
    assert_eq!(cluster.stats().fallbacks, 1, "the read went to the primary");
    drop((read, held));
    cluster.close().await.unwrap();
}
